//! Shards checked against their manifest's SHA-256 before a stage uses them, cheaply: a shard
//! is hashed the first time a stage opens it, and the result is remembered in the dataset's
//! `.verified.json` with the file's size and modification time. Later opens of an unchanged
//! file (same size and time) cost a `stat`; a file written since is hashed again. A mismatch
//! is an error naming the shard (`data verify` then finds the rows).
//!
//! A dataset in a folder this process cannot write is still checked, only not remembered.
//!
//! The trade-off: a shard altered in place with its size and modification time kept (a tool
//! that restores the time, a write within the file system's time resolution) passes this
//! check. `data verify` hashes every shard every time, and deleting `.verified.json` makes the
//! next stage hash them again.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::schema::ShardInfo;
use super::shard::file_sha256;
use super::{atomic_write, DataError};

/// The record file in a dataset directory (hidden: dataset readers skip it).
pub const VERIFIED_FILE: &str = ".verified.json";

/// What was verified of one shard file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Verified {
    sha256: String,
    len: u64,
    modified_ns: u128,
}

/// One writer of the record files at a time in this process (their temporary name is per
/// process, and read-modify-write must not lose another thread's entry).
static RECORD_LOCK: Mutex<()> = Mutex::new(());

/// Checks `dir/<shard.file>` against `shard.sha256`, hashing it only if it changed since it
/// was last verified.
pub fn check_shard(dir: &Path, shard: &ShardInfo) -> Result<(), DataError> {
    let path = dir.join(&shard.file);
    let stamp = |path: &Path| -> Result<(u64, u128), DataError> {
        let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        let modified = meta.modified().map_err(|e| DataError::io(path, e))?;
        Ok((meta.len(), modified.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)))
    };
    let (len, modified_ns) = stamp(&path)?;
    let known = Verified { sha256: shard.sha256.clone(), len, modified_ns };
    let record_path = dir.join(VERIFIED_FILE);
    if read_records(&record_path).get(&shard.file) == Some(&known) {
        return Ok(());
    }
    let found = file_sha256(&path)?;
    if found != shard.sha256 {
        return Err(DataError::Checksum { path, expected: shard.sha256.clone(), found });
    }
    // Remember it only if the file did not change while it was hashed.
    if stamp(&path)? == (len, modified_ns) {
        let _guard = RECORD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut records = read_records(&record_path);
        records.insert(shard.file.clone(), known);
        // Best effort: a read-only dataset is verified again next time.
        let _ = atomic_write(&record_path, &serde_json::to_vec_pretty(&records).expect("records serialise"));
    }
    Ok(())
}

/// The records of a dataset; none when the file is missing or unreadable (it only saves work).
fn read_records(path: &Path) -> BTreeMap<String, Verified> {
    std::fs::read(path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(dir: &Path, bytes: &[u8]) -> ShardInfo {
        std::fs::write(dir.join("part-00000.parquet"), bytes).unwrap();
        ShardInfo { file: "part-00000.parquet".into(), rows: 1, sha256: file_sha256(&dir.join("part-00000.parquet")).unwrap() }
    }

    #[test]
    fn a_changed_shard_is_refused_and_an_unchanged_one_is_hashed_once() {
        let dir = tempfile::tempdir().unwrap();
        let info = shard(dir.path(), b"shard bytes");
        check_shard(dir.path(), &info).unwrap();
        let records = read_records(&dir.path().join(VERIFIED_FILE));
        assert_eq!(records["part-00000.parquet"].sha256, info.sha256);
        // Same length, one byte changed, later modification time: hashed again, refused.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join("part-00000.parquet"), b"shard bytez").unwrap();
        let err = check_shard(dir.path(), &info).unwrap_err().to_string();
        assert!(err.contains("part-00000.parquet: SHA-256") && err.contains("is not the manifest's") && err.contains("data verify"), "{err}");
        // The record is what saves the hash: with a record claiming the changed file, it passes
        // unhashed (which is why a record holds the size and time it was made at).
        let (len, modified_ns) = {
            let meta = std::fs::metadata(dir.path().join("part-00000.parquet")).unwrap();
            (meta.len(), meta.modified().unwrap().duration_since(UNIX_EPOCH).unwrap().as_nanos())
        };
        let forged = BTreeMap::from([("part-00000.parquet".to_string(), Verified { sha256: info.sha256.clone(), len, modified_ns })]);
        std::fs::write(dir.path().join(VERIFIED_FILE), serde_json::to_vec(&forged).unwrap()).unwrap();
        check_shard(dir.path(), &info).unwrap();
    }
}
