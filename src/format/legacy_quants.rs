//! ggml's 32-value block quantizers as llama.cpp's C code has them (`quantize_row_q4_0_ref`,
//! `_q4_1_ref`, `_q5_0_ref`, `_q5_1_ref`, `_q8_0_ref` of `ggml/src/ggml-quants.c`): what
//! `llama-quantize` writes where a k-quant does not fit a row (Q4_K falls back to Q5_0, Q6_K to
//! Q8_0) and for the Q4_0/Q5_x/Q8_0 file types. Ported operation for operation; checked against
//! blocks the real C functions made (`tests/fixtures/gguf/`). Q8_0 as the converter writes it
//! (numpy) is `ggml::q8_0_block`; this is the C one.

use super::ggml::f16_bits_ggml;
use super::kquants::signed_amax;

/// Values per block.
pub const QK: usize = 32;

/// The value of largest magnitude, first on ties (`if (amax < fabsf(v))`).
fn signed_max(x: &[f32; QK]) -> f32 {
    signed_amax(x).1
}

/// The smallest and largest value, both starting from `f32::MAX` / `-f32::MAX` as in C.
fn min_max(x: &[f32; QK]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// C's float → `int8_t` conversion for the values these quantizers produce (truncation toward
/// zero; out-of-range values are undefined behaviour in C and are not produced for finite,
/// non-degenerate input).
fn trunc_i8(v: f32) -> i8 {
    v as i32 as i8
}

/// C's float → `uint8_t` conversion (truncation toward zero), as in `(uint8_t)(x + 0.5f)`.
fn trunc_u8(v: f32) -> u8 {
    v as i32 as u8
}

/// Q4_0: f16 `d = max / -8`, codes `min(15, (int8)(x·id + 8.5))`, first half of the block in the
/// low nibbles, second half in the high ones. 18 bytes.
#[inline(always)]
pub fn q4_0_block(x: &[f32; QK], out: &mut [u8; 18]) {
    let d = signed_max(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16_bits_ggml(d).to_le_bytes());
    for j in 0..QK / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK / 2 + j] * id;
        let xi0 = (trunc_i8(x0 + 8.5) as u8).min(15);
        let xi1 = (trunc_i8(x1 + 8.5) as u8).min(15);
        out[2 + j] = xi0 | (xi1 << 4);
    }
}

/// Q4_1: f16 `d = (max − min) / 15` and f16 `m = min`, codes `min(15, (int8)((x − min)·id + 0.5))`.
/// 20 bytes.
#[inline(always)]
pub fn q4_1_block(x: &[f32; QK], out: &mut [u8; 20]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16_bits_ggml(d).to_le_bytes());
    out[2..4].copy_from_slice(&f16_bits_ggml(min).to_le_bytes());
    for j in 0..QK / 2 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK / 2 + j] - min) * id;
        let xi0 = (trunc_i8(x0 + 0.5) as u8).min(15);
        let xi1 = (trunc_i8(x1 + 0.5) as u8).min(15);
        out[4 + j] = xi0 | (xi1 << 4);
    }
}

/// Q5_0: f16 `d = max / -16`, 5-bit codes `min(31, (int8)(x·id + 16.5))`; the fifth bits in a
/// little-endian u32 `qh` (bit `j` for value `j`, bit `j + 16` for value `j + 16`). 22 bytes.
#[inline(always)]
pub fn q5_0_block(x: &[f32; QK], out: &mut [u8; 22]) {
    let d = signed_max(x) / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16_bits_ggml(d).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK / 2 + j] * id;
        let xi0 = (trunc_i8(x0 + 16.5) as u8).min(31);
        let xi1 = (trunc_i8(x1 + 16.5) as u8).min(31);
        out[6 + j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
        qh |= u32::from((xi0 & 0x10) >> 4) << j;
        qh |= u32::from((xi1 & 0x10) >> 4) << (j + QK / 2);
    }
    out[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// Q5_1: f16 `d = (max − min) / 31`, f16 `m = min`, 5-bit codes `(uint8)((x − min)·id + 0.5)`,
/// fifth bits as in Q5_0. 24 bytes.
#[inline(always)]
pub fn q5_1_block(x: &[f32; QK], out: &mut [u8; 24]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16_bits_ggml(d).to_le_bytes());
    out[2..4].copy_from_slice(&f16_bits_ggml(min).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK / 2 + j] - min) * id;
        let xi0 = trunc_u8(x0 + 0.5);
        let xi1 = trunc_u8(x1 + 0.5);
        out[8 + j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
        qh |= u32::from((xi0 & 0x10) >> 4) << j;
        qh |= u32::from((xi1 & 0x10) >> 4) << (j + QK / 2);
    }
    out[4..8].copy_from_slice(&qh.to_le_bytes());
}

/// Q8_0 as the C code does it: `d = max|x| / 127`, codes `roundf(x·id)` (halves away from
/// zero). 34 bytes.
#[inline(always)]
pub fn q8_0_c_block(x: &[f32; QK], out: &mut [u8; 34]) {
    let mut amax = 0.0f32;
    for &v in x {
        amax = amax.max(v.abs());
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16_bits_ggml(d).to_le_bytes());
    for (o, &v) in out[2..].iter_mut().zip(x) {
        *o = trunc_i8((v * id).round()) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture(name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf").join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// Rows 196 and 197 (f32 subnormal inputs: `d` is a nonzero subnormal, `1/d` is inf) make
    /// every C float → int cast undefined; the fixture's json lists them, and they are skipped.
    const UB_ROWS: [usize; 2] = [196, 197];

    /// Each fixture row is eight 32-value blocks from one call on 256 values.
    fn equals_c<const B: usize>(expected: &str, quantize: fn(&[f32; QK], &mut [u8; B])) {
        let cases = fixture("kquant_cases.bin");
        let want = fixture(expected);
        let rows = cases.len() / (4 * 256);
        assert_eq!(want.len(), rows * 8 * B, "{expected}");
        let mut differ = Vec::new();
        for (i, (row, w)) in cases.chunks_exact(4 * 256).zip(want.chunks_exact(8 * B)).enumerate() {
            if UB_ROWS.contains(&i) {
                continue;
            }
            let mut got = Vec::with_capacity(8 * B);
            for block in row.chunks_exact(4 * QK) {
                let x: [f32; QK] =
                    std::array::from_fn(|j| f32::from_le_bytes(block[4 * j..4 * j + 4].try_into().unwrap()));
                let mut b = [0u8; B];
                quantize(&x, &mut b);
                got.extend_from_slice(&b);
            }
            if got != w {
                differ.push(i);
            }
        }
        assert!(
            differ.is_empty(),
            "{expected}: {} of {} rows differ, first {:?}",
            differ.len(),
            rows - UB_ROWS.len(),
            &differ[..differ.len().min(10)]
        );
    }

    #[test]
    fn q4_0_equals_the_c_reference() {
        equals_c::<18>("q4_0_expected.bin", q4_0_block);
    }

    #[test]
    fn q4_1_equals_the_c_reference() {
        equals_c::<20>("q4_1_expected.bin", q4_1_block);
    }

    #[test]
    fn q5_0_equals_the_c_reference() {
        equals_c::<22>("q5_0_expected.bin", q5_0_block);
    }

    #[test]
    fn q5_1_equals_the_c_reference() {
        equals_c::<24>("q5_1_expected.bin", q5_1_block);
    }

    #[test]
    fn q8_0_equals_the_c_reference() {
        equals_c::<34>("q8_0_c_expected.bin", q8_0_c_block);
    }
}
