//! One Parquet shard of image rows: writing (atomic, hashed while written) and reading
//! (streamed by row group, or single rows by random access through the page index).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::array::AsArray;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};

use super::schema::{ImageRow, ShardInfo, ShardRow};
use super::{write_via_temp, DataError};

/// How shards are laid out.
#[derive(Debug, Clone, Copy)]
pub struct ShardLayout {
    /// Rows per Parquet row group: the unit of streaming reads.
    pub rows_per_group: usize,
    pub zstd_level: i32,
}

impl Default for ShardLayout {
    fn default() -> Self {
        ShardLayout { rows_per_group: 128, zstd_level: 3 }
    }
}

/// The name of shard `index` in a dataset directory.
pub fn shard_file_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

fn writer_properties<R: ShardRow>(layout: ShardLayout) -> Result<WriterProperties, DataError> {
    let zstd = ZstdLevel::try_new(layout.zstd_level).map_err(|e| DataError::Invalid(format!("zstd level {}: {e}", layout.zstd_level)))?;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(zstd))
        .set_max_row_group_row_count(Some(layout.rows_per_group.max(1)))
        .set_created_by(format!("wsss-dist {}", env!("CARGO_PKG_VERSION")));
    // Encoded images and PNG masks are already compressed: store them as they are, without
    // dictionaries or min/max statistics of multi-kilobyte blobs.
    for blob in R::BLOB_COLUMNS {
        let path = ColumnPath::from(*blob);
        builder = builder
            .set_column_compression(path.clone(), Compression::UNCOMPRESSED)
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_statistics_enabled(path, EnabledStatistics::None);
    }
    Ok(builder.build())
}

/// Writes `rows` as one shard at `path` (through a temporary name and a rename) and returns
/// the manifest entry, with the SHA-256 of the bytes written.
pub fn write_shard<R: ShardRow>(path: &Path, rows: &[R], layout: ShardLayout) -> Result<ShardInfo, DataError> {
    let sha256 = write_via_temp(path, |tmp| -> Result<String, DataError> {
        let file = File::create(tmp).map_err(|e| DataError::io(tmp, e))?;
        let hashing = HashingWriter { inner: BufWriter::new(file), hasher: Sha256::new() };
        let parquet_err = |source| DataError::ParquetWrite { path: tmp.into(), source };
        let mut writer = ArrowWriter::try_new(hashing, R::schema(), Some(writer_properties::<R>(layout)?)).map_err(parquet_err)?;
        for chunk in rows.chunks(layout.rows_per_group.max(1)) {
            writer.write(&R::to_batch(chunk)?).map_err(parquet_err)?;
        }
        let hashing = writer.into_inner().map_err(parquet_err)?;
        let sha256 = hex::encode(hashing.hasher.finalize());
        // The last buffered bytes reach the file here: a failure is a failed write too.
        let written = |e: std::io::Error| parquet_err(parquet::errors::ParquetError::External(Box::new(e)));
        let file = hashing.inner.into_inner().map_err(|e| written(e.into_error()))?;
        file.sync_all().map_err(written)?;
        Ok(sha256)
    })?;
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(ShardInfo { file, rows: rows.len() as u64, sha256 })
}

/// Hashes everything written through it, so a shard's checksum costs no second read.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// SHA-256 of a file, streamed.
pub fn file_sha256(path: &Path) -> Result<String, DataError> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| DataError::io(path, e))?;
    Ok(hex::encode(hasher.finalize()))
}

/// An open shard of `R` rows: its footer and page index parsed once, then read many times.
pub struct ShardReader<R = ImageRow> {
    path: PathBuf,
    metadata: ArrowReaderMetadata,
    _rows: std::marker::PhantomData<fn() -> R>,
}

impl<R> Clone for ShardReader<R> {
    fn clone(&self) -> Self {
        ShardReader { path: self.path.clone(), metadata: self.metadata.clone(), _rows: std::marker::PhantomData }
    }
}

impl<R: ShardRow> ShardReader<R> {
    /// Opens `path`, checking that it is a Parquet file with `R`'s schema.
    pub fn open(path: &Path) -> Result<ShardReader<R>, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
        let metadata = ArrowReaderMetadata::load(&file, options).map_err(|source| DataError::Parquet { path: path.into(), source })?;
        let expected = R::schema();
        let found = metadata.schema();
        for field in expected.fields() {
            let ok = found.field_with_name(field.name()).is_ok_and(|f| same_type(f.data_type(), field.data_type()));
            if !ok {
                return Err(DataError::ForeignShard {
                    path: path.into(),
                    message: format!("column `{}` missing or not {:?}", field.name(), field.data_type()),
                });
            }
        }
        Ok(ShardReader { path: path.into(), metadata, _rows: std::marker::PhantomData })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn num_rows(&self) -> usize {
        self.metadata.metadata().file_metadata().num_rows() as usize
    }

    pub fn num_row_groups(&self) -> usize {
        self.metadata.metadata().num_row_groups()
    }

    fn builder(&self) -> Result<ParquetRecordBatchReaderBuilder<File>, DataError> {
        let file = File::open(&self.path).map_err(|e| DataError::io(&self.path, e))?;
        Ok(ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.metadata.clone()))
    }

    fn collect(&self, builder: ParquetRecordBatchReaderBuilder<File>) -> Result<Vec<R>, DataError> {
        let reader = builder.build().map_err(|source| DataError::Parquet { path: self.path.clone(), source })?;
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| DataError::Parquet { path: self.path.clone(), source: e.into() })?;
            rows.extend(R::from_batch(&batch, &self.path)?);
        }
        Ok(rows)
    }

    /// All rows of row group `group`, in order (the streaming unit).
    pub fn read_row_group(&self, group: usize) -> Result<Vec<R>, DataError> {
        let rows = self.metadata.metadata().row_group(group).num_rows() as usize;
        self.collect(self.builder()?.with_row_groups(vec![group]).with_batch_size(rows.max(1)))
    }

    /// Every row of the shard, in order.
    pub fn read_all(&self) -> Result<Vec<R>, DataError> {
        self.collect(self.builder()?)
    }

    /// The `id` column alone, in row order (every row type has one): joins read only it.
    pub fn read_ids(&self) -> Result<Vec<String>, DataError> {
        let builder = self.builder()?;
        let projection = ProjectionMask::columns(builder.parquet_schema(), [super::schema::col::ID]);
        let reader = builder.with_projection(projection).build().map_err(|source| DataError::Parquet { path: self.path.clone(), source })?;
        let mut ids = Vec::with_capacity(self.num_rows());
        for batch in reader {
            let batch = batch.map_err(|e| DataError::Parquet { path: self.path.clone(), source: e.into() })?;
            let column = batch
                .column(0)
                .as_string_opt::<i32>()
                .ok_or_else(|| DataError::ForeignShard { path: self.path.clone(), message: "column `id` is not a string".into() })?;
            ids.extend(column.iter().map(|id| id.unwrap_or_default().to_string()));
        }
        Ok(ids)
    }

    /// The rows at the given positions of the shard, returned in the order asked. Only the
    /// pages that hold them are read (the offset index locates them).
    pub fn read_rows(&self, positions: &[usize]) -> Result<Vec<R>, DataError> {
        let total = self.num_rows();
        if let Some(&bad) = positions.iter().find(|&&p| p >= total) {
            return Err(DataError::Invalid(format!("{}: row {bad} out of range ({total} rows)", self.path.display())));
        }
        let mut wanted: Vec<usize> = positions.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let rows = self.collect(self.builder()?.with_row_selection(selection_of(&wanted, total)).with_batch_size(wanted.len().max(1)))?;
        Ok(positions.iter().map(|p| rows[wanted.binary_search(p).expect("was selected")].clone()).collect())
    }
}

/// Whether a column of type `found` holds what `expected` says. Lists match by item type
/// alone: writers name the item field differently (arrow-rs `item`, pyarrow `element`) and
/// may mark it nullable or not.
fn same_type(found: &arrow::datatypes::DataType, expected: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::DataType::List;
    match (found, expected) {
        (List(a), List(b)) => same_type(a.data_type(), b.data_type()),
        (a, b) => a == b,
    }
}

/// A selection of the sorted, unique `rows` out of `total`.
fn selection_of(rows: &[usize], total: usize) -> RowSelection {
    let mut selectors = Vec::new();
    let mut next = 0;
    for &row in rows {
        if row > next {
            selectors.push(RowSelector::skip(row - next));
        }
        selectors.push(RowSelector::select(1));
        next = row + 1;
    }
    if total > next {
        selectors.push(RowSelector::skip(total - next));
    }
    selectors.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<ImageRow> {
        (0..n)
            .map(|i| ImageRow {
                id: format!("img{i:03}"),
                image: vec![i as u8; 1000 + i],
                width: 10 + i as u32,
                height: 20,
                labels: vec![1 + (i % 3) as u16],
                mask: (i % 2 == 0).then(|| vec![7; i]),
            })
            .collect()
    }

    #[test]
    fn written_shard_reads_back_streamed_and_by_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(shard_file_name(3));
        let data = rows(50);
        let info = write_shard(&path, &data, ShardLayout { rows_per_group: 16, zstd_level: 3 }).unwrap();
        assert_eq!(info.file, "part-00003.parquet");
        assert_eq!(info.rows, 50);
        assert_eq!(info.sha256, file_sha256(&path).unwrap());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");

        let reader = ShardReader::<ImageRow>::open(&path).unwrap();
        assert_eq!((reader.num_rows(), reader.num_row_groups()), (50, 4));
        let streamed: Vec<ImageRow> = (0..4).flat_map(|g| reader.read_row_group(g).unwrap()).collect();
        assert_eq!(streamed, data);
        let picked = reader.read_rows(&[49, 0, 17, 17, 33]).unwrap();
        let expected: Vec<ImageRow> = [49, 0, 17, 17, 33].iter().map(|&i| data[i].clone()).collect();
        assert_eq!(picked, expected);
        assert!(reader.read_rows(&[50]).is_err());
    }

    #[test]
    fn truncated_and_foreign_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part-00000.parquet");
        write_shard(&path, &rows(5), ShardLayout::default()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.parquet");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = ShardReader::<ImageRow>::open(&cut).err().expect("truncated").to_string();
        assert!(err.contains("cut.parquet"), "{err}");
        let text = dir.path().join("text.parquet");
        std::fs::write(&text, b"id,image\n1,2\n").unwrap();
        let err = ShardReader::<ImageRow>::open(&text).err().expect("foreign").to_string();
        assert!(err.contains("text.parquet"), "{err}");
    }
}
