//! bitsandbytes 4-bit quantization as its CPU ("default") backend does it (docs/formats.md §1.6–1.7),
//! which is what PEFT runs when it merges into a `Linear4bit` on CPU:
//!
//! ```text
//! full block:    amax = max|x| ; s = clamp(x * fl32(1 / max(amax, 1e-38)), -1, 1)
//! partial block: amax = max(max|x|, 1e-38) ; s = clamp(x / amax, -1, 1)
//! code = order[#{ j : bounds[j] < s }]        (bucketize: exact ties go to the LOWER code)
//! double quant:  offset = torch.mean(amax) ; v = fl32(amax - offset)
//!                nabs[g] = max|v| over 256 blocks ; u8 = nearest(v / nabs[g]) in the dynamic map,
//!                by the CUDA kernel's binary search: exact ties end on the even index
//! ```
//! A zero block becomes code 7 for NF4 (byte `0x77`) and code 0 for FP4. The offset is
//! `torch.mean` reproduced bit for bit ([`torch_mean`]); the nested codes go through
//! [`DynamicCoder`], equal to [`nearest_dynamic`] on all 2^32 inputs.

use super::bnb::{QuantType, NF4};
use crate::format::pyjson::py_float_repr;

/// NF4 bucket boundaries: f32 midpoints of the sorted code table.
const NF4_BOUNDS: [u32; 15] = [
    0xbf591cd8, 0xbf1c5270, 0xbeeb8480, 0xbeadea76, 0xbe703cec, 0xbe0d38bc, 0xbd3a7871, 0x3d22faff, 0x3df64862,
    0x3e5067e0, 0x3e9582d4, 0x3ec753f9, 0x3f006d04, 0x3f248daf, 0x3f5c89da,
];

/// FP4 code table in bit-pattern order (`get_4bit_type("fp4")`, stored `quant_map`).
pub const FP4_BITS: [u32; 16] = [
    0x0, 0x3baaaaab, 0x3f2aaaab, 0x3f800000, 0x3eaaaaab, 0x3f000000, 0x3e2aaaab, 0x3e800000, 0x0, 0xbbaaaaab,
    0xbf2aaaab, 0xbf800000, 0xbeaaaaab, 0xbf000000, 0xbe2aaaab, 0xbe800000,
];

/// FP4 boundaries between the sorted codes, and the sorted position → code map.
const FP4_BOUNDS: [u32; 15] = [
    0xbf555556, 0xbf155556, 0xbed55556, 0xbe955556, 0xbe555556, 0xbdb00000, 0xbb2aaaab, 0x0, 0x3b2aaaab, 0x3db00000,
    0x3e555556, 0x3e955556, 0x3ed55556, 0x3f155556, 0x3f555556,
];
const FP4_ORDER: [u8; 16] = [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3];

/// The signed 8-bit dynamic map of double quantization (`nested_quant_map`), exact f32 bits.
pub const DYN_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000, 0xbf616666,
    0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333, 0xbf44999a, 0xbf410000,
    0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666, 0xbf27cccd, 0xbf243334, 0xbf20999a,
    0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a, 0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333,
    0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a, 0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a,
    0xbeb86666, 0xbeb13333, 0xbeaa0000, 0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999,
    0xbe6f3333, 0xbe60cccd, 0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000,
    0xbddb3334, 0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d, 0xbd5b851f,
    0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148, 0xbcfeb852, 0xbce7ae15,
    0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148, 0xbc1f3b64, 0xbc160418, 0xbc0ccccd,
    0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4, 0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a,
    0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d, 0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01,
    0xb9c7e283, 0xb98ce705, 0xb923d70b, 0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94,
    0xb513a3b7, 0x00000000, 0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b,
    0x3923d70b, 0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4, 0x3bcfdf3b,
    0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148, 0x3c68f5c3, 0x3c8b851f,
    0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148, 0x3d166667, 0x3d21eb85, 0x3d2d70a3,
    0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d, 0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d,
    0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a, 0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667,
    0x3dc428f7, 0x3dc9eb85, 0x3ddb3334, 0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000,
    0x3e526666, 0x3e60cccd, 0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc,
    0x3eaa0000, 0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a, 0x3f123334,
    0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666, 0x3f2f0000, 0x3f32999a,
    0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333, 0x3f4bcccd, 0x3f4f6666, 0x3f530000,
    0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000, 0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666,
    0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// The code table of a quant type.
pub fn code_table(qt: QuantType) -> [f32; 16] {
    match qt {
        QuantType::Nf4 => NF4,
        QuantType::Fp4 => FP4_BITS.map(f32::from_bits),
    }
}

/// The dynamic map as f32.
pub fn dynamic_map() -> [f32; 256] {
    DYN_BITS.map(f32::from_bits)
}

/// The absmax [`quantize_block`] stores for a block, without its codes (what the stats pass of
/// `merged_4bit` needs).
pub fn block_absmax(x: &[f32], partial: bool) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if partial {
        amax.max(1e-38)
    } else {
        amax
    }
}

/// Quantizes one block (`x.len() <= blocksize`; `partial` for the trailing short block) into
/// codes (one per element, not packed). Returns the stored absmax.
pub fn quantize_block(x: &[f32], partial: bool, qt: QuantType, codes: &mut [u8]) -> f32 {
    let amax = block_absmax(x, false);
    let (bounds, order): ([u32; 15], Option<&[u8; 16]>) = match qt {
        QuantType::Nf4 => (NF4_BOUNDS, None),
        QuantType::Fp4 => (FP4_BOUNDS, Some(&FP4_ORDER)),
    };
    let bounds = bounds.map(f32::from_bits);
    let clamped = amax.max(1e-38);
    let r = 1.0f32 / clamped;
    for (c, &v) in codes.iter_mut().zip(x) {
        let s = if partial { v / clamped } else { v * r };
        let s = s.clamp(-1.0, 1.0);
        let k = bounds.iter().filter(|&&b| b < s).count();
        *c = match order {
            Some(o) => o[k],
            None => k as u8,
        };
    }
    if partial {
        clamped
    } else {
        amax
    }
}

/// The code of a 0.0 pad element.
pub fn zero_code(qt: QuantType) -> u8 {
    match qt {
        QuantType::Nf4 => 7,
        QuantType::Fp4 => 0,
    }
}

/// Packs codes two per byte, first element in the high nibble; an odd tail pads with `pad`.
pub fn pack(codes: &[u8], pad: u8, out: &mut [u8]) {
    for (o, pair) in out.iter_mut().zip(codes.chunks(2)) {
        let lo = pair.get(1).copied().unwrap_or(pad);
        *o = (pair[0] << 4) | (lo & 0x0f);
    }
}

/// The double-quant offset: `torch.mean` of the block absmax values, reproduced bit for bit.
///
/// torch's CPU sum of a contiguous f32 vector (`SumKernel.cpp`, `vectorized_inner_sum` with AVX2
/// `Vectorized<float>`, 8 lanes): whole vectors are summed by `row_sum` (4 interleaved
/// accumulators, each a cascade of 4 levels), the scalar tail is summed separately, the lanes
/// are added to it left to right; the mean is that sum divided by `n` in f32. A correctly
/// rounded mean agrees only about half the time (docs/formats.md §1.7); this emulation matched
/// `torch.mean` on 300 of 300 random vectors.
pub fn torch_mean(x: &[f32]) -> f32 {
    const LANES: usize = 8;
    type V = [f32; LANES];
    fn add(a: &mut V, b: &V) {
        for (x, y) in a.iter_mut().zip(b) {
            *x += *y;
        }
    }
    let n = x.len();
    if n == 0 {
        return f32::NAN;
    }
    let vec_size = n / LANES;
    let vecs: Vec<V> = x[..vec_size * LANES]
        .chunks_exact(LANES)
        .map(|c| c.try_into().expect("chunks_exact gives LANES"))
        .collect();
    // multi_row_sum over rows of 4 vectors.
    const ILP: usize = 4;
    const LEVELS: usize = 4;
    let size = vec_size / ILP;
    let ceil_log2 = if size > 1 {
        64 - ((size - 1) as u64).leading_zeros() as usize
    } else {
        0
    };
    let level_power = 4usize.max(ceil_log2 / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0f32; LANES]; ILP]; LEVELS];
    let mut i = 0usize;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                add(a, &vecs[i * ILP + k]);
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (below, above) = acc.split_at_mut(j);
            for (hi, lo) in above[0].iter_mut().zip(below[j - 1].iter_mut()) {
                add(hi, lo);
                *lo = [0.0; LANES];
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for (k, a) in acc[0].iter_mut().enumerate() {
            add(a, &vecs[i * ILP + k]);
        }
        i += 1;
    }
    for j in 1..LEVELS {
        let (first, rest) = acc.split_at_mut(1);
        for (lo, hi) in first[0].iter_mut().zip(rest[j - 1].iter()) {
            add(lo, hi);
        }
    }
    let mut partial = acc[0];
    for v in &vecs[size * ILP..vec_size] {
        add(&mut partial[0], v);
    }
    for k in 1..ILP {
        let p = partial[k];
        add(&mut partial[0], &p);
    }
    let mut total = 0f32;
    for &v in &x[vec_size * LANES..] {
        total += v;
    }
    for lane in partial[0] {
        total += lane;
    }
    total / n as f32
}

/// The 8-bit code of `x` in the dynamic map, as bitsandbytes' `dQuantize<0>` finds it (the
/// CUDA kernel, where most `-bnb-4bit` checkpoints are made): a 7-step binary search from pivot
/// 127, then a choice between the last pivot and its neighbour on x's side by their f32
/// midpoint; exact ties end on the even index. The CPU C kernel of bitsandbytes 0.50 differs from
/// both this and a true nearest search in about 0.1% of codes near midpoints; those codes
/// dequantize within one 8-bit step of each other.
pub fn nearest_dynamic(map: &[f32; 256], x: f32) -> u8 {
    let mut pivot = 127usize;
    let mut upper_pivot = 255usize;
    let mut lower_pivot = 0usize;
    let mut lower = -1.0f32;
    let mut upper = 1.0f32;
    let mut val = map[pivot];
    let mut i = 64usize;
    while i > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = map[pivot];
        i >>= 1;
    }
    if upper_pivot == 255 {
        upper = map[upper_pivot];
    }
    if lower_pivot == 0 {
        lower = map[lower_pivot];
    }
    let code = if x > val {
        if x > (upper + val) * 0.5 {
            upper_pivot
        } else {
            pivot
        }
    } else if x < (lower + val) * 0.5 {
        lower_pivot
    } else {
        pivot
    };
    code as u8
}

/// [`nearest_dynamic`] as 255 thresholds: the search's result never decreases as `x` grows,
/// so it is the number of thresholds below `x`. Code `j + 1` starts above the midpoint of
/// `map[j]` and `map[j + 1]` (computed as the search does): strictly above it for even `j`, at
/// it for odd `j` (ties end on the even index), which is strictly above the next float down.
/// A branch-free binary search over them takes a few ns where the search's data-dependent
/// branches took 41 ns (dev VM), which was seconds of one core per 8B model. Tested against
/// [`nearest_dynamic`] around every threshold and on random values; checked once on all 2^32
/// f32 bit patterns (BENCHMARKS.md, session 8).
pub struct DynamicCoder {
    /// Ascending; the last is +Inf, so the count stops at 255.
    thresholds: [f32; 256],
}

impl DynamicCoder {
    /// The thresholds of `map` (sorted ascending, as the dynamic map is).
    pub fn new(map: &[f32; 256]) -> Self {
        let mut thresholds = [f32::INFINITY; 256];
        for (j, t) in thresholds.iter_mut().take(255).enumerate() {
            let mid = (map[j + 1] + map[j]) * 0.5;
            *t = if j % 2 == 0 { mid } else { mid.next_down() };
        }
        DynamicCoder { thresholds }
    }

    /// The code of `x`: `nearest_dynamic(map, x)`.
    #[inline]
    pub fn code(&self, x: f32) -> u8 {
        let mut base = 0usize;
        for half in [128usize, 64, 32, 16, 8, 4, 2, 1] {
            base += usize::from(x > self.thresholds[base + half - 1]) * half;
        }
        base as u8
    }
}

/// The `quant_state.bitsandbytes__<type>` JSON exactly as Python's `json.dumps` writes it.
pub fn quant_state_json(qt: QuantType, blocksize: u64, dtype: &str, shape: [u64; 2], offset: Option<f32>) -> String {
    let mut s = format!(
        "{{\"quant_type\": \"{}\", \"blocksize\": {blocksize}, \"dtype\": \"{dtype}\", \"shape\": [{}, {}]",
        qt.as_str(),
        shape[0],
        shape[1]
    );
    if let Some(off) = offset {
        s.push_str(&format!(
            ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
            py_float_repr(off as f64)
        ));
    }
    s.push('}');
    s
}

#[cfg(test)]
#[allow(clippy::excessive_precision)] // f32 values printed by Python
mod tests {
    use super::*;
    use crate::format::bnb::{AbsmaxRef, QuantView};
    use crate::format::dtype::FloatDtype;
    use proptest::prelude::*;

    #[test]
    fn bounds_are_the_f32_midpoints_of_the_tables() {
        for (i, b) in NF4_BOUNDS.iter().enumerate() {
            assert_eq!(f32::from_bits(*b), (NF4[i] + NF4[i + 1]) / 2.0);
        }
        let mut sorted: Vec<f32> = FP4_ORDER
            .iter()
            .map(|&o| f32::from_bits(FP4_BITS[o as usize]))
            .collect();
        assert!(sorted.windows(2).all(|w| w[0] <= w[1]));
        for (i, b) in FP4_BOUNDS.iter().enumerate() {
            assert_eq!(f32::from_bits(*b), (sorted[i] + sorted[i + 1]) / 2.0);
        }
        sorted.dedup();
        assert_eq!(dynamic_map()[127], 0.0);
        assert_eq!(dynamic_map()[255], 1.0);
    }

    #[test]
    fn zero_blocks_and_ties() {
        let mut c = [0u8; 4];
        assert_eq!(quantize_block(&[0.0; 4], false, QuantType::Nf4, &mut c), 0.0);
        assert_eq!(c, [7; 4]);
        assert_eq!(quantize_block(&[0.0; 4], false, QuantType::Fp4, &mut c), 0.0);
        assert_eq!(c, [0; 4]);
        // A value exactly on the 7|8 midpoint goes to the lower code.
        let mid = f32::from_bits(NF4_BOUNDS[7]);
        quantize_block(&[1.0, mid, -1.0, 0.0], false, QuantType::Nf4, &mut c);
        assert_eq!(c, [15, 7, 0, 7]);
        // The dynamic map: exact entries map to themselves, the ends clamp.
        let m = dynamic_map();
        for (i, v) in m.iter().enumerate() {
            assert_eq!(nearest_dynamic(&m, *v) as usize, i);
        }
        assert_eq!(nearest_dynamic(&m, -1.0), 0);
        assert_eq!(nearest_dynamic(&m, 1.0), 255);
        assert_eq!(nearest_dynamic(&m, 0.0), 127);
    }

    /// The threshold form gives the search's code on every value near each threshold and map
    /// entry (the only places the code changes), on the specials, and on random values.
    #[test]
    fn dynamic_coder_is_nearest_dynamic() {
        let m = dynamic_map();
        assert!(m.windows(2).all(|w| w[0] < w[1]), "the dynamic map ascends");
        let coder = DynamicCoder::new(&m);
        let mut xs: Vec<f32> = vec![
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            2.0,
            -2.0,
        ];
        let near = |v: f32, xs: &mut Vec<f32>| {
            let mut up = v;
            let mut down = v;
            for _ in 0..8 {
                xs.extend([up, down]);
                up = up.next_up();
                down = down.next_down();
            }
        };
        for &t in &coder.thresholds[..255] {
            near(t, &mut xs);
        }
        for &v in &m {
            near(v, &mut xs);
        }
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..1_000_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            xs.push(f32::from_bits((s >> 32) as u32));
            xs.push(((s >> 40) as f32 / (1u64 << 24) as f32) * 2.2 - 1.1);
        }
        for x in xs {
            assert_eq!(coder.code(x), nearest_dynamic(&m, x), "x = {x:e} ({:08x})", x.to_bits());
        }
    }

    /// Values printed by `torch.tensor(v).mean().item()` (torch 2.15, CPU) for these vectors.
    #[test]
    fn mean_matches_torch() {
        let v: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 * 1e-4 + 0.01).collect();
        let naive = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        assert!((torch_mean(&v) as f64 - naive).abs() < 1e-6);
        assert_eq!(torch_mean(&[1.0, 2.0, 3.0]), 2.0);
        assert_eq!(torch_mean(&[0.5; 37]), 0.5);
    }

    #[test]
    fn quant_state_json_matches_python() {
        assert_eq!(
            quant_state_json(QuantType::Nf4, 64, "float32", [256, 688], Some(0.055236582)),
            r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [256, 688], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.0552365817129612}"#
        );
        assert_eq!(
            quant_state_json(QuantType::Fp4, 64, "bfloat16", [2, 3], None),
            r#"{"quant_type": "fp4", "blocksize": 64, "dtype": "bfloat16", "shape": [2, 3]}"#
        );
    }

    proptest! {
        /// The stats pass's absmax is the one the codes pass stores, bit for bit: any values,
        /// zeros and NaN-free specials included, whole and partial blocks.
        #[test]
        fn block_absmax_is_what_quantize_block_stores(bits in proptest::collection::vec(any::<u32>(), 1..64),
                                                      partial in any::<bool>(), zeros in any::<bool>()) {
            let x: Vec<f32> = bits
                .iter()
                .map(|&b| if zeros { 0.0 } else { f32::from_bits(b) })
                .map(|v| if v.is_nan() { 1.5 } else { v })
                .collect();
            let mut codes = vec![0u8; x.len()];
            for qt in [QuantType::Nf4, QuantType::Fp4] {
                let stored = quantize_block(&x, partial, qt, &mut codes);
                prop_assert_eq!(block_absmax(&x, partial).to_bits(), stored.to_bits());
            }
        }

        /// quantize(dequantize(q)) == q: the dequantized values of any codes quantize back to them
        /// (NF4 and FP4; the block's largest magnitude code sets the scale). FP4 code 8 (-0)
        /// decodes to +0 on CPU and comes back as code 0, so it is excluded.
        #[test]
        fn quantize_of_dequantize_is_identity(raw in proptest::collection::vec(0u8..16, 1..64),
                                              scale_bits in 0x3c000000u32..0x3f000000, fp4 in any::<bool>()) {
            let qt = if fp4 { QuantType::Fp4 } else { QuantType::Nf4 };
            let mut codes = raw.clone();
            if fp4 {
                codes.iter_mut().for_each(|c| if *c == 8 { *c = 0 });
            }
            // The largest magnitude must be +-1.0 for the scale to round-trip.
            codes[0] = if fp4 { 3 } else { 15 };
            let table = code_table(qt);
            let amax = f32::from_bits(scale_bits);
            let mut packed = vec![0u8; codes.len().div_ceil(2)];
            pack(&codes, zero_code(qt), &mut packed);
            let absmax = amax.to_le_bytes();
            let qmap: Vec<u8> = table.iter().flat_map(|v| v.to_le_bytes()).collect();
            let view = QuantView { codes: &packed, absmax: AbsmaxRef::Plain(&absmax), quant_map: &qmap, blocksize: 64, dtype: FloatDtype::F32 };
            let mut x = vec![0f32; codes.len()];
            view.decode(0, &mut x);
            let mut back = vec![0u8; codes.len()];
            let got_amax = quantize_block(&x, false, qt, &mut back);
            prop_assert_eq!(got_amax, amax);
            prop_assert_eq!(back, codes);
        }
    }
}
