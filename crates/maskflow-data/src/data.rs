//! Prep shards → uint8 pixels (held in memory, or streamed from the shards row group by row group
//! through a shuffle buffer), epoch orders, and a background batch producer.

use crate::augment::{self, AugmentParams, Draw};
use crate::corrupt::Family;
use anyhow::{bail, Context, Result};
use maskflow_core::rng::SplitMix64;
use maskflow_contracts::shards::{self, read_shard_meta, PixelReader};
pub use maskflow_contracts::model::DataMode;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{mpsc, Arc};
use tch::{Device, Kind, Tensor};

/// Where a split's pixels are.
pub enum Pixels {
    /// All rows in one (N, H, W, 3) uint8 tensor.
    Memory(Tensor),
    /// In the shards, read one row group at a time.
    Stream(Arc<StreamSource>),
}

/// One row group of a streamed split: which shard, which group, and the split rows it holds.
#[derive(Debug, Clone, Copy)]
pub struct GroupRef {
    pub shard: usize,
    pub group: usize,
    pub first: usize,
    pub rows: usize,
}

/// The shards of a streamed split.
pub struct StreamSource {
    readers: Vec<PixelReader>,
    pub groups: Vec<GroupRef>,
    /// Split row → index into `groups`.
    group_of: Vec<u32>,
}

impl StreamSource {
    /// Calls `each(split row, pixels)` for every row of group `g`.
    fn read_group(&self, g: usize, mut each: impl FnMut(usize, &[u8])) -> Result<()> {
        let r = self.groups[g];
        self.readers[r.shard].read_group(r.group, |i, px| each(r.first + i, px))
    }

    /// The largest row group, in rows.
    pub fn max_group_rows(&self) -> usize {
        self.groups.iter().map(|g| g.rows).max().unwrap_or(0)
    }
}

/// One split: its pixels (in memory or streamed) and, always in memory, its labels and names.
pub struct SplitData {
    pub pixels: Pixels,
    /// Labels (N) int64.
    pub labels: Tensor,
    pub label_idx: Vec<i64>,
    pub hashes: Vec<String>,
    pub paths: Vec<String>,
    /// Side of the stored square images.
    pub size: i64,
}

impl SplitData {
    pub fn len(&self) -> usize {
        self.label_idx.len()
    }
    pub fn is_empty(&self) -> bool {
        self.label_idx.is_empty()
    }
    pub fn is_streamed(&self) -> bool {
        matches!(self.pixels, Pixels::Stream(_))
    }
    /// Images per class index.
    pub fn counts(&self, classes: usize) -> Vec<usize> {
        let mut c = vec![0; classes];
        for &l in &self.label_idx {
            if let Some(x) = c.get_mut(l as usize) {
                *x += 1;
            }
        }
        c
    }
    /// Row `i`'s pixels as an (H, W, 3) uint8 tensor (a view when in memory; read when streamed).
    pub fn image(&self, i: usize) -> Result<Tensor> {
        match &self.pixels {
            Pixels::Memory(t) => Ok(t.get(i as i64)),
            Pixels::Stream(src) => {
                let mut out = None;
                src.read_group(src.group_of[i] as usize, |row, px| {
                    if row == i {
                        out = Some(Tensor::from_data_size(px, &[self.size, self.size, 3], Kind::Uint8));
                    }
                })?;
                out.with_context(|| format!("row {i} missing from its row group"))
            }
        }
    }
}

/// Opens the shards of `splits`: rows (without pixels) are read and checked first; then the pixels
/// are read into one tensor (`memory`, or `auto` when they take at most `memory_limit` bytes) or
/// left in the shards to be streamed.
pub fn open_splits(
    prep_dir: &Path,
    splits: &[&str],
    classes: usize,
    mode: DataMode,
    memory_limit: u64,
) -> Result<SplitData> {
    let listing = prep_dir.join(shards::SHARDS_FILE);
    let infos = shards::read_shard_list(prep_dir)?;
    let total: usize = infos.iter().filter(|i| splits.contains(&i.split.as_str())).map(|i| i.rows).sum();
    let (mut label_idx, mut hashes, mut paths) = (Vec::new(), Vec::new(), Vec::new());
    let (mut readers, mut groups, mut group_of) = (Vec::new(), Vec::new(), Vec::new());
    let mut size: Option<(u32, u32, u32)> = None;
    for info in infos.iter().filter(|i| splits.contains(&i.split.as_str())) {
        let file = prep_dir.join(&info.file);
        let meta = read_shard_meta(&file)?;
        for r in meta.rows {
            let dims = (r.height, r.width, r.channels);
            match size {
                None => size = Some(dims),
                Some(d) if d != dims => bail!("{}: row {} is {dims:?}, earlier rows {d:?}", file.display(), r.path),
                _ => {}
            }
            if dims.0 != dims.1 || dims.2 != 3 {
                bail!("{}: row {} is not a square RGB image ({dims:?})", file.display(), r.path);
            }
            if r.label_idx < 0 || r.label_idx as usize >= classes {
                bail!(
                    "{}: row {} has label index {} outside the {classes} classes",
                    file.display(),
                    r.path,
                    r.label_idx
                );
            }
            if label_idx.len() >= total {
                bail!("{}: more rows than shards.json lists ({total})", file.display());
            }
            label_idx.push(r.label_idx as i64);
            hashes.push(r.content_hash);
            paths.push(r.path);
        }
        let shard = readers.len();
        let mut first = groups.iter().map(|g: &GroupRef| g.rows).sum::<usize>();
        for (group, &rows) in meta.row_groups.iter().enumerate() {
            group_of.extend(std::iter::repeat_n(groups.len() as u32, rows));
            groups.push(GroupRef { shard, group, first, rows });
            first += rows;
        }
        readers.push(PixelReader::open(&file)?);
    }
    if label_idx.len() != total {
        bail!(
            "{}: shards.json lists {total} rows of {splits:?}, the shards hold {}",
            listing.display(),
            label_idx.len()
        );
    }
    let side = size.map(|d| d.0 as i64).unwrap_or(0);
    let row_bytes = (side * side * 3) as usize;
    let src = StreamSource { readers, groups, group_of };
    let in_memory = match mode {
        DataMode::Memory => true,
        DataMode::Stream => false,
        DataMode::Auto => (total as u64).saturating_mul(row_bytes as u64) <= memory_limit,
    };
    let pixels = if in_memory {
        let all = Tensor::zeros([total as i64, side, side, 3], (Kind::Uint8, Device::Cpu));
        if total > 0 {
            // SAFETY: `all` is a fresh contiguous CPU uint8 tensor of exactly total × row_bytes bytes,
            // owned here and not aliased while the slice lives.
            let dst = unsafe { std::slice::from_raw_parts_mut(all.data_ptr() as *mut u8, total * row_bytes) };
            for g in 0..src.groups.len() {
                let mut bad = None;
                src.read_group(g, |row, px| {
                    if px.len() == row_bytes {
                        dst[row * row_bytes..(row + 1) * row_bytes].copy_from_slice(px);
                    } else {
                        bad = Some((row, px.len()));
                    }
                })?;
                if let Some((row, len)) = bad {
                    bail!("{}: row {} has {len} pixel bytes, expected {row_bytes}", listing.display(), paths[row]);
                }
            }
        }
        Pixels::Memory(all)
    } else {
        Pixels::Stream(Arc::new(src))
    };
    let labels = Tensor::from_slice(&label_idx);
    Ok(SplitData { pixels, labels, label_idx, hashes, paths, size: side })
}

/// The training order of one epoch over a streamed split, as a shuffle buffer makes it: row groups
/// visited in a seeded random order, their rows entering a buffer of `buffer` rows, each new row
/// sending a randomly chosen one out; the buffer drains in random order at the end. It depends on the
/// row-group layout and the seed only (not on pixels), so it is known before any pixel is read, and
/// the producer never holds more than about `buffer` + one row group of rows to follow it.
pub fn stream_order(src: &StreamSource, buffer: usize, seed: u64, stage: u64, epoch: u64) -> Vec<usize> {
    let mut r = SplitMix64::derive(seed, &[0x57ea4, stage, epoch]);
    let mut below = |n: usize| (r.next_u64() % n as u64) as usize;
    let mut visit: Vec<usize> = (0..src.groups.len()).collect();
    for i in (1..visit.len()).rev() {
        visit.swap(i, below(i + 1));
    }
    let n: usize = src.groups.iter().map(|g| g.rows).sum();
    let cap = buffer.max(1);
    let (mut buf, mut out) = (Vec::with_capacity(cap), Vec::with_capacity(n));
    for g in visit {
        let GroupRef { first, rows, .. } = src.groups[g];
        for row in first..first + rows {
            if buf.len() < cap {
                buf.push(row);
            } else {
                let j = below(cap);
                out.push(std::mem::replace(&mut buf[j], row));
            }
        }
    }
    while !buf.is_empty() {
        let j = below(buf.len());
        out.push(buf.swap_remove(j));
    }
    out
}

/// The order of one epoch: a seeded permutation (fastai shuffles every epoch), or, for
/// `oversample`, N draws with replacement weighted by 1 / class count.
pub fn epoch_order(labels: &[i64], classes: usize, seed: u64, stage: u64, epoch: u64, oversample: bool) -> Vec<usize> {
    let mut r = SplitMix64::derive(seed, &[0x5fff1e, stage, epoch]);
    let n = labels.len();
    if oversample {
        let mut counts = vec![0usize; classes];
        labels.iter().for_each(|&l| counts[l as usize] += 1);
        let w: Vec<f64> = labels.iter().map(|&l| 1.0 / counts[l as usize] as f64).collect();
        let mut cum = Vec::with_capacity(n);
        let mut acc = 0.0;
        for x in &w {
            acc += x;
            cum.push(acc);
        }
        return (0..n)
            .map(|_| {
                let u = r.f64() * acc;
                cum.partition_point(|&c| c <= u).min(n - 1)
            })
            .collect();
    }
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (r.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// A prepared batch: normalised images on the device and labels.
pub struct Batch {
    pub index: usize,
    pub x: Tensor,
    pub y: Tensor,
}

/// What the producer needs to make one epoch's batches.
pub struct EpochPlan {
    pub order: Vec<usize>,
    pub batch_size: usize,
    pub drop_last: bool,
    /// `Some((params, seed, epoch id))` for training augmentation, `None` for `view`.
    pub augment: Option<(AugmentParams, u64, u64)>,
    /// The evaluation view when not augmenting (default: the plain centre crop).
    pub view: View,
    pub out_size: i64,
    pub device: Device,
    pub channels_last: bool,
    /// Which positions of every batch this process takes (data-parallel ranks); [`Part::WHOLE`] for all.
    pub part: Part,
}

/// Rank `rank` of `world` takes positions `rank, rank + world, …` of every batch, with the
/// augmentation draws those positions get in the whole batch: the ranks together see exactly the
/// images and draws of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub rank: usize,
    pub world: usize,
}

impl Part {
    pub const WHOLE: Part = Part { rank: 0, world: 1 };

    /// Whether this part takes position `i` of a batch.
    pub fn takes(&self, i: usize) -> bool {
        i % self.world.max(1) == self.rank
    }

    /// The positions of a batch of `n` that this part takes.
    pub fn positions(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        (0..n).filter(|&i| self.takes(i))
    }
}

impl EpochPlan {
    pub fn batches(&self) -> usize {
        if self.drop_last {
            self.order.len() / self.batch_size
        } else {
            self.order.len().div_ceil(self.batch_size)
        }
    }
}

/// The evaluation view of every image: the centre crop after a test-time-augmentation transform,
/// optionally corrupted (robustness scoring).
#[derive(Clone, Default)]
pub struct View {
    /// Output → source transform (normalised coordinates) before the centre crop; `None` = plain.
    pub transform: Option<[f64; 9]>,
    /// One corruption at one severity for every image, its noise seeded per split row by `seeds`.
    pub corruption: Option<(Family, u8, Arc<Vec<u64>>)>,
}

impl View {
    fn draw(&self, src: i64, out: i64, row: usize) -> Draw {
        let mut d = augment::view_draw(src, out, &self.transform.unwrap_or(augment::IDENTITY));
        if let Some((family, severity, seeds)) = &self.corruption {
            d.degrade = family.degrade(*severity, seeds.get(row).copied().unwrap_or(row as u64));
        }
        d
    }
}

/// Makes batch `b` of `plan` from in-memory `images` / `labels`.
pub fn make_batch(images: &Tensor, labels: &Tensor, plan: &EpochPlan, b: usize) -> Result<Batch> {
    let idx = plan.batch_rows(b);
    let mine: Vec<i64> = plan.part.positions(idx.len()).map(|i| idx[i]).collect();
    let raw = images.index_select(0, &Tensor::from_slice(&mine));
    finish_batch(raw, labels, &idx, plan, b)
}

/// Augments (or centres), normalises and moves the raw (n, H, W, 3) uint8 pixels of the plan's part
/// of batch `b` (whose rows, all of them, are `idx`).
fn finish_batch(raw: Tensor, labels: &Tensor, idx: &[i64], plan: &EpochPlan, b: usize) -> Result<Batch> {
    let pos: Vec<usize> = plan.part.positions(idx.len()).collect();
    let idx: Vec<i64> = pos.iter().map(|&i| idx[i]).collect();
    let src = raw.size()[1];
    let draws: Vec<Draw> = match &plan.augment {
        Some((a, seed, epoch)) => pos.iter().map(|&i| a.draw(*seed, *epoch, b as u64, i as u64, src, plan.out_size)).collect(),
        None => idx.iter().map(|&r| plan.view.draw(src, plan.out_size, r as usize)).collect(),
    };
    let x = augment::apply(&raw, &draws, plan.out_size, plan.device, plan.channels_last)?;
    let y = labels.index_select(0, &Tensor::from_slice(&idx)).to_device(plan.device);
    Ok(Batch { index: b, x, y })
}

impl EpochPlan {
    fn batch_rows(&self, b: usize) -> Vec<i64> {
        let lo = b * self.batch_size;
        let hi = (lo + self.batch_size).min(self.order.len());
        self.order[lo..hi].iter().map(|&i| i as i64).collect()
    }
}

/// What a streaming producer holds: rows read but not yet used, by row, and the groups they came
/// from in reading order (for eviction).
struct StreamState<'a> {
    src: &'a StreamSource,
    row_bytes: usize,
    /// Uses of each row still ahead in the order.
    remaining: Vec<u32>,
    pending: HashMap<usize, Vec<u8>>,
    loaded: VecDeque<usize>,
    cap: usize,
    stats: StreamStats,
}

/// What a streaming pass did: row groups read, and the most rows it held at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub groups_read: usize,
    pub peak_rows: usize,
}

impl StreamState<'_> {
    fn take(&mut self, row: usize) -> Result<Vec<u8>> {
        if !self.pending.contains_key(&row) {
            let g = self.src.group_of[row] as usize;
            let (remaining, pending, row_bytes) = (&self.remaining, &mut self.pending, self.row_bytes);
            let mut bad = None;
            self.src.read_group(g, |r, px| {
                if px.len() != row_bytes {
                    bad = Some(px.len());
                } else if remaining[r] > 0 && !pending.contains_key(&r) {
                    pending.insert(r, px.to_vec());
                }
            })?;
            if let Some(len) = bad {
                bail!("row group {g}: a row has {len} pixel bytes, expected {row_bytes}");
            }
            self.stats.groups_read += 1;
            self.stats.peak_rows = self.stats.peak_rows.max(self.pending.len());
            self.loaded.push_back(g);
            // Bounded memory whatever the order: past the cap, the oldest groups' unused rows are
            // dropped (read again if needed). Orders from `stream_order` never get here.
            while self.pending.len() > self.cap && self.loaded.len() > 1 {
                let old = self.loaded.pop_front().unwrap_or(g);
                let GroupRef { first, rows, .. } = self.src.groups[old];
                for r in first..first + rows {
                    if r != row {
                        self.pending.remove(&r);
                    }
                }
            }
        }
        self.remaining[row] = self.remaining[row].saturating_sub(1);
        let px = if self.remaining[row] == 0 { self.pending.remove(&row) } else { self.pending.get(&row).cloned() };
        px.with_context(|| format!("row {row} not in its row group"))
    }
}

/// Makes `plan`'s batches from a streamed split, in order, calling `send` with each; stops when
/// `send` returns false.
fn stream_batches(
    src: &StreamSource,
    labels: &Tensor,
    side: i64,
    plan: &EpochPlan,
    buffer: usize,
    mut send: impl FnMut(Result<Batch>) -> bool,
) -> StreamStats {
    let mut remaining = vec![0u32; src.group_of.len()];
    let used = plan.batches() * plan.batch_size;
    for &r in plan.order.iter().take(used) {
        remaining[r] += 1;
    }
    let row_bytes = (side * side * 3) as usize;
    let cap = buffer.max(1) + 2 * src.max_group_rows();
    let mut st = StreamState {
        src,
        row_bytes,
        remaining,
        pending: HashMap::new(),
        loaded: VecDeque::new(),
        cap,
        stats: StreamStats::default(),
    };
    for b in 0..plan.batches() {
        let idx = plan.batch_rows(b);
        // Every row is taken (the buffer's accounting), only the plan's part is kept.
        let mut raw = Vec::with_capacity(idx.len() * row_bytes);
        for (i, &r) in idx.iter().enumerate() {
            match st.take(r as usize) {
                Ok(px) if plan.part.takes(i) => raw.extend_from_slice(&px),
                Ok(_) => {}
                Err(e) => {
                    send(Err(e));
                    return st.stats;
                }
            }
        }
        let n = (raw.len() / row_bytes) as i64;
        let raw = Tensor::from_data_size(&raw, &[n, side, side, 3], Kind::Uint8);
        if !send(finish_batch(raw, labels, &idx, plan, b)) {
            break;
        }
    }
    st.stats
}

/// Produces `plan`'s batches of `split` on a background thread, two ahead of the consumer, so that
/// compute does not wait for reading and augmentation. A streamed split is read row group by row
/// group as the order needs them, holding at most about `buffer` rows plus two row groups; a read
/// error ends the stream with that error. The iterator ends early if dropped.
pub fn spawn_producer(split: &SplitData, plan: EpochPlan, buffer: usize) -> mpsc::Receiver<Result<Batch>> {
    let (tx, rx) = mpsc::sync_channel(2);
    let labels = split.labels.shallow_clone();
    match &split.pixels {
        Pixels::Memory(images) => {
            let images = images.shallow_clone();
            std::thread::spawn(move || {
                let _guard = tch::no_grad_guard();
                for b in 0..plan.batches() {
                    if tx.send(make_batch(&images, &labels, &plan, b)).is_err() {
                        break;
                    }
                }
            });
        }
        Pixels::Stream(src) => {
            let (src, side) = (src.clone(), split.size);
            std::thread::spawn(move || {
                let _guard = tch::no_grad_guard();
                stream_batches(&src, &labels, side, &plan, buffer, |b| tx.send(b).is_ok());
            });
        }
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixture shard set: 2 × 40 images at 16 px in shards of 24 rows, row groups of `group_rows`.
    fn prepared(dir: &Path, group_rows: usize) -> std::path::PathBuf {
        use maskflow_contracts::fixtures;
        let prep_dir = dir.join("prep");
        let classes = vec!["a".to_string(), "b".to_string()];
        fixtures::shard_set(&prep_dir, &classes, 16, &fixtures::images(2, 40, 16, 3), 24, group_rows).unwrap();
        prep_dir
    }

    fn plan(order: Vec<usize>) -> EpochPlan {
        EpochPlan {
            order,
            batch_size: 8,
            drop_last: false,
            augment: None,
            view: View::default(),
            out_size: 16,
            device: Device::Cpu,
            channels_last: false,
            part: Part::WHOLE,
        }
    }

    fn streamed(split: &SplitData, plan: &EpochPlan, buffer: usize) -> (Vec<Tensor>, StreamStats) {
        let Pixels::Stream(src) = &split.pixels else { panic!("not streamed") };
        let mut out = Vec::new();
        let stats = stream_batches(src, &split.labels, split.size, plan, buffer, |b| {
            out.push(b.unwrap().x);
            true
        });
        (out, stats)
    }

    #[test]
    fn a_streamed_split_serves_the_same_pixels_in_bounded_memory() {
        let d = tempfile::tempdir().unwrap();
        let prep = prepared(d.path(), 4);
        let mem = open_splits(&prep, &["train"], 2, DataMode::Memory, 0).unwrap();
        let st = open_splits(&prep, &["train"], 2, DataMode::Stream, 0).unwrap();
        let auto_small = open_splits(&prep, &["train"], 2, DataMode::Auto, 100).unwrap();
        let auto_big = open_splits(&prep, &["train"], 2, DataMode::Auto, 1 << 30).unwrap();
        assert!(!mem.is_streamed() && st.is_streamed() && auto_small.is_streamed() && !auto_big.is_streamed());
        assert_eq!((mem.label_idx.clone(), mem.paths.clone()), (st.label_idx.clone(), st.paths.clone()));
        let n = mem.len();
        assert!(n > 40, "{n}");
        let Pixels::Stream(src) = &st.pixels else { unreachable!() };
        assert!(src.groups.len() > 10 && src.max_group_rows() == 4);
        let Pixels::Memory(images) = &mem.pixels else { unreachable!() };
        for i in [0, n / 2, n - 1] {
            assert!(st.image(i).unwrap().equal(&images.get(i as i64)), "row {i}");
        }

        // The shuffle-buffer order: a seeded permutation that mixes across row groups.
        let buffer = 12;
        let order = stream_order(src, buffer, 5, 0, 0);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        assert_eq!(order, stream_order(src, buffer, 5, 0, 0));
        assert_ne!(order, stream_order(src, buffer, 5, 0, 1));
        assert_ne!(order[..8], (0..8).collect::<Vec<_>>()[..]);

        // Streaming it reads each row group once, holds at most buffer + one group, and gives
        // exactly the batches of the in-memory split.
        let p = plan(order);
        let (batches, stats) = streamed(&st, &p, buffer);
        assert_eq!(batches.len(), p.batches());
        for (b, x) in batches.iter().enumerate() {
            assert!(x.equal(&make_batch(images, &mem.labels, &p, b).unwrap().x), "batch {b}");
        }
        assert_eq!(stats.groups_read, src.groups.len());
        assert!(stats.peak_rows <= buffer + 4, "{stats:?}");

        // Any other order (here a full random permutation) is still served right, within the cap
        // (buffer + 2 groups, plus the group being read), re-reading groups it had to drop.
        let p = plan(epoch_order(&mem.label_idx, 2, 9, 0, 0, false));
        let (batches, stats) = streamed(&st, &p, buffer);
        for (b, x) in batches.iter().enumerate() {
            assert!(x.equal(&make_batch(images, &mem.labels, &p, b).unwrap().x), "batch {b}");
        }
        assert!(stats.peak_rows <= buffer + 3 * 4, "{stats:?}");
        assert!(stats.groups_read > src.groups.len(), "{stats:?}");
    }

    /// Data-parallel parts: rank r of 2 gets positions r, r+2, … of every batch, with the
    /// augmentation draws of those positions in the whole batch — from memory and streamed alike.
    #[test]
    fn two_parts_of_a_batch_are_the_whole_batch_interleaved() {
        let d = tempfile::tempdir().unwrap();
        let prep = prepared(d.path(), 4);
        let mem = open_splits(&prep, &["train"], 2, DataMode::Memory, 0).unwrap();
        let st = open_splits(&prep, &["train"], 2, DataMode::Stream, 0).unwrap();
        let Pixels::Memory(images) = &mem.pixels else { unreachable!() };
        let order = epoch_order(&mem.label_idx, 2, 9, 0, 0, false);
        let part = |rank, world| EpochPlan {
            augment: Some((crate::augment::AugmentParams::default(), 3, 0)),
            part: Part { rank, world },
            ..plan(order.clone())
        };
        let whole = part(0, 1);
        let (p0, p1) = (streamed(&st, &part(0, 2), 12).0, streamed(&st, &part(1, 2), 12).0);
        assert_eq!((p0.len(), p1.len()), (whole.batches(), whole.batches()));
        for b in 0..whole.batches() {
            let w = make_batch(images, &mem.labels, &whole, b).unwrap();
            for (rank, streamed) in [(0, &p0[b]), (1, &p1[b])] {
                let m = make_batch(images, &mem.labels, &part(rank, 2), b).unwrap();
                let rows: Vec<i64> = (rank as i64..w.x.size()[0]).step_by(2).collect();
                let expect = w.x.index_select(0, &Tensor::from_slice(&rows));
                assert!(m.x.equal(&expect), "batch {b}, rank {rank}, from memory");
                assert!(streamed.equal(&expect), "batch {b}, rank {rank}, streamed");
                assert!(m.y.equal(&w.y.index_select(0, &Tensor::from_slice(&rows))), "batch {b}, rank {rank}: labels");
            }
        }
    }

    #[test]
    fn epoch_orders_are_seeded_permutations() {
        let labels: Vec<i64> = (0..100).map(|i| (i % 2) as i64).collect();
        let a = epoch_order(&labels, 2, 1, 0, 0, false);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(&labels, 2, 1, 0, 0, false));
        assert_ne!(a, epoch_order(&labels, 2, 1, 0, 1, false));
    }

    #[test]
    fn oversampling_balances_classes() {
        let labels: Vec<i64> = (0..1000).map(|i| i64::from(i % 10 == 0)).collect(); // 10% class 1
        let o = epoch_order(&labels, 2, 3, 0, 0, true);
        let ones = o.iter().filter(|&&i| labels[i] == 1).count();
        assert!((420..580).contains(&ones), "{ones}");
    }
}

/// An (H, W, 3) uint8 tensor as an image (for pictures of batches and top losses).
pub fn to_rgb(image: &Tensor) -> image::RgbImage {
    let t = image.to_device(Device::Cpu).contiguous();
    let (h, w) = (t.size()[0] as u32, t.size()[1] as u32);
    let len = (h * w * 3) as usize;
    let mut buf = vec![0u8; len];
    t.copy_data_u8(&mut buf, len);
    image::RgbImage::from_raw(w, h, buf).unwrap_or_else(|| image::RgbImage::new(1, 1))
}
