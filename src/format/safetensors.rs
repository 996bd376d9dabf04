//! Strict safetensors header parsing, in the order the `safetensors` crate validates:
//! length prefix → cap → fits the file → UTF-8 → JSON (no duplicate names) → per tensor:
//! known dtype, checked size, span equals dtype × shape → offsets tile the data exactly.
//!
//! A [`Header`] that exists is valid; the reader hands out slices of the mapped file by it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::{Error, Result, SafetensorsProblem as P};

/// Upper bound on the JSON header, as in the safetensors crate.
pub const MAX_HEADER_SIZE: u64 = 100_000_000;

/// Tensor element types, in the safetensors enum order (which is also its on-disk sort order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dtype {
    /// bool
    Bool,
    /// 4-bit float
    F4,
    /// 6-bit float e2m3
    F6E2M3,
    /// 6-bit float e3m2
    F6E3M2,
    /// u8
    U8,
    /// i8
    I8,
    /// fp8 e5m2
    F8E5M2,
    /// fp8 e4m3
    F8E4M3,
    /// fp8 e8m0
    F8E8M0,
    /// fp8 e4m3 fnuz
    F8E4M3Fnuz,
    /// fp8 e5m2 fnuz
    F8E5M2Fnuz,
    /// i16
    I16,
    /// u16
    U16,
    /// f16
    F16,
    /// bf16
    BF16,
    /// i32
    I32,
    /// u32
    U32,
    /// f32
    F32,
    /// complex64
    C64,
    /// f64
    F64,
    /// i64
    I64,
    /// u64
    U64,
}

impl Dtype {
    /// Parses the header string (`"BF16"`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BOOL" => Dtype::Bool,
            "F4" => Dtype::F4,
            "F6_E2M3" => Dtype::F6E2M3,
            "F6_E3M2" => Dtype::F6E3M2,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "F8_E5M2" => Dtype::F8E5M2,
            "F8_E4M3" => Dtype::F8E4M3,
            "F8_E8M0" => Dtype::F8E8M0,
            "F8_E4M3FNUZ" => Dtype::F8E4M3Fnuz,
            "F8_E5M2FNUZ" => Dtype::F8E5M2Fnuz,
            "I16" => Dtype::I16,
            "U16" => Dtype::U16,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I32" => Dtype::I32,
            "U32" => Dtype::U32,
            "F32" => Dtype::F32,
            "C64" => Dtype::C64,
            "F64" => Dtype::F64,
            "I64" => Dtype::I64,
            "U64" => Dtype::U64,
            _ => return None,
        })
    }

    /// The header string.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::F4 => "F4",
            Dtype::F6E2M3 => "F6_E2M3",
            Dtype::F6E3M2 => "F6_E3M2",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E8M0 => "F8_E8M0",
            Dtype::F8E4M3Fnuz => "F8_E4M3FNUZ",
            Dtype::F8E5M2Fnuz => "F8_E5M2FNUZ",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::C64 => "C64",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Bits per element.
    pub fn bits(self) -> u64 {
        match self {
            Dtype::F4 => 4,
            Dtype::F6E2M3 | Dtype::F6E3M2 => 6,
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 8,
            Dtype::F8E5M2 | Dtype::F8E4M3 | Dtype::F8E8M0 | Dtype::F8E4M3Fnuz | Dtype::F8E5M2Fnuz => 8,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 16,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 32,
            Dtype::C64 | Dtype::F64 | Dtype::I64 | Dtype::U64 => 64,
        }
    }

    /// Whether this is a 16/32-bit float we can read as f32.
    pub fn is_float16_or_32(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::BF16 | Dtype::F32)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tensor of a parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<u64>,
    /// Begin and end relative to the data section.
    pub offsets: (u64, u64),
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Bytes of data.
    pub fn nbytes(&self) -> u64 {
        self.offsets.1 - self.offsets.0
    }
}

/// A validated header.
#[derive(Debug, Clone)]
pub struct Header {
    /// `__metadata__`, if any.
    pub metadata: BTreeMap<String, String>,
    /// Tensors, sorted by offset.
    pub tensors: Vec<TensorInfo>,
    /// Absolute file offset of the data section (8 + header length).
    pub data_start: u64,
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

enum RawValue {
    Meta(BTreeMap<String, String>),
    Tensor(RawEntry),
}

/// The header as an ordered list, so duplicates are seen rather than silently merged.
struct RawHeader(Vec<(String, RawValue)>);

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object of tensors")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<RawHeader, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "__metadata__" {
                        let m: BTreeMap<String, String> = map.next_value()?;
                        out.push((key, RawValue::Meta(m)));
                    } else {
                        let e: RawEntry = map.next_value()?;
                        out.push((key, RawValue::Tensor(e)));
                    }
                }
                Ok(RawHeader(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses and validates the header of a safetensors file whose full bytes are `bytes`.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    let err = |what: P| Error::Safetensors {
        path: path.to_path_buf(),
        what,
    };
    let file_len = bytes.len() as u64;
    let prefix: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| err(P::TooShortForHeader(file_len)))?;
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER_SIZE {
        return Err(err(P::HeaderTooLarge(n)));
    }
    // n ≤ 1e8, so 8 + n cannot overflow u64 or usize on 64-bit targets.
    let end = 8 + n;
    let header_bytes = bytes
        .get(8..end as usize)
        .ok_or_else(|| err(P::HeaderPastEnd { len: n, file_len }))?;
    let text = std::str::from_utf8(header_bytes).map_err(|_| err(P::NotUtf8))?;
    let raw: RawHeader =
        serde_json::from_str(text.trim_end_matches(' ')).map_err(|e| err(P::BadJson(e.to_string())))?;

    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(raw.0.len());
    let mut seen = std::collections::HashSet::with_capacity(raw.0.len());
    for (name, value) in raw.0 {
        if !seen.insert(name.clone()) {
            return Err(err(P::Duplicate(name)));
        }
        match value {
            RawValue::Meta(m) => metadata = m,
            RawValue::Tensor(e) => {
                let dtype =
                    Dtype::parse(&e.dtype).ok_or_else(|| err(P::UnknownDtype(name.clone(), e.dtype.clone())))?;
                let numel = e
                    .shape
                    .iter()
                    .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                    .ok_or_else(|| err(P::Overflow(name.clone())))?;
                let bits = numel
                    .checked_mul(dtype.bits())
                    .ok_or_else(|| err(P::Overflow(name.clone())))?;
                if bits % 8 != 0 {
                    return Err(err(P::SpanMismatch {
                        name,
                        span: e.data_offsets.1.wrapping_sub(e.data_offsets.0),
                        expected: bits.div_ceil(8),
                    }));
                }
                let (b, en) = e.data_offsets;
                if en < b {
                    return Err(err(P::BadOffsets(name)));
                }
                if en - b != bits / 8 {
                    return Err(err(P::SpanMismatch {
                        name,
                        span: en - b,
                        expected: bits / 8,
                    }));
                }
                tensors.push(TensorInfo {
                    name,
                    dtype,
                    shape: e.shape,
                    offsets: (b, en),
                });
            }
        }
    }
    tensors.sort_by_key(|t| (t.offsets.0, t.offsets.1));
    let mut cursor = 0u64;
    for t in &tensors {
        if t.offsets.0 != cursor {
            return Err(err(P::BadOffsets(t.name.clone())));
        }
        cursor = t.offsets.1;
    }
    let actual = file_len - end;
    if cursor != actual {
        return Err(err(P::DataLength {
            expected: cursor,
            actual,
        }));
    }
    Ok(Header {
        metadata,
        tensors,
        data_start: end,
    })
}

/// One tensor of a file to lay out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutEntry<'a> {
    /// Name.
    pub name: &'a str,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: &'a [u64],
    /// Bytes of data.
    pub nbytes: u64,
}

/// The order the safetensors crate (`prepare`) writes tensors in: dtype descending, then name
/// ascending. Returns indices into `entries`.
pub fn file_order(entries: &[LayoutEntry<'_>]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..entries.len()).collect();
    idx.sort_by(|&a, &b| {
        entries[b]
            .dtype
            .cmp(&entries[a].dtype)
            .then_with(|| entries[a].name.cmp(entries[b].name))
    });
    idx
}

/// Lays out a file of `entries`, in the order given (see [`file_order`]), as the safetensors
/// crate and transformers write it: `{"__metadata__":{"format":"pt"}` first, compact JSON,
/// padded with spaces to a multiple of 8. Returns the head (8-byte length + JSON) and each
/// tensor's absolute offset in the file; the file is `head.len() + sum(nbytes)` long.
pub fn lay_out(entries: &[LayoutEntry<'_>]) -> (Vec<u8>, Vec<u64>) {
    let mut off = 0u64;
    let mut rel = Vec::with_capacity(entries.len());
    let mut json = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    for e in entries {
        let shape: Vec<String> = e.shape.iter().map(|d| d.to_string()).collect();
        json.push(',');
        json.push_str(&serde_json::to_string(e.name).unwrap_or_default());
        json.push_str(&format!(
            r#":{{"dtype":"{}","shape":[{}],"data_offsets":[{},{}]}}"#,
            e.dtype.as_str(),
            shape.join(","),
            off,
            off + e.nbytes
        ));
        rel.push(off);
        off += e.nbytes;
    }
    json.push('}');
    let padded = json.len().next_multiple_of(8);
    let mut head = (padded as u64).to_le_bytes().to_vec();
    head.extend_from_slice(json.as_bytes());
    head.resize(8 + padded, b' ');
    let start = head.len() as u64;
    (head, rel.into_iter().map(|o| start + o).collect())
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use proptest::prelude::*;

    const DTYPES: [Dtype; 4] = [Dtype::BF16, Dtype::F16, Dtype::F32, Dtype::U8];

    proptest! {
        /// Laying out, then parsing, gives back every name, dtype, shape and offset.
        #[test]
        fn layout_then_parse_round_trips(
            specs in proptest::collection::btree_map("[a-z._0-9\\u{e9}\"]{1,24}", (0usize..4, proptest::collection::vec(0u64..5, 0..3)), 0..12)
        ) {
            let entries: Vec<(String, Dtype, Vec<u64>)> = specs
                .into_iter()
                .map(|(n, (d, shape))| (n, DTYPES[d], shape))
                .collect();
            let layout: Vec<LayoutEntry<'_>> = entries
                .iter()
                .map(|(n, d, shape)| LayoutEntry {
                    name: n,
                    dtype: *d,
                    shape,
                    nbytes: shape.iter().product::<u64>() * d.bits() / 8,
                })
                .collect();
            let order = file_order(&layout);
            let ordered: Vec<LayoutEntry<'_>> = order.iter().map(|&i| layout[i].clone()).collect();
            let (head, offsets) = lay_out(&ordered);
            prop_assert_eq!(head.len() % 8, 0);
            let data: u64 = ordered.iter().map(|e| e.nbytes).sum();
            let mut file = head.clone();
            file.resize(head.len() + data as usize, 0);
            let h = parse_header(Path::new("t"), &file).unwrap();
            prop_assert_eq!(h.data_start, head.len() as u64);
            prop_assert_eq!(h.tensors.len(), ordered.len());
            for (e, off) in ordered.iter().zip(&offsets) {
                let t = h.tensors.iter().find(|t| t.name == e.name).unwrap();
                prop_assert_eq!(t.dtype, e.dtype);
                prop_assert_eq!(&t.shape[..], e.shape);
                prop_assert_eq!(h.data_start + t.offsets.0, *off);
                prop_assert_eq!(t.nbytes(), e.nbytes);
            }
            prop_assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data_len));
        v
    }

    fn problem(bytes: &[u8]) -> P {
        match parse_header(Path::new("x.safetensors"), bytes) {
            Err(Error::Safetensors { what, .. }) => what,
            other => panic!("expected a safetensors error, got {other:?}"),
        }
    }

    const GOOD: &str = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;

    #[test]
    fn parses_a_valid_header() {
        let h = parse_header(Path::new("x"), &file(GOOD, 12)).unwrap();
        assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensors[0].name, "a");
        assert_eq!(h.tensors[1].dtype, Dtype::F32);
        assert_eq!(h.data_start, 8 + GOOD.len() as u64);
    }

    #[test]
    fn too_short_for_the_length_prefix() {
        assert_eq!(problem(&[1, 2, 3]), P::TooShortForHeader(3));
    }

    #[test]
    fn header_above_the_cap() {
        let mut v = (MAX_HEADER_SIZE + 1).to_le_bytes().to_vec();
        v.extend_from_slice(b"{}");
        assert_eq!(problem(&v), P::HeaderTooLarge(MAX_HEADER_SIZE + 1));
    }

    #[test]
    fn header_longer_than_the_file() {
        let mut v = 1000u64.to_le_bytes().to_vec();
        v.extend_from_slice(b"{}");
        assert!(matches!(problem(&v), P::HeaderPastEnd { len: 1000, .. }));
    }

    #[test]
    fn header_not_utf8() {
        let mut v = 2u64.to_le_bytes().to_vec();
        v.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(problem(&v), P::NotUtf8);
    }

    #[test]
    fn header_not_json() {
        assert!(matches!(problem(&file("{nope", 0)), P::BadJson(_)));
    }

    #[test]
    fn unknown_dtype() {
        let h = r#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#;
        assert_eq!(problem(&file(h, 1)), P::UnknownDtype("a".into(), "Q4".into()));
    }

    #[test]
    fn duplicate_names() {
        let h = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
        assert_eq!(problem(&file(h, 2)), P::Duplicate("a".into()));
    }

    #[test]
    fn offsets_disagree_with_dtype_and_shape() {
        let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#;
        assert!(matches!(
            problem(&file(h, 4)),
            P::SpanMismatch {
                span: 4,
                expected: 8,
                ..
            }
        ));
    }

    #[test]
    fn overlapping_offsets() {
        let h = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#;
        assert_eq!(problem(&file(h, 3)), P::BadOffsets("b".into()));
    }

    #[test]
    fn offsets_out_of_range_or_truncated_data() {
        let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
        assert_eq!(problem(&file(h, 2)), P::DataLength { expected: 4, actual: 2 });
        assert_eq!(problem(&file(h, 6)), P::DataLength { expected: 4, actual: 6 });
    }

    #[test]
    fn shape_overflow() {
        let h = r#"{"a":{"dtype":"U8","shape":[18446744073709551615,2],"data_offsets":[0,1]}}"#;
        assert_eq!(problem(&file(h, 1)), P::Overflow("a".into()));
    }

    #[test]
    fn reversed_offsets() {
        let h = r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[3,1]}}"#;
        assert_eq!(problem(&file(h, 0)), P::BadOffsets("a".into()));
    }
}
