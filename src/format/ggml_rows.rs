//! Rows of f32 values → the bytes of a ggml tensor type, computed the way the tool that writes
//! that type in llama.cpp's own route computes them: the converter (gguf-py, numpy) writes F32,
//! F16, BF16 and Q8_0 directly; `llama-quantize` (the C reference quantizers) writes every
//! block-quantized type, Q8_0 included, from a 16-bit GGUF. The two Q8_0s round differently
//! (numpy's halves-away-from-zero on `x / d` against C's `roundf(x * id)`), so the writer is
//! part of the encoding.
//!
//! The row encoder is compiled three times, portable, AVX2 and AVX-512, and chosen at run time
//! (the k-quant searches are lane-parallel loops, `kquant_lanes.rs`, that become vector
//! instructions with a wider instruction set); every lane does the scalar operations in the
//! scalar order and no build fuses a multiply-add, so every variant gives the same bytes.
#![expect(unsafe_code)]

use rayon::prelude::*;

use super::ggml::{bf16_bits, f16_bits, q8_0_block, Q8_0_BYTES};
use super::gguf::GgmlType;
#[cfg(target_arch = "x86_64")]
use super::kquant_avx2::Avx2;
#[cfg(target_arch = "x86_64")]
use super::kquant_avx512::Avx512;
use super::kquant_lanes::{Portable, Search};
use super::kquants::{
    q2_k_block_with, q3_k_block, q4_k_block_with, q4_k_pair_with, q4_k_quad_with, q5_k_block_with, q5_k_pair_with, q5_k_quad_with, q6_k_block_with, q6_k_pair_with,
    QK_K,
};
use super::legacy_quants::{q4_0_block, q4_1_block, q5_0_block, q5_1_block, q8_0_c_block, QK};

/// Who writes a tensor's bytes in llama.cpp's route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Writer {
    /// `convert_hf_to_gguf.py` (gguf-py's numpy conversions).
    Converter,
    /// `llama-quantize` (ggml's `quantize_row_*_ref`).
    Quantizer,
}

/// How one tensor's values become bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Encoding {
    /// The stored type.
    pub ty: GgmlType,
    /// Who computes the bytes.
    pub writer: Writer,
}

impl Encoding {
    /// Bytes of one row of `n` values (`None` when `n` is not a whole number of blocks).
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        self.ty.row_bytes(n)
    }

    /// Whether this writer can produce this type here.
    pub fn supported(self) -> bool {
        use GgmlType as T;
        match self.writer {
            Writer::Converter => matches!(self.ty, T::F32 | T::F16 | T::Bf16 | T::Q8_0),
            Writer::Quantizer => matches!(
                self.ty,
                T::F32 | T::F16 | T::Bf16 | T::Q4_0 | T::Q4_1 | T::Q5_0 | T::Q5_1 | T::Q8_0 | T::Q2K | T::Q3K | T::Q4K | T::Q5K | T::Q6K
            ),
        }
    }
}

#[inline(always)]
fn blocks<const N: usize, const B: usize>(x: &[f32], out: &mut [u8], f: impl Fn(&[f32; N], &mut [u8; B])) {
    for (xs, o) in x.as_chunks::<N>().0.iter().zip(out.as_chunks_mut::<B>().0) {
        f(xs, o);
    }
}

pub use crate::sys::Isa;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_avx2(enc: Encoding, x: &[f32], out: &mut [u8]) {
    row_body::<Avx2>(enc, x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn row_avx512(enc: Encoding, x: &[f32], out: &mut [u8]) {
    row_body::<Avx512>(enc, x, out)
}

/// Super-blocks two at a time (their searches side by side), the last one alone when odd.
#[inline(always)]
fn pairs<const B: usize>(
    x: &[f32],
    out: &mut [u8],
    one: impl Fn(&[f32; QK_K], &mut [u8; B]),
    two: impl Fn([&[f32; QK_K]; 2], [&mut [u8; B]; 2]),
) {
    // A row is whole blocks, as planned.
    let xs = x.as_chunks::<QK_K>().0;
    let os = out.as_chunks_mut::<B>().0;
    let pairs = xs.len().min(os.len()) / 2;
    let (os2, os1) = os.split_at_mut(2 * pairs);
    for (x2, o2) in xs.chunks_exact(2).zip(os2.chunks_exact_mut(2)) {
        let [oa, ob] = o2 else { continue };
        two([&x2[0], &x2[1]], [oa, ob]);
    }
    for (xb, ob) in xs[2 * pairs..].iter().zip(os1) {
        one(xb, ob);
    }
}

/// Super-blocks four at a time where the searches run that wide, then [`pairs`].
#[inline(always)]
fn quads<const B: usize>(
    x: &[f32],
    out: &mut [u8],
    one: impl Fn(&[f32; QK_K], &mut [u8; B]),
    two: impl Fn([&[f32; QK_K]; 2], [&mut [u8; B]; 2]),
    four: impl Fn([&[f32; QK_K]; 4], [&mut [u8; B]; 4]),
) {
    let xs = x.as_chunks::<QK_K>().0;
    let os = out.as_chunks_mut::<B>().0;
    let quads = xs.len().min(os.len()) / 4;
    let (os4, rest) = os.split_at_mut(4 * quads);
    for (x4, o4) in xs.chunks_exact(4).zip(os4.chunks_exact_mut(4)) {
        let [oa, ob, oc, od] = o4 else { continue };
        four([&x4[0], &x4[1], &x4[2], &x4[3]], [oa, ob, oc, od]);
    }
    let tail = xs[4 * quads..].as_flattened();
    pairs::<B>(tail, rest.as_flattened_mut(), one, two);
}

/// Encodes one row with the given instruction set (which this CPU must run: see
/// [`Isa::available`]). `out` must be exactly `enc.row_bytes(x.len())` long.
pub fn encode_row_with(isa: Isa, enc: Encoding, x: &[f32], out: &mut [u8]) {
    match isa {
        // SAFETY: `Isa::detect` found the features on this CPU; a narrower variant runs anywhere
        // the wider one does.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if Isa::detect() == Isa::Avx512 => unsafe { row_avx512(enc, x, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 if Isa::detect() != Isa::Portable => unsafe { row_avx2(enc, x, out) },
        _ => row_body::<Portable>(enc, x, out),
    }
}

/// Encodes one row with the widest instruction set this CPU runs.
pub fn encode_row(enc: Encoding, x: &[f32], out: &mut [u8]) {
    encode_row_with(Isa::detect(), enc, x, out)
}

#[inline(always)]
fn row_body<S: Search>(enc: Encoding, x: &[f32], out: &mut [u8]) {
    use GgmlType as T;
    match (enc.ty, enc.writer) {
        (T::F32, _) => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        // numpy's astype(float16) and ggml's fp32→fp16 are both IEEE round-to-nearest-even
        // (format::ggml tests `f16_bits_ggml` against it), so one function serves both.
        (T::F16, _) => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f16_bits(*v).to_le_bytes());
            }
        }
        (T::Bf16, _) => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&bf16_bits(*v).to_le_bytes());
            }
        }
        (T::Q8_0, Writer::Converter) => blocks::<32, Q8_0_BYTES>(x, out, q8_0_block),
        (T::Q8_0, Writer::Quantizer) => blocks::<QK, 34>(x, out, q8_0_c_block),
        (T::Q4_0, _) => blocks::<QK, 18>(x, out, q4_0_block),
        (T::Q4_1, _) => blocks::<QK, 20>(x, out, q4_1_block),
        (T::Q5_0, _) => blocks::<QK, 22>(x, out, q5_0_block),
        (T::Q5_1, _) => blocks::<QK, 24>(x, out, q5_1_block),
        (T::Q2K, _) => blocks::<QK_K, 84>(x, out, q2_k_block_with::<S>),
        (T::Q3K, _) => blocks::<QK_K, 110>(x, out, q3_k_block),
        (T::Q4K, _) if S::WIDER => {
            quads::<144>(x, out, q4_k_block_with::<S>, q4_k_pair_with::<S>, q4_k_quad_with::<S>)
        }
        (T::Q5K, _) if S::WIDER => {
            quads::<176>(x, out, q5_k_block_with::<S>, q5_k_pair_with::<S>, q5_k_quad_with::<S>)
        }
        (T::Q4K, _) if S::WIDE => pairs::<144>(x, out, q4_k_block_with::<S>, q4_k_pair_with::<S>),
        (T::Q5K, _) if S::WIDE => pairs::<176>(x, out, q5_k_block_with::<S>, q5_k_pair_with::<S>),
        (T::Q4K, _) => blocks::<QK_K, 144>(x, out, q4_k_block_with::<S>),
        (T::Q5K, _) => blocks::<QK_K, 176>(x, out, q5_k_block_with::<S>),
        (T::Q6K, _) if S::WIDER => pairs::<210>(x, out, q6_k_block_with::<S>, q6_k_pair_with::<S>),
        (T::Q6K, _) => blocks::<QK_K, 210>(x, out, q6_k_block_with::<S>),
        (T::Q8_1 | T::Q8K, _) => unreachable!("planned encodings are checked with Encoding::supported"),
    }
}

/// Encodes `rows` rows of `cols` values each, in parallel over rows (every row is independent,
/// so the bytes are the same however the rows are shared out).
pub fn encode_rows(enc: Encoding, x: &[f32], cols: usize, out: &mut [u8]) {
    let rb = enc.row_bytes(cols as u64).unwrap_or(0) as usize;
    if cols == 0 || rb == 0 {
        return;
    }
    // Small rows (norms, biases: one value per "row") go in large groups.
    let per = (1 << 16) / cols.max(1) + 1;
    let isa = Isa::detect();
    x.par_chunks(cols * per)
        .zip(out.par_chunks_mut(rb * per))
        .for_each(|(xs, os)| {
            for (xr, or) in xs.chunks_exact(cols).zip(os.chunks_exact_mut(rb)) {
                encode_row_with(isa, enc, xr, or);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction set gives the same bytes as the portable build, for every type, on
    /// rows with the edge values real tensors hold (zeros, subnormals, huge values, flat
    /// sub-blocks).
    #[test]
    fn every_instruction_set_gives_the_same_bytes() {
        let cols = 1024;
        let mut x: Vec<f32> = (0..cols * 6).map(|i| (((i * 2654435761usize) % 100_003) as f32 / 50_001.5 - 1.0) * 0.05).collect();
        x[..256].fill(0.0);
        x[256..512].iter_mut().for_each(|v| *v *= 1e-40);
        x[512..768].iter_mut().for_each(|v| *v *= 1e36);
        x[768..1024].fill(0.25);
        x[1024..1280].iter_mut().for_each(|v| *v *= 1e-6);
        for ty in GgmlType::ALL {
            for writer in [Writer::Converter, Writer::Quantizer] {
                let enc = Encoding { ty, writer };
                if !enc.supported() {
                    continue;
                }
                let rb = enc.row_bytes(cols as u64).unwrap() as usize;
                let mut want = vec![0u8; rb];
                for row in x.chunks_exact(cols) {
                    encode_row_with(Isa::Portable, enc, row, &mut want);
                    for isa in Isa::available() {
                        let mut got = vec![0u8; rb];
                        encode_row_with(isa, enc, row, &mut got);
                        assert_eq!(got, want, "{ty:?} {writer:?} {isa:?}");
                    }
                }
            }
        }
        assert!(Isa::available().contains(&Isa::Portable));
    }

    /// Row-parallel encoding equals one row at a time, for every type.
    #[test]
    fn rows_in_parallel_equal_rows_one_by_one() {
        let cols = 512;
        let rows = 300;
        let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 / 333.0 - 1.5).collect();
        for ty in GgmlType::ALL {
            for writer in [Writer::Converter, Writer::Quantizer] {
                let enc = Encoding { ty, writer };
                if !enc.supported() {
                    continue;
                }
                let rb = enc.row_bytes(cols as u64).unwrap() as usize;
                let mut a = vec![0u8; rb * rows];
                let mut b = vec![0u8; rb * rows];
                encode_rows(enc, &x, cols, &mut a);
                for r in 0..rows {
                    encode_row(enc, &x[r * cols..(r + 1) * cols], &mut b[r * rb..(r + 1) * rb]);
                }
                assert_eq!(a, b, "{ty:?} {writer:?}");
            }
        }
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Random rows (ordinary weights at every scale, zeros, subnormals, huge values, NaN and
        /// inf): every instruction set's k-quant bytes equal the portable build's.
        #[test]
        fn kquant_rows_agree_on_every_instruction_set(
            x in proptest::collection::vec(
                prop_oneof![
                    6 => (-1.0f32..1.0, -40i32..6).prop_map(|(m, e)| m * 10f32.powi(e)),
                    1 => Just(0.0f32),
                    1 => (1u32..0x0080_0000).prop_map(f32::from_bits),
                    1 => (-1.0f32..1.0).prop_map(|m| m * 3e38),
                    1 => prop_oneof![Just(f32::NAN), Just(f32::INFINITY)],
                ],
                512,
            )
        ) {
            for ty in [GgmlType::Q2K, GgmlType::Q3K, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K] {
                let enc = Encoding { ty, writer: Writer::Quantizer };
                let rb = enc.row_bytes(512).unwrap() as usize;
                let mut want = vec![0u8; rb];
                encode_row_with(Isa::Portable, enc, &x, &mut want);
                for isa in Isa::available() {
                    let mut got = vec![0u8; rb];
                    encode_row_with(isa, enc, &x, &mut got);
                    prop_assert_eq!(&got, &want, "{:?} {:?}", ty, isa);
                }
            }
        }
    }
}
