//! Label overrides: a human's decisions about labels, kept beside the pipeline file, applied when
//! indexing; the source folder is never modified.
//!
//! One decision per line, `path,label` or `path,exclude` (`path` as in `index.parquet`: relative to
//! the dataset root, e.g. `without_mask/2020-06-23-120235.jpg`; the last comma separates it from the
//! decision, so paths may contain commas). Blank lines and lines starting with `#` are comments; a
//! first non-comment line `path,label` is a header. `maskflow review` writes a file in this form to start from.

use maskflow_contracts::index::IndexRow;
use std::collections::BTreeMap;
use std::path::Path;

/// What to do with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Give it this class instead of its folder's.
    Label(String),
    /// Leave it out of the data (neither accepted nor rejected).
    Exclude,
}

/// A parsed overrides file: path → (decision, line number).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub file: String,
    pub decisions: BTreeMap<String, (Decision, usize)>,
}

#[derive(Debug, thiserror::Error)]
pub enum OverridesError {
    #[error("{file}:{line}: {reason}")]
    Line { file: String, line: usize, reason: String },
    #[error("{file}:{line}: no file `{path}` in the dataset (paths are relative to its root, e.g. `{example}`)")]
    UnknownPath { file: String, line: usize, path: String, example: String },
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
}

impl Overrides {
    pub fn read(path: &Path, classes: &[String]) -> Result<Overrides, OverridesError> {
        let text = std::fs::read_to_string(path).map_err(|e| OverridesError::Read(path.display().to_string(), e))?;
        Overrides::parse(&text, &path.display().to_string(), classes)
    }

    pub fn parse(text: &str, file: &str, classes: &[String]) -> Result<Overrides, OverridesError> {
        let err = |line: usize, reason: String| OverridesError::Line { file: file.to_string(), line, reason };
        let mut decisions = BTreeMap::new();
        let mut first = true;
        for (i, raw) in text.lines().enumerate() {
            let (n, line) = (i + 1, raw.trim());
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if std::mem::replace(&mut first, false) && line == "path,label" {
                continue;
            }
            let Some((path, what)) = line.rsplit_once(',') else {
                return Err(err(n, format!("expected `path,label` or `path,exclude`, got `{line}`")));
            };
            let (path, what) = (path.trim().trim_matches('"'), what.trim());
            if path.is_empty() {
                return Err(err(n, "empty path".into()));
            }
            let decision = match what {
                "exclude" => Decision::Exclude,
                c if classes.iter().any(|k| k == c) => Decision::Label(c.to_string()),
                other => {
                    return Err(err(n, format!("`{other}` is neither a class ({}) nor `exclude`", classes.join(", "))))
                }
            };
            if let Some((_, first)) = decisions.insert(path.to_string(), (decision, n)) {
                return Err(err(n, format!("`{path}` already has a decision on line {first}")));
            }
        }
        Ok(Overrides { file: file.to_string(), decisions })
    }

    /// Applies the decisions to `rows` (labels from `classes`); every path must name a row.
    /// Returns (relabelled, excluded).
    pub fn apply(&self, rows: &mut [IndexRow], classes: &[String]) -> Result<(usize, usize), OverridesError> {
        let by_path: BTreeMap<&str, usize> = rows.iter().enumerate().map(|(i, r)| (r.path.as_str(), i)).collect();
        let mut targets = Vec::new();
        for (path, (decision, line)) in &self.decisions {
            let Some(&i) = by_path.get(path.as_str()) else {
                return Err(OverridesError::UnknownPath {
                    file: self.file.clone(),
                    line: *line,
                    path: path.clone(),
                    example: rows.first().map(|r| r.path.clone()).unwrap_or_default(),
                });
            };
            targets.push((i, decision, *line));
        }
        let (mut relabelled, mut excluded) = (0, 0);
        for (i, decision, line) in targets {
            let row = &mut rows[i];
            match decision {
                Decision::Label(c) if *c == row.label => {}
                Decision::Label(c) => {
                    row.given_label = Some(std::mem::replace(&mut row.label, c.clone()));
                    row.label_idx = classes.iter().position(|k| k == c).map_or(-1, |p| p as i32);
                    relabelled += 1;
                }
                Decision::Exclude => {
                    row.status = "excluded".into();
                    row.split = None;
                    row.reason = Some("excluded".into());
                    row.detail = Some(format!("excluded by {} line {line}", self.file));
                    excluded += 1;
                }
            }
        }
        Ok((relabelled, excluded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        vec!["with_mask".into(), "without_mask".into()]
    }

    #[test]
    fn parses_decisions_and_refuses_what_it_cannot_apply() {
        let o = Overrides::parse(
            "# a comment first\npath,label\n\nwithout_mask/a, b.jpg,with_mask\nwith_mask/c.jpg,exclude\n",
            "o.csv",
            &classes(),
        )
        .unwrap();
        assert_eq!(o.decisions["without_mask/a, b.jpg"], (Decision::Label("with_mask".into()), 4));
        assert_eq!(o.decisions["with_mask/c.jpg"], (Decision::Exclude, 5));
        let e = Overrides::parse("x.jpg,cat\n", "o.csv", &classes()).unwrap_err().to_string();
        assert!(e.starts_with("o.csv:1:") && e.contains("neither a class"), "{e}");
        let e = Overrides::parse("x.jpg,exclude\nx.jpg,with_mask\n", "o.csv", &classes()).unwrap_err().to_string();
        assert!(e.contains("o.csv:2") && e.contains("line 1"), "{e}");
        let e = Overrides::parse("no comma here\n", "o.csv", &classes()).unwrap_err().to_string();
        assert!(e.contains("o.csv:1"), "{e}");
    }
}
