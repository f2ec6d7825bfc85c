#!/usr/bin/env bash
# Install FIONA and what it needs on Debian: system packages, then a virtualenv in .venv.
#   bash scripts/install.sh          # what running FIONA needs
#   bash scripts/install.sh --test   # plus the real peers the tests talk to
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(python3 python3-venv python3-pip dcmtk tesseract-ocr tesseract-ocr-eng)
extras=".[test]"
if [[ "${1:-}" == "--test" ]]; then
  packages+=(orthanc openssh-server openssh-client chromium chromium-driver fonts-dejavu-core)
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  echo "install: system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "install: creating .venv"
  python3 -m venv .venv
fi
echo "install: python packages"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e "$extras"
echo "install: done (.venv/bin/fiona)"
