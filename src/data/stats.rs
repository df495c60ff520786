//! Dataset statistics for `data inspect`: counts, class histograms and image sizes, computed in
//! one streaming pass (row group by row group) so memory stays bounded.

use rayon::prelude::*;
use serde::Serialize;

use super::codec::decode_mask;
use super::{DataError, Dataset, PseudoRow};

/// Min, mean and max of a quantity.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Range {
    pub min: u32,
    pub mean: f64,
    pub max: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DatasetStats {
    pub kind: String,
    pub split: String,
    pub source: String,
    pub rows: u64,
    pub shards: usize,
    pub bytes_on_disk: u64,
    pub classes: Vec<String>,
    /// images_per_class[c]: images labelled with class c (entry 0, background, stays 0).
    pub images_per_class: Vec<u64>,
    /// labels_per_image[k]: images with k labels (the last entry counts k or more).
    pub labels_per_image: Vec<u64>,
    pub width: Range,
    pub height: Range,
    pub rows_with_mask: u64,
    /// Fraction of mask pixels per class id 0..=C (over rows with masks), and of ignore (255).
    pub pixel_fraction: Vec<f64>,
    pub ignore_fraction: f64,
}

/// Most labels per image that get their own histogram bin.
const LABEL_BINS: usize = 6;

/// Per-row figures accumulated across the dataset.
#[derive(Default)]
struct Tally {
    rows: u64,
    images_per_class: Vec<u64>,
    labels_per_image: Vec<u64>,
    width: (u32, u64, u32),
    height: (u32, u64, u32),
    rows_with_mask: u64,
    pixels: Vec<u64>,
    ignore: u64,
    mask_pixels: u64,
}

impl Tally {
    fn new(num_classes: usize) -> Tally {
        Tally {
            images_per_class: vec![0; num_classes + 1],
            labels_per_image: vec![0; LABEL_BINS + 1],
            width: (u32::MAX, 0, 0),
            height: (u32::MAX, 0, 0),
            pixels: vec![0; num_classes + 1],
            ..Tally::default()
        }
    }

    fn merge(mut self, other: Tally) -> Tally {
        self.rows += other.rows;
        add(&mut self.images_per_class, &other.images_per_class);
        add(&mut self.labels_per_image, &other.labels_per_image);
        add(&mut self.pixels, &other.pixels);
        self.width = merge_range(self.width, other.width);
        self.height = merge_range(self.height, other.height);
        self.rows_with_mask += other.rows_with_mask;
        self.ignore += other.ignore;
        self.mask_pixels += other.mask_pixels;
        self
    }
}

fn add(into: &mut [u64], from: &[u64]) {
    into.iter_mut().zip(from).for_each(|(a, b)| *a += b);
}

fn merge_range(a: (u32, u64, u32), b: (u32, u64, u32)) -> (u32, u64, u32) {
    (a.0.min(b.0), a.1 + b.1, a.2.max(b.2))
}

fn to_range((min, sum, max): (u32, u64, u32), rows: u64) -> Range {
    if rows == 0 {
        return Range { min: 0, mean: 0.0, max: 0 };
    }
    Range { min, mean: sum as f64 / rows as f64, max }
}

/// Adds each id of `ids` below `counts.len()` to its count; returns how many were not (255).
fn count_ids(ids: &[u8], counts: &mut [u64]) -> u64 {
    let mut others = 0;
    for &v in ids {
        match counts.get_mut(v as usize) {
            Some(count) => *count += 1,
            None => others += 1,
        }
    }
    others
}

/// The labelled pixels of a pseudo-label dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelCounts {
    /// Labelled pixels of each class id 0..=C over every mask (the segmenter's class weights).
    pub pixels: Vec<u64>,
    /// Pixels no class id labels (255, and any id over C).
    pub unlabelled: u64,
    /// Masks read, and those with no labelled pixel (every pixel 255).
    pub masks: usize,
    pub empty_masks: usize,
}

impl LabelCounts {
    fn new(num_classes: usize) -> LabelCounts {
        LabelCounts { pixels: vec![0; num_classes + 1], unlabelled: 0, masks: 0, empty_masks: 0 }
    }

    fn merge(mut self, other: LabelCounts) -> LabelCounts {
        add(&mut self.pixels, &other.pixels);
        self.unlabelled += other.unlabelled;
        self.masks += other.masks;
        self.empty_masks += other.empty_masks;
        self
    }

    pub fn labelled(&self) -> u64 {
        self.pixels.iter().sum()
    }

    /// The share of all pixels that carry a class id.
    pub fn labelled_share(&self) -> f64 {
        self.labelled() as f64 / (self.labelled() + self.unlabelled).max(1) as f64
    }
}

/// The labelled pixels of each class id 0..=`num_classes` over every mask of a pseudo-label
/// dataset, and how many masks label no pixel.
pub fn label_pixel_counts(dataset: &Dataset<PseudoRow>, num_classes: usize) -> Result<LabelCounts, DataError> {
    let mut total = LabelCounts::new(num_classes);
    for s in 0..dataset.num_shards() {
        let reader = dataset.shard(s)?;
        for group in 0..reader.num_row_groups() {
            let counts = reader
                .read_row_group(group)?
                .par_iter()
                .map(|row| {
                    let (_, _, ids) = decode_mask(&row.mask)
                        .map_err(|message| DataError::BadImage { what: format!("{} id {}", dataset.shard_path(s).display(), row.id), message })?;
                    let mut counts = LabelCounts::new(num_classes);
                    counts.unlabelled = count_ids(&ids, &mut counts.pixels);
                    counts.masks = 1;
                    counts.empty_masks = usize::from(counts.labelled() == 0);
                    Ok::<LabelCounts, DataError>(counts)
                })
                .try_reduce(|| LabelCounts::new(num_classes), |a, b| Ok(a.merge(b)))?;
            total = total.merge(counts);
        }
    }
    Ok(total)
}

/// Computes the statistics of `dataset`; masks are decoded for the pixel histogram.
pub fn dataset_stats(dataset: &Dataset) -> Result<DatasetStats, DataError> {
    let manifest = dataset.manifest();
    let num_classes = manifest.num_classes() as usize;
    let mut total = Tally::new(num_classes);
    let mut bytes_on_disk = 0;
    for s in 0..dataset.num_shards() {
        let path = dataset.shard_path(s);
        bytes_on_disk += std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?.len();
        let reader = dataset.shard(s)?;
        for group in 0..reader.num_row_groups() {
            let rows = reader.read_row_group(group)?;
            let tally = rows
                .par_iter()
                .map(|row| {
                    let mut t = Tally::new(num_classes);
                    t.rows = 1;
                    for &l in &row.labels {
                        if let Some(count) = t.images_per_class.get_mut(l as usize) {
                            *count += 1;
                        }
                    }
                    t.labels_per_image[row.labels.len().min(LABEL_BINS)] += 1;
                    t.width = (row.width, row.width as u64, row.width);
                    t.height = (row.height, row.height as u64, row.height);
                    if let Some(bytes) = &row.mask {
                        let (_, _, ids) =
                            decode_mask(bytes).map_err(|message| DataError::BadImage { what: format!("{} id {}", path.display(), row.id), message })?;
                        t.rows_with_mask = 1;
                        t.mask_pixels = ids.len() as u64;
                        t.ignore = count_ids(&ids, &mut t.pixels);
                    }
                    Ok::<Tally, DataError>(t)
                })
                .try_reduce(|| Tally::new(num_classes), |a, b| Ok(a.merge(b)))?;
            total = total.merge(tally);
        }
    }
    let fraction = |n: u64| if total.mask_pixels == 0 { 0.0 } else { n as f64 / total.mask_pixels as f64 };
    Ok(DatasetStats {
        kind: format!("{:?}", manifest.kind).to_lowercase(),
        split: manifest.split.clone(),
        source: manifest.source.clone(),
        rows: total.rows,
        shards: dataset.num_shards(),
        bytes_on_disk,
        classes: manifest.classes.clone(),
        images_per_class: total.images_per_class,
        labels_per_image: total.labels_per_image,
        width: to_range(total.width, total.rows),
        height: to_range(total.height, total.rows),
        rows_with_mask: total.rows_with_mask,
        pixel_fraction: total.pixels.iter().map(|&n| fraction(n)).collect(),
        ignore_fraction: fraction(total.ignore),
    })
}
