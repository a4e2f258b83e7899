use super::*;
use maskflow_synth::{generate, SynthParams};

fn no_progress(_: u64) {}

/// A synthetic dataset and its index, in temp dirs.
fn indexed(per_class: usize) -> (tempfile::TempDir, Vec<IndexRow>) {
    let data = tempfile::tempdir().unwrap();
    generate(&SynthParams { per_class, bad_files: false, ..SynthParams::default() }, data.path()).unwrap();
    let rows = maskflow_contracts::fixtures::index_rows_of_folder(data.path()).unwrap();
    (data, rows)
}

fn shard_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn shards_are_byte_identical_with_1_and_2_threads() {
    let (data, rows) = indexed(20);
    let params = PrepParams { size: 64, shard_rows: 16, row_group_rows: 8, ..PrepParams::default() };
    let run_with = |threads: usize| {
        let out = tempfile::tempdir().unwrap();
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| run(data.path(), &rows, &params, out.path(), &no_progress).unwrap());
        shard_bytes(out.path())
    };
    let one = run_with(1);
    assert!(one.len() >= 3, "expected several shards, got {}", one.len());
    assert_eq!(one, run_with(2));
}

#[test]
fn shards_hold_every_accepted_row_with_the_same_pixels_as_prepare_pixels() {
    let (data, rows) = indexed(12);
    let params = PrepParams { size: 48, shard_rows: 10, row_group_rows: 4, ..PrepParams::default() };
    let out = tempfile::tempdir().unwrap();
    let report = run(data.path(), &rows, &params, out.path(), &no_progress).unwrap();
    let accepted: Vec<&IndexRow> = rows.iter().filter(|r| r.status == "ok").collect();
    assert_eq!(report.images, accepted.len());
    let mut seen = Vec::new();
    for info in &report.shards {
        assert!(info.rows <= 10);
        let shard = read_shard(&out.path().join(&info.file)).unwrap();
        assert_eq!(shard.len(), info.rows);
        for r in shard {
            assert_eq!(r.split, info.split);
            assert_eq!((r.height, r.width, r.channels), (48, 48, 3));
            assert_eq!(r.pixels.len(), 48 * 48 * 3);
            seen.push(r);
        }
    }
    assert_eq!(seen.len(), accepted.len());
    // Spot-check pixels against a direct decode + resize.
    let mut resizer = Resizer::default();
    for r in seen.iter().step_by(5) {
        let idx = accepted.iter().find(|a| a.content_hash == r.content_hash && a.path == r.path).unwrap();
        let bytes = std::fs::read(data.path().join(maskflow_core::dataset::path_from_bytes(&idx.path_raw))).unwrap();
        let img = prepare_pixels(&bytes, &params, &mut resizer).unwrap();
        assert_eq!(img.as_raw(), &r.pixels, "{}", r.path);
        assert_eq!(r.label_idx, idx.label_idx);
    }
}

#[test]
fn a_file_changed_after_indexing_is_an_error_naming_it() {
    let (data, rows) = indexed(4);
    let victim = rows.iter().find(|r| r.status == "ok").unwrap();
    let p = data.path().join(maskflow_core::dataset::path_from_bytes(&victim.path_raw));
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&p, bytes).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = run(data.path(), &rows, &PrepParams { size: 32, ..PrepParams::default() }, out.path(), &no_progress)
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("changed since it was indexed") && msg.contains(&victim.path), "{msg}");
}

#[test]
fn the_key_covers_every_prep_param() {
    maskflow_pipeline::testing::assert_key_covers_every_param::<PrepStage>();
}
