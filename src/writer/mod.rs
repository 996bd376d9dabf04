//! The finish side: the files around the shards (index, config, tokenizer, model card,
//! manifest), and the staging directory that makes the output appear atomically.

pub mod existing;
pub mod meta;
pub mod output;
pub mod resume;
pub mod shard;
pub mod staging;
