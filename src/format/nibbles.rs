//! Packed 4-bit codes to f32 through a 16-entry table: the inner step of bitsandbytes
//! dequantization, 16 bytes per `vpermps` pair where the CPU has AVX-512 (chosen at run time;
//! the same values as the scalar loop, proptest).
#![expect(unsafe_code)]

/// Whether the CPU has what the vector path needs (AVX-512 F/BW/VL).
fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// Decodes packed 4-bit codes (high nibble first) through a 16-entry table:
/// `out[2i] = lut[bytes[i] >> 4]`, `out[2i + 1] = lut[bytes[i] & 15]`.
pub fn decode_nibbles(lut: &[f32; 16], bytes: &[u8], out: &mut [f32]) {
    assert!(out.len() >= 2 * bytes.len(), "decode_nibbles: output too short");
    if avx512() {
        // SAFETY: the CPU has AVX-512 F/BW/VL (checked by `avx512`), and the assert above
        // keeps every store inside `out`.
        unsafe { decode_nibbles_avx512(lut, bytes, out) }
    } else {
        decode_nibbles_scalar(lut, bytes, out)
    }
}

fn decode_nibbles_scalar(lut: &[f32; 16], bytes: &[u8], out: &mut [f32]) {
    for (o, &b) in out.chunks_exact_mut(2).zip(bytes) {
        o[0] = lut[(b >> 4) as usize];
        o[1] = lut[(b & 0x0f) as usize];
    }
}

/// 16 bytes at a time: widen to 16 lanes, split the nibbles, look both up with one
/// `vpermps` each (the table is exactly one register), and interleave.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn decode_nibbles_avx512(lut: &[f32; 16], bytes: &[u8], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let table = _mm512_loadu_ps(lut.as_ptr());
    let low_mask = _mm512_set1_epi32(0x0f);
    let first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let whole = bytes.len() / 16 * 16;
    let mut i = 0;
    while i < whole {
        // SAFETY: i + 16 <= bytes.len(), and 2 * i + 32 <= out.len() (asserted by the caller).
        let b = _mm_loadu_si128(bytes.as_ptr().add(i) as *const __m128i);
        let v = _mm512_cvtepu8_epi32(b);
        let hi = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(v), table);
        let lo = _mm512_permutexvar_ps(_mm512_and_si512(v, low_mask), table);
        _mm512_storeu_ps(out.as_mut_ptr().add(2 * i), _mm512_permutex2var_ps(hi, first, lo));
        _mm512_storeu_ps(out.as_mut_ptr().add(2 * i + 16), _mm512_permutex2var_ps(hi, second, lo));
        i += 16;
    }
    decode_nibbles_scalar(lut, &bytes[whole..], &mut out[2 * whole..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn vector_nibble_decode_equals_scalar(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let lut: [f32; 16] = std::array::from_fn(|i| i as f32 * 0.37 - 2.0);
            let mut a = vec![0f32; bytes.len() * 2];
            let mut b = vec![0f32; bytes.len() * 2];
            decode_nibbles(&lut, &bytes, &mut a);
            decode_nibbles_scalar(&lut, &bytes, &mut b);
            prop_assert_eq!(a, b);
        }
    }
}
