//! maskflow-models: the networks and their pretrained weights.
//!
//! - [`arch`]: torchvision-compatible backbones (mobilenet_v2, resnet18/34/50) built as their *body*
//!   (last feature map, no pooling), with torchvision's parameter names.
//! - [`classifier`]: body + fastai head, freezing (BatchNorm keeps training), the three layer groups,
//!   loading named tensors with missing / unexpected / mismatched tensors listed by name.
//! - [`pickle`] and [`checkpoint`]: reading `torch.save` state dicts (legacy and zip format) without
//!   Python; the pickle is treated as data, never executed.
//! - [`mtcnn`]: the MTCNN face detector (P/R/O-Net, pyramid, NMS, landmarks) as facenet-pytorch runs it.
//! - [`ssd`]: AIZOOTech's mask-aware face detector (SSD-lite; anchors, decoding, NMS) as its
//!   repository runs it.
//! - [`detector`]: either face detector behind one type (`detect --detector`).
//! - [`normalize`]: the ImageNet input statistics.
//! - [`trained`]: a `trained_model` artifact → a runnable model (and a fixture of one for tests).
//! - [`weights`]: the registry of pretrained weights and the cached import into safetensors.

pub mod arch;
pub mod checkpoint;
pub mod classifier;
pub mod detector;
pub mod mtcnn;
pub mod normalize;
pub mod trained;
pub mod pickle;
pub mod ssd;
pub mod ssd_train;
pub mod weights;

pub use arch::{Arch, ArchNet};
pub use trained::{load_trained, torch_device};
pub use classifier::{Classifier, HeadConfig, Pool};
