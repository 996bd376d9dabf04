use std::path::Path;

use crate::util::{fixtures, LoraweldCommand, Workdir};

/// Every file transformers wrote for the reference must be byte-identical in our output.
fn assert_same_model(out: &Path, reference: &Path) {
    let mut n = 0;
    for e in std::fs::read_dir(reference).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        if name.ends_with(".safetensors") {
            assert_bytes_eq!(out.join(&name), reference.join(&name));
            n += 1;
        }
    }
    assert!(n > 0, "reference has no weights");
    for f in ["model.safetensors.index.json", "config.json", "generation_config.json"] {
        let got = std::fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        let want = std::fs::read_to_string(reference.join(f)).unwrap();
        assert_eq!(got, want, "{f} differs");
    }
}

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
    let w = Workdir::new();
    let out = w.join("merged");
    let f = fixtures();
    // The base comes from adapter_config.json's relative base_model_name_or_path.
    LoraweldCommand::save([
        f.join("lora").as_os_str(),
        out.as_os_str(),
        "--max-shard-size".as_ref(),
        "2MB".as_ref(),
    ])
    .ok();
    assert_same_model(&out, &f.join("ref_merged_16bit"));
    tokenizer_is_inference_ready(&out);
    assert!(std::fs::read_to_string(out.join("README.md"))
        .unwrap()
        .starts_with("---\nbase_model: llama/base_bf16\n"));
    assert_eq!(w.listing(), ["merged"], "no staging directory may be left behind");
}

/// `ref_merged_16bit_from_nf4` was saved by a model built with `from_config`, so its shards
/// follow module registration order: `--shard-order module` reproduces that layout.
#[test]
fn nf4_double_quant_base_is_bit_exact_with_peft() {
    let w = Workdir::new();
    let out = w.join("merged");
    let f = fixtures();
    LoraweldCommand::save([
        f.join("lora_on_nf4").as_os_str(),
        out.as_os_str(),
        "--max-shard-size".as_ref(),
        "2MB".as_ref(),
        "--shard-order".as_ref(),
        "module".as_ref(),
    ])
    .ok();
    assert_same_model(&out, &f.join("ref_merged_16bit_from_nf4"));
    tokenizer_is_inference_ready(&out);
    let cfg = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(!cfg.contains("quantization_config"));
}

#[test]
fn fp4_base_is_bit_exact_with_peft() {
    let w = Workdir::new();
    let out = w.join("merged");
    let f = fixtures();
    LoraweldCommand::save([
        f.join("lora_on_nf4").as_os_str(),
        out.as_os_str(),
        "--base".as_ref(),
        f.join("base_fp4").as_os_str(),
        "--max-shard-size".as_ref(),
        "2MB".as_ref(),
        "--shard-order".as_ref(),
        "module".as_ref(),
    ])
    .ok();
    assert_same_model(&out, &f.join("ref_merged_16bit_from_fp4"));
}

/// Tensor name → (dtype, shape, bytes) of a model directory, whatever its sharding.
fn all_tensors(dir: &Path) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let mut m = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            for (n, t) in st.tensors() {
                m.insert(n, (format!("{:?}", t.dtype()), t.shape().to_vec(), t.data().to_vec()));
            }
        }
    }
    m
}

#[test]
fn default_shard_size_gives_one_file_with_the_same_tensors() {
    let w = Workdir::new();
    let out = w.join("merged");
    let f = fixtures();
    LoraweldCommand::save([f.join("lora").as_os_str(), out.as_os_str()]).ok();
    assert!(out.join("model.safetensors").is_file());
    assert!(
        !out.join("model.safetensors.index.json").exists(),
        "one shard means no index"
    );
    assert_eq!(all_tensors(&out), all_tensors(&f.join("ref_merged_16bit")));
}

#[test]
fn variant_names_files_like_transformers() {
    let w = Workdir::new();
    let out = w.join("merged");
    let f = fixtures();
    LoraweldCommand::save([
        f.join("lora").as_os_str(),
        out.as_os_str(),
        "--max-shard-size".as_ref(),
        "2MB".as_ref(),
        "--variant".as_ref(),
        "v2".as_ref(),
    ])
    .ok();
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
    let w = Workdir::new();
    let out = w.join("merged");
    let f = fixtures();
    LoraweldCommand::save([
        f.join("lora").as_os_str(),
        out.as_os_str(),
        "--dtype".as_ref(),
        "f32".as_ref(),
    ])
    .ok();
    let got = all_tensors(&out);
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
