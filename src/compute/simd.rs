//! The one SIMD file: the row kernel compiled twice, once portable and once with AVX2+FMA
//! enabled (chosen at run time). The source is the same; with `fma` enabled `f32::mul_add`
//! becomes `vfmadd` and the loops vectorize, and because FMA is exactly rounded the bytes do not
//! change. AVX-512 is left to the compiler's AVX2 code for now.
#![expect(unsafe_code)]

use crate::options::FloatDtype;
use crate::quant::dtype::{f32_to_bf16, f32_to_f16, round_through};

/// Adds the LoRA delta of one output row to `w` (f32, `cols` long) and encodes it into `out`.
/// `acc` is scratch of `cols` f32. Returns whether all outputs are finite.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn row_body(
    w: &mut [f32],
    acc: &mut [f32],
    a: &[f32],
    b_row: Option<&[f32]>,
    scale: f32,
    delta_dtype: FloatDtype,
    out_dtype: FloatDtype,
    out: &mut [u8],
) -> bool {
    let cols = w.len();
    if let Some(b_row) = b_row {
        acc.iter_mut().for_each(|x| *x = 0.0);
        for (k, &bk) in b_row.iter().enumerate() {
            let a_row = &a[k * cols..(k + 1) * cols];
            for (x, &ai) in acc.iter_mut().zip(a_row) {
                *x = bk.mul_add(ai, *x);
            }
        }
        match delta_dtype {
            FloatDtype::F32 => {
                for (wi, &x) in w.iter_mut().zip(acc.iter()) {
                    *wi += x * scale;
                }
            }
            dt => {
                for (wi, &x) in w.iter_mut().zip(acc.iter()) {
                    *wi += round_through(x * scale, dt);
                }
            }
        }
    }
    let mut finite = true;
    match out_dtype {
        FloatDtype::Bf16 => {
            for (v, c) in w.iter().zip(out.chunks_exact_mut(2)) {
                let h = f32_to_bf16(*v);
                finite &= (h & 0x7f80) != 0x7f80;
                c.copy_from_slice(&h.to_le_bytes());
            }
        }
        FloatDtype::F16 => {
            for (v, c) in w.iter().zip(out.chunks_exact_mut(2)) {
                let h = f32_to_f16(*v);
                finite &= (h & 0x7c00) != 0x7c00;
                c.copy_from_slice(&h.to_le_bytes());
            }
        }
        FloatDtype::F32 => {
            for (v, c) in w.iter().zip(out.chunks_exact_mut(4)) {
                finite &= v.is_finite();
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    finite
}

#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_avx2(
    w: &mut [f32],
    acc: &mut [f32],
    a: &[f32],
    b_row: Option<&[f32]>,
    scale: f32,
    delta_dtype: FloatDtype,
    out_dtype: FloatDtype,
    out: &mut [u8],
) -> bool {
    row_body(w, acc, a, b_row, scale, delta_dtype, out_dtype, out)
}

/// Which instruction set the row kernel uses on this machine.
pub fn isa() -> &'static str {
    if has_avx2_fma() {
        "avx2+fma"
    } else {
        "portable"
    }
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs the row kernel with the best instruction set available (`force_portable` for tests).
#[allow(clippy::too_many_arguments)]
pub fn row(
    w: &mut [f32],
    acc: &mut [f32],
    a: &[f32],
    b_row: Option<&[f32]>,
    scale: f32,
    delta_dtype: FloatDtype,
    out_dtype: FloatDtype,
    out: &mut [u8],
    force_portable: bool,
) -> bool {
    if !force_portable && has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
        unsafe { row_avx2(w, acc, a, b_row, scale, delta_dtype, out_dtype, out) }
    } else {
        row_body(w, acc, a, b_row, scale, delta_dtype, out_dtype, out)
    }
}

#[inline(always)]
fn accumulate_body(acc: &mut [f32], coef: &[f32], basis: &[f32]) {
    let cols = acc.len();
    acc.iter_mut().for_each(|x| *x = 0.0);
    for (k, &c) in coef.iter().enumerate() {
        for (x, &b) in acc.iter_mut().zip(&basis[k * cols..(k + 1) * cols]) {
            *x = c.mul_add(b, *x);
        }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate_avx2(acc: &mut [f32], coef: &[f32], basis: &[f32]) {
    accumulate_body(acc, coef, basis)
}

/// `acc[i] = sum_k coef[k] * basis[k, i]` as a sequential FMA chain over k from 0.
pub fn accumulate(acc: &mut [f32], coef: &[f32], basis: &[f32]) {
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
        unsafe { accumulate_avx2(acc, coef, basis) }
    } else {
        accumulate_body(acc, coef, basis)
    }
}
