//! bitsandbytes 4-bit weights as `save_pretrained` writes them (docs/formats.md §1): the quant-state
//! JSON, the code tables, and the exact dequantization of §1.5.
//!
//! ```text
//! absmax[b] = nested ? fl32(fl32(nested_map[u8[b]] * nested_absmax[b / 256]) + offset) : f32[b]
//! y[k]      = fl32(quant_map[nibble(k)] * absmax[k / blocksize])     -- one multiply, no FMA
//! out[k]    = round(y[k] -> quant_state dtype)
//! ```
//! Element `k` of the flattened weight is the HIGH nibble of byte `k/2` when `k` is even.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::format::dtype::parse_torch_dtype;
use crate::format::dtype::FloatDtype;

/// Rows of a `cols`-wide weight that hold a whole number of `blocksize` blocks: the step by
/// which 4-bit tiles and device chunks are cut, so each starts on a block boundary.
pub fn block_row_step(cols: u64, blocksize: u64) -> u64 {
    let (mut a, mut b) = (cols, blocksize);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    blocksize.checked_div(a).unwrap_or(1)
}

/// NF4 code values (bitsandbytes `get_4bit_type("nf4")`), exact f32.
pub const NF4: [f32; 16] = [
    f32::from_bits(0xbf800000),
    f32::from_bits(0xbf3239b1),
    f32::from_bits(0xbf066b30),
    f32::from_bits(0xbeca32a0),
    f32::from_bits(0xbe91a24d),
    f32::from_bits(0xbe3d353f),
    f32::from_bits(0xbdba7871),
    f32::from_bits(0x00000000),
    f32::from_bits(0x3da2faff),
    f32::from_bits(0x3e24cae3),
    f32::from_bits(0x3e7c04dd),
    f32::from_bits(0x3ead033a),
    f32::from_bits(0x3ee1a4b8),
    f32::from_bits(0x3f1007ab),
    f32::from_bits(0x3f3913b3),
    f32::from_bits(0x3f800000),
];

/// 4-bit quant type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    /// NormalFloat4.
    Nf4,
    /// e2m1 float.
    Fp4,
}

impl QuantType {
    /// The suffix of the quant-state key (`bitsandbytes__nf4`).
    pub fn as_str(self) -> &'static str {
        match self {
            QuantType::Nf4 => "nf4",
            QuantType::Fp4 => "fp4",
        }
    }
}

#[derive(Deserialize)]
struct RawState {
    quant_type: String,
    blocksize: u64,
    dtype: String,
    shape: Vec<u64>,
    #[serde(default)]
    nested_blocksize: Option<u64>,
    #[serde(default)]
    nested_offset: Option<f64>,
    #[serde(default)]
    nested_dtype: Option<String>,
}

/// A parsed `quant_state.bitsandbytes__*` blob.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantState {
    /// NF4 or FP4.
    pub quant_type: QuantType,
    /// Elements per absmax block.
    pub blocksize: u64,
    /// The dequantized dtype.
    pub dtype: FloatDtype,
    /// Original `[out, in]`.
    pub shape: Vec<u64>,
    /// `Some((nested_blocksize, offset as f32))` with double quant.
    pub nested: Option<(u64, f32)>,
}

impl QuantState {
    /// Parses the JSON bytes stored in the `U8` tensor.
    pub fn parse(path: &Path, tensor: &str, bytes: &[u8]) -> Result<Self> {
        let bad = |what: String| Error::QuantState {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            what,
        };
        let raw: RawState = serde_json::from_slice(bytes).map_err(|e| bad(format!("json: {e}")))?;
        let quant_type = match raw.quant_type.as_str() {
            "nf4" => QuantType::Nf4,
            "fp4" => QuantType::Fp4,
            q => return Err(bad(format!("quant_type `{q}`, expected nf4 or fp4"))),
        };
        if !raw.blocksize.is_power_of_two() || !(32..=4096).contains(&raw.blocksize) {
            return Err(bad(format!(
                "blocksize {} is not a power of two in 32..=4096",
                raw.blocksize
            )));
        }
        let dtype = parse_torch_dtype(&raw.dtype).ok_or_else(|| bad(format!("dtype `{}`", raw.dtype)))?;
        if raw.shape.len() != 2 || raw.shape.contains(&0) {
            return Err(bad(format!(
                "shape {:?}, expected a non-empty 2-D [out, in]",
                raw.shape
            )));
        }
        raw.shape[0]
            .checked_mul(raw.shape[1])
            .filter(|&n| n < (1u64 << 48))
            .ok_or_else(|| bad("shape overflows".into()))?;
        let nested = match (raw.nested_blocksize, raw.nested_offset) {
            (Some(nb), Some(off)) => {
                if nb == 0 || nb > 1 << 20 {
                    return Err(bad(format!("nested_blocksize {nb}")));
                }
                if let Some(nd) = &raw.nested_dtype {
                    if nd != "float32" {
                        return Err(bad(format!("nested_dtype `{nd}`, expected float32")));
                    }
                }
                // The offset is used as an f32; a finite f64 beyond f32's range would become inf
                // (found by the quant_state fuzz target).
                if !off.is_finite() || !(off as f32).is_finite() {
                    return Err(bad(format!("nested_offset {off} is not a finite f32")));
                }
                Some((nb, off as f32))
            }
            (None, None) => None,
            _ => return Err(bad("nested_blocksize and nested_offset must come together".into())),
        };
        Ok(QuantState {
            quant_type,
            blocksize: raw.blocksize,
            dtype,
            shape: raw.shape,
            nested,
        })
    }

    /// Number of weight elements.
    pub fn numel(&self) -> u64 {
        self.shape[0] * self.shape[1]
    }

    /// Number of absmax blocks.
    pub fn blocks(&self) -> u64 {
        self.numel().div_ceil(self.blocksize)
    }
}

/// Reads little-endian f32 values.
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The absmax of one block, with double quant rebuilt in two f32 roundings.
#[derive(Debug, Clone, Copy)]
pub enum AbsmaxRef<'a> {
    /// F32 absmax per block.
    Plain(&'a [u8]),
    /// Double quant: u8 codes, the nested absmax (f32 bytes), the 256-entry map, blocksize, offset.
    Nested {
        /// u8 code per block.
        codes: &'a [u8],
        /// f32 per nested block (little-endian bytes).
        nested_absmax: &'a [u8],
        /// The 8-bit dynamic map (f32 bytes, 256 entries).
        nested_map: &'a [u8],
        /// Nested blocksize (256).
        nested_blocksize: u64,
        /// The offset added back.
        offset: f32,
    },
}

#[inline(always)]
fn f32_at(bytes: &[u8], i: usize) -> f32 {
    let c = &bytes[4 * i..4 * i + 4];
    f32::from_le_bytes([c[0], c[1], c[2], c[3]])
}

impl AbsmaxRef<'_> {
    /// The f32 absmax of block `b`, exactly as bitsandbytes rebuilds it.
    #[inline]
    pub fn get(&self, b: usize) -> f32 {
        match *self {
            AbsmaxRef::Plain(bytes) => f32_at(bytes, b),
            AbsmaxRef::Nested {
                codes,
                nested_absmax,
                nested_map,
                nested_blocksize,
                offset,
            } => {
                let q = codes[b] as usize;
                let prod = f32_at(nested_map, q) * f32_at(nested_absmax, b / nested_blocksize as usize);
                prod + offset
            }
        }
    }
}

/// One quantized weight's byte slices, validated against its quant state.
#[derive(Debug, Clone, Copy)]
pub struct QuantView<'a> {
    /// Packed codes, `ceil(n/2)` bytes.
    pub codes: &'a [u8],
    /// Per-block absmax.
    pub absmax: AbsmaxRef<'a>,
    /// The 16-entry code table (f32 bytes).
    pub quant_map: &'a [u8],
    /// Elements per block.
    pub blocksize: u64,
    /// Dequantized dtype.
    pub dtype: FloatDtype,
}

impl QuantView<'_> {
    /// Decodes elements `[k0, k0 + out.len())` of the flattened weight into f32, each rounded
    /// through the quant-state dtype (the value `dequantize_4bit` returns, widened back).
    pub fn decode(&self, k0: u64, out: &mut [f32]) {
        let mut map = [0f32; 16];
        for (i, m) in map.iter_mut().enumerate() {
            *m = f32_at(self.quant_map, i);
        }
        let bs = self.blocksize;
        let end = k0 + out.len() as u64;
        let mut k = k0;
        let mut idx = 0usize;
        while k < end {
            let b = k / bs;
            let block_end = ((b + 1) * bs).min(end);
            // Every element of a block is `map[code] * absmax`: 16 products cover the block.
            let am = self.absmax.get(b as usize);
            let mut lut = [0f32; 16];
            for (l, m) in lut.iter_mut().zip(map) {
                *l = crate::format::dtype::round_through(m * am, self.dtype);
            }
            if k % 2 == 1 {
                out[idx] = lut[(self.codes[(k / 2) as usize] & 0x0f) as usize];
                idx += 1;
                k += 1;
            }
            let pairs = ((block_end - k) / 2) as usize;
            let bytes = &self.codes[(k / 2) as usize..(k / 2) as usize + pairs];
            crate::format::nibbles::decode_nibbles(&lut, bytes, &mut out[idx..idx + 2 * pairs]);
            idx += 2 * pairs;
            k += 2 * pairs as u64;
            if k < block_end {
                out[idx] = lut[(self.codes[(k / 2) as usize] >> 4) as usize];
                idx += 1;
                k += 1;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::excessive_precision)] // exact binary fractions from docs/formats.md §1.8
mod tests {
    use super::*;

    #[test]
    fn nf4_table_matches_the_documented_bits() {
        let hex = [
            0xbf800000u32,
            0xbf3239b1,
            0xbf066b30,
            0xbeca32a0,
            0xbe91a24d,
            0xbe3d353f,
            0xbdba7871,
            0x00000000,
            0x3da2faff,
            0x3e24cae3,
            0x3e7c04dd,
            0x3ead033a,
            0x3ee1a4b8,
            0x3f1007ab,
            0x3f3913b3,
            0x3f800000,
        ];
        for (v, h) in NF4.iter().zip(hex) {
            assert_eq!(v.to_bits(), h);
        }
    }

    #[test]
    fn parses_the_documented_quant_state() {
        let j = br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [2, 128], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.039459228515625}"#;
        let s = QuantState::parse(Path::new("m"), "w", j).unwrap();
        assert_eq!(s.quant_type, QuantType::Nf4);
        assert_eq!(s.blocks(), 4);
        assert_eq!(s.nested, Some((256, 0.039459228515625)));
        assert_eq!(s.dtype, FloatDtype::Bf16);
    }

    #[test]
    fn malformed_quant_states_are_named() {
        for (j, needle) in [
            (&br#"{"quant_type": "nf5", "blocksize": 64, "dtype": "bfloat16", "shape": [2, 2]}"#[..], "quant_type"),
            (br#"{"quant_type": "nf4", "blocksize": 63, "dtype": "bfloat16", "shape": [2, 2]}"#, "blocksize"),
            (br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "int8", "shape": [2, 2]}"#, "dtype"),
            (br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [2]}"#, "shape"),
            (br#"{"quant_type": "nf4""#, "json"),
            (br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [2, 2], "nested_blocksize": 256}"#, "together"),
            // Fuzz regression (fuzz/artifacts/quant_state/crash-66c3eeaf…): finite as f64, inf as f32.
            (br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [256, 688], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.05529999e099}"#, "not a finite f32"),
        ] {
            let e = QuantState::parse(Path::new("m"), "w", j).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
            assert!(e.to_string().contains("tensor `w`"), "{e}");
        }
    }

    /// docs/formats.md §1.8: the worked NF4 double-quant example.
    #[test]
    fn worked_example_block_zero() {
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let map = le(&NF4);
        let nested_map = le(&(0..256)
            .map(|i| {
                if i == 38 {
                    -0.45859373f32
                } else if i == 212 {
                    0.40234375
                } else if i == 4 {
                    -0.93671876
                } else if i == 255 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect::<Vec<_>>());
        let nabs = le(&[0.018646240234375f32]);
        let codes = [38u8, 212, 4, 255];
        let packed = [0x7bu8, 0xef, 0xff, 0xed];
        let v = QuantView {
            codes: &packed,
            absmax: AbsmaxRef::Nested {
                codes: &codes,
                nested_absmax: &nabs,
                nested_map: &nested_map,
                nested_blocksize: 256,
                offset: 0.039459228515625,
            },
            quant_map: &map,
            blocksize: 64,
            dtype: FloatDtype::Bf16,
        };
        assert_eq!(v.absmax.get(0).to_bits(), 0x3cfd3326);
        assert_eq!(v.absmax.get(3).to_bits(), 0x3d6e0000);
        let mut out = [0f32; 8];
        v.decode(0, &mut out);
        assert_eq!(
            out,
            [
                0.0,
                0.01043701171875,
                0.0223388671875,
                0.0308837890625,
                0.0308837890625,
                0.0308837890625,
                0.0223388671875,
                0.017333984375
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn table_decode_equals_per_element_formula(start in 0u64..300, len in 0usize..700, bs_log in 5u32..8,
                                                   seed in proptest::prelude::any::<u64>()) {
            let bs = 1u64 << bs_log;
            let n = (start as usize + len + 1).max(1);
            let codes: Vec<u8> = (0..n.div_ceil(2)).map(|i| (seed.wrapping_mul(i as u64 + 7) >> 13) as u8).collect();
            let nb = (n as u64).div_ceil(bs) as usize;
            let absmax: Vec<u8> = (0..nb).flat_map(|i| (0.01f32 + (seed % 17) as f32 * 1e-3 * i as f32).to_le_bytes()).collect();
            let map: Vec<u8> = NF4.iter().flat_map(|x| x.to_le_bytes()).collect();
            let v = QuantView { codes: &codes, absmax: AbsmaxRef::Plain(&absmax), quant_map: &map, blocksize: bs, dtype: FloatDtype::Bf16 };
            let mut got = vec![0f32; len];
            v.decode(start, &mut got);
            for (j, g) in got.iter().enumerate() {
                let k = start + j as u64;
                let byte = codes[(k / 2) as usize];
                let code = if k.is_multiple_of(2) { byte >> 4 } else { byte & 0x0f };
                let want = crate::format::dtype::round_through(NF4[code as usize] * v.absmax.get((k / bs) as usize), FloatDtype::Bf16);
                proptest::prop_assert_eq!(g.to_bits(), want.to_bits());
            }
        }
    }
}
