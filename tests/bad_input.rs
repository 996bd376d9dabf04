use std::path::{Path, PathBuf};

use crate::util::{assert_listed_error, assert_one_line_error, fixtures, LoraweldCommand, Workdir};

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

fn save_fails(w: &Workdir, adapter: &Path, base: Option<&Path>, needle: &str) -> String {
    let err = save_fails_with(w, adapter, base);
    assert_one_line_error(&err, needle);
    err
}

/// A coverage failure: a summary line, then the offenders one per line.
fn save_fails_listing(w: &Workdir, adapter: &Path, base: Option<&Path>, needle: &str) -> String {
    let err = save_fails_with(w, adapter, base);
    assert_listed_error(&err, needle);
    err
}

fn save_fails_with(w: &Workdir, adapter: &Path, base: Option<&Path>) -> String {
    let out = w.join("out");
    let mut args: Vec<PathBuf> = vec![adapter.into(), out.clone()];
    if let Some(b) = base {
        args.push("--base".into());
        args.push(b.into());
    }
    let before = w.listing();
    let err = LoraweldCommand::save(args).fails_with(2);
    assert!(!out.exists(), "a failed run must not create OUT");
    assert_eq!(w.listing(), before, "a failed run must leave nothing behind");
    err
}

#[test]
fn missing_adapter() {
    let w = Workdir::new();
    save_fails(&w, &w.join("nope"), None, "nope: file not found");
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
    let err = save_fails_listing(
        &w,
        &ad,
        Some(&fixtures().join("base_bf16")),
        "adapter does not fit base",
    );
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
    let err = save_fails_listing(
        &w,
        &ad,
        Some(&fixtures().join("base_bf16")),
        "1 problem(s) in 1 adapter module(s)",
    );
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
    save_fails(
        &w,
        &fixtures().join("lora"),
        Some(&base),
        "model-00002-of-00003.safetensors: invalid safetensors: data section",
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
    save_fails(
        &w,
        &fixtures().join("lora"),
        Some(&base),
        "tensor `lm_head.weight`: data_offsets span",
    );
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
    save_fails(
        &w,
        &ad,
        None,
        "not supported: pickle `.bin` adapter: convert to safetensors first",
    );
}

#[test]
fn output_inside_an_input_is_refused() {
    let w = Workdir::new();
    let base = w.copy_fixture("base_bf16");
    let out = base.join("merged");
    let err =
        LoraweldCommand::save([fixtures().join("lora"), out.clone(), "--base".into(), base.clone()]).fails_with(2);
    assert_one_line_error(&err, "output overlaps input");
    assert!(!out.exists());
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
    save_fails(
        &w,
        &ad,
        Some(&fixtures().join("base_bf16")),
        "tensor `model.layers.0.self_attn.k_proj.weight`: merge produced a non-finite value",
    );
}

#[test]
fn bad_flag_values_are_usage_errors() {
    let w = Workdir::new();
    let out = w.join("out");
    let err = LoraweldCommand::save([
        fixtures().join("lora"),
        out.clone(),
        "--max-shard-size".into(),
        "1GiB".into(),
    ])
    .fails_with(2);
    assert_one_line_error(&err, "--max-shard-size 1GiB");
    let err = LoraweldCommand::save([
        fixtures().join("lora"),
        out.clone(),
        "--save-method".into(),
        "gguf".into(),
    ])
    .fails_with(2);
    assert_one_line_error(&err, "--save-method");
    assert!(!out.exists());
}
