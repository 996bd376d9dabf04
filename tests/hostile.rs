//! Hostile inputs, one test per case: each gives one clear line naming the file (and tensor),
//! the documented exit code, no panic, and nothing written that looks like a finished output.
//! (More cases, on adapters, live in bad_input.rs.)

use std::path::{Path, PathBuf};

use crate::util::{assert_one_line_error, fixtures, SaveCase, Workdir};

/// A base copy whose `model-00003-of-00003.safetensors` is replaced by `bytes`.
fn base_with_shard3(w: &Workdir, bytes: Vec<u8>) -> PathBuf {
    let base = w.copy_fixture("base_bf16");
    std::fs::write(base.join("model-00003-of-00003.safetensors"), bytes).unwrap();
    base
}

/// The real shard 3 with its header JSON edited by `edit` (re-padded to 8 bytes).
fn edited_shard3(edit: impl FnOnce(&mut String)) -> Vec<u8> {
    let bytes = std::fs::read(fixtures().join("base_bf16/model-00003-of-00003.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut text = String::from_utf8(bytes[8..8 + n].to_vec())
        .unwrap()
        .trim_end()
        .to_string();
    edit(&mut text);
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// Asserts a merge of the plain LoRA onto `base` is refused (see [`SaveCase::assert_refused`]):
/// exit code 2, one line containing each of `needles`, and nothing left in the work dir but
/// the inputs.
fn merge_fails(w: &Workdir, base: &Path, needles: &[&str]) -> String {
    SaveCase::new(fixtures().join("lora"))
        .base(base)
        .assert_refused(w, needles)
}

#[test]
fn header_length_larger_than_the_file() {
    let w = Workdir::new();
    let mut b = 5000u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    let base = base_with_shard3(&w, b);
    merge_fails(
        &w,
        &base,
        &["model-00003-of-00003.safetensors: invalid safetensors: header length 5000 runs past the end"],
    );
}

#[test]
fn header_length_above_the_cap() {
    let w = Workdir::new();
    let mut b = 200_000_000u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    let base = base_with_shard3(&w, b);
    merge_fails(
        &w,
        &base,
        &["header length 200000000 is above the 100000000-byte limit"],
    );
}

#[test]
fn overlapping_data_offsets() {
    let w = Workdir::new();
    let b = edited_shard3(|t| {
        *t = t.replacen("\"data_offsets\":[512000,", "\"data_offsets\":[511998,", 1);
    });
    let base = base_with_shard3(&w, b);
    merge_fails(&w, &base, &["model-00003-of-00003.safetensors", "data_offsets"]);
}

#[test]
fn offsets_that_disagree_with_dtype_and_shape() {
    let w = Workdir::new();
    let b = edited_shard3(|t| {
        *t = t.replacen(
            "\"lm_head.weight\":{\"dtype\":\"BF16\",\"shape\":[1000,256]",
            "\"lm_head.weight\":{\"dtype\":\"BF16\",\"shape\":[1000,255]",
            1,
        );
    });
    let base = base_with_shard3(&w, b);
    merge_fails(
        &w,
        &base,
        &["tensor `lm_head.weight`: data_offsets span 512000 bytes, expected 510000"],
    );
}

#[test]
fn unknown_dtype() {
    let w = Workdir::new();
    let b = edited_shard3(|t| {
        *t = t.replacen(
            "\"lm_head.weight\":{\"dtype\":\"BF16\"",
            "\"lm_head.weight\":{\"dtype\":\"Q4_K\"",
            1,
        );
    });
    let base = base_with_shard3(&w, b);
    merge_fails(&w, &base, &["tensor `lm_head.weight`: unknown dtype `Q4_K`"]);
}

#[test]
fn duplicate_tensor_names() {
    let w = Workdir::new();
    let b = edited_shard3(|t| {
        // Give another tensor the head's name.
        *t = t.replacen("\"model.layers.2.mlp.down_proj.weight\"", "\"lm_head.weight\"", 1);
    });
    let base = base_with_shard3(&w, b);
    merge_fails(
        &w,
        &base,
        &[
            "model-00003-of-00003.safetensors",
            "tensor `lm_head.weight` appears twice",
        ],
    );
}

#[test]
fn non_utf8_header() {
    let w = Workdir::new();
    let mut b = 8u64.to_le_bytes().to_vec();
    b.extend_from_slice(&[b'{', 0xff, 0xfe, b'}', b' ', b' ', b' ', b' ']);
    let base = base_with_shard3(&w, b);
    merge_fails(
        &w,
        &base,
        &["model-00003-of-00003.safetensors: invalid safetensors: header is not valid UTF-8"],
    );
}

fn base_with_index_entry(w: &Workdir, file: &str) -> PathBuf {
    let base = w.copy_fixture("base_bf16");
    let idx = base.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&idx).unwrap().replace(
        "\"lm_head.weight\": \"model-00003-of-00003.safetensors\"",
        &format!("\"lm_head.weight\": {}", serde_json::to_string(file).unwrap()),
    );
    std::fs::write(&idx, text).unwrap();
    base
}

#[test]
fn index_names_a_parent_path() {
    let w = Workdir::new();
    let base = base_with_index_entry(&w, "../evil.safetensors");
    merge_fails(
        &w,
        &base,
        &[
            "model.safetensors.index.json",
            "`../evil.safetensors`, which is outside the model directory",
        ],
    );
}

#[test]
fn index_names_an_absolute_path() {
    let w = Workdir::new();
    let base = base_with_index_entry(&w, "/etc/passwd");
    merge_fails(&w, &base, &["`/etc/passwd`, which is outside the model directory"]);
}

#[test]
fn index_names_a_symlink_that_escapes() {
    let w = Workdir::new();
    let base = base_with_index_entry(&w, "escape.safetensors");
    let outside = w.join("outside.safetensors");
    std::fs::copy(base.join("model-00003-of-00003.safetensors"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, base.join("escape.safetensors")).unwrap();
    merge_fails(
        &w,
        &base,
        &["`escape.safetensors`, a symlink that escapes the model directory"],
    );
}

/// The 4-bit base with one quant state replaced by `json`.
fn nf4_with_state(w: &Workdir, json: &str) -> PathBuf {
    let base = w.copy_fixture("base_nf4_dq");
    let shard = base.join("model-00001-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let key = "model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4";
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    for t in &mut tensors {
        if t.0 == key {
            t.3 = json.as_bytes().to_vec();
            t.2 = vec![t.3.len()];
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &shard).unwrap();
    base
}

#[test]
fn quant_state_json_malformed() {
    let w = Workdir::new();
    let base = nf4_with_state(&w, r#"{"quant_type": "nf4", "blocksize": 64,"#);
    merge_fails(&w, &base, &["model-00001-of-00002.safetensors: tensor `model.layers.0.self_attn.q_proj.weight`: invalid 4-bit quant state: json"],
    );
}

#[test]
fn quant_state_disagrees_with_tensor_sizes() {
    let w = Workdir::new();
    let base = nf4_with_state(
        &w,
        r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [512, 256], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.05}"#,
    );
    merge_fails(
        &w,
        &base,
        &[
            "tensor `model.layers.0.self_attn.q_proj.weight`: invalid 4-bit quant state",
            "packed bytes for 131072 elements",
        ],
    );
}

#[test]
fn nonfinite_passes_only_with_allow_nonfinite() {
    let w = Workdir::new();
    let ad = w.join("ad");
    std::fs::create_dir_all(&ad).unwrap();
    std::fs::copy(
        fixtures().join("lora/adapter_config.json"),
        ad.join("adapter_config.json"),
    )
    .unwrap();
    let mut b = vec![0.0f32; 128 * 8];
    b[0] = f32::NAN;
    let a: Vec<u8> = vec![0.5f32; 8 * 256].iter().flat_map(|x| x.to_le_bytes()).collect();
    let bb: Vec<u8> = b.iter().flat_map(|x| x.to_le_bytes()).collect();
    let views = vec![
        (
            "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![8, 256], &a).unwrap(),
        ),
        (
            "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![128, 8], &bb).unwrap(),
        ),
    ];
    safetensors::serialize_to_file(views, None, &ad.join("adapter_model.safetensors")).unwrap();
    let base = fixtures().join("base_bf16");
    SaveCase::new(&ad).base(&base).assert_refused(
        &w,
        &["tensor `model.layers.0.self_attn.k_proj.weight`: merge produced a non-finite value"],
    );
    let s = SaveCase::new(&ad).base(&base).args(["--allow-nonfinite"]).run();
    assert!(s.out.join("model.safetensors").is_file());
}

#[test]
fn output_equal_to_an_input_is_refused() {
    let w = Workdir::new();
    let base = w.copy_fixture("base_bf16");
    let before = std::fs::read(base.join("model-00001-of-00003.safetensors")).unwrap();
    SaveCase::new(fixtures().join("lora"))
        .base(&base)
        .out(&base)
        .args(["--force"])
        .assert_refused(&w, &["output overlaps input"]);
    assert_eq!(
        std::fs::read(base.join("model-00001-of-00003.safetensors")).unwrap(),
        before,
        "inputs are never touched"
    );
}

/// A disk that fills up mid-write (the preflight is skipped with its test hook, so the write
/// itself hits ENOSPC): a clean error, exit 3, the staging area removed, nothing left.
#[test]
fn full_disk_mid_write() {
    let w = Workdir::new();
    let small = w.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3M", "tmpfs"])
        .arg(&small)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the full-disk test did not run");
        return;
    }
    let out = small.join("merged");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_loraweld"))
        .args(["save".as_ref(), fixtures().join("lora").as_os_str(), out.as_os_str()])
        .env("LORAWELD_NO_DISK_PREFLIGHT", "1")
        .output()
        .unwrap();
    let left: Vec<String> = std::fs::read_dir(&small)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let _ = std::process::Command::new("umount").arg(&small).status();
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert_one_line_error(&err, "no space left on device while writing");
    assert!(left.is_empty(), "the staging area must be removed: {left:?}");
}
