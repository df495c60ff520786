//! A dataset directory opened for reading: the manifest, and rows addressed by a global index
//! (shards in manifest order, rows in shard order).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::schema::{ImageRow, Manifest, ShardRow};
use super::shard::ShardReader;
use super::DataError;

/// Where a global row index lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLocation {
    pub shard: usize,
    pub row: usize,
}

/// A dataset of `R` rows (images by default, or CAMs): manifest plus lazily opened shards (a
/// footer is parsed once per shard).
pub struct Dataset<R: ShardRow = ImageRow> {
    dir: PathBuf,
    manifest: Manifest,
    /// `starts[s]` is the global index of shard s's first row; one extra entry holds the total.
    starts: Vec<usize>,
    readers: Vec<OnceLock<ShardReader<R>>>,
}

impl Dataset {
    /// Opens the image dataset in `dir` (see [`Dataset::open_as`]).
    pub fn open(dir: &Path) -> Result<Dataset, DataError> {
        Self::open_as(dir)
    }
}

impl<R: ShardRow> Dataset<R> {
    /// Opens the dataset of `R` rows in `dir`: a missing or invalid manifest, or one of another
    /// kind, is an error naming it. Shards are opened when first read.
    pub fn open_as(dir: &Path) -> Result<Dataset<R>, DataError> {
        let manifest = Manifest::read(dir)?;
        if manifest.kind != R::KIND {
            return Err(DataError::BadManifest {
                path: Manifest::path_in(dir),
                message: format!("this is a dataset of {:?}, expected {:?}", manifest.kind, R::KIND),
            });
        }
        let mut starts = Vec::with_capacity(manifest.shards.len() + 1);
        let mut total = 0usize;
        for shard in &manifest.shards {
            starts.push(total);
            total += shard.rows as usize;
        }
        starts.push(total);
        let readers = manifest.shards.iter().map(|_| OnceLock::new()).collect();
        Ok(Dataset { dir: dir.into(), manifest, starts, readers })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The dataset's identity: the SHA-256 of its manifest as opened, which records every
    /// shard's checksum, so the same rows imported again keep it and any other content does not.
    pub fn identity(&self) -> String {
        use sha2::{Digest, Sha256};
        let manifest = serde_json::to_vec(&self.manifest).expect("a manifest serialises");
        hex::encode(Sha256::digest(manifest))
    }

    /// Whether the manifest on disk is no longer the one opened (gone, unreadable, or another
    /// dataset written there since, e.g. by `data import --force`).
    pub fn changed_on_disk(&self) -> bool {
        Manifest::read(&self.dir).map_or(true, |now| now != self.manifest)
    }

    pub fn len(&self) -> usize {
        *self.starts.last().expect("starts is never empty")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn num_shards(&self) -> usize {
        self.manifest.shards.len()
    }

    pub fn shard_path(&self, shard: usize) -> PathBuf {
        self.dir.join(&self.manifest.shards[shard].file)
    }

    /// The shard and row of global index `index` (< len()).
    pub fn locate(&self, index: usize) -> RowLocation {
        let shard = self.starts.partition_point(|&s| s <= index) - 1;
        RowLocation { shard, row: index - self.starts[shard] }
    }

    /// The open reader of `shard`, checking on first use that it is the file the manifest
    /// recorded (its SHA-256, hashed once per file version: [`super::integrity`]) and holds
    /// the rows the manifest says.
    pub fn shard(&self, shard: usize) -> Result<&ShardReader<R>, DataError> {
        if let Some(reader) = self.readers[shard].get() {
            return Ok(reader);
        }
        super::integrity::check_shard(&self.dir, &self.manifest.shards[shard])?;
        let path = self.shard_path(shard);
        let reader = ShardReader::open(&path)?;
        let expected = self.manifest.shards[shard].rows as usize;
        if reader.num_rows() != expected {
            return Err(DataError::BadManifest {
                path: Manifest::path_in(&self.dir),
                message: format!("{} holds {} rows, the manifest says {expected}", path.display(), reader.num_rows()),
            });
        }
        Ok(self.readers[shard].get_or_init(|| reader))
    }

    /// Fails naming both places if an id appears twice anywhere in the dataset: stages that
    /// join or write by id need each id once. Reads only the id columns.
    pub fn check_unique_ids(&self) -> Result<(), DataError> {
        let mut seen: std::collections::HashMap<String, (usize, usize)> = std::collections::HashMap::with_capacity(self.len());
        for shard in 0..self.num_shards() {
            for (row, id) in self.shard(shard)?.read_ids()?.into_iter().enumerate() {
                if let Some((first_shard, first_row)) = seen.insert(id.clone(), (shard, row)) {
                    let file = |s: usize| &self.manifest.shards[s].file;
                    return Err(DataError::Invalid(format!(
                        "{}: id {id} appears twice ({} row {first_row} and {} row {row}): ids must be unique in a dataset",
                        self.dir.display(),
                        file(first_shard),
                        file(shard)
                    )));
                }
            }
        }
        Ok(())
    }

    /// The rows at the given global indices, in the order asked; each shard is read once.
    pub fn read(&self, indices: &[usize]) -> Result<Vec<R>, DataError> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(DataError::Invalid(format!("{}: row {bad} out of range ({} rows)", self.dir.display(), self.len())));
        }
        let located: Vec<RowLocation> = indices.iter().map(|&i| self.locate(i)).collect();
        let mut out: Vec<Option<R>> = vec![None; indices.len()];
        let mut shards: Vec<usize> = located.iter().map(|l| l.shard).collect();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            let slots: Vec<usize> = (0..located.len()).filter(|&k| located[k].shard == shard).collect();
            let positions: Vec<usize> = slots.iter().map(|&k| located[k].row).collect();
            for (slot, row) in slots.into_iter().zip(self.shard(shard)?.read_rows(&positions)?) {
                out[slot] = Some(row);
            }
        }
        Ok(out.into_iter().map(|r| r.expect("every slot filled")).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::schema::{DatasetKind, ShardInfo, FORMAT_VERSION};
    use crate::data::shard::{shard_file_name, write_shard, ShardLayout};

    /// A dataset of shards with 3, 0 and 4 rows.
    fn make(dir: &Path) -> Vec<ImageRow> {
        let mut all = Vec::new();
        let mut shards = Vec::new();
        for (s, n) in [3usize, 0, 4].into_iter().enumerate() {
            let rows: Vec<ImageRow> =
                (0..n).map(|i| ImageRow { id: format!("s{s}r{i}"), image: vec![s as u8, i as u8], width: 1, height: 1, labels: vec![1], mask: None }).collect();
            shards.push(write_shard(&dir.join(shard_file_name(s)), &rows, ShardLayout::default()).unwrap());
            all.extend(rows);
        }
        Manifest {
            format_version: FORMAT_VERSION,
            kind: DatasetKind::Images,
            split: "train".into(),
            classes: vec!["background".into(), "a".into()],
            rows: all.len() as u64,
            shards,
            source: "test".into(),
        }
        .write(dir)
        .unwrap();
        all
    }

    #[test]
    fn global_indices_cross_shards_including_empty_ones() {
        let dir = tempfile::tempdir().unwrap();
        let all = make(dir.path());
        let ds = Dataset::open(dir.path()).unwrap();
        assert_eq!(ds.len(), 7);
        assert_eq!(ds.locate(2), RowLocation { shard: 0, row: 2 });
        assert_eq!(ds.locate(3), RowLocation { shard: 2, row: 0 });
        let got = ds.read(&[6, 0, 3, 2]).unwrap();
        let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["s2r3", "s0r0", "s2r0", "s0r2"]);
        assert_eq!(got[0], all[6]);
        assert!(ds.read(&[7]).is_err());
    }

    #[test]
    fn an_id_in_two_shards_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let all = make(dir.path());
        let ds = Dataset::open(dir.path()).unwrap();
        ds.check_unique_ids().unwrap();
        // Shard 2 rewritten with shard 0's first id in its row 1 (manifest updated to match).
        let mut rows: Vec<ImageRow> = all[3..].to_vec();
        rows[1].id = "s0r0".into();
        let mut m = Manifest::read(dir.path()).unwrap();
        m.shards[2] = write_shard(&dir.path().join(shard_file_name(2)), &rows, ShardLayout::default()).unwrap();
        m.write(dir.path()).unwrap();
        let err = Dataset::open(dir.path()).unwrap().check_unique_ids().unwrap_err().to_string();
        assert!(err.contains("id s0r0 appears twice (part-00000.parquet row 0 and part-00002.parquet row 1)"), "{err}");
    }

    #[test]
    fn manifest_row_count_mismatch_names_the_shard() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path());
        let mut m = Manifest::read(dir.path()).unwrap();
        m.shards[0] = ShardInfo { rows: 2, ..m.shards[0].clone() };
        m.shards[2] = ShardInfo { rows: 5, ..m.shards[2].clone() };
        m.write(dir.path()).unwrap();
        let ds = Dataset::open(dir.path()).unwrap();
        let err = ds.read(&[0]).unwrap_err().to_string();
        assert!(err.contains("part-00000.parquet") && err.contains("holds 3 rows"), "{err}");
    }
}
