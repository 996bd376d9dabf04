//! The lane-parallel k-quant searches of `kquant_lanes.rs` written once for every SIMD width:
//! [`simd_searches!`] expands to `qkx2` and `qx` over whatever vector primitives the invoking
//! module defines (`kquant_avx2.rs`: eight lanes; `kquant_avx512.rs`: sixteen, masks in mask
//! registers). Operation for operation the generic (and so the scalar) code: each `_ps` op is
//! the IEEE f32 operation of one lane, the selects keep the scalar comparisons (including which
//! way NaN and -0 go), and there is no fused multiply-add. The compiler's own vectorization of
//! the generic loops stays at four lanes and branches on the masks, hence the intrinsics.
//!
//! The primitives, by name: `V` (f32 lanes), `I` (i32 lanes), `Mask`; `splat`, `ld`, `st`, `sti`;
//! `add`, `sub`, `mul`, `div`; `vmin(v, m)` = `v < m ? v : m` and `vmax(v, m)` = `v > m ? v : m`
//! (the old value where either is NaN); `gt`, `eq`, `lt` (ordered) and `ne` (unordered); `both`
//! (and of masks); `sel(m, a, b)` = `m ? a : b`; `nearest` (ggml's `nearest_int`), `clamp`,
//! `cvt` (i32 → f32), `addi`; `zero_where(m, q)`; `abs`; `neg` (the sign bit flipped).

/// `qkx2` and `qx` for `$lanes` lanes, compiled with `$feat`.
macro_rules! simd_searches {
    ($feat:literal, $lanes:literal) => {
        /// `kquant_lanes::qkx2` on these lanes, `M` values each.
        #[inline]
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)] // the scalar function's parameters
        pub(crate) fn qkx2<const M: usize>(
            xt: &[[f32; $lanes]; M],
            wt: &[[f32; $lanes]; M],
            nmax: i32,
            rmin: f32,
            rdelta: f32,
            nstep: i32,
            use_mad: bool,
            l: &mut [[u8; $lanes]; M],
        ) -> ([f32; $lanes], [f32; $lanes]) {
            let zero = splat(0.0);
            let mut min = ld(&xt[0]);
            let mut max = min;
            let mut sum_w = ld(&wt[0]);
            let mut sum_x = mul(sum_w, min);
            for i in 1..M {
                let (v, w) = (ld(&xt[i]), ld(&wt[i]));
                min = vmin(v, min);
                max = vmax(v, max);
                sum_w = add(sum_w, w);
                sum_x = add(sum_x, mul(w, v));
            }
            min = sel(gt(min, zero), zero, min);
            let flat = eq(max, min);
            let flat_min = min;
            let mut iscale = div(splat(nmax as f32), sub(max, min));
            let mut scale = div(splat(1.0), iscale);
            // The codes are a function of (iscale, min) at the step that made them: the winning
            // pair is kept and the codes computed once at the end.
            let mut code_iscale = iscale;
            let mut code_min = min;
            let err = |d: V| if use_mad { abs(d) } else { mul(d, d) };
            let mut best_error = zero;
            for i in 0..M {
                let x = ld(&xt[i]);
                let q = cvt(clamp(nearest(mul(iscale, sub(x, min))), 0, nmax));
                let diff = sub(add(mul(scale, q), min), x);
                best_error = add(best_error, mul(ld(&wt[i]), err(diff)));
            }
            let mut laux = [zero; M];
            // The scalar function returns before the search when nstep < 1.
            for is in (0..=nstep).filter(|_| nstep >= 1) {
                iscale = div(splat(rmin + rdelta * is as f32 + nmax as f32), sub(max, min));
                let (mut sum_l, mut sum_l2, mut sum_xl) = (zero, zero, zero);
                for i in 0..M {
                    let x = ld(&xt[i]);
                    let lf = cvt(clamp(nearest(mul(iscale, sub(x, min))), 0, nmax));
                    laux[i] = lf;
                    let wl = mul(ld(&wt[i]), lf);
                    sum_l = add(sum_l, wl);
                    sum_l2 = add(sum_l2, mul(wl, lf));
                    sum_xl = add(sum_xl, mul(wl, x));
                }
                let d = sub(mul(sum_w, sum_l2), mul(sum_l, sum_l));
                let ok = gt(d, zero);
                let ts = div(sub(mul(sum_w, sum_xl), mul(sum_x, sum_l)), d);
                let tm = div(sub(mul(sum_l2, sum_x), mul(sum_l, sum_xl)), d);
                let pos = gt(tm, zero);
                let this_min = sel(pos, zero, tm);
                let this_scale = sel(pos, div(sum_xl, sum_l2), ts);
                let mut cur = zero;
                for i in 0..M {
                    let diff = sub(add(mul(this_scale, laux[i]), this_min), ld(&xt[i]));
                    cur = add(cur, mul(ld(&wt[i]), err(diff)));
                }
                let better = both(ok, lt(cur, best_error));
                best_error = sel(better, cur, best_error);
                scale = sel(better, this_scale, scale);
                code_iscale = sel(better, iscale, code_iscale);
                code_min = sel(better, min, code_min);
                min = sel(better, this_min, min);
            }
            for (lrow, row) in l.iter_mut().zip(xt) {
                let q = clamp(nearest(mul(code_iscale, sub(ld(row), code_min))), 0, nmax);
                for (o, q) in lrow.iter_mut().zip(sti(zero_where(flat, q))) {
                    *o = q as u8;
                }
            }
            scale = sel(flat, zero, scale);
            min = sel(flat, flat_min, min);
            (st(scale), st(neg(min)))
        }

        /// `kquant_lanes::qx` on these lanes, `M` values each.
        #[inline]
        #[target_feature(enable = $feat)]
        pub(crate) fn qx<const M: usize>(xt: &[[f32; $lanes]; M], nmax: i32, l: &mut [[i8; $lanes]; M]) -> [f32; $lanes] {
            let zero = splat(0.0);
            let (mut amax, mut max) = (zero, zero);
            for row in xt {
                let v = ld(row);
                let bigger = gt(abs(v), amax);
                amax = sel(bigger, abs(v), amax);
                max = sel(bigger, v, max);
            }
            let nmaxf = nmax as f32;
            let (lo, hi) = (-nmax, nmax - 1);
            let sums = |iscale: V| {
                let (mut sumlx, mut suml2) = (zero, zero);
                for row in xt {
                    let x = ld(row);
                    let lf = cvt(clamp(nearest(mul(iscale, x)), lo, hi));
                    let w = mul(x, x);
                    sumlx = add(sumlx, mul(mul(w, x), lf));
                    suml2 = add(suml2, mul(mul(w, lf), lf));
                }
                (sumlx, suml2)
            };
            let iscale0 = div(splat(-nmaxf), max);
            let (sumlx, suml2) = sums(iscale0);
            let mut scale = sel(ne(suml2, zero), div(sumlx, suml2), zero);
            let mut best = mul(scale, sumlx);
            // The codes are computed once, from the winning iscale.
            let mut best_iscale = iscale0;
            for is in -9i32..=9 {
                if is == 0 {
                    continue;
                }
                let iscale = div(splat(-(nmaxf + 0.1 * is as f32)), max);
                let (sumlx, suml2) = sums(iscale);
                let win = both(gt(suml2, zero), gt(mul(sumlx, sumlx), mul(best, suml2)));
                best_iscale = sel(win, iscale, best_iscale);
                scale = sel(win, div(sumlx, suml2), scale);
                best = sel(win, mul(scale, sumlx), best);
            }
            // ggml's sub-blocks with all values below this are all zero.
            let tiny = lt(amax, splat(1e-15));
            for (lrow, row) in l.iter_mut().zip(xt) {
                let q = clamp(nearest(mul(best_iscale, ld(row))), lo, hi);
                for (o, q) in lrow.iter_mut().zip(sti(zero_where(tiny, addi(q, nmax)))) {
                    *o = q as i8;
                }
            }
            st(sel(tiny, zero, scale))
        }
    };
}

pub(crate) use simd_searches;
