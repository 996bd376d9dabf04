//! The plan: every output tensor, its operation, its shard and byte offset, computed from
//! headers and JSON only, before any heavy work. Refuses early and lists every adapter tensor
//! that does not fit the base.

use std::cmp::Ordering;
use std::path::Path;

use crate::checkpoint::{Adapter, TensorLoc};
use crate::format::bnb::QuantState;
use crate::format::dtype::FloatDtype;
use crate::format::dtype::{float_of, st_dtype};
use crate::format::safetensors::{Dtype, TensorInfo};
use crate::job::Job;
use crate::writer::output::{FileFormat, PlannedFile, Safetensors, TensorSpec};
pub use crate::job::ShardOrder;

/// Which mapped file a source tensor lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRef {
    /// A shard of the base checkpoint.
    Base(usize),
    /// The adapter's weights file.
    Adapter,
}

/// A source tensor: file and header entry.
#[derive(Debug, Clone)]
pub struct Src {
    /// Which file.
    pub file: FileRef,
    /// Its header entry.
    pub info: TensorInfo,
}

impl Src {
    pub(crate) fn base(loc: &TensorLoc) -> Self {
        Src {
            file: FileRef::Base(loc.shard),
            info: loc.info.clone(),
        }
    }
}

/// The tensors of one bitsandbytes 4-bit weight.
#[derive(Debug, Clone)]
pub struct QuantSrc {
    /// Packed codes.
    pub codes: Src,
    /// Per-block absmax (u8 with double quant, else f32).
    pub absmax: Src,
    /// 16-entry code table.
    pub quant_map: Src,
    /// `(nested_absmax, nested_quant_map)` with double quant.
    pub nested: Option<(Src, Src)>,
    /// Parsed quant state.
    pub state: QuantState,
}

/// The base side of a computed tensor.
#[derive(Debug, Clone)]
pub enum BaseSrc {
    /// A 16/32-bit float tensor.
    Float(Src, FloatDtype),
    /// A 4-bit weight.
    Bnb(Box<QuantSrc>),
}

/// A LoRA pair to add.
#[derive(Debug, Clone)]
pub struct LoraSrc {
    /// `lora_A` `[r, in]`.
    pub a: TensorInfo,
    /// `lora_B` `[out, r]`.
    pub b: TensorInfo,
    /// Rank.
    pub r: usize,
    /// PEFT's scale as f32.
    pub scale: f32,
    /// The adapter tensors' dtype.
    pub dtype: FloatDtype,
}

/// What produces an output tensor.
#[derive(Debug, Clone)]
pub enum Op {
    /// Bytes copied unchanged.
    Copy(Src),
    /// Decoded (and maybe dequantized), maybe LoRA-merged, rounded once.
    Compute {
        /// The base rows.
        base: BaseSrc,
        /// The update on the fast path: one plain Linear LoRA.
        lora: Option<LoraSrc>,
        /// Everything else (embedding LoRA, Conv1D, biases, DoRA, chains, replaced rows),
        /// computed by the general CPU path.
        extra: Option<Box<Extra>>,
    },
    /// One tensor of a weight written as bitsandbytes 4-bit (`Plan::quant_groups[group]`).
    Quant {
        /// Index into `Plan::quant_groups`.
        group: usize,
        /// Which tensor.
        part: QuantPart,
    },
}

/// Which tensor of a bitsandbytes 4-bit weight an output tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantPart {
    /// `P.weight`: packed codes.
    Codes,
    /// `P.weight.absmax`: u8 (double quant) or f32.
    Absmax,
    /// `P.weight.quant_map`: the 16-entry table.
    QuantMap,
    /// `P.weight.nested_absmax`.
    NestedAbsmax,
    /// `P.weight.nested_quant_map`: the dynamic map.
    NestedMap,
    /// `P.weight.quant_state.bitsandbytes__<type>`: the JSON.
    State,
}

/// Statistics of a double-quantized weight, known after the stats pass.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantStats {
    /// Mean of the block absmax values.
    pub offset: f32,
    /// Max |absmax - offset| per 256 blocks.
    pub nested_absmax: Vec<f32>,
}

/// A weight written as bitsandbytes 4-bit: how to compute its f32 values, and how to quantize.
#[derive(Debug, Clone)]
pub struct QuantGroup {
    /// `P.weight`.
    pub name: String,
    /// Computes the f32 rows (an `Op::Compute`).
    pub source: Op,
    /// `[out, in]`.
    pub shape: [u64; 2],
    /// NF4 or FP4.
    pub quant_type: crate::format::bnb::QuantType,
    /// Elements per block.
    pub blocksize: u64,
    /// Double quantization.
    pub double_quant: bool,
    /// The quant state's `dtype`.
    pub state_dtype: FloatDtype,
    /// Round the merged values to this dtype before quantizing (PEFT's DoRA-in-4-bit path).
    pub pre_round: Option<FloatDtype>,
    /// Filled by the stats pass (double quant only).
    pub stats: Option<QuantStats>,
}

impl QuantGroup {
    /// Elements.
    pub fn numel(&self) -> u64 {
        self.shape[0] * self.shape[1]
    }

    /// Blocks.
    pub fn blocks(&self) -> u64 {
        self.numel().div_ceil(self.blocksize)
    }

    /// Rows per tile so that every tile holds whole blocks (tiles start on block boundaries).
    pub fn row_step(&self) -> u64 {
        crate::format::bnb::block_row_step(self.shape[1].max(1), self.blocksize)
    }

    /// The quant-state JSON (needs `stats` for double quant).
    pub fn state_json(&self) -> String {
        crate::format::encode::quant_state_json(
            self.quant_type,
            self.blocksize,
            self.state_dtype.torch_name(),
            self.shape,
            self.double_quant
                .then(|| self.stats.as_ref().map(|s| s.offset).unwrap_or(0.0)),
        )
    }
}

/// A factor matrix of a delta, as stored in the adapter (maybe transposed on load).
#[derive(Debug, Clone)]
pub enum FactorSrc {
    /// An adapter tensor; `transpose` swaps its two dims on load.
    Tensor {
        /// The tensor.
        info: TensorInfo,
        /// Read as its transpose.
        transpose: bool,
        /// Its dtype.
        dtype: FloatDtype,
    },
    /// The 1×1 matrix `[[1.0]]` (bias deltas).
    Ones,
}

/// One additive update `delta[o, i] = fl32(sum_k coef[o, k] * basis[k, i] * scale)`, the sum a
/// sequential FMA over k; `round_delta` rounds it before the add (PEFT's `.to(dtype)`).
#[derive(Debug, Clone)]
pub struct DeltaSrc {
    /// `[rows, r]` in output-row space.
    pub coef: FactorSrc,
    /// `[r, cols]`.
    pub basis: FactorSrc,
    /// Inner dimension.
    pub r: usize,
    /// `fl32(s)`.
    pub scale: f32,
    /// Round the delta to this dtype before adding.
    pub round_delta: Option<FloatDtype>,
}

/// The general path's recipe for one output tensor.
#[derive(Debug, Clone)]
pub struct Extra {
    /// Updates applied in order; between two, the weight is rounded to `work_dtype` (each
    /// PEFT merge writes back into the weight's own dtype).
    pub deltas: Vec<DeltaSrc>,
    /// DoRA magnitude `[out]`: `W' = (m / ||W + delta||_row) * (W + delta)`.
    pub magnitude: Option<TensorInfo>,
    /// Trainable tokens: these rows become the given new rows (`[len, cols]`).
    pub rows: Option<(Vec<u64>, TensorInfo)>,
    /// The weight's own dtype.
    pub work_dtype: FloatDtype,
}

/// One tensor of the output.
#[derive(Debug, Clone)]
pub struct OutTensor {
    /// Name.
    pub name: String,
    /// Output dtype.
    pub dtype: Dtype,
    /// Output shape.
    pub shape: Vec<u64>,
    /// Output bytes.
    pub nbytes: u64,
    /// Rows (first dim, or 1 for scalars) and columns (the rest) for tiling.
    pub rows: u64,
    /// Elements per row.
    pub cols: u64,
    /// How it is produced.
    pub op: Op,
    /// What it adds to `total_parameters` (packed 4-bit weights count two per byte; bnb
    /// helper tensors count nothing, as transformers counts them).
    pub params: u64,
    /// Shard index.
    pub shard: usize,
    /// Absolute offset of its first byte in its file.
    pub offset: u64,
}


/// Counts of what the plan does.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PlanCounts {
    /// LoRA merges.
    pub merged: usize,
    /// Byte copies.
    pub copied: usize,
    /// 4-bit weights dequantized without a LoRA.
    pub dequantized: usize,
    /// Dtype casts without a LoRA.
    pub converted: usize,
    /// 4-bit helper tensors consumed.
    pub consumed_quant_helpers: usize,
    /// 16-bit weights quantized to 4-bit without an update.
    pub quantized: usize,
}

/// The whole output layout.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What the save does, decided once from the options.
    pub job: Job,
    /// Output tensors.
    pub tensors: Vec<OutTensor>,
    /// Output files.
    pub shards: Vec<PlannedFile>,
    /// Index file name when sharded.
    pub index_name: Option<String>,
    /// Sum of tensor data bytes (`total_size`).
    pub total_size: u64,
    /// Sum of element counts (`total_parameters`).
    pub total_parameters: u64,
    /// Output model dtype for `config.json`.
    pub model_dtype: Option<FloatDtype>,
    /// Counts.
    pub counts: PlanCounts,
    /// One-line warnings to show the user.
    pub warnings: Vec<String>,
    /// Keys to set in the output `config.json` (e.g. `tie_word_embeddings: false`).
    pub config_updates: serde_json::Map<String, serde_json::Value>,
    /// Weights written as bitsandbytes 4-bit (`merged_4bit`).
    pub quant_groups: Vec<QuantGroup>,
    /// What `layout` was called with, to lay the files out again once JSON sizes are known.
    pub layout_args: LayoutArgs,
}

/// The arguments of a layout, kept for `relayout`.
#[derive(Debug, Clone)]
pub struct LayoutArgs {
    /// Shard limit.
    pub max_shard_size: u64,
    /// Shard order.
    pub order: ShardOrder,
    /// File stem (`model`, `adapter_model`).
    pub stem: String,
    /// Variant.
    pub variant: Option<String>,
}

impl LayoutArgs {
    /// Shard limit, order, file stem and variant.
    pub fn new(max_shard_size: u64, order: ShardOrder, stem: &str, variant: Option<&str>) -> Self {
        LayoutArgs {
            max_shard_size,
            order,
            stem: stem.to_string(),
            variant: variant.map(str::to_string),
        }
    }
}

impl Plan {
    /// Bytes of all planned files.
    pub fn file_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.file_len).sum()
    }
}

mod matching;
mod merge;
mod op;
mod quantized;

pub use merge::plan_merged;
pub use quantized::{find_quantized, is_quant_helper};

pub(crate) fn rows_cols(shape: &[u64]) -> (u64, u64) {
    match shape.split_first() {
        None => (1, 1),
        Some((r, rest)) => (*r, rest.iter().product()),
    }
}

/// Plans the adapter file of a `lora` save (cast when `dtype` is given).
pub fn plan_adapter(adapter: &Adapter, job: &Job) -> Plan {
    let dtype = job.dtype;
    let mut counts = PlanCounts::default();
    let tensors = adapter
        .weights
        .header
        .tensors
        .iter()
        .map(|t| {
            let src = Src {
                file: FileRef::Adapter,
                info: t.clone(),
            };
            let (op, dt) = match (float_of(t.dtype), dtype) {
                (Some(fd), Some(want)) if fd != want => {
                    counts.converted += 1;
                    (
                        Op::Compute {
                            base: BaseSrc::Float(src, fd),
                            lora: None,
                            extra: None,
                        },
                        st_dtype(want),
                    )
                }
                _ => {
                    counts.copied += 1;
                    (Op::Copy(src), t.dtype)
                }
            };
            let (rows, cols) = rows_cols(&t.shape);
            OutTensor {
                name: t.name.clone(),
                dtype: dt,
                shape: t.shape.clone(),
                nbytes: t.numel() * dt.bits() / 8,
                rows,
                cols,
                op,
                params: t.numel(),
                shard: 0,
                offset: 0,
            }
        })
        .collect();
    layout(
        job,
        tensors,
        LayoutArgs::new(u64::MAX, ShardOrder::Natural, "adapter_model", None),
        dtype,
        counts,
    )
}

/// A part of a `dot_natural_key` (transformers v5): digits sort numerically before text;
/// text sorts by its non-digit prefix, then by a trailing number.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum KeyPart<'a> {
    Num(u128),
    Text(&'a str, Option<u128>),
}

fn natural_key(name: &str) -> Vec<KeyPart<'_>> {
    name.split('.')
        .map(|p| {
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                KeyPart::Num(p.parse().unwrap_or(u128::MAX))
            } else {
                let text = p.trim_end_matches(|c: char| c.is_ascii_digit());
                let digits = &p[text.len()..];
                KeyPart::Text(text, (!digits.is_empty()).then(|| digits.parse().unwrap_or(u128::MAX)))
            }
        })
        .collect()
}

/// Registration order of Llama-family modules; unknown names sort after known ones.
const MODULE_ORDER: [&str; 24] = [
    "model",
    "transformer",
    "embed_tokens",
    "wte",
    "wpe",
    "word_embeddings",
    "layers",
    "h",
    "self_attn",
    "attn",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "mlp",
    "gate_proj",
    "up_proj",
    "down_proj",
    "input_layernorm",
    "post_attention_layernorm",
    "norm",
    "ln_f",
    "final_layernorm",
    "lm_head",
];

fn module_cmp(a: &str, b: &str) -> Ordering {
    let rank = |p: &str| -> (u8, u128, usize, String) {
        if !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()) {
            (0, p.parse().unwrap_or(u128::MAX), 0, String::new())
        } else if let Some(i) = MODULE_ORDER.iter().position(|m| *m == p) {
            (1, 0, i, String::new())
        } else {
            (2, 0, 0, p.to_string())
        }
    };
    a.split('.').map(rank).cmp(b.split('.').map(rank))
}

/// Assigns tensors to shards (huggingface_hub's greedy split) and computes offsets and headers.
pub(crate) fn layout(
    job: &Job,
    mut tensors: Vec<OutTensor>,
    args: LayoutArgs,
    model_dtype: Option<FloatDtype>,
    counts: PlanCounts,
) -> Plan {
    let LayoutArgs {
        max_shard_size,
        order,
        ref stem,
        ref variant,
    } = args;
    let variant = variant.as_deref();
    let mut idx: Vec<usize> = (0..tensors.len()).collect();
    match order {
        ShardOrder::Natural => idx.sort_by(|&a, &b| natural_key(&tensors[a].name).cmp(&natural_key(&tensors[b].name))),
        ShardOrder::Module => idx.sort_by(|&a, &b| module_cmp(&tensors[a].name, &tensors[b].name)),
    }
    // The output format decides which tensors share a file, the files' names and layout.
    let format = Safetensors {
        max_shard_size,
        stem: stem.clone(),
        variant: variant.map(str::to_string),
    };
    let specs: Vec<TensorSpec<'_>> = idx
        .iter()
        .map(|&i| TensorSpec {
            name: &tensors[i].name,
            dtype: tensors[i].dtype,
            shape: &tensors[i].shape,
            nbytes: tensors[i].nbytes,
        })
        .collect();
    let files = format.files(&specs);
    let index_name = format.index_name(files.len());
    let mut shards = Vec::with_capacity(files.len());
    for (si, (file_name, file)) in files.into_iter().enumerate() {
        let members: Vec<usize> = file.tensors.iter().map(|&k| idx[k]).collect();
        for (&i, &off) in members.iter().zip(&file.offsets) {
            tensors[i].shard = si;
            tensors[i].offset = off;
        }
        shards.push(PlannedFile {
            skip: false,
            file_name,
            file_len: file.len,
            head: file.head,
            tensors: members,
        });
    }
    let total_size = tensors.iter().map(|t| t.nbytes).sum();
    let total_parameters = tensors.iter().map(|t| t.params).sum();
    Plan {
        job: job.clone(),
        tensors,
        shards,
        index_name,
        total_size,
        total_parameters,
        model_dtype,
        counts,
        warnings: Vec::new(),
        config_updates: serde_json::Map::new(),
        quant_groups: Vec::new(),
        layout_args: args.clone(),
    }
}

impl Plan {
    /// Lays the files out again (after the stats pass fixed the quant-state JSON sizes).
    pub fn relayout(&mut self) {
        for t in &mut self.tensors {
            if let Op::Quant {
                group,
                part: QuantPart::State,
            } = t.op
            {
                let len = self.quant_groups[group].state_json().len() as u64;
                t.shape = vec![len];
                t.nbytes = len;
                t.rows = len;
            }
        }
        let a = self.layout_args.clone();
        let tensors = std::mem::take(&mut self.tensors);
        let fresh = layout(&self.job, tensors, a.clone(), self.model_dtype, self.counts.clone());
        self.tensors = fresh.tensors;
        self.shards = fresh.shards;
        self.index_name = fresh.index_name;
        self.total_size = fresh.total_size;
        self.total_parameters = fresh.total_parameters;
    }
}

/// The plan as the `--dry-run` text.
pub fn describe(plan: &Plan, out: &Path, free: Option<u64>) -> String {
    let c = &plan.counts;
    let mut s = format!(
        "plan: {} tensors ({} merged, {} copied, {} dequantized, {} converted; {} 4-bit helper tensors consumed)\n",
        plan.tensors.len(),
        c.merged,
        c.copied,
        c.dequantized,
        c.converted,
        c.consumed_quant_helpers
    );
    s.push_str(&format!(
        "output: {} bytes of tensor data in {} file(s), {} bytes on disk\n",
        plan.total_size,
        plan.shards.len(),
        plan.file_bytes()
    ));
    for sh in &plan.shards {
        s.push_str(&format!(
            "  {}  {} tensors  {} bytes\n",
            sh.file_name,
            sh.tensors.len(),
            sh.file_len
        ));
    }
    match free {
        Some(f) => s.push_str(&format!("free disk at {}: {f} bytes\n", out.display())),
        None => s.push_str(&format!("free disk at {}: unknown\n", out.display())),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, nbytes: u64) -> OutTensor {
        OutTensor {
            name: name.into(),
            dtype: Dtype::U8,
            shape: vec![nbytes],
            nbytes,
            rows: nbytes,
            cols: 1,
            params: nbytes,
            op: Op::Copy(Src {
                file: FileRef::Adapter,
                info: TensorInfo {
                    name: name.into(),
                    dtype: Dtype::U8,
                    shape: vec![nbytes],
                    offsets: (0, nbytes),
                },
            }),
            shard: 0,
            offset: 0,
        }
    }

    #[test]
    fn natural_key_sorts_like_transformers() {
        let mut v = vec![
            "model.layers.10.a",
            "model.layers.9.a",
            "lm_head.weight",
            "model.embed_tokens.weight",
            "x.shard_11",
            "x.shard_2",
        ];
        v.sort_by(|a, b| natural_key(a).cmp(&natural_key(b)));
        assert_eq!(
            v,
            [
                "lm_head.weight",
                "model.embed_tokens.weight",
                "model.layers.9.a",
                "model.layers.10.a",
                "x.shard_2",
                "x.shard_11"
            ]
        );
    }

    #[test]
    fn module_order_follows_registration() {
        let mut v = vec![
            "lm_head.weight",
            "model.norm.weight",
            "model.layers.0.post_attention_layernorm.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.weight",
            "model.embed_tokens.weight",
        ];
        v.sort_by(|a, b| module_cmp(a, b));
        assert_eq!(
            v,
            [
                "model.embed_tokens.weight",
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.k_proj.weight",
                "model.layers.0.mlp.down_proj.weight",
                "model.layers.0.post_attention_layernorm.weight",
                "model.norm.weight",
                "lm_head.weight"
            ]
        );
    }

    /// docs/formats.md §3.2: `[a(1), BIG(10), b(1)]` with max 5 gives shards `[BIG], [a, b]`.
    #[test]
    fn big_tensor_gets_its_own_shard_first() {
        let p = layout(
            &Job::merged_16bit(),
            vec![t("a", 1), t("b", 10), t("c", 1)],
            LayoutArgs::new(5, ShardOrder::Natural, "model", None),
            None,
            PlanCounts::default(),
        );
        assert_eq!(p.shards.len(), 2);
        assert_eq!(p.shards[0].file_name, "model-00001-of-00002.safetensors");
        assert_eq!(p.tensors[1].shard, 0);
        assert_eq!(p.tensors[0].shard, 1);
        assert_eq!(p.tensors[2].shard, 1);
        assert_eq!(p.index_name.as_deref(), Some("model.safetensors.index.json"));
        assert_eq!(p.total_size, 12);
    }

    #[test]
    fn variants_name_files_like_transformers() {
        let p = layout(
            &Job::merged_16bit(),
            vec![t("a", 3), t("b", 3)],
            LayoutArgs::new(5, ShardOrder::Natural, "model", Some("v2")),
            None,
            PlanCounts::default(),
        );
        assert_eq!(p.shards[1].file_name, "model.v2-00002-of-00002.safetensors");
        assert_eq!(p.index_name.as_deref(), Some("model.safetensors.index.v2.json"));
        let p = layout(
            &Job::merged_16bit(),
            vec![t("a", 3)],
            LayoutArgs::new(5, ShardOrder::Natural, "model", Some("v2")),
            None,
            PlanCounts::default(),
        );
        assert_eq!(p.shards[0].file_name, "model.v2.safetensors");
        assert_eq!(p.index_name, None);
    }

    #[test]
    fn headers_are_padded_to_eight_and_parse_back() {
        let p = layout(
            &Job::merged_16bit(),
            vec![t("a", 3), t("bb", 4)],
            LayoutArgs::new(100, ShardOrder::Natural, "model", None),
            None,
            PlanCounts::default(),
        );
        let h = &p.shards[0].head;
        assert_eq!((h.len() - 8) % 8, 0);
        let mut file = h.clone();
        file.extend(std::iter::repeat_n(0, 7));
        let parsed = crate::format::safetensors::parse_header(Path::new("x"), &file).unwrap();
        assert_eq!(parsed.tensors.len(), 2);
    }
}
