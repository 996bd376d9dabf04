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
        err.contains("holds a loraweld save of other inputs or options (use --force"),
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

/// clap's usage errors and ours look alike: `loraweld: error: ...`, one line, exit 2.
#[test]
fn usage_errors_are_one_line_in_our_shape() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["save", "a", "b", "--frobnicate"],
            "unexpected argument '--frobnicate'",
        ),
        (&["save", "a"], "the following required arguments were not provided"),
        (
            &["save", "a", "b", "--device", "gpu"],
            "--device gpu: expected auto, cpu or cuda; did you mean cuda?",
        ),
        (
            &["save", "a", "b", "--save-method", "merged_16"],
            "--save-method merged_16: expected lora, merged_16bit, merged_4bit or gguf; did you mean merged_16bit?",
        ),
        (
            &["save", "a", "b", "--dtype", "bf61"],
            "--dtype bf61: expected bf16, fp16 or f32; did you mean bf16?",
        ),
        (&["save", "a", "b", "--shard-order", "modul"], "did you mean module?"),
        (&["save", "a", "b", "--padding-side", "rigth"], "did you mean right?"),
        (
            &["save", "a", "b", "--quant-type", "nf5", "--save-method", "merged_4bit"],
            "did you mean nf4?",
        ),
        (
            &["save", "a", "b", "--threads", "many"],
            "invalid value 'many' for '--threads <N>'",
        ),
        (
            &["save", "a", "b", "--max-shard-size", "5"],
            "--max-shard-size 5: 5 bytes is too small to be meant",
        ),
        (
            &["save", "a", "b", "--threads", "0"],
            "--threads 0: expected at least 1",
        ),
        (
            &["save", "a", "b", "--maximum-memory-usage", "1MB"],
            "--maximum-memory-usage 1.00 MB: below the 64MiB the pipeline needs at least",
        ),
        (
            &["save", "a", "b", "--quant-type", "fp4"],
            "--quant-type: only with --save-method merged_4bit",
        ),
        (
            &["save", "a", "b", "--save-method", "lora", "--blocksize", "128"],
            "--blocksize: only with --save-method merged_4bit",
        ),
        (
            &["save", "a", "b", "--no-double-quant"],
            "--no-double-quant: only with --save-method merged_4bit",
        ),
        (
            &["save", "a", "b", "--save-method", "merged_4bit", "--blocksize", "48"],
            "--blocksize 48: expected a power of two",
        ),
        (&["frobnicate"], "unrecognized subcommand 'frobnicate'"),
    ];
    for (args, needle) in cases {
        let err = LoraweldCommand::new(*args).fails_with(2);
        crate::util::assert_one_line_error(&err, needle);
    }
}

/// `merged_4bit_forced` is Unsloth's name for `merged_4bit` and is taken as such.
#[test]
fn unslots_forced_name_is_merged_4bit() {
    let w = Workdir::new();
    let out = w.join("m4");
    let r = LoraweldCommand::save([
        fixtures().join("lora_on_nf4").as_os_str(),
        out.as_os_str(),
        "--save-method".as_ref(),
        "merged_4bit_forced".as_ref(),
        "--dry-run".as_ref(),
        "--json".as_ref(),
    ])
    .ok();
    let v: serde_json::Value = serde_json::from_str(&r).unwrap();
    assert_eq!(v["save_method"], "merged_4bit");
}

/// A file where a model directory is expected says so.
#[test]
fn a_config_file_as_base_says_a_directory_is_expected() {
    let w = Workdir::new();
    let cfg = fixtures().join("base_bf16/config.json");
    let err = LoraweldCommand::save([
        fixtures().join("lora").as_os_str(),
        w.join("o").as_os_str(),
        "--base".as_ref(),
        cfg.as_os_str(),
    ])
    .fails_with(2);
    crate::util::assert_one_line_error(&err, "config.json: is a file; --base expects a model directory");
    assert!(err.contains("did you mean"), "{err}");
}

/// The exit codes mean the same in `--help` and in the README.
#[test]
fn exit_codes_agree_between_help_and_readme() {
    let help = LoraweldCommand::new(["--help"]).ok();
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let rows: Vec<(String, String)> = help
        .lines()
        .skip_while(|l| !l.starts_with("Exit codes:"))
        .skip(1)
        .map_while(|l| {
            let t = l.trim();
            let (code, what) = t.split_once("  ")?;
            code.parse::<u8>().ok()?;
            Some((code.to_string(), what.trim().to_string()))
        })
        .collect();
    assert_eq!(rows.len(), 4, "{help}");
    for (code, what) in rows {
        let row = format!("| {code} | {what} |");
        assert!(readme.contains(&row), "README lacks `{row}`");
    }
}

/// Completions offer the allowed values of the enumerated flags, not file names.
#[test]
fn completions_offer_the_allowed_values() {
    let bash = LoraweldCommand::new(["completions", "bash"]).ok();
    for (flag, values) in [
        ("--save-method", "lora merged_16bit merged_4bit"),
        ("--device", "auto cpu cuda"),
        ("--dtype", "bf16 fp16 f32"),
        ("--padding-side", "left right keep"),
        ("--shard-order", "natural module"),
        ("--quant-type", "nf4 fp4"),
    ] {
        let at = bash
            .find(&format!("{flag})"))
            .unwrap_or_else(|| panic!("no case for {flag}"));
        let case = &bash[at..at + 200.min(bash.len() - at)];
        assert!(case.contains(values), "{flag}: {case}");
        assert!(
            !case.lines().nth(1).unwrap_or("").contains("compgen -f"),
            "{flag} completes file names: {case}"
        );
    }
    let short = LoraweldCommand::new(["save", "-h"]).ok();
    for m in ["lora", "merged_16bit", "merged_4bit"] {
        assert!(short.contains(m), "save -h lists {m}: {short}");
    }
}
