//! maskflow-fit: what the training stages (`train` for the classifier, `dettrain` for the face
//! detector) share, below both: fastai's one-cycle schedule and discriminative learning rates
//! ([`schedule`]), Adam with decoupled weight decay whose moments can be checkpointed and restored
//! exactly ([`optim`]), the two phases of a transfer-learning run ([`phase`]), and what epoch
//! checkpoints share ([`checkpoint`]).

pub mod checkpoint;
pub mod optim;
pub mod phase;
pub mod schedule;
