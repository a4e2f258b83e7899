//! Scoring detections against annotated faces: COCO's AP (through
//! [`maskflow_annotations::metrics`]) for faces as one class and per labelled class, and at the
//! operating threshold a greedy match — detections highest score first, each taking the unmatched
//! face it overlaps most with IoU ≥ the match IoU (a face marked difficult may be taken but counts
//! neither way) — giving recall, precision, recall per face size, the label confusion on matched
//! faces and each photo's mistakes.
//!
//! The annotations' classes (the rows) need not all be the labeller's (the columns): a face of a
//! class the labeller cannot give (`mascarilla_mal_puesta` kept apart as `incorrect_mask`) counts
//! for finding faces, shows in the confusion matrix as its own row, and is neither right nor wrong —
//! in the class-aware AP it is ignored like a crowd in every class.

use maskflow_annotations::metrics::{self, Detection, Truth};
use maskflow_contracts::detection::{LabelConfusion, Operating, PhotoMistakes};
use std::collections::BTreeMap;

/// The annotations' classes and the labeller's.
#[derive(Debug, Clone, PartialEq)]
pub struct Classes {
    /// The annotations' classes after the map: the confusion's rows.
    pub truth: Vec<String>,
    /// The labeller's classes, in its output order: the columns, and the class-aware AP's classes.
    pub labels: Vec<String>,
}

impl Classes {
    /// The labeller's class of the same name as truth class `t`, if it has one.
    pub fn label_of(&self, t: usize) -> Option<usize> {
        self.labels.iter().position(|l| Some(l) == self.truth.get(t))
    }
}

/// One photo's faces (truth classes) and detections (labeller classes), as indices.
#[derive(Debug, Clone, Default)]
pub struct PhotoBoxes {
    pub image: String,
    /// `[x1, y1, x2, y2]`, class, difficult.
    pub faces: Vec<([f64; 4], usize, bool)>,
    /// `[x1, y1, x2, y2]`, score, label.
    pub detections: Vec<([f64; 4], f64, usize)>,
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
    /// Matched a face; whether its label was right (`None`: a face the labeller has no class for).
    Found { face: usize, right: Option<bool> },
    /// Matched a difficult face: neither right nor wrong.
    Difficult,
    FalsePositive,
}

/// The greedy match of one photo at `threshold` (scores above it) and `min_iou`.
pub fn match_photo(p: &PhotoBoxes, classes: &Classes, threshold: f64, min_iou: f64) -> PhotoMatch {
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
            let v = metrics::iou(dbox, fbox, false);
            if v >= min_iou && best.is_none_or(|(_, b)| v > b) {
                best = Some((f, v));
            }
        }
        m.detections[d] = match best {
            Some((f, _)) => {
                m.face_found_by[f] = Some(d);
                let (_, class, difficult) = p.faces[f];
                let right = classes.label_of(class).map(|l| l == *dclass);
                if difficult { Outcome::Difficult } else { Outcome::Found { face: f, right } }
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
}

pub fn at_threshold(photos: &[PhotoBoxes], classes: &Classes, threshold: f32, min_iou: f64, min_side: f32) -> AtThreshold {
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
    let mut matrix = vec![vec![0usize; classes.labels.len()]; classes.truth.len()];
    let mut false_positives = 0;
    let mut mistakes = Vec::new();
    for p in photos {
        let m = match_photo(p, classes, threshold as f64, min_iou);
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
                Some(d) => matrix[*class][p.detections[d].2] += 1,
                None => missed += 1,
            }
        }
        let fp = m.detections.iter().filter(|o| **o == Outcome::FalsePositive).count();
        let wrong = m.detections.iter().filter(|o| matches!(o, Outcome::Found { right: Some(false), .. })).count();
        op.detections += m.detections.iter().filter(|o| **o != Outcome::Skipped && **o != Outcome::Difficult).count();
        false_positives += fp;
        if missed + fp + wrong > 0 {
            mistakes.push(PhotoMistakes { image: p.image.clone(), missed, false_positives: fp, wrong_labels: wrong, file: None });
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    op.recall = ratio(op.found, op.faces);
    op.precision = ratio(op.detections - false_positives, op.detections);
    op.recall_min_side = ratio(op.found_min_side, op.faces_min_side);
    mistakes.sort_by(|a, b| {
        let total = |m: &PhotoMistakes| m.missed + m.false_positives + m.wrong_labels;
        total(b).cmp(&total(a)).then_with(|| a.image.cmp(&b.image))
    });
    AtThreshold { operating: op, labels: confusion(classes, matrix), mistakes }
}

/// The matrix and its accuracies, over the rows the labeller has a class for.
fn confusion(classes: &Classes, matrix: Vec<Vec<usize>>) -> LabelConfusion {
    let scored: Vec<(usize, usize)> = (0..classes.truth.len()).filter_map(|t| classes.label_of(t).map(|l| (t, l))).collect();
    let per_class: Vec<f64> = scored
        .iter()
        .filter(|(t, _)| matrix[*t].iter().sum::<usize>() > 0)
        .map(|&(t, l)| matrix[t][l] as f64 / matrix[t].iter().sum::<usize>() as f64)
        .collect();
    let total: usize = scored.iter().map(|(t, _)| matrix[*t].iter().sum::<usize>()).sum();
    let right: usize = scored.iter().map(|&(t, l)| matrix[t][l]).sum();
    let not_scored = (0..classes.truth.len()).filter(|t| classes.label_of(*t).is_none()).map(|t| classes.truth[t].clone()).collect();
    LabelConfusion {
        classes: classes.truth.clone(),
        predicted: classes.labels.clone(),
        balanced_accuracy: (!per_class.is_empty()).then(|| per_class.iter().sum::<f64>() / per_class.len() as f64),
        accuracy: (total > 0).then(|| right as f64 / total as f64),
        matrix,
        not_scored,
    }
}

/// The faces and detections as the COCO metrics take them: all of class 0 (`one_class`: how well
/// faces are found), or by the labeller's classes — a face of a class it does not have becomes a
/// crowd (ignored) face in each of them.
pub fn coco_inputs(photos: &[PhotoBoxes], classes: &Classes, one_class: bool) -> (Vec<Truth>, Vec<Detection>) {
    let mut truth = Vec::new();
    let mut dets = Vec::new();
    for (i, p) in photos.iter().enumerate() {
        for (b, class, difficult) in &p.faces {
            match (one_class, classes.label_of(*class)) {
                (true, _) => truth.push(Truth { photo: i, class: 0, bbox: *b, crowd: *difficult }),
                (false, Some(l)) => truth.push(Truth { photo: i, class: l, bbox: *b, crowd: *difficult }),
                (false, None) => truth.extend((0..classes.labels.len()).map(|l| Truth { photo: i, class: l, bbox: *b, crowd: true })),
            }
        }
        for (b, score, label) in &p.detections {
            dets.push(Detection { photo: i, class: if one_class { 0 } else { *label }, bbox: *b, score: *score });
        }
    }
    (truth, dets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo(faces: &[([f64; 4], usize, bool)], dets: &[([f64; 4], f64, usize)]) -> PhotoBoxes {
        PhotoBoxes { image: "p.jpg".into(), faces: faces.to_vec(), detections: dets.to_vec() }
    }

    fn two(a: &str, b: &str) -> Classes {
        Classes { truth: vec![a.into(), b.into()], labels: vec![a.into(), b.into()] }
    }

    #[test]
    fn the_best_scored_detection_takes_the_face_and_a_duplicate_is_a_false_positive() {
        let face = [10.0, 10.0, 60.0, 60.0];
        let p = photo(&[(face, 0, false)], &[([12.0, 12.0, 60.0, 60.0], 0.6, 0), ([10.0, 10.0, 60.0, 60.0], 0.9, 1), ([300.0, 0.0, 340.0, 40.0], 0.3, 0)]);
        let classes = two("with_mask", "without_mask");
        let m = match_photo(&p, &classes, 0.5, 0.5);
        assert_eq!(m.face_found_by, vec![Some(1)]);
        assert_eq!(m.detections, vec![Outcome::FalsePositive, Outcome::Found { face: 0, right: Some(false) }, Outcome::Skipped]);
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
        let p = photo(&[(big, 1, false), (small, 0, false), (hard, 0, true)], &[(big, 0.8, 1), (hard, 0.7, 0)]);
        let classes = two("a", "b");
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
        let r = at_threshold(&[photo(&[], &[])], &two("a", "b"), 0.5, 0.5, 32.0);
        assert_eq!((r.operating.recall, r.operating.precision, r.operating.recall_min_side), (0.0, 0.0, 0.0));
        assert!(r.mistakes.is_empty());
        assert_eq!(r.labels.balanced_accuracy, None);
    }

    #[test]
    fn a_face_of_a_class_the_labeller_lacks_is_found_but_neither_right_nor_wrong() {
        let (a, b) = ([0.0, 0.0, 50.0, 50.0], [100.0, 0.0, 150.0, 50.0]);
        // Truth classes: with_mask, incorrect, without_mask; the labeller has with_mask, without_mask.
        let classes = Classes {
            truth: vec!["incorrect".into(), "with_mask".into(), "without_mask".into()],
            labels: vec!["with_mask".into(), "without_mask".into()],
        };
        let p = photo(&[(a, 0, false), (b, 2, false)], &[(a, 0.9, 1), (b, 0.8, 1)]);
        let r = at_threshold(std::slice::from_ref(&p), &classes, 0.5, 0.5, 32.0);
        assert_eq!(r.labels.matrix, vec![vec![0, 1], vec![0, 0], vec![0, 1]]);
        assert_eq!(r.labels.not_scored, vec!["incorrect".to_string()]);
        assert_eq!((r.labels.balanced_accuracy, r.labels.accuracy), (Some(1.0), Some(1.0)));
        assert!(r.mistakes.is_empty(), "{:?}", r.mistakes);
        // For faces, one class; per class, the unscored face a crowd in each class.
        let (t, d) = coco_inputs(std::slice::from_ref(&p), &classes, true);
        assert_eq!((t.len(), d.len(), t.iter().all(|t| t.class == 0 && !t.crowd)), (2, 2, true));
        let (t, d) = coco_inputs(&[p], &classes, false);
        let crowds: Vec<usize> = t.iter().filter(|t| t.crowd).map(|t| t.class).collect();
        assert_eq!(crowds, vec![0, 1]);
        assert_eq!(t.iter().find(|t| !t.crowd).map(|t| t.class), Some(1));
        assert_eq!(d.iter().map(|d| d.class).collect::<Vec<_>>(), vec![1, 1]);
    }
}
