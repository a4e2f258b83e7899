//! Scoring detections against annotated faces: COCO's AP (through
//! [`maskflow_annotations::metrics`]) for faces as one class and per labelled class, and at the
//! operating threshold a greedy match — detections highest score first, each taking the unmatched
//! face it overlaps most with IoU ≥ the match IoU (a face marked difficult may be taken but counts
//! neither way) — giving recall, precision, recall per face size, the label confusion on matched
//! faces and each photo's mistakes.

use maskflow_annotations::metrics::{self, Detection, Truth};
use maskflow_contracts::detection::{LabelConfusion, Operating, PhotoMistakes};
use std::collections::BTreeMap;

/// One photo's faces and detections, classes as indices into the class list (`None`: a label
/// outside it).
#[derive(Debug, Clone, Default)]
pub struct PhotoBoxes {
    pub image: String,
    /// `[x1, y1, x2, y2]`, class, difficult.
    pub faces: Vec<([f64; 4], usize, bool)>,
    /// `[x1, y1, x2, y2]`, score, class.
    pub detections: Vec<([f64; 4], f64, Option<usize>)>,
}

/// What happened to each face and detection of a photo at the operating threshold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhotoMatch {
    /// Per face: the detection that found it.
    pub face_found_by: Vec<Option<usize>>,
    /// Per detection (of those above the threshold; others `Skipped`).
    pub detections: Vec<Outcome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Below the operating threshold.
    Skipped,
    /// Matched a face; whether its label was right.
    Found { face: usize, right: bool },
    /// Matched a difficult face: neither right nor wrong.
    Difficult,
    FalsePositive,
}

pub fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// The greedy match of one photo at `threshold` (scores above it) and `min_iou`.
pub fn match_photo(p: &PhotoBoxes, threshold: f64, min_iou: f64) -> PhotoMatch {
    let mut order: Vec<usize> = (0..p.detections.len()).filter(|&i| p.detections[i].1 > threshold).collect();
    order.sort_by(|&a, &b| p.detections[b].1.total_cmp(&p.detections[a].1).then(a.cmp(&b)));
    let mut m = PhotoMatch { face_found_by: vec![None; p.faces.len()], detections: vec![Outcome::Skipped; p.detections.len()] };
    for d in order {
        let (dbox, _, dclass) = &p.detections[d];
        let mut best: Option<(usize, f64)> = None;
        for (f, (fbox, _, _)) in p.faces.iter().enumerate() {
            if m.face_found_by[f].is_some() {
                continue;
            }
            let v = iou(dbox, fbox);
            if v >= min_iou && best.is_none_or(|(_, b)| v > b) {
                best = Some((f, v));
            }
        }
        m.detections[d] = match best {
            Some((f, _)) => {
                m.face_found_by[f] = Some(d);
                let (_, class, difficult) = p.faces[f];
                if difficult { Outcome::Difficult } else { Outcome::Found { face: f, right: *dclass == Some(class) } }
            }
            None => Outcome::FalsePositive,
        };
    }
    m
}

/// Which COCO size range a box's area falls in (`small`, `medium`, `large`).
pub fn size_range(b: &[f64; 4]) -> &'static str {
    let a = (b[2] - b[0]) * (b[3] - b[1]);
    // COCO's ranges overlap at their edges; the first that holds wins, as in `metrics::AREAS`.
    metrics::AREAS[1..].iter().find(|(_, lo, hi)| a >= *lo && a <= *hi).map(|(n, _, _)| *n).unwrap_or("large")
}

/// The figures at the operating threshold.
pub struct AtThreshold {
    pub operating: Operating,
    pub labels: LabelConfusion,
    /// Every photo with at least one mistake, the most first (ties by name).
    pub mistakes: Vec<PhotoMistakes>,
    pub matches: Vec<PhotoMatch>,
}

pub fn at_threshold(photos: &[PhotoBoxes], classes: &[String], threshold: f32, min_iou: f64, min_side: f32) -> AtThreshold {
    let k = classes.len();
    let mut op = Operating {
        threshold,
        iou: min_iou,
        faces: 0,
        detections: 0,
        found: 0,
        recall: 0.0,
        precision: 0.0,
        min_side,
        faces_min_side: 0,
        found_min_side: 0,
        recall_min_side: 0.0,
        by_size: BTreeMap::new(),
    };
    let mut matrix = vec![vec![0usize; k]; k];
    let mut unlabelled = 0;
    let mut false_positives = 0;
    let mut mistakes = Vec::new();
    let mut matches = Vec::with_capacity(photos.len());
    for p in photos {
        let m = match_photo(p, threshold as f64, min_iou);
        let mut missed = 0;
        for (f, (b, class, difficult)) in p.faces.iter().enumerate() {
            if *difficult {
                continue;
            }
            let found = m.face_found_by[f].is_some();
            op.faces += 1;
            op.found += found as usize;
            let big = ((b[2] - b[0]).min(b[3] - b[1])) >= min_side as f64;
            op.faces_min_side += big as usize;
            op.found_min_side += (big && found) as usize;
            let e = op.by_size.entry(size_range(b).to_string()).or_insert((0, 0));
            e.0 += 1;
            e.1 += found as usize;
            match m.face_found_by[f] {
                Some(d) => match p.detections[d].2 {
                    Some(pred) => matrix[*class][pred] += 1,
                    None => unlabelled += 1,
                },
                None => missed += 1,
            }
        }
        let fp = m.detections.iter().filter(|o| **o == Outcome::FalsePositive).count();
        let wrong = m.detections.iter().filter(|o| matches!(o, Outcome::Found { right: false, .. })).count();
        op.detections += m.detections.iter().filter(|o| **o != Outcome::Skipped && **o != Outcome::Difficult).count();
        false_positives += fp;
        if missed + fp + wrong > 0 {
            mistakes.push(PhotoMistakes { image: p.image.clone(), missed, false_positives: fp, wrong_labels: wrong, file: None });
        }
        matches.push(m);
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    op.recall = ratio(op.found, op.faces);
    op.precision = ratio(op.detections - false_positives, op.detections);
    op.recall_min_side = ratio(op.found_min_side, op.faces_min_side);
    mistakes.sort_by(|a, b| {
        let total = |m: &PhotoMistakes| m.missed + m.false_positives + m.wrong_labels;
        total(b).cmp(&total(a)).then_with(|| a.image.cmp(&b.image))
    });
    AtThreshold { operating: op, labels: confusion(classes, matrix, unlabelled), mistakes, matches }
}

fn confusion(classes: &[String], matrix: Vec<Vec<usize>>, unlabelled: usize) -> LabelConfusion {
    let per_class: Vec<f64> = matrix
        .iter()
        .enumerate()
        .filter(|(_, row)| row.iter().sum::<usize>() > 0)
        .map(|(i, row)| row[i] as f64 / row.iter().sum::<usize>() as f64)
        .collect();
    let total: usize = matrix.iter().flatten().sum();
    let right: usize = (0..matrix.len()).map(|i| matrix[i][i]).sum();
    LabelConfusion {
        classes: classes.to_vec(),
        balanced_accuracy: (!per_class.is_empty()).then(|| per_class.iter().sum::<f64>() / per_class.len() as f64),
        accuracy: (total > 0).then(|| right as f64 / total as f64),
        matrix,
        unlabelled,
    }
}

/// The faces and detections as the COCO metrics take them: all of class 0 (`one_class`: how well
/// faces are found), or each of its class (detections with a label outside the classes left out).
pub fn coco_inputs(photos: &[PhotoBoxes], one_class: bool) -> (Vec<Truth>, Vec<Detection>) {
    let mut truth = Vec::new();
    let mut dets = Vec::new();
    for (i, p) in photos.iter().enumerate() {
        for (b, class, difficult) in &p.faces {
            truth.push(Truth { photo: i, class: if one_class { 0 } else { *class }, bbox: *b, crowd: *difficult });
        }
        for (b, score, class) in &p.detections {
            let class = if one_class { Some(0) } else { *class };
            if let Some(class) = class {
                dets.push(Detection { photo: i, class, bbox: *b, score: *score });
            }
        }
    }
    (truth, dets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo(faces: &[([f64; 4], usize, bool)], dets: &[([f64; 4], f64, Option<usize>)]) -> PhotoBoxes {
        PhotoBoxes { image: "p.jpg".into(), faces: faces.to_vec(), detections: dets.to_vec() }
    }

    #[test]
    fn the_best_scored_detection_takes_the_face_and_a_duplicate_is_a_false_positive() {
        let face = [10.0, 10.0, 60.0, 60.0];
        let p = photo(&[(face, 0, false)], &[([12.0, 12.0, 60.0, 60.0], 0.6, Some(0)), ([10.0, 10.0, 60.0, 60.0], 0.9, Some(1)), ([300.0, 0.0, 340.0, 40.0], 0.3, Some(0))]);
        let m = match_photo(&p, 0.5, 0.5);
        assert_eq!(m.face_found_by, vec![Some(1)]);
        assert_eq!(m.detections, vec![Outcome::FalsePositive, Outcome::Found { face: 0, right: false }, Outcome::Skipped]);
        let classes = vec!["with_mask".to_string(), "without_mask".to_string()];
        let r = at_threshold(&[p], &classes, 0.5, 0.5, 32.0);
        assert_eq!((r.operating.faces, r.operating.found, r.operating.detections), (1, 1, 2));
        assert_eq!((r.operating.recall, r.operating.precision), (1.0, 0.5));
        assert_eq!(r.labels.matrix, vec![vec![0, 1], vec![0, 0]]);
        assert_eq!(r.labels.balanced_accuracy, Some(0.0));
        assert_eq!(r.mistakes[0].false_positives + r.mistakes[0].wrong_labels, 2);
    }

    #[test]
    fn small_faces_count_apart_and_difficult_faces_count_neither_way() {
        let big = [0.0, 0.0, 100.0, 100.0];
        let small = [200.0, 200.0, 220.0, 224.0];
        let hard = [400.0, 0.0, 450.0, 50.0];
        let p = photo(&[(big, 1, false), (small, 0, false), (hard, 0, true)], &[(big, 0.8, Some(1)), (hard, 0.7, Some(0))]);
        let classes = vec!["a".to_string(), "b".to_string()];
        let r = at_threshold(&[p], &classes, 0.5, 0.5, 32.0);
        let o = &r.operating;
        assert_eq!((o.faces, o.found, o.detections), (2, 1, 1));
        assert_eq!((o.faces_min_side, o.found_min_side, o.recall_min_side), (1, 1, 1.0));
        assert_eq!(o.precision, 1.0);
        assert_eq!(o.by_size.get("small"), Some(&(1, 0)));
        assert_eq!(o.by_size.get("large"), Some(&(1, 1)));
        assert_eq!(r.labels.matrix, vec![vec![0, 0], vec![0, 1]]);
        assert_eq!((r.labels.balanced_accuracy, r.labels.accuracy), (Some(1.0), Some(1.0)));
        assert_eq!(r.mistakes.len(), 1);
        assert_eq!(r.mistakes[0].missed, 1);
    }

    #[test]
    fn a_photo_with_no_faces_and_no_detections_has_no_mistakes_and_ratios_stay_finite() {
        let r = at_threshold(&[photo(&[], &[])], &["a".to_string()], 0.5, 0.5, 32.0);
        assert_eq!((r.operating.recall, r.operating.precision, r.operating.recall_min_side), (0.0, 0.0, 0.0));
        assert!(r.mistakes.is_empty());
        assert_eq!(r.labels.balanced_accuracy, None);
    }

    #[test]
    fn coco_inputs_collapse_classes_for_faces_and_leave_out_unlabelled_detections_per_class() {
        let b = [0.0, 0.0, 10.0, 10.0];
        let p = photo(&[(b, 1, false)], &[(b, 0.9, None), (b, 0.8, Some(1))]);
        let (t, d) = coco_inputs(std::slice::from_ref(&p), true);
        assert_eq!((t[0].class, d.len()), (0, 2));
        let (t, d) = coco_inputs(&[p], false);
        assert_eq!((t[0].class, d.len(), d[0].class), (1, 1, 1));
    }
}
