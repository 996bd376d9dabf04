//! The k-quant searches (`kquant_simd.rs`) on eight lanes with AVX2: the primitives, and the
//! [`Search`] that uses them. Masks are all-ones lanes of a vector.
#![expect(unsafe_code)]

use std::arch::x86_64::*;

use super::kquant_lanes::Search;

type V = __m256;
type I = __m256i;
type Mask = __m256;

macro_rules! prim {
    ($($name:ident($($a:ident: $t:ty),*) -> $r:ty $body:block)*) => {$(
        #[inline]
        #[target_feature(enable = "avx2")]
        fn $name($($a: $t),*) -> $r $body
    )*};
}

prim! {
    splat(x: f32) -> V { _mm256_set1_ps(x) }
    add(a: V, b: V) -> V { _mm256_add_ps(a, b) }
    sub(a: V, b: V) -> V { _mm256_sub_ps(a, b) }
    mul(a: V, b: V) -> V { _mm256_mul_ps(a, b) }
    div(a: V, b: V) -> V { _mm256_div_ps(a, b) }
    vmin(v: V, m: V) -> V { _mm256_min_ps(v, m) }
    vmax(v: V, m: V) -> V { _mm256_max_ps(v, m) }
    gt(a: V, b: V) -> Mask { _mm256_cmp_ps::<_CMP_GT_OQ>(a, b) }
    eq(a: V, b: V) -> Mask { _mm256_cmp_ps::<_CMP_EQ_OQ>(a, b) }
    lt(a: V, b: V) -> Mask { _mm256_cmp_ps::<_CMP_LT_OQ>(a, b) }
    ne(a: V, b: V) -> Mask { _mm256_cmp_ps::<_CMP_NEQ_UQ>(a, b) }
    both(a: Mask, b: Mask) -> Mask { _mm256_and_ps(a, b) }
    sel(m: Mask, a: V, b: V) -> V { _mm256_blendv_ps(b, a, m) }
    cvt(q: I) -> V { _mm256_cvtepi32_ps(q) }
    addi(q: I, n: i32) -> I { _mm256_add_epi32(q, _mm256_set1_epi32(n)) }
    zero_where(m: Mask, q: I) -> I { _mm256_andnot_si256(_mm256_castps_si256(m), q) }
    abs(v: V) -> V { _mm256_castsi256_ps(_mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7fff_ffff))) }
    neg(v: V) -> V { _mm256_xor_ps(v, _mm256_set1_ps(-0.0)) }
    nearest(v: V) -> I {
        let t = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12_582_912.0)));
        _mm256_sub_epi32(_mm256_and_si256(t, _mm256_set1_epi32(0x007f_ffff)), _mm256_set1_epi32(0x0040_0000))
    }
    clamp(q: I, lo: i32, hi: i32) -> I {
        _mm256_min_epi32(_mm256_max_epi32(q, _mm256_set1_epi32(lo)), _mm256_set1_epi32(hi))
    }
    ld(a: &[f32; 8]) -> V {
        // SAFETY: eight f32s; loadu has no alignment requirement.
        unsafe { _mm256_loadu_ps(a.as_ptr()) }
    }
    st(v: V) -> [f32; 8] {
        let mut a = [0f32; 8];
        // SAFETY: eight f32s; storeu has no alignment requirement.
        unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
        a
    }
    sti(v: I) -> [i32; 8] {
        let mut a = [0i32; 8];
        // SAFETY: eight i32s; storeu has no alignment requirement.
        unsafe { _mm256_storeu_si256(a.as_mut_ptr().cast(), v) };
        a
    }
}

super::kquant_simd::simd_searches!("avx2", 8);

/// The searches with these intrinsics.
pub(crate) struct Avx2;

impl Search for Avx2 {
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
        // SAFETY: `Avx2` is only used by the row encoders compiled with AVX2 enabled
        // (`ggml_rows`), which run only where `Isa::detect` found it.
        unsafe { qkx2(xt, wt, nmax, rmin, rdelta, nstep, use_mad, l) }
    }

    #[inline(always)]
    fn qx_8<const M: usize>(xt: &[[f32; 8]; M], nmax: i32, l: &mut [[i8; 8]; M]) -> [f32; 8] {
        // SAFETY: as above.
        unsafe { qx(xt, nmax, l) }
    }
}
