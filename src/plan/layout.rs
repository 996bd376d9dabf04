//! Which tensors share a file and where each goes: the shard order (transformers v5's
//! natural key, or module order), then the output format's files and layout.

use std::cmp::Ordering;

use super::types::{LayoutArgs, Op, OutTensor, Plan, PlanCounts, QuantPart};
use crate::format::dtype::FloatDtype;
use crate::job::{Job, ShardOrder};
use crate::writer::output::{FileFormat, PlannedFile, Safetensors, TensorSpec};

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
            follows: None,
            scattered: false,
            file_name,
            file_len: file.len,
            head: file.head,
            tensors: members,
        });
    }
    let total_size = tensors.iter().map(|t| t.nbytes).sum();
    let total_parameters = tensors.iter().map(|t| t.params).sum();
    Plan {
        twins: Vec::new(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::safetensors::{Dtype, TensorInfo};
    use crate::plan::types::{FileRef, Src};
    use std::path::Path;

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
            gguf: None,
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

