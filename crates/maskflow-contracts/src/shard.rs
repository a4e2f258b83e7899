//! Writing and reading the Parquet tensor shards (one row per image: uint8 HWC pixels plus label and
//! provenance columns; row groups are the streaming unit).

use crate::shards::{ShardCompression, ShardInfo, ShardLayout};
use arrow_array::{Array, ArrayRef, FixedSizeBinaryArray, Int32Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct ShardRow {
    pub content_hash: String,
    pub label_idx: i32,
    pub label: String,
    pub split: String,
    pub height: u32,
    pub width: u32,
    pub channels: u32,
    /// HWC, RGB interleaved.
    pub pixels: Vec<u8>,
    pub path: String,
}


fn schema(value_len: i32) -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("content_hash", DataType::Utf8, false),
        Field::new("label_idx", DataType::Int32, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("height", DataType::UInt32, false),
        Field::new("width", DataType::UInt32, false),
        Field::new("channels", DataType::UInt32, false),
        Field::new("pixels", DataType::FixedSizeBinary(value_len), false),
        Field::new("path", DataType::Utf8, false),
    ]))
}

fn props(params: &ShardLayout) -> WriterProperties {
    let compression = match params.compression {
        ShardCompression::None => Compression::UNCOMPRESSED,
        ShardCompression::Snappy => Compression::SNAPPY,
        ShardCompression::Lz4 => Compression::LZ4_RAW,
        ShardCompression::Zstd => Compression::ZSTD(Default::default()),
    };
    let pixels = ColumnPath::from("pixels");
    WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(params.row_group_rows))
        // Pixel values are large and unique: no dictionary, no min/max statistics.
        .set_column_dictionary_enabled(pixels.clone(), false)
        .set_column_statistics_enabled(pixels, EnabledStatistics::None)
        .build()
}

/// Writes one split's rows into numbered shards, streaming (one row group buffered at a time).
///
/// Row groups end at every multiple of `row_group_rows` counted from the split's first row, and at
/// shard ends; so a writer started at shard `i` ([`ShardSetWriter::starting_at`]) and given that
/// shard's rows writes the very bytes the whole-split writer writes for it (prep's tasks).
pub struct ShardSetWriter<'a> {
    dir: PathBuf,
    split: &'a str,
    params: &'a ShardLayout,
    /// The number of the first shard written.
    first_shard: usize,
    /// Rows of the split before this writer's first row, plus rows pushed so far.
    position: usize,
    pending: Vec<ShardRow>,
    current: Option<(ArrowWriter<File>, PathBuf, String, usize)>,
    done: Vec<ShardInfo>,
}

impl<'a> ShardSetWriter<'a> {
    pub fn new(dir: &Path, split: &'a str, params: &'a ShardLayout) -> Self {
        Self::starting_at(dir, split, params, 0)
    }

    /// A writer whose first row is the first row of shard `first_shard` of the split.
    pub fn starting_at(dir: &Path, split: &'a str, params: &'a ShardLayout, first_shard: usize) -> Self {
        Self {
            dir: dir.to_path_buf(),
            split,
            params,
            first_shard,
            position: first_shard * params.shard_rows,
            pending: Vec::new(),
            current: None,
            done: Vec::new(),
        }
    }

    pub fn push(&mut self, row: ShardRow) -> anyhow::Result<()> {
        self.pending.push(row);
        self.position += 1;
        if self.position % self.params.row_group_rows == 0 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        while !self.pending.is_empty() {
            if self.current.is_none() {
                let name = format!("{}-{:05}.parquet", self.split, self.first_shard + self.done.len());
                let tmp = self.dir.join(format!("{name}.part"));
                let value_len = (self.params.size * self.params.size * 3) as i32;
                let w = ArrowWriter::try_new(File::create(&tmp)?, schema(value_len), Some(props(self.params)))?;
                self.current = Some((w, tmp, name, 0));
            }
            let Some((w, _, _, rows)) = self.current.as_mut() else { unreachable!() };
            let room = self.params.shard_rows - *rows;
            let take = room.min(self.pending.len());
            let batch: Vec<ShardRow> = self.pending.drain(..take).collect();
            w.write(&to_batch(&batch, (self.params.size * self.params.size * 3) as i32)?)?;
            w.flush()?;
            *rows += take;
            if *rows == self.params.shard_rows {
                self.close_current()?;
            }
        }
        Ok(())
    }

    fn close_current(&mut self) -> anyhow::Result<()> {
        if let Some((w, tmp, name, rows)) = self.current.take() {
            w.close()?;
            let path = self.dir.join(&name);
            std::fs::rename(&tmp, &path)?;
            let bytes = std::fs::metadata(&path)?.len();
            self.done.push(ShardInfo { file: name, split: self.split.to_string(), rows, bytes });
        }
        Ok(())
    }

    pub fn finish(mut self) -> anyhow::Result<Vec<ShardInfo>> {
        self.flush()?;
        self.close_current()?;
        Ok(self.done)
    }
}

fn to_batch(rows: &[ShardRow], value_len: i32) -> anyhow::Result<RecordBatch> {
    let s = |f: fn(&ShardRow) -> &str| Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as ArrayRef;
    let u = |f: fn(&ShardRow) -> u32| Arc::new(UInt32Array::from_iter_values(rows.iter().map(f))) as ArrayRef;
    let pixels = FixedSizeBinaryArray::try_from_iter(rows.iter().map(|r| r.pixels.as_slice()))?;
    anyhow::ensure!(
        pixels.value_length() == value_len,
        "pixel buffer of {} bytes, expected {value_len}",
        pixels.value_length()
    );
    let columns: Vec<ArrayRef> = vec![
        s(|r| &r.content_hash),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.label_idx))),
        s(|r| &r.label),
        s(|r| &r.split),
        u(|r| r.height),
        u(|r| r.width),
        u(|r| r.channels),
        Arc::new(pixels),
        s(|r| &r.path),
    ];
    Ok(RecordBatch::try_new(schema(value_len), columns)?)
}

fn col<'a, T: 'static>(batch: &'a RecordBatch, name: &str, file: &Path) -> anyhow::Result<&'a T> {
    batch
        .column_by_name(name)
        .ok_or_else(|| anyhow::anyhow!("{}: no column {name}", file.display()))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| anyhow::anyhow!("{}: column {name} has an unexpected type", file.display()))
}

/// Reads a whole shard (tests, tools; the trainer streams row groups).
pub fn read_shard(path: &Path) -> anyhow::Result<Vec<ShardRow>> {
    let file = File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let mut out = Vec::new();
    for b in reader {
        push_rows(&b?, path, true, &mut out)?;
    }
    Ok(out)
}

/// Appends the rows of `b` to `out`, with their pixels or (`with_pixels` false, the column not
/// read) without.
fn push_rows(b: &RecordBatch, path: &Path, with_pixels: bool, out: &mut Vec<ShardRow>) -> anyhow::Result<()> {
    let ch = col::<StringArray>(b, "content_hash", path)?;
    let li = col::<Int32Array>(b, "label_idx", path)?;
    let lb = col::<StringArray>(b, "label", path)?;
    let sp = col::<StringArray>(b, "split", path)?;
    let h = col::<UInt32Array>(b, "height", path)?;
    let w = col::<UInt32Array>(b, "width", path)?;
    let c = col::<UInt32Array>(b, "channels", path)?;
    let px = if with_pixels { Some(col::<FixedSizeBinaryArray>(b, "pixels", path)?) } else { None };
    let p = col::<StringArray>(b, "path", path)?;
    for i in 0..b.num_rows() {
        out.push(ShardRow {
            content_hash: ch.value(i).to_string(),
            label_idx: li.value(i),
            label: lb.value(i).to_string(),
            split: sp.value(i).to_string(),
            height: h.value(i),
            width: w.value(i),
            channels: c.value(i),
            pixels: px.map(|px| px.value(i).to_vec()).unwrap_or_default(),
            path: p.value(i).to_string(),
        });
    }
    Ok(())
}

/// A shard's rows without their pixels, and how many rows each row group holds: what a streaming
/// reader needs to plan, read in a fraction of the time and memory of the whole shard.
#[derive(Debug, Clone)]
pub struct ShardMeta {
    /// One per row, in order; `pixels` is empty.
    pub rows: Vec<ShardRow>,
    pub row_groups: Vec<usize>,
}

/// Reads every column but `pixels` of a shard.
pub fn read_shard_meta(path: &Path) -> anyhow::Result<ShardMeta> {
    let file = File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| anyhow::anyhow!("{}: not a readable Parquet shard: {e}", path.display()))?;
    let row_groups: Vec<usize> = builder.metadata().row_groups().iter().map(|g| g.num_rows() as usize).collect();
    let schema = builder.parquet_schema();
    let keep: Vec<usize> = (0..schema.num_columns()).filter(|&i| schema.column(i).name() != "pixels").collect();
    let mask = parquet::arrow::ProjectionMask::leaves(schema, keep);
    let reader = builder.with_projection(mask).build()?;
    let mut rows = Vec::new();
    for b in reader {
        push_rows(&b.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?, path, false, &mut rows)?;
    }
    anyhow::ensure!(
        rows.len() == row_groups.iter().sum::<usize>(),
        "{}: {} rows read, the row groups declare {}",
        path.display(),
        rows.len(),
        row_groups.iter().sum::<usize>()
    );
    Ok(ShardMeta { rows, row_groups })
}

/// Reads the `pixels` of one row group at a time from a shard (the footer is parsed once).
#[derive(Debug, Clone)]
pub struct PixelReader {
    path: PathBuf,
    metadata: parquet::arrow::arrow_reader::ArrowReaderMetadata,
    pixels_column: usize,
}

impl PixelReader {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let metadata = parquet::arrow::arrow_reader::ArrowReaderMetadata::load(&file, Default::default())
            .map_err(|e| anyhow::anyhow!("{}: not a readable Parquet shard: {e}", path.display()))?;
        let schema = metadata.metadata().file_metadata().schema_descr();
        let pixels_column = (0..schema.num_columns())
            .find(|&i| schema.column(i).name() == "pixels")
            .ok_or_else(|| anyhow::anyhow!("{}: no pixels column", path.display()))?;
        Ok(Self { path: path.to_path_buf(), metadata, pixels_column })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calls `each(row within the group, pixels)` for every row of row group `group`.
    pub fn read_group(&self, group: usize, mut each: impl FnMut(usize, &[u8])) -> anyhow::Result<()> {
        let file = File::open(&self.path).map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))?;
        let schema = self.metadata.metadata().file_metadata().schema_descr();
        let mask = parquet::arrow::ProjectionMask::leaves(schema, [self.pixels_column]);
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.metadata.clone())
            .with_row_groups(vec![group])
            .with_projection(mask)
            .build()
            .map_err(|e| anyhow::anyhow!("{}: row group {group}: {e}", self.path.display()))?;
        let mut row = 0;
        for b in reader {
            let b = b.map_err(|e| anyhow::anyhow!("{}: row group {group}: {e}", self.path.display()))?;
            let px = col::<FixedSizeBinaryArray>(&b, "pixels", &self.path)?;
            for i in 0..b.num_rows() {
                each(row, px.value(i));
                row += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::ShardCompression;

    fn row(i: usize) -> ShardRow {
        ShardRow {
            content_hash: format!("{i:064x}"),
            label_idx: (i % 2) as i32,
            label: ["a", "b"][i % 2].to_string(),
            split: "train".into(),
            height: 4,
            width: 4,
            channels: 3,
            pixels: (0..48).map(|k| (i * 7 + k) as u8).collect(),
            path: format!("x/{i}.png"),
        }
    }

    /// A writer started at shard i, given that shard's rows, writes the whole-split writer's bytes
    /// for it — also when shards are not a whole number of row groups.
    #[test]
    fn shards_written_one_by_one_equal_the_whole_split() -> anyhow::Result<()> {
        for (shard_rows, group_rows) in [(10, 5), (10, 4), (7, 3), (5, 5)] {
            let layout = ShardLayout { size: 4, shard_rows, row_group_rows: group_rows, compression: ShardCompression::None };
            let whole = tempfile::tempdir()?;
            let mut w = ShardSetWriter::new(whole.path(), "train", &layout);
            let n = 33;
            for i in 0..n {
                w.push(row(i))?;
            }
            let all = w.finish()?;
            assert_eq!(all.len(), n.div_ceil(shard_rows));
            for (s, info) in all.iter().enumerate() {
                let one = tempfile::tempdir()?;
                let mut w = ShardSetWriter::starting_at(one.path(), "train", &layout, s);
                for i in s * shard_rows..((s + 1) * shard_rows).min(n) {
                    w.push(row(i))?;
                }
                let got = w.finish()?;
                assert_eq!(got, vec![info.clone()], "layout {shard_rows}/{group_rows} shard {s}");
                let a = std::fs::read(whole.path().join(&info.file))?;
                let b = std::fs::read(one.path().join(&info.file))?;
                assert!(a == b, "layout {shard_rows}/{group_rows}: shard {s} differs when written alone");
            }
        }
        Ok(())
    }
}
