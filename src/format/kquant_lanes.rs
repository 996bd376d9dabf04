//! The k-quant scale searches of `kquants.rs`, run on several sub-blocks at once: lane `k` of
//! every array is sub-block `k`, and each lane does exactly the scalar function's operations in
//! the scalar order (no fused multiply-add, the same sums in the same order, branches turned
//! into per-lane selects), so the bytes are the reference's. The sub-blocks of one super-block
//! are independent, which is where the parallel lanes come from: the reference quantizers are
//! sequential f32 code, and the sub-blocks are the only order-free dimension inside a block.
//! Plain loops over `[f32; N]`; compiled with AVX2 or AVX-512 enabled (`ggml_rows.rs`), each loop
//! body is one vector instruction.


/// `nearest_int`: round to nearest, ties to even, by adding 1.5 · 2^23 and reading the low
/// mantissa bits (valid for |x| ≤ 4194303).
#[inline(always)]
pub(crate) fn nearest_int(f: f32) -> i32 {
    let val = f + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}
/// `make_qkx2_quants` on `N` sub-blocks of `M` values (`xt[i][k]`: value `i` of sub-block `k`),
/// with their weights; codes into `l`. Returns each lane's scale and `-min`, as the scalar
/// function does.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the scalar function's parameters, lane by lane
pub(crate) fn qkx2<const N: usize, const M: usize>(
    xt: &[[f32; N]; M],
    wt: &[[f32; N]; M],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
    l: &mut [[u8; N]; M],
) -> ([f32; N], [f32; N]) {
    let mut min = xt[0];
    let mut max = xt[0];
    let mut sum_w = wt[0];
    let mut sum_x = [0f32; N];
    for k in 0..N {
        sum_x[k] = sum_w[k] * xt[0][k];
    }
    for i in 1..M {
        for k in 0..N {
            let v = xt[i][k];
            if v < min[k] {
                min[k] = v;
            }
            if v > max[k] {
                max[k] = v;
            }
            sum_w[k] += wt[i][k];
            sum_x[k] += wt[i][k] * v;
        }
    }
    let mut flat = [false; N];
    for k in 0..N {
        if min[k] > 0.0 {
            min[k] = 0.0;
        }
        flat[k] = max[k] == min[k];
    }
    let flat_min = min;
    let nmaxf = nmax as f32;
    let mut iscale = [0f32; N];
    let mut scale = [0f32; N];
    for k in 0..N {
        iscale[k] = nmaxf / (max[k] - min[k]);
        scale[k] = 1.0 / iscale[k];
    }
    // The codes are a function of (iscale, min) at the step that produced them: keep the
    // winning pair per lane and compute the codes once at the end, instead of copying 32 codes
    // per lane whenever a step wins.
    let mut code_iscale = iscale;
    let mut code_min = min;
    let mut best_error = [0f32; N];
    for i in 0..M {
        for k in 0..N {
            let q = nearest_int(iscale[k] * (xt[i][k] - min[k])).clamp(0, nmax);
            let diff = scale[k] * (q as f32) + min[k] - xt[i][k];
            let diff = if use_mad { diff.abs() } else { diff * diff };
            best_error[k] += wt[i][k] * diff;
        }
    }
    let mut laux = [[0f32; N]; M];
    // The scalar function returns before the search when nstep < 1.
    for is in (0..=nstep).filter(|_| nstep >= 1) {
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; N], [0f32; N], [0f32; N]);
        for k in 0..N {
            iscale[k] = (rmin + rdelta * is as f32 + nmaxf) / (max[k] - min[k]);
        }
        for i in 0..M {
            for k in 0..N {
                let lf = nearest_int(iscale[k] * (xt[i][k] - min[k])).clamp(0, nmax) as f32;
                laux[i][k] = lf;
                let w = wt[i][k];
                sum_l[k] += w * lf;
                sum_l2[k] += w * lf * lf;
                sum_xl[k] += w * lf * xt[i][k];
            }
        }
        let mut this_scale = [0f32; N];
        let mut this_min = [0f32; N];
        let mut ok = [0f32; N];
        for k in 0..N {
            let d = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k];
            ok[k] = if d > 0.0 { 1.0 } else { 0.0 };
            let ts = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / d;
            let tm = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / d;
            let pos = tm > 0.0;
            this_min[k] = if pos { 0.0 } else { tm };
            this_scale[k] = if pos { sum_xl[k] / sum_l2[k] } else { ts };
        }
        let mut cur_error = [0f32; N];
        for i in 0..M {
            for k in 0..N {
                let diff = this_scale[k] * laux[i][k] + this_min[k] - xt[i][k];
                let diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error[k] += wt[i][k] * diff;
            }
        }
        for k in 0..N {
            let better = ok[k] == 1.0 && cur_error[k] < best_error[k];
            best_error[k] = if better { cur_error[k] } else { best_error[k] };
            scale[k] = if better { this_scale[k] } else { scale[k] };
            code_iscale[k] = if better { iscale[k] } else { code_iscale[k] };
            code_min[k] = if better { min[k] } else { code_min[k] };
            min[k] = if better { this_min[k] } else { min[k] };
        }
    }
    for i in 0..M {
        for k in 0..N {
            let q = nearest_int(code_iscale[k] * (xt[i][k] - code_min[k])).clamp(0, nmax);
            l[i][k] = if flat[k] { 0 } else { q as u8 };
        }
    }
    for k in 0..N {
        if flat[k] {
            scale[k] = 0.0;
            min[k] = flat_min[k];
        }
    }
    let mut neg_min = [0f32; N];
    for k in 0..N {
        neg_min[k] = -min[k];
    }
    (scale, neg_min)
}

/// ggml's sub-blocks with all values below this are all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// `make_qx_quants` (rmse_type 1, no importance weights) on `N` sub-blocks of `M` values: each
/// lane's signed scale; codes (offset by `nmax`) into `l`. The scalar function recomputes the
/// codes whenever a candidate scale wins; here each lane keeps its winning `iscale` and the codes
/// are computed once from it at the end, which is the same function of the same numbers.
#[inline(always)]
pub(crate) fn qx<const N: usize, const M: usize>(xt: &[[f32; N]; M], nmax: i32, l: &mut [[i8; N]; M]) -> [f32; N] {
    let mut amax = [0f32; N];
    let mut max = [0f32; N];
    for row in xt {
        for k in 0..N {
            let ax = row[k].abs();
            if ax > amax[k] {
                amax[k] = ax;
                max[k] = row[k];
            }
        }
    }
    let nmaxf = nmax as f32;
    let mut iscale = [0f32; N];
    for k in 0..N {
        iscale[k] = -nmaxf / max[k];
    }
    let (mut sumlx, mut suml2) = ([0f32; N], [0f32; N]);
    for row in xt {
        for k in 0..N {
            let q = nearest_int(iscale[k] * row[k]).clamp(-nmax, nmax - 1);
            let w = row[k] * row[k];
            let lf = q as f32;
            sumlx[k] += w * row[k] * lf;
            suml2[k] += w * lf * lf;
        }
    }
    let mut scale = [0f32; N];
    let mut best = [0f32; N];
    let mut best_iscale = iscale;
    for k in 0..N {
        scale[k] = if suml2[k] != 0.0 { sumlx[k] / suml2[k] } else { 0.0 };
        best[k] = scale[k] * sumlx[k];
    }
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        for k in 0..N {
            iscale[k] = -(nmaxf + 0.1 * is as f32) / max[k];
        }
        let (mut sumlx, mut suml2) = ([0f32; N], [0f32; N]);
        for row in xt {
            for k in 0..N {
                let lf = nearest_int(iscale[k] * row[k]).clamp(-nmax, nmax - 1) as f32;
                let w = row[k] * row[k];
                sumlx[k] += w * row[k] * lf;
                suml2[k] += w * lf * lf;
            }
        }
        for k in 0..N {
            if suml2[k] > 0.0 && sumlx[k] * sumlx[k] > best[k] * suml2[k] {
                best_iscale[k] = iscale[k];
                scale[k] = sumlx[k] / suml2[k];
                best[k] = scale[k] * sumlx[k];
            }
        }
    }
    let mut tiny = [false; N];
    for k in 0..N {
        tiny[k] = amax[k] < GROUP_MAX_EPS;
        if tiny[k] {
            scale[k] = 0.0;
        }
    }
    for (lrow, row) in l.iter_mut().zip(xt) {
        for k in 0..N {
            let q = nearest_int(best_iscale[k] * row[k]).clamp(-nmax, nmax - 1);
            lrow[k] = if tiny[k] { 0 } else { (q + nmax) as i8 };
        }
    }
    scale
}

/// `xt[i][k] = x[M·k + i]`: sub-block `k` of `x` into lane `k`.
#[inline(always)]
pub(crate) fn transpose<const N: usize, const M: usize>(x: &[f32]) -> [[f32; N]; M] {
    let mut t = [[0f32; N]; M];
    for (k, sub) in x.chunks_exact(M).take(N).enumerate() {
        for (i, v) in sub.iter().enumerate() {
            t[i][k] = *v;
        }
    }
    t
}

/// The two searches on eight lanes, as a type, so the block quantizers can be compiled once per
/// implementation: [`Portable`] (the loops above) or `kquant_avx2::Avx2` (intrinsics).
pub(crate) trait Search {
    /// [`qkx2`] on eight lanes.
    #[allow(clippy::too_many_arguments)]
    fn qkx2_8<const M: usize>(
        xt: &[[f32; 8]; M],
        wt: &[[f32; 8]; M],
        nmax: i32,
        rmin: f32,
        rdelta: f32,
        nstep: i32,
        use_mad: bool,
        l: &mut [[u8; 8]; M],
    ) -> ([f32; 8], [f32; 8]);
    /// [`qx`] on eight lanes.
    fn qx_8<const M: usize>(xt: &[[f32; 8]; M], nmax: i32, l: &mut [[i8; 8]; M]) -> [f32; 8];

    /// Whether sixteen lanes are one instruction wide (then Q4_K/Q5_K blocks go in pairs).
    const WIDE: bool = false;

    /// [`qkx2`] on sixteen lanes: two eight-lane calls unless the implementation has wider ones.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
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
        let (mut scale, mut min) = ([0f32; 16], [0f32; 16]);
        for h in 0..2 {
            let x8: [[f32; 8]; M] = std::array::from_fn(|i| std::array::from_fn(|k| xt[i][8 * h + k]));
            let w8: [[f32; 8]; M] = std::array::from_fn(|i| std::array::from_fn(|k| wt[i][8 * h + k]));
            let mut l8 = [[0u8; 8]; M];
            let (s, m) = Self::qkx2_8(&x8, &w8, nmax, rmin, rdelta, nstep, use_mad, &mut l8);
            scale[8 * h..8 * h + 8].copy_from_slice(&s);
            min[8 * h..8 * h + 8].copy_from_slice(&m);
            for (row, r8) in l.iter_mut().zip(&l8) {
                row[8 * h..8 * h + 8].copy_from_slice(r8);
            }
        }
        (scale, min)
    }

    /// Whether thirty-two lanes run interleaved (then Q4_K/Q5_K blocks go four at a time).
    const WIDER: bool = false;

    /// [`qkx2`] on thirty-two lanes: two sixteen-lane calls unless the implementation
    /// interleaves them.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
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
        let (mut scale, mut min) = ([0f32; 32], [0f32; 32]);
        for h in 0..2 {
            let x16: [[f32; 16]; M] = std::array::from_fn(|i| std::array::from_fn(|k| xt[i][16 * h + k]));
            let w16: [[f32; 16]; M] = std::array::from_fn(|i| std::array::from_fn(|k| wt[i][16 * h + k]));
            let mut l16 = [[0u8; 16]; M];
            let (s, m) = Self::qkx2_16(&x16, &w16, nmax, rmin, rdelta, nstep, use_mad, &mut l16);
            scale[16 * h..16 * h + 16].copy_from_slice(&s);
            min[16 * h..16 * h + 16].copy_from_slice(&m);
            for (row, r16) in l.iter_mut().zip(&l16) {
                row[16 * h..16 * h + 16].copy_from_slice(r16);
            }
        }
        (scale, min)
    }

    /// [`qx`] on thirty-two lanes: two sixteen-lane calls unless the implementation
    /// interleaves them.
    #[inline(always)]
    fn qx_32<const M: usize>(xt: &[[f32; 32]; M], nmax: i32, l: &mut [[i8; 32]; M]) -> [f32; 32] {
        let mut scale = [0f32; 32];
        for h in 0..2 {
            let x16: [[f32; 16]; M] = std::array::from_fn(|i| std::array::from_fn(|k| xt[i][16 * h + k]));
            let mut l16 = [[0i8; 16]; M];
            scale[16 * h..16 * h + 16].copy_from_slice(&Self::qx_16(&x16, nmax, &mut l16));
            for (row, r16) in l.iter_mut().zip(&l16) {
                row[16 * h..16 * h + 16].copy_from_slice(r16);
            }
        }
        scale
    }

    /// [`qx`] on sixteen lanes: two eight-lane calls unless the implementation has wider ones.
    #[inline(always)]
    fn qx_16<const M: usize>(xt: &[[f32; 16]; M], nmax: i32, l: &mut [[i8; 16]; M]) -> [f32; 16] {
        let mut scale = [0f32; 16];
        for h in 0..2 {
            let x8: [[f32; 8]; M] = std::array::from_fn(|i| std::array::from_fn(|k| xt[i][8 * h + k]));
            let mut l8 = [[0i8; 8]; M];
            scale[8 * h..8 * h + 8].copy_from_slice(&Self::qx_8(&x8, nmax, &mut l8));
            for (row, r8) in l.iter_mut().zip(&l8) {
                row[8 * h..8 * h + 8].copy_from_slice(r8);
            }
        }
        scale
    }
}

/// The generic loops.
pub(crate) struct Portable;

impl Search for Portable {
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
        qkx2(xt, wt, nmax, rmin, rdelta, nstep, use_mad, l)
    }

    #[inline(always)]
    fn qx_8<const M: usize>(xt: &[[f32; 8]; M], nmax: i32, l: &mut [[i8; 8]; M]) -> [f32; 8] {
        qx(xt, nmax, l)
    }
}
