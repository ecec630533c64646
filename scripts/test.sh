#!/usr/bin/env bash
# The tests: install what is needed, lint and type-check, then every tier in
# one pytest run, fastest first: unit (seconds), orchestration on a fake
# kernel tree (seconds), real (the real 6.1 source with the `ci` profile and
# the example series, built and booted in QEMU for x86_64, and cross-built and
# booted for arm64 and riscv64; the Debian live ISO built from the host's
# mirror and booted BIOS-CD and UEFI-USB; the arm64 Debian image with its
# cross-built glibc booted UEFI-CD: about an hour cold, minutes warm).
# The x86_64 build-VM image and VMs driven from it are in the real tier too.
# ISOBUILD_FULL=1 boots the x86_64 ISO in all four modes and adds the riscv64 image and the
# arm64/riscv64 build VMs.
# Pass pytest arguments to narrow it, e.g. scripts/test.sh -m "not real".
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
.venv/bin/ruff check builder tests bench/kernel bench/debian bench/loop bench/boots bench/arches bench/vm bench/pkg bench/rawboot.py
for script in bench/kernel bench/debian bench/loop bench/boots bench/arches bench/vm bench/pkg bench/rawboot.py; do .venv/bin/mypy "$script"; done
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
exec .venv/bin/pytest tests/unit tests/orchestration tests/real "$@"
