//! MS COCO importer: an `instances_*.json` and its image folder.
//!
//! - Categories are sorted by their COCO id and numbered 1..=K in that order (for the 80 COCO
//!   categories: 1 person, 2 bicycle, ..., 80 toothbrush; see docs/datasets.md).
//! - Row id: the image file name without extension (e.g. `COCO_train2014_000000000009`).
//! - Image labels: the categories of all its annotations, crowd ones included.
//! - GT semantic mask: non-crowd annotations painted in file order (later wins), then crowd
//!   regions 255 where no non-crowd annotation lies (`coco_mask::semantic_mask`).
//! - Images without annotations are skipped (counted) unless `keep_unlabeled` is set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::coco_mask::{semantic_mask, MaskAnnotation, Segmentation};
use super::codec::{decode_rgb, encode_mask};
use super::importer::{ImportSource, RowOutcome};
use super::schema::ImageRow;
use super::DataError;

#[derive(Deserialize)]
struct InstancesFile {
    images: Vec<ImageEntry>,
    annotations: Vec<AnnotationEntry>,
    categories: Vec<CategoryEntry>,
}

#[derive(Deserialize)]
struct ImageEntry {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
}

#[derive(Deserialize)]
struct AnnotationEntry {
    id: Option<u64>,
    image_id: u64,
    category_id: u64,
    #[serde(default)]
    iscrowd: u8,
    segmentation: SegmentationEntry,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SegmentationEntry {
    Polygons(Vec<Vec<f64>>),
    Rle { counts: CountsEntry, size: [u32; 2] },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CountsEntry {
    List(Vec<u32>),
    Compressed(String),
}

#[derive(Deserialize)]
struct CategoryEntry {
    id: u64,
    name: String,
}

/// A COCO annotation file parsed and indexed, ready to import.
pub struct CocoSource {
    annotations_path: PathBuf,
    images_dir: PathBuf,
    split: String,
    classes: Vec<String>,
    images: Vec<ImageEntry>,
    /// Annotations of images[i], in file order, with contiguous class ids.
    per_image: Vec<Vec<(u8, AnnotationEntry)>>,
    keep_unlabeled: bool,
}

impl CocoSource {
    /// Parses `annotations` (an `instances_*.json`); `images_dir` holds the files it names.
    pub fn open(annotations: &Path, images_dir: &Path, keep_unlabeled: bool) -> Result<CocoSource, DataError> {
        let bytes = std::fs::read(annotations).map_err(|e| DataError::io(annotations, e))?;
        let file: InstancesFile =
            serde_json::from_slice(&bytes).map_err(|e| DataError::Invalid(format!("{}: not a COCO instances file: {e}", annotations.display())))?;
        drop(bytes);
        if !images_dir.is_dir() {
            return Err(DataError::Invalid(format!("{}: no such image directory", images_dir.display())));
        }
        // Images are read from images_dir/file_name and named by its stem: a path there would
        // read outside the folder.
        if let Some((image, e)) = file.images.iter().find_map(|im| super::schema::check_id(&im.file_name).err().map(|e| (im, e))) {
            return Err(DataError::Invalid(format!("{}: image id {}: file_name {e}", annotations.display(), image.id)));
        }
        let mut categories = file.categories;
        categories.sort_by_key(|c| c.id);
        if categories.len() > 254 {
            return Err(DataError::Invalid(format!("{}: {} categories; at most 254 fit a mask", annotations.display(), categories.len())));
        }
        let class_of: HashMap<u64, u8> = categories.iter().enumerate().map(|(i, c)| (c.id, i as u8 + 1)).collect();
        let slot_of: HashMap<u64, usize> = file.images.iter().enumerate().map(|(i, im)| (im.id, i)).collect();
        let mut per_image: Vec<Vec<(u8, AnnotationEntry)>> = file.images.iter().map(|_| Vec::new()).collect();
        for ann in file.annotations {
            let name = || format!("{}: annotation {}", annotations.display(), ann.id.map_or("?".into(), |i| i.to_string()));
            let class = *class_of.get(&ann.category_id).ok_or_else(|| DataError::Invalid(format!("{}: unknown category_id {}", name(), ann.category_id)))?;
            let slot = *slot_of.get(&ann.image_id).ok_or_else(|| DataError::Invalid(format!("{}: unknown image_id {}", name(), ann.image_id)))?;
            per_image[slot].push((class, ann));
        }
        let split = annotations.file_stem().map(|s| s.to_string_lossy().trim_start_matches("instances_").to_string()).unwrap_or_default();
        let mut classes = vec!["background".to_string()];
        classes.extend(categories.into_iter().map(|c| c.name));
        Ok(CocoSource { annotations_path: annotations.into(), images_dir: images_dir.into(), split, classes, images: file.images, per_image, keep_unlabeled })
    }
}

/// COCO files hold some polygons of fewer than 3 points; they enclose no area, so leaving
/// them out loses no pixel (as detectron2 does); an odd-length one stays, to be reported as
/// malformed. `None` when nothing is left to paint.
fn to_segmentation(entry: &SegmentationEntry) -> Option<Segmentation> {
    Some(match entry {
        SegmentationEntry::Polygons(polygons) => {
            let drawable: Vec<Vec<f64>> = polygons.iter().filter(|p| p.len() >= 6 || p.len() % 2 == 1).cloned().collect();
            if drawable.is_empty() {
                return None;
            }
            Segmentation::Polygons(drawable)
        }
        SegmentationEntry::Rle { counts: CountsEntry::List(counts), size: [height, width] } => {
            Segmentation::Counts { height: *height, width: *width, counts: counts.clone() }
        }
        SegmentationEntry::Rle { counts: CountsEntry::Compressed(counts), size: [height, width] } => {
            Segmentation::Compressed { height: *height, width: *width, counts: counts.clone() }
        }
    })
}

impl ImportSource for CocoSource {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn classes(&self) -> Vec<String> {
        self.classes.clone()
    }

    fn split(&self) -> String {
        self.split.clone()
    }

    fn describe(&self) -> String {
        format!("coco annotations={} images={}", self.annotations_path.display(), self.images_dir.display())
    }

    fn row(&self, index: usize) -> Result<RowOutcome, DataError> {
        let entry = &self.images[index];
        let annotations = &self.per_image[index];
        let path = self.images_dir.join(&entry.file_name);
        if annotations.is_empty() && !self.keep_unlabeled {
            return Ok(RowOutcome::Skip(format!("{}: no annotations", path.display())));
        }
        let image = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let rgb = match decode_rgb(&image) {
            Ok(rgb) => rgb,
            Err(reason) => return Ok(RowOutcome::Skip(format!("{}: {reason}", path.display()))),
        };
        let what = format!("{} (image_id {})", path.display(), entry.id);
        if (rgb.width, rgb.height) != (entry.width, entry.height) {
            return Err(DataError::Invalid(format!(
                "{what}: decodes to {}x{} but the annotation file says {}x{}",
                rgb.width, rgb.height, entry.width, entry.height
            )));
        }
        let shapes: Vec<MaskAnnotation> = annotations
            .iter()
            .filter_map(|(class, ann)| {
                let segmentation = to_segmentation(&ann.segmentation)?;
                Some(MaskAnnotation { class_id: *class, crowd: ann.iscrowd != 0, segmentation })
            })
            .collect();
        let mask = semantic_mask(entry.height, entry.width, &shapes).map_err(|e| DataError::Invalid(format!("{what}: {e}")))?;
        let mut labels: Vec<u16> = annotations.iter().map(|(class, _)| *class as u16).collect();
        labels.sort_unstable();
        labels.dedup();
        let id = Path::new(&entry.file_name).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| entry.id.to_string());
        Ok(RowOutcome::Row(ImageRow { id, image, width: rgb.width, height: rgb.height, labels, mask: Some(encode_mask(rgb.width, rgb.height, &mask)) }))
    }
}
