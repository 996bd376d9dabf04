//! Number formats: bitsandbytes 4-bit (NF4/FP4, double quant) decoding, and 16/32-bit casts
//! with the exact rounding torch uses.

pub mod bnb;
pub mod dtype;
pub mod encode;
