//! Writes the k-quant edge cases for `kernels/kquant_emu.py` (`scripts/kquant-emulate.sh`): for
//! Q4_K, Q5_K and Q6_K from bf16 and from f16 values, `TYPE-f16|bf16.in` (the 16-bit values of
//! twelve 256-value blocks, one of each kind of `tests/gen.rs`) and `.want` (the CPU
//! encoder's blocks).
//!
//!     cargo run --release --example kquant-cases -- DIR

use loraweld::format::dtype::{bf16_to_f32, f16_to_f32};
use loraweld::format::ggml::{bf16_bits, f16_bits};
use loraweld::format::ggml_rows::{encode_rows, Encoding, Writer};
use loraweld::format::gguf::GgmlType;

#[path = "../tests/gen.rs"]
mod gen;

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    std::fs::create_dir_all(&dir)?;
    let vals = gen::kquant_blocks(&mut gen::Rng(19), 12);
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
