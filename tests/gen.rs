//! Deterministic test data: splitmix64 and the k-quant edge-case blocks. `tests/gpu.rs` uses
//! both; `examples/kquant-cases.rs` includes this file by path to write the blocks for the PTX
//! emulator of CI.

/// splitmix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-scale/2, scale/2).
    pub fn f32(&mut self, scale: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
    }
}

/// `n` blocks of 256 values that reach every branch of the k-quant searches. Block `b` is of
/// kind `b % 12`: ordinary weights; sub-blocks a hundred times smaller each (scales that round
/// to 0 keep the search's codes); zeros; subnormal and near-zero values; one live sub-block;
/// all positive; constant; large; sums of uniforms; exact ties; spikes over near-zero values;
/// values whose squares overflow (infinite in f16).
pub fn kquant_blocks(g: &mut Rng, n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n * 256);
    for b in 0..n {
        for i in 0..256i32 {
            let j = i / 32;
            v.push(match b % 12 {
                0 => g.f32(0.1),
                1 => g.f32(1.0) * 10f32.powi(-j * 2),
                2 => 0.0,
                3 if i % 37 == 0 => g.f32(1e-18),
                3 => f32::from_bits((g.next() >> 50) as u32) * if i % 2 == 0 { 1.0 } else { -1.0 },
                4 if j == 5 => g.f32(0.02),
                4 => 0.0,
                5 => g.f32(0.1).abs() + 0.01,
                6 => -0.75,
                7 => g.f32(3e4),
                8 => (g.f32(0.1) + g.f32(0.1) + g.f32(0.1)) * 0.3,
                9 => ((g.next() % 33) as f32 - 16.0) * 0.125,
                10 if i % 16 == 0 => g.f32(1.0),
                10 => g.f32(1e-6),
                _ => g.f32(1e30),
            });
        }
    }
    v
}
