//! The segmenter recipe's ceiling (benchmarks/results/voc.md): writes the ground-truth masks
//! of an imported image dataset as a pseudo-label dataset (`method = "ground_truth"`, shard k
//! for image shard k, rows sorted by id), so that `train seg` with `seg.labels` pointing at it
//! trains on perfect labels with the same schedule as on pseudo-labels.
//!
//!   cargo bench --bench oracle_labels -- IMAGE_DATASET OUT_DIR
use std::path::Path;

use wsss_dist::data::schema::{DatasetKind, Manifest, PseudoRow, FORMAT_VERSION};
use wsss_dist::data::shard::{shard_file_name, write_shard, ShardLayout};
use wsss_dist::data::Dataset;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let [images, out] = args.as_slice() else { anyhow::bail!("usage: cargo bench --bench oracle_labels -- IMAGE_DATASET OUT_DIR") };
    let images = Dataset::open(Path::new(images))?;
    let out = Path::new(out);
    std::fs::create_dir_all(out)?;
    let mut infos = Vec::new();
    for shard in 0..images.num_shards() {
        let mut rows: Vec<PseudoRow> = images
            .shard(shard)?
            .read_all()?
            .into_iter()
            .map(|row| {
                let mask = row.mask.ok_or_else(|| anyhow::anyhow!("image {} has no ground-truth mask", row.id))?;
                Ok(PseudoRow { id: row.id, mask, method: "ground_truth".into() })
            })
            .collect::<anyhow::Result<_>>()?;
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        infos.push(write_shard(&out.join(shard_file_name(shard)), &rows, ShardLayout::default())?);
    }
    let source = images.manifest();
    Manifest {
        format_version: FORMAT_VERSION,
        kind: DatasetKind::PseudoLabels,
        split: source.split.clone(),
        classes: source.classes.clone(),
        rows: source.rows,
        shards: infos,
        source: format!("ground-truth masks of {}", images.dir().display()),
    }
    .write(out)?;
    println!("{} ground-truth label rows in {}", source.rows, out.display());
    Ok(())
}
