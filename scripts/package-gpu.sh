#!/usr/bin/env bash
# Packs what a GPU machine without a Rust toolchain needs to run wsss-dist (README, "On a GPU
# machine"): the release binary stripped of its debug info and symbols (~21 MB) and the Open
# MPI libraries it links, into dist/gpu/. libtorch is not packed: the machine's CUDA PyTorch
# 2.11 provides it (torch/lib on LD_LIBRARY_PATH), and with it libtorch's CUDA backend, which
# the binary loads at start (dist::device::load_cuda_backend).
#   make setup && bash scripts/package-gpu.sh     → dist/gpu/{wsss-dist,lib/}
set -euo pipefail
cd "$(dirname "$0")/.."
export LIBTORCH=${LIBTORCH:-$PWD/.deps/libtorch/torch}
# The release build `make build` made (a profile of its own would compile everything again).
cargo build --release -q
out=dist/gpu
rm -rf "$out.partial" && mkdir -p "$out.partial/lib"
strip -o "$out.partial/wsss-dist" target/release/wsss-dist
# The shared libraries that are neither libtorch's (with its CUDA runtime and OpenMP, which the
# machine's PyTorch has) nor the C/C++ runtime every Linux has.
ldd target/release/wsss-dist | awk '/=> \// {print $1, $3}' | while read -r name path; do
  case "$name" in
    libtorch*|libc10*|libcudart*|libcupti*|libgomp*|libc.so*|libm.so*|libstdc++*|libgcc_s*|libpthread*|libdl.so*|librt.so*|libutil.so*|libz.so*) ;;
    *) cp -L "$path" "$out.partial/lib/$name" ;;
  esac
done
rm -rf "$out" && mv "$out.partial" "$out"
du -sh "$out" "$out"/wsss-dist "$out"/lib
