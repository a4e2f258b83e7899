//! Prep shards → in-memory uint8 tensors, epoch orders, and a background batch producer.

use crate::augment::{self, AugmentParams, Draw};
use anyhow::{bail, Context, Result};
use maskflow_core::rng::SplitMix64;
use std::path::Path;
use std::sync::mpsc;
use tch::{Device, Kind, Tensor};

/// One split held in memory: pixels (N, H, W, 3) uint8 and labels (N) int64.
pub struct SplitData {
    pub images: Tensor,
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
}

/// Reads every shard of `split` listed in the prep artifact's `shards.json`, in order.
pub fn load_split(prep_dir: &Path, split: &str, classes: usize) -> Result<SplitData> {
    load_splits(prep_dir, &[split], classes)
}

/// Reads the shards of several splits into one set (e.g. a whole labelled folder for evaluation).
pub fn load_splits(prep_dir: &Path, splits: &[&str], classes: usize) -> Result<SplitData> {
    let listing = prep_dir.join(maskflow_prep::SHARDS_FILE);
    let text = std::fs::read(&listing).with_context(|| format!("reading {}", listing.display()))?;
    let infos: Vec<maskflow_prep::shard::ShardInfo> =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", listing.display()))?;
    // One uint8 tensor for all rows, filled row by row: memory is the pixels once plus one shard's rows.
    let total: usize = infos.iter().filter(|i| splits.contains(&i.split.as_str())).map(|i| i.rows).sum();
    let mut images: Option<Tensor> = None;
    let (mut label_idx, mut hashes, mut paths) = (Vec::new(), Vec::new(), Vec::new());
    let mut size: Option<(u32, u32, u32)> = None;
    let wanted = |s: &str| splits.contains(&s);
    for info in infos.iter().filter(|i| wanted(&i.split)) {
        let file = prep_dir.join(&info.file);
        let rows = maskflow_prep::shard::read_shard(&file)?;
        for r in rows {
            let dims = (r.height, r.width, r.channels);
            match size {
                None => size = Some(dims),
                Some(d) if d != dims => bail!("{}: row {} is {dims:?}, earlier rows {d:?}", file.display(), r.path),
                _ => {}
            }
            if dims.0 != dims.1 || dims.2 != 3 || r.pixels.len() != (dims.0 * dims.1 * 3) as usize {
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
            let side = dims.0 as i64;
            let all = images
                .get_or_insert_with(|| Tensor::zeros([total as i64, side, side, 3], (Kind::Uint8, tch::Device::Cpu)));
            all.get(label_idx.len() as i64).copy_(&Tensor::from_data_size(&r.pixels, &[side, side, 3], Kind::Uint8));
            label_idx.push(r.label_idx as i64);
            hashes.push(r.content_hash);
            paths.push(r.path);
        }
    }
    if label_idx.len() != total {
        bail!(
            "{}: shards.json lists {total} rows of {splits:?}, the shards hold {}",
            listing.display(),
            label_idx.len()
        );
    }
    let (h, _, _) = size.unwrap_or((0, 0, 3));
    let images = images.unwrap_or_else(|| Tensor::zeros([0, 0, 0, 3], (Kind::Uint8, tch::Device::Cpu)));
    let labels = Tensor::from_slice(&label_idx);
    Ok(SplitData { images, labels, label_idx, hashes, paths, size: h as i64 })
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
    /// `Some((params, seed, epoch id))` for training augmentation, `None` for the centre view.
    pub augment: Option<(AugmentParams, u64, u64)>,
    pub out_size: i64,
    pub device: Device,
    pub channels_last: bool,
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

/// Makes batch `b` of `plan` from `images` / `labels`.
pub fn make_batch(images: &Tensor, labels: &Tensor, plan: &EpochPlan, b: usize) -> Batch {
    let lo = b * plan.batch_size;
    let hi = (lo + plan.batch_size).min(plan.order.len());
    let idx: Vec<i64> = plan.order[lo..hi].iter().map(|&i| i as i64).collect();
    let idx_t = Tensor::from_slice(&idx);
    let raw = images.index_select(0, &idx_t);
    let src = raw.size()[1];
    let draws: Vec<Draw> = match &plan.augment {
        Some((a, seed, epoch)) => {
            (0..idx.len() as u64).map(|i| a.draw(*seed, *epoch, b as u64, i, src, plan.out_size)).collect()
        }
        None => vec![augment::centre_draw(src, plan.out_size); idx.len()],
    };
    let x = augment::apply(&raw, &draws, plan.out_size, plan.device, plan.channels_last);
    let y = labels.index_select(0, &idx_t).to_device(plan.device);
    Batch { index: b, x, y }
}

/// Produces `plan`'s batches on a background thread, two ahead of the consumer, so that compute
/// does not wait for decoding-free but not free augmentation. The iterator ends early if dropped.
pub fn spawn_producer(images: &Tensor, labels: &Tensor, plan: EpochPlan) -> mpsc::Receiver<Batch> {
    let (tx, rx) = mpsc::sync_channel(2);
    let (images, labels) = (images.shallow_clone(), labels.shallow_clone());
    std::thread::spawn(move || {
        let _guard = tch::no_grad_guard();
        for b in 0..plan.batches() {
            let batch = make_batch(&images, &labels, &plan, b);
            if tx.send(batch).is_err() {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

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
