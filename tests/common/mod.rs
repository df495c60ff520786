//! Helpers shared by the integration tests: the binary, the reference Python, the real data.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
    let path = std::env::var_os("WSSS_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/pyenv/bin/python"));
    assert!(path.exists(), "no test Python at {} (run `make setup` or set WSSS_TEST_PYTHON)", path.display());
    path
}

/// Runs a Python script with arguments; returns stdout, asserting success.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python()).arg("-c").arg(script).args(args).output().expect("python runs");
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The real PASCAL VOC photos shipped in ../shared.
pub fn voc_mini() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/voc-mini/VOC2012");
    assert!(path.is_dir(), "voc-mini not found at {}", path.display());
    path
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
