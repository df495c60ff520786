//! The on-disk formats in one place: the Arrow schema of image rows, the dataset manifest,
//! and the conversions between rows and record batches (DESIGN.md "Formats").

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, ListArray, ListBuilder, RecordBatch, StringArray, UInt16Array,
    UInt16Builder, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::DataError;

/// Bumped whenever the row schema or the manifest changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's file name inside a dataset directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The column names of an image row, in schema order.
pub mod col {
    pub const ID: &str = "id";
    pub const IMAGE: &str = "image";
    pub const WIDTH: &str = "width";
    pub const HEIGHT: &str = "height";
    pub const LABELS: &str = "labels";
    pub const MASK: &str = "mask";
}

/// The Arrow schema of an image dataset shard.
pub fn image_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::ID, DataType::Utf8, false),
        Field::new(col::IMAGE, DataType::Binary, false),
        Field::new(col::WIDTH, DataType::UInt32, false),
        Field::new(col::HEIGHT, DataType::UInt32, false),
        Field::new(col::LABELS, DataType::List(Arc::new(Field::new("item", DataType::UInt16, true))), false),
        Field::new(col::MASK, DataType::Binary, true),
    ]))
}

/// One image of a dataset: the original encoded bytes, never re-encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRow {
    pub id: String,
    /// The encoded image file (JPEG or PNG) exactly as imported.
    pub image: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// Class ids 1..=C present in the image, sorted and unique (0, background, is never a label).
    pub labels: Vec<u16>,
    /// 8-bit grayscale PNG: 0 background, 1..=C classes, 255 ignore.
    pub mask: Option<Vec<u8>>,
}

/// What a dataset holds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    Images,
    Cams,
    PseudoLabels,
}

/// One shard as the manifest records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardInfo {
    pub file: String,
    pub rows: u64,
    pub sha256: String,
}

/// `manifest.json`: everything needed to read and check a dataset without opening its shards.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub kind: DatasetKind,
    pub split: String,
    /// Names of class ids 0..=C; entry 0 is "background".
    pub classes: Vec<String>,
    pub rows: u64,
    pub shards: Vec<ShardInfo>,
    /// How the dataset was made (importer and its arguments), for people.
    pub source: String,
}

impl Manifest {
    /// C, the number of foreground classes.
    pub fn num_classes(&self) -> u16 {
        self.classes.len().saturating_sub(1) as u16
    }

    /// Reads and checks `<dir>/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest, DataError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DataError::MissingManifest { dir: dir.into() },
            _ => DataError::io(&path, e),
        })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| DataError::BadManifest { path: path.clone(), message: e.to_string() })?;
        manifest.check(&path)?;
        Ok(manifest)
    }

    fn check(&self, path: &Path) -> Result<(), DataError> {
        let bad = |message: String| Err(DataError::BadManifest { path: path.into(), message });
        if self.format_version != FORMAT_VERSION {
            return bad(format!("format_version {} is not the supported {FORMAT_VERSION}", self.format_version));
        }
        if self.classes.first().map(String::as_str) != Some("background") || self.classes.len() > 256 {
            return bad("classes must start with \"background\" and hold at most 256 names".into());
        }
        let total: u64 = self.shards.iter().map(|s| s.rows).sum();
        if total != self.rows {
            return bad(format!("rows is {} but the shards hold {total}", self.rows));
        }
        if let Some(s) = self.shards.iter().find(|s| s.file.contains('/') || s.file.contains("..")) {
            return bad(format!("shard file name {:?} must be a plain name inside the dataset", s.file));
        }
        Ok(())
    }

    /// Writes the manifest atomically into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), DataError> {
        let text = serde_json::to_string_pretty(self).expect("a manifest serialises");
        super::atomic_write(&dir.join(MANIFEST_FILE), text.as_bytes())
    }
}

/// Builds one record batch of image rows.
pub fn image_rows_to_batch(rows: &[ImageRow]) -> Result<RecordBatch, DataError> {
    let ids: StringArray = rows.iter().map(|r| Some(r.id.as_str())).collect();
    let mut images = BinaryBuilder::with_capacity(rows.len(), rows.iter().map(|r| r.image.len()).sum());
    let mut masks = BinaryBuilder::new();
    let mut labels = ListBuilder::new(UInt16Builder::new());
    for row in rows {
        images.append_value(&row.image);
        masks.append_option(row.mask.as_deref());
        labels.values().append_slice(&row.labels);
        labels.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids),
        Arc::new(images.finish()),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.width))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.height))),
        Arc::new(labels.finish()),
        Arc::new(masks.finish()),
    ];
    Ok(RecordBatch::try_new(image_schema(), columns)?)
}

/// Reads the image rows of a record batch, checking its columns; `file` names the shard in errors.
pub fn image_rows_from_batch(batch: &RecordBatch, file: &Path) -> Result<Vec<ImageRow>, DataError> {
    let columns = ImageColumns::new(batch, file)?;
    Ok((0..batch.num_rows()).map(|i| columns.row(i)).collect())
}

/// Typed views of the columns of one image batch.
struct ImageColumns<'a> {
    id: &'a StringArray,
    image: &'a BinaryArray,
    width: &'a UInt32Array,
    height: &'a UInt32Array,
    labels: &'a ListArray,
    mask: &'a BinaryArray,
}

impl<'a> ImageColumns<'a> {
    fn new(batch: &'a RecordBatch, file: &Path) -> Result<Self, DataError> {
        Ok(ImageColumns {
            id: column(batch, col::ID, file)?,
            image: column(batch, col::IMAGE, file)?,
            width: column(batch, col::WIDTH, file)?,
            height: column(batch, col::HEIGHT, file)?,
            labels: column(batch, col::LABELS, file)?,
            mask: column(batch, col::MASK, file)?,
        })
    }

    fn row(&self, i: usize) -> ImageRow {
        let labels = self.labels.value(i);
        let labels = labels.as_any().downcast_ref::<UInt16Array>().map(|a| a.values().to_vec()).unwrap_or_default();
        ImageRow {
            id: self.id.value(i).to_string(),
            image: self.image.value(i).to_vec(),
            width: self.width.value(i),
            height: self.height.value(i),
            labels,
            mask: (!self.mask.is_null(i)).then(|| self.mask.value(i).to_vec()),
        }
    }
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str, file: &Path) -> Result<&'a T, DataError> {
    let foreign = |message: String| DataError::ForeignShard { path: PathBuf::from(file), message };
    let array = batch.column_by_name(name).ok_or_else(|| foreign(format!("no column `{name}`")))?;
    if name == col::LABELS {
        let item_ok = matches!(array.data_type(), DataType::List(f) if f.data_type() == &DataType::UInt16);
        if !item_ok {
            return Err(foreign(format!("column `labels` is {:?}, expected list<uint16>", array.data_type())));
        }
    }
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| foreign(format!("column `{name}` has type {:?}, not the one wsss-dist writes", array.data_type())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, labels: &[u16], mask: Option<&[u8]>) -> ImageRow {
        ImageRow {
            id: id.into(),
            image: vec![1, 2, 3, id.len() as u8],
            width: 7,
            height: 5,
            labels: labels.to_vec(),
            mask: mask.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn rows_round_trip_through_a_batch() {
        let rows = vec![row("a", &[1, 3], Some(&[9, 9])), row("bb", &[], None), row("c", &[20], Some(&[]))];
        let batch = image_rows_to_batch(&rows).unwrap();
        assert_eq!(batch.schema(), image_schema());
        assert_eq!(image_rows_from_batch(&batch, Path::new("x")).unwrap(), rows);
    }

    #[test]
    fn a_batch_of_another_schema_is_named_foreign() {
        let other = RecordBatch::try_from_iter([("id", Arc::new(UInt32Array::from(vec![1])) as ArrayRef)]).unwrap();
        let err = image_rows_from_batch(&other, Path::new("shard.parquet")).unwrap_err().to_string();
        assert!(err.contains("shard.parquet") && err.contains("`id`"), "{err}");
    }

    #[test]
    fn manifest_checks_totals_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest {
            format_version: FORMAT_VERSION,
            kind: DatasetKind::Images,
            split: "train".into(),
            classes: vec!["background".into(), "cat".into()],
            rows: 3,
            shards: vec![ShardInfo { file: "part-00000.parquet".into(), rows: 3, sha256: "00".into() }],
            source: "test".into(),
        };
        m.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), m);
        assert_eq!(m.num_classes(), 1);
        m.rows = 4;
        m.write(dir.path()).unwrap();
        let err = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("manifest.json") && err.contains("rows is 4"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = Manifest::read(empty.path()).unwrap_err().to_string();
        assert!(err.contains("no manifest.json"), "{err}");
    }
}
