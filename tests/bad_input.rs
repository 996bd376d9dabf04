use std::path::Path;

use crate::util::{assert_listed_error, fixtures, SaveCase, Workdir};

/// Writes `adapter_config.json` (copied from the plain LoRA) and the given f32 tensors.
fn write_adapter(dir: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(
        fixtures().join("lora/adapter_config.json"),
        dir.join("adapter_config.json"),
    )
    .unwrap();
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, shape, _), b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors")).unwrap();
}

#[test]
fn missing_adapter() {
    let w = Workdir::new();
    SaveCase::new(w.join("nope")).assert_refused(&w, &["nope: file not found"]);
}

#[test]
fn adapter_tensor_that_matches_nothing_is_listed() {
    let w = Workdir::new();
    let ad = w.join("ad");
    write_adapter(
        &ad,
        &[
            (
                "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight",
                vec![8, 256],
                vec![0.0; 8 * 256],
            ),
            (
                "base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight",
                vec![256, 8],
                vec![0.0; 256 * 8],
            ),
            (
                "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight",
                vec![8, 100],
                vec![0.0; 800],
            ),
            (
                "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight",
                vec![128, 8],
                vec![0.0; 1024],
            ),
        ],
    );
    // A coverage failure: a summary line, then the offenders one per line.
    let err = SaveCase::new(&ad).base(fixtures().join("base_bf16")).refused(&w);
    assert_listed_error(&err, "adapter does not fit base");
    assert!(err.contains("2 problem(s) in 2 adapter module(s); first 2:"), "{err}");
    assert!(
        err.contains("base has no tensor `model.layers.7.self_attn.q_proj.weight`"),
        "{err}"
    );
    assert!(
        err.contains("`model.layers.0.self_attn.k_proj`: lora_A [8, 100] and lora_B [128, 8] do not fit"),
        "{err}"
    );
}

#[test]
fn lora_ranks_that_disagree() {
    let w = Workdir::new();
    let ad = w.join("ad");
    write_adapter(
        &ad,
        &[
            (
                "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight",
                vec![4, 256],
                vec![0.0; 1024],
            ),
            (
                "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight",
                vec![128, 8],
                vec![0.0; 1024],
            ),
        ],
    );
    let err = SaveCase::new(&ad).base(fixtures().join("base_bf16")).refused(&w);
    assert_listed_error(&err, "1 problem(s) in 1 adapter module(s)");
    assert!(err.contains("lora_A [4, 256] and lora_B [128, 8]"), "{err}");
}

#[test]
fn truncated_base_shard() {
    let w = Workdir::new();
    let base = w.copy_fixture("base_bf16");
    let shard = base.join("model-00002-of-00003.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    SaveCase::new(fixtures().join("lora")).base(&base).assert_refused(
        &w,
        &["model-00002-of-00003.safetensors: invalid safetensors: data section"],
    );
}

#[test]
fn header_offsets_out_of_range() {
    let w = Workdir::new();
    let base = w.copy_fixture("base_bf16");
    let shard = base.join("model-00003-of-00003.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Value = serde_json::from_slice(bytes[8..8 + n].trim_ascii_end()).unwrap();
    h["lm_head.weight"]["data_offsets"] = serde_json::json!([0, 99_000_000]);
    let mut text = serde_json::to_string(&h).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&shard, out).unwrap();
    SaveCase::new(fixtures().join("lora"))
        .base(&base)
        .assert_refused(&w, &["tensor `lm_head.weight`: data_offsets span"]);
}

#[test]
fn pickle_adapter_is_refused() {
    let w = Workdir::new();
    let ad = w.join("ad");
    std::fs::create_dir_all(&ad).unwrap();
    std::fs::copy(
        fixtures().join("lora/adapter_config.json"),
        ad.join("adapter_config.json"),
    )
    .unwrap();
    std::fs::write(ad.join("adapter_model.bin"), b"\x80\x02").unwrap();
    SaveCase::new(&ad).assert_refused(
        &w,
        &["not supported: pickle `.bin` adapter: convert to safetensors first"],
    );
}

#[test]
fn output_inside_an_input_is_refused() {
    let w = Workdir::new();
    let base = w.copy_fixture("base_bf16");
    SaveCase::new(fixtures().join("lora"))
        .base(&base)
        .out(base.join("merged"))
        .assert_refused(&w, &["output overlaps input"]);
}

#[test]
fn non_finite_merge_names_the_tensor() {
    let w = Workdir::new();
    let ad = w.join("ad");
    let mut b = vec![0.0f32; 128 * 8];
    b[5] = f32::INFINITY;
    write_adapter(
        &ad,
        &[
            (
                "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight",
                vec![8, 256],
                vec![0.5; 8 * 256],
            ),
            (
                "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight",
                vec![128, 8],
                b,
            ),
        ],
    );
    SaveCase::new(&ad).base(fixtures().join("base_bf16")).assert_refused(
        &w,
        &["tensor `model.layers.0.self_attn.k_proj.weight`: merge produced a non-finite value"],
    );
}

#[test]
fn bad_flag_values_are_usage_errors() {
    let w = Workdir::new();
    SaveCase::new(fixtures().join("lora"))
        .args(["--max-shard-size", "1GiB"])
        .assert_refused(&w, &["--max-shard-size 1GiB"]);
    SaveCase::new(fixtures().join("lora"))
        .args(["--save-method", "merged_8bit"])
        .assert_refused(&w, &["--save-method"]);
}
