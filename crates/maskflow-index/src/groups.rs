//! Duplicate groups: exact (same content hash) and near (dHash within a Hamming distance).

use crate::{Examined, IndexRow};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// dHashes with very few or very many set bits carry little information (flat or smooth pictures)
/// and would group unrelated files; they take no part in near-duplicate grouping.
fn informative(h: u64) -> bool {
    (6..=58).contains(&h.count_ones())
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            // Deterministic: the smaller index becomes the root.
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.0[hi] = lo;
        }
    }
}

/// The group key of every examined file: its content hash, or for members of a near-duplicate
/// group the smallest content hash in the group. `distance: None` disables near grouping.
pub(crate) fn group_keys(examined: &[Examined], distance: Option<u32>) -> Vec<String> {
    let n = examined.len();
    let mut uf = UnionFind((0..n).collect());
    if let Some(d) = distance {
        // Multi-index search: with distance ≤ 3, two hashes within it agree exactly on at least one
        // of their four 16-bit quarters (pigeonhole), so only bucket-mates need comparing.
        let hashes: Vec<(usize, u64)> = examined
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.outcome.as_ref().ok().map(|h| (i, h.dhash)))
            .filter(|&(_, h)| informative(h))
            .collect();
        for q in 0..4 {
            let mut buckets: HashMap<u16, Vec<(usize, u64)>> = HashMap::new();
            for &(i, h) in &hashes {
                buckets.entry((h >> (16 * q)) as u16).or_default().push((i, h));
            }
            for members in buckets.values() {
                for a in 0..members.len() {
                    for b in a + 1..members.len() {
                        if (members[a].1 ^ members[b].1).count_ones() <= d {
                            uf.union(members[a].0, members[b].0);
                        }
                    }
                }
            }
        }
    }
    // Exact copies: union by content hash too, so a near-group containing one copy holds them all.
    let mut first_with_hash: HashMap<&str, usize> = HashMap::new();
    for (i, e) in examined.iter().enumerate() {
        if e.outcome.is_ok() {
            match first_with_hash.get(e.content_hash.as_str()) {
                Some(&j) => uf.union(i, j),
                None => {
                    first_with_hash.insert(&e.content_hash, i);
                }
            }
        }
    }
    let mut min_hash: HashMap<usize, String> = HashMap::new();
    for (i, e) in examined.iter().enumerate() {
        let r = uf.find(i);
        let entry = min_hash.entry(r).or_insert_with(|| e.content_hash.clone());
        if e.content_hash < *entry {
            *entry = e.content_hash.clone();
        }
    }
    (0..n)
        .map(|i| {
            if examined[i].outcome.is_err() {
                examined[i].content_hash.clone()
            } else {
                let r = uf.find(i);
                min_hash[&r].clone()
            }
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub key: String,
    pub paths: Vec<String>,
    pub labels: BTreeSet<String>,
    pub splits: BTreeSet<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Groups {
    /// Byte-identical files (same content hash), 2 or more.
    pub exact: Vec<Group>,
    /// Groups held together by near-duplicate similarity (more than one distinct content hash).
    pub near: Vec<Group>,
}

pub(crate) fn describe(rows: &[IndexRow]) -> Groups {
    let mut by_hash: BTreeMap<&str, Vec<&IndexRow>> = BTreeMap::new();
    let mut by_group: BTreeMap<&str, Vec<&IndexRow>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.status == "ok") {
        by_hash.entry(&r.content_hash).or_default().push(r);
        by_group.entry(&r.group_hash).or_default().push(r);
    }
    let mk = |key: &str, members: &[&IndexRow]| Group {
        key: key.to_string(),
        paths: members.iter().map(|r| r.path.clone()).collect(),
        labels: members.iter().map(|r| r.label.clone()).collect(),
        splits: members.iter().filter_map(|r| r.split.clone()).collect(),
    };
    let exact = by_hash.iter().filter(|(_, m)| m.len() > 1).map(|(k, m)| mk(k, m)).collect();
    let near = by_group
        .iter()
        .filter(|(_, m)| m.iter().map(|r| &r.content_hash).collect::<BTreeSet<_>>().len() > 1)
        .map(|(k, m)| mk(k, m))
        .collect();
    Groups { exact, near }
}
