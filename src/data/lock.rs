//! One writer per output directory: a job that writes a dataset, a run or a stage directory
//! holds an exclusive lock on it for as long as it writes, so a second job aimed at the same
//! place fails at once, naming the holder, instead of mixing its files with the first's.
//!
//! The lock is `flock` on a file beside the directory (`<parent>/.<name>.lock`): beside it,
//! because map phases may delete and recreate the directory itself. The path is made canonical
//! first (symbolic links and `..` resolved, as far as the path exists), so two jobs that name
//! one directory by two paths take the same lock. The kernel releases it
//! when the holder exits, however it exits (kill -9 included), so a stale file is never a stale
//! lock; a holder that ends normally also removes the file. The file holds who took it, for
//! the message a second writer gets.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::DataError;

/// An exclusive lock on a directory, released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock of `dir` (which need not exist yet), or fails naming the job that holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, DataError> {
        let path = lock_path(dir);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
        }
        // A holder removes the file as it ends: a lock taken on a file that was removed
        // meanwhile is no lock, so take it again on the file now at the path.
        let mut file = loop {
            let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| DataError::io(&path, e))?;
            match file.try_lock() {
                Ok(()) if same_file(&file, &path) => break file,
                Ok(()) => continue,
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = if holder.trim().is_empty() { "another process".to_string() } else { holder.trim().to_string() };
                    return Err(DataError::Locked { dir: dir.into(), lock: path, holder });
                }
                Err(TryLockError::Error(e)) => return Err(DataError::io(&path, e)),
            }
        };
        let write_holder = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(holder().as_bytes())?;
            file.flush()
        };
        write_holder(&mut file).map_err(|e| DataError::io(&path, e))?;
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DirLock {
    /// Removes the file while still holding the lock (then the kernel releases it).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the open `file` is the one now at `path` (not one removed since it was opened).
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => (open.dev(), open.ino()) == (named.dev(), named.ino()),
        _ => false,
    }
}

/// `<parent>/.<name>.lock` for `dir` = `<parent>/<name>`, `dir` made canonical.
pub fn lock_path(dir: &Path) -> PathBuf {
    let dir = &canonical(dir);
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "dir".into());
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    parent.join(format!(".{name}.lock"))
}

/// `path` with its longest existing ancestor (itself included) made canonical and the rest
/// appended: what `canonicalize` gives for a path that does not exist yet.
fn canonical(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut missing = Vec::new();
    let mut existing = absolute.as_path();
    loop {
        if let Ok(found) = existing.canonicalize() {
            return missing.iter().rev().fold(found, |path, part| path.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// "pid 123 on host node7 since 1764800000 (unix time): wsss-dist pseudo-label --config F".
fn holder() -> String {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    format!("pid {} on host {} since {since} (unix time): {command}", std::process::id(), hostname())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// flock locks belong to an open file, so a second open in the same process contends as a
    /// second process would.
    #[test]
    fn a_second_writer_is_refused_naming_the_holder_until_the_first_is_done() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("runs/demo/cams/val");
        let first = DirLock::acquire(&dir).unwrap();
        let root = tmp.path().canonicalize().unwrap();
        assert_eq!(first.path(), root.join("runs/demo/cams/.val.lock"));
        let err = DirLock::acquire(&dir).unwrap_err().to_string();
        assert!(err.contains("cams/val") && err.contains(&format!("pid {}", std::process::id())) && err.contains("since"), "{err}");
        drop(first);
        assert!(!lock_path(&dir).exists(), "a holder that ends removes the file");
        let again = DirLock::acquire(&dir).unwrap();
        let text = std::fs::read_to_string(again.path()).unwrap();
        assert!(text.starts_with(&format!("pid {} on host", std::process::id())), "{text}");
        // Another directory is another lock.
        DirLock::acquire(&tmp.path().join("runs/demo/cams/train")).unwrap();
    }

    /// The same directory named through a symbolic link, or with `..`, is the same lock.
    #[test]
    fn another_path_to_the_same_directory_is_the_same_lock() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("runs/base")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("runs/base"), tmp.path().join("other")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("runs"), tmp.path().join("alias")).unwrap();
        let _held = DirLock::acquire(&tmp.path().join("runs/base")).unwrap();
        for path in ["other", "alias/base", "runs/../runs/base", "alias/../runs/base"] {
            assert!(DirLock::acquire(&tmp.path().join(path)).is_err(), "{path} took a second lock");
        }
        // A directory that does not exist yet, below a link.
        let _new = DirLock::acquire(&tmp.path().join("alias/base/seg")).unwrap();
        assert!(DirLock::acquire(&tmp.path().join("runs/base/seg")).is_err());
    }
}
