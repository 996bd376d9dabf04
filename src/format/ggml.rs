//! ggml's element encodings as llama.cpp's converter writes them (docs/formats.md §4.3): the
//! numpy casts of its `gguf-py` for F16 and BF16, and its Q8_0 block quantizer. Each is pinned to
//! files the real gguf-py wrote (`tests/fixtures/gguf/`).

/// f32 → f16 bits as numpy's `astype(np.float16)`: round to nearest even, overflow to ±inf,
/// subnormals kept; a NaN keeps its sign and the top of its payload, and stays a NaN (numpy does
/// not quiet a signalling NaN, unlike `half`).
pub fn f16_bits(x: f32) -> u16 {
    let f = x.to_bits();
    if x.is_nan() {
        let sign = ((f & 0x8000_0000) >> 16) as u16;
        let mut h = 0x7c00 + ((f & 0x007f_ffff) >> 13) as u16;
        if h == 0x7c00 {
            h += 1;
        }
        return sign | h;
    }
    half::f16::from_f32(x).to_bits()
}

/// f32 → f16 bits as ggml's C code does it (`ggml_compute_fp32_to_fp16`, the k-quant scales):
/// round to nearest even through two float scalings, overflow to ±inf, any NaN → a quiet NaN
/// with its sign (`0x7e00`).
pub fn f16_bits_ggml(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let bias = (shl1_w & 0xff00_0000).max(0x7100_0000);
    // (IEEE addition commutes: this is C's `from_bits(...) + base`.)
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let nonsign = ((bits >> 13) & 0x0000_7c00) + (bits & 0x0000_0fff);
    ((sign >> 16) | if shl1_w > 0xff00_0000 { 0x7e00 } else { nonsign }) as u16
}

/// f32 → bf16 bits as gguf-py does it: round to nearest even; a NaN keeps its sign and payload
/// top and is made quiet (`| 0x0040`).
pub fn bf16_bits(x: f32) -> u16 {
    let mut n = x.to_bits() as u64;
    if (n & 0x7fff_ffff) > 0x7f80_0000 {
        n = (n & 0xffff_0000) | (64 << 16);
    }
    ((n + (0x7fff + ((n >> 16) & 1))) >> 16) as u16
}

/// Values per Q8_0 block.
pub const Q8_0_VALUES: usize = 32;
/// Bytes per Q8_0 block: the f16 scale, then 32 signed codes.
pub const Q8_0_BYTES: usize = 34;

/// numpy's `np_roundf` of gguf-py: halves away from zero, computed as
/// `sign(n) * (floor(|n|) + floor(2 * (|n| - floor(|n|))))` in f32.
fn np_roundf(n: f32) -> f32 {
    let a = n.abs();
    let floored = a.floor();
    let b = floored + (2.0 * (a - floored)).floor();
    // np.sign(0) is 0 and np.sign(NaN) is NaN.
    if n > 0.0 {
        b
    } else if n < 0.0 {
        -b
    } else if n.is_nan() {
        f32::NAN
    } else {
        0.0 * b
    }
}

/// numpy's float → int8 cast on x86-64 for the values Q8_0 can produce: in range as is; NaN and
/// ±inf (a block whose `1/d` overflowed, or with non-finite values) become 0.
fn to_i8(r: f32) -> i8 {
    if r.is_finite() {
        r as i8
    } else {
        0
    }
}

/// One Q8_0 block of 32 values as gguf-py's `quantize_blocks` does it:
/// `d = max|x| / 127`, `id = d == 0 ? 0 : 1 / d`, `q = np_roundf(x * id)`, all in f32; the
/// block is `f16(d)` then the 32 codes. A NaN anywhere makes `d` NaN (numpy's `max` propagates
/// it), and then every code is 0.
pub fn q8_0_block(x: &[f32; Q8_0_VALUES], out: &mut [u8; Q8_0_BYTES]) {
    let mut amax = 0.0f32;
    for v in x {
        let a = v.abs();
        if a.is_nan() {
            amax = a;
            break;
        }
        if a > amax {
            amax = a;
        }
    }
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    out[..2].copy_from_slice(&f16_bits(d).to_le_bytes());
    for (o, v) in out[2..].iter_mut().zip(x) {
        *o = to_i8(np_roundf(v * id)) as u8;
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

    /// Every one of the 1,100 rows gguf-py quantized (ties, tiny and huge scales, `1/d` = inf,
    /// zeros, -0, NaN and inf, random fill) comes out byte for byte.
    #[test]
    fn q8_0_equals_gguf_py_on_every_fixture_row() {
        let cases = fixture("q8_0_cases.bin");
        let want = fixture("q8_0_expected.bin");
        assert_eq!(cases.len() / (4 * Q8_0_VALUES), want.len() / Q8_0_BYTES);
        let mut differ = Vec::new();
        for (i, (row, expected)) in cases
            .chunks_exact(4 * Q8_0_VALUES)
            .zip(want.chunks_exact(Q8_0_BYTES))
            .enumerate()
        {
            let x: [f32; Q8_0_VALUES] =
                std::array::from_fn(|j| f32::from_le_bytes(row[4 * j..4 * j + 4].try_into().unwrap()));
            let mut got = [0u8; Q8_0_BYTES];
            q8_0_block(&x, &mut got);
            if got[..] != expected[..] {
                differ.push(i);
            }
        }
        assert!(differ.is_empty(), "{} of {} rows differ, first {:?}", differ.len(), want.len() / 34, &differ[..differ.len().min(10)]);
    }

    /// ggml's bit-trick conversion is IEEE round-to-nearest-even for every finite f32 (checked
    /// against `half` on a sweep of bit patterns, subnormals, overflow and ties included).
    #[test]
    fn ggml_f16_is_round_to_nearest_even() {
        let mut b = 0u32;
        while b < u32::MAX - 4093 {
            let x = f32::from_bits(b);
            if !x.is_nan() {
                assert_eq!(f16_bits_ggml(x), half::f16::from_f32(x).to_bits(), "{b:#x}");
            }
            b += 4093;
        }
        assert_eq!(f16_bits_ggml(f32::NAN), 0x7e00);
        assert_eq!(f16_bits_ggml(-f32::NAN), 0xfe00);
        assert_eq!(f16_bits_ggml(65520.0), 0x7c00);
    }

    #[test]
    fn numpy_rounding_and_casts() {
        assert_eq!(np_roundf(0.5), 1.0);
        assert_eq!(np_roundf(-2.5), -3.0);
        assert_eq!(np_roundf(0.49999997), 0.0, "not floor(x + 0.5)");
        assert_eq!(f16_bits(65520.0), 0x7c00, "overflow to inf");
        assert_eq!(f16_bits(f32::from_bits(0x7f80_0001)), 0x7c01, "a signalling NaN stays a NaN, unquieted");
        assert_eq!(f16_bits(f32::from_bits(0x7fc0_0000)), 0x7e00);
        assert_eq!(bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0, "NaN quieted");
        assert_eq!(bf16_bits(f32::MAX), 0x7f80, "rounds up to inf");
        let mut b = [0u8; Q8_0_BYTES];
        q8_0_block(&[1e-38; 32], &mut b);
        assert!(b[2..].iter().all(|&c| c == 0), "1/d overflowed: numpy casts inf to 0");
    }
}
