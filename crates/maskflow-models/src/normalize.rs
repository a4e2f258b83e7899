//! The input normalisation the pretrained bodies expect (fastai `imagenet_stats`), in one place:
//! the augmentation, the fixed-body features, eval and the exported module all use these.

/// ImageNet channel means (RGB, on 0..1 pixels).
pub const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const STD: [f64; 3] = [0.229, 0.224, 0.225];
