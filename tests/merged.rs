use std::path::Path;

use crate::util::{all_tensors, fixtures, SaveCase, SHARDED_MODEL_FILES};

fn tokenizer_is_inference_ready(out: &Path) {
    let t: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(t["padding_side"], "left");
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(fixtures().join("base_bf16/tokenizer.json")).unwrap()
    );
}

#[test]
fn bf16_base_is_bit_exact_with_peft() {
    let f = fixtures();
    // The base comes from adapter_config.json's relative base_model_name_or_path.
    let s = SaveCase::new(f.join("lora"))
        .args(["--max-shard-size", "2MB"])
        .run_and_compare(&f.join("ref_merged_16bit"), SHARDED_MODEL_FILES);
    tokenizer_is_inference_ready(&s.out);
    assert!(std::fs::read_to_string(s.out.join("README.md"))
        .unwrap()
        .starts_with("---\nbase_model: llama/base_bf16\n"));
    assert_eq!(s.dir.listing(), ["merged"], "no staging directory may be left behind");
}

/// `ref_merged_16bit_from_nf4` was saved by a model built with `from_config`, so its shards
/// follow module registration order: `--shard-order module` reproduces that layout.
#[test]
fn nf4_double_quant_base_is_bit_exact_with_peft() {
    let f = fixtures();
    let s = SaveCase::new(f.join("lora_on_nf4"))
        .args(["--max-shard-size", "2MB", "--shard-order", "module"])
        .run_and_compare(&f.join("ref_merged_16bit_from_nf4"), SHARDED_MODEL_FILES);
    tokenizer_is_inference_ready(&s.out);
    let cfg = std::fs::read_to_string(s.out.join("config.json")).unwrap();
    assert!(!cfg.contains("quantization_config"));
}

#[test]
fn fp4_base_is_bit_exact_with_peft() {
    let f = fixtures();
    SaveCase::new(f.join("lora_on_nf4"))
        .base(f.join("base_fp4"))
        .args(["--max-shard-size", "2MB", "--shard-order", "module"])
        .run_and_compare(&f.join("ref_merged_16bit_from_fp4"), SHARDED_MODEL_FILES);
}

#[test]
fn default_shard_size_gives_one_file_with_the_same_tensors() {
    let f = fixtures();
    let s = SaveCase::new(f.join("lora")).run();
    let out = &s.out;
    assert!(out.join("model.safetensors").is_file());
    assert!(
        !out.join("model.safetensors.index.json").exists(),
        "one shard means no index"
    );
    assert_eq!(all_tensors(out), all_tensors(&f.join("ref_merged_16bit")));
}

#[test]
fn variant_names_files_like_transformers() {
    let s = SaveCase::new(fixtures().join("lora"))
        .args(["--max-shard-size", "2MB", "--variant", "v2"])
        .run();
    let out = &s.out;
    for i in 1..=3 {
        assert!(out.join(format!("model.v2-0000{i}-of-00003.safetensors")).is_file());
    }
    let idx = std::fs::read_to_string(out.join("model.safetensors.index.v2.json")).unwrap();
    assert!(idx.contains("\"model.v2-00001-of-00003.safetensors\""));
}

/// `--dtype f32` rounds nothing: rounding our f32 output to bf16 must give PEFT's bf16 bytes,
/// and pass-through tensors must be the exact widening of the base.
#[test]
fn f32_output_rounds_to_the_bf16_reference() {
    let f = fixtures();
    let s = SaveCase::new(f.join("lora")).args(["--dtype", "f32"]).run();
    let out = &s.out;
    let got = all_tensors(out);
    let want = all_tensors(&f.join("ref_merged_16bit"));
    assert_eq!(got.len(), want.len());
    for (name, (dt, shape, bytes)) in &got {
        assert_eq!(dt, "F32", "{name}");
        let (_, wshape, wbytes) = &want[name];
        assert_eq!(shape, wshape);
        let rounded: Vec<u8> = bytes
            .chunks_exact(4)
            .flat_map(|c| half::bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes())
            .collect();
        assert!(
            &rounded == wbytes,
            "`{name}`: f32 output does not round to the bf16 reference"
        );
    }
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["dtype"], "float32");
}
