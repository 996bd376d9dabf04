//! The k-quant searches (`kquant_simd.rs`) on sixteen lanes with AVX-512: two Q4_K/Q5_K
//! super-blocks, or one Q6_K/Q2_K super-block, per call; the primitives (masks in mask
//! registers) and the [`Search`] that uses them.
#![expect(unsafe_code)]

use std::arch::x86_64::*;

use super::kquant_lanes::Search;

type V = __m512;
type I = __m512i;
type Mask = __mmask16;

macro_rules! prim {
    ($($name:ident($($a:ident: $t:ty),*) -> $r:ty $body:block)*) => {$(
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
        fn $name($($a: $t),*) -> $r $body
    )*};
}

prim! {
    splat(x: f32) -> V { _mm512_set1_ps(x) }
    add(a: V, b: V) -> V { _mm512_add_ps(a, b) }
    sub(a: V, b: V) -> V { _mm512_sub_ps(a, b) }
    mul(a: V, b: V) -> V { _mm512_mul_ps(a, b) }
    div(a: V, b: V) -> V { _mm512_div_ps(a, b) }
    vmin(v: V, m: V) -> V { _mm512_min_ps(v, m) }
    vmax(v: V, m: V) -> V { _mm512_max_ps(v, m) }
    gt(a: V, b: V) -> Mask { _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, b) }
    eq(a: V, b: V) -> Mask { _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, b) }
    lt(a: V, b: V) -> Mask { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b) }
    ne(a: V, b: V) -> Mask { _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(a, b) }
    both(a: Mask, b: Mask) -> Mask { a & b }
    sel(m: Mask, a: V, b: V) -> V { _mm512_mask_blend_ps(m, b, a) }
    cvt(q: I) -> V { _mm512_cvtepi32_ps(q) }
    addi(q: I, n: i32) -> I { _mm512_add_epi32(q, _mm512_set1_epi32(n)) }
    zero_where(m: Mask, q: I) -> I { _mm512_maskz_mov_epi32(!m, q) }
    abs(v: V) -> V { _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fff_ffff))) }
    neg(v: V) -> V { _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), _mm512_set1_epi32(i32::MIN))) }
    nearest(v: V) -> I {
        let t = _mm512_castps_si512(_mm512_add_ps(v, _mm512_set1_ps(12_582_912.0)));
        _mm512_sub_epi32(_mm512_and_si512(t, _mm512_set1_epi32(0x007f_ffff)), _mm512_set1_epi32(0x0040_0000))
    }
    clamp(q: I, lo: i32, hi: i32) -> I {
        _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(lo)), _mm512_set1_epi32(hi))
    }
    ld(a: &[f32; 16]) -> V {
        // SAFETY: sixteen f32s; loadu has no alignment requirement.
        unsafe { _mm512_loadu_ps(a.as_ptr()) }
    }
    st(v: V) -> [f32; 16] {
        let mut a = [0f32; 16];
        // SAFETY: sixteen f32s; storeu has no alignment requirement.
        unsafe { _mm512_storeu_ps(a.as_mut_ptr(), v) };
        a
    }
    sti(v: I) -> [i32; 16] {
        let mut a = [0i32; 16];
        // SAFETY: sixteen i32s; storeu has no alignment requirement.
        unsafe { _mm512_storeu_si512(a.as_mut_ptr().cast(), v) };
        a
    }
}

super::kquant_simd::simd_searches!("avx512f,avx512bw,avx512vl,avx2", 16);

/// The searches with these intrinsics (sixteen lanes), and AVX2's for eight.
pub(crate) struct Avx512;

impl Search for Avx512 {
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
