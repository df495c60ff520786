//! The on-disk formats in one place: the Arrow schema of image rows, the dataset manifest,
//! and the conversions between rows and record batches (docs/architecture.md, "Formats").

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, Float32Builder, ListArray, ListBuilder, RecordBatch, StringArray, UInt16Builder, UInt32Array,
};
use arrow::datatypes::{ArrowPrimitiveType, DataType, Field, Float32Type, Schema, SchemaRef, UInt16Type};
use serde::{Deserialize, Serialize};

use super::DataError;

/// Bumped whenever the row schema or the manifest changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's file name inside a dataset directory. The leading `_` makes pyarrow, pandas,
/// polars and DuckDB skip it when they read the directory as one table (as Spark's
/// `_SUCCESS`), so `pq.read_table(DIR)` works.
pub const MANIFEST_FILE: &str = "_manifest.json";
/// The name datasets written before 2026-12 use; still read.
pub const LEGACY_MANIFEST_FILE: &str = "manifest.json";

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

/// `_manifest.json`: everything needed to read and check a dataset without opening its shards.
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

    /// The manifest file of the dataset in `dir`: [`MANIFEST_FILE`], or the legacy name
    /// where only that exists.
    pub fn path_in(dir: &Path) -> PathBuf {
        let legacy = dir.join(LEGACY_MANIFEST_FILE);
        if !dir.join(MANIFEST_FILE).exists() && legacy.exists() {
            return legacy;
        }
        dir.join(MANIFEST_FILE)
    }

    /// Whether `dir` holds a manifest (of either name): a complete dataset.
    pub fn exists(dir: &Path) -> bool {
        Self::path_in(dir).exists()
    }

    /// Reads and checks the manifest of the dataset in `dir`.
    pub fn read(dir: &Path) -> Result<Manifest, DataError> {
        let path = Self::path_in(dir);
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DataError::MissingManifest { dir: dir.into() },
            _ => DataError::io(&path, e),
        })?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| DataError::BadManifest { path: path.clone(), message: e.to_string() })?;
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

    /// Writes the manifest atomically into `dir` (and removes a legacy one, so that a
    /// dataset never holds two that could disagree).
    pub fn write(&self, dir: &Path) -> Result<(), DataError> {
        let text = serde_json::to_string_pretty(self).expect("a manifest serialises");
        super::atomic_write(&dir.join(MANIFEST_FILE), text.as_bytes())?;
        let legacy = dir.join(LEGACY_MANIFEST_FILE);
        match std::fs::remove_file(&legacy) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataError::io(&legacy, e)),
            _ => Ok(()),
        }
    }
}

/// A row type with its own shard schema: what the shard writer and reader are generic over.
pub trait ShardRow: Sized + Clone + Send + Sync + 'static {
    /// The manifest kind of a dataset of these rows.
    const KIND: DatasetKind;
    fn schema() -> SchemaRef;
    /// Columns that hold already-compressed bytes: stored as they are.
    const BLOB_COLUMNS: &'static [&'static str];
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, DataError>;
    /// Reads the rows of a record batch, checking its columns; `file` names the shard in errors.
    fn from_batch(batch: &RecordBatch, file: &Path) -> Result<Vec<Self>, DataError>;
    /// The image id of the row (map-phase outputs are sorted by it).
    fn id(&self) -> &str;
    /// The checks every stage makes of a row it reads, cheap next to the row's use: a plain
    /// id ([`check_id`]), class ids in `1..=num_classes` and unique, and for CAMs the shape
    /// and finite values. An error is the reason the row cannot be used.
    fn check(&self, num_classes: u16) -> Result<(), String>;
}

/// Whether `id` can name an image wherever ids are used: as a file name (`export png`), a
/// join key, a log line. A plain name: not empty, no path separator, NUL or control
/// character, and not starting with '.' (`.`, `..`, hidden and temporary files).
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.starts_with('.') || id.contains(['/', '\\']) || id.chars().any(char::is_control) {
        return Err(format!("{id:?} is not a plain name (no path separators or control characters, not empty, not starting with '.')"));
    }
    Ok(())
}

fn check_row_id(id: &str) -> Result<(), String> {
    check_id(id).map_err(|e| format!("id {e}"))
}

/// Class ids of one image: each in `1..=num_classes`, sorted and unique (as every importer
/// writes them; a class twice would give it two CAMs).
pub fn check_classes(classes: &[u16], num_classes: u16) -> Result<(), String> {
    if let Some(&bad) = classes.iter().find(|&&c| c == 0 || c > num_classes) {
        return Err(format!("class id {bad} out of range 1..={num_classes}"));
    }
    if !classes.windows(2).all(|p| p[0] < p[1]) {
        return Err(format!("class ids {classes:?} are not sorted and unique"));
    }
    Ok(())
}

impl ShardRow for ImageRow {
    const KIND: DatasetKind = DatasetKind::Images;
    fn id(&self) -> &str {
        &self.id
    }
    fn check(&self, num_classes: u16) -> Result<(), String> {
        check_row_id(&self.id)?;
        check_classes(&self.labels, num_classes).map_err(|e| format!("labels: {e}"))
    }
    fn schema() -> SchemaRef {
        image_schema()
    }

    const BLOB_COLUMNS: &'static [&'static str] = &[col::IMAGE, col::MASK];

    fn to_batch(rows: &[ImageRow]) -> Result<RecordBatch, DataError> {
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

    fn from_batch(batch: &RecordBatch, file: &Path) -> Result<Vec<ImageRow>, DataError> {
        let id: &StringArray = column(batch, col::ID, file)?;
        let image: &BinaryArray = column(batch, col::IMAGE, file)?;
        let width: &UInt32Array = column(batch, col::WIDTH, file)?;
        let height: &UInt32Array = column(batch, col::HEIGHT, file)?;
        let labels = list_column::<UInt16Type>(batch, col::LABELS, file)?;
        let mask: &BinaryArray = column(batch, col::MASK, file)?;
        Ok((0..batch.num_rows())
            .map(|i| ImageRow {
                id: id.value(i).to_string(),
                image: image.value(i).to_vec(),
                width: width.value(i),
                height: height.value(i),
                labels: labels.values(i),
                mask: (!mask.is_null(i)).then(|| mask.value(i).to_vec()),
            })
            .collect())
    }
}

/// The column names of a CAM row.
pub mod cam_col {
    pub const ID: &str = "id";
    pub const CLASSES: &str = "classes";
    pub const SCORES: &str = "scores";
    pub const CAM: &str = "cam";
    pub const HEIGHT: &str = "height";
    pub const WIDTH: &str = "width";
}

/// Side of a CAM cell in image pixels: CAMs are stored at stride 4.
pub const CAM_STRIDE: u32 = 4;

/// The class activation maps of one image (docs/architecture.md, "Formats").
#[derive(Debug, Clone, PartialEq)]
pub struct CamRow {
    pub id: String,
    /// The image's labels, in the order of the maps in `cam`.
    pub classes: Vec<u16>,
    /// The classifier's logit for each of `classes` (the image-label baseline uses them).
    pub scores: Vec<f32>,
    /// f16 little-endian, shape [classes, ⌈height/4⌉, ⌈width/4⌉], each map max-normalised.
    pub cam: Vec<u8>,
    pub height: u32,
    pub width: u32,
}

impl CamRow {
    /// The (rows, columns) of each stored map.
    pub fn map_size(&self) -> (u32, u32) {
        (self.height.div_ceil(CAM_STRIDE), self.width.div_ceil(CAM_STRIDE))
    }
}

/// The Arrow schema of a CAM dataset shard.
pub fn cam_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(cam_col::ID, DataType::Utf8, false),
        Field::new(cam_col::CLASSES, DataType::List(Arc::new(Field::new("item", DataType::UInt16, true))), false),
        Field::new(cam_col::SCORES, DataType::List(Arc::new(Field::new("item", DataType::Float32, true))), false),
        Field::new(cam_col::CAM, DataType::Binary, false),
        Field::new(cam_col::HEIGHT, DataType::UInt32, false),
        Field::new(cam_col::WIDTH, DataType::UInt32, false),
    ]))
}

impl ShardRow for CamRow {
    const KIND: DatasetKind = DatasetKind::Cams;
    fn id(&self) -> &str {
        &self.id
    }
    fn check(&self, num_classes: u16) -> Result<(), String> {
        check_row_id(&self.id)?;
        check_classes(&self.classes, num_classes).map_err(|e| format!("classes: {e}"))?;
        let (h, w) = self.map_size();
        let expected = self.classes.len() * h as usize * w as usize * 2;
        if self.cam.len() != expected || self.scores.len() != self.classes.len() {
            return Err(format!(
                "cam holds {} bytes and {} scores, expected {expected} bytes (f16 [{}, {h}, {w}]) and {} scores",
                self.cam.len(),
                self.scores.len(),
                self.classes.len(),
                self.classes.len()
            ));
        }
        // An f16 is NaN or infinite when its 5 exponent bits are all set.
        let non_finite = self.cam.chunks_exact(2).filter(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00).count();
        if non_finite > 0 {
            return Err(format!("cam holds {non_finite} NaN or infinite value(s)"));
        }
        if let Some(bad) = self.scores.iter().find(|s| !s.is_finite()) {
            return Err(format!("score {bad} is not finite"));
        }
        Ok(())
    }
    fn schema() -> SchemaRef {
        cam_schema()
    }

    // f16 maps are smooth and compress well: zstd is worth it.
    const BLOB_COLUMNS: &'static [&'static str] = &[];

    fn to_batch(rows: &[CamRow]) -> Result<RecordBatch, DataError> {
        let ids: StringArray = rows.iter().map(|r| Some(r.id.as_str())).collect();
        let mut cams = BinaryBuilder::with_capacity(rows.len(), rows.iter().map(|r| r.cam.len()).sum());
        let mut classes = ListBuilder::new(UInt16Builder::new());
        let mut scores = ListBuilder::new(Float32Builder::new());
        for row in rows {
            cams.append_value(&row.cam);
            classes.values().append_slice(&row.classes);
            classes.append(true);
            scores.values().append_slice(&row.scores);
            scores.append(true);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(ids),
            Arc::new(classes.finish()),
            Arc::new(scores.finish()),
            Arc::new(cams.finish()),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.height))),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.width))),
        ];
        Ok(RecordBatch::try_new(cam_schema(), columns)?)
    }

    fn from_batch(batch: &RecordBatch, file: &Path) -> Result<Vec<CamRow>, DataError> {
        let id: &StringArray = column(batch, cam_col::ID, file)?;
        let classes = list_column::<UInt16Type>(batch, cam_col::CLASSES, file)?;
        let scores = list_column::<Float32Type>(batch, cam_col::SCORES, file)?;
        let cam: &BinaryArray = column(batch, cam_col::CAM, file)?;
        let height: &UInt32Array = column(batch, cam_col::HEIGHT, file)?;
        let width: &UInt32Array = column(batch, cam_col::WIDTH, file)?;
        Ok((0..batch.num_rows())
            .map(|i| CamRow {
                id: id.value(i).to_string(),
                classes: classes.values(i),
                scores: scores.values(i),
                cam: cam.value(i).to_vec(),
                height: height.value(i),
                width: width.value(i),
            })
            .collect())
    }
}

/// The column names of a pseudo-label row.
pub mod pseudo_col {
    pub const ID: &str = "id";
    pub const MASK: &str = "mask";
    pub const METHOD: &str = "method";
}

/// The pseudo-label of one image (docs/architecture.md, "Formats").
#[derive(Debug, Clone, PartialEq)]
pub struct PseudoRow {
    pub id: String,
    /// 8-bit grayscale PNG at the image size: 0 background, 1..=C classes, 255 uncertain.
    pub mask: Vec<u8>,
    /// The method that made it (`threshold`, `crf`, `irn_seeds`).
    pub method: String,
}

/// The Arrow schema of a pseudo-label dataset shard.
pub fn pseudo_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(pseudo_col::ID, DataType::Utf8, false),
        Field::new(pseudo_col::MASK, DataType::Binary, false),
        Field::new(pseudo_col::METHOD, DataType::Utf8, false),
    ]))
}

impl ShardRow for PseudoRow {
    const KIND: DatasetKind = DatasetKind::PseudoLabels;
    fn id(&self) -> &str {
        &self.id
    }
    fn check(&self, _num_classes: u16) -> Result<(), String> {
        check_row_id(&self.id)
    }
    fn schema() -> SchemaRef {
        pseudo_schema()
    }

    const BLOB_COLUMNS: &'static [&'static str] = &[pseudo_col::MASK];

    fn to_batch(rows: &[PseudoRow]) -> Result<RecordBatch, DataError> {
        let ids: StringArray = rows.iter().map(|r| Some(r.id.as_str())).collect();
        let methods: StringArray = rows.iter().map(|r| Some(r.method.as_str())).collect();
        let mut masks = BinaryBuilder::with_capacity(rows.len(), rows.iter().map(|r| r.mask.len()).sum());
        rows.iter().for_each(|r| masks.append_value(&r.mask));
        let columns: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(masks.finish()), Arc::new(methods)];
        Ok(RecordBatch::try_new(pseudo_schema(), columns)?)
    }

    fn from_batch(batch: &RecordBatch, file: &Path) -> Result<Vec<PseudoRow>, DataError> {
        let id: &StringArray = column(batch, pseudo_col::ID, file)?;
        let mask: &BinaryArray = column(batch, pseudo_col::MASK, file)?;
        let method: &StringArray = column(batch, pseudo_col::METHOD, file)?;
        Ok((0..batch.num_rows())
            .map(|i| PseudoRow { id: id.value(i).to_string(), mask: mask.value(i).to_vec(), method: method.value(i).to_string() })
            .collect())
    }
}

fn foreign(file: &Path, message: String) -> DataError {
    DataError::ForeignShard { path: PathBuf::from(file), message }
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str, file: &Path) -> Result<&'a T, DataError> {
    let array = batch.column_by_name(name).ok_or_else(|| foreign(file, format!("no column `{name}`")))?;
    array.as_any().downcast_ref::<T>().ok_or_else(|| foreign(file, format!("column `{name}` has type {:?}, not the one wsss-dist writes", array.data_type())))
}

/// A list column whose items are the primitive type `T`, checked once.
struct ListColumn<'a, T> {
    list: &'a ListArray,
    _items: std::marker::PhantomData<T>,
}

impl<T: ArrowPrimitiveType> ListColumn<'_, T> {
    fn values(&self, i: usize) -> Vec<T::Native> {
        self.list.value(i).as_primitive::<T>().values().to_vec()
    }
}

fn list_column<'a, T: ArrowPrimitiveType>(batch: &'a RecordBatch, name: &str, file: &Path) -> Result<ListColumn<'a, T>, DataError> {
    let list: &ListArray = column(batch, name, file)?;
    if list.value_type() != T::DATA_TYPE {
        return Err(foreign(file, format!("column `{name}` is {:?}, expected a list of {:?}", list.data_type(), T::DATA_TYPE)));
    }
    Ok(ListColumn { list, _items: std::marker::PhantomData })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, labels: &[u16], mask: Option<&[u8]>) -> ImageRow {
        ImageRow { id: id.into(), image: vec![1, 2, 3, id.len() as u8], width: 7, height: 5, labels: labels.to_vec(), mask: mask.map(<[u8]>::to_vec) }
    }

    #[test]
    fn rows_round_trip_through_a_batch() {
        let rows = vec![row("a", &[1, 3], Some(&[9, 9])), row("bb", &[], None), row("c", &[20], Some(&[]))];
        let batch = ImageRow::to_batch(&rows).unwrap();
        assert_eq!(batch.schema(), image_schema());
        assert_eq!(ImageRow::from_batch(&batch, Path::new("x")).unwrap(), rows);
        let cams = vec![
            CamRow { id: "a".into(), classes: vec![2, 5], scores: vec![0.5, -1.0], cam: vec![0; 8], height: 4, width: 8 },
            CamRow { id: "b".into(), classes: vec![], scores: vec![], cam: vec![], height: 9, width: 3 },
        ];
        assert!(cams.iter().all(|c| c.check(5).is_ok()));
        let batch = CamRow::to_batch(&cams).unwrap();
        assert_eq!(CamRow::from_batch(&batch, Path::new("x")).unwrap(), cams);
        let labels = vec![PseudoRow { id: "a".into(), mask: vec![137, 80], method: "irn_seeds".into() }];
        assert_eq!(PseudoRow::from_batch(&PseudoRow::to_batch(&labels).unwrap(), Path::new("x")).unwrap(), labels);
        let short = CamRow { cam: vec![0; 6], ..cams[0].clone() };
        let err = short.check(5).unwrap_err();
        assert!(err.contains("expected 8 bytes (f16 [2, 1, 2])"), "{err}");
    }

    /// Ids that would escape a folder, hide a file or break a log line are refused.
    #[test]
    fn ids_must_be_plain_names() {
        for good in ["2007_000032", "000000391895", "a.b", "cat-01 (copy)"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "../../x", "/etc/passwd", "a/b", "a\\b", ".hidden", "a\nb", "nul\0"] {
            let err = check_id(bad).unwrap_err();
            assert!(err.contains("not a plain name"), "{bad:?}: {err}");
        }
        let row = ImageRow { id: "../x".into(), ..row("a", &[1], None) };
        assert!(row.check(3).unwrap_err().contains("\"../x\""));
    }

    /// Labels and CAM classes: in 1..=C, sorted, unique.
    #[test]
    fn class_ids_must_be_in_range_and_unique() {
        assert!(row("a", &[1, 3], None).check(3).is_ok());
        assert!(row("a", &[], None).check(3).is_ok());
        for (labels, expected) in [
            (&[0u16][..], "class id 0 out of range 1..=3"),
            (&[99], "class id 99 out of range 1..=3"),
            (&[1, 1], "not sorted and unique"),
            (&[2, 1], "not sorted and unique"),
        ] {
            let err = row("a", labels, None).check(3).unwrap_err();
            assert!(err.starts_with("labels: ") && err.contains(expected), "{labels:?}: {err}");
        }
        let cam = CamRow { id: "a".into(), classes: vec![2, 2], scores: vec![0.0, 0.0], cam: vec![0; 8], height: 4, width: 4 };
        assert!(cam.check(3).unwrap_err().starts_with("classes: "));
    }

    /// A CAM holding NaN or infinity (f16 0x7e00, 0x7c00) or a non-finite score is refused.
    #[test]
    fn cam_rows_must_be_finite() {
        let finite = CamRow {
            id: "a".into(),
            classes: vec![1],
            scores: vec![0.5],
            cam: [0x3c00u16, 0x0000, 0xfbff, 0x0001].iter().flat_map(|v| v.to_le_bytes()).collect(),
            height: 8,
            width: 8,
        };
        assert!(finite.check(1).is_ok(), "1, 0, -65504 and a subnormal are finite");
        for bits in [0x7e00u16, 0x7c00, 0xfc00] {
            let mut cam = finite.clone();
            cam.cam[2..4].copy_from_slice(&bits.to_le_bytes());
            assert_eq!(cam.check(1).unwrap_err(), "cam holds 1 NaN or infinite value(s)", "{bits:#x}");
        }
        let nan_score = CamRow { scores: vec![f32::NAN], ..finite };
        assert!(nan_score.check(1).unwrap_err().contains("score NaN"));
    }

    #[test]
    fn a_batch_of_another_schema_is_named_foreign() {
        let other = RecordBatch::try_from_iter([("id", Arc::new(UInt32Array::from(vec![1])) as ArrayRef)]).unwrap();
        let err = ImageRow::from_batch(&other, Path::new("shard.parquet")).unwrap_err().to_string();
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
        assert!(err.contains("_manifest.json") && err.contains("rows is 4"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = Manifest::read(empty.path()).unwrap_err().to_string();
        assert!(err.contains("no _manifest.json"), "{err}");
        // A dataset of the earlier layout (`manifest.json`) still reads; writing it moves it.
        m.rows = 3;
        m.write(dir.path()).unwrap();
        std::fs::rename(dir.path().join(MANIFEST_FILE), dir.path().join(LEGACY_MANIFEST_FILE)).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), m);
        assert!(Manifest::exists(dir.path()));
        m.write(dir.path()).unwrap();
        assert!(dir.path().join(MANIFEST_FILE).exists() && !dir.path().join(LEGACY_MANIFEST_FILE).exists());
    }
}
