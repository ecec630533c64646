#!/usr/bin/env bash
# The main job on the default config: install what is needed, build the kernel
# from patches/kernel/series with the default profile, boot it in QEMU and
# check the patched kernel runs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/isobuild kernel --boot "$@"
