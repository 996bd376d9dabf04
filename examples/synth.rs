//! Streams out a random but valid Llama-like checkpoint and a matching LoRA adapter, at any
//! size, with flat memory: a bf16 base, or a bitsandbytes NF4 double-quant base (random codes
//! and scales, in the exact `-bnb-4bit` layout), plus `config.json`.
//!
//! ```text
//! cargo run --release --example synth -- OUT [--base bf16|nf4] [--hidden 2048] [--layers 16]
//!     [--intermediate 5632] [--vocab 32000] [--heads 32] [--kv-heads 32] [--r 8] [--alpha 16]
//!     [--shard 5GB] [--seed 0]
//! ```
//! Writes `OUT/base_<kind>/` and `OUT/lora/` (whose `base_model_name_or_path` points at the base).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64: fast, and good enough for filler data.
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Fill {
    /// bf16 normal-ish weights with this scale.
    Bf16(f32),
    /// f32 values with this scale.
    F32(f32),
    /// Random bytes (packed 4-bit codes, u8 absmax codes).
    Bytes,
    /// Constant f32 table bytes.
    Table(&'static [f32]),
    /// Fixed bytes.
    Json,
}

struct T {
    name: String,
    dtype: &'static str,
    shape: Vec<u64>,
    nbytes: u64,
    fill: Fill,
    json: Vec<u8>,
}

const NF4: [f32; 16] = [
    -1.0,
    -0.6961928,
    -0.52507305,
    -0.3949175,
    -0.28444138,
    -0.18477343,
    -0.091050036,
    0.0,
    0.0795803,
    0.1609302,
    0.2461123,
    0.33791524,
    0.44070983,
    0.562617,
    0.72295684,
    1.0,
];

fn dynamic_map() -> &'static [f32] {
    // Any sorted table in [-1, 1] is a valid nested map for a synthetic file.
    static MAP: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    MAP.get_or_init(|| (0..256).map(|i| (i as f32 - 127.5) / 127.5).collect())
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name, &default.to_string())
        .parse()
        .unwrap_or_else(|_| panic!("{name}: expected a number"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first().filter(|a| !a.starts_with("--")) else {
        eprintln!("usage: synth OUT [--base bf16|nf4] [--hidden N] [--layers N] [--intermediate N] [--vocab N] [--heads N] [--kv-heads N] [--r N] [--alpha N] [--shard 5GB] [--seed N]");
        std::process::exit(2);
    };
    let out = PathBuf::from(out);
    let kind = arg(&args, "--base", "bf16");
    let hidden = num(&args, "--hidden", 2048);
    let layers = num(&args, "--layers", 16);
    let inter = num(&args, "--intermediate", 5632);
    let vocab = num(&args, "--vocab", 32000);
    let heads = num(&args, "--heads", 32);
    let kv = num(&args, "--kv-heads", heads);
    let r = num(&args, "--r", 8);
    let alpha = num(&args, "--alpha", 16);
    let shard = loraweld::options::parse_size(&arg(&args, "--shard", "5GB"), false).expect("--shard");
    let seed = num(&args, "--seed", 0);
    let head_dim = hidden / heads;
    let nf4 = match kind.as_str() {
        "bf16" => false,
        "nf4" => true,
        k => panic!("--base {k}: expected bf16 or nf4"),
    };

    let proj = |l: u64| -> Vec<(String, u64, u64)> {
        let p = format!("model.layers.{l}");
        vec![
            (format!("{p}.self_attn.q_proj"), heads * head_dim, hidden),
            (format!("{p}.self_attn.k_proj"), kv * head_dim, hidden),
            (format!("{p}.self_attn.v_proj"), kv * head_dim, hidden),
            (format!("{p}.self_attn.o_proj"), hidden, heads * head_dim),
            (format!("{p}.mlp.gate_proj"), inter, hidden),
            (format!("{p}.mlp.up_proj"), inter, hidden),
            (format!("{p}.mlp.down_proj"), hidden, inter),
        ]
    };
    let dense = |name: String, shape: Vec<u64>, scale: f32| T {
        nbytes: shape.iter().product::<u64>() * 2,
        name,
        dtype: "BF16",
        shape,
        fill: Fill::Bf16(scale),
        json: Vec::new(),
    };
    let mut base: Vec<T> = vec![dense("model.embed_tokens.weight".into(), vec![vocab, hidden], 0.04)];
    for l in 0..layers {
        base.push(dense(
            format!("model.layers.{l}.input_layernorm.weight"),
            vec![hidden],
            2.0,
        ));
        base.push(dense(
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            vec![hidden],
            2.0,
        ));
        for (m, o, i) in proj(l) {
            if !nf4 {
                base.push(dense(format!("{m}.weight"), vec![o, i], 0.04));
                continue;
            }
            let n = o * i;
            let nb = n.div_ceil(64);
            let nb2 = nb.div_ceil(256);
            let w = format!("{m}.weight");
            let qs = format!(
                "{{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [{o}, {i}], \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.02}}"
            );
            let t = |name: String, dtype: &'static str, shape: Vec<u64>, nbytes: u64, fill: Fill| T {
                name,
                dtype,
                shape,
                nbytes,
                fill,
                json: Vec::new(),
            };
            base.push(t(w.clone(), "U8", vec![n.div_ceil(2), 1], n.div_ceil(2), Fill::Bytes));
            base.push(t(format!("{w}.absmax"), "U8", vec![nb], nb, Fill::Bytes));
            base.push(t(format!("{w}.quant_map"), "F32", vec![16], 64, Fill::Table(&NF4)));
            base.push(t(
                format!("{w}.nested_absmax"),
                "F32",
                vec![nb2],
                nb2 * 4,
                Fill::F32(0.01),
            ));
            base.push(t(
                format!("{w}.nested_quant_map"),
                "F32",
                vec![256],
                1024,
                Fill::Table(dynamic_map()),
            ));
            let len = qs.len() as u64;
            base.push(T {
                name: format!("{w}.quant_state.bitsandbytes__nf4"),
                dtype: "U8",
                shape: vec![len],
                nbytes: len,
                fill: Fill::Json,
                json: qs.into_bytes(),
            });
        }
    }
    base.push(dense("model.norm.weight".into(), vec![hidden], 2.0));
    base.push(dense("lm_head.weight".into(), vec![vocab, hidden], 0.04));

    let mut rng = Rng(seed ^ 0x5eed);
    let base_dir = out.join(format!("base_{kind}"));
    std::fs::create_dir_all(&base_dir).unwrap();
    write_sharded(&base_dir, base, shard, &mut rng);
    let quant = if nf4 {
        r#",
  "quantization_config": {
    "_load_in_4bit": true,
    "_load_in_8bit": false,
    "bnb_4bit_compute_dtype": "bfloat16",
    "bnb_4bit_quant_storage": "uint8",
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": true,
    "llm_int8_enable_fp32_cpu_offload": false,
    "llm_int8_has_fp16_weight": false,
    "llm_int8_skip_modules": null,
    "llm_int8_threshold": 6.0,
    "load_in_4bit": true,
    "load_in_8bit": false,
    "quant_method": "bitsandbytes"
  }"#
    } else {
        ""
    };
    let config = format!(
        "{{\n  \"architectures\": [\n    \"LlamaForCausalLM\"\n  ],\n  \"dtype\": \"bfloat16\",\n  \"head_dim\": {head_dim},\n  \"hidden_act\": \"silu\",\n  \"hidden_size\": {hidden},\n  \"intermediate_size\": {inter},\n  \"max_position_embeddings\": 2048,\n  \"model_type\": \"llama\",\n  \"num_attention_heads\": {heads},\n  \"num_hidden_layers\": {layers},\n  \"num_key_value_heads\": {kv}{quant},\n  \"rms_norm_eps\": 1e-05,\n  \"tie_word_embeddings\": false,\n  \"vocab_size\": {vocab}\n}}\n"
    );
    std::fs::write(base_dir.join("config.json"), config).unwrap();

    let mut lora = Vec::new();
    for l in 0..layers {
        for (m, o, i) in proj(l) {
            let k = format!("base_model.model.{m}");
            let f32t = |name: String, shape: Vec<u64>, s: f32| T {
                nbytes: shape.iter().product::<u64>() * 4,
                name,
                dtype: "F32",
                shape,
                fill: Fill::F32(s),
                json: Vec::new(),
            };
            lora.push(f32t(format!("{k}.lora_A.weight"), vec![r, i], 0.05));
            lora.push(f32t(format!("{k}.lora_B.weight"), vec![o, r], 0.02));
        }
    }
    let ad = out.join("lora");
    std::fs::create_dir_all(&ad).unwrap();
    write_sharded(&ad, lora, u64::MAX, &mut rng);
    std::fs::rename(ad.join("model.safetensors"), ad.join("adapter_model.safetensors")).unwrap();
    let rel = format!("../base_{kind}");
    std::fs::write(
        ad.join("adapter_config.json"),
        format!("{{\n  \"base_model_name_or_path\": \"{rel}\",\n  \"lora_alpha\": {alpha},\n  \"peft_type\": \"LORA\",\n  \"r\": {r},\n  \"target_modules\": [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"],\n  \"task_type\": \"CAUSAL_LM\"\n}}"),
    )
    .unwrap();
    eprintln!("synth: wrote {} and {}", base_dir.display(), ad.display());
}

/// Greedy split like huggingface_hub, header per shard, data streamed in 4 MiB chunks.
fn write_sharded(dir: &Path, tensors: Vec<T>, max: u64, rng: &mut Rng) {
    let mut groups: Vec<Vec<T>> = vec![Vec::new()];
    let mut cur = 0;
    for t in tensors {
        if cur + t.nbytes > max && !groups.last().unwrap().is_empty() {
            groups.push(Vec::new());
            cur = 0;
        }
        cur += t.nbytes;
        groups.last_mut().unwrap().push(t);
    }
    let n = groups.len();
    let mut index = Vec::new();
    let mut total = 0;
    for (gi, g) in groups.iter().enumerate() {
        let name = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", gi + 1)
        };
        let mut json = String::from(r#"{"__metadata__":{"format":"pt"}"#);
        let mut off = 0;
        for t in g {
            let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            json.push_str(&format!(
                r#","{}":{{"dtype":"{}","shape":[{}],"data_offsets":[{},{}]}}"#,
                t.name,
                t.dtype,
                shape.join(","),
                off,
                off + t.nbytes
            ));
            off += t.nbytes;
            index.push((t.name.clone(), name.clone()));
        }
        total += off;
        json.push('}');
        while json.len() % 8 != 0 {
            json.push(' ');
        }
        let mut w = BufWriter::with_capacity(4 << 20, File::create(dir.join(&name)).unwrap());
        w.write_all(&(json.len() as u64).to_le_bytes()).unwrap();
        w.write_all(json.as_bytes()).unwrap();
        let mut buf = Vec::with_capacity(4 << 20);
        for t in g {
            let mut left = t.nbytes;
            match t.fill {
                Fill::Json => {
                    w.write_all(&t.json).unwrap();
                    continue;
                }
                Fill::Table(tab) => {
                    for x in tab {
                        w.write_all(&x.to_le_bytes()).unwrap();
                    }
                    continue;
                }
                _ => {}
            }
            while left > 0 {
                buf.clear();
                let chunk = left.min(4 << 20);
                match t.fill {
                    Fill::Bf16(s) => {
                        for _ in 0..chunk / 2 {
                            let x = rng.f32() * s;
                            buf.extend_from_slice(&((x.to_bits() >> 16) as u16).to_le_bytes());
                        }
                    }
                    Fill::F32(s) => {
                        for _ in 0..chunk / 4 {
                            buf.extend_from_slice(
                                &(rng.f32().abs() * s + if s > 0.015 { -0.5 * s } else { 0.001 }).to_le_bytes(),
                            );
                        }
                    }
                    Fill::Bytes => {
                        for _ in 0..chunk.div_ceil(8) {
                            buf.extend_from_slice(&rng.next().to_le_bytes());
                        }
                        buf.truncate(chunk as usize);
                    }
                    Fill::Table(_) | Fill::Json => unreachable!(),
                }
                w.write_all(&buf).unwrap();
                left -= chunk;
            }
        }
        w.flush().unwrap();
    }
    if n > 1 {
        index.sort();
        let wm: Vec<String> = index.iter().map(|(t, f)| format!("    \"{t}\": \"{f}\"")).collect();
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            format!(
                "{{\n  \"metadata\": {{\n    \"total_size\": {total}\n  }},\n  \"weight_map\": {{\n{}\n  }}\n}}\n",
                wm.join(",\n")
            ),
        )
        .unwrap();
    }
}
