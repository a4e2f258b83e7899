//! Training the face-mask SSD: SSD's anchor matching, box encoding and the loss with hard-negative
//! mining (as in ssd.pytorch's `match` and `MultiBoxLoss`, with the SSD's two sigmoid classes in
//! place of a softmax with a background class).
//!
//! - Matching: every face takes the anchor it overlaps most (so no face goes unlearnt), then every
//!   other anchor the face it overlaps most, if the IoU is at least `iou` (0.5). A matched anchor
//!   learns its face's offsets ([`encode`], the inverse of [`crate::ssd::decode`]) and its class.
//! - Loss, per batch, divided by the number of matched anchors P: smooth L1 on the offsets of the
//!   matched anchors; binary cross-entropy of both class logits (target: the face's class 1, the other
//!   0) on the matched anchors and, per photo, on the `neg_pos` × its matches unmatched anchors with
//!   the highest loss (targets 0, 0) — hard negatives, ranked by a stable sort, highest first.

use crate::ssd::VARIANCES;
use tch::{Kind, Tensor};

/// A face to learn: `[x1, y1, x2, y2]` in fractions of the input, and its class (0: with a mask,
/// 1: without — the SSD's order).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub bbox: [f64; 4],
    pub class: usize,
}

/// A box → the raw offsets that [`crate::ssd::decode`] turns back into it.
pub fn encode(anchor: &[f64; 4], b: &[f64; 4]) -> [f32; 4] {
    let (aw, ah) = (anchor[2] - anchor[0], anchor[3] - anchor[1]);
    let (ax, ay) = ((anchor[0] + anchor[2]) / 2.0, (anchor[1] + anchor[3]) / 2.0);
    let (w, h) = ((b[2] - b[0]).max(1e-6), (b[3] - b[1]).max(1e-6));
    let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
    [
        ((cx - ax) / aw / VARIANCES[0]) as f32,
        ((cy - ay) / ah / VARIANCES[1]) as f32,
        ((w / aw).ln() / VARIANCES[2]) as f32,
        ((h / ah).ln() / VARIANCES[3]) as f32,
    ]
}

fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// One photo's training targets over all anchors.
#[derive(Debug, Clone, PartialEq)]
pub struct Matched {
    /// `A × 4` encoded offsets (0 where unmatched).
    pub loc: Vec<f32>,
    /// `A × 2` class targets.
    pub cls: Vec<f32>,
    /// Per anchor: matched to a face.
    pub positive: Vec<bool>,
}

/// SSD's matching of `anchors` to `faces` (see the module doc). Ties go to the lower index.
pub fn match_anchors(anchors: &[[f64; 4]], faces: &[Target], min_iou: f64) -> Matched {
    let a = anchors.len();
    let mut best_face: Vec<Option<(usize, f64)>> = vec![None; a];
    let mut best_anchor: Vec<(usize, f64)> = vec![(0, -1.0); faces.len()];
    for (i, an) in anchors.iter().enumerate() {
        for (f, face) in faces.iter().enumerate() {
            let v = iou(an, &face.bbox);
            if best_face[i].is_none_or(|(_, b)| v > b) {
                best_face[i] = Some((f, v));
            }
            if v > best_anchor[f].1 {
                best_anchor[f] = (i, v);
            }
        }
    }
    let mut assigned: Vec<Option<usize>> = best_face.iter().map(|b| b.filter(|(_, v)| *v >= min_iou).map(|(f, _)| f)).collect();
    // Each face's best anchor is its own, whatever the IoU (later faces win a shared anchor).
    for (f, (i, _)) in best_anchor.iter().enumerate() {
        if !faces.is_empty() {
            assigned[*i] = Some(f);
        }
    }
    let mut m = Matched { loc: vec![0.0; a * 4], cls: vec![0.0; a * 2], positive: vec![false; a] };
    for (i, f) in assigned.iter().enumerate() {
        if let Some(f) = f {
            let face = &faces[*f];
            m.loc[i * 4..i * 4 + 4].copy_from_slice(&encode(&anchors[i], &face.bbox));
            m.cls[i * 2 + face.class.min(1)] = 1.0;
            m.positive[i] = true;
        }
    }
    m
}

/// A batch's targets as tensors: offsets `(N, A, 4)`, classes `(N, A, 2)`, positives `(N, A)`.
pub fn stack(batch: &[Matched], device: tch::Device) -> (Tensor, Tensor, Tensor) {
    let n = batch.len() as i64;
    let a = batch.first().map(|m| m.positive.len()).unwrap_or(0) as i64;
    let loc: Vec<f32> = batch.iter().flat_map(|m| m.loc.iter().copied()).collect();
    let cls: Vec<f32> = batch.iter().flat_map(|m| m.cls.iter().copied()).collect();
    let pos: Vec<bool> = batch.iter().flat_map(|m| m.positive.iter().copied()).collect();
    (
        Tensor::from_slice(&loc).reshape([n, a, 4]).to_device(device),
        Tensor::from_slice(&cls).reshape([n, a, 2]).to_device(device),
        Tensor::from_slice(&pos).reshape([n, a]).to_device(device),
    )
}

/// The box and class losses (scalars, each divided by the number of matched anchors, at least 1).
pub fn loss(loc: &Tensor, logits: &Tensor, loc_t: &Tensor, cls_t: &Tensor, pos: &Tensor, neg_pos: f64) -> (Tensor, Tensor) {
    let anchors = pos.size()[1];
    let n_pos = pos.sum(Kind::Float).clamp_min(1.0);
    let pos_f = pos.to_kind(Kind::Float);
    let box_loss = loc.smooth_l1_loss(loc_t, tch::Reduction::None, 1.0).sum_dim_intlist(-1, false, Kind::Float);
    let box_loss = (box_loss * &pos_f).sum(Kind::Float) / &n_pos;
    let bce = logits
        .binary_cross_entropy_with_logits::<Tensor>(cls_t, None, None, tch::Reduction::None)
        .sum_dim_intlist(-1, false, Kind::Float);
    // Hard negatives: per photo, the unmatched anchors with the highest loss, neg_pos per match.
    let ranked = bce.detach().masked_fill(pos, -1.0);
    let (_, order) = ranked.sort_stable(true, 1, true);
    let (_, rank) = order.sort_stable(true, 1, false);
    let per_photo = pos.sum_dim_intlist(1, true, Kind::Int64);
    let k = (per_photo.to_kind(Kind::Double) * neg_pos).floor().to_kind(Kind::Int64).minimum(&(Tensor::from(anchors) - &per_photo));
    let neg = rank.lt_tensor(&k).logical_and(&pos.logical_not());
    let chosen = pos.logical_or(&neg).to_kind(Kind::Float);
    let cls_loss = (bce * chosen).sum(Kind::Float) / &n_pos;
    (box_loss, cls_loss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssd::decode;

    #[test]
    fn encode_inverts_decode() {
        let anchor = [0.2, 0.3, 0.32, 0.45];
        let b = [0.18, 0.33, 0.35, 0.5];
        let back = decode(&anchor, encode(&anchor, &b));
        for (x, y) in back.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{back:?} vs {b:?}");
        }
    }

    #[test]
    fn every_face_gets_its_best_anchor_even_below_the_iou() {
        let anchors = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.2, 0.2]];
        let faces = [Target { bbox: [0.6, 0.6, 0.7, 0.7], class: 1 }];
        let m = match_anchors(&anchors, &faces, 0.5);
        assert_eq!(m.positive, vec![false, true, false]);
        assert_eq!(&m.cls[2..4], &[0.0, 1.0]);
        let none = match_anchors(&anchors, &[], 0.5);
        assert!(none.positive.iter().all(|p| !p) && none.cls.iter().all(|c| *c == 0.0));
    }
}
