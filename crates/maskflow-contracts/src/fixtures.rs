//! Tiny artifacts for tests: a stage crate tests against these instead of running the stages before
//! it. Every builder writes exactly what the real stage's contract says (same files, same schemas).

use crate::index::{self, IndexDataset, IndexRow, IndexSummary};
use crate::shards::{self, ShardCompression, ShardInfo, ShardLayout, ShardRow, ShardSetMeta, ShardSetWriter};
use crate::{JsonFile, Preprocess};
use std::path::Path;

/// One image of a fixture: its class index, its split, and its `size`×`size`×3 pixels.
#[derive(Debug, Clone)]
pub struct FixtureImage {
    pub label_idx: usize,
    pub split: &'static str,
    pub pixels: Vec<u8>,
}

/// Deterministic pixels: class 0 dark with a bright square, class 1 bright with a dark band, plus
/// per-image noise from `seed`. Easy for a model to tell apart, so a test can check learning.
pub fn pixels(size: u32, label_idx: usize, seed: u64) -> Vec<u8> {
    let mut rng = maskflow_core::rng::SplitMix64::new(seed);
    let s = size as usize;
    let mut out = Vec::with_capacity(s * s * 3);
    for y in 0..s {
        for x in 0..s {
            let inside = (s / 4..3 * s / 4).contains(&x) && (s / 4..3 * s / 4).contains(&y);
            let band = (s / 3..2 * s / 3).contains(&y);
            let base: [u8; 3] = match (label_idx % 2, inside, band) {
                (0, true, _) => [220, 200, 60],
                (0, false, _) => [40, 50, 70],
                (_, _, true) => [30, 60, 160],
                _ => [210, 215, 225],
            };
            for c in base {
                let noise = (rng.next_u64() % 31) as i32 - 15;
                out.push((c as i32 + noise).clamp(0, 255) as u8);
            }
        }
    }
    out
}

/// prep's defaults at `size`.
fn preprocess(size: u32) -> Preprocess {
    Preprocess { size, resize: crate::ResizeMode::Crop, filter: crate::Filter::Bilinear, background: [255, 255, 255], jpeg_draft: true }
}

/// `n_per_class` images per class, every fifth in `valid`.
pub fn images(classes: usize, n_per_class: usize, size: u32, seed: u64) -> Vec<FixtureImage> {
    (0..classes * n_per_class)
        .map(|i| FixtureImage {
            label_idx: i % classes,
            split: if (i / classes) % 5 == 4 { "valid" } else { "train" },
            pixels: pixels(size, i % classes, seed.wrapping_mul(1_000_003).wrapping_add(i as u64)),
        })
        .collect()
}

fn hash_of(i: usize, img: &FixtureImage) -> String {
    maskflow_core::hash::blake3_hex(&[img.pixels.as_slice(), &(i as u64).to_le_bytes()].concat())
}

fn path_of(classes: &[String], i: usize, img: &FixtureImage) -> String {
    format!("{}/img{i:04}.png", classes[img.label_idx])
}

/// An `index_table` artifact describing `images` (all accepted) in a folder `root`.
pub fn index_table(dir: &Path, root: &Path, classes: &[String], images: &[FixtureImage]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let rows: Vec<IndexRow> = images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let path = path_of(classes, i, img);
            let hash = hash_of(i, img);
            IndexRow {
                path_raw: path.as_bytes().to_vec(),
                path,
                label: classes[img.label_idx].clone(),
                label_idx: img.label_idx as i32,
                content_hash: hash.clone(),
                group_hash: hash,
                bytes: img.pixels.len() as u64,
                format: Some("png".into()),
                width: Some(64),
                height: Some(64),
                dhash: Some("0000000000000000".into()),
                split: Some(img.split.to_string()),
                status: "ok".into(),
                reason: None,
                detail: None,
                given_label: None,
            }
        })
        .collect();
    write_index_artifact(dir, root, classes, &rows)
}

/// `index.parquet`, `classes.json`, `dataset.json` and `summary.json` for `rows` (all accepted).
fn write_index_artifact(dir: &Path, root: &Path, classes: &[String], rows: &[IndexRow]) -> anyhow::Result<()> {
    index::write_index(&dir.join(index::INDEX_FILE), rows)?;
    index::write_classes(dir, classes)?;
    IndexDataset { schema: IndexDataset::SCHEMA, root: root.to_path_buf(), fingerprint: "fixture".into() }.write(dir)?;
    let valid = rows.iter().filter(|r| r.split.as_deref() == Some("valid")).count();
    IndexSummary {
        schema: IndexSummary::SCHEMA,
        root: root.display().to_string(),
        files: rows.len(),
        accepted: rows.len(),
        classes: classes.to_vec(),
        train: rows.len() - valid,
        valid,
        ..Default::default()
    }
    .write(dir)?;
    Ok(())
}

/// A `shard_set` artifact holding `images` (each `size`×`size`×3), shards of `shard_rows` rows in row
/// groups of `group_rows`.
pub fn shard_set(
    dir: &Path,
    classes: &[String],
    size: u32,
    images: &[FixtureImage],
    shard_rows: usize,
    group_rows: usize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let layout = ShardLayout { size, shard_rows, row_group_rows: group_rows, compression: ShardCompression::None };
    let mut infos: Vec<ShardInfo> = Vec::new();
    for split in shards::SPLITS {
        let mut w = ShardSetWriter::new(dir, split, &layout);
        for (i, img) in images.iter().enumerate().filter(|(_, img)| img.split == split) {
            anyhow::ensure!(img.pixels.len() == (size * size * 3) as usize, "fixture image {i}: wrong pixel count");
            w.push(ShardRow {
                content_hash: hash_of(i, img),
                label_idx: img.label_idx as i32,
                label: classes[img.label_idx].clone(),
                split: split.to_string(),
                height: size,
                width: size,
                channels: 3,
                pixels: img.pixels.clone(),
                path: path_of(classes, i, img),
            })?;
        }
        infos.extend(w.finish()?);
    }
    shards::write_shard_list(dir, &infos)?;
    ShardSetMeta {
        schema: ShardSetMeta::SCHEMA,
        preprocess: preprocess(size),
        classes: classes.to_vec(),
        dataset_fingerprint: "fixture".into(),
    }
    .write(dir)?;
    Ok(())
}

/// Index rows for a real folder of good images (`root/<class>/…`), without the index stage's
/// decoding: every file accepted, its blake3 as content and group hash, every fifth file (in path
/// order) in `valid`. For stages downstream of index (prep) that need real files on disk.
pub fn index_rows_of_folder(root: &Path) -> anyhow::Result<Vec<IndexRow>> {
    let listing = maskflow_core::dataset::walk(root)?;
    listing
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let bytes = std::fs::read(root.join(&f.rel))?;
            let hash = maskflow_core::hash::blake3_hex(&bytes);
            Ok(IndexRow {
                path: f.display(),
                path_raw: f.rel_bytes().to_vec(),
                label: f.label.clone(),
                label_idx: listing.classes.iter().position(|c| c == &f.label).unwrap_or(0) as i32,
                content_hash: hash.clone(),
                group_hash: hash,
                bytes: bytes.len() as u64,
                format: None,
                width: None,
                height: None,
                dhash: None,
                split: Some(if i % 5 == 4 { "valid" } else { "train" }.to_string()),
                status: "ok".into(),
                reason: None,
                detail: None,
                given_label: None,
            })
        })
        .collect()
}

/// An `index_table` artifact for a real folder of good images (see [`index_rows_of_folder`]).
pub fn index_table_of_folder(dir: &Path, root: &Path) -> anyhow::Result<Vec<IndexRow>> {
    std::fs::create_dir_all(dir)?;
    let rows = index_rows_of_folder(root)?;
    let listing = maskflow_core::dataset::walk(root)?;
    write_index_artifact(dir, root, &listing.classes, &rows)?;
    Ok(rows)
}

/// The `train_config.json` of a small model (no pretrained weights) for `classes` at `size` px,
/// as a fixture's model needs it (`maskflow_models::trained::fixture` writes the weights).
pub fn train_config(arch: crate::model::Arch, classes: &[String], size: u32) -> crate::model::TrainConfig {
    use crate::model::{DataMode, HeadConfig, Precision, TrainConfig};
    TrainConfig {
        schema: TrainConfig::SCHEMA,
        arch,
        head: HeadConfig::default(),
        classes: classes.to_vec(),
        image_size: size as i64,
        channels_last: false,
        inference_precision: Precision::Fp32,
        inference_batch_size: 16,
        data: DataMode::Auto,
        memory_limit_mb: 64,
        preprocess: preprocess(size),
        pretrained: "none".into(),
        dataset_fingerprint: "fixture".into(),
        recipe: [("arch".to_string(), format!("{:?}", arch.name())), ("seed".to_string(), "42".to_string())].into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_round_trip_through_the_readers() {
        let d = tempfile::tempdir().unwrap();
        let classes = vec!["a".to_string(), "b".to_string()];
        let imgs = images(2, 10, 8, 1);
        index_table(&d.path().join("index"), Path::new("/data"), &classes, &imgs).unwrap();
        shard_set(&d.path().join("prep"), &classes, 8, &imgs, 6, 3).unwrap();
        let rows = index::read_index(&d.path().join("index").join(index::INDEX_FILE)).unwrap();
        assert_eq!(rows.len(), 20);
        assert_eq!(index::read_classes(&d.path().join("index")).unwrap(), classes);
        assert_eq!(IndexSummary::read(&d.path().join("index")).unwrap().valid, 4);
        let list = shards::read_shard_list(&d.path().join("prep")).unwrap();
        assert_eq!(list.iter().map(|s| s.rows).sum::<usize>(), 20);
        assert_eq!(list.iter().filter(|s| s.split == "valid").map(|s| s.rows).sum::<usize>(), 4);
        let meta = ShardSetMeta::read(&d.path().join("prep")).unwrap();
        assert_eq!(meta.classes, classes);
        let first = shards::read_shard(&d.path().join("prep").join(&list[0].file)).unwrap();
        assert_eq!(first[0].pixels, imgs[0].pixels);
    }

    #[test]
    fn another_schema_version_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("dataset.json"), r#"{"schema": 9, "root": "/x", "fingerprint": "f", "extra": 1}"#).unwrap();
        let err = IndexDataset::read(d.path()).unwrap_err().to_string();
        assert!(err.contains("schema version 9") && err.contains("reads 1"), "{err}");
    }
}
