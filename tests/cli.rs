use crate::util::{fixtures, LoraweldCommand, Workdir};

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let w = Workdir::new();
    let out = w.join("merged");
    let stdout = LoraweldCommand::save([
        fixtures().join("lora_on_nf4").as_os_str(),
        out.as_os_str(),
        "--dry-run".as_ref(),
        "--max-shard-size".as_ref(),
        "2MB".as_ref(),
    ])
    .ok();
    assert!(
        stdout.contains(
            "plan: 30 tensors (21 merged, 9 copied, 0 dequantized, 0 converted; 105 4-bit helper tensors consumed)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("output: 5377536 bytes of tensor data in 3 file(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("free disk at"), "{stdout}");
    assert!(!out.exists());
    assert!(w.listing().is_empty());
}

#[test]
fn json_report_lists_shards_with_their_hashes() {
    let w = Workdir::new();
    let out = w.join("merged");
    let stdout = LoraweldCommand::save([
        fixtures().join("lora").as_os_str(),
        out.as_os_str(),
        "--json".as_ref(),
        "--max-shard-size".as_ref(),
        "2MB".as_ref(),
    ])
    .ok();
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["save_method"], "merged_16bit");
    assert_eq!(r["counts"]["merged"], 21);
    assert_eq!(r["counts"]["copied"], 9);
    let shards = r["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3);
    for s in shards {
        let bytes = std::fs::read(out.join(s["file"].as_str().unwrap())).unwrap();
        assert_eq!(s["blake3"].as_str().unwrap(), blake3::hash(&bytes).to_hex().as_str());
        assert_eq!(s["bytes"].as_u64().unwrap(), bytes.len() as u64);
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("loraweld-manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["shards"][0]["blake3"], shards[0]["blake3"]);
}

/// Like make: the same command again is up to date and does nothing; other options need
/// --force; --force rewrites.
#[test]
fn existing_output_is_up_to_date_or_needs_force() {
    let w = Workdir::new();
    let out = w.join("merged");
    let args = |extra: &[&str]| {
        let mut v: Vec<std::ffi::OsString> = vec![fixtures().join("lora").into(), out.clone().into()];
        v.extend(extra.iter().map(Into::into));
        v
    };
    LoraweldCommand::save(args(&[])).ok();
    let shard = out.join("model.safetensors");
    let before = std::fs::metadata(&shard).unwrap().modified().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_loraweld"))
        .arg("save")
        .args(args(&["--json"]))
        .output()
        .unwrap();
    assert!(o.status.success());
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["up_to_date"], true);
    assert_eq!(r["bytes_written"], 0);
    assert_eq!(
        std::fs::metadata(&shard).unwrap().modified().unwrap(),
        before,
        "nothing rewritten"
    );
    let err = LoraweldCommand::save(args(&["--dtype", "f32"])).fails_with(2);
    assert!(
        err.contains("already exists from other inputs or options (use --force"),
        "{err}"
    );
    LoraweldCommand::save(args(&["--dtype", "f32", "--force"])).ok();
    let o = LoraweldCommand::save(args(&["--dtype", "f32", "--json"])).ok();
    assert!(o.contains("\"up_to_date\": true"), "{o}");
}

/// `--help` is documentation: this golden file guards it (regenerate with
/// `UPDATE_GOLDEN=1 cargo test help`).
#[test]
fn help_matches_golden() {
    let got = LoraweldCommand::new(["save", "--help"]).ok();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/save-help.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap();
    assert_eq!(got, want);
    assert!(got.contains("Exit codes:"));
}
