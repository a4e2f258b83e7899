//! maskflow-data: what the train and eval stages share about data. A shard set (the prep stage's
//! artifact, read through `maskflow-contracts`) becomes tensors here.
//!
//! - [`data`]: splits held in memory or streamed row group by row group through a shuffle buffer,
//!   epoch orders, and a background batch producer.
//! - [`augment`]: fastai's batch augmentation as one homography + `grid_sample` per sample.
//! - [`corrupt`]: ImageNet-C-style corruptions (small faces, blur, JPEG, noise, dim, low contrast)
//!   for robustness scoring and as training damage.
//! - [`infer`]: the inference loop over a split (fp32, or a bf16 copy of the weights).

pub mod augment;
pub mod corrupt;
pub mod data;
pub mod infer;

pub use data::{open_splits, DataMode, SplitData};
