//! Crash safety: a run killed (SIGKILL) or stopped (SIGINT) at about 20 random moments, then
//! run again, gives output byte-identical to an uninterrupted run, and never leaves an `OUT`
//! that looks complete before it is.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::Workdir;

/// A bf16 "model" of 24 1-MiB weights and a rank-4 adapter on all of them.
fn make_inputs(w: &Workdir) -> (std::path::PathBuf, std::path::PathBuf) {
    let base = w.join("base");
    let ad = w.join("adapter");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::create_dir_all(&ad).unwrap();
    let (rows, cols, r) = (512usize, 1024usize, 4usize);
    let mut seed = 7u64;
    let mut rnd = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let names: Vec<String> = (0..24).map(|i| format!("model.layers.{i}.mlp.up_proj")).collect();
    let weights: Vec<Vec<u8>> = names
        .iter()
        .map(|_| {
            (0..rows * cols)
                .flat_map(|_| half::bf16::from_f32(rnd() * 0.1).to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = names
        .iter()
        .zip(&weights)
        .map(|(n, b)| {
            (
                format!("{n}.weight"),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![rows, cols], b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &base.join("model.safetensors")).unwrap();
    std::fs::write(base.join("config.json"), "{\n  \"dtype\": \"bfloat16\"\n}\n").unwrap();
    let mut lora: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for n in &names {
        let a: Vec<u8> = (0..r * cols).flat_map(|_| (rnd() * 0.2).to_le_bytes()).collect();
        let b: Vec<u8> = (0..rows * r).flat_map(|_| (rnd() * 0.2).to_le_bytes()).collect();
        lora.push((format!("base_model.model.{n}.lora_A.weight"), vec![r, cols], a));
        lora.push((format!("base_model.model.{n}.lora_B.weight"), vec![rows, r], b));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = lora
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &ad.join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        ad.join("adapter_config.json"),
        r#"{"r": 4, "lora_alpha": 8, "peft_type": "LORA"}"#,
    )
    .unwrap();
    (base, ad)
}

fn save(ad: &Path, base: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loraweld"));
    c.arg("save")
        .arg(ad)
        .arg(out)
        .arg("--base")
        .arg(base)
        .args(["--max-shard-size", "1MB", "--threads", "1"]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn weights(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "safetensors" || x == "json") && !p.ends_with("loraweld-manifest.json")
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn killed_and_interrupted_runs_resume_to_identical_bytes() {
    let w = Workdir::new();
    let (base, ad) = make_inputs(&w);
    let reference = w.join("reference");
    let t0 = Instant::now();
    assert!(save(&ad, &base, &reference).status().unwrap().success());
    let full = t0.elapsed();
    let want = weights(&reference);
    assert_eq!(want.iter().filter(|(n, _)| n.ends_with(".safetensors")).count(), 24);

    let out = w.join("out");
    let mut seed = 12345u64;
    let mut resumed_total = 0u64;
    for i in 0..20 {
        let _ = std::fs::remove_dir_all(&out);
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let delay = Duration::from_micros((seed >> 33) % (full.as_micros() as u64).max(1));
        let mut child = save(&ad, &base, &out).spawn().unwrap();
        std::thread::sleep(delay);
        let sigint = i % 4 == 3;
        send_signal(child.id(), if sigint { 2 } else { 9 });
        let status = child.wait().unwrap();
        if out.exists() {
            // Only a finished run renames its staging directory to OUT, so OUT is always whole.
            // The signal may still land after the rename, while the process reports and exits:
            // then OUT is complete although the exit status is the signal's.
            assert_eq!(
                weights(&out),
                want,
                "run {i} (exit {status:?}): OUT exists but is not complete"
            );
            continue;
        }
        if sigint {
            assert!(
                matches!(status.code(), Some(1) | None),
                "run {i}: SIGINT exit {status:?}"
            );
        }
        let o = save(&ad, &base, &out)
            .arg("--json")
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        assert!(o.status.success(), "run {i}: the re-run failed");
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        resumed_total += r["resumed_shards"].as_u64().unwrap();
        assert_eq!(weights(&out), want, "run {i}: resumed output differs");
    }
    assert!(resumed_total > 0, "no run resumed any shard: the kills came too early");
    eprintln!("20 interrupted runs, {resumed_total} shards reused, all outputs identical");
}

fn send_signal(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// A kept shard is trusted by its recorded size and mtime without being read back; one changed
/// since (same size, new mtime) is hashed, found different, and written again.
#[test]
fn kept_shards_are_trusted_only_while_unchanged() {
    let w = Workdir::new();
    let out = w.join("merged");
    let args = |json: bool| {
        let mut v: Vec<std::ffi::OsString> = vec![
            "save".into(),
            crate::util::fixtures().join("lora").into(),
            out.clone().into(),
            "--max-shard-size".into(),
            "2MB".into(),
        ];
        if json {
            v.push("--json".into());
        }
        v
    };
    crate::util::LoraweldCommand::new(args(false)).ok();
    let want = weights(&out);
    let shards: Vec<&String> = want
        .iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with("model-"))
        .collect();
    assert_eq!(shards.len(), 3);
    // Make it look like a run stopped after every shard was done, then damage one shard.
    let staging = w.join(".merged.loraweld-partial");
    std::fs::rename(&out, &staging).unwrap();
    let first = staging.join(shards[0]);
    let mut bytes = std::fs::read(&first).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&first, &bytes).unwrap();
    std::fs::remove_file(staging.join(shards[2])).unwrap();
    let r: serde_json::Value = serde_json::from_str(&crate::util::LoraweldCommand::new(args(true)).ok()).unwrap();
    assert_eq!(r["resumed_shards"], 1, "only the untouched shard is kept: {r}");
    assert_eq!(
        weights(&out),
        want,
        "the damaged and the missing shard were written again"
    );
}
