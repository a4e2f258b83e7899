//! The SSD's training targets and loss against a PyTorch reference after ssd.pytorch's `match`,
//! `encode` and `MultiBoxLoss` (`tests/py/reference_ssd_loss.py`, project venv): the same matched
//! anchors, offsets within 1e-4, both losses within 1e-4 relative.

mod common;
use common::*;
use maskflow_models::ssd_train::{loss, match_anchors, stack, Target};
use tch::{Device, Tensor};

#[test]
fn targets_and_loss_match_the_pytorch_reference() {
    let dir = run_reference("reference_ssd_loss.py", &[]);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("ssd_loss.json")).unwrap()).unwrap();
    let anchors: Vec<[f64; 4]> = serde_json::from_value(r["anchors"].clone()).unwrap();
    let iou = r["iou"].as_f64().unwrap();
    let matched: Vec<_> = r["photos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let faces: Vec<Target> = p["faces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| Target { bbox: serde_json::from_value(f["bbox"].clone()).unwrap(), class: f["class"].as_u64().unwrap() as usize })
                .collect();
            match_anchors(&anchors, &faces, iou)
        })
        .collect();
    let want_pos: Vec<Vec<bool>> = serde_json::from_value(r["positive"].clone()).unwrap();
    let got_pos: Vec<Vec<bool>> = matched.iter().map(|m| m.positive.clone()).collect();
    assert_eq!(got_pos, want_pos);
    assert!(want_pos[1].iter().all(|p| !p), "the photo without faces has no match");
    let floats = |k: &str| -> Vec<f32> { serde_json::from_value(r[k].clone()).unwrap() };
    let got_loc: Vec<f32> = matched.iter().flat_map(|m| m.loc.clone()).collect();
    let got_cls: Vec<f32> = matched.iter().flat_map(|m| m.cls.clone()).collect();
    let worst = got_loc.iter().zip(floats("loc_t")).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-4, "offsets differ by {worst}");
    assert_eq!(got_cls, floats("cls_t"));

    let (loc_t, cls_t, pos) = stack(&matched, Device::Cpu);
    let (n, a) = (matched.len() as i64, anchors.len() as i64);
    let loc = Tensor::from_slice(&floats("loc")).reshape([n, a, 4]);
    let logits = Tensor::from_slice(&floats("logits")).reshape([n, a, 2]);
    let (box_loss, cls_loss) = loss(&loc, &logits, &loc_t, &cls_t, &pos, r["neg_pos"].as_f64().unwrap());
    for (got, key) in [(box_loss.double_value(&[]), "box_loss"), (cls_loss.double_value(&[]), "cls_loss")] {
        let want = r[key].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{key}: {got} vs PyTorch {want}");
    }
}
