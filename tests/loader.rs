//! The training loader on real shards: batch shapes, determinism across thread counts, rank
//! shares, resume from a cursor, image/mask alignment, and corrupt rows skipped and reported.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{s, voc_mini, wsss_ok};
use tch::{Kind, Tensor};
use wsss_dist::config::LoaderConfig;
use wsss_dist::data::loader::{Batch, Loader, LoaderSpec};
use wsss_dist::data::sampler::{Cursor, Sampler, Uneven};
use wsss_dist::data::shard::{write_shard, ShardLayout};
use wsss_dist::data::{Dataset, Manifest};

fn synthetic(dir: &Path, images: u32) -> Arc<Dataset> {
    let out = dir.join("syn");
    let n = images.to_string();
    wsss_ok(dir, &["data", "import", "synthetic", "--out", s(&out), "--images", &n, "--size", "64", "--shard-rows", "16"]);
    Arc::new(Dataset::open(&out).unwrap())
}

fn spec(threads: usize, with_mask: bool) -> LoaderSpec {
    let config = LoaderConfig { resize_long: [48, 96], crop: 64, batch_size: 5, ..LoaderConfig::default() };
    LoaderSpec { batch_size: config.batch_size, threads, prefetch: 3, augment: config.augment_params(), with_mask, seed: 11 }
}

fn sampler(len: usize, rank: usize, world: usize) -> Sampler {
    Sampler { len, seed: 11, rank, world, shuffle: true, uneven: Uneven::Pad }
}

fn collect(loader: &Loader, cursor: Cursor) -> Vec<Batch> {
    loader.epoch(cursor).map(|b| b.unwrap()).collect()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.equal(b)
}

#[test]
fn batches_are_identical_whatever_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synthetic(tmp.path(), 23);
    let one = collect(&Loader::new(ds.clone(), sampler(23, 0, 1), spec(1, true)).unwrap(), Cursor { epoch: 2, position: 0 });
    let three = collect(&Loader::new(ds.clone(), sampler(23, 0, 1), spec(3, true)).unwrap(), Cursor { epoch: 2, position: 0 });
    assert_eq!(one.len(), 5, "23 samples in batches of 5");
    assert_eq!(one[0].images.size(), [5, 3, 64, 64]);
    assert_eq!(one[0].images.kind(), Kind::Float);
    assert_eq!(one[0].labels.size(), [5, 6]);
    assert_eq!(one[4].images.size(), [3, 3, 64, 64], "the last batch holds the rest");
    for (a, b) in one.iter().zip(&three) {
        assert_eq!(a.ids, b.ids);
        assert!(same(&a.images, &b.images) && same(&a.labels, &b.labels));
        assert!(same(a.masks.as_ref().unwrap(), b.masks.as_ref().unwrap()));
    }
    // Another epoch draws another order and other augmentations.
    let other = collect(&Loader::new(ds, sampler(23, 0, 1), spec(2, true)).unwrap(), Cursor { epoch: 3, position: 0 });
    assert_ne!(one[0].indices, other[0].indices);

    // Labels are the multi-hot of the rows' labels; every delivered mask class is labelled.
    let rows = Dataset::open(&tmp.path().join("syn")).unwrap().read(&one[0].indices).unwrap();
    for (k, row) in rows.iter().enumerate() {
        let hot: Vec<f32> = Vec::try_from(one[0].labels.get(k as i64)).unwrap();
        let expected: Vec<f32> = (1..=6).map(|c| if row.labels.contains(&c) { 1.0 } else { 0.0 }).collect();
        assert_eq!(hot, expected, "row {}", row.id);
        let mask: Vec<u8> = Vec::try_from(one[0].masks.as_ref().unwrap().get(k as i64).flatten(0, -1)).unwrap();
        assert!(mask.iter().all(|&v| v == 0 || v == 255 || row.labels.contains(&(v as u16))));
    }
}

#[test]
fn ranks_split_the_epoch_and_resume_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synthetic(tmp.path(), 20);
    let whole = collect(&Loader::new(ds.clone(), sampler(20, 0, 1), spec(2, false)).unwrap(), Cursor { epoch: 0, position: 0 });
    let mut seen: Vec<usize> = Vec::new();
    for rank in 0..2 {
        let batches = collect(&Loader::new(ds.clone(), sampler(20, rank, 2), spec(2, false)).unwrap(), Cursor::default());
        let indices: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(indices.len(), 10);
        seen.extend(indices);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<_>>(), "two ranks cover the epoch once");

    // Stop after two batches, resume from the saved cursor: the same batches follow.
    let loader = Loader::new(ds, sampler(20, 0, 1), spec(2, false)).unwrap();
    let cursor = {
        let mut epoch = loader.epoch(Cursor::default());
        epoch.next().unwrap().unwrap();
        epoch.next().unwrap().unwrap().cursor
    };
    assert_eq!(cursor, Cursor { epoch: 0, position: 10 });
    let resumed = collect(&loader, cursor);
    assert_eq!(resumed.len(), 2);
    for (a, b) in resumed.iter().zip(&whole[2..]) {
        assert_eq!(a.indices, b.indices);
        assert!(same(&a.images, &b.images), "the same augmentation after resume");
    }
}

#[test]
fn corrupt_rows_are_skipped_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synthetic(tmp.path(), 16);
    let dir = tmp.path().join("syn");
    let mut rows = ds.read(&(0..16).collect::<Vec<_>>()).unwrap();
    rows[3].image.truncate(40);
    let bad_id = rows[3].id.clone();
    let info = write_shard(&dir.join("part-00000.parquet"), &rows, ShardLayout::default()).unwrap();
    let mut manifest = Manifest::read(&dir).unwrap();
    manifest.shards[0] = info;
    manifest.write(&dir).unwrap();
    let ds = Arc::new(Dataset::open(&dir).unwrap());
    let batches = collect(&Loader::new(ds, Sampler { shuffle: false, ..sampler(16, 0, 1) }, spec(2, true)).unwrap(), Cursor::default());
    let skipped: Vec<_> = batches.iter().flat_map(|b| b.skipped.clone()).collect();
    assert_eq!(skipped.len(), 1);
    assert_eq!((skipped[0].shard.as_str(), skipped[0].row, skipped[0].id.as_str()), ("part-00000.parquet", 3, bad_id.as_str()));
    assert!(skipped[0].to_string().contains("does not decode"), "{}", skipped[0]);
    assert_eq!(batches[0].images.size()[0], 4, "batch 0 lost one sample");
    assert_eq!(batches.iter().map(|b| b.indices.len()).sum::<usize>(), 15);
}

#[test]
fn voc_photos_load_with_aligned_masks() {
    let Some(voc) = voc_mini("voc_photos_load_with_aligned_masks") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("voc");
    wsss_ok(tmp.path(), &["data", "import", "voc", "--root", s(&voc), "--split", "val", "--out", s(&out)]);
    let ds = Arc::new(Dataset::open(&out).unwrap());
    let config = LoaderConfig { batch_size: 4, crop: 320, resize_long: [320, 400], with_mask: true, ..LoaderConfig::default() };
    let spec = LoaderSpec { batch_size: 4, threads: 2, prefetch: 2, augment: config.augment_params(), with_mask: true, seed: 0 };
    let loader = Loader::new(ds.clone(), sampler(ds.len(), 0, 1), spec).unwrap();
    let batch = loader.epoch(Cursor::default()).next().unwrap().unwrap();
    assert_eq!(batch.images.size(), [4, 3, 320, 320]);
    let masks = batch.masks.unwrap();
    // Padding is 255 in the mask and exactly 0.0 in every channel of the normalised image;
    // real pixels of a photo are almost never exactly 0.0 in all three channels.
    let pad = masks.eq(255).logical_and(&batch.images.abs().sum_dim_intlist(1, false, Kind::Float).eq(0.0));
    let mask_ignore = masks.eq(255).sum(Kind::Int64).int64_value(&[]);
    let image_pad = batch.images.abs().sum_dim_intlist(1, false, Kind::Float).eq(0.0).sum(Kind::Int64).int64_value(&[]);
    let both = pad.sum(Kind::Int64).int64_value(&[]);
    assert!(image_pad > 0, "320-400 px images cropped to 320 get padded somewhere");
    assert_eq!(both, image_pad, "every padded image pixel is ignore in the mask");
    assert!(mask_ignore >= image_pad);
    let values = ImageStats::of(&batch.images);
    assert!(values.mean.abs() < 1.0 && values.std > 0.3 && values.std < 2.0, "normalised: {values:?}");
}

#[derive(Debug)]
struct ImageStats {
    mean: f64,
    std: f64,
}

impl ImageStats {
    fn of(t: &Tensor) -> ImageStats {
        ImageStats { mean: t.mean(Kind::Double).double_value(&[]), std: t.std(true).double_value(&[]) }
    }
}
