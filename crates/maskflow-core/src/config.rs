//! Typed TOML files whose errors say `file:line:column: message`, naming the offending key.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid { path: PathBuf, line: usize, column: usize, message: String },
    /// A command-line override (`-S stage.param=value`) that does not fit the file.
    #[error("-S {arg}: {message}")]
    Override { arg: String, message: String },
}

/// Parses `text` (the contents of `path`) into `T`; errors carry the 1-based line and column.
pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| toml_error(path, text, &e))
}

/// A TOML error in `text` (the contents of `path`) as `path:line:column: message`; a type error,
/// which points at the value, also names the key it belongs to.
pub fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
    let mut message = e.message().trim().to_string();
    if let Some(key) = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('[') && !message.contains(&format!("`{k}`")))
    {
        message = format!("key `{key}`: {message}");
    }
    ConfigError::Invalid { path: path.to_path_buf(), line, column, message }
}

/// A message about the text at byte `offset` of `text` (the contents of `path`).
pub fn error_at(path: &Path, text: &str, offset: usize, message: String) -> ConfigError {
    let (line, column) = line_col(text, offset);
    ConfigError::Invalid { path: path.to_path_buf(), line, column, message }
}

pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse_toml(path, &text)
}

pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        size: u32,
    }

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default)]
        name: String,
        inner: Inner,
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "name = \"x\"\n\n[inner]\nsize = 3\nsise = 4\n";
        let err = parse_toml::<Outer>(Path::new("p.toml"), text).unwrap_err().to_string();
        assert!(err.starts_with("p.toml:5:1: "), "{err}");
        assert!(err.contains("sise"), "{err}");
    }

    #[test]
    fn wrong_type_names_line() {
        let text = "[inner]\nsize = \"big\"\n";
        let err = parse_toml::<Outer>(Path::new("p.toml"), text).unwrap_err().to_string();
        assert!(err.starts_with("p.toml:2:8: key `size`: "), "{err}");
    }
}
