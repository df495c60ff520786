//! PASCAL VOC 2012 importer (the VOCdevkit layout):
//! `JPEGImages/<id>.jpg`, `ImageSets/Segmentation/<split>.txt`, masks from
//! `SegmentationClassAug/` (preferred) or `SegmentationClass/` when present (palette or
//! grayscale PNGs whose values are the class ids; RGB-coloured PNGs are mapped back through the
//! VOC palette), image labels from `Annotations/<id>.xml` when present, otherwise from the mask.

use std::path::{Path, PathBuf};

use super::codec::{decode_label_png, decode_rgb, encode_mask, voc_color, LabelPixels};
use super::importer::{ImportSource, RowOutcome};
use super::schema::ImageRow;
use super::DataError;

/// Class names of ids 0..=20.
pub const VOC_CLASSES: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// A VOC split ready to import.
pub struct VocSource {
    root: PathBuf,
    split: String,
    ids: Vec<String>,
    mask_dir: Option<PathBuf>,
    annotation_dir: Option<PathBuf>,
    /// RGB colour → class id, for masks saved as colour images.
    colors: std::collections::HashMap<[u8; 3], u8>,
}

impl VocSource {
    /// `root` is the `VOC2012` directory (the one holding `JPEGImages`).
    pub fn open(root: &Path, split: &str) -> Result<VocSource, DataError> {
        let list = root.join("ImageSets/Segmentation").join(format!("{split}.txt"));
        let text = std::fs::read_to_string(&list).map_err(|e| DataError::io(&list, e))?;
        let ids: Vec<String> = text.split_whitespace().map(str::to_string).collect();
        // An id names JPEGImages/<id>.jpg: a path there would read outside --root.
        for (line, entry) in text.lines().enumerate() {
            if let Some(Err(e)) = entry.split_whitespace().map(super::schema::check_id).find(Result::is_err) {
                return Err(DataError::Invalid(format!("{} line {}: image id {e}", list.display(), line + 1)));
            }
        }
        if ids.is_empty() {
            return Err(DataError::Invalid(format!("{}: lists no image ids", list.display())));
        }
        let jpeg_dir = root.join("JPEGImages");
        if !jpeg_dir.is_dir() {
            return Err(DataError::Invalid(format!("{}: no such directory (is --root the VOC2012 folder?)", jpeg_dir.display())));
        }
        let existing = |name: &str| Some(root.join(name)).filter(|p| p.is_dir());
        let mask_dir = existing("SegmentationClassAug").or_else(|| existing("SegmentationClass"));
        let annotation_dir = existing("Annotations");
        let colors = (0..=20u8).chain([255]).map(|i| (voc_color(i), i)).collect();
        Ok(VocSource { root: root.into(), split: split.into(), ids, mask_dir, annotation_dir, colors })
    }

    fn mask(&self, id: &str, width: u32, height: u32) -> Result<Option<Vec<u8>>, DataError> {
        let Some((path, bytes)) = read_optional(self.mask_dir.as_deref(), &format!("{id}.png"))? else { return Ok(None) };
        let what = path.display().to_string();
        let (w, h, pixels) = decode_label_png(&bytes).map_err(|message| DataError::BadImage { what: what.clone(), message })?;
        if (w, h) != (width, height) {
            return Err(DataError::MaskSize { what, width, height, mask_width: w, mask_height: h });
        }
        let ids = match pixels {
            LabelPixels::Ids(ids) => ids,
            LabelPixels::Rgb(rgb) => self.colors_to_ids(&rgb, &what)?,
        };
        if let Some(&bad) = ids.iter().find(|&&v| v > 20 && v != 255) {
            return Err(DataError::ClassOutOfRange { what, value: bad.into(), classes: 20 });
        }
        Ok(Some(ids))
    }

    fn colors_to_ids(&self, rgb: &[u8], what: &str) -> Result<Vec<u8>, DataError> {
        rgb.chunks_exact(3)
            .map(|px| {
                let color = [px[0], px[1], px[2]];
                self.colors
                    .get(&color)
                    .copied()
                    .ok_or_else(|| DataError::BadImage { what: what.into(), message: format!("colour {color:?} is not a VOC palette colour") })
            })
            .collect()
    }

    fn xml_labels(&self, id: &str) -> Result<Option<Vec<u16>>, DataError> {
        let Some((path, bytes)) = read_optional(self.annotation_dir.as_deref(), &format!("{id}.xml"))? else { return Ok(None) };
        let bad = |message: String| DataError::BadImage { what: path.display().to_string(), message };
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
        let doc = roxmltree::Document::parse(&text).map_err(|e| bad(format!("invalid XML: {e}")))?;
        let mut labels = Vec::new();
        for object in doc.descendants().filter(|n| n.has_tag_name("object")) {
            let name = object
                .children()
                .find(|n| n.has_tag_name("name"))
                .and_then(|n| n.text())
                .map(str::trim)
                .ok_or_else(|| bad("an <object> has no <name>".into()))?;
            let class = VOC_CLASSES.iter().position(|c| *c == name).filter(|&c| c > 0).ok_or_else(|| bad(format!("unknown class name {name:?}")))?;
            labels.push(class as u16);
        }
        labels.sort_unstable();
        labels.dedup();
        Ok(Some(labels))
    }
}

/// `dir/name` and its bytes, or None when the directory or the file does not exist (a VOC
/// split may lack masks or annotations for some or all images).
fn read_optional(dir: Option<&Path>, name: &str) -> Result<Option<(PathBuf, Vec<u8>)>, DataError> {
    let Some(dir) = dir else { return Ok(None) };
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some((path, bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DataError::io(&path, e)),
    }
}

/// The classes present in a mask (ignoring background and 255), sorted.
pub fn labels_from_mask(ids: &[u8]) -> Vec<u16> {
    let mut present = [false; 256];
    for &v in ids {
        present[v as usize] = true;
    }
    (1..255u16).filter(|&c| present[c as usize]).collect()
}

impl ImportSource for VocSource {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn classes(&self) -> Vec<String> {
        VOC_CLASSES.iter().map(|c| c.to_string()).collect()
    }

    fn split(&self) -> String {
        self.split.clone()
    }

    fn describe(&self) -> String {
        format!("voc root={} split={}", self.root.display(), self.split)
    }

    fn row(&self, index: usize) -> Result<RowOutcome, DataError> {
        let id = &self.ids[index];
        let path = self.root.join("JPEGImages").join(format!("{id}.jpg"));
        let image = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let rgb = match decode_rgb(&image) {
            Ok(rgb) => rgb,
            Err(reason) => return Ok(RowOutcome::Skip(format!("{}: {reason}", path.display()))),
        };
        let mask = self.mask(id, rgb.width, rgb.height)?;
        let labels = match (self.xml_labels(id)?, &mask) {
            (Some(labels), _) => labels,
            (None, Some(ids)) => labels_from_mask(ids),
            (None, None) => {
                return Err(DataError::Invalid(format!("image {id}: no labels (neither Annotations/{id}.xml nor a mask)")));
            }
        };
        Ok(RowOutcome::Row(ImageRow {
            id: id.clone(),
            image,
            width: rgb.width,
            height: rgb.height,
            labels,
            mask: mask.map(|ids| encode_mask(rgb.width, rgb.height, &ids)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_matches_the_devkit_colours() {
        // Values from the VOC devkit's colour map (VOClabelcolormap).
        assert_eq!(voc_color(0), [0, 0, 0]);
        assert_eq!(voc_color(1), [128, 0, 0]);
        assert_eq!(voc_color(2), [0, 128, 0]);
        assert_eq!(voc_color(8), [64, 0, 0]);
        assert_eq!(voc_color(15), [192, 128, 128]);
        assert_eq!(voc_color(20), [0, 64, 128]);
        assert_eq!(voc_color(255), [224, 224, 192]);
    }

    #[test]
    fn labels_from_mask_ignore_background_and_void() {
        assert_eq!(labels_from_mask(&[0, 255, 15, 8, 15, 0]), vec![8, 15]);
        assert!(labels_from_mask(&[0, 255]).is_empty());
    }
}
