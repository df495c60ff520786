# Sourced by the launchers: makes libnccl.so findable for cudarc (which does not look for the
# libnccl.so.2 that torch's nvidia-nccl package ships). Looks next to $LIBTORCH, then in the
# site-packages of `python3`; does nothing when neither has NCCL (CPU machines).
nccl_lib=""
for candidate in "${LIBTORCH:-/nonexistent}/../nvidia/nccl/lib" \
    "$(python3 -c 'import nvidia.nccl, os; print(os.path.join(nvidia.nccl.__path__[0], "lib"))' 2>/dev/null || true)"; do
  if [ -n "$candidate" ] && [ -e "$candidate/libnccl.so.2" ]; then nccl_lib=$candidate; break; fi
done
if [ -n "$nccl_lib" ]; then
  link_dir=${XDG_CACHE_HOME:-$HOME/.cache}/wsss-dist/nccl
  mkdir -p "$link_dir"
  ln -sf "$nccl_lib/libnccl.so.2" "$link_dir/libnccl.so"
  export LD_LIBRARY_PATH="$link_dir:$nccl_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
