//! GGUF, the file llama.cpp reads, both ways: laying out a header (metadata, tensor infos,
//! alignment) before any tensor byte is known, and parsing one back (for `inspect`, `verify` and
//! the tests). docs/formats.md §4 describes the layout.
//!
//! ```text
//! "GGUF" u32 version (3) u64 tensor_count u64 kv_count
//! kv_count × (string key, u32 value type, value)
//! tensor_count × (string name, u32 n_dims, n_dims × u64 dim — row length first —,
//!                 u32 ggml type, u64 offset from the data start)
//! zeros to a multiple of 32 (the data start)
//! each tensor's bytes, then zeros to a multiple of 32
//! ```
//! Strings are a u64 byte length and UTF-8 without a NUL; arrays are a u32 element type, a u64
//! count and the elements. Everything is little-endian.

use crate::error::{Error, Result};

/// The version written.
pub const VERSION: u32 = 3;
/// The alignment of the data start and of every tensor (`general.alignment` is not written,
/// so readers use this default).
pub const ALIGNMENT: u64 = 32;
const MAGIC: &[u8; 4] = b"GGUF";

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool (one byte)
    Bool(bool),
    /// UTF-8 text
    String(String),
    /// Elements of one type (`Value::type_id` of the first; an empty array is U8-typed here,
    /// though writers drop empty arrays).
    Array(Vec<Value>),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

impl Value {
    /// GGUF's value type id.
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::String(s) => write_string(out, s),
            Value::Array(items) => {
                let elem = items.first().map_or(0, Value::type_id);
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    v.write(out);
                }
            }
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A ggml tensor type: how many values a block holds and how many bytes it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float
    F32,
    /// IEEE half
    F16,
    /// 4-bit, 32 per block, one f16 scale
    Q4_0,
    /// 4-bit, 32 per block, f16 scale and min
    Q4_1,
    /// 5-bit, 32 per block
    Q5_0,
    /// 5-bit, 32 per block, with min
    Q5_1,
    /// 8-bit, 32 per block, one f16 scale
    Q8_0,
    /// 8-bit, 32 per block, scale and sum
    Q8_1,
    /// 2-bit k-quant, 256 per super-block
    Q2K,
    /// 3-bit k-quant
    Q3K,
    /// 4-bit k-quant
    Q4K,
    /// 5-bit k-quant
    Q5K,
    /// 6-bit k-quant
    Q6K,
    /// 8-bit k-quant (intermediate)
    Q8K,
    /// bfloat16
    Bf16,
}

impl GgmlType {
    /// Every type, for lookups by id.
    pub const ALL: [GgmlType; 15] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q8K,
        GgmlType::Bf16,
    ];

    /// ggml's type id (`enum ggml_type`).
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Q8K => 15,
            GgmlType::Bf16 => 30,
        }
    }

    /// The type with ggml id `id`.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    /// llama.cpp's name (`q8_0`, `q4_K`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
            GgmlType::Q5_0 => "q5_0",
            GgmlType::Q5_1 => "q5_1",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q8_1 => "q8_1",
            GgmlType::Q2K => "q2_K",
            GgmlType::Q3K => "q3_K",
            GgmlType::Q4K => "q4_K",
            GgmlType::Q5K => "q5_K",
            GgmlType::Q6K => "q6_K",
            GgmlType::Q8K => "q8_K",
            GgmlType::Bf16 => "bf16",
        }
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q8_1 => (32, 36),
            GgmlType::Q2K => (256, 84),
            GgmlType::Q3K => (256, 110),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
            GgmlType::Q8K => (256, 292),
        }
    }

    /// Bytes of a row of `n` values, or `None` when `n` is not a whole number of blocks.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let (values, bytes) = self.block();
        n.is_multiple_of(values).then_some(n / values * bytes)
    }
}

/// One tensor of a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    /// Name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Shape as PyTorch and safetensors write it (rows first); GGUF stores it reversed.
    pub shape: Vec<u64>,
    /// Its type.
    pub ggml_type: GgmlType,
}

impl Tensor {
    /// Bytes of data (`None` when a row is not a whole number of blocks).
    pub fn nbytes(&self) -> Option<u64> {
        let row = *self.shape.last().unwrap_or(&1);
        let rows: u64 = self.shape.iter().rev().skip(1).product();
        self.ggml_type.row_bytes(row).map(|b| b * rows)
    }
}

/// Lays out a GGUF file: the head (header, metadata, tensor infos, padding to the data start)
/// and each tensor's absolute offset; the file is `len` bytes (every tensor padded to 32).
pub fn lay_out(kvs: &[(String, Value)], tensors: &[Tensor]) -> Result<(Vec<u8>, Vec<u64>, u64)> {
    let (head, _, offsets, len) = lay_out_parts(kvs, tensors)?;
    Ok((head, offsets, len))
}

/// [`lay_out`], also saying where the tensor infos end (before the padding).
fn lay_out_parts(kvs: &[(String, Value)], tensors: &[Tensor]) -> Result<(Vec<u8>, usize, Vec<u64>, u64)> {
    let mut head = Vec::new();
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        write_string(&mut head, k);
        head.extend_from_slice(&v.type_id().to_le_bytes());
        v.write(&mut head);
    }
    let mut rel = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        let nbytes = t.nbytes().ok_or_else(|| {
            Error::Internal(format!(
                "gguf: tensor `{}` {:?}: rows are not whole {} blocks",
                t.name,
                t.shape,
                t.ggml_type.name()
            ))
        })?;
        write_string(&mut head, &t.name);
        head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&t.ggml_type.id().to_le_bytes());
        head.extend_from_slice(&rel.to_le_bytes());
        offsets.push(rel);
        rel += nbytes.next_multiple_of(ALIGNMENT);
    }
    let infos_end = head.len();
    head.resize((head.len() as u64).next_multiple_of(ALIGNMENT) as usize, 0);
    let start = head.len() as u64;
    Ok((head, infos_end, offsets.into_iter().map(|o| o + start).collect(), start + rel))
}

/// A parsed GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// The version.
    pub version: u32,
    /// Metadata, in file order.
    pub kvs: Vec<(String, Value)>,
    /// Tensors, in file order, with their absolute offsets.
    pub tensors: Vec<(Tensor, u64)>,
    /// Where the data starts.
    pub data_start: u64,
}

/// Reads a GGUF header from the start of `bytes` (which may be just the head). Counts and
/// lengths are checked against what is there, so a hostile file cannot make it allocate.
pub fn parse(bytes: &[u8]) -> std::result::Result<Header, String> {
    let mut r = Reader { b: bytes, pos: 0 };
    if r.take(4)? != MAGIC {
        return Err("not a GGUF file (no `GGUF` magic)".into());
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} (this reads 2 and 3)"));
    }
    let n_tensors = r.u64()?;
    let n_kvs = r.u64()?;
    let mut kvs = Vec::new();
    for _ in 0..n_kvs {
        let key = r.string()?;
        let ty = r.u32()?;
        kvs.push((key, r.value(ty, 0)?));
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims > 8 {
            return Err(format!("tensor `{name}`: {n_dims} dimensions"));
        }
        let mut shape = (0..n_dims).map(|_| r.u64()).collect::<std::result::Result<Vec<_>, _>>()?;
        shape.reverse();
        let id = r.u32()?;
        let ggml_type = GgmlType::from_id(id).ok_or_else(|| format!("tensor `{name}`: ggml type {id}"))?;
        let offset = r.u64()?;
        infos.push((
            Tensor {
                name,
                shape,
                ggml_type,
            },
            offset,
        ));
    }
    let alignment = kvs
        .iter()
        .find(|(k, _)| k == "general.alignment")
        .and_then(|(_, v)| match v {
            Value::U32(a) => Some(u64::from(*a)),
            _ => None,
        })
        .unwrap_or(ALIGNMENT);
    let data_start = (r.pos as u64).next_multiple_of(alignment.max(1));
    let tensors = infos.into_iter().map(|(t, off)| (t, data_start + off)).collect();
    Ok(Header {
        version,
        kvs,
        tensors,
        data_start,
    })
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.u64()?;
        let n = usize::try_from(n).map_err(|_| format!("string length {n}"))?;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| format!("string at byte {} is not UTF-8", self.pos - n))
    }

    fn value(&mut self, ty: u32, depth: u32) -> std::result::Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.array()?)),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("bool value {b}")),
            },
            8 => Value::String(self.string()?),
            9 if depth == 0 => {
                let elem = self.u32()?;
                let n = self.u64()?;
                // Every element takes at least one byte: a count beyond what is left is a lie.
                if n > (self.b.len() - self.pos) as u64 {
                    return Err(format!("array of {n} elements in {} bytes", self.b.len() - self.pos));
                }
                Value::Array((0..n).map(|_| self.value(elem, depth + 1)).collect::<std::result::Result<_, _>>()?)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            t => return Err(format!("value type {t}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<u8>().prop_map(Value::U8),
            any::<i8>().prop_map(Value::I8),
            any::<u16>().prop_map(Value::U16),
            any::<i16>().prop_map(Value::I16),
            any::<u32>().prop_map(Value::U32),
            any::<i32>().prop_map(Value::I32),
            any::<u32>().prop_map(|b| Value::F32(f32::from_bits(b & 0x7f7f_ffff))),
            any::<bool>().prop_map(Value::Bool),
            "[a-z\\u{e9}\\u{4e2d} ]{0,12}".prop_map(Value::String),
            any::<u64>().prop_map(Value::U64),
            any::<i64>().prop_map(Value::I64),
            any::<u64>().prop_map(|b| Value::F64(f64::from_bits(b & 0x7fef_ffff_ffff_ffff))),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            scalar(),
            proptest::collection::vec(any::<u32>().prop_map(Value::U32), 1..20).prop_map(Value::Array),
            proptest::collection::vec("[a-z]{0,5}".prop_map(Value::String), 1..20).prop_map(Value::Array),
        ]
    }

    fn tensor() -> impl Strategy<Value = Tensor> {
        let ty = proptest::sample::select(GgmlType::ALL.to_vec());
        ("[a-z.0-9_]{1,20}", ty, 1u64..4, 0u64..3).prop_map(|(name, ggml_type, blocks, rows)| {
            let row = blocks * ggml_type.block().0;
            let shape = if rows == 0 { vec![row] } else { vec![rows, row] };
            Tensor {
                name,
                shape,
                ggml_type,
            }
        })
    }

    proptest! {
        /// Laying out, then parsing, gives back every key, value, tensor and offset; every
        /// offset is aligned and the tensors tile the data with their padding.
        #[test]
        fn layout_then_parse_round_trips(
            kvs in proptest::collection::vec(("[a-z.]{1,16}", value()), 0..8),
            tensors in proptest::collection::vec(tensor(), 0..6),
        ) {
            let (head, offsets, len) = lay_out(&kvs, &tensors).unwrap();
            prop_assert_eq!(head.len() as u64 % ALIGNMENT, 0);
            let h = parse(&head).unwrap();
            prop_assert_eq!(h.version, VERSION);
            prop_assert_eq!(&h.kvs, &kvs);
            prop_assert_eq!(h.data_start, head.len() as u64);
            let mut end = h.data_start;
            for ((t, off), (want, planned)) in h.tensors.iter().zip(tensors.iter().zip(&offsets)) {
                prop_assert_eq!(t, want);
                prop_assert_eq!(off, planned);
                prop_assert_eq!(*off, end);
                prop_assert_eq!(off % ALIGNMENT, 0);
                end = off + want.nbytes().unwrap().next_multiple_of(ALIGNMENT);
            }
            prop_assert_eq!(end, len);
        }

        /// Cut before the end of its tensor infos, a header is an error, never a panic.
        #[test]
        fn truncated_headers_are_errors(cut in 0usize..200) {
            let kvs = vec![("general.architecture".to_string(), Value::String("llama".into()))];
            let t = vec![Tensor { name: "a".into(), shape: vec![2, 32], ggml_type: GgmlType::Q8_0 }];
            let (head, infos_end, _, _) = lay_out_parts(&kvs, &t).unwrap();
            let n = cut.min(head.len());
            prop_assert_eq!(parse(&head[..n]).is_ok(), n >= infos_end);
        }
    }

    /// The file gguf-py wrote (`scripts/make_gguf_fixtures.py`), rebuilt from its description:
    /// every KV type, the duplicate-key and empty-value rules already applied by the writer, and
    /// F32/F16/BF16/Q8_0 tensors encoded by `ggml.rs`: the same bytes.
    #[test]
    fn equals_the_file_gguf_py_wrote() {
        use serde_json::Value as J;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf");
        let want = std::fs::read(dir.join("kv_and_tensors.gguf")).unwrap();
        let desc: J = serde_json::from_slice(&std::fs::read(dir.join("kv_and_tensors.json")).unwrap()).unwrap();
        let scalar = |ty: &str, v: &J| -> Value {
            match ty {
                "UINT8" => Value::U8(v.as_u64().unwrap() as u8),
                "INT8" => Value::I8(v.as_i64().unwrap() as i8),
                "UINT16" => Value::U16(v.as_u64().unwrap() as u16),
                "INT16" => Value::I16(v.as_i64().unwrap() as i16),
                "UINT32" => Value::U32(v.as_u64().unwrap() as u32),
                "INT32" => Value::I32(v.as_i64().unwrap() as i32),
                "FLOAT32" => Value::F32(v.as_f64().unwrap() as f32),
                "BOOL" => Value::Bool(v.as_bool().unwrap()),
                "STRING" => Value::String(v.as_str().unwrap().to_string()),
                "UINT64" => Value::U64(v.as_u64().unwrap()),
                "INT64" => Value::I64(v.as_i64().unwrap()),
                "FLOAT64" => Value::F64(v.as_f64().unwrap()),
                t => panic!("type {t}"),
            }
        };
        let kvs: Vec<(String, Value)> = desc["kvs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                let ty = kv["type"].as_str().unwrap();
                let v = if ty == "ARRAY" {
                    let sub = kv["sub_type"].as_str().unwrap();
                    Value::Array(kv["value"].as_array().unwrap().iter().map(|x| scalar(sub, x)).collect())
                } else {
                    scalar(ty, &kv["value"])
                };
                (kv["key"].as_str().unwrap().to_string(), v)
            })
            .collect();
        let mut tensors = Vec::new();
        let mut data = Vec::new();
        for t in desc["tensors"].as_array().unwrap() {
            let x: Vec<f32> = t["input_f32_bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| f32::from_bits(b.as_u64().unwrap() as u32))
                .collect();
            let (ty, bytes): (GgmlType, Vec<u8>) = match t["ggml_type"].as_str().unwrap() {
                "F32" => (GgmlType::F32, x.iter().flat_map(|v| v.to_le_bytes()).collect()),
                "F16" => (GgmlType::F16, x.iter().flat_map(|&v| super::super::ggml::f16_bits(v).to_le_bytes()).collect()),
                "BF16" => (GgmlType::Bf16, x.iter().flat_map(|&v| super::super::ggml::bf16_bits(v).to_le_bytes()).collect()),
                "Q8_0" => (
                    GgmlType::Q8_0,
                    x.chunks_exact(32)
                        .flat_map(|c| {
                            let mut b = [0u8; 34];
                            super::super::ggml::q8_0_block(c.try_into().unwrap(), &mut b);
                            b
                        })
                        .collect(),
                ),
                other => panic!("type {other}"),
            };
            let shape: Vec<u64> = t["hf_shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
            tensors.push(Tensor {
                name: t["name"].as_str().unwrap().to_string(),
                shape,
                ggml_type: ty,
            });
            data.push(bytes);
        }
        let (head, offsets, len) = lay_out(&kvs, &tensors).unwrap();
        let mut file = head;
        for (bytes, off) in data.iter().zip(&offsets) {
            file.resize(*off as usize, 0);
            file.extend_from_slice(bytes);
        }
        file.resize(len as usize, 0);
        assert_eq!(file.len(), want.len());
        if let Some(i) = file.iter().zip(&want).position(|(a, b)| a != b) {
            panic!("first differing byte at {i}");
        }
        let parsed = parse(&want).unwrap();
        assert_eq!(parsed.kvs, kvs);
        assert_eq!(parsed.tensors.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(), tensors);
    }

    #[test]
    fn sizes_are_ggml_s() {
        assert_eq!(GgmlType::Q8_0.row_bytes(64), Some(68));
        assert_eq!(GgmlType::Q4K.row_bytes(512), Some(288));
        assert_eq!(GgmlType::Q6K.row_bytes(256), Some(210));
        assert_eq!(GgmlType::Q8_0.row_bytes(40), None, "a partial block does not fit");
        assert_eq!(GgmlType::from_id(30), Some(GgmlType::Bf16));
        assert_eq!(GgmlType::from_id(4), None, "ids 4 and 5 were removed from ggml");
    }

    #[test]
    fn hostile_counts_do_not_allocate() {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        write_string(&mut b, "k");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&b).unwrap_err().contains("array of"));
        assert!(parse(b"GGUF\x01\0\0\0").unwrap_err().contains("version 1"));
        assert!(parse(b"GGML").is_err());
    }
}
