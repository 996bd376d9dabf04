//! The plan's data model: every output tensor with its op (where its bytes come from and how
//! they are made), the 4-bit groups, the planned files, the counts.

use crate::checkpoint::TensorLoc;
use crate::format::bnb::QuantState;
use crate::format::dtype::FloatDtype;
use crate::format::safetensors::{Dtype, TensorInfo};
use crate::job::{Job, ShardOrder};
use crate::writer::output::PlannedFile;

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
    /// Bytes made at plan time (a GGUF's generated tensors, like `rope_freqs.weight`).
    Literal(std::sync::Arc<Vec<u8>>),
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
    /// A GGUF tensor: how the merged 16-bit values become its bytes.
    pub gguf: Option<GgufEnc>,
}

/// How a GGUF tensor is made from the merged model's tensor, as llama.cpp's route makes it: the
/// merged 16-bit values (what `merged_16bit` writes), to f32, rows permuted and values shifted
/// as the converter does for the architecture, maybe rounded through the 16-bit GGUF that
/// `llama-quantize` reads, then encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgufEnc {
    /// The merged checkpoint's dtype of this tensor.
    pub merged: FloatDtype,
    /// Undo HF's rotary row order with this many heads (Llama's q/k: `permute`).
    pub heads: Option<u64>,
    /// Add 1 to every value (Gemma's RMSNorm weights).
    pub add_one: bool,
    /// Round through this 16-bit type first (the intermediate GGUF of `llama-quantize`).
    pub through: Option<crate::format::gguf::GgmlType>,
    /// The stored type and who computes it.
    pub enc: crate::format::ggml_rows::Encoding,
}

impl OutTensor {
    /// Rows per tile: whole heads for a permuted GGUF tensor (the permutation stays inside a
    /// head), else 1.
    pub fn row_step(&self) -> u64 {
        match self.gguf.and_then(|g| g.heads) {
            Some(h) if h > 0 && self.rows.is_multiple_of(h) => self.rows / h,
            _ => 1,
        }
    }

    /// Bytes of one output row.
    pub fn row_bytes(&self) -> u64 {
        match &self.gguf {
            Some(g) => g.enc.row_bytes(self.cols).unwrap_or(0),
            None => self.cols * self.dtype.bits() / 8,
        }
    }
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
    /// For a tensor of a file that others follow (`PlannedFile::follows`), the tensors at the
    /// same place in those files, made from the same values; empty otherwise (or for all).
    pub twins: Vec<Vec<usize>>,
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
    /// The tensors made from the same values as `t`: itself, then its twins.
    pub fn with_twins(&self, t: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(t).chain(self.twins.get(t).into_iter().flatten().copied())
    }

    /// Bytes of all planned files.
    pub fn file_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.file_len).sum()
    }
}

pub(crate) fn rows_cols(shape: &[u64]) -> (u64, u64) {
    match shape.split_first() {
        None => (1, 1),
        Some((r, rest)) => (*r, rest.iter().product()),
    }
}
