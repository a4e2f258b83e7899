//! `shard_set`: the prep stage's images, ready to stream into tensors.
//!
//! - `<split>-NNNNN.parquet`: the shards ([`ShardRow`]s; codec with `tables`): `content_hash` utf8,
//!   `label_idx` int32, `label` utf8, `split` utf8, `height` / `width` / `channels` uint32, `pixels`
//!   fixed_size_binary(h·w·c) in HWC order, `path` utf8; row groups are the streaming unit.
//! - `shards.json`: the list of shards ([`ShardInfo`]: file, split, rows, bytes).
//! - `shard_set.json`: [`ShardSetMeta`]: how the pixels were made ([`Preprocess`]), the classes in
//!   label order, and the dataset's fingerprint.

use crate::{read_json, write_json, ContractError, Preprocess};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[cfg(feature = "tables")]
pub use crate::shard::{read_shard, read_shard_meta, PixelReader, ShardMeta, ShardRow, ShardSetWriter};

pub const SHARDS_FILE: &str = "shards.json";
pub const SPLITS: [&str; 2] = ["train", "valid"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardCompression {
    None,
    Snappy,
    Lz4,
    Zstd,
}

/// How rows are laid out in shard files.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardLayout {
    /// Image side (every row is `size`×`size`×3).
    pub size: u32,
    pub shard_rows: usize,
    pub row_group_rows: usize,
    pub compression: ShardCompression,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ShardInfo {
    pub file: String,
    pub split: String,
    pub rows: usize,
    pub bytes: u64,
}

/// `shard_set.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardSetMeta {
    pub schema: u32,
    pub preprocess: Preprocess,
    /// Class names in label order (`label_idx` indexes this list).
    pub classes: Vec<String>,
    /// The content fingerprint of the folder the images came from.
    pub dataset_fingerprint: String,
}

crate::json_file!(ShardSetMeta, "shard_set.json", "shard set description", 1);

pub fn read_shard_list(dir: &Path) -> Result<Vec<ShardInfo>, ContractError> {
    read_json(&dir.join(SHARDS_FILE), "shard list")
}

pub fn write_shard_list(dir: &Path, shards: &[ShardInfo]) -> Result<(), ContractError> {
    write_json(&dir.join(SHARDS_FILE), shards)
}
