//! ggml's k-quants, Q2_K to Q6_K (what `llama-quantize` writes for the k-quant file types),
//! ported from `quantize_row_q{2,3,4,5,6}_K_ref` of `ggml/src/ggml-quants.c` (llama.cpp as
//! vendored in llama-cpp-python 0.3.36). Those are compiled without `-march=native`, so on
//! x86-64 they have no fused multiply-add: every C operation is one IEEE f32 rounding, in source
//! order. This port keeps that order operation for operation (Rust never fuses `a * b + c`), so
//! the bytes are the same; `tests/fixtures/gguf/` holds blocks the real C functions made.
//! docs/formats.md §4.4.

use super::ggml::f16_bits_ggml;
pub(crate) use super::kquant_lanes::nearest_int;
use super::kquant_lanes::{self as lanes, Portable, Search};

/// Values per k-quant super-block.
pub const QK_K: usize = 256;
/// Bytes of a Q2_K block: 16 scale bytes, 64 bytes of 2-bit codes, f16 d, f16 dmin.
pub const Q2_K_BYTES: usize = 84;
/// Bytes of a Q3_K block: 32 bytes of high bits, 64 of 2-bit codes, 12 of scales, f16 d.
pub const Q3_K_BYTES: usize = 110;
/// Bytes of a Q4_K block: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 of nibbles.
pub const Q4_K_BYTES: usize = 144;
/// Bytes of a Q5_K block: f16 d, f16 dmin, 12 bytes of scales and mins, 32 of fifth bits, 128
/// of nibbles.
pub const Q5_K_BYTES: usize = 176;
/// Bytes of a Q6_K block: 128 low nibbles, 64 bytes of high bits, 16 i8 scales, f16 d.
pub const Q6_K_BYTES: usize = 210;

/// ggml's sub-blocks with all values below this are all zero.
const GROUP_MAX_EPS: f32 = 1e-15;


/// The largest magnitude and the value that has it, the first one on ties, as ggml's
/// quantizers find them (`if (ax > amax) { amax = ax; max = x[i]; }`).
pub(crate) fn signed_amax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (amax, max)
}

/// ggml's f16 → f32 (exact).
fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// `get_scale_min_k4`: sub-block `j`'s 6-bit scale and min from the packed 12 bytes.
fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K/Q5_K's weights for one block: per sub-block `sqrt(mean(x²)) + |x|`, transposed.
#[inline(always)]
fn weights8(x: &[f32]) -> [[f32; 8]; 32] {
    let mut wt = [[0f32; 8]; 32];
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (i, v) in xs.iter().enumerate() {
            wt[i][j] = av_x + v.abs();
        }
    }
    wt
}

/// One Q4_K/Q5_K block's searches: scales, mins and codes per sub-block.
type Searched = ([f32; 8], [f32; 8], [u8; QK_K]);

/// The eight sub-blocks' searches of one block side by side (kquant_lanes.rs), lane j =
/// sub-block j.
#[inline(always)]
fn search8<S: Search>(x: &[f32; QK_K], nmax: i32, rmin: f32, nstep: i32) -> Searched {
    let xt: [[f32; 8]; 32] = lanes::transpose(x);
    let wt = weights8(x);
    let mut lt = [[0u8; 8]; 32];
    let (scales, mins) = S::qkx2_8(&xt, &wt, nmax, rmin, 0.1, nstep, false, &mut lt);
    let mut l = [0u8; QK_K];
    for (i, row) in lt.iter().enumerate() {
        for (j, q) in row.iter().enumerate() {
            l[32 * j + i] = *q;
        }
    }
    (scales, mins, l)
}

/// Two blocks' searches side by side: lanes 0-7 the first block's sub-blocks, 8-15 the
/// second's (one AVX-512 instruction wide).
#[inline(always)]
fn search16<S: Search>(x0: &[f32; QK_K], x1: &[f32; QK_K], nmax: i32, rmin: f32, nstep: i32) -> [Searched; 2] {
    let (t0, t1): ([[f32; 8]; 32], [[f32; 8]; 32]) = (lanes::transpose(x0), lanes::transpose(x1));
    let (w0, w1) = (weights8(x0), weights8(x1));
    let join = |a: &[[f32; 8]; 32], b: &[[f32; 8]; 32]| -> [[f32; 16]; 32] {
        std::array::from_fn(|i| std::array::from_fn(|k| if k < 8 { a[i][k] } else { b[i][k - 8] }))
    };
    let mut lt = [[0u8; 16]; 32];
    let (s, m) = S::qkx2_16(&join(&t0, &t1), &join(&w0, &w1), nmax, rmin, 0.1, nstep, false, &mut lt);
    let part = |h: usize| -> Searched {
        let mut l = [0u8; QK_K];
        for (i, row) in lt.iter().enumerate() {
            for j in 0..8 {
                l[32 * j + i] = row[8 * h + j];
            }
        }
        let pick = |v: &[f32; 16]| -> [f32; 8] { std::array::from_fn(|k| v[8 * h + k]) };
        (pick(&s), pick(&m), l)
    };
    [part(0), part(1)]
}

/// Four blocks' searches side by side: lanes 8b..8b+8 block b's sub-blocks (two AVX-512
/// instructions, interleaved).
#[inline(always)]
fn search32<S: Search>(x: [&[f32; QK_K]; 4], nmax: i32, rmin: f32, nstep: i32) -> [Searched; 4] {
    // Plain loops: `array::map` with these closures was not inlined (7% of an export's time).
    let mut xt = [[0f32; 32]; 32];
    let mut wt = [[0f32; 32]; 32];
    for (b, xb) in x.iter().enumerate() {
        let (t, w): ([[f32; 8]; 32], [[f32; 8]; 32]) = (lanes::transpose(&xb[..]), weights8(&xb[..]));
        for i in 0..32 {
            xt[i][8 * b..8 * b + 8].copy_from_slice(&t[i]);
            wt[i][8 * b..8 * b + 8].copy_from_slice(&w[i]);
        }
    }
    let mut lt = [[0u8; 32]; 32];
    let (s, m) = S::qkx2_32(&xt, &wt, nmax, rmin, 0.1, nstep, false, &mut lt);
    let mut out = [([0f32; 8], [0f32; 8], [0u8; QK_K]); 4];
    for (h, (sh, mh, l)) in out.iter_mut().enumerate() {
        for (i, row) in lt.iter().enumerate() {
            for j in 0..8 {
                l[32 * j + i] = row[8 * h + j];
            }
        }
        sh.copy_from_slice(&s[8 * h..8 * h + 8]);
        mh.copy_from_slice(&m[8 * h..8 * h + 8]);
    }
    out
}

/// The part Q4_K and Q5_K share (`quantize_row_q4_K_ref` / `_q5_K_ref`) after the searches:
/// the sub-blocks' scales and mins quantized to 6 bits and packed into 12 bytes, and the codes
/// recomputed from the packed values. Returns f16 `d`, f16 `dmin`, the packed scales, the codes.
#[inline(always)]
fn scale_min_codes(x: &[f32; QK_K], nmax: i32, (scales, mins, mut l): Searched) -> (u16, u16, [u8; 12], [u8; QK_K]) {
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..QK_K / 32 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut sc = [0u8; 12];
    for j in 0..QK_K / 32 {
        // C stores the int into a uint8_t (wrapping), then takes MIN(63, ·).
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16_bits_ggml(max_scale / 63.0);
    let dmin = f16_bits_ggml(max_min / 63.0);
    for j in 0..QK_K / 32 {
        let (s, m) = get_scale_min_k4(j, &sc);
        let dj = f16_to_f32(d) * s as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = f16_to_f32(dmin) * m as f32;
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / dj).clamp(0, nmax);
            l[32 * j + ii] = q as u8;
        }
    }
    (d, dmin, sc, l)
}

/// One Q4_K block of 256 values (`quantize_row_q4_K_ref`).
#[inline(always)]
pub fn q4_k_block(x: &[f32; QK_K], out: &mut [u8; Q4_K_BYTES]) {
    q4_k_block_with::<Portable>(x, out)
}

/// [`q4_k_block`] with the searches of `S`.
#[inline(always)]
pub(crate) fn q4_k_block_with<S: Search>(x: &[f32; QK_K], out: &mut [u8; Q4_K_BYTES]) {
    let searched = search8::<S>(x, 15, -1.0, 20);
    q4_k_pack(x, searched, out);
}

/// Two Q4_K blocks whose searches run side by side.
#[inline(always)]
pub(crate) fn q4_k_pair_with<S: Search>(x: [&[f32; QK_K]; 2], out: [&mut [u8; Q4_K_BYTES]; 2]) {
    let [s0, s1] = search16::<S>(x[0], x[1], 15, -1.0, 20);
    let [o0, o1] = out;
    q4_k_pack(x[0], s0, o0);
    q4_k_pack(x[1], s1, o1);
}

/// Four Q4_K blocks whose searches run side by side.
#[inline(always)]
pub(crate) fn q4_k_quad_with<S: Search>(x: [&[f32; QK_K]; 4], out: [&mut [u8; Q4_K_BYTES]; 4]) {
    let searched = search32::<S>(x, 15, -1.0, 20);
    for ((x, s), o) in x.into_iter().zip(searched).zip(out) {
        q4_k_pack(x, s, o);
    }
}

#[inline(always)]
fn q4_k_pack(x: &[f32; QK_K], searched: Searched, out: &mut [u8; Q4_K_BYTES]) {
    let (d, dmin, sc, l) = scale_min_codes(x, 15, searched);
    out[0..2].copy_from_slice(&d.to_le_bytes());
    out[2..4].copy_from_slice(&dmin.to_le_bytes());
    out[4..16].copy_from_slice(&sc);
    let qs = &mut out[16..];
    for (chunk, j) in (0..QK_K).step_by(64).enumerate() {
        for k in 0..32 {
            qs[32 * chunk + k] = l[j + k] | (l[j + k + 32] << 4);
        }
    }
}

/// One Q5_K block of 256 values (`quantize_row_q5_K_ref`): Q4_K's scheme with 5-bit codes,
/// their fifth bits gathered into 32 bytes of `qh` (two bits per 64 values).
#[inline(always)]
pub fn q5_k_block(x: &[f32; QK_K], out: &mut [u8; Q5_K_BYTES]) {
    q5_k_block_with::<Portable>(x, out)
}

/// [`q5_k_block`] with the searches of `S`.
#[inline(always)]
pub(crate) fn q5_k_block_with<S: Search>(x: &[f32; QK_K], out: &mut [u8; Q5_K_BYTES]) {
    let searched = search8::<S>(x, 31, -0.5, 15);
    q5_k_pack(x, searched, out);
}

/// Two Q5_K blocks whose searches run side by side.
#[inline(always)]
pub(crate) fn q5_k_pair_with<S: Search>(x: [&[f32; QK_K]; 2], out: [&mut [u8; Q5_K_BYTES]; 2]) {
    let [s0, s1] = search16::<S>(x[0], x[1], 31, -0.5, 15);
    let [o0, o1] = out;
    q5_k_pack(x[0], s0, o0);
    q5_k_pack(x[1], s1, o1);
}

/// Four Q5_K blocks whose searches run side by side.
#[inline(always)]
pub(crate) fn q5_k_quad_with<S: Search>(x: [&[f32; QK_K]; 4], out: [&mut [u8; Q5_K_BYTES]; 4]) {
    let searched = search32::<S>(x, 31, -0.5, 15);
    for ((x, s), o) in x.into_iter().zip(searched).zip(out) {
        q5_k_pack(x, s, o);
    }
}

#[inline(always)]
fn q5_k_pack(x: &[f32; QK_K], searched: Searched, out: &mut [u8; Q5_K_BYTES]) {
    let (d, dmin, sc, l) = scale_min_codes(x, 31, searched);
    out[0..2].copy_from_slice(&d.to_le_bytes());
    out[2..4].copy_from_slice(&dmin.to_le_bytes());
    out[4..16].copy_from_slice(&sc);
    let (qh, ql) = out[16..].split_at_mut(32);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (chunk, n) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            let mut l1 = l[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[32 * chunk + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// Packs 2-bit codes as Q2_K and Q3_K do: in each half of 128 values, byte `l` holds values
/// `l`, `l + 32`, `l + 64` and `l + 96`, two bits each from the bottom.
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for (chunk, j) in (0..QK_K).step_by(128).enumerate() {
        for k in 0..32 {
            qs[32 * chunk + k] = l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
}

/// One Q2_K block of 256 values (`quantize_row_q2_K_ref`): per 16-value sub-block a scale and
/// a min by `make_qkx2_quants` (codes 0–3, weights `|x|`, absolute error), both quantized to 4
/// bits into one byte. 84 bytes: 16 scale bytes, 64 of codes, f16 d, f16 dmin.
#[inline(always)]
pub fn q2_k_block(x: &[f32; QK_K], out: &mut [u8; Q2_K_BYTES]) {
    q2_k_block_with::<Portable>(x, out)
}

/// [`q2_k_block`] with the searches of `S`.
#[inline(always)]
pub(crate) fn q2_k_block_with<S: Search>(x: &[f32; QK_K], out: &mut [u8; Q2_K_BYTES]) {
    // The sixteen sub-blocks' searches side by side (kquant_lanes.rs), eight at a time,
    // weights |x|.
    let xt: [[f32; 16]; 16] = lanes::transpose(x);
    let mut wt = xt;
    for row in wt.iter_mut() {
        for v in row.iter_mut() {
            *v = v.abs();
        }
    }
    let mut lt = [[0u8; 16]; 16];
    let (scales, mins) = S::qkx2_16(&xt, &wt, 3, -0.5, 0.1, 15, true, &mut lt);
    let mut l = [0u8; QK_K];
    for (i, row) in lt.iter().enumerate() {
        for (j, q) in row.iter().enumerate() {
            l[16 * j + i] = *q;
        }
    }
    let q4scale = 15.0f32;
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..QK_K / 16 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let mut sc = [0u8; QK_K / 16];
    let d = if max_scale > 0.0 {
        let iscale = q4scale / max_scale;
        for (s, &scale) in sc.iter_mut().zip(&scales) {
            *s = nearest_int(iscale * scale) as u8;
        }
        f16_bits_ggml(max_scale / q4scale)
    } else {
        f16_bits_ggml(0.0)
    };
    let dmin = if max_min > 0.0 {
        let iscale = q4scale / max_min;
        for (s, &min) in sc.iter_mut().zip(&mins) {
            *s |= (nearest_int(iscale * min) << 4) as u8;
        }
        f16_bits_ggml(max_min / q4scale)
    } else {
        f16_bits_ggml(0.0)
    };
    for j in 0..QK_K / 16 {
        let dj = f16_to_f32(d) * (sc[j] & 0xf) as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = f16_to_f32(dmin) * (sc[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / dj).clamp(0, 3) as u8;
        }
    }
    out[..16].copy_from_slice(&sc);
    pack_2bit(&l, &mut out[16..80]);
    out[80..82].copy_from_slice(&d.to_le_bytes());
    out[82..84].copy_from_slice(&dmin.to_le_bytes());
}

/// `make_q3_quants` with `do_rmse`: codes −nmax..nmax−1 from `−nmax / max`, then up to five
/// passes that move single codes while that improves the weighted fit. The codes land in `l`
/// (offset by `nmax`).
fn make_q3_quants(x: &[f32], nmax: i32, l: &mut [i8]) -> f32 {
    let n = x.len();
    let (amax, max) = signed_amax(x);
    if amax < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l[i] = q as i8;
        let w = x[i] * x[i];
        let lf = q as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = l[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l[i] as i32 {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for q in l[..n].iter_mut() {
        *q += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// One Q3_K block of 256 values (`quantize_row_q3_K_ref`): per 16-value sub-block a signed scale
/// by `make_q3_quants`, quantized to 6 bits (low nibbles in bytes 0–7, their top two bits in
/// bytes 8–11); 3-bit codes, their high bits in `hmask`. 110 bytes: 32 of hmask, 64 of codes,
/// 12 of scales, f16 d.
#[inline(always)]
pub fn q3_k_block(x: &[f32; QK_K], out: &mut [u8; Q3_K_BYTES]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    let mut amax = 0.0f32;
    for j in 0..QK_K / 16 {
        scales[j] = make_q3_quants(&x[16 * j..16 * j + 16], 4, &mut l[16 * j..16 * j + 16]);
        let scale = scales[j].abs();
        if scale > amax {
            amax = scale;
            max_scale = scales[j];
        }
    }
    let mut sc = [0u8; 12];
    let d = if max_scale != 0.0 {
        let iscale = -32.0f32 / max_scale;
        for (j, &scale) in scales.iter().enumerate() {
            // C: `int8_t l = nearest_int(...)`, then clamped and offset (0..63).
            let q = (nearest_int(iscale * scale) as i8 as i32).clamp(-32, 31) + 32;
            if j < 8 {
                sc[j] = (q & 0xf) as u8;
            } else {
                sc[j - 8] |= ((q & 0xf) << 4) as u8;
            }
            sc[j % 4 + 8] |= ((q >> 4) << (2 * (j / 4))) as u8;
        }
        f16_bits_ggml(1.0 / iscale)
    } else {
        f16_bits_ggml(0.0)
    };
    for j in 0..QK_K / 16 {
        let low = if j < 8 { sc[j] & 0xf } else { sc[j - 8] >> 4 };
        let s = (low | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
        let dj = f16_to_f32(d) * s as f32;
        if dj == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / dj).clamp(-4, 3) + 4) as i8;
        }
    }
    let mut codes = [0u8; QK_K];
    let (hmask, rest) = out.split_at_mut(32);
    hmask.fill(0);
    let (mut m, mut hm) = (0usize, 1u8);
    for (j, c) in codes.iter_mut().enumerate() {
        let mut q = l[j] as u8;
        if q > 3 {
            hmask[m] |= hm;
            q -= 4;
        }
        *c = q;
        m += 1;
        if m == QK_K / 8 {
            m = 0;
            hm = hm.wrapping_shl(1);
        }
    }
    pack_2bit(&codes, &mut rest[..64]);
    rest[64..76].copy_from_slice(&sc);
    rest[76..78].copy_from_slice(&d.to_le_bytes());
}

/// One Q6_K block of 256 values (`quantize_row_q6_K_ref`).
#[inline(always)]
pub fn q6_k_block(x: &[f32; QK_K], out: &mut [u8; Q6_K_BYTES]) {
    q6_k_block_with::<Portable>(x, out)
}

/// [`q6_k_block`] with the searches of `S`.
#[inline(always)]
pub(crate) fn q6_k_block_with<S: Search>(x: &[f32; QK_K], out: &mut [u8; Q6_K_BYTES]) {
    // The sixteen sub-blocks' searches side by side (kquant_lanes.rs), eight at a time.
    let xt: [[f32; 16]; 16] = lanes::transpose(x);
    let mut lt = [[0i8; 16]; 16];
    let scales = S::qx_16(&xt, 32, &mut lt);
    let mut l = [0i8; QK_K];
    for (i, row) in lt.iter().enumerate() {
        for (j, q) in row.iter().enumerate() {
            l[16 * j + i] = *q;
        }
    }
    q6_k_pack(x, scales, l, out);
}

/// Two Q6_K blocks whose searches run side by side (thirty-two lanes).
#[inline(always)]
pub(crate) fn q6_k_pair_with<S: Search>(x: [&[f32; QK_K]; 2], out: [&mut [u8; Q6_K_BYTES]; 2]) {
    let mut xt = [[0f32; 32]; 16];
    for (b, xb) in x.iter().enumerate() {
        let t: [[f32; 16]; 16] = lanes::transpose(&xb[..]);
        for i in 0..16 {
            xt[i][16 * b..16 * b + 16].copy_from_slice(&t[i]);
        }
    }
    let mut lt = [[0i8; 32]; 16];
    let scales = S::qx_32(&xt, 32, &mut lt);
    for (h, (xb, o)) in x.into_iter().zip(out).enumerate() {
        let mut l = [0i8; QK_K];
        for (i, row) in lt.iter().enumerate() {
            for j in 0..16 {
                l[16 * j + i] = row[16 * h + j];
            }
        }
        let mut sc = [0f32; 16];
        sc.copy_from_slice(&scales[16 * h..16 * h + 16]);
        q6_k_pack(xb, sc, l, o);
    }
}

/// Q6_K after the searches: the scales to 8 bits, the codes again from them, packed.
#[inline(always)]
fn q6_k_pack(x: &[f32; QK_K], scales: [f32; 16], mut l: [i8; QK_K], out: &mut [u8; Q6_K_BYTES]) {
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for &scale in &scales {
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        out.fill(0);
        out[208..210].copy_from_slice(&f16_bits_ggml(0.0).to_le_bytes());
        return;
    }
    let iscale = -128.0f32 / max_scale;
    let d = f16_bits_ggml(1.0 / iscale);
    let mut sc = [0i8; QK_K / 16];
    for (s, &scale) in sc.iter_mut().zip(&scales) {
        *s = nearest_int(iscale * scale).min(127) as i8;
    }
    for j in 0..QK_K / 16 {
        let dj = f16_to_f32(d) * sc[j] as f32;
        if dj == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / dj).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    let (ql, rest) = out.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    for (chunk, j) in (0..QK_K).step_by(128).enumerate() {
        for k in 0..32 {
            let lu = |o: usize| l[j + k + o] as u8;
            let (q1, q2, q3, q4) = (lu(0) & 0xf, lu(32) & 0xf, lu(64) & 0xf, lu(96) & 0xf);
            ql[64 * chunk + k] = q1 | (q3 << 4);
            ql[64 * chunk + k + 32] = q2 | (q4 << 4);
            qh[32 * chunk + k] = (lu(0) >> 4) | ((lu(32) >> 4) << 2) | ((lu(64) >> 4) << 4) | ((lu(96) >> 4) << 6);
        }
    }
    for (o, s) in rest[..16].iter_mut().zip(&sc) {
        *o = *s as u8;
    }
    rest[16..18].copy_from_slice(&d.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    // The scalar ports of ggml's searches, line by line: the specification the lane-parallel
    // versions (kquant_lanes.rs) are checked against.

    /// `make_qkx2_quants`: a scale and a min for one sub-block of `x` (with weights), searching
    /// `nstep + 1` candidate scales; `min` is updated inside the search and later steps use the new
    /// value, as in C. Returns the scale and `-min`; the codes land in `l`.
    #[allow(clippy::too_many_arguments)] // the C function's signature, kept for a line-by-line port
    pub(super) fn make_qkx2_quants(
        x: &[f32],
        weights: &[f32],
        nmax: i32,
        l: &mut [u8],
        laux: &mut [u8],
        rmin: f32,
        rdelta: f32,
        nstep: i32,
        use_mad: bool,
    ) -> (f32, f32) {
        let n = x.len();
        let mut min = x[0];
        let mut max = x[0];
        let mut sum_w = weights[0];
        let mut sum_x = sum_w * x[0];
        for i in 1..n {
            if x[i] < min {
                min = x[i];
            }
            if x[i] > max {
                max = x[i];
            }
            let w = weights[i];
            sum_w += w;
            sum_x += w * x[i];
        }
        if min > 0.0 {
            min = 0.0;
        }
        if max == min {
            l[..n].fill(0);
            return (0.0, -min);
        }
        let nmaxf = nmax as f32;
        let mut iscale = nmaxf / (max - min);
        let mut scale = 1.0 / iscale;
        let mut best_error = 0.0f32;
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            l[i] = q as u8;
            let diff = scale * (q as f32) + min - x[i];
            let diff = if use_mad { diff.abs() } else { diff * diff };
            best_error += weights[i] * diff;
        }
        if nstep < 1 {
            return (scale, -min);
        }
        for is in 0..=nstep {
            iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
            let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
            for i in 0..n {
                let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
                laux[i] = q as u8;
                let w = weights[i];
                let lf = q as f32;
                sum_l += w * lf;
                sum_l2 += w * lf * lf;
                sum_xl += w * lf * x[i];
            }
            let d = sum_w * sum_l2 - sum_l * sum_l;
            if d > 0.0 {
                let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
                let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
                if this_min > 0.0 {
                    this_min = 0.0;
                    this_scale = sum_xl / sum_l2;
                }
                let mut cur_error = 0.0f32;
                for i in 0..n {
                    let diff = this_scale * laux[i] as f32 + this_min - x[i];
                    let diff = if use_mad { diff.abs() } else { diff * diff };
                    cur_error += weights[i] * diff;
                }
                if cur_error < best_error {
                    l[..n].copy_from_slice(&laux[..n]);
                    best_error = cur_error;
                    scale = this_scale;
                    min = this_min;
                }
            }
        }
        (scale, -min)
    }

    /// `make_qx_quants` with `rmse_type` 1 and no importance weights: a signed scale for one
    /// sub-block, searched over 18 candidates around `-nmax / max`. The codes land in `l`
    /// (offset by `nmax`).
    pub(super) fn make_qx_quants(x: &[f32], nmax: i32, l: &mut [i8]) -> f32 {
        let n = x.len();
        let (amax, max) = signed_amax(x);
        if amax < GROUP_MAX_EPS {
            l[..n].fill(0);
            return 0.0;
        }
        let nmaxf = nmax as f32;
        let mut iscale = -nmaxf / max;
        let mut sumlx = 0.0f32;
        let mut suml2 = 0.0f32;
        for i in 0..n {
            let q = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            l[i] = (q + nmax) as i8;
            let w = x[i] * x[i];
            let lf = q as f32;
            sumlx += w * x[i] * lf;
            suml2 += w * lf * lf;
        }
        let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
        let mut best = scale * sumlx;
        for is in -9i32..=9 {
            if is == 0 {
                continue;
            }
            iscale = -(nmaxf + 0.1 * is as f32) / max;
            sumlx = 0.0;
            suml2 = 0.0;
            for &v in x {
                let lf = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
                let w = v * v;
                sumlx += w * v * lf;
                suml2 += w * lf * lf;
            }
            if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
                for i in 0..n {
                    let q = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
                    l[i] = (nmax + q) as i8;
                }
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        scale
    }


    fn fixture(name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf").join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// Blocks the real C functions made (`scripts/make_kquant_fixtures.sh`): every row equal,
    /// except rows where the C code is undefined (`ub_rows`, as the fixture's json records).
    fn equals_c<const B: usize>(expected: &str, quantize: fn(&[f32; QK_K], &mut [u8; B])) {
        equals_c_except::<B>(expected, quantize, &[]);
    }

    fn equals_c_except<const B: usize>(expected: &str, quantize: fn(&[f32; QK_K], &mut [u8; B]), ub_rows: &[usize]) {
        let cases = fixture("kquant_cases.bin");
        let want = fixture(expected);
        let rows = cases.len() / (4 * QK_K);
        assert_eq!(want.len(), rows * B, "{expected}");
        let mut differ = Vec::new();
        for (i, (row, w)) in cases.chunks_exact(4 * QK_K).zip(want.chunks_exact(B)).enumerate() {
            if ub_rows.contains(&i) {
                continue;
            }
            let x: [f32; QK_K] = std::array::from_fn(|j| f32::from_le_bytes(row[4 * j..4 * j + 4].try_into().unwrap()));
            let mut got = [0u8; B];
            quantize(&x, &mut got);
            if got[..] != w[..] {
                differ.push(i);
            }
        }
        assert!(
            differ.is_empty(),
            "{expected}: {} of {rows} rows differ, first {:?}",
            differ.len(),
            &differ[..differ.len().min(10)]
        );
    }

    #[test]
    fn q2_k_equals_the_c_reference() {
        // Rows 196, 197 and 199: `max_min` is subnormal, `15 / max_min` is inf, and C shifts the
        // negative `nearest_int(inf)` left (undefined).
        equals_c_except::<Q2_K_BYTES>("q2_k_expected.bin", q2_k_block, &[196, 197, 199]);
    }

    #[test]
    fn q3_k_equals_the_c_reference() {
        equals_c::<Q3_K_BYTES>("q3_k_expected.bin", q3_k_block);
    }

    #[test]
    fn q4_k_equals_the_c_reference() {
        equals_c::<Q4_K_BYTES>("q4_k_expected.bin", q4_k_block);
    }

    #[test]
    fn q5_k_equals_the_c_reference() {
        equals_c::<Q5_K_BYTES>("q5_k_expected.bin", q5_k_block);
    }

    #[test]
    fn q6_k_equals_the_c_reference() {
        equals_c::<Q6_K_BYTES>("q6_k_expected.bin", q6_k_block);
    }

    #[test]
    fn nearest_int_is_ggml_s() {
        assert_eq!(nearest_int(0.5), 0, "ties to even");
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(14.7), 15);
    }

    #[test]
    fn zero_blocks() {
        let mut q4 = [0xffu8; Q4_K_BYTES];
        q4_k_block(&[0.0; QK_K], &mut q4);
        assert!(q4.iter().all(|&b| b == 0));
        let mut q6 = [0xffu8; Q6_K_BYTES];
        q6_k_block(&[0.0; QK_K], &mut q6);
        assert!(q6.iter().all(|&b| b == 0));
    }
}

#[cfg(test)]
mod lane_props {
    use super::tests::{make_qkx2_quants, make_qx_quants};
    use super::*;
    use proptest::prelude::*;

    /// Values the real tensors and the edge cases hold: ordinary weights at every scale, exact
    /// zeros of both signs, f16 and f32 subnormals, huge values, and now and then a NaN or inf.
    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            6 => (-1.0f32..1.0, -40i32..6).prop_map(|(m, e)| m * 10f32.powi(e)),
            1 => Just(0.0f32),
            1 => Just(-0.0f32),
            1 => (1u32..0x0080_0000).prop_map(f32::from_bits),
            1 => (-1.0f32..1.0).prop_map(|m| m * 6e-5),
            1 => (-1.0f32..1.0).prop_map(|m| m * 3e38),
            1 => prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(-f32::INFINITY)],
        ]
    }

    /// A block: random values, or one value everywhere (flat sub-blocks), or zeros.
    fn block() -> impl Strategy<Value = Vec<f32>> {
        prop_oneof![
            8 => proptest::collection::vec(value(), QK_K),
            1 => value().prop_map(|v| vec![v; QK_K]),
            1 => Just(vec![0.0f32; QK_K]),
        ]
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Q4_K/Q5_K's search (8 sub-blocks of 32, weights av_x + |x|) and Q2_K's (16 of 16,
        /// weights |x|, absolute error): every lane equals the scalar port, bit for bit.
        #[test]
        fn qkx2_lanes_equal_the_scalar_port(x in block()) {
            let xt: [[f32; 8]; 32] = lanes::transpose(&x);
            let mut wt = [[0f32; 8]; 32];
            let mut want = Vec::new();
            for j in 0..8 {
                let xs = &x[32 * j..32 * j + 32];
                let mut sum_x2 = 0.0f32;
                for v in xs {
                    sum_x2 += v * v;
                }
                let av_x = (sum_x2 / 32.0).sqrt();
                let w: Vec<f32> = xs.iter().map(|v| av_x + v.abs()).collect();
                for i in 0..32 {
                    wt[i][j] = w[i];
                }
                for (nmax, rmin, nstep) in [(15, -1.0, 20), (31, -0.5, 15)] {
                    let (mut l, mut laux) = ([0u8; 32], [0u8; 32]);
                    let (s, m) = make_qkx2_quants(xs, &w, nmax, &mut l, &mut laux, rmin, 0.1, nstep, false);
                    want.push((nmax, j, s.to_bits(), m.to_bits(), l.to_vec()));
                }
            }
            for (nmax, rmin, nstep) in [(15, -1.0, 20), (31, -0.5, 15)] {
                let mut lt = [[0u8; 8]; 32];
                let (s, m) = lanes::qkx2(&xt, &wt, nmax, rmin, 0.1, nstep, false, &mut lt);
                for j in 0..8 {
                    let l: Vec<u8> = (0..32).map(|i| lt[i][j]).collect();
                    let w = want.iter().find(|w| w.0 == nmax && w.1 == j).unwrap();
                    prop_assert_eq!((s[j].to_bits(), m[j].to_bits(), &l), (w.2, w.3, &w.4), "nmax {} sub-block {}: {:?}", nmax, j, bits(&x[32 * j..32 * j + 32]));
                }
            }
            let xt: [[f32; 16]; 16] = lanes::transpose(&x);
            let mut wt = xt;
            wt.iter_mut().flatten().for_each(|v| *v = v.abs());
            let mut lt = [[0u8; 16]; 16];
            let (s, m) = lanes::qkx2(&xt, &wt, 3, -0.5, 0.1, 15, true, &mut lt);
            for j in 0..16 {
                let xs = &x[16 * j..16 * j + 16];
                let w: Vec<f32> = xs.iter().map(|v| v.abs()).collect();
                let (mut l, mut laux) = ([0u8; 16], [0u8; 16]);
                let (ws, wm) = make_qkx2_quants(xs, &w, 3, &mut l, &mut laux, -0.5, 0.1, 15, true);
                let got: Vec<u8> = (0..16).map(|i| lt[i][j]).collect();
                prop_assert_eq!((s[j].to_bits(), m[j].to_bits(), got), (ws.to_bits(), wm.to_bits(), l.to_vec()), "Q2_K sub-block {}", j);
            }
        }

        /// Q6_K's search (16 sub-blocks of 16): every lane equals the scalar port.
        #[test]
        fn qx_lanes_equal_the_scalar_port(x in block()) {
            let xt: [[f32; 16]; 16] = lanes::transpose(&x);
            let mut lt = [[0i8; 16]; 16];
            let s = lanes::qx(&xt, 32, &mut lt);
            for j in 0..16 {
                let mut l = [0i8; 16];
                let want = make_qx_quants(&x[16 * j..16 * j + 16], 32, &mut l);
                let got: Vec<i8> = (0..16).map(|i| lt[i][j]).collect();
                prop_assert_eq!((s[j].to_bits(), got), (want.to_bits(), l.to_vec()), "sub-block {}: {:?}", j, bits(&x[16 * j..16 * j + 16]));
            }
        }
    }
}
