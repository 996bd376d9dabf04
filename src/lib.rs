//! loraweld saves fine-tuned models: it writes a LoRA adapter as is, or merges it into its base
//! (16-bit, or bitsandbytes NF4/FP4 4-bit) and writes sharded safetensors that load in
//! transformers, bit-exact with PEFT `merge_and_unload()`.
//!
//! It is a streaming, out-of-core pipeline around memory maps, in the order of its modules:
//! [`checkpoint`] (resolve and read) → [`plan`] → [`pipeline`] (read → [`compute`] → pack) →
//! [`writer`] (finish). Memory follows the budget, not the model.
//!
//! ```no_run
//! let mut opts = loraweld::SaveOptions::new("my-adapter", "merged");
//! opts.max_shard_size = 5_000_000_000;
//! let report = loraweld::save(&opts)?;
//! println!("{} tensors merged", report.counts.merged);
//! # Ok::<(), loraweld::Error>(())
//! ```
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod checkpoint;
pub mod compute;
pub mod error;
pub mod format;
pub mod hub;
pub mod inspect;
pub mod job;
pub mod options;
pub mod pipeline;
pub mod plan;
mod resolve;
mod save;
pub mod sys;
pub mod verify;
pub mod writer;

pub use error::{Error, ExitCode, Result};
pub use options::{DeviceChoice, FloatDtype, MemoryBudget, PaddingSide, SaveMethod, SaveOptions, ShardOrder};
pub use save::{save, SaveReport};
