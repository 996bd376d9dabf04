//! The one SIMD file: the row kernel compiled three times, portable, AVX2+FMA and AVX-512
//! (chosen at run time, best first). The source is the same; with `fma` enabled `f32::mul_add`
//! becomes `vfmadd` and the loops vectorize to 256- or 512-bit lanes, and because FMA and the
//! roundings are exactly specified the bytes do not change (proptest against the scalar
//! reference for every path the CPU has).
#![expect(unsafe_code)]

use crate::format::dtype::FloatDtype;
use crate::format::dtype::{f32_to_bf16, f32_to_f16, round_through};

/// Adds the LoRA delta of one output row to `w` (f32, `cols` long) and encodes it into `out`.
/// `acc` is scratch of `cols` f32. Returns whether all outputs are finite.
// The hot row kernel: its operands (slices and scalars) stay separate arguments across the three
// target-feature copies; bundling them into a struct is left until it can be timed against
// this (benches/kernels.rs), since it sits on the inner loop of every CPU merge.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn row_body<const N: usize>(
    w: &mut [f32],
    acc: &mut [f32],
    a: &[f32],
    a_stride: usize,
    panel: &[f32],
    b_row: Option<&[f32]>,
    scale: f32,
    delta_dtype: FloatDtype,
    out_dtype: FloatDtype,
    out: &mut [u8],
) -> bool {
    let cols = w.len();
    if let Some(b_row) = b_row {
        let acc = &mut acc[..cols];
        // Register blocking: N accumulators stay in registers for the whole k loop instead of
        // going to memory once per k. Each element still sees the FMA chain k = 0, 1, … in
        // order, so the result is unchanged. The block is a fixed-size array so the compiler
        // keeps it in vector registers (a variable-length block lived on the stack: a load, an
        // FMA and a store per k, bound by store-to-load forwarding).
        // A's rows for a block come from `panel`, packed k-major (N contiguous floats per k):
        // read straight from A, rows `a_stride` floats apart alias in the L1 cache.
        let r = b_row.len();
        let mut c0 = 0;
        while c0 + N <= cols {
            let mut regs = [0f32; N];
            let blk = &panel[c0 / N * r * N..(c0 / N + 1) * r * N];
            for (&bk, a_row) in b_row.iter().zip(blk.chunks_exact(N)) {
                let a_row: &[f32; N] = a_row.try_into().expect("chunks of N elements");
                for j in 0..N {
                    regs[j] = bk.mul_add(a_row[j], regs[j]);
                }
            }
            acc[c0..c0 + N].copy_from_slice(&regs);
            c0 += N;
        }
        // The last columns (fewer than N), one vector at a time.
        while c0 < cols {
            let n = 16.min(cols - c0);
            let mut regs = [0f32; 16];
            for (k, &bk) in b_row.iter().enumerate() {
                let a_row = &a[k * a_stride + c0..k * a_stride + c0 + n];
                for (x, &ai) in regs[..n].iter_mut().zip(a_row) {
                    *x = bk.mul_add(ai, *x);
                }
            }
            acc[c0..c0 + n].copy_from_slice(&regs[..n]);
            c0 += n;
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

/// The row kernel compiled for one instruction set (`target_feature` needs a function per set).
macro_rules! row_for {
    ($name:ident, $features:literal, $block:literal) => {
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)] // as `row_body`: the kernel's operands

        unsafe fn $name(
            w: &mut [f32],
            acc: &mut [f32],
            a: &[f32],
            a_stride: usize,
            panel: &[f32],
            b_row: Option<&[f32]>,
            scale: f32,
            delta_dtype: FloatDtype,
            out_dtype: FloatDtype,
            out: &mut [u8],
        ) -> bool {
            row_body::<$block>(
                w,
                acc,
                a,
                a_stride,
                panel,
                b_row,
                scale,
                delta_dtype,
                out_dtype,
                out,
            )
        }
    };
}

// 8 vectors of 16: enough independent FMA chains to cover the FMA latency on 2 ports.
row_for!(row_avx512, "avx512f,avx512bw,avx512vl,avx2,fma", 128);
// 8 vectors of 8 (16 ymm registers in all: 8 accumulators, the rest for A).
row_for!(row_avx2, "avx2,fma", 64);

pub use crate::sys::Isa;

/// Columns per register block of the row kernel compiled for `isa`.
pub fn block(isa: Isa) -> usize {
    match isa {
        Isa::Portable => 16,
        Isa::Avx2 => 64,
        Isa::Avx512 => 128,
    }
}

fn has_avx2_fma() -> bool {
    Isa::detect() != Isa::Portable
}

/// Runs the row kernel compiled for `isa` (which must be one of [`Isa::available`]) on one row
/// segment of `w.len()` columns; `a` starts at the segment's first column of `A`'s row 0 and
/// `a_stride` is `A`'s row length; `panel` holds the segment's whole blocks of
/// [`block`] columns of A packed by [`pack_panel`] (starting at the segment's first block).
#[allow(clippy::too_many_arguments)] // as `row_body`: the kernel's operands
pub fn row(
    w: &mut [f32],
    acc: &mut [f32],
    a: &[f32],
    a_stride: usize,
    panel: &[f32],
    b_row: Option<&[f32]>,
    scale: f32,
    delta_dtype: FloatDtype,
    out_dtype: FloatDtype,
    out: &mut [u8],
    isa: Isa,
) -> bool {
    match isa {
        // SAFETY: `isa` comes from `Isa::detect`/`available`, so the CPU has these features.
        Isa::Avx512 => unsafe { row_avx512(w, acc, a, a_stride, panel, b_row, scale, delta_dtype, out_dtype, out) },
        // SAFETY: as above.
        Isa::Avx2 => unsafe { row_avx2(w, acc, a, a_stride, panel, b_row, scale, delta_dtype, out_dtype, out) },
        Isa::Portable => row_body::<16>(w, acc, a, a_stride, panel, b_row, scale, delta_dtype, out_dtype, out),
    }
}

/// Packs A (`r` rows of `cols`) for the row kernel: each whole block of `block` columns becomes
/// `r` runs of `block` contiguous floats (k-major), blocks one after another.
pub fn pack_panel(a: &[f32], r: usize, cols: usize, block: usize) -> Vec<f32> {
    let blocks = cols / block;
    let mut p = Vec::with_capacity(blocks * r * block);
    for b in 0..blocks {
        for k in 0..r {
            p.extend_from_slice(&a[k * cols + b * block..k * cols + (b + 1) * block]);
        }
    }
    p
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
