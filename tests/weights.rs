//! tools/torch_legacy_to_safetensors.py, the converter behind scripts/fetch-weights.sh: a
//! small file written here in PyTorch's legacy (pre-1.6) format, without torch, is converted
//! and read back by wsss-dist's safetensors reader with the values it was written with.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{python, run_python, s};
use tch::{Kind, Tensor};

/// Writes the legacy format as `torch.save(..., _use_new_zipfile_serialization=False)` does:
/// magic, protocol, system info, the state dict with storages as persistent ids, the storage
/// keys, then per storage its element count and raw little-endian elements. `torch` is
/// replaced by stand-in modules so that pickle records the same global names.
const WRITER: &str = r#"
import collections, pickle, struct, sys, types
torch = types.ModuleType("torch"); utils = types.ModuleType("torch._utils")
sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
def stand_in(module, name):
    cls = type(name, (), {}); cls.__module__ = module.__name__; setattr(module, name, cls); return cls
Float, Long, Double = (stand_in(torch, n) for n in ("FloatStorage", "LongStorage", "DoubleStorage"))
def _rebuild_tensor_v2(*args): pass
_rebuild_tensor_v2.__module__ = "torch._utils"; utils._rebuild_tensor_v2 = _rebuild_tensor_v2
class Storage:
    def __init__(self, cls, key, code, values): self.cls, self.key, self.code, self.values = cls, key, code, values
class Ref:
    def __init__(self, storage, offset, size, stride): self.args = (storage, offset, size, stride, False, collections.OrderedDict())
    def __reduce__(self): return (_rebuild_tensor_v2, self.args)
class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage): return ("storage", obj.cls, obj.key, "cpu", len(obj.values), None)
shared = Storage(Float, "140001", "f", [1, 2, 3, 4, 5, 6])
count = Storage(Long, "140002", "q", [7])
double = Storage(Double, "140003", "d", [0.5, -1.25])
state = collections.OrderedDict([
    ("module.a", Ref(shared, 0, (2, 3), (3, 1))),      # DataParallel prefix, contiguous
    ("a_t", Ref(shared, 0, (3, 2), (1, 3))),           # transposed view of the same storage
    ("b", Ref(shared, 2, (2,), (1,))),                 # offset view
    ("bn.num_batches_tracked", Ref(count, 0, (), ())), # 0-d int64
    ("d", Ref(double, 0, (2,), (1,))),
])
with open(sys.argv[1], "wb") as f:
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, f, protocol=2)
    Pickler(f, protocol=2).dump(state)
    pickle.dump([shared.key, count.key, double.key], f, protocol=2)
    for st in (shared, count, double):
        f.write(struct.pack("<q", len(st.values)) + struct.pack("<%d%s" % (len(st.values), st.code), *st.values))
"#;

fn converter() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/torch_legacy_to_safetensors.py")
}

fn convert(source: &Path, out: &Path) -> std::process::Output {
    Command::new(python()).arg(converter()).arg(source).arg(out).output().expect("python runs")
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

#[test]
fn legacy_state_dict_converts_to_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let (pth, out) = (dir.path().join("small.pth"), dir.path().join("small.safetensors"));
    run_python(WRITER, &[s(&pth)]);
    let result = convert(&pth, &out);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    assert_eq!(tensors.keys().collect::<Vec<_>>(), ["a", "a_t", "b", "bn.num_batches_tracked", "d"]);
    let a = &tensors["a"];
    assert_eq!((a.kind(), a.size()), (Kind::Float, vec![2, 3]));
    assert_eq!(values(a), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(tensors["a_t"].size(), [3, 2]);
    assert_eq!(values(&tensors["a_t"]), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0], "strided view gathered");
    assert_eq!(values(&tensors["b"]), [3.0, 4.0], "storage offset applied");
    let count = &tensors["bn.num_batches_tracked"];
    assert_eq!((count.kind(), count.size(), count.int64_value(&[])), (Kind::Int64, vec![], 7));
    let d = &tensors["d"];
    assert_eq!((d.kind(), values(d)), (Kind::Double, vec![0.5, -1.25]));
}

#[test]
fn damaged_legacy_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (pth, out) = (dir.path().join("small.pth"), dir.path().join("out.safetensors"));
    run_python(WRITER, &[s(&pth)]);
    let bytes = std::fs::read(&pth).unwrap();
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
    let zip = dir.path().join("zip.pth");
    std::fs::write(&zip, b"PK\x03\x04 a torch >= 1.6 file").unwrap();
    let foreign = dir.path().join("foreign.pth");
    std::fs::write(&foreign, b"\x80\x02K\x07.").unwrap();
    for (file, reason) in [(&cut, "truncated"), (&zip, "zip-format"), (&foreign, "wrong magic")] {
        let result = convert(file, &out);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(s(file)) && stderr.contains(reason), "{stderr}");
        assert!(!out.exists(), "no output for a damaged file");
    }
}
