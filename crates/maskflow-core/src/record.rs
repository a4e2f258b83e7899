//! Versioned records: every record maskflow writes to a store (a manifest, a plan, a task record,
//! a lease, a run record) carries `format` (its major format number) and `tool_version` (the
//! writer's). A reader tells three cases apart ([`decode`]):
//!
//! - **corrupt**: not JSON, not an object, no usable `format`, or a known format with a known
//!   field missing or mistyped ([`RecordError::Corrupt`]);
//! - **compatible**: the reader's major format, possibly with fields it does not know (a newer
//!   maskflow added them): those are ignored and the record is used;
//! - **newer**: a major format above the reader's ([`RecordError::Newer`]). Such a record is
//!   never deleted, replaced or "repaired" by this reader.
//!
//! The rules for writers (docs/ARTIFACTS.md, "Record formats"): adding a field that older readers
//! may ignore keeps the major format; removing a field, changing a field's meaning or type, or
//! adding one that readers must understand bumps it.

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// A record of a major format this maskflow does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Newer {
    /// What the record is (`manifest`, `plan`, …).
    pub what: &'static str,
    pub format: u32,
    /// The writer's tool version, as it recorded it (empty if it recorded none).
    pub writer: String,
    /// The newest format this maskflow reads.
    pub ours: u32,
}

impl std::fmt::Display for Newer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a {} of format {} written by {}; this {} reads {} format {} at most",
            self.what,
            self.format,
            if self.writer.is_empty() { "an unnamed tool" } else { &self.writer },
            writer(),
            self.what,
            self.ours
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("corrupt {what}: {why}")]
    Corrupt { what: &'static str, why: String },
    #[error("{0}")]
    Newer(Newer),
}

impl RecordError {
    pub fn newer(&self) -> Option<&Newer> {
        match self {
            RecordError::Newer(n) => Some(n),
            RecordError::Corrupt { .. } => None,
        }
    }
}

/// What every record says about itself, read before the rest.
#[derive(Deserialize)]
struct Header {
    format: Option<serde_json::Value>,
    tool_version: Option<serde_json::Value>,
}

/// The formats of one record type that this maskflow reads.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    pub what: &'static str,
    /// The format this maskflow writes (and the newest it reads): see [`Format::current`].
    base: u32,
    /// The oldest format it still reads (records of formats from `oldest` to `current` are decoded
    /// with the current type: fields added since must be `Option`al there, never defaulted).
    pub oldest: u32,
}

/// Test builds only (the `failpoints` feature), with `MASKFLOW_TEST_FUTURE_FORMATS=1`: this
/// process plays a newer maskflow — every record format one major higher, reading its own and
/// every older one. The chaos suite runs it beside ordinary processes on one store.
pub fn future_formats() -> bool {
    cfg!(feature = "failpoints") && std::env::var_os("MASKFLOW_TEST_FUTURE_FORMATS").is_some_and(|v| v == "1")
}

/// The writer's name as records carry it: the tool version (marked in the test builds' newer
/// maskflow).
pub fn writer() -> String {
    if future_formats() {
        format!("{} (test: future formats)", crate::TOOL_VERSION)
    } else {
        crate::TOOL_VERSION.to_string()
    }
}

impl Format {
    pub const fn new(what: &'static str, current: u32) -> Self {
        Format { what, base: current, oldest: current }
    }

    /// The format this maskflow writes, and the newest it reads.
    pub fn current(&self) -> u32 {
        self.base + u32::from(future_formats())
    }
    pub const fn reading_back_to(mut self, oldest: u32) -> Self {
        self.oldest = oldest;
        self
    }

    /// Decodes a record of this type: see the module doc. A record without a `format` field is
    /// format 0 (written before records were versioned).
    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, RecordError> {
        let corrupt = |why: String| RecordError::Corrupt { what: self.what, why };
        let header: Header = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let format = match &header.format {
            None => 0,
            Some(v) => v.as_u64().and_then(|f| u32::try_from(f).ok()).ok_or_else(|| corrupt(format!("format {v} is not a format number")))?,
        };
        let writer = match &header.tool_version {
            Some(serde_json::Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let current = self.current();
        if format > current {
            return Err(RecordError::Newer(Newer { what: self.what, format, writer, ours: current }));
        }
        if format < self.oldest {
            return Err(corrupt(format!("format {format} is older than any this maskflow reads ({}..={current})", self.oldest)));
        }
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Rec {
        format: u32,
        tool_version: String,
        n: u64,
    }
    const F: Format = Format::new("thing", 2);

    #[test]
    fn three_cases_are_told_apart() {
        let ok = br#"{"format":2,"tool_version":"maskflow 9","n":3}"#;
        assert_eq!(F.decode::<Rec>(ok).unwrap().n, 3);
        // Compatible: a field this reader does not know is ignored.
        let more = br#"{"format":2,"tool_version":"maskflow 9","n":3,"shiny":{"a":1}}"#;
        assert_eq!(F.decode::<Rec>(more).unwrap().n, 3);
        // Newer: named with its writer, never read as ours.
        let newer = br#"{"format":3,"tool_version":"maskflow 10","n":3}"#;
        let e = F.decode::<Rec>(newer).unwrap_err();
        assert_eq!(e.newer(), Some(&Newer { what: "thing", format: 3, writer: "maskflow 10".into(), ours: 2 }));
        assert!(e.to_string().contains("maskflow 10") && e.to_string().contains("format 2 at most"), "{e}");
        // Corrupt: torn, not an object, a missing known field, a bad format, an older format.
        for bad in [&br#"{"format":2,"tool"#[..], b"[1,2]", br#"{"format":2,"tool_version":"x"}"#, br#"{"format":"2"}"#, br#"{"format":1,"tool_version":"x","n":1}"#] {
            assert!(matches!(F.decode::<Rec>(bad), Err(RecordError::Corrupt { .. })), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn format_zero_is_a_record_without_a_format_field() {
        #[derive(Deserialize)]
        struct Old {
            n: u64,
        }
        let f = Format::new("old", 1).reading_back_to(0);
        assert_eq!(f.decode::<Old>(br#"{"n":4}"#).unwrap().n, 4);
        assert!(matches!(Format::new("old", 1).decode::<Old>(br#"{"n":4}"#), Err(RecordError::Corrupt { .. })));
    }
}
