//! Progress bars with one look across the stages. They draw on stderr only when it is a terminal
//! (indicatif hides them otherwise), so logs and CI output stay clean.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar for `len` items of work, showing the rate in items per second.
pub fn bar(len: u64, what: &str, unit: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let template = format!(
        "{{prefix:>8.bold}} [{{bar:32}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}} {{msg}}"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(what.to_string());
    pb
}

/// A bar for `total` bytes of transfer, showing bytes done and the throughput.
pub fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    let template = "{prefix:>8.bold} [{bar:32}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(what.to_string());
    pb
}
