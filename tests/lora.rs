use crate::util::{fixtures, SaveCase};

/// `loraweld save ADAPTER OUT --save-method lora`.
fn lora_method(adapter: &str) -> SaveCase {
    SaveCase::new(fixtures().join(adapter)).args(["--save-method", "lora"])
}

#[test]
fn lora_method_writes_the_adapter_unchanged() {
    let f = fixtures();
    // The adapter itself is the reference: its weights, config and card.
    let s = lora_method("lora").run_and_compare(&f.join("lora"), &["adapter_config.json", "README.md"]);
    let out = &s.out;
    // Tokenizer files come from the base when the adapter has none.
    assert!(out.join("tokenizer.json").is_file());
    let t: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(t["padding_side"], "left");
}

#[test]
fn pass_through_bytes_cloned_with_copy_file_range_are_the_same_bytes() {
    // Forced on any filesystem (ext4 and others copy inside the kernel; btrfs/XFS clone): the
    // adapter's tensors sit at the same in-block offsets in input and output, so whole blocks
    // go by copy_file_range and the partial ones at each end through the writer.
    let s = lora_method("lora")
        .args(["--json"])
        .env("LORAWELD_COPY_FILE_RANGE", "always")
        .run_and_compare(&fixtures().join("lora"), &[]);
    let json = &s.stdout;
    let report: serde_json::Value = serde_json::from_str(json).unwrap();
    let cloned = report["shards"][0]["cloned_bytes"].as_u64().unwrap_or(0);
    // Where O_DIRECT is refused (tmpfs) the writer is buffered and never clones.
    if loraweld_direct_io_works(&s.out) {
        assert!(cloned > 100_000, "cloned {cloned} bytes: {json}");
    }
}

/// Whether `O_DIRECT` opens succeed in `dir` (not on tmpfs).
fn loraweld_direct_io_works(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let p = dir.join(".direct-probe");
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&p)
        .is_ok();
    let _ = std::fs::remove_file(&p);
    ok
}

#[test]
fn lora_method_casts_with_dtype() {
    let f = fixtures();
    let s = lora_method("lora")
        .args(["--dtype", "bf16", "--padding-side", "keep"])
        .run();
    let out = &s.out;
    let got = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let want = std::fs::read(f.join("lora/adapter_model.safetensors")).unwrap();
    let g = safetensors::SafeTensors::deserialize(&got).unwrap();
    let s = safetensors::SafeTensors::deserialize(&want).unwrap();
    assert_eq!(g.len(), s.len());
    for (name, t) in s.tensors() {
        let c = g.tensor(&name).unwrap();
        assert_eq!(c.dtype(), safetensors::Dtype::BF16);
        assert_eq!(c.shape(), t.shape());
        let expect: Vec<u8> = t
            .data()
            .chunks_exact(4)
            .flat_map(|b| half::bf16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes())
            .collect();
        assert!(c.data() == &expect[..], "`{name}` is not the RNE bf16 cast");
    }
    assert_eq!(
        std::fs::read(out.join("tokenizer_config.json")).unwrap(),
        std::fs::read(f.join("base_bf16/tokenizer_config.json")).unwrap(),
        "--padding-side keep leaves the file alone"
    );
}
