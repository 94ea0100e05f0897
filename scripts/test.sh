#!/usr/bin/env bash
# Sets up (see setup.sh) and runs the whole test suite with pytest, as root:
# the tests mount real FUSE unions and kernel overlayfs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
