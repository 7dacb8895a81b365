#!/usr/bin/env bash
# Shared set-up for the quickstart and the tests: Fashion-MNIST (Debian package), a virtual
# environment in .venv with a CPU build of torch, and robustssl itself.
# Override the interpreter with PYTHON=..., the torch requirement with TORCH_SPEC=...
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ] && [ -z "${ROBUSTSSL_DATA:-}" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "no apt-get: put the four Fashion-MNIST .gz files in a folder and set ROBUSTSSL_DATA to its parent" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# A CPU torch first: an unpinned torch would pull several GB of CUDA packages.
.venv/bin/python -m pip install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
