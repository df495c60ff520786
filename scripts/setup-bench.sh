#!/usr/bin/env bash
# Idempotent set-up of the Python venv that the loader benchmark uses as its reference:
# torch 2.11.0 + the torchvision release built against it (0.26.0 pins torch==2.11.0),
# pillow, pyarrow, numpy, and timm (the ViT parity check). Only pip touches the network. The registry serves torch 2.11.0
# for Linux x86_64 as the CUDA build (~530 MB wheel + ~2.7 GB of nvidia-* wheels); the
# benchmark runs on the CPU only, the CUDA libraries are simply never loaded.
# A quick no-op (~0.1 s) when the venv already holds the pinned versions.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
deps=${WSSS_DEPS:-$here/.deps}
torch_version=2.11.0
torchvision_version=0.26.0
timm_version=1.0.29
mkdir -p "$deps"

venv=$deps/bench-venv
# Installed-metadata check (milliseconds; importing torch would take seconds).
installed="from importlib.metadata import version as v, PackageNotFoundError as E
import sys
try:
    ok = (v('torch').split('+')[0], v('torchvision').split('+')[0], v('timm')) == ('$torch_version', '$torchvision_version', '$timm_version')
    [v(p) for p in ('pillow', 'pyarrow', 'numpy', 'safetensors')]
except E:
    ok = False
sys.exit(0 if ok else 1)"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "$installed" 2>/dev/null; then
  echo "setup-bench: creating benchmark venv (torch $torch_version, torchvision $torchvision_version)" >&2
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir \
    "torch==$torch_version" "torchvision==$torchvision_version" "timm==$timm_version" pillow pyarrow numpy safetensors
  "$venv/bin/python" -c "$installed"
  "$venv/bin/python" -c 'import torch, torchvision, timm, PIL, pyarrow, numpy'
fi

# GNU time reports the peak RSS of the COCO-scale import.
if [ ! -x /usr/bin/time ]; then
  echo "setup-bench: installing GNU time" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends time >/dev/null
fi
