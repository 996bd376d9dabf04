//! The formats, both ways and below everything that uses them: dtypes and torch-exact casts,
//! the safetensors header (parse and lay out), bitsandbytes 4-bit (decode, encode, the packed
//! nibbles), and JSON as Python writes it.

pub mod bnb;
pub mod dtype;
pub mod encode;
pub mod ggml;
pub mod ggml_rows;
pub mod gguf;
pub mod gguf_rules;
#[cfg(target_arch = "x86_64")]
mod kquant_avx2;
#[cfg(target_arch = "x86_64")]
mod kquant_avx512;
pub mod kquant_lanes;
#[cfg(target_arch = "x86_64")]
mod kquant_simd;
pub mod kquants;
pub mod legacy_quants;
pub mod nibbles;
pub mod pyjson;
pub mod safetensors;
