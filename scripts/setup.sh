#!/usr/bin/env bash
# One-time, idempotent set-up of everything the build and the tests need on a fresh
# Debian machine: Open MPI + libclang (apt), a CPU libtorch 2.11.0 (unless LIBTORCH names
# one), and a small Python venv with pyarrow/pycocotools/pillow that the tests use as independent
# readers (and pydensecrf2, the reference dense CRF). Prints `export` lines nowhere: the Makefile derives paths itself.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
deps=${WSSS_DEPS:-$here/.deps}
torch_version=2.11.0
mkdir -p "$deps"

need_apt=()
command -v mpicc >/dev/null || need_apt+=(libopenmpi-dev openmpi-bin)
[ -e /usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h ] || need_apt+=(libclang1-14 libclang-common-14-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# CPU libtorch carved out of the official wheel (README, "Building"): the CUDA libraries are
# left out, the two small nvidia wheels provide the libcudart/libcupti that libtorch_cpu
# links against even on CPU.
if [ -n "${LIBTORCH:-}" ] && [ -z "${WSSS_FETCH_LIBTORCH:-}" ]; then
  [ -e "$LIBTORCH/lib/libtorch_cpu.so" ] || { echo "setup: LIBTORCH=$LIBTORCH has no lib/libtorch_cpu.so" >&2; exit 1; }
elif [ ! -e "$deps/libtorch/torch/lib/libtorch_cpu.so" ]; then
  echo "setup: fetching libtorch $torch_version (CPU subset of the wheel)" >&2
  dl=$deps/download
  mkdir -p "$dl"
  python3 -m pip download -q --no-deps -d "$dl" "torch==$torch_version" \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  tmp=$deps/libtorch.partial
  rm -rf "$tmp" && mkdir -p "$tmp"
  (cd "$tmp" && unzip -q "$dl"/torch-"$torch_version"-*.whl 'torch/lib/*' 'torch/include/*' \
      -x 'torch/lib/libtorch_cuda*' 'torch/lib/libc10_cuda.so' 'torch/lib/libtorch_nvshmem.so' \
         'torch/lib/libcaffe2_nvrtc.so' 'torch/lib/libtorch_python.so')
  for w in "$dl"/nvidia_cuda_runtime-*.whl "$dl"/nvidia_cuda_cupti-*.whl; do
    (cd "$tmp" && unzip -q -o "$w" 'nvidia/*')
  done
  rm -rf "$deps/libtorch" && mv "$tmp" "$deps/libtorch"
  rm -rf "$dl"
fi

# Python used only by tests and benchmarks as an independent reference (pandas: a dataset
# directory must read as one table).
py=$deps/pyenv
if [ ! -x "$py/bin/python" ] || ! "$py/bin/python" -c 'import pyarrow, pycocotools, PIL, pandas' 2>/dev/null; then
  echo "setup: creating test venv (pyarrow, pycocotools, pillow, pydensecrf2, pandas)" >&2
  python3 -m venv "$py"
  "$py/bin/pip" install -q pyarrow pycocotools numpy pillow pydensecrf2 pandas
fi
