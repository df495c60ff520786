#!/usr/bin/env python3
"""Convert a PyTorch state dict saved in the legacy (pre-1.6, non-zip) format to safetensors,
with the Python standard library alone (no torch, no numpy).

    python3 tools/torch_legacy_to_safetensors.py mobilenet_v2-b0353104.pth mobilenet_v2.safetensors

The legacy format (docs/weights.md) is a sequence in one file:
  1. pickle: the magic number 0x1950a86a20f9469cfc6c;
  2. pickle: the protocol version, 1001;
  3. pickle: system info (endianness, type sizes);
  4. pickle: the state dict; each tensor is `torch._utils._rebuild_tensor_v2(storage, offset,
     size, stride, ...)` and each storage a persistent id
     `("storage", torch.FloatStorage, key, location, numel, view_metadata)`;
  5. pickle: the list of storage keys in the order their data follows;
  6. per key: the element count (int64, little endian), then the raw elements.

Tensor names are kept as they are (`features.0.0.weight`, ...). Non-contiguous views are
gathered element by element. Exit status 2 with a message naming the file on any problem.
"""
import argparse
import collections
import json
import os
import pickle
import struct
import sys

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001

# Legacy storage classes: (safetensors dtype, bytes per element).
STORAGES = {
    "FloatStorage": ("F32", 4),
    "DoubleStorage": ("F64", 8),
    "HalfStorage": ("F16", 2),
    "BFloat16Storage": ("BF16", 2),
    "LongStorage": ("I64", 8),
    "IntStorage": ("I32", 4),
    "ShortStorage": ("I16", 2),
    "CharStorage": ("I8", 1),
    "ByteStorage": ("U8", 1),
    "BoolStorage": ("BOOL", 1),
}


class FormatError(Exception):
    pass


class Storage:
    def __init__(self, kind, key, numel):
        self.kind, self.key, self.numel, self.data = kind, key, numel, None


class TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def rebuild_tensor(storage, offset, size, stride, *_rest):
    return TensorRef(storage, offset, size, stride)


class StorageType:
    def __init__(self, name):
        self.name = name


class LegacyUnpickler(pickle.Unpickler):
    """Resolves only what a state dict needs; anything else is refused (no arbitrary code)."""

    def __init__(self, f):
        super().__init__(f)
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return rebuild_tensor
        if module == "torch" and name in STORAGES:
            return StorageType(name)
        raise FormatError(f"unsupported object {module}.{name} in the pickle")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")):
            raise FormatError(f"unsupported persistent id {pid!r}")
        _, kind, key, _location, numel, view = pid
        if view is not None:
            raise FormatError(f"storage {key}: storage views are not supported")
        if not isinstance(kind, StorageType):
            raise FormatError(f"storage {key}: unknown storage type {kind!r}")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = Storage(kind.name, key, numel)
        return storage


def read_legacy(f):
    """The state dict of an open legacy file: {name: (dtype, shape, little-endian bytes)}."""
    if f.read(4) == b"PK\x03\x04":
        raise FormatError("a zip-format PyTorch file (torch >= 1.6), not the legacy format: convert it with tools/pth_to_safetensors.py")
    f.seek(0)
    try:
        if pickle.load(f) != MAGIC:
            raise FormatError("not a legacy PyTorch file (wrong magic number)")
        if pickle.load(f) != PROTOCOL:
            raise FormatError("unsupported legacy protocol version")
        info = pickle.load(f)
        if not info.get("little_endian", False):
            raise FormatError("big-endian files are not supported")
        unpickler = LegacyUnpickler(f)
        state = unpickler.load()
        keys = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise FormatError(f"cannot unpickle: {e}") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise FormatError("the file holds no state dict")
    for key in keys:
        storage = unpickler.storages.get(key)
        if storage is None:
            raise FormatError(f"storage {key} is listed but never used")
        header = f.read(8)
        if len(header) < 8:
            raise FormatError(f"storage {key}: truncated file")
        (numel,) = struct.unpack("<q", header)
        if numel != storage.numel:
            raise FormatError(f"storage {key}: {numel} elements on disk, {storage.numel} announced")
        nbytes = numel * STORAGES[storage.kind][1]
        storage.data = f.read(nbytes)
        if len(storage.data) != nbytes:
            raise FormatError(f"storage {key}: truncated file")
    if f.read(1):
        raise FormatError("trailing bytes after the last storage")
    tensors = {}
    for name, value in state.items():
        if isinstance(name, str) and name.startswith("module."):
            name = name[len("module."):]
        if not isinstance(value, TensorRef):
            continue
        if value.storage.data is None:
            raise FormatError(f"tensor {name}: its storage has no data")
        tensors[name] = tensor_bytes(name, value)
    return tensors


def tensor_bytes(name, t):
    dtype, width = STORAGES[t.storage.kind]
    numel = 1
    for d in t.size:
        numel *= d
    contiguous = []
    step = 1
    for d in reversed(t.size):
        contiguous.append(step)
        step *= d
    contiguous = tuple(reversed(contiguous))
    data = t.storage.data
    if numel == 0:
        return dtype, list(t.size), b""
    last = t.offset + sum((d - 1) * s for d, s in zip(t.size, t.stride))
    if t.offset < 0 or last >= t.storage.numel or any(s < 0 for s in t.stride):
        raise FormatError(f"tensor {name}: view outside its storage")
    if t.stride == contiguous or len(t.size) == 0:
        return dtype, list(t.size), data[t.offset * width:(t.offset + numel) * width]
    out = bytearray()
    for index in range(numel):
        pos, rest = t.offset, index
        for d, s in zip(reversed(t.size), reversed(t.stride)):
            pos += (rest % d) * s
            rest //= d
        out += data[pos * width:(pos + 1) * width]
    return dtype, list(t.size), bytes(out)


def write_safetensors(tensors, path):
    """safetensors: u64 header length, JSON header (dtype, shape, data_offsets), raw data."""
    header, offset, chunks = {}, 0, []
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        chunks.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = f"{path}.partial"
    with open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for chunk in chunks:
            out.write(chunk)
    os.replace(tmp, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a legacy-format .pth file")
    parser.add_argument("output", help="the .safetensors file to write")
    args = parser.parse_args()
    try:
        with open(args.source, "rb") as f:
            tensors = read_legacy(f)
    except (OSError, FormatError) as e:
        print(f"{args.source}: {e}", file=sys.stderr)
        sys.exit(2)
    if not tensors:
        print(f"{args.source}: no tensors in the state dict", file=sys.stderr)
        sys.exit(2)
    write_safetensors(tensors, args.output)
    print(f"wrote {len(tensors)} tensors to {args.output}")


if __name__ == "__main__":
    main()
