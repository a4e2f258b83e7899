//! Interop: the prep shards read with pyarrow from the project venv hold exactly the pixels that
//! maskflow's own decode + resize gives for the same files.

use maskflow_index::{read_index, IndexParams, INDEX_FILE};

use maskflow_prep::{prepare_pixels, PrepParams};
use std::path::PathBuf;

fn venv_python() -> PathBuf {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(py.exists(), "{} missing: run scripts/bootstrap.sh (just setup) first", py.display());
    py
}

#[test]
fn pyarrow_reads_the_same_pixels_as_maskflow_decodes() {
    let d = tempfile::tempdir().unwrap();
    let (data, idx, shards, dump) = (d.path().join("data"), d.path().join("idx"), d.path().join("shards"), d.path().join("dump"));
    for p in [&idx, &shards, &dump] {
        std::fs::create_dir_all(p).unwrap();
    }
    maskflow_synth::generate(&maskflow_synth::SynthParams { per_class: 10, ..Default::default() }, &data).unwrap();
    maskflow_index::run(&data, "test", &IndexParams::default(), None, &idx, &|_| {}).unwrap();
    let rows = read_index(&idx.join(INDEX_FILE)).unwrap();
    let params = PrepParams { size: 40, shard_rows: 7, row_group_rows: 3, ..Default::default() };
    maskflow_prep::run(&data, &rows, &params, &shards, &|_| {}).unwrap();

    let out = std::process::Command::new(venv_python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/read_shards.py"))
        .arg(&shards)
        .arg(&dump)
        .output()
        .unwrap();
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));

    let pixels = std::fs::read(dump.join("pixels.bin")).unwrap();
    let lines = std::fs::read_to_string(dump.join("rows.jsonl")).unwrap();
    let per = 40 * 40 * 3;
    let accepted: Vec<_> = rows.iter().filter(|r| r.status == "ok").collect();
    assert_eq!(lines.lines().count(), accepted.len());
    assert_eq!(pixels.len(), per * accepted.len());
    let mut resizer = maskflow_imaging::Resizer::default();
    for (i, line) in lines.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let row = accepted.iter().find(|r| r.path == v["path"].as_str().unwrap()).unwrap();
        assert_eq!(v["label_idx"].as_i64().unwrap(), row.label_idx as i64);
        assert_eq!(v["content_hash"].as_str().unwrap(), row.content_hash);
        let bytes = std::fs::read(data.join(maskflow_core::dataset::path_from_bytes(&row.path_raw))).unwrap();
        let own = prepare_pixels(&bytes, &params, &mut resizer).unwrap();
        assert!(own.as_raw() == &pixels[i * per..(i + 1) * per], "pixels differ for {}", row.path);
    }
}
