//! `llama-quantize`'s rules, without the quantizing: which output type every tensor gets, in
//! which order the tensors are written, and what becomes of the metadata. Ported from
//! `src/llama-quant.cpp` (llama.cpp as vendored in llama-cpp-python 0.3.36), for what applies
//! with its defaults: no imatrix, no `--pure`, no `--tensor-type` / `--output-tensor-type` /
//! `--token-embedding-type` overrides, no `--keep-split`, no `--prune-layers`, no
//! `--override-kv`, `--leave-output-tensor` off. Line numbers below are of that file unless
//! another is named.
//!
//! Only the file types of [`FileType`] are ported; branches that need another one (the IQ
//! types, TQ, MXFP4, Q2_K_S, Q1_0/Q2_0) cannot be reached and are left out.

use crate::format::gguf::{GgmlType, Value};

/// llama.cpp's file types (`LLAMA_FTYPE_*` of `include/llama.h`), the targets `llama-quantize`
/// and the converter accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// All f32 (`LLAMA_FTYPE_ALL_F32`).
    F32,
    /// f16 matrices.
    F16,
    /// bf16 matrices.
    Bf16,
    /// Q8_0 matrices.
    Q8_0,
    /// Q4_0 (output Q6_K).
    Q4_0,
    /// Q4_1 (output Q6_K).
    Q4_1,
    /// Q5_0 (output Q6_K).
    Q5_0,
    /// Q5_1 (output Q6_K).
    Q5_1,
    /// Q2_K mix.
    Q2K,
    /// Q3_K small.
    Q3KS,
    /// Q3_K medium.
    Q3KM,
    /// Q3_K large.
    Q3KL,
    /// Q4_K small.
    Q4KS,
    /// Q4_K medium.
    Q4KM,
    /// Q5_K small.
    Q5KS,
    /// Q5_K medium.
    Q5KM,
    /// Q6_K.
    Q6K,
}

impl FileType {
    /// Every file type, in the order of the enum.
    pub const ALL: [FileType; 17] = [
        FileType::F32,
        FileType::F16,
        FileType::Bf16,
        FileType::Q8_0,
        FileType::Q4_0,
        FileType::Q4_1,
        FileType::Q5_0,
        FileType::Q5_1,
        FileType::Q2K,
        FileType::Q3KS,
        FileType::Q3KM,
        FileType::Q3KL,
        FileType::Q4KS,
        FileType::Q4KM,
        FileType::Q5KS,
        FileType::Q5KM,
        FileType::Q6K,
    ];

    /// The type named `s`, case-insensitive: a [`FileType::name`], or one of the aliases
    /// `llama-quantize` also takes (`q3_k`, `q4_k`, `q5_k` are the `_m` mixes,
    /// `tools/quantize/quantize.cpp` QUANT_OPTIONS).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.to_ascii_lowercase();
        let alias = match s.as_str() {
            "q3_k" => Some(FileType::Q3KM),
            "q4_k" => Some(FileType::Q4KM),
            "q5_k" => Some(FileType::Q5KM),
            _ => None,
        };
        alias.or_else(|| Self::ALL.into_iter().find(|t| t.name() == s))
    }

    /// The lower-case llama.cpp name (`q4_k_m`).
    pub fn name(self) -> &'static str {
        match self {
            FileType::F32 => "f32",
            FileType::F16 => "f16",
            FileType::Bf16 => "bf16",
            FileType::Q8_0 => "q8_0",
            FileType::Q4_0 => "q4_0",
            FileType::Q4_1 => "q4_1",
            FileType::Q5_0 => "q5_0",
            FileType::Q5_1 => "q5_1",
            FileType::Q2K => "q2_k",
            FileType::Q3KS => "q3_k_s",
            FileType::Q3KM => "q3_k_m",
            FileType::Q3KL => "q3_k_l",
            FileType::Q4KS => "q4_k_s",
            FileType::Q4KM => "q4_k_m",
            FileType::Q5KS => "q5_k_s",
            FileType::Q5KM => "q5_k_m",
            FileType::Q6K => "q6_k",
        }
    }

    /// The `general.file_type` value (`LLAMA_FTYPE_*`, `include/llama.h` 118-150).
    pub fn id(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q4_1 => 3,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q5_1 => 9,
            FileType::Q2K => 10,
            FileType::Q3KS => 11,
            FileType::Q3KM => 12,
            FileType::Q3KL => 13,
            FileType::Q4KS => 14,
            FileType::Q4KM => 15,
            FileType::Q5KS => 16,
            FileType::Q5KM => 17,
            FileType::Q6K => 18,
            FileType::Bf16 => 32,
        }
    }

    /// Whether the reference file is made by `llama-quantize` (from an f16/bf16/f32 GGUF) rather
    /// than directly by `convert_hf_to_gguf.py --outtype`. The converter makes f32, f16, bf16 and
    /// q8_0 itself, and that is how those files are normally made, so they count as the
    /// converter's (false) although `llama-quantize` accepts them too (`tensor_types` still
    /// answers for them as `llama-quantize` would); everything else only `llama-quantize` makes.
    pub fn is_quantize(self) -> bool {
        !matches!(self, FileType::F32 | FileType::F16 | FileType::Bf16 | FileType::Q8_0)
    }

    /// The type most tensors get (`llama_ftype_get_default_type`, 881-925).
    pub fn default_type(self) -> GgmlType {
        match self {
            FileType::F32 => GgmlType::F32,
            FileType::F16 => GgmlType::F16,
            FileType::Bf16 => GgmlType::Bf16,
            FileType::Q8_0 => GgmlType::Q8_0,
            FileType::Q4_0 => GgmlType::Q4_0,
            FileType::Q4_1 => GgmlType::Q4_1,
            FileType::Q5_0 => GgmlType::Q5_0,
            FileType::Q5_1 => GgmlType::Q5_1,
            FileType::Q2K => GgmlType::Q2K,
            FileType::Q3KS | FileType::Q3KM | FileType::Q3KL => GgmlType::Q3K,
            FileType::Q4KS | FileType::Q4KM => GgmlType::Q4K,
            FileType::Q5KS | FileType::Q5KM => GgmlType::Q5K,
            FileType::Q6K => GgmlType::Q6K,
        }
    }
}

/// What the rules need to know about the model (from the GGUF's metadata; `ModelInfo::from_kvs`
/// reads it as `llama_model::load_hparams` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelInfo<'a> {
    /// `general.architecture` (`llama`, `qwen2`, `gemma3`, `phi3`, ...).
    pub arch: &'a str,
    /// `{arch}.block_count` (`hparams.n_layer_all`; these architectures have no NextN layers).
    pub n_layer: u32,
    /// `{arch}.expert_count`, 0 when absent.
    pub n_expert: u32,
    /// `{arch}.attention.head_count` (layer 0's when it is an array).
    pub n_head: u32,
    /// `{arch}.attention.head_count_kv` (layer 0's), `n_head` when absent.
    pub n_head_kv: u32,
}

impl<'a> ModelInfo<'a> {
    /// Reads the fields from GGUF metadata; `Err` names a missing or non-integer key.
    pub fn from_kvs(kvs: &'a [(String, Value)]) -> Result<Self, String> {
        let get = |key: &str| kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let arch = match get("general.architecture") {
            Some(Value::String(s)) => s.as_str(),
            _ => return Err("general.architecture is missing or not a string".into()),
        };
        // llama.cpp's get_key_or_arr: a scalar, or an array whose element il is layer il's.
        let int = |key: String, required: bool| -> Result<Option<u32>, String> {
            let v = match get(&key) {
                None if required => return Err(format!("{key} is missing")),
                None => return Ok(None),
                Some(Value::Array(a)) => a.first().ok_or_else(|| format!("{key} is an empty array"))?,
                Some(v) => v,
            };
            let n: i128 = match v {
                Value::U8(x) => (*x).into(),
                Value::I8(x) => (*x).into(),
                Value::U16(x) => (*x).into(),
                Value::I16(x) => (*x).into(),
                Value::U32(x) => (*x).into(),
                Value::I32(x) => (*x).into(),
                Value::U64(x) => (*x).into(),
                Value::I64(x) => (*x).into(),
                _ => return Err(format!("{key} is not an integer")),
            };
            u32::try_from(n).map(Some).map_err(|_| format!("{key} = {n} is out of range"))
        };
        let n_layer = int(format!("{arch}.block_count"), true)?.unwrap_or(0);
        let n_expert = int(format!("{arch}.expert_count"), false)?.unwrap_or(0);
        let n_head = int(format!("{arch}.attention.head_count"), false)?.unwrap_or(0);
        let n_head_kv = int(format!("{arch}.attention.head_count_kv"), false)?.unwrap_or(n_head);
        Ok(ModelInfo { arch, n_layer, n_expert, n_head, n_head_kv })
    }

    /// `hparams.n_gqa()`: query heads per KV head, 0 when there are no KV heads
    /// (`src/llama-hparams.cpp` 99-108).
    pub fn n_gqa(&self) -> u32 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    /// Whether llama.cpp calls the model `LLM_TYPE_70B`, the only size the rules look at
    /// (`src/models/{llama,qwen2,deci,olmo,jais2}.cpp` load_arch_hparams).
    pub fn is_70b(&self) -> bool {
        match self.arch {
            // llama: 80 layers with GQA (without it, 65B); 8 experts pick Mixtral sizes instead.
            "llama" => self.n_expert != 8 && self.n_layer == 80 && self.n_head != self.n_head_kv,
            "qwen2" | "deci" | "olmo" => self.n_layer == 80,
            "jais2" => self.n_layer == 68,
            _ => false,
        }
    }
}

/// One tensor of the input GGUF as `llama-quantize` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InTensor<'a> {
    /// GGUF name (`blk.0.attn_q.weight`).
    pub name: &'a str,
    /// Shape, rows first as PyTorch writes it: GGUF's `ne[0]` (the row length) is the LAST
    /// element.
    pub shape: &'a [u64],
    /// Its type in the input.
    pub ggml_type: GgmlType,
}

impl InTensor<'_> {
    /// `ne[0]`, the row length.
    pub fn ne0(&self) -> u64 {
        self.shape.last().copied().unwrap_or(1)
    }

    /// `ggml_n_dims`: 1 + the highest axis (in ggml's order) longer than 1, at least 1
    /// (`ggml/src/ggml.c` 1418-1425), so `[1, 4096]` has one dimension.
    pub fn n_dims(&self) -> usize {
        // ggml's axis i is shape[len - 1 - i].
        let len = self.shape.len();
        (1..len).rev().find(|&i| self.shape[len - 1 - i] > 1).map_or(1, |i| i + 1)
    }
}

/// `tensor_allows_quantization` (287-383): whether `llama-quantize` may change the tensor's
/// type at all; the others are copied as they are.
pub fn allows_quantization(arch: &str, t: &InTensor) -> bool {
    if t.n_dims() < 2 {
        return false;
    }
    let name = t.name;
    let has = |s: &str| name.contains(s);
    // `name.rfind("weight") == name.size() - 6`: ends with "weight" — or, by the unsigned
    // wrap-around, is exactly 5 bytes long (npos == 5 - 6).
    let mut q = name.ends_with("weight") || name.len() == 5;
    q &= !has("_norm.weight");
    // quantize_output_tensor is on by default, so output.weight stays eligible.
    q &= !has("ffn_gate_inp.weight");
    q &= !has("ffn_gate_tid2eid.weight");
    q &= !has("altup") && !has("laurel");
    q &= !has("per_layer_model_proj");
    // LLM_TN(arch)(POS_EMBD / TOKEN_TYPES, "weight") is the same for every architecture.
    q &= name != "position_embd.weight" && name != "token_types.weight";
    q &= !has("ssm_conv1d") && !has("shortconv.conv.weight");
    q &= !has("indexer.k_proj.weight") && !has("indexer.q_proj.weight");
    if arch == "glm5-next" {
        const GLM5: [&str; 14] = [
            "hc_",
            "indexer.attn_q_b",
            "indexer.attn_k",
            "indexer.proj",
            "indexer_compressor_gate",
            "indexer_compressor_ape",
            "ssm_f_a.weight",
            "ssm_f_b.weight",
            "ssm_g_a.weight",
            "ssm_g_b.weight",
            "ssm_beta.weight",
            "attn_kv_a_mqa.weight",
            "attn_k_b.weight",
            "attn_v_b.weight",
        ];
        q &= !GLM5.iter().any(|s| has(s));
    }
    const RWKV: [&str; 15] = [
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
    ];
    q &= !RWKV.iter().any(|s| has(s));
    q &= !has("attn_rel_b.weight");
    const MULTIMODAL: [&str; 9] = [
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    q &= !MULTIMODAL.iter().any(|s| has(s));
    q
}

/// `tensor_category` (26-39, 119-154): the broad role the rules key on, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnQ,
    AttnV,
    AttnK,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

/// `tensor_get_category` (119-154); the first match wins, so `ffn_gate_inp` is FFN_GATE.
fn category(name: &str) -> Category {
    let has = |s: &str| name.contains(s);
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        Category::TokenEmbd
    } else if has("attn_qkv.weight") {
        Category::AttnQkv
    } else if has("attn_kv_b.weight") {
        Category::AttnKvB
    } else if has("attn_v.weight") {
        Category::AttnV
    } else if has("attn_k.weight") {
        Category::AttnK
    } else if has("attn_q.weight") {
        Category::AttnQ
    } else if has("attn_output.weight") {
        Category::AttnOutput
    } else if has("ffn_up") {
        Category::FfnUp
    } else if has("ffn_gate") {
        Category::FfnGate
    } else if has("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// `category_is_attn_v` (157-161): V-like tensors (also fused QKV), which get more bits.
fn is_attn_v(c: Category) -> bool {
    matches!(c, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
}

/// `quantize_state_impl`'s counters (166-200), set up by `init_quantize_state_counters`
/// (927-941).
struct State {
    n_attention_wv: i32,
    n_ffn_down: i32,
    n_ffn_gate: i32,
    n_ffn_up: i32,
    i_attention_wv: i32,
    i_ffn_down: i32,
    i_ffn_gate: i32,
    i_ffn_up: i32,
    /// True until a tensor named `output.weight` is seen among all of them (before any type is
    /// chosen): then `token_embd` doubles as the output and gets the output's rule.
    has_tied_embeddings: bool,
}

/// `use_more_bits` (452-454): the first and last eighth of the layers and every third between.
fn use_more_bits(i_layer: i32, n_layers: i32) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// `sscanf(name, "blk.%d.", &layer)`: the number after `blk.` (leading white space and a sign
/// allowed, as `%d` does; the trailing `.` need not match), `None` when there are no digits.
/// Out-of-range numbers saturate as glibc's `strtol` does and are then cut to `int`.
fn blk_number(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("blk.")?.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, digits) = match rest.as_bytes().first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    let digits: Vec<u8> = digits.bytes().take_while(u8::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    let mut v: i128 = 0;
    for d in digits {
        v = (v * 10 + i128::from(d - b'0')).min(i128::from(i64::MAX) + 1);
    }
    let v = if neg { -v } else { v };
    let v = v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    Some(v as i32)
}

/// `layer_info` (457-471): with experts the layer comes from the name (Mixtral's expert tensors
/// are not in layer order), else it is the running counter.
fn layer_info(model: &ModelInfo, i_layer: i32, n_layer: i32, name: &str) -> Result<(i32, i32), String> {
    if model.n_expert.max(1) > 1 {
        let i = blk_number(name).ok_or_else(|| format!("Failed to determine layer for tensor {name}"))?;
        if i < 0 || i >= n_layer {
            return Err(format!("Bad layer {i} for tensor {name}. Must be in [0, {n_layer})"));
        }
        return Ok((i, n_layer));
    }
    Ok((i_layer, n_layer))
}

/// `llama_tensor_get_type_impl` (446-714) for the file types of [`FileType`]: the type that
/// the mix gives the tensor, before the shape fallback. `new_type` comes in as the default.
fn mix_type(
    qs: &mut State,
    model: &ModelInfo,
    mut new_type: GgmlType,
    t: &InTensor,
    ftype: FileType,
    cat: Category,
) -> Result<GgmlType, String> {
    use FileType as F;
    use GgmlType as G;
    let name = t.name;
    let falcon = model.arch == "falcon";

    // 473-486: GLM5-next keeps these projections at Q8_0 or better.
    let glm5_keep = ["attn_q_a", "attn_q_b", "nextn.eh_proj"].iter().any(|s| name.contains(s));
    if model.arch == "glm5-next" && glm5_keep && !matches!(new_type, G::F32 | G::Bf16 | G::F16) {
        return Ok(G::Q8_0);
    }

    if cat == Category::Output || (qs.has_tied_embeddings && cat == Category::TokenEmbd) {
        // 490-511: the output (or the tied embedding standing for it): Q8_0 when the default's
        // block does not fit the row (or Falcon), else Q6_K unless already Q8_0.
        let qk_k = new_type.block().0;
        if falcon || !t.ne0().is_multiple_of(qk_k) {
            new_type = G::Q8_0;
        } else if new_type != G::Q8_0 {
            new_type = G::Q6K;
        }
    } else if cat == Category::TokenEmbd {
        // 526-544: only IQ/TQ/Q2_0 file types change an untied embedding.
    } else if is_attn_v(cat) {
        // 567-604 (fused QKV lands here too, so 689-695 never runs for it).
        let gqa4 = model.n_gqa() >= 4;
        match ftype {
            F::Q2K => new_type = if gqa4 { G::Q4K } else { G::Q3K },
            F::Q3KM => new_type = if qs.i_attention_wv < 2 { G::Q5K } else { G::Q4K },
            F::Q3KL => new_type = G::Q5K,
            F::Q4KM | F::Q5KM if use_more_bits(qs.i_attention_wv, qs.n_attention_wv) => new_type = G::Q6K,
            F::Q4KS if qs.i_attention_wv < 4 => new_type = G::Q5K,
            _ => {}
        }
        // 593-598: a 70B's attn_v is 8x smaller than attn_q, so more bits cost little.
        if model.is_70b() && matches!(new_type, G::Q3K | G::Q4K) {
            new_type = G::Q5K;
        }
        if model.n_expert == 8 {
            new_type = G::Q8_0;
        }
        qs.i_attention_wv += 1;
    } else if cat == Category::AttnK {
        // 605-616 (the other branches are IQ file types).
        if model.n_expert == 8 {
            new_type = G::Q8_0;
        }
    } else if cat == Category::AttnQ {
        // 617-623: IQ file types only.
    } else if cat == Category::FfnDown {
        // 624-668
        let (i_layer, n_layer) = layer_info(model, qs.i_ffn_down, qs.n_ffn_down, name)?;
        match ftype {
            F::Q2K => new_type = G::Q3K,
            F::Q3KM => {
                new_type = if i_layer < n_layer / 16 {
                    G::Q5K
                } else if !falcon || use_more_bits(i_layer, n_layer) {
                    G::Q4K
                } else {
                    G::Q3K
                }
            }
            F::Q3KL => new_type = if falcon { G::Q4K } else { G::Q5K },
            F::Q4KM => {
                if falcon {
                    new_type = if i_layer < n_layer / 16 {
                        G::Q6K
                    } else if use_more_bits(i_layer, n_layer) {
                        G::Q5K
                    } else {
                        G::Q4K
                    };
                } else if use_more_bits(i_layer, n_layer) {
                    new_type = G::Q6K;
                }
            }
            F::Q5KM if use_more_bits(i_layer, n_layer) => new_type = G::Q6K,
            F::Q4KS if !falcon && i_layer < n_layer / 8 => new_type = G::Q5K,
            // The Q4_0/Q5_0 guard (660-666) needs an imatrix.
            _ => {}
        }
        qs.i_ffn_down += 1;
    } else if cat == Category::AttnOutput {
        // 669-688
        if !falcon {
            if model.n_expert == 8 {
                if matches!(ftype, F::Q2K | F::Q3KS | F::Q3KM | F::Q4KS | F::Q4KM) {
                    new_type = G::Q5K;
                }
            } else {
                match ftype {
                    F::Q2K => new_type = G::Q3K,
                    F::Q3KM => new_type = G::Q4K,
                    F::Q3KL => new_type = G::Q5K,
                    _ => {}
                }
            }
        } else if ftype == F::Q3KL {
            new_type = G::Q4K;
        }
    } else if cat == Category::FfnGate {
        // 696-703: only IQ3_XS changes the type; the counter (and layer check) still runs.
        layer_info(model, qs.i_ffn_gate, qs.n_ffn_gate, name)?;
        qs.i_ffn_gate += 1;
    } else if cat == Category::FfnUp {
        // 704-711: likewise.
        layer_info(model, qs.i_ffn_up, qs.n_ffn_up, name)?;
        qs.i_ffn_up += 1;
    }
    Ok(new_type)
}

/// `tensor_type_fallback` (390-443): when the row length is not a whole number of the type's
/// blocks, a 32-block type of about as many bits; F16 when even 32 does not divide it. Applied
/// to the type the mix chose (769-770), so also to the output's Q6_K.
fn fallback(target: GgmlType, ncols: u64) -> Result<GgmlType, String> {
    use GgmlType as G;
    let qk_k = target.block().0;
    if ncols.is_multiple_of(qk_k) {
        return Ok(target);
    }
    let ret = match target {
        G::Q2K | G::Q3K => G::Q4_0,
        G::Q4K => G::Q5_0,
        G::Q5K => G::Q5_1,
        G::Q6K => G::Q8_0,
        // A 32-block type has nothing smaller to go to; the check below makes it F16.
        _ if qk_k <= 32 => target,
        _ => return Err(format!("no tensor type fallback is defined for type {}", target.name())),
    };
    Ok(if ncols.is_multiple_of(ret.block().0) { ret } else { G::F16 })
}

/// `ggml_is_quantized` for the types here.
fn is_quantized(t: GgmlType) -> bool {
    !matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16)
}

/// `llama-quantize`'s output order: indices of `names` sorted by block number (`blk.N.`,
/// parsed as `sscanf("blk.%d.")` does; others count as -1, so they come first) then by name,
/// bytewise (`weight_name_comparer`, `src/llama-model-loader.h` 54-65, the order of
/// `weights_map`, which `llama_model_quantize_impl` walks, 1053-1067). Duplicate names keep
/// their input order (the loader refuses them anyway).
pub fn quantize_order(names: &[&str]) -> Vec<usize> {
    let layer: Vec<i32> = names.iter().map(|n| blk_number(n).unwrap_or(-1)).collect();
    let mut idx: Vec<usize> = (0..names.len()).collect();
    idx.sort_by(|&a, &b| layer[a].cmp(&layer[b]).then_with(|| names[a].as_bytes().cmp(names[b].as_bytes())));
    idx
}

/// The output type of every tensor (given in `llama-quantize`'s order, see [`quantize_order`]:
/// the counters depend on it), running its counters as it does (`llama_tensor_get_type`,
/// 717-773, over the preliminary loop, 1108-1146). Tensors it does not quantize keep their
/// type.
///
/// `Err` is where `llama-quantize` fails: an expert model's FFN tensor without a valid
/// `blk.N.`, or a tensor already quantized that would change type (requantizing is off by
/// default, 1306-1308).
pub fn tensor_types(ftype: FileType, model: &ModelInfo, tensors: &[InTensor]) -> Result<Vec<GgmlType>, String> {
    let default_type = ftype.default_type();
    let n_layer = i32::try_from(model.n_layer).map_err(|_| format!("block count {} is too large", model.n_layer))?;
    let mut qs = State {
        // init_quantize_state_counters counts V-like names among all tensors, eligible or not.
        n_attention_wv: tensors.iter().filter(|t| is_attn_v(category(t.name))).count() as i32,
        n_ffn_down: n_layer,
        n_ffn_gate: n_layer,
        n_ffn_up: n_layer,
        i_attention_wv: 0,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
        has_tied_embeddings: !tensors.iter().any(|t| category(t.name) == Category::Output),
    };
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        if !allows_quantization(model.arch, t) {
            out.push(t.ggml_type);
            continue;
        }
        let mut new_type = default_type;
        // f32/f16/bf16 file types convert every eligible tensor, with no mix and no fallback.
        if is_quantized(default_type) {
            new_type = mix_type(&mut qs, model, new_type, t, ftype, category(t.name))?;
            new_type = fallback(new_type, t.ne0())?;
        }
        out.push(new_type);
    }
    // The main loop refuses to requantize, after every type has been chosen.
    for (t, &new_type) in tensors.iter().zip(&out) {
        if new_type != t.ggml_type && is_quantized(t.ggml_type) {
            return Err(format!("requantizing from type {} is disabled", t.ggml_type.name()));
        }
    }
    Ok(out)
}

/// The metadata keys `llama-quantize` sets or removes.
pub const KEY_QUANTIZATION_VERSION: &str = "general.quantization_version";
/// See [`KEY_QUANTIZATION_VERSION`].
pub const KEY_FILE_TYPE: &str = "general.file_type";
/// `GGML_QNT_VERSION` (`ggml/include/ggml.h`), written as `general.quantization_version`.
pub const QNT_VERSION: u32 = 2;

/// The output metadata from the input's, as `llama-quantize` writes it (1023-1031): every input
/// pair copied in order with its value type (`gguf_set_kv`), then
/// `general.quantization_version` and `general.file_type` set as u32 — `gguf_set_val_*` removes
/// a key before appending it, so those two move to the end — then `split.no`, `split.count`
/// and `split.tensors.count` removed.
///
/// `general.alignment` is copied like any other key, though the output is laid out at 32
/// whatever it says (`ctx_out`'s alignment stays the default). An empty array keeps its element
/// type in llama.cpp; [`Value::Array`] cannot carry that.
pub fn quantized_kvs(input: &[(String, Value)], ftype: FileType) -> Vec<(String, Value)> {
    fn set(out: &mut Vec<(String, Value)>, key: &str, v: Value) {
        out.retain(|(k, _)| k != key);
        out.push((key.to_string(), v));
    }
    let mut out = Vec::with_capacity(input.len() + 2);
    for (k, v) in input {
        set(&mut out, k, v.clone());
    }
    set(&mut out, KEY_QUANTIZATION_VERSION, Value::U32(QNT_VERSION));
    set(&mut out, KEY_FILE_TYPE, Value::U32(ftype.id()));
    out.retain(|(k, _)| !matches!(k.as_str(), "split.no" | "split.count" | "split.tensors.count"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use GgmlType as G;

    /// (name, shape rows-first, input type).
    type Spec = (String, Vec<u64>, GgmlType);

    fn llama(n_layer: u32) -> ModelInfo<'static> {
        ModelInfo { arch: "llama", n_layer, n_expert: 0, n_head: 32, n_head_kv: 8 }
    }

    /// A llama-shaped model: f16 matrices, f32 norms; `tied` leaves out output.weight.
    fn llama_tensors(n_layer: u32, n_embd: u64, n_ff: u64, n_kv: u64, vocab: u64, tied: bool) -> Vec<Spec> {
        let mut v: Vec<Spec> = vec![
            ("token_embd.weight".into(), vec![vocab, n_embd], G::F16),
            ("output_norm.weight".into(), vec![n_embd], G::F32),
        ];
        if !tied {
            v.push(("output.weight".into(), vec![vocab, n_embd], G::F16));
        }
        for i in 0..n_layer {
            let b = |s: &str| format!("blk.{i}.{s}");
            v.push((b("attn_norm.weight"), vec![n_embd], G::F32));
            v.push((b("attn_q.weight"), vec![n_embd, n_embd], G::F16));
            v.push((b("attn_k.weight"), vec![n_kv, n_embd], G::F16));
            v.push((b("attn_v.weight"), vec![n_kv, n_embd], G::F16));
            v.push((b("attn_output.weight"), vec![n_embd, n_embd], G::F16));
            v.push((b("ffn_norm.weight"), vec![n_embd], G::F32));
            v.push((b("ffn_gate.weight"), vec![n_ff, n_embd], G::F16));
            v.push((b("ffn_up.weight"), vec![n_ff, n_embd], G::F16));
            v.push((b("ffn_down.weight"), vec![n_embd, n_ff], G::F16));
        }
        v
    }

    /// Sorts into llama-quantize's order, chooses the types, and answers by name.
    fn types(ftype: FileType, model: &ModelInfo, specs: &[Spec]) -> Result<HashMap<String, GgmlType>, String> {
        let names: Vec<&str> = specs.iter().map(|s| s.0.as_str()).collect();
        let order = quantize_order(&names);
        let ts: Vec<InTensor> =
            order.iter().map(|&i| InTensor { name: &specs[i].0, shape: &specs[i].1, ggml_type: specs[i].2 }).collect();
        let out = tensor_types(ftype, model, &ts)?;
        Ok(ts.iter().zip(out).map(|(t, ty)| (t.name.to_string(), ty)).collect())
    }

    fn blk(m: &HashMap<String, GgmlType>, i: u32, s: &str) -> GgmlType {
        m[&format!("blk.{i}.{s}")]
    }

    #[test]
    fn file_type_names_ids_and_aliases() {
        for t in FileType::ALL {
            assert_eq!(FileType::parse(t.name()), Some(t));
            assert_eq!(FileType::parse(&t.name().to_uppercase()), Some(t));
        }
        assert_eq!(FileType::parse("Q4_K"), Some(FileType::Q4KM));
        assert_eq!(FileType::parse("q3_k"), Some(FileType::Q3KM));
        assert_eq!(FileType::parse("q5_k"), Some(FileType::Q5KM));
        assert_eq!(FileType::parse("iq4_xs"), None);
        assert_eq!(FileType::parse("q4_k_l"), None);
        let ids: Vec<u32> = FileType::ALL.iter().map(|t| t.id()).collect();
        assert_eq!(ids, [0, 1, 32, 7, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]);
        let converter: Vec<FileType> = FileType::ALL.into_iter().filter(|t| !t.is_quantize()).collect();
        assert_eq!(converter, [FileType::F32, FileType::F16, FileType::Bf16, FileType::Q8_0]);
        assert_eq!(FileType::Q3KL.default_type(), G::Q3K);
        assert_eq!(FileType::Q5KS.default_type(), G::Q5K);
    }

    /// 8 layers, 4096/14336, Q4_K_M. Expectation from llama-quant.cpp by hand:
    /// - output.weight: 490-511, nx = 4096 % 256 == 0 and Q4_K != Q8_0 → Q6_K.
    /// - token_embd (output present, so untied): 525-544 changes nothing → Q4_K.
    /// - attn_v: 590-591, use_more_bits(i, 8) = i < 1 || i >= 7 || (i - 1) % 3 == 2, true for
    ///   i in {0, 3, 6, 7} → Q6_K, else Q4_K (n_attention_wv = 8, counted by name at 927-941).
    /// - ffn_down: 645-653 (non-Falcon), same use_more_bits over i_ffn_down / n_layer → Q6_K at
    ///   {0, 3, 6, 7}; 14336 % 256 == 0 so no fallback.
    /// - attn_q/attn_k/attn_output/ffn_gate/ffn_up: no Q4_K_M case → Q4_K.
    /// - norms: 1-D (and `_norm.weight`), 287-383 → unchanged F32.
    #[test]
    fn llama_8_layers_q4_k_m_mix() {
        let specs = llama_tensors(8, 4096, 14336, 1024, 32000, false);
        let m = types(FileType::Q4KM, &llama(8), &specs).unwrap();
        assert_eq!(m["output.weight"], G::Q6K);
        assert_eq!(m["token_embd.weight"], G::Q4K);
        assert_eq!(m["output_norm.weight"], G::F32);
        for i in 0..8 {
            let more = [0, 3, 6, 7].contains(&i);
            let hi = if more { G::Q6K } else { G::Q4K };
            assert_eq!(blk(&m, i, "attn_v.weight"), hi, "attn_v {i}");
            assert_eq!(blk(&m, i, "ffn_down.weight"), hi, "ffn_down {i}");
            for s in ["attn_q.weight", "attn_k.weight", "attn_output.weight", "ffn_gate.weight", "ffn_up.weight"] {
                assert_eq!(blk(&m, i, s), G::Q4K, "{s} {i}");
            }
            assert_eq!(blk(&m, i, "attn_norm.weight"), G::F32);
            assert_eq!(blk(&m, i, "ffn_norm.weight"), G::F32);
        }
    }

    /// 32 layers: use_more_bits(i, 32) = i < 4 || i >= 28 || (i - 4) % 3 == 2.
    #[test]
    fn use_more_bits_32_layers() {
        let more: Vec<i32> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(more, [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
    }

    /// The counters follow the output order, so blk.10 must come after blk.9, not after blk.1.
    #[test]
    fn counters_follow_numeric_layer_order() {
        let specs = llama_tensors(12, 256, 512, 256, 1000, false);
        let m = types(FileType::Q4KM, &llama(12), &specs).unwrap();
        // use_more_bits(i, 12): i < 1 || i >= 10 || (i - 1) % 3 == 2 → 0, 3, 6, 9, 10, 11.
        for i in 0..12 {
            let want = if [0, 3, 6, 9, 10, 11].contains(&i) { G::Q6K } else { G::Q4K };
            assert_eq!(blk(&m, i, "attn_v.weight"), want, "layer {i}");
        }
    }

    /// No output.weight: token_embd takes the output's rule (490: has_tied_embeddings).
    #[test]
    fn tied_token_embd_takes_output_rule() {
        let specs = llama_tensors(4, 4096, 11008, 4096, 32000, true);
        let model = ModelInfo { n_head_kv: 32, ..llama(4) };
        assert_eq!(types(FileType::Q4KM, &model, &specs).unwrap()["token_embd.weight"], G::Q6K);
        assert_eq!(types(FileType::Q4_0, &model, &specs).unwrap()["token_embd.weight"], G::Q6K);
        assert_eq!(types(FileType::Q2K, &model, &specs).unwrap()["token_embd.weight"], G::Q6K);
        assert_eq!(types(FileType::Q6K, &model, &specs).unwrap()["token_embd.weight"], G::Q6K);
        assert_eq!(types(FileType::Q8_0, &model, &specs).unwrap()["token_embd.weight"], G::Q8_0);
        // f16/bf16/f32 file types skip the mix: everything eligible just converts.
        assert_eq!(types(FileType::F16, &model, &specs).unwrap()["token_embd.weight"], G::F16);
        assert_eq!(types(FileType::Bf16, &model, &specs).unwrap()["token_embd.weight"], G::Bf16);
        // Untied: the embedding keeps the default.
        let untied = llama_tensors(4, 4096, 11008, 4096, 32000, false);
        assert_eq!(types(FileType::Q4_0, &model, &untied).unwrap()["token_embd.weight"], G::Q4_0);
        assert_eq!(types(FileType::Q4_0, &model, &untied).unwrap()["output.weight"], G::Q6K);
    }

    /// gemma3 270M-like: tied, n_embd 640 (not a multiple of 256). 500: nx % qk_k of the
    /// default's block → Q8_0 under k-quants; under Q4_0 (block 32) the output rule says Q6_K and
    /// the fallback (418) turns it into Q8_0. Other 640-wide rows fall back too.
    #[test]
    fn gemma3_640_wide_rows() {
        let model = ModelInfo { arch: "gemma3", n_layer: 18, n_expert: 0, n_head: 4, n_head_kv: 1 };
        let mut specs = llama_tensors(18, 640, 2048, 256, 262144, true);
        for i in 0..18 {
            specs.push((format!("blk.{i}.attn_q_norm.weight"), vec![256], G::F32));
            specs.push((format!("blk.{i}.post_attention_norm.weight"), vec![640], G::F32));
        }
        let m = types(FileType::Q4KM, &model, &specs).unwrap();
        assert_eq!(m["token_embd.weight"], G::Q8_0);
        assert_eq!(blk(&m, 1, "attn_q.weight"), G::Q5_0); // Q4_K, 640 % 256 != 0
        assert_eq!(blk(&m, 0, "attn_v.weight"), G::Q8_0); // Q6_K (use_more_bits) → Q8_0
        assert_eq!(blk(&m, 2, "ffn_down.weight"), G::Q4K); // rows of 2048, not use_more_bits
        assert_eq!(blk(&m, 1, "ffn_down.weight"), G::Q6K);
        assert_eq!(blk(&m, 1, "attn_q_norm.weight"), G::F32);
        let m = types(FileType::Q4_0, &model, &specs).unwrap();
        assert_eq!(m["token_embd.weight"], G::Q8_0);
        assert_eq!(blk(&m, 1, "attn_q.weight"), G::Q4_0);
        let m = types(FileType::Q5KS, &model, &specs).unwrap();
        assert_eq!(blk(&m, 1, "attn_q.weight"), G::Q5_1);
        let m = types(FileType::Q3KS, &model, &specs).unwrap();
        assert_eq!(blk(&m, 1, "attn_q.weight"), G::Q4_0);
    }

    /// tensor_type_fallback (390-443): a row of 32 cannot hold a 256 block.
    #[test]
    fn fallback_table() {
        assert_eq!(fallback(G::Q4K, 32), Ok(G::Q5_0));
        assert_eq!(fallback(G::Q6K, 32), Ok(G::Q8_0));
        assert_eq!(fallback(G::Q5K, 32), Ok(G::Q5_1));
        assert_eq!(fallback(G::Q2K, 32), Ok(G::Q4_0));
        assert_eq!(fallback(G::Q3K, 32), Ok(G::Q4_0));
        assert_eq!(fallback(G::Q4K, 256), Ok(G::Q4K));
        // Not even a multiple of 32: F16.
        assert_eq!(fallback(G::Q4K, 48), Ok(G::F16));
        assert_eq!(fallback(G::Q4_0, 48), Ok(G::F16));
        assert_eq!(fallback(G::Q8_0, 64), Ok(G::Q8_0));
        assert!(fallback(G::Q8K, 32).is_err());
    }

    #[test]
    fn row_of_32_falls_back_in_the_mix() {
        // One layer, rows of 32: attn_v is in a use_more_bits layer (Q6_K → Q8_0), attn_q is
        // Q4_K → Q5_0, the output is Q8_0 by 500 (32 % 256 != 0).
        let specs = llama_tensors(1, 32, 64, 32, 100, false);
        let m = types(FileType::Q4KM, &llama(1), &specs).unwrap();
        assert_eq!(blk(&m, 0, "attn_v.weight"), G::Q8_0);
        assert_eq!(blk(&m, 0, "attn_q.weight"), G::Q5_0);
        assert_eq!(blk(&m, 0, "ffn_down.weight"), G::Q8_0); // rows of 64, Q6_K → Q8_0
        assert_eq!(m["output.weight"], G::Q8_0);
        assert_eq!(m["token_embd.weight"], G::Q5_0);
    }

    #[test]
    fn what_is_not_quantized() {
        let t = |name: &'static str, shape: &'static [u64]| InTensor { name, shape, ggml_type: G::F32 };
        assert!(allows_quantization("llama", &t("blk.0.attn_q.weight", &[64, 64])));
        assert!(!allows_quantization("llama", &t("blk.0.attn_norm.weight", &[64])));
        assert!(!allows_quantization("llama", &t("blk.0.attn_norm.weight", &[64, 64])));
        assert!(!allows_quantization("llama", &t("blk.0.attn_q.weight", &[1, 4096])));
        assert!(allows_quantization("llama", &t("blk.0.attn_q.weight", &[4096, 1])));
        assert!(!allows_quantization("llama", &t("blk.0.attn_q.bias", &[64, 64])));
        assert!(!allows_quantization("llama", &t("blk.0.ffn_gate_inp.weight", &[8, 64])));
        assert!(!allows_quantization("bert", &t("position_embd.weight", &[512, 64])));
        assert!(!allows_quantization("bert", &t("token_types.weight", &[2, 64])));
        assert!(!allows_quantization("gemma3", &t("v.patch_embd.weight", &[64, 64])));
        assert!(allows_quantization("llama", &t("blk.0.ffn_down_exps.weight", &[8, 64, 64])));
        // rfind("weight") == size() - 6 also holds for 5-byte names (npos == 5 - 6, unsigned).
        assert!(allows_quantization("llama", &t("abcde", &[64, 64])));
        assert!(!allows_quantization("llama", &t("abcdef", &[64, 64])));
        assert_eq!(t("x", &[3, 1, 1]).n_dims(), 3);
        assert_eq!(t("x", &[1, 1, 5]).n_dims(), 1);
        assert_eq!(t("x", &[2, 1, 5]).n_dims(), 3);
        assert_eq!(t("x", &[7, 5]).ne0(), 5);

        // In the mix: norms and 1-D tensors keep their type, whatever it is.
        let specs = vec![
            ("blk.0.attn_norm.weight".to_string(), vec![64], G::F16),
            ("blk.0.attn_q.weight".to_string(), vec![256, 256], G::F32),
            ("blk.0.attn_q.bias".to_string(), vec![256], G::F32),
        ];
        let m = types(FileType::Q4KM, &llama(1), &specs).unwrap();
        assert_eq!(m["blk.0.attn_norm.weight"], G::F16);
        assert_eq!(m["blk.0.attn_q.bias"], G::F32);
        assert_eq!(m["blk.0.attn_q.weight"], G::Q4K);
        // f32 file type: F16 matrices become F32, norms unchanged.
        let m = types(FileType::F32, &llama(1), &specs).unwrap();
        assert_eq!(m["blk.0.attn_norm.weight"], G::F16);
    }

    #[test]
    fn quantize_order_sorts_by_layer_then_name() {
        let names = [
            "blk.10.attn_q.weight",
            "output.weight",
            "blk.2.ffn_up.weight",
            "blk.2.attn_k.weight",
            "token_embd.weight",
            "blk.1.attn_q.weight",
            "output_norm.weight",
            "blk.x.weight",
        ];
        let order: Vec<&str> = quantize_order(&names).into_iter().map(|i| names[i]).collect();
        assert_eq!(
            order,
            [
                "blk.x.weight", // no number: -1, and "b" < "o" < "t"
                "output.weight",
                "output_norm.weight",
                "token_embd.weight",
                "blk.1.attn_q.weight",
                "blk.2.attn_k.weight",
                "blk.2.ffn_up.weight",
                "blk.10.attn_q.weight",
            ]
        );
        assert_eq!(blk_number("blk.07.x"), Some(7));
        assert_eq!(blk_number("blk.-2.x"), Some(-2));
        assert_eq!(blk_number("blk. 3x"), Some(3));
        assert_eq!(blk_number("blk..3"), None);
        assert_eq!(blk_number("xblk.3."), None);
    }

    /// Q3_K_M on 16 layers: attn_v Q5_K for the first two (i_attention_wv < 2) then Q4_K (584);
    /// ffn_down Q5_K below n/16 = 1, Q4_K after (non-Falcon, 634-637); attn_output Q4_K (681).
    #[test]
    fn q3_k_m_mix() {
        let specs = llama_tensors(16, 256, 512, 64, 1000, false);
        let model = ModelInfo { n_head: 4, n_head_kv: 1, ..llama(16) };
        let m = types(FileType::Q3KM, &model, &specs).unwrap();
        for i in 0..16 {
            assert_eq!(blk(&m, i, "attn_v.weight"), if i < 2 { G::Q5K } else { G::Q4K });
            assert_eq!(blk(&m, i, "ffn_down.weight"), if i < 1 { G::Q5K } else { G::Q4K });
            assert_eq!(blk(&m, i, "attn_output.weight"), G::Q4K);
            assert_eq!(blk(&m, i, "attn_q.weight"), G::Q3K);
        }
        assert_eq!(m["output.weight"], G::Q6K);
        // Falcon: ffn_down Q3_K unless use_more_bits.
        let falcon = ModelInfo { arch: "falcon", ..model };
        let m = types(FileType::Q3KM, &falcon, &specs).unwrap();
        assert_eq!(blk(&m, 3, "ffn_down.weight"), G::Q3K);
        assert_eq!(blk(&m, 4, "ffn_down.weight"), G::Q4K);
        assert_eq!(m["output.weight"], G::Q8_0);
    }

    #[test]
    fn other_k_mixes() {
        let specs = llama_tensors(16, 256, 512, 64, 1000, false);
        // Q2_K: attn_v Q4_K with n_gqa >= 4, Q3_K below; ffn_down and attn_output Q3_K.
        let gqa4 = ModelInfo { n_head: 8, n_head_kv: 2, ..llama(16) };
        let mha = ModelInfo { n_head: 8, n_head_kv: 8, ..llama(16) };
        let m = types(FileType::Q2K, &gqa4, &specs).unwrap();
        assert_eq!(blk(&m, 5, "attn_v.weight"), G::Q4K);
        assert_eq!(blk(&m, 5, "ffn_down.weight"), G::Q3K);
        assert_eq!(blk(&m, 5, "attn_output.weight"), G::Q3K);
        assert_eq!(blk(&m, 5, "ffn_up.weight"), G::Q2K);
        assert_eq!(m["token_embd.weight"], G::Q2K);
        let m = types(FileType::Q2K, &mha, &specs).unwrap();
        assert_eq!(blk(&m, 5, "attn_v.weight"), G::Q3K);
        // Q3_K_L: attn_v, ffn_down, attn_output Q5_K.
        let m = types(FileType::Q3KL, &mha, &specs).unwrap();
        for s in ["attn_v.weight", "ffn_down.weight", "attn_output.weight"] {
            assert_eq!(blk(&m, 9, s), G::Q5K);
        }
        // Q3_K_S: nothing but the output.
        let m = types(FileType::Q3KS, &mha, &specs).unwrap();
        assert_eq!(blk(&m, 0, "attn_v.weight"), G::Q3K);
        assert_eq!(blk(&m, 0, "ffn_down.weight"), G::Q3K);
        // Q4_K_S: attn_v Q5_K for the first 4, ffn_down Q5_K below n/8 = 2.
        let m = types(FileType::Q4KS, &mha, &specs).unwrap();
        for i in 0..16 {
            assert_eq!(blk(&m, i, "attn_v.weight"), if i < 4 { G::Q5K } else { G::Q4K });
            assert_eq!(blk(&m, i, "ffn_down.weight"), if i < 2 { G::Q5K } else { G::Q4K });
        }
        // Q5_K_M: use_more_bits(i, 16) = i < 2 || i >= 14 || (i - 2) % 3 == 2 → Q6_K.
        let m = types(FileType::Q5KM, &mha, &specs).unwrap();
        for i in 0..16 {
            let want = if [0, 1, 4, 7, 10, 13, 14, 15].contains(&i) { G::Q6K } else { G::Q5K };
            assert_eq!(blk(&m, i, "attn_v.weight"), want);
            assert_eq!(blk(&m, i, "ffn_down.weight"), want);
        }
        // Q5_K_S / Q6_K / legacy: uniform but for the output.
        let m = types(FileType::Q5KS, &mha, &specs).unwrap();
        assert_eq!(blk(&m, 0, "attn_v.weight"), G::Q5K);
        assert_eq!(m["output.weight"], G::Q6K);
        let m = types(FileType::Q5_1, &mha, &specs).unwrap();
        assert_eq!(blk(&m, 0, "ffn_down.weight"), G::Q5_1);
        assert_eq!(m["output.weight"], G::Q6K);
        let m = types(FileType::Q8_0, &mha, &specs).unwrap();
        assert!(m.iter().all(|(k, &v)| v == if k.contains("norm") { G::F32 } else { G::Q8_0 }));
    }

    /// phi3 fuses QKV: attn_qkv counts as attn_v (157-161), so it takes the V rules.
    #[test]
    fn phi3_fused_qkv_is_v_like() {
        let model = ModelInfo { arch: "phi3", n_layer: 8, n_expert: 0, n_head: 32, n_head_kv: 32 };
        let mut specs: Vec<Spec> = vec![
            ("token_embd.weight".into(), vec![32064, 3072], G::Bf16),
            ("output.weight".into(), vec![32064, 3072], G::F16),
        ];
        for i in 0..8 {
            specs.push((format!("blk.{i}.attn_qkv.weight"), vec![9216, 3072], G::F16));
            specs.push((format!("blk.{i}.ffn_up.weight"), vec![16384, 3072], G::F16));
            specs.push((format!("blk.{i}.ffn_down.weight"), vec![3072, 8192], G::F16));
        }
        let m = types(FileType::Q4KM, &model, &specs).unwrap();
        for i in 0..8 {
            let want = if [0, 3, 6, 7].contains(&i) { G::Q6K } else { G::Q4K };
            assert_eq!(blk(&m, i, "attn_qkv.weight"), want);
        }
        let m = types(FileType::Q3KM, &model, &specs).unwrap();
        assert_eq!(blk(&m, 1, "attn_qkv.weight"), G::Q5K);
        assert_eq!(blk(&m, 2, "attn_qkv.weight"), G::Q4K);
    }

    /// 8 experts (599-603, 605-610, 669-676): attn_v and attn_k Q8_0, attn_output Q5_K; FFN
    /// layers come from the name (457-471).
    #[test]
    fn eight_experts() {
        let model = ModelInfo { n_expert: 8, ..llama(8) };
        let mut specs = llama_tensors(8, 256, 512, 64, 1000, false);
        specs.retain(|s| !s.0.contains("ffn_"));
        for i in 0..8 {
            specs.push((format!("blk.{i}.ffn_gate_inp.weight"), vec![8, 256], G::F32));
            specs.push((format!("blk.{i}.ffn_down_exps.weight"), vec![8, 256, 512], G::F16));
            specs.push((format!("blk.{i}.ffn_up_exps.weight"), vec![8, 512, 256], G::F16));
        }
        let m = types(FileType::Q4KM, &model, &specs).unwrap();
        assert_eq!(blk(&m, 2, "attn_v.weight"), G::Q8_0);
        assert_eq!(blk(&m, 2, "attn_k.weight"), G::Q8_0);
        assert_eq!(blk(&m, 2, "attn_output.weight"), G::Q5K);
        assert_eq!(blk(&m, 2, "ffn_gate_inp.weight"), G::F32);
        assert_eq!(blk(&m, 3, "ffn_down_exps.weight"), G::Q6K);
        assert_eq!(blk(&m, 2, "ffn_down_exps.weight"), G::Q4K);
        // An expert FFN tensor without a layer number is an error, as in llama-quantize.
        specs.push(("ffn_down_exps.weight".into(), vec![8, 256, 512], G::F16));
        assert!(types(FileType::Q4KM, &model, &specs).unwrap_err().contains("Failed to determine layer"));
    }

    /// 70B (llama, 80 layers, GQA): attn_v Q3_K/Q4_K become Q5_K (593-598).
    #[test]
    fn seventy_b() {
        let model = ModelInfo { n_head: 64, n_head_kv: 8, ..llama(80) };
        assert!(model.is_70b());
        assert!(!ModelInfo { n_head_kv: 64, ..model }.is_70b());
        assert!(ModelInfo { arch: "qwen2", n_head_kv: 64, ..model }.is_70b());
        assert!(!ModelInfo { arch: "gemma3", ..model }.is_70b());
        let specs = llama_tensors(80, 256, 512, 32, 1000, false);
        let m = types(FileType::Q4KS, &model, &specs).unwrap();
        assert_eq!(blk(&m, 10, "attn_v.weight"), G::Q5K);
        assert_eq!(blk(&m, 10, "attn_q.weight"), G::Q4K);
        let m = types(FileType::Q3KS, &model, &specs).unwrap();
        assert_eq!(blk(&m, 10, "attn_v.weight"), G::Q5K);
        let m = types(FileType::Q4KM, &model, &specs).unwrap();
        assert_eq!(blk(&m, 0, "attn_v.weight"), G::Q6K);
        assert_eq!(blk(&m, 11, "attn_v.weight"), G::Q5K);
    }

    #[test]
    fn requantizing_is_refused() {
        let specs = vec![("blk.0.attn_q.weight".to_string(), vec![256, 256], G::Q8_0)];
        assert!(types(FileType::Q4KM, &llama(1), &specs).unwrap_err().contains("requantizing"));
        assert_eq!(types(FileType::Q8_0, &llama(1), &specs).unwrap()["blk.0.attn_q.weight"], G::Q8_0);
    }

    #[test]
    fn kvs_are_copied_then_version_and_file_type_appended() {
        let kv = |k: &str, v: Value| (k.to_string(), v);
        let input = vec![
            kv("general.architecture", Value::String("llama".into())),
            kv("general.quantization_version", Value::U32(2)),
            kv("split.count", Value::U16(2)),
            kv("general.file_type", Value::U32(1)),
            kv("llama.block_count", Value::U32(8)),
            kv("split.no", Value::U16(0)),
            kv("split.tensors.count", Value::I32(100)),
            kv("tokenizer.ggml.tokens", Value::Array(vec![Value::String("a".into())])),
        ];
        let out = quantized_kvs(&input, FileType::Q4KM);
        assert_eq!(
            out,
            vec![
                kv("general.architecture", Value::String("llama".into())),
                kv("llama.block_count", Value::U32(8)),
                kv("tokenizer.ggml.tokens", Value::Array(vec![Value::String("a".into())])),
                kv("general.quantization_version", Value::U32(2)),
                kv("general.file_type", Value::U32(15)),
            ]
        );
    }

    #[test]
    fn model_info_from_kvs() {
        let kv = |k: &str, v: Value| (k.to_string(), v);
        let kvs = vec![
            kv("general.architecture", Value::String("qwen2".into())),
            kv("qwen2.block_count", Value::U32(24)),
            kv("qwen2.attention.head_count", Value::Array(vec![Value::U32(14), Value::U32(7)])),
        ];
        let m = ModelInfo::from_kvs(&kvs).unwrap();
        assert_eq!(m, ModelInfo { arch: "qwen2", n_layer: 24, n_expert: 0, n_head: 14, n_head_kv: 14 });
        assert_eq!(m.n_gqa(), 1);
        assert_eq!(ModelInfo { n_head_kv: 0, ..m }.n_gqa(), 0);
        assert!(ModelInfo::from_kvs(&kvs[..1]).unwrap_err().contains("block_count"));
    }
}
