//! maskflow's side of `just bench-predict`: single-image latency (process loaded: read, decode,
//! resize, forward with batch 1) and batch throughput (decode in parallel, batches of 64) of a bundle
//! on the first N images of a folder. Prints one JSON line.
//!
//! usage: bench_predict BUNDLE FOLDER [N] [THREADS]

use maskflow_predict as predict;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    maskflow_core::alloc::tune_malloc();
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() >= 3, "usage: bench_predict BUNDLE FOLDER [N] [THREADS]");
    let n: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(256);
    let threads: i32 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(2);
    tch::set_num_threads(threads);
    let bundle = predict::load(std::path::Path::new(&args[1]), tch::Device::Cpu)?;
    let (mut files, _) = predict::expand(&[args[2].clone()]);
    files.truncate(n);
    // Warm-up, then single images one at a time.
    predict::predict(&bundle, &files[..4.min(files.len())], 1, None)?;
    let mut lat = Vec::new();
    for f in files.iter().take(100) {
        let t = Instant::now();
        let r = predict::predict(&bundle, std::slice::from_ref(f), 1, None)?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(r.len(), 1);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    let t = Instant::now();
    let r = predict::predict(&bundle, &files, 64, None)?;
    let throughput = r.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "{{\"p50_ms\": {:.2}, \"p95_ms\": {:.2}, \"batch_images_per_s\": {:.1}, \"images\": {}, \"threads\": {threads}}}",
        pct(0.5),
        pct(0.95),
        throughput,
        r.len()
    );
    Ok(())
}
