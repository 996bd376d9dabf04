//! The reader side: mapped safetensors checkpoints, PEFT adapters, and resolving where they are.

pub mod adapter;
pub mod mmap;
pub mod model;
pub mod resolve;
pub mod safetensors;

pub use adapter::{Adapter, AdapterConfig};
pub use model::{Checkpoint, Shard, TensorLoc};
