//! Casts between f32 and the 16-bit float formats, rounding exactly as torch does
//! (round-to-nearest-even; a NaN becomes the canonical quiet NaN).

use crate::format::safetensors::Dtype;

/// A floating output dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatDtype {
    /// bfloat16
    Bf16,
    /// IEEE half
    F16,
    /// IEEE single
    F32,
}

impl FloatDtype {
    /// The torch name written into `config.json` (`bfloat16`, `float16`, `float32`).
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatDtype::Bf16 => "bfloat16",
            FloatDtype::F16 => "float16",
            FloatDtype::F32 => "float32",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FloatDtype::Bf16 | FloatDtype::F16 => 2,
            FloatDtype::F32 => 4,
        }
    }
}

/// bf16 bits → f32 (exact).
#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 → bf16 bits, round-to-nearest-even; NaN → 0x7FC0 (torch's `c10::BFloat16`).
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if x.is_nan() {
        return 0x7FC0;
    }
    let bias = ((u >> 16) & 1) + 0x7FFF;
    (u.wrapping_add(bias) >> 16) as u16
}

/// f16 bits → f32 (exact).
#[inline(always)]
pub fn f16_to_f32(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}

/// f32 → f16 bits, round-to-nearest-even.
#[inline(always)]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// Rounds an f32 to `dt` and back: what a torch `.to(dt).float()` does.
#[inline(always)]
pub fn round_through(x: f32, dt: FloatDtype) -> f32 {
    match dt {
        FloatDtype::Bf16 => bf16_to_f32(f32_to_bf16(x)),
        FloatDtype::F16 => f16_to_f32(f32_to_f16(x)),
        FloatDtype::F32 => x,
    }
}

/// The safetensors dtype of a float output.
pub fn st_dtype(dt: FloatDtype) -> Dtype {
    match dt {
        FloatDtype::Bf16 => Dtype::BF16,
        FloatDtype::F16 => Dtype::F16,
        FloatDtype::F32 => Dtype::F32,
    }
}

/// The float output type of a safetensors dtype, if it is one.
pub fn float_of(dt: Dtype) -> Option<FloatDtype> {
    match dt {
        Dtype::BF16 => Some(FloatDtype::Bf16),
        Dtype::F16 => Some(FloatDtype::F16),
        Dtype::F32 => Some(FloatDtype::F32),
        _ => None,
    }
}

/// Parses a torch dtype name (`bfloat16`, `torch.float16`, `float32`, …).
pub fn parse_torch_dtype(s: &str) -> Option<FloatDtype> {
    match s.trim_start_matches("torch.") {
        "bfloat16" => Some(FloatDtype::Bf16),
        "float16" | "half" => Some(FloatDtype::F16),
        "float32" | "float" => Some(FloatDtype::F32),
        _ => None,
    }
}

/// Decodes little-endian elements of `dt` (BF16/F16/F32) into f32.
#[inline]
pub fn decode_into(bytes: &[u8], dt: FloatDtype, out: &mut [f32]) {
    match dt {
        FloatDtype::Bf16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        FloatDtype::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        FloatDtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
}

/// Encodes f32 values into little-endian `dt` bytes, rounding once.
#[inline]
pub fn encode_into(vals: &[f32], dt: FloatDtype, out: &mut [u8]) {
    match dt {
        FloatDtype::Bf16 => {
            for (v, c) in vals.iter().zip(out.chunks_exact_mut(2)) {
                c.copy_from_slice(&f32_to_bf16(*v).to_le_bytes());
            }
        }
        FloatDtype::F16 => {
            for (v, c) in vals.iter().zip(out.chunks_exact_mut(2)) {
                c.copy_from_slice(&f32_to_f16(*v).to_le_bytes());
            }
        }
        FloatDtype::F32 => {
            for (v, c) in vals.iter().zip(out.chunks_exact_mut(4)) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bf16_rounding_equals_half_crate_for_non_nan(bits in any::<u32>()) {
            let x = f32::from_bits(bits);
            prop_assume!(!x.is_nan());
            prop_assert_eq!(f32_to_bf16(x), half::bf16::from_f32(x).to_bits());
        }

        #[test]
        fn bf16_round_trip_is_exact(b in any::<u16>()) {
            let x = bf16_to_f32(b);
            prop_assume!(!x.is_nan());
            prop_assert_eq!(f32_to_bf16(x), b);
        }
    }

    #[test]
    fn ties_go_to_even_and_nan_is_canonical() {
        // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3F80);
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3F82);
        assert_eq!(f32_to_bf16(f32::NAN), 0x7FC0);
    }
}
