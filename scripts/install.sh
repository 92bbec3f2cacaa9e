#!/usr/bin/env bash
# Idempotent install for a fresh Debian machine (Python 3.11, root): the system libraries FFCV
# compiles against and the real Fashion-MNIST files (Debian's dataset-fashion-mnist, into
# /usr/share/datasets/fashion-mnist), then a virtualenv in .venv with fastsat (editable) and its extras.
# The virtualenv is reused while pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
APT_PACKAGES=(pkg-config libopencv-dev libturbojpeg0-dev dataset-fashion-mnist)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "install: apt packages ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

stamp=".venv/.installed-$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
if [[ -f $stamp ]] && .venv/bin/python -c "import fastsat.kernels, ffcv, torch" 2>/dev/null; then
  exit 0
fi
echo "install: virtualenv .venv (torch, ffcv, timm, ...; several GB on first run)" >&2
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,saliency]'
# torchattacks pins requests~=2.25 (it would downgrade idna); its real needs are already here
.venv/bin/python -m pip install -q --no-deps torchattacks==3.5.1
rm -f .venv/.installed-*
touch "$stamp"
