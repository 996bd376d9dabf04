//! The Hugging Face Hub, at both ends of the pipeline: [`download`] fetches an adapter or a base
//! by repo id into the standard HF cache before anything is planned; [`push`] sends a saved
//! directory after the atomic rename (its shards, when saving, as soon as the packer closes them).
//!
//! Everything the Hub needs from the environment is read once, by [`HubConfig::from_env`], and
//! then travels by `&`: the endpoint (`HF_ENDPOINT`), the cache (`HF_HUB_CACHE`, `HF_HOME`), the
//! token (`--token`, `HF_TOKEN`, `HF_TOKEN_PATH`, `$HF_HOME/token`, in that order) and
//! `HF_HUB_OFFLINE`. The token is never printed: [`Token`]'s `Debug` hides it and no error holds it.
//!
//! Uploads speak the protocol `huggingface_hub` speaks without Xet: preupload, the Git LFS batch
//! API (basic PUT, or multipart with ETag completion, then verify), and one NDJSON commit. Protocol
//! notes: `docs/hub-protocol.md` §2.

pub mod card;
mod config;
pub mod download;
mod http;
mod lfs;
mod protocol;
pub mod push;

pub use config::{HubConfig, RepoRef, Token};

pub use download::{fetch, Need};
pub use push::{push, PushOptions, PushReport};
