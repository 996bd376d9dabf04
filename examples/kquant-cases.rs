//! Writes the k-quant edge cases for `kernels/kquant_emu.py` (`scripts/kquant-emulate.sh`): for
//! Q4_K, Q5_K and Q6_K from bf16 and from f16 values, `TYPE-f16|bf16.in` (the 16-bit values of
//! twelve 256-value blocks, one of each kind below) and `.want` (the CPU encoder's blocks).
//!
//!     cargo run --release --example kquant-cases -- DIR

use loraweld::format::dtype::{bf16_to_f32, f16_to_f32};
use loraweld::format::ggml::{bf16_bits, f16_bits};
use loraweld::format::ggml_rows::{encode_rows, Encoding, Writer};
use loraweld::format::gguf::GgmlType;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-scale/2, scale/2).
    fn f32(&mut self, scale: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
    }
}

/// Block `b` is of kind `b % 12`: ordinary weights; sub-blocks a hundred times smaller each
/// (scales that round to 0 keep the search's codes); zeros; subnormal and near-zero values; one
/// live sub-block; all positive; constant; large; sums of uniforms; exact ties; spikes over
/// near-zero values; values whose squares overflow (infinite in f16).
fn blocks(g: &mut Rng, n: usize) -> Vec<f32> {
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

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    std::fs::create_dir_all(&dir)?;
    let vals = blocks(&mut Rng(19), 12);
    for ty in [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K] {
        for f16 in [false, true] {
            let enc = Encoding {
                ty,
                writer: Writer::Quantizer,
            };
            let half: Vec<u16> = vals
                .iter()
                .map(|x| if f16 { f16_bits(*x) } else { bf16_bits(*x) })
                .collect();
            let rounded: Vec<f32> = half
                .iter()
                .map(|h| if f16 { f16_to_f32(*h) } else { bf16_to_f32(*h) })
                .collect();
            let mut want = vec![0u8; enc.row_bytes(256).unwrap_or(0) as usize * 12];
            encode_rows(enc, &rounded, 256, &mut want);
            let name = format!("{dir}/{ty:?}-{}", if f16 { "f16" } else { "bf16" });
            std::fs::write(
                format!("{name}.in"),
                half.iter().flat_map(|h| h.to_le_bytes()).collect::<Vec<u8>>(),
            )?;
            std::fs::write(format!("{name}.want"), want)?;
        }
    }
    Ok(())
}
