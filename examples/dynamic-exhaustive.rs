//! Checks `DynamicCoder` against `nearest_dynamic` (the 8-bit double-quant absmax code) on all
//! 2^32 f32 bit patterns, and times both on random absmax-like values:
//!
//!     cargo run --release --example dynamic-exhaustive
use std::time::Instant;

use loraweld::format::encode::{dynamic_map, nearest_dynamic, DynamicCoder};
use rayon::prelude::*;

fn main() {
    let map = dynamic_map();
    let coder = DynamicCoder::new(&map);
    let n = 20_000_000usize;
    let mut s = 0x1234_5678u64;
    let xs: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let t = Instant::now();
    let a: u64 = xs.iter().map(|&x| nearest_dynamic(&map, x) as u64).sum();
    let search = t.elapsed().as_secs_f64() * 1e9 / n as f64;
    let t = Instant::now();
    let b: u64 = xs.iter().map(|&x| coder.code(x) as u64).sum();
    let thresholds = t.elapsed().as_secs_f64() * 1e9 / n as f64;
    assert_eq!(a, b);
    println!("one core, {n} values in [-1, 1): search {search:.1} ns/value, thresholds {thresholds:.1} ns/value");
    let t = Instant::now();
    let bad: u64 = (0u32..=u32::MAX >> 16)
        .into_par_iter()
        .map(|hi| {
            (0..=0xFFFFu32)
                .filter(|lo| {
                    let x = f32::from_bits(hi << 16 | lo);
                    coder.code(x) != nearest_dynamic(&map, x)
                })
                .count() as u64
        })
        .sum();
    println!(
        "all 2^32 bit patterns: {bad} differ ({:.0} s on {} threads)",
        t.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    assert_eq!(bad, 0);
}
