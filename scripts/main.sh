#!/usr/bin/env bash
# The main job on the default config: install what is needed, build the kernel
# from patches/kernel/series with the default profile, build the Debian live
# ISO with it and boot-test the ISO from CD and USB under BIOS and UEFI.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/isobuild debian "$@"
