//! Dataset commands under `mpirun -n 2` (real MPI ranks): one dataset is written, by rank 0,
//! every rank exits cleanly, and a failing rank ends the whole job with a non-zero exit.

mod common;

use std::path::Path;

use common::s;
use wsss_dist::data::Manifest;

fn mpirun2(dir: &Path, args: &[&str]) -> std::process::Output {
    common::mpirun(dir, 2, args).output().expect("mpirun runs")
}

#[test]
fn import_under_mpirun_writes_one_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("syn");
    let run = mpirun2(tmp.path(), &["data", "import", "synthetic", "--out", s(&out), "--images", "40", "--size", "32"]);
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{log}");
    assert_eq!(log.matches("imported 40 images").count(), 1, "only rank 0 imports: {log}");
    assert_eq!(Manifest::read(&out).unwrap().rows, 40);
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "no staging left: {names:?}");

    let inspect = mpirun2(tmp.path(), &["data", "verify", s(&out)]);
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
}

#[test]
fn a_failing_rank_ends_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let run = mpirun2(tmp.path(), &["data", "inspect", s(&tmp.path().join("missing"))]);
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{log}");
    assert!(log.contains("no _manifest.json"), "{log}");
}
