//! Image dataset ⋈ pseudo-label dataset by id: the segmenter's training pairs. The map phase
//! writes pseudo-label shard k from image shard k with its rows sorted by id, so the join runs
//! shard by shard on the `id` columns alone.

use std::collections::HashMap;

use super::schema::{ImageRow, PseudoRow};
use super::{DataError, Dataset};

/// For every row of `images` (global index), the global index of its pseudo-label in `labels`.
/// An image without a pseudo-label, a pseudo-label without an image, a duplicated id or shard
/// counts that differ is an error naming the id and the shard (an id held twice, anywhere in
/// either dataset, with both places).
pub fn join_by_id(images: &Dataset<ImageRow>, labels: &Dataset<PseudoRow>) -> Result<Vec<usize>, DataError> {
    images.check_unique_ids()?;
    labels.check_unique_ids()?;
    if images.num_shards() != labels.num_shards() {
        return Err(DataError::Invalid(format!(
            "{} has {} shard(s) but the images in {} have {}: pseudo-labels must come from the same image dataset",
            labels.dir().display(),
            labels.num_shards(),
            images.dir().display(),
            images.num_shards()
        )));
    }
    let mut rows = Vec::with_capacity(images.len());
    let mut label_start = 0;
    for shard in 0..images.num_shards() {
        let image_ids = images.shard(shard)?.read_ids()?;
        let label_ids = labels.shard(shard)?.read_ids()?;
        let file = &images.manifest().shards[shard].file;
        let mut position: HashMap<&str, usize> = label_ids.iter().enumerate().map(|(row, id)| (id.as_str(), row)).collect();
        for id in &image_ids {
            let row = position.remove(id.as_str()).ok_or_else(|| {
                DataError::Invalid(format!("image id {id} (shard {file} of {}) has no pseudo-label in {}", images.dir().display(), labels.dir().display()))
            })?;
            rows.push(label_start + row);
        }
        if let Some(id) = position.keys().min() {
            return Err(DataError::Invalid(format!(
                "pseudo-label id {id} (shard {file} of {}) has no image in {}",
                labels.dir().display(),
                images.dir().display()
            )));
        }
        label_start += label_ids.len();
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::schema::{DatasetKind, Manifest, ShardRow, FORMAT_VERSION};
    use crate::data::shard::{shard_file_name, write_shard, ShardLayout};
    use std::path::Path;

    fn write<R: ShardRow>(dir: &Path, kind: DatasetKind, shards: &[Vec<R>]) {
        std::fs::create_dir_all(dir).unwrap();
        let infos: Vec<_> =
            shards.iter().enumerate().map(|(k, rows)| write_shard(&dir.join(shard_file_name(k)), rows, ShardLayout::default()).unwrap()).collect();
        let rows = shards.iter().map(|s| s.len() as u64).sum();
        Manifest {
            format_version: FORMAT_VERSION,
            kind,
            split: "train".into(),
            classes: vec!["background".into(), "a".into()],
            rows,
            shards: infos,
            source: "test".into(),
        }
        .write(dir)
        .unwrap();
    }

    fn images(dir: &Path, shards: &[&[&str]]) -> Dataset {
        let rows: Vec<Vec<ImageRow>> = shards
            .iter()
            .map(|ids| ids.iter().map(|id| ImageRow { id: id.to_string(), image: vec![1], width: 1, height: 1, labels: vec![1], mask: None }).collect())
            .collect();
        write(dir, DatasetKind::Images, &rows);
        Dataset::open(dir).unwrap()
    }

    fn labels(dir: &Path, shards: &[&[&str]]) -> Dataset<PseudoRow> {
        let rows: Vec<Vec<PseudoRow>> =
            shards.iter().map(|ids| ids.iter().map(|id| PseudoRow { id: id.to_string(), mask: vec![2], method: "threshold".into() }).collect()).collect();
        write(dir, DatasetKind::PseudoLabels, &rows);
        Dataset::open_as(dir).unwrap()
    }

    #[test]
    fn joins_shard_by_shard_and_names_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let image_set = images(&tmp.path().join("images"), &[&["c", "a", "b"], &["d", "e"]]);
        // Pseudo-labels sorted by id within each shard, as the map phase writes them.
        let good = labels(&tmp.path().join("good"), &[&["a", "b", "c"], &["d", "e"]]);
        assert_eq!(join_by_id(&image_set, &good).unwrap(), [2, 0, 1, 3, 4]);
        let missing = labels(&tmp.path().join("missing"), &[&["a", "c"], &["d", "e"]]);
        let err = join_by_id(&image_set, &missing).unwrap_err().to_string();
        assert!(err.contains("image id b") && err.contains("part-00000"), "{err}");
        let extra = labels(&tmp.path().join("extra"), &[&["a", "b", "c"], &["d", "e", "f"]]);
        let err = join_by_id(&image_set, &extra).unwrap_err().to_string();
        assert!(err.contains("pseudo-label id f"), "{err}");
        let twice = labels(&tmp.path().join("twice"), &[&["a", "b", "c", "c"], &["d", "e"]]);
        assert!(join_by_id(&image_set, &twice).unwrap_err().to_string().contains("id c appears twice"));
        let one_shard = labels(&tmp.path().join("one"), &[&["a", "b", "c", "d", "e"]]);
        assert!(join_by_id(&image_set, &one_shard).unwrap_err().to_string().contains("1 shard(s)"));
    }
}
