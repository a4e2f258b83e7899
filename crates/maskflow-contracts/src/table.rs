//! `index.parquet`: one row per file found. Schema (nullable where marked ?):
//! path utf8 (readable; non-UTF-8 bytes as \xNN), path_raw binary (exact bytes), label utf8,
//! label_idx int32, content_hash utf8 (blake3 hex), group_hash utf8, bytes uint64, format utf8?,
//! width uint32?, height uint32?, dhash utf8? (16 hex digits), split utf8? (train/valid; null when
//! rejected or excluded), status utf8 (ok/rejected/excluded), reason utf8? (code), detail utf8?
//! (message), given_label utf8? (the folder's label when a label-overrides file changed it).

use arrow_array::{
    Array, ArrayRef, BinaryArray, Int32Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct IndexRow {
    pub path: String,
    pub path_raw: Vec<u8>,
    pub label: String,
    pub label_idx: i32,
    pub content_hash: String,
    pub group_hash: String,
    pub bytes: u64,
    pub format: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub dhash: Option<String>,
    pub split: Option<String>,
    pub status: String,
    pub reason: Option<String>,
    pub detail: Option<String>,
    /// The label the folder gave, when a label-overrides file changed it (`label` is then the new one).
    pub given_label: Option<String>,
}

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("path_raw", DataType::Binary, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("label_idx", DataType::Int32, false),
        Field::new("content_hash", DataType::Utf8, false),
        Field::new("group_hash", DataType::Utf8, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("format", DataType::Utf8, true),
        Field::new("width", DataType::UInt32, true),
        Field::new("height", DataType::UInt32, true),
        Field::new("dhash", DataType::Utf8, true),
        Field::new("split", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("detail", DataType::Utf8, true),
        Field::new("given_label", DataType::Utf8, true),
    ])
}

pub fn write_index(path: &Path, rows: &[IndexRow]) -> anyhow::Result<()> {
    let s = |f: fn(&IndexRow) -> &str| Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as ArrayRef;
    let o = |f: fn(&IndexRow) -> Option<&str>| Arc::new(StringArray::from_iter(rows.iter().map(f))) as ArrayRef;
    let columns: Vec<ArrayRef> = vec![
        s(|r| &r.path),
        Arc::new(BinaryArray::from_iter_values(rows.iter().map(|r| r.path_raw.as_slice()))),
        s(|r| &r.label),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.label_idx))),
        s(|r| &r.content_hash),
        s(|r| &r.group_hash),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.bytes))),
        o(|r| r.format.as_deref()),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.width))),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.height))),
        o(|r| r.dhash.as_deref()),
        o(|r| r.split.as_deref()),
        s(|r| &r.status),
        o(|r| r.reason.as_deref()),
        o(|r| r.detail.as_deref()),
        o(|r| r.given_label.as_deref()),
    ];
    let schema = Arc::new(schema());
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let props = WriterProperties::builder().set_compression(Compression::ZSTD(Default::default())).build();
    let tmp = path.with_extension("parquet.part");
    let file = std::fs::File::create(&tmp)?;
    let mut w = ArrowWriter::try_new(file, schema, Some(props))?;
    w.write(&batch)?;
    w.close()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn col<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> anyhow::Result<&'a T> {
    batch
        .column_by_name(name)
        .ok_or_else(|| anyhow::anyhow!("index.parquet: no column {name}"))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| anyhow::anyhow!("index.parquet: column {name} has an unexpected type"))
}

/// Reads `index.parquet` back into rows.
pub fn read_index(path: &Path) -> anyhow::Result<Vec<IndexRow>> {
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let mut rows = Vec::new();
    for batch in reader {
        let b = batch?;
        let path_c = col::<StringArray>(&b, "path")?;
        let raw = col::<BinaryArray>(&b, "path_raw")?;
        let label = col::<StringArray>(&b, "label")?;
        let idx = col::<Int32Array>(&b, "label_idx")?;
        let ch = col::<StringArray>(&b, "content_hash")?;
        let gh = col::<StringArray>(&b, "group_hash")?;
        let bytes = col::<UInt64Array>(&b, "bytes")?;
        let format = col::<StringArray>(&b, "format")?;
        let width = col::<UInt32Array>(&b, "width")?;
        let height = col::<UInt32Array>(&b, "height")?;
        let dhash = col::<StringArray>(&b, "dhash")?;
        let split = col::<StringArray>(&b, "split")?;
        let status = col::<StringArray>(&b, "status")?;
        let reason = col::<StringArray>(&b, "reason")?;
        let detail = col::<StringArray>(&b, "detail")?;
        let given = col::<StringArray>(&b, "given_label")?;
        let opt_s = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
        let opt_u = |a: &UInt32Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
        for i in 0..b.num_rows() {
            rows.push(IndexRow {
                path: path_c.value(i).to_string(),
                path_raw: raw.value(i).to_vec(),
                label: label.value(i).to_string(),
                label_idx: idx.value(i),
                content_hash: ch.value(i).to_string(),
                group_hash: gh.value(i).to_string(),
                bytes: bytes.value(i),
                format: opt_s(format, i),
                width: opt_u(width, i),
                height: opt_u(height, i),
                dhash: opt_s(dhash, i),
                split: opt_s(split, i),
                status: status.value(i).to_string(),
                reason: opt_s(reason, i),
                detail: opt_s(detail, i),
                given_label: opt_s(given, i),
            });
        }
    }
    Ok(rows)
}
