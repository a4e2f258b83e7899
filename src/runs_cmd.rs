//! `maskflow runs`, `maskflow diff`, the table at the end of a sweep, and the git state a run
//! records. The comparing is `maskflow-experiments`'; this file parses and prints.

use crate::session::registry;
use anyhow::{Context, Result};
use maskflow_core::runs::GitState;
use maskflow_pipeline::runner::Ran;
use maskflow_experiments::{diff, html, rows, table};
use maskflow_pipeline::Registry;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The commit of the git checkout holding `pipeline`, and whether its tracked files have changes;
/// `None` outside a checkout or without git.
pub fn git_state(pipeline: &Path) -> Option<GitState> {
    let dir = pipeline.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"])?;
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty();
    Some(GitState { commit, dirty })
}

/// A pipeline named on the command line: a pipeline file (its `name`), or the name itself.
fn pipeline_name(arg: &str) -> Result<String> {
    let path = Path::new(arg);
    if path.is_file() {
        let g = maskflow_pipeline::graph::Graph::load(path, &registry())?;
        return Ok(g.name);
    }
    anyhow::ensure!(
        !arg.contains('/') && !arg.ends_with(".toml"),
        "{arg}: no such pipeline file (give a pipeline file, or a pipeline's name as in artifacts/runs/NAME)"
    );
    Ok(arg.to_string())
}

#[derive(Debug, Clone, Copy)]
pub enum Format {
    Text,
    Csv,
    Json,
}

pub struct RunsArgs<'a> {
    pub pipeline: Option<&'a str>,
    pub artifacts: &'a Path,
    pub filters: &'a [String],
    pub sort: Option<String>,
    pub desc: bool,
    pub last: Option<usize>,
    pub format: Format,
    /// `Some(None)`: the default place.
    pub html: Option<Option<PathBuf>>,
}

/// `maskflow runs`.
pub fn runs(a: &RunsArgs) -> Result<()> {
    let name = a.pipeline.map(pipeline_name).transpose()?;
    let reg = registry();
    let records = rows::records(a.artifacts, name.as_deref())?;
    if records.is_empty() {
        let dir = a.artifacts.join("runs").join(name.as_deref().unwrap_or(""));
        anyhow::bail!("no run records in {} (maskflow run writes them)", dir.display());
    }
    let filters = a.filters.iter().map(|f| table::Filter::parse(f)).collect::<Result<Vec<_>, _>>()?;
    let query = table::Query { filters, sort: a.sort.clone(), descending: a.desc, last: a.last };
    let chosen = table::select(rows::rows(a.artifacts, &reg, &records), &query)?;
    match a.format {
        Format::Text => print!("{}", table::text(&table::lines(&chosen))),
        Format::Csv => print!("{}", table::csv(&table::lines(&chosen))),
        Format::Json => {
            for r in &chosen {
                println!("{}", serde_json::to_string(r)?);
            }
        }
    }
    if let Some(page) = &a.html {
        let page = match page {
            Some(p) => p.clone(),
            None => a.artifacts.join("runs").join(name.as_deref().unwrap_or("")).join("runs.html"),
        };
        let title = format!("Runs of {}", name.as_deref().unwrap_or("every pipeline"));
        let charts = html::write(&page, &title, &chosen)?;
        eprintln!("runs page {} ({} rows, {charts} charts)", page.display(), chosen.len());
    }
    Ok(())
}

/// `maskflow diff A B`.
pub fn diff(artifacts: &Path, pipeline: Option<&str>, a: &str, b: &str, json: bool) -> Result<()> {
    let name = pipeline.map(pipeline_name).transpose()?;
    let reg = registry();
    let records = rows::records(artifacts, name.as_deref())?;
    let all = rows::rows(artifacts, &reg, &records);
    let ra = rows::find(&all, a).with_context(|| "diff: the first run".to_string())?;
    let rb = rows::find(&all, b).with_context(|| "diff: the second run".to_string())?;
    let d = diff::diff(ra, rb);
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print!("{}", diff::text(&d));
    }
    Ok(())
}

/// The comparison printed when a sweep's run ends: its points as `maskflow runs` rows.
pub fn sweep_table(artifacts: &Path, reg: &Registry, ran: &Ran) -> Result<()> {
    let stem = ran.record_path.as_ref().and_then(|p| p.file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let id = format!("{}/{stem}", ran.record.pipeline);
    let chosen = rows::rows(artifacts, reg, &[(id, ran.record.clone())]);
    println!("\n{}", table::text(&table::lines(&chosen)).trim_end());
    if let [a, b, ..] = chosen.as_slice() {
        println!("compare two points: maskflow diff {} {}; all runs: maskflow runs {} [--html]", a.id, b.id, ran.record.pipeline);
    }
    Ok(())
}
