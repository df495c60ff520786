//! Helpers shared by the integration tests: the binary, the reference Python, the real data.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// What every suite's tiny config shares: 32 px synthetic images, a ResNet-18 from a random
/// start, one libtorch thread. Each suite merges in what it changes ([`tiny_config`]).
const TINY_BASE: &str = r#"
[run]
name = "tiny"
device = "cpu"
threads = 1
[data]
source = "synthetic"
train = "data/train"
val = "data/val"
[loader]
batch_size = 8
resize_long = [24, 40]
crop = 32
[model]
depth = "resnet18"
"#;

/// [`TINY_BASE`] with the TOML `overrides` merged in: tables key by key, values replaced.
pub fn tiny_config(overrides: &str) -> String {
    let mut config: toml::Table = TINY_BASE.parse().expect("the base config parses");
    wsss_dist::config::merge_into(&mut config, overrides.parse().expect("the overrides parse"));
    toml::to_string(&config).expect("a table serialises")
}

/// Runs the wsss-dist binary with `args` in `dir`.
pub fn wsss(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsss-dist")).args(args).current_dir(dir).output().expect("the binary runs")
}

/// Like [`wsss`], asserting success; returns stdout.
pub fn wsss_ok(dir: &Path, args: &[&str]) -> String {
    let out = wsss(dir, args);
    assert!(out.status.success(), "wsss-dist {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Like [`wsss`], asserting failure with `code`; returns stderr + stdout.
pub fn wsss_fails(dir: &Path, args: &[&str], code: i32) -> String {
    let out = wsss(dir, args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(code), "wsss-dist {args:?} should exit {code}:\n{text}");
    text
}

/// The test venv's Python (pyarrow, pycocotools, pillow), made by `make setup`.
pub fn python() -> PathBuf {
    let path = std::env::var_os("WSSS_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/pyenv/bin/python"));
    assert!(path.exists(), "no test Python at {} (run `make setup` or set WSSS_TEST_PYTHON)", path.display());
    path
}

/// Runs a Python script with arguments; returns stdout, asserting success.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python()).arg("-c").arg(script).args(args).output().expect("python runs");
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The real PASCAL VOC photos of the team's `../shared/data` (or `WSSS_VOC_DATA`), or `None`
/// in a clone without them: the test that asked then says on the terminal that it did not run
/// and why (written to stderr directly, past the test harness's capture), and returns.
pub fn voc_mini(test: &str) -> Option<PathBuf> {
    let data = std::env::var_os("WSSS_VOC_DATA").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let path = data.join("voc-mini/VOC2012");
    if path.is_dir() {
        return Some(path);
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: no voc-mini photos at {} (set WSSS_VOC_DATA to the folder holding voc-mini/)", path.display());
    None
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `launch/mpirun.sh`: mpirun with the flags this machine needs.
pub fn launcher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("launch/mpirun.sh")
}

/// `mpirun -n ranks wsss-dist args...` in `dir`, not started yet.
pub fn mpirun(dir: &Path, ranks: usize, args: &[&str]) -> Command {
    let mut command = Command::new("bash");
    command.arg(launcher()).arg(ranks.to_string()).arg(env!("CARGO_BIN_EXE_wsss-dist")).args(args).current_dir(dir);
    // Open MPI's session directory under the test's own folder: two mpiruns started at once
    // race to create /tmp/ompi.<host>.<uid> and one fails ("File exists", orte_init failed).
    command.env("TMPDIR", dir);
    command
}

/// Runs [`mpirun`], asserting success; returns stderr (the ranks' logs).
pub fn mpirun_ok(dir: &Path, ranks: usize, args: &[&str]) -> String {
    let out: Output = mpirun(dir, ranks, args).output().expect("mpirun runs");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "mpirun -n {ranks} wsss-dist {args:?} failed:\n{log}");
    log
}

/// A `wsss-dist` process among the descendants of `pid` (mpirun forks its local ranks).
pub fn rank_process(pid: u32) -> Option<u32> {
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
            // pid (comm) state ppid ...
            let (comm, rest) = stat.split_once(") ").map(|(a, b)| (a.split_once(" (").map_or("", |x| x.1), b)).unwrap_or(("", ""));
            if rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
                if comm == "wsss-dist" {
                    return Some(child);
                }
                frontier.push(child);
            }
        }
    }
    None
}

/// Waits for `job` to end (at most `limit`), asserting it does.
pub fn wait_for(job: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = job.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the job did not end within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn as_str(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Asserts that folders `a` and `b` hold the same files ending in `suffix` (at least one),
/// byte for byte.
pub fn assert_same_files(a: &Path, b: &Path, suffix: &str) {
    let names = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(suffix))
            .collect();
        names.sort();
        names
    };
    let files = names(a);
    assert!(!files.is_empty(), "no *{suffix} in {}", a.display());
    assert_eq!(files, names(b), "{} and {}", a.display(), b.display());
    for file in &files {
        assert!(std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap(), "{file} differs between {} and {}", a.display(), b.display());
    }
}
