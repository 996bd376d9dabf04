//! The plan: every output tensor, its operation, its shard and byte offset, computed from
//! headers and JSON only, before any heavy work. Refuses early and lists every adapter tensor
//! that does not fit the base.
//!
//! `types` holds the data model; `quantized` finds the base's 4-bit weights; `matching` matches
//! the adapter to the base; `op` chooses each tensor's op; `merge` tells a merged save's story
//! and `adapter` a `lora` save's; `layout` cuts the tensors into the format's files; `describe`
//! writes the dry run's text.

mod adapter;
mod describe;
mod gguf;
mod gguf_lora;
mod layout;
mod matching;
mod merge;
mod op;
mod quantized;
mod types;

pub use adapter::plan_adapter;
pub use describe::describe;
pub(crate) use gguf::plan_gguf;
pub(crate) use gguf_lora::plan_lora_gguf;
pub use merge::plan_merged;
pub use quantized::{find_quantized, is_quant_helper};
pub use types::*;
