//! The reader side: mapped safetensors checkpoints and PEFT adapters.

pub mod adapter;
pub mod mmap;
pub mod model;

pub use adapter::Adapter;
pub use model::{Checkpoint, TensorLoc};
