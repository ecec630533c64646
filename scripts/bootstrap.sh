#!/usr/bin/env bash
# Install everything isobuild needs on a Debian 12 machine (run as root):
# Python venv support, the project's virtualenv with its Python dependencies,
# and every host tool in `isobuild doctor`'s table (apt-get, only if missing).
# Idempotent: a second run installs nothing and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends python3 python3-venv
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
mkdir -p logs
# The host tools come from the same table `isobuild doctor` prints.
.venv/bin/isobuild doctor --install --log logs/doctor-install.log >/dev/null || .venv/bin/isobuild doctor
