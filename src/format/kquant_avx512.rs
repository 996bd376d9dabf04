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
    // Measured: four Q4_K blocks' searches interleaved as two halves take 14% less time than
    // two sixteen-lane calls (`thirty_two_interleaved_lanes_are_two_sixteen_lane_searches`).
    const WIDER: bool = true;

    #[inline(always)]
    fn qkx2_32<const M: usize>(
        xt: &[[f32; 32]; M],
        wt: &[[f32; 32]; M],
        nmax: i32,
        rmin: f32,
        rdelta: f32,
        nstep: i32,
        use_mad: bool,
        l: &mut [[u8; 32]; M],
    ) -> ([f32; 32], [f32; 32]) {
        // SAFETY: as for `qkx2_16` below.
        unsafe { wide::qkx2(xt, wt, nmax, rmin, rdelta, nstep, use_mad, l) }
    }

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
    fn qx_32<const M: usize>(xt: &[[f32; 32]; M], nmax: i32, l: &mut [[i8; 32]; M]) -> [f32; 32] {
        // SAFETY: as for `qkx2_16`.
        unsafe { wide::qx(xt, nmax, l) }
    }

    #[inline(always)]
    fn qx_16<const M: usize>(xt: &[[f32; 16]; M], nmax: i32, l: &mut [[i8; 16]; M]) -> [f32; 16] {
        // SAFETY: as above.
        unsafe { qx(xt, nmax, l) }
    }
}

/// The same searches on thirty-two lanes: two sixteen-lane halves whose instructions are
/// interleaved, so one half's additions wait out the other's latency (the sums of a lane are a
/// chain of dependent additions, and the next step waits for this step's error).
pub(crate) mod wide {
    #![expect(unsafe_code)]

    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(super) struct V(__m512, __m512);
    #[derive(Clone, Copy)]
    pub(super) struct I(__m512i, __m512i);
    /// Lanes 0-15 in the low half.
    type Mask = u32;

    macro_rules! prim {
        ($($name:ident($($a:ident: $t:ty),*) -> $r:ty $body:block)*) => {$(
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
            fn $name($($a: $t),*) -> $r $body
        )*};
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
    fn m2(lo: __mmask16, hi: __mmask16) -> Mask {
        lo as u32 | (hi as u32) << 16
    }

    prim! {
        splat(x: f32) -> V { V(_mm512_set1_ps(x), _mm512_set1_ps(x)) }
        add(a: V, b: V) -> V { V(_mm512_add_ps(a.0, b.0), _mm512_add_ps(a.1, b.1)) }
        sub(a: V, b: V) -> V { V(_mm512_sub_ps(a.0, b.0), _mm512_sub_ps(a.1, b.1)) }
        mul(a: V, b: V) -> V { V(_mm512_mul_ps(a.0, b.0), _mm512_mul_ps(a.1, b.1)) }
        div(a: V, b: V) -> V { V(_mm512_div_ps(a.0, b.0), _mm512_div_ps(a.1, b.1)) }
        vmin(v: V, m: V) -> V { V(_mm512_min_ps(v.0, m.0), _mm512_min_ps(v.1, m.1)) }
        vmax(v: V, m: V) -> V { V(_mm512_max_ps(v.0, m.0), _mm512_max_ps(v.1, m.1)) }
        gt(a: V, b: V) -> Mask {
            m2(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(a.0, b.0), _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a.1, b.1))
        }
        eq(a: V, b: V) -> Mask {
            m2(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a.0, b.0), _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a.1, b.1))
        }
        lt(a: V, b: V) -> Mask {
            m2(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(a.0, b.0), _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a.1, b.1))
        }
        ne(a: V, b: V) -> Mask {
            m2(_mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(a.0, b.0), _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(a.1, b.1))
        }
        both(a: Mask, b: Mask) -> Mask { a & b }
        sel(m: Mask, a: V, b: V) -> V {
            V(_mm512_mask_blend_ps(m as u16, b.0, a.0), _mm512_mask_blend_ps((m >> 16) as u16, b.1, a.1))
        }
        cvt(q: I) -> V { V(_mm512_cvtepi32_ps(q.0), _mm512_cvtepi32_ps(q.1)) }
        addi(q: I, n: i32) -> I {
            I(_mm512_add_epi32(q.0, _mm512_set1_epi32(n)), _mm512_add_epi32(q.1, _mm512_set1_epi32(n)))
        }
        zero_where(m: Mask, q: I) -> I {
            I(_mm512_maskz_mov_epi32(!(m as u16), q.0), _mm512_maskz_mov_epi32(!((m >> 16) as u16), q.1))
        }
        abs(v: V) -> V {
            let k = _mm512_set1_epi32(0x7fff_ffff);
            let f = |x: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), k));
            V(f(v.0), f(v.1))
        }
        neg(v: V) -> V {
            let k = _mm512_set1_epi32(i32::MIN);
            let f = |x: __m512| _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), k));
            V(f(v.0), f(v.1))
        }
        nearest(v: V) -> I {
            let (magic, mask, off) = (_mm512_set1_ps(12_582_912.0), _mm512_set1_epi32(0x007f_ffff), _mm512_set1_epi32(0x0040_0000));
            let f = |x: __m512| {
                let t = _mm512_castps_si512(_mm512_add_ps(x, magic));
                _mm512_sub_epi32(_mm512_and_si512(t, mask), off)
            };
            I(f(v.0), f(v.1))
        }
        clamp(q: I, lo: i32, hi: i32) -> I {
            let (l, h) = (_mm512_set1_epi32(lo), _mm512_set1_epi32(hi));
            I(_mm512_min_epi32(_mm512_max_epi32(q.0, l), h), _mm512_min_epi32(_mm512_max_epi32(q.1, l), h))
        }
        ld(a: &[f32; 32]) -> V {
            // SAFETY: thirty-two f32s; loadu has no alignment requirement.
            unsafe { V(_mm512_loadu_ps(a.as_ptr()), _mm512_loadu_ps(a.as_ptr().add(16))) }
        }
        st(v: V) -> [f32; 32] {
            let mut a = [0f32; 32];
            // SAFETY: thirty-two f32s; storeu has no alignment requirement.
            unsafe {
                _mm512_storeu_ps(a.as_mut_ptr(), v.0);
                _mm512_storeu_ps(a.as_mut_ptr().add(16), v.1);
            }
            a
        }
        sti(v: I) -> [i32; 32] {
            let mut a = [0i32; 32];
            // SAFETY: thirty-two i32s; storeu has no alignment requirement.
            unsafe {
                _mm512_storeu_si512(a.as_mut_ptr().cast(), v.0);
                _mm512_storeu_si512(a.as_mut_ptr().add(16).cast(), v.1);
            }
            a
        }
    }

    super::super::kquant_simd::simd_searches!("avx512f,avx512bw,avx512vl,avx2", 32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::Isa;

    fn rows32(seed: u32) -> ([[f32; 32]; 32], [[f32; 32]; 32]) {
        let mut s = seed;
        let mut r = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let x: [[f32; 32]; 32] = std::array::from_fn(|_| std::array::from_fn(|_| r()));
        let w: [[f32; 32]; 32] = std::array::from_fn(|i| std::array::from_fn(|k| 0.1 + x[i][k].abs()));
        (x, w)
    }

    #[test]
    fn thirty_two_interleaved_lanes_are_two_sixteen_lane_searches() {
        if Isa::detect() != Isa::Avx512 {
            return;
        }
        let (x, w) = rows32(7);
        let half = |h: usize| -> ([[f32; 16]; 32], [[f32; 16]; 32]) {
            (
                std::array::from_fn(|i| std::array::from_fn(|k| x[i][16 * h + k])),
                std::array::from_fn(|i| std::array::from_fn(|k| w[i][16 * h + k])),
            )
        };
        let mut l32 = [[0u8; 32]; 32];
        // SAFETY: AVX-512 detected above.
        let wide_out = unsafe { wide::qkx2(&x, &w, 15, -1.0, 0.1, 20, false, &mut l32) };
        let mut narrow = Vec::new();
        for h in 0..2 {
            let (xh, wh) = half(h);
            let mut l16 = [[0u8; 16]; 32];
            // SAFETY: as above.
            let (s, m) = unsafe { qkx2(&xh, &wh, 15, -1.0, 0.1, 20, false, &mut l16) };
            narrow.push((s, m, l16));
        }
        for (h, (s, m, l16)) in narrow.iter().enumerate() {
            assert_eq!(s[..], wide_out.0[16 * h..16 * h + 16]);
            assert_eq!(m[..], wide_out.1[16 * h..16 * h + 16]);
            for i in 0..32 {
                assert_eq!(l16[i][..], l32[i][16 * h..16 * h + 16]);
            }
        }
    }
}
