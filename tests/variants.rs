//! Every LoRA variant and architecture, bit-exact with PEFT `merge_and_unload()`: the cases in
//! tests/fixtures/variants/cases.json, made by scripts/make_variant_fixtures.py with the real
//! transformers + PEFT + bitsandbytes.

use std::path::{Path, PathBuf};

use crate::util::{SaveCase, Saved, Workdir};

fn variants() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/variants")
}

/// `loraweld save CASE/adapter OUT EXTRA…`.
fn merge_case(name: &str, extra: &[&str]) -> Saved {
    SaveCase::new(variants().join(name).join("adapter")).args(extra).run()
}

/// The case's output is its `ref`: `model.safetensors` byte for byte, `config.json` and
/// `generation_config.json`.
fn check_case(name: &str) {
    SaveCase::new(variants().join(name).join("adapter")).run_and_compare(
        &variants().join(name).join("ref"),
        &["config.json", "generation_config.json"],
    );
}

macro_rules! bit_exact_cases {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_case(stringify!($name));
            }
        )*

        /// Every case in cases.json has a test above.
        #[test]
        fn every_fixture_case_is_tested() {
            let cases: serde_json::Value =
                serde_json::from_slice(&std::fs::read(variants().join("cases.json")).unwrap()).unwrap();
            let mut listed: Vec<String> =
                cases.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
            listed.sort();
            let mut tested = vec![$(stringify!($name).to_string()),*];
            tested.sort();
            assert_eq!(listed, tested);
        }
    };
}

bit_exact_cases!(
    llama_rslora_patterns,
    llama_dora,
    llama_embed_head,
    llama_mts_tokens,
    llama_bf16_adapter,
    llama_fp16_base,
    llama_nf4_dora,
    qwen2_tied_head,
    qwen2_lora_bias,
    qwen2_mts_untie,
    mistral,
    gemma,
    phi3,
    gpt2,
    qwen2moe_attn,
);

/// PEFT merges a LoRA on a tied head into the shared matrix; we match it and say so in one line.
#[test]
fn tied_head_warns() {
    let w = Workdir::new();
    let out = w.join("merged");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_loraweld"))
        .args([
            "save".as_ref(),
            variants().join("qwen2_tied_head/adapter").as_os_str(),
            out.as_os_str(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    let warning = err
        .lines()
        .find(|l| l.starts_with("loraweld: warning: "))
        .expect("a warning line");
    assert!(
        warning.contains("`lm_head` is tied to `model.embed_tokens.weight`"),
        "{warning}"
    );
    assert!(warning.contains("--untie-embeddings"), "{warning}");
}

/// `--untie-embeddings`: the head gets W + delta (one rounding, as a Linear merge), the input
/// embedding stays as it was, and the config unties them.
#[test]
fn untie_embeddings_keeps_the_input_embedding() {
    let s = merge_case("qwen2_tied_head", &["--untie-embeddings"]);
    let got = std::fs::read(s.out.join("model.safetensors")).unwrap();
    let got = safetensors::SafeTensors::deserialize(&got).unwrap();
    let base = std::fs::read(variants().join("base_qwen2/model.safetensors")).unwrap();
    let base = safetensors::SafeTensors::deserialize(&base).unwrap();
    let pefts = std::fs::read(variants().join("qwen2_tied_head/ref/model.safetensors")).unwrap();
    let pefts = safetensors::SafeTensors::deserialize(&pefts).unwrap();
    let emb = "model.embed_tokens.weight";
    assert_eq!(
        got.tensor(emb).unwrap().data(),
        base.tensor(emb).unwrap().data(),
        "embedding must be unchanged"
    );
    // PEFT's shared matrix is exactly W + delta with one rounding: that is our untied head.
    assert_eq!(
        got.tensor("lm_head.weight").unwrap().data(),
        pefts.tensor(emb).unwrap().data()
    );
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(s.out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["tie_word_embeddings"], false);
}

/// Fused 3-D expert parameters (`target_parameters`) are refused, saying what is unsupported.
#[test]
fn moe_target_parameters_are_refused() {
    let w = Workdir::new();
    let ad = w.join("ad");
    std::fs::create_dir_all(&ad).unwrap();
    let src = variants().join("qwen2moe_attn/adapter");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        ad.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("adapter_config.json")).unwrap()).unwrap();
    cfg["target_parameters"] = serde_json::json!(["mlp.experts.gate_up_proj"]);
    cfg["base_model_name_or_path"] = variants().join("base_qwen2moe").to_string_lossy().into();
    std::fs::write(ad.join("adapter_config.json"), cfg.to_string()).unwrap();
    SaveCase::new(ad).assert_refused(
        &w,
        &["target_parameters (LoRA on raw parameters, e.g. fused 3-D MoE experts) is not supported"],
    );
}

/// `--dtype` on an fp16 base: every output is the single rounding of the f32 merge (the
/// `--dtype f32` output) to the asked dtype; with no `--dtype` it is PEFT's fp16 merge (above).
#[test]
fn dtype_on_an_fp16_base_rounds_the_f32_merge_once() {
    let s32 = merge_case("llama_fp16_base", &["--dtype", "f32"]);
    let f32s = std::fs::read(s32.out.join("model.safetensors")).unwrap();
    let f32s = safetensors::SafeTensors::deserialize(&f32s).unwrap();
    for (flag, st_dtype) in [("bf16", safetensors::Dtype::BF16), ("fp16", safetensors::Dtype::F16)] {
        let s = merge_case("llama_fp16_base", &["--dtype", flag]);
        let got = std::fs::read(s.out.join("model.safetensors")).unwrap();
        let got = safetensors::SafeTensors::deserialize(&got).unwrap();
        for (name, t) in got.tensors() {
            assert_eq!(t.dtype(), st_dtype, "{name}");
            let want: Vec<u8> = f32s
                .tensor(&name)
                .unwrap()
                .data()
                .chunks_exact(4)
                .flat_map(|c| {
                    let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    match st_dtype {
                        safetensors::Dtype::BF16 => half::bf16::from_f32(x).to_le_bytes(),
                        _ => half::f16::from_f32(x).to_le_bytes(),
                    }
                })
                .collect();
            assert!(t.data() == &want[..], "`{name}` with --dtype {flag}");
        }
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(s.out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["dtype"], if flag == "bf16" { "bfloat16" } else { "float16" });
    }
}

/// F16 adapter tensors (not upcast by PEFT) merge like the bf16 ones: the delta is rounded to
/// the adapter's dtype before the add. Checked against the f32 merge of the same f16 factors.
#[test]
fn f16_adapter_rounds_the_delta_to_f16() {
    let w = Workdir::new();
    let ad = w.join("ad");
    std::fs::create_dir_all(&ad).unwrap();
    let src = variants().join("llama_bf16_adapter/adapter");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("adapter_config.json")).unwrap()).unwrap();
    cfg["base_model_name_or_path"] = variants().join("base_llama").to_string_lossy().into();
    std::fs::write(ad.join("adapter_config.json"), cfg.to_string()).unwrap();
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let conv: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let data: Vec<u8> = t
                .data()
                .chunks_exact(2)
                .flat_map(|c| half::f16::from_f32(half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).to_le_bytes())
                .collect();
            (n, t.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = conv
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &ad.join("adapter_model.safetensors")).unwrap();
    let s = SaveCase::new(&ad).run();
    // Recompute one weight by the rule: W' = RN_bf16(W + RN_f16(fl32(fma-chain(B, A)) * s)).
    let base = std::fs::read(variants().join("base_llama/model.safetensors")).unwrap();
    let base = safetensors::SafeTensors::deserialize(&base).unwrap();
    let merged = std::fs::read(s.out.join("model.safetensors")).unwrap();
    let merged = safetensors::SafeTensors::deserialize(&merged).unwrap();
    let m = "model.layers.1.self_attn.q_proj";
    let get = |n: &str| conv.iter().find(|(k, _, _)| k == n).unwrap();
    let (_, ashape, a) = get(&format!("base_model.model.{m}.lora_A.weight"));
    let (_, _, b) = get(&format!("base_model.model.{m}.lora_B.weight"));
    let f16 = |d: &[u8]| {
        d.chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect::<Vec<_>>()
    };
    let (a, b) = (f16(a), f16(b));
    let (r, cols) = (ashape[0], ashape[1]);
    let s = (cfg["lora_alpha"].as_f64().unwrap() / r as f64) as f32;
    let wb = base.tensor(&format!("{m}.weight")).unwrap();
    let w0: Vec<f32> = wb
        .data()
        .chunks_exact(2)
        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    let got = merged.tensor(&format!("{m}.weight")).unwrap().data().to_vec();
    for (idx, wv) in w0.iter().enumerate() {
        let (o, i) = (idx / cols, idx % cols);
        let mut acc = 0f32;
        for k in 0..r {
            acc = b[o * r + k].mul_add(a[k * cols + i], acc);
        }
        let delta = half::f16::from_f32(acc * s).to_f32();
        let want = half::bf16::from_f32(wv + delta).to_le_bytes();
        assert_eq!(&got[2 * idx..2 * idx + 2], &want, "element {idx}");
    }
}
