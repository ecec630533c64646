#!/usr/bin/env bash
# The main job on the default config (`isobuild all`): install what is needed,
# build the kernel from patches/kernel/series with the default profile and the
# patched glibc packages from patches/glibc/series, build the Debian live ISO
# carrying both and boot-test it from CD and USB under BIOS and UEFI.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/isobuild all "$@"
