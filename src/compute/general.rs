//! The general merge path (CPU): chains of updates, transposed factors (embedding LoRA,
//! Conv1D), bias updates, DoRA row scaling and replaced rows. The plain Linear LoRA goes
//! through a [`super::Backend`] instead; this path is the specification for everything else.
//!
//! Per output row `o`, with `w` the base row widened to f32:
//! ```text
//! for each delta j:   d = fl32(sum_k fma(coef[o,k], basis[k,i])) * scale  (sequential k)
//!                     d = round(d, round_delta)             when set (PEFT's `.to(dtype)`)
//!                     w = w + d ; if j is not the last: w = round(w, work_dtype)
//! DoRA:               n = f32(sqrt(sum f64(w)^2)) ; w = fl32(m[o] / n) * w
//! trainable tokens:   w = round(new_row, work_dtype)    for the listed rows
//! ```

use rayon::prelude::*;

use super::BaseRows;
use crate::format::dtype::FloatDtype;
use crate::format::dtype::{decode_into, round_through};

/// One update, with factors already decoded to f32 (transposes applied).
#[derive(Debug, Clone, Copy)]
pub struct DeltaRows<'a> {
    /// `[all rows, r]`, indexed by absolute row.
    pub coef: &'a [f32],
    /// `[r, cols]`.
    pub basis: &'a [f32],
    /// Inner dimension.
    pub r: usize,
    /// `fl32(s)`.
    pub scale: f32,
    /// Round the delta before the add.
    pub round_delta: Option<FloatDtype>,
}

/// Replaced rows: sorted `(row, index into the new rows)`, and the new rows `[len, cols]`.
pub type RowReplace<'a> = (&'a [(u64, usize)], &'a [f32]);

/// A tile for the general path.
#[derive(Debug, Clone, Copy)]
pub struct GeneralTile<'a> {
    /// First row.
    pub row0: u64,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Base rows.
    pub base: BaseRows<'a>,
    /// Updates in order.
    pub deltas: &'a [DeltaRows<'a>],
    /// DoRA magnitude for all rows.
    pub magnitude: Option<&'a [f32]>,
    /// Replaced rows: sorted `(row, index into new_rows)` and the new rows `[len, cols]`.
    pub replace: Option<RowReplace<'a>>,
    /// The weight's own dtype.
    pub work_dtype: FloatDtype,
}

/// Computes the tile's rows before the final rounding into `out` (`rows * cols` f32).
pub fn compute(tile: &GeneralTile<'_>, out: &mut [f32]) {
    let cols = tile.cols.max(1);
    out.par_chunks_mut(cols).enumerate().for_each(|(j, w)| {
        let o = tile.row0 as usize + j;
        match tile.base {
            BaseRows::Float { bytes, dtype } => {
                let s = dtype.size();
                decode_into(&bytes[j * cols * s..(j + 1) * cols * s], dtype, w);
            }
            BaseRows::Bnb(q) => q.decode(o as u64 * cols as u64, w),
        }
        let mut acc = vec![0f32; cols];
        let mut dora_v: Option<()> = None;
        for (n, d) in tile.deltas.iter().enumerate() {
            super::simd::accumulate(&mut acc, &d.coef[o * d.r..(o + 1) * d.r], d.basis);
            for (wi, &x) in w.iter_mut().zip(acc.iter()) {
                let mut delta = x * d.scale;
                if let Some(rd) = d.round_delta {
                    delta = round_through(delta, rd);
                }
                *wi += delta;
            }
            if n + 1 < tile.deltas.len() {
                w.iter_mut().for_each(|x| *x = round_through(*x, tile.work_dtype));
            }
            dora_v = Some(());
        }
        if let (Some(m), Some(())) = (tile.magnitude, dora_v) {
            let f = m[o] / torch_norm2(w);
            w.iter_mut().for_each(|x| *x *= f);
        }
        if let Some((idx, rows)) = tile.replace {
            if let Ok(p) = idx.binary_search_by_key(&(o as u64), |&(r, _)| r) {
                let src = idx[p].1;
                for (x, &v) in w.iter_mut().zip(&rows[src * cols..(src + 1) * cols]) {
                    *x = round_through(v, tile.work_dtype);
                }
            }
        }
    });
}

/// `torch.linalg.norm(v)` of an f32 row as torch's CPU kernel computes it (the vectorized
/// last-dim path of `norm_kernel_tensor_iterator_impl` with AVX2 `Vectorized<float>`): eight f32
/// lanes accumulate `x*x` (multiply, then add: no FMA), the lanes are summed left to right, the
/// tail is added one by one, and the square root is taken in f32. An f64 norm differs in the
/// last bit often enough to change a bf16 output (seen on the DoRA fixture).
pub fn torch_norm2(v: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0f32; LANES];
    let body = v.len() - v.len() % LANES;
    for chunk in v[..body].chunks_exact(LANES) {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += x * x;
        }
    }
    let mut total = acc[0];
    for a in &acc[1..] {
        total += *a;
    }
    for &x in &v[body..] {
        total += x * x;
    }
    total.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bias_update_adds_the_scaled_value_once() {
        let base: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let b = [0.5f32, -1.0, 0.25];
        let ones = [1.0f32];
        let d = [DeltaRows {
            coef: &b,
            basis: &ones,
            r: 1,
            scale: 2.0,
            round_delta: None,
        }];
        let t = GeneralTile {
            row0: 0,
            rows: 3,
            cols: 1,
            base: BaseRows::Float {
                bytes: &base,
                dtype: FloatDtype::F32,
            },
            deltas: &d,
            magnitude: None,
            replace: None,
            work_dtype: FloatDtype::F32,
        };
        let mut out = [0f32; 3];
        compute(&t, &mut out);
        assert_eq!(out, [2.0, 0.0, 3.5]);
    }

    #[test]
    fn dora_scales_rows_to_the_magnitude_and_tokens_replace_rows() {
        let base: Vec<u8> = [3.0f32, 4.0, 1.0, 0.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let coef = [0.0f32, 0.0];
        let basis = [0.0f32, 0.0];
        let d = [DeltaRows {
            coef: &coef,
            basis: &basis,
            r: 1,
            scale: 1.0,
            round_delta: None,
        }];
        let m = [10.0f32, 2.0];
        let t = GeneralTile {
            row0: 0,
            rows: 2,
            cols: 2,
            base: BaseRows::Float {
                bytes: &base,
                dtype: FloatDtype::F32,
            },
            deltas: &d,
            magnitude: Some(&m),
            replace: None,
            work_dtype: FloatDtype::F32,
        };
        let mut out = [0f32; 4];
        compute(&t, &mut out);
        assert_eq!(out, [6.0, 8.0, 2.0, 0.0]);
        let idx = [(1u64, 0usize)];
        let rows = [7.0f32, 9.0];
        let t = GeneralTile {
            magnitude: None,
            replace: Some((&idx, &rows)),
            ..t
        };
        compute(&t, &mut out);
        assert_eq!(out, [3.0, 4.0, 7.0, 9.0]);
    }
}
