#!/usr/bin/env bash
# Install everything (including the test peers: dcmtk, Orthanc, OpenSSH, Chromium, Tesseract) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
exec .venv/bin/python -m pytest "$@"
