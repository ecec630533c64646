#!/bin/sh
# xsc_features: /sys/kernel/xsc/ shows what the project's kernel config built.
# The expectations below mirror patches/kernel/xsc.config (the repository is
# not in the guest, so they are spelled out): change both together.
EXPECT_TRAP_GUARD=1   # CONFIG_XSC_TRAP_GUARD=y
EXPECT_DEBUG=0        # CONFIG_XSC_DEBUG is not set
# Bits of <linux/xsc.h>: XSC_FEATURE_TRAP_GUARD, XSC_FEATURE_DEBUG.
TRAP_GUARD=1
DEBUG=2

dir=/sys/kernel/xsc
status=0
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); echo "not ok $n - $1"; echo "xsc_features: $1: $2" >&2; status=1; }

echo "1..4"
if ! read -r features 2>/dev/null <"$dir/features" ||
   ! read -r version 2>/dev/null <"$dir/version"; then
    echo "xsc_features: cannot read $dir/features and $dir/version (not the patched kernel?)" >&2
    exit 1
fi

# The driver prints "0x%x"; check the shape before arithmetic sees it.
case $features in 0x*) hex=${features#0x} ;; *) hex= ;; esac
case $hex in
    '' | *[!0-9a-f]*) not_ok "features is 0x<hex>" "got '$features'"; exit 1 ;;
esac

bit() { [ $((features & $1)) -ne 0 ] && echo 1 || echo 0; }
if [ "$(bit $TRAP_GUARD)" -eq "$EXPECT_TRAP_GUARD" ]; then ok "TRAP_GUARD is $EXPECT_TRAP_GUARD"
else not_ok "TRAP_GUARD is $EXPECT_TRAP_GUARD" "features $features"; fi
if [ "$(bit $DEBUG)" -eq "$EXPECT_DEBUG" ]; then ok "DEBUG is $EXPECT_DEBUG"
else not_ok "DEBUG is $EXPECT_DEBUG" "features $features"; fi
# A bit this test does not know means the driver grew a feature nobody tests.
if [ $((features & ~(TRAP_GUARD | DEBUG))) -eq 0 ]; then ok "no unknown feature bits"
else not_ok "no unknown feature bits" "features $features"; fi

if printf '%s\n' "$version" | grep -Eqx '[0-9]+\.[0-9]+\.[0-9]+'; then ok "version $version is MAJOR.MINOR.PATCH"
else not_ok "version is MAJOR.MINOR.PATCH" "got '$version'"; fi
exit $status
