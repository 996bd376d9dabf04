//! `verify`, `inspect`, `completions`.

use crate::util::{fixtures, LoraweldCommand, Workdir};

#[test]
fn verify_passes_a_fresh_output_and_catches_a_flipped_byte() {
    let w = Workdir::new();
    let out = w.join("merged");
    LoraweldCommand::save([
        fixtures().join("lora"),
        out.clone(),
        "--max-shard-size".into(),
        "2MB".into(),
    ])
    .ok();
    let ok = LoraweldCommand::new(["verify".as_ref(), out.as_os_str()]).ok();
    assert!(ok.contains("merged: ok (3 files, 30 tensors)"), "{ok}");
    let shard = out.join("model-00002-of-00003.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_loraweld"))
        .arg("verify")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(
        stdout.contains("model-00002-of-00003.safetensors: blake3 or size differs from the manifest"),
        "{stdout}"
    );
    assert!(String::from_utf8(o.stderr)
        .unwrap()
        .contains("verification failed (1 problem(s))"));
}

#[test]
fn verify_checks_the_index_against_the_files() {
    let w = Workdir::new();
    let base = w.copy_fixture("base_bf16");
    let idx = base.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&idx).unwrap().replace(
        "\"lm_head.weight\": \"model-00003-of-00003.safetensors\"",
        "\"lm_head.weight\": \"model-00001-of-00003.safetensors\"",
    );
    std::fs::write(&idx, text).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_loraweld"))
        .arg("verify")
        .arg(&base)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(
        stdout.contains("index says `lm_head.weight` is in model-00001-of-00003.safetensors, but it is in model-00003-of-00003.safetensors"),
        "{stdout}"
    );
}

#[test]
fn inspect_counts_parameters_of_16_and_4_bit_models_alike() {
    for dir in ["base_bf16", "base_nf4_dq", "base_fp4"] {
        let out = LoraweldCommand::new(["inspect".as_ref(), fixtures().join(dir).as_os_str()]).ok();
        assert!(out.contains("(model): 30 tensors, 2688768 parameters"), "{dir}: {out}");
    }
    let out = LoraweldCommand::new(["inspect".as_ref(), fixtures().join("base_nf4_dq").as_os_str()]).ok();
    assert!(out.contains("nf4+dq blocksize 64 [256, 688] (bfloat16)"), "{out}");
}

#[test]
fn inspect_shows_an_adapter_and_its_coverage() {
    let out = LoraweldCommand::new([
        "inspect".as_ref(),
        fixtures().join("lora").as_os_str(),
        "--base".as_ref(),
        fixtures().join("base_fp4").as_os_str(),
    ])
    .ok();
    assert!(out.contains("LoRA r=8 alpha=16 base=llama/base_bf16"), "{out}");
    assert!(out.contains("coverage: covers"), "{out}");
    assert!(out.contains("21 tensors merged, 9 copied"), "{out}");
}

#[test]
fn completions_are_generated() {
    let out = LoraweldCommand::new(["completions", "bash"]).ok();
    assert!(out.contains("_loraweld()"), "{}", &out[..200.min(out.len())]);
    assert!(out.contains("--max-shard-size"));
}

/// A GGUF output: `verify` re-hashes it against the manifest and checks its layout (a flipped
/// byte and a truncated file are caught); `inspect` shows its metadata and tensor types.
#[test]
fn verify_and_inspect_read_gguf_outputs() {
    let w = Workdir::new();
    let out = w.join("gguf");
    let set = fixtures().parent().unwrap().join("gguf_models/llama_spm");
    LoraweldCommand::save([
        set.join("lora"),
        out.clone(),
        "--base".into(),
        set.join("base_bf16"),
        "--save-method".into(),
        "gguf".into(),
        "--quantization-method".into(),
        "q4_k_m".into(),
        "--model-name".into(),
        "t".into(),
    ])
    .ok();
    let ok = LoraweldCommand::new(["verify".as_ref(), out.as_os_str()]).ok();
    assert!(ok.contains("gguf: ok (1 files, 102 tensors)"), "{ok}");
    let file = out.join("t.Q4_K_M.gguf");
    let shown = LoraweldCommand::new(["inspect".as_ref(), file.as_os_str()]).ok();
    for line in [
        "(gguf): 102 tensors",
        "general.architecture                         str  \"llama\"",
        "general.file_type                            u32  15",
        "tokenizer.ggml.tokens                        arr  [1000 × str]",
        "blk.0.attn_v.weight",
        "q6_K",
    ] {
        assert!(shown.contains(line), "{line:?} not in\n{shown}");
    }
    let bytes = std::fs::read(&file).unwrap();
    let mut flipped = bytes.clone();
    let last = flipped.len() - 100;
    flipped[last] ^= 1;
    std::fs::write(&file, &flipped).unwrap();
    let fails = |want: &str| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_loraweld"))
            .arg("verify")
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        let stdout = String::from_utf8(o.stdout).unwrap();
        assert!(stdout.contains(want), "{want:?} not in\n{stdout}");
    };
    fails("t.Q4_K_M.gguf: blake3 or size differs from the manifest");
    std::fs::write(&file, &bytes[..bytes.len() - 64]).unwrap();
    fails("bytes, but its tensors end at");
}
