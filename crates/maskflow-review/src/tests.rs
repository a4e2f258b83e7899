//! The out-of-fold evidence on features made to order.

use crate::probe::{folds, out_of_fold};
use crate::ReviewParams;
use tch::{Device, Kind, Tensor};

#[test]
fn copies_share_a_fold_and_every_fold_is_used() {
    let groups: Vec<String> = (0..200).map(|i| format!("{:064x}", i / 2)).collect();
    let f = folds(&groups, 5, 42);
    for pair in f.chunks(2) {
        assert_eq!(pair[0], pair[1], "two copies in different folds");
    }
    for k in 0..5 {
        assert!(f.iter().filter(|&&x| x == k).count() > 20, "fold {k} nearly empty: {f:?}");
    }
    assert_ne!(f, folds(&groups, 5, 43), "the seed moves the folds");
}

#[test]
fn a_mislabelled_photo_and_its_copies_are_unlikely_out_of_fold() {
    // Two well separated classes in 16 dimensions; one photo of class 0, present three times (one
    // group), labelled 1. Were the copies spread over folds, the probes would learn the wrong label
    // from two of them; in one fold, none of them helps to judge the others.
    tch::manual_seed(7);
    let n = 120;
    let labels: Vec<i64> = (0..n).map(|i| (i % 2) as i64).collect();
    let centres = Tensor::from_slice(&labels).to_kind(Kind::Float).unsqueeze(1) * 4.0 - 2.0;
    let mut x = Tensor::randn([n as i64, 16], (Kind::Float, Device::Cpu)) + centres;
    let photo = Tensor::randn([16], (Kind::Float, Device::Cpu)) - 2.0;
    let mut labels = labels;
    let mut groups: Vec<String> = (0..n).map(|i| format!("{i:064x}")).collect();
    for _ in 0..3 {
        x = Tensor::cat(&[x, photo.unsqueeze(0)], 0);
        labels.push(1);
        groups.push("f".repeat(64));
    }
    let p = ReviewParams { folds: 4, steps: 200, ..Default::default() };
    let probs = out_of_fold(&x, &labels, &groups, 2, &p).unwrap();
    for i in n..n + 3 {
        assert!(probs[i][1] < 0.05, "copy {i}: p(given) = {}", probs[i][1]);
    }
    let right = (0..n).filter(|&i| probs[i][labels[i] as usize] > 0.5).count();
    assert!(right >= n - 2, "the clean images are judged right out of fold: {right} of {n}");
}

#[test]
fn the_key_covers_every_review_param() {
    maskflow_pipeline::testing::assert_key_covers_every_param::<crate::ReviewStage>();
}
