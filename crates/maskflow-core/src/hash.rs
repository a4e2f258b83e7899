//! Hashing: blake3 over files and over a canonical JSON encoding of structured values.

use serde::Serialize;
use serde_json::Value;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Lower-case hex blake3 of a byte slice.
pub fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Streams a file through blake3 (memory-mapped reads are not used: files may be on odd filesystems).
pub fn blake3_file(path: &Path) -> io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hasher.finalize().to_hex().to_string(), total))
}

/// Canonical JSON: object keys sorted (byte order), no whitespace, numbers as serde_json prints them.
/// Independent of serde_json's `preserve_order` feature, so a dependency that turns it on cannot
/// change any key.
pub fn canonical_json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let v = serde_json::to_value(value)?;
    let mut out = String::new();
    write_canonical(&v, &mut out)?;
    Ok(out)
}

fn write_canonical(v: &Value, out: &mut String) -> serde_json::Result<()> {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k)?);
                out.push(':');
                write_canonical(&map[*k], out)?;
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out)?;
            }
            out.push(']');
        }
        other => out.push_str(&serde_json::to_string(other)?),
    }
    Ok(())
}

/// blake3 over the canonical JSON of a value, as hex.
pub fn hash_canonical<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    Ok(blake3_hex(canonical_json(value)?.as_bytes()))
}

/// A uniform draw in [0, 1) that is a pure function of (seed, a content hash): the first 8 bytes of
/// blake3("maskflow-split" ‖ seed ‖ hash) as a little-endian u64, scaled by 2^-64.
pub fn unit_interval(seed: u64, content_hash_hex: &str) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(b"maskflow-split\0");
    h.update(&seed.to_le_bytes());
    h.update(content_hash_hex.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_bytes()[..8]);
    // 53 high bits -> exactly representable double in [0, 1).
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": null}});
        let b = json!({"a": {"x": null, "y": [1, {"c": 3, "d": 2}]}, "b": 1});
        assert_eq!(canonical_json(&a).unwrap(), canonical_json(&b).unwrap());
        assert_eq!(
            canonical_json(&a).unwrap(),
            r#"{"a":{"x":null,"y":[1,{"c":3,"d":2}]},"b":1}"#
        );
    }

    #[test]
    fn unit_interval_is_uniformish_and_seeded() {
        let n = 10_000;
        let hashes: Vec<String> = (0..n).map(|i: u32| blake3_hex(&i.to_le_bytes())).collect();
        let below = hashes.iter().filter(|h| unit_interval(1, h) < 0.2).count();
        let frac = below as f64 / n as f64;
        assert!((frac - 0.2).abs() < 0.015, "fraction {frac}");
        let moved = hashes
            .iter()
            .filter(|h| (unit_interval(1, h) < 0.2) != (unit_interval(2, h) < 0.2))
            .count();
        assert!(moved > 1000, "a different seed must give a different split");
        for h in &hashes[..100] {
            let u = unit_interval(7, h);
            assert!((0.0..1.0).contains(&u));
        }
    }
}
