//! The lane-parallel k-quant searches of `kquant_lanes.rs` for sixteen lanes with AVX-512: two
//! Q4_K/Q5_K super-blocks, or one Q6_K/Q2_K super-block, per call. The same operations as
//! `kquant_avx2.rs` on twice the lanes (masks in mask registers); the same bytes.
#![expect(unsafe_code)]

use std::arch::x86_64::*;

/// ggml's `nearest_int` on sixteen lanes: add 1.5 · 2^23, keep the low mantissa bits.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn nearest(v: __m512) -> __m512i {
    let t = _mm512_castps_si512(_mm512_add_ps(v, _mm512_set1_ps(12_582_912.0)));
    _mm512_sub_epi32(
        _mm512_and_si512(t, _mm512_set1_epi32(0x007f_ffff)),
        _mm512_set1_epi32(0x0040_0000),
    )
}

/// `clamp(q, lo, hi)` on i32 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn clamp(q: __m512i, lo: i32, hi: i32) -> __m512i {
    _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(lo)), _mm512_set1_epi32(hi))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn abs(v: __m512) -> __m512 {
    _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fff_ffff)))
}

/// `m ? a : b` per lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn sel(m: __mmask16, a: __m512, b: __m512) -> __m512 {
    _mm512_mask_blend_ps(m, b, a)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn ld(a: &[f32; 16]) -> __m512 {
    // SAFETY: `a` is sixteen f32s; loadu has no alignment requirement.
    unsafe { _mm512_loadu_ps(a.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn st(v: __m512) -> [f32; 16] {
    let mut a = [0f32; 16];
    // SAFETY: `a` holds sixteen f32s; storeu has no alignment requirement.
    unsafe { _mm512_storeu_ps(a.as_mut_ptr(), v) };
    a
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn sti(v: __m512i) -> [i32; 16] {
    let mut a = [0i32; 16];
    // SAFETY: `a` holds sixteen i32s; storeu has no alignment requirement.
    unsafe { _mm512_storeu_si512(a.as_mut_ptr().cast(), v) };
    a
}

/// `kquant_lanes::qkx2` for sixteen lanes of `M` values.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
#[allow(clippy::too_many_arguments)] // the scalar function's parameters
pub(crate) fn qkx2<const M: usize>(
    xt: &[[f32; 16]; M],
    wt: &[[f32; 16]; M],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
    l: &mut [[u8; 16]; M],
) -> ([f32; 16], [f32; 16]) {
    let zero = _mm512_setzero_ps();
    let mut min = ld(&xt[0]);
    let mut max = min;
    let mut sum_w = ld(&wt[0]);
    let mut sum_x = _mm512_mul_ps(sum_w, min);
    for i in 1..M {
        let v = ld(&xt[i]);
        let w = ld(&wt[i]);
        // (v < min) ? v : min and (v > max) ? v : max, NaN keeping the old value.
        min = _mm512_min_ps(v, min);
        max = _mm512_max_ps(v, max);
        sum_w = _mm512_add_ps(sum_w, w);
        sum_x = _mm512_add_ps(sum_x, _mm512_mul_ps(w, v));
    }
    min = sel(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(min, zero), zero, min);
    let flat = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(max, min);
    let flat_min = min;
    let nmaxf = _mm512_set1_ps(nmax as f32);
    let mut iscale = _mm512_div_ps(nmaxf, _mm512_sub_ps(max, min));
    let mut scale = _mm512_div_ps(_mm512_set1_ps(1.0), iscale);
    let mut code_iscale = iscale;
    let mut code_min = min;
    let err = |d: __m512| if use_mad { abs(d) } else { _mm512_mul_ps(d, d) };
    let mut best_error = zero;
    for i in 0..M {
        let x = ld(&xt[i]);
        let q = _mm512_cvtepi32_ps(clamp(nearest(_mm512_mul_ps(iscale, _mm512_sub_ps(x, min))), 0, nmax));
        let diff = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(scale, q), min), x);
        best_error = _mm512_add_ps(best_error, _mm512_mul_ps(ld(&wt[i]), err(diff)));
    }
    let mut laux = [_mm512_setzero_ps(); M];
    for is in (0..=nstep).filter(|_| nstep >= 1) {
        let c = _mm512_set1_ps(rmin + rdelta * is as f32 + nmax as f32);
        iscale = _mm512_div_ps(c, _mm512_sub_ps(max, min));
        let (mut sum_l, mut sum_l2, mut sum_xl) = (zero, zero, zero);
        for i in 0..M {
            let x = ld(&xt[i]);
            let lf = _mm512_cvtepi32_ps(clamp(nearest(_mm512_mul_ps(iscale, _mm512_sub_ps(x, min))), 0, nmax));
            laux[i] = lf;
            let wl = _mm512_mul_ps(ld(&wt[i]), lf);
            sum_l = _mm512_add_ps(sum_l, wl);
            sum_l2 = _mm512_add_ps(sum_l2, _mm512_mul_ps(wl, lf));
            sum_xl = _mm512_add_ps(sum_xl, _mm512_mul_ps(wl, x));
        }
        let d = _mm512_sub_ps(_mm512_mul_ps(sum_w, sum_l2), _mm512_mul_ps(sum_l, sum_l));
        let ok = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(d, zero);
        let ts = _mm512_div_ps(_mm512_sub_ps(_mm512_mul_ps(sum_w, sum_xl), _mm512_mul_ps(sum_x, sum_l)), d);
        let tm = _mm512_div_ps(_mm512_sub_ps(_mm512_mul_ps(sum_l2, sum_x), _mm512_mul_ps(sum_l, sum_xl)), d);
        let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(tm, zero);
        let this_min = sel(pos, zero, tm);
        let this_scale = sel(pos, _mm512_div_ps(sum_xl, sum_l2), ts);
        let mut cur = zero;
        for i in 0..M {
            let diff = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(this_scale, laux[i]), this_min), ld(&xt[i]));
            cur = _mm512_add_ps(cur, _mm512_mul_ps(ld(&wt[i]), err(diff)));
        }
        let better = ok & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(cur, best_error);
        best_error = sel(better, cur, best_error);
        scale = sel(better, this_scale, scale);
        code_iscale = sel(better, iscale, code_iscale);
        code_min = sel(better, min, code_min);
        min = sel(better, this_min, min);
    }
    for i in 0..M {
        let q = clamp(nearest(_mm512_mul_ps(code_iscale, _mm512_sub_ps(ld(&xt[i]), code_min))), 0, nmax);
        let q = sti(_mm512_maskz_mov_epi32(!flat, q));
        for k in 0..16 {
            l[i][k] = q[k] as u8;
        }
    }
    scale = sel(flat, zero, scale);
    min = sel(flat, flat_min, min);
    (st(scale), st(_mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(min), _mm512_set1_epi32(i32::MIN)))))
}

/// ggml's sub-blocks with all values below this are all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// `kquant_lanes::qx` for sixteen lanes of `M` values.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
pub(crate) fn qx<const M: usize>(xt: &[[f32; 16]; M], nmax: i32, l: &mut [[i8; 16]; M]) -> [f32; 16] {
    let zero = _mm512_setzero_ps();
    let (mut amax, mut max) = (zero, zero);
    for row in xt {
        let v = ld(row);
        let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(abs(v), amax);
        amax = sel(gt, abs(v), amax);
        max = sel(gt, v, max);
    }
    let nmaxf = nmax as f32;
    let (lo, hi) = (-nmax, nmax - 1);
    let sums = |iscale: __m512| {
        let (mut sumlx, mut suml2) = (zero, zero);
        for row in xt {
            let x = ld(row);
            let lf = _mm512_cvtepi32_ps(clamp(nearest(_mm512_mul_ps(iscale, x)), lo, hi));
            let w = _mm512_mul_ps(x, x);
            sumlx = _mm512_add_ps(sumlx, _mm512_mul_ps(_mm512_mul_ps(w, x), lf));
            suml2 = _mm512_add_ps(suml2, _mm512_mul_ps(_mm512_mul_ps(w, lf), lf));
        }
        (sumlx, suml2)
    };
    let iscale0 = _mm512_div_ps(_mm512_set1_ps(-nmaxf), max);
    let (sumlx, suml2) = sums(iscale0);
    let nz = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(suml2, zero);
    let mut scale = sel(nz, _mm512_div_ps(sumlx, suml2), zero);
    let mut best = _mm512_mul_ps(scale, sumlx);
    let mut best_iscale = iscale0;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let iscale = _mm512_div_ps(_mm512_set1_ps(-(nmaxf + 0.1 * is as f32)), max);
        let (sumlx, suml2) = sums(iscale);
        let win = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(suml2, zero)
            & _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_mul_ps(sumlx, sumlx), _mm512_mul_ps(best, suml2));
        best_iscale = sel(win, iscale, best_iscale);
        scale = sel(win, _mm512_div_ps(sumlx, suml2), scale);
        best = sel(win, _mm512_mul_ps(scale, sumlx), best);
    }
    let tiny = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(amax, _mm512_set1_ps(GROUP_MAX_EPS));
    for (lrow, row) in l.iter_mut().zip(xt) {
        let q = clamp(nearest(_mm512_mul_ps(best_iscale, ld(row))), lo, hi);
        let q = sti(_mm512_maskz_mov_epi32(!tiny, _mm512_add_epi32(q, _mm512_set1_epi32(nmax))));
        for k in 0..16 {
            lrow[k] = q[k] as i8;
        }
    }
    st(sel(tiny, zero, scale))
}

/// The searches with these intrinsics (sixteen lanes), and AVX2's for eight.
pub(crate) struct Avx512;

impl super::kquant_lanes::Search for Avx512 {
    const WIDE: bool = true;

    #[inline(always)]
    fn qkx2_8<const M: usize>(
        xt: &[[f32; 8]; M],
        wt: &[[f32; 8]; M],
        nmax: i32,
        rmin: f32,
        rdelta: f32,
        nstep: i32,
        use_mad: bool,
        l: &mut [[u8; 8]; M],
    ) -> ([f32; 8], [f32; 8]) {
        <super::kquant_avx2::Avx2 as super::kquant_lanes::Search>::qkx2_8(xt, wt, nmax, rmin, rdelta, nstep, use_mad, l)
    }

    #[inline(always)]
    fn qx_8<const M: usize>(xt: &[[f32; 8]; M], nmax: i32, l: &mut [[i8; 8]; M]) -> [f32; 8] {
        <super::kquant_avx2::Avx2 as super::kquant_lanes::Search>::qx_8(xt, nmax, l)
    }

    #[inline(always)]
    fn qkx2_16<const M: usize>(
        xt: &[[f32; 16]; M],
        wt: &[[f32; 16]; M],
        nmax: i32,
        rmin: f32,
        rdelta: f32,
        nstep: i32,
        use_mad: bool,
        l: &mut [[u8; 16]; M],
    ) -> ([f32; 16], [f32; 16]) {
        // SAFETY: `Avx512` is only used by the row encoder compiled with AVX-512 enabled
        // (`ggml_rows`), which runs only where `Isa::detect` found it.
        unsafe { qkx2(xt, wt, nmax, rmin, rdelta, nstep, use_mad, l) }
    }

    #[inline(always)]
    fn qx_16<const M: usize>(xt: &[[f32; 16]; M], nmax: i32, l: &mut [[i8; 16]; M]) -> [f32; 16] {
        // SAFETY: as above.
        unsafe { qx(xt, nmax, l) }
    }
}
