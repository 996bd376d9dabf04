//! loraweld saves fine-tuned models: it writes a LoRA adapter as is, or merges it into its base
//! (16-bit, or bitsandbytes NF4/FP4 4-bit) and writes sharded safetensors that load in
//! transformers, bit-exact with PEFT `merge_and_unload()`.
//!
//! It is a streaming, out-of-core pipeline around memory maps: resolve and read → plan →
//! read → compute → pack → finish → push (ARCHITECTURE.md draws it). Memory follows the
//! budget, not the model. The API is [`save()`], [`push()`], [`verify()`] and [`inspect()`], their
//! options and reports, and [`Error`].
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
// Without `internals`, items that only the crate's tests, benches and fuzz targets reach are
// unused from the library's own point of view.
#![cfg_attr(not(feature = "internals"), allow(dead_code))]

/// The README's code, compiled as doc tests (its library example must keep compiling).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

// The public API: the four commands, their options and reports, the error.
pub mod error;
pub mod inspect;
pub mod options;
pub mod progress;
pub mod verify;

pub use compute::GpuTimes;
pub use error::{Error, ExitCode, Result};
pub use hub::{push, HubConfig, PushOptions, PushReport, Token};
pub use inspect::{inspect, InspectReport};
pub use options::{
    DeviceChoice, FileType, FloatDtype, GgufTarget, MemoryBudget, PaddingSide, SaveMethod, SaveOptions, ShardOrder,
};
pub use pipeline::StageTimes;
pub use plan::PlanCounts;
pub use progress::{Progress, ProgressHook};
pub use save::{save, SaveReport};
pub use sys::install_sigint_handler;
pub use verify::{verify, VerifyReport};
pub use writer::shard::ShardResult;

/// Declares modules that are crate-private, and public with the `internals` feature (which only
/// the crate's own tests, benches, examples and fuzz targets turn on).
macro_rules! internal {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[cfg(feature = "internals")]
        pub mod $name;
        $(#[$doc])*
        #[cfg(not(feature = "internals"))]
        mod $name;
    )*};
}

internal! {
    /// Reading: mapped safetensors checkpoints and PEFT adapters.
    checkpoint;
    /// The merge arithmetic: the `Backend` trait, the CPU (rayon + SIMD) and CUDA backends.
    compute;
    /// The formats, both ways: dtypes, safetensors headers, bitsandbytes 4-bit, Python JSON.
    format;
    /// What llama.cpp's converter makes of a model: architecture, metadata, tokenizer.
    gguf;
    /// The Hugging Face Hub: downloads into the HF cache, pushes with LFS.
    hub;
    /// The job, decided once from the options.
    job;
    /// The bounded stages: read → compute → pack.
    pipeline;
    /// Every output tensor, its op, shard and offset, before any heavy work.
    plan;
    /// Where the inputs are: local directories or Hub repos.
    resolve;
    /// The save's story.
    save;
    /// Small OS calls.
    sys;
    /// The output side: shards, metadata files, the manifest, staging, what is at OUT.
    writer;
}
