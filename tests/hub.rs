//! The Hub, end to end against the in-process mock Hub (`examples/mock-hub.rs`, which
//! `scripts/hub-python-check.sh` proves against the real `huggingface_hub` client): push a merged
//! fixture and download it back by repo id, resume a killed push, pull requests and branches,
//! offline mode, and errors that never show the token.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::{assert_one_line_error, fixtures, Workdir};

#[path = "../examples/mock-hub.rs"]
mod mock_hub;

use mock_hub::{Config, MockHub};

const TOKEN: &str = "hf_test_secret_token";

/// A mock Hub whose multipart threshold is 1 MB, so the ~1.8 MB fixture shards go multipart and
/// smaller files go through one PUT.
fn hub() -> MockHub {
    MockHub::start(
        0,
        Config {
            chunk_size: 1_000_000,
            ..Config::default()
        },
    )
    .expect("start the mock hub")
}

/// `loraweld ARGS` with the Hub environment pointed at `hub` and a private HF_HOME.
fn loraweld(hub: &MockHub, home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loraweld"));
    c.args(args)
        .env("HF_ENDPOINT", &hub.url)
        .env("HF_HOME", home)
        .env("HF_TOKEN", TOKEN)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .env_remove("HF_TOKEN_PATH");
    c
}

fn run(mut c: Command) -> Output {
    let o = c.output().expect("run loraweld");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains(TOKEN), "the token was printed:\n{stderr}");
    o
}

fn ok(c: Command) -> String {
    let o = run(c);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "expected success, got {:?}\n{err}", o.status.code());
    err
}

/// Every file of a directory with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Merges the bf16 fixture into `out` with the shard layout of `ref_merged_16bit`.
fn save_args(out: &Path) -> Vec<String> {
    vec![
        "save".into(),
        fixtures().join("lora").display().to_string(),
        out.display().to_string(),
        "--max-shard-size".into(),
        "2MB".into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn push_a_merge_then_download_it_by_repo_id_byte_for_byte() {
    let w = Workdir::new();
    let hub = hub();
    let home = w.join("hf");
    let out = w.join("merged");
    let mut args = save_args(&out);
    args.extend(
        [
            "--push-to-hub",
            "mock-user/merged",
            "--tags",
            "t1,t2",
            "--commit-message",
            "first",
        ]
        .map(String::from),
    );
    let err = ok(loraweld(&hub, &home, &strs(&args)));
    assert!(err.contains("pushed") && err.contains("as mock-user"), "{err}");
    assert!(err.contains(&format!("{}/mock-user/merged/commit/", hub.url)), "{err}");

    // What landed: every file but the manifest; shards through LFS (multipart: 3 shards > 1 MB).
    let s = hub.stats();
    assert_eq!(s.objects_stored, 3, "{s:?}");
    assert!(s.part_puts >= 6 && s.completions == 3 && s.verifies == 3, "{s:?}");
    assert_eq!(s.puts_with_authorization, 0, "the token went to a presigned URL");
    let files = hub.files("mock-user/merged", "main").unwrap();
    let local = tree(&out);
    let mut want: Vec<String> = local
        .keys()
        .filter(|k| *k != "loraweld-manifest.json")
        .cloned()
        .collect();
    want.push(".gitattributes".into());
    want.sort();
    assert_eq!(files.keys().cloned().collect::<Vec<_>>(), want);
    assert_eq!(hub.commit_message("mock-user/merged", "main").unwrap().0, "first");
    let card = String::from_utf8(local["README.md"].clone()).unwrap();
    assert!(card.contains("- loraweld\n- t1\n- t2\n---\n"), "{card}");

    // Download it back by repo id into the HF cache: the same bytes as what was pushed, and the
    // shards equal PEFT's.
    let cfg = loraweld::hub::HubConfig {
        endpoint: hub.url.clone(),
        cache_dir: home.join("hub"),
        token: loraweld::hub::Token::new(TOKEN),
        offline: false,
        progress: false,
        tries: 5,
    };
    let repo = loraweld::hub::RepoRef::parse("mock-user/merged").unwrap();
    let snap = loraweld::hub::fetch(&cfg, &repo, loraweld::hub::Need::Base).unwrap();
    assert!(
        snap.starts_with(home.join("hub/models--mock-user--merged/snapshots")),
        "{}",
        snap.display()
    );
    for (name, bytes) in tree(&snap) {
        assert_eq!(&bytes, &local[&name], "{name} differs after the round trip");
    }
    for (name, bytes) in tree(&fixtures().join("ref_merged_16bit")) {
        if name.ends_with(".safetensors") {
            assert_eq!(
                std::fs::read(snap.join(&name)).unwrap(),
                bytes,
                "{name} differs from PEFT's"
            );
        }
    }
    // The Python cache layout: LFS blobs named by sha256, refs/main = the commit.
    let sha = std::fs::read_to_string(home.join("hub/models--mock-user--merged/refs/main")).unwrap();
    assert_eq!(snap.file_name().unwrap().to_string_lossy(), sha);
    let blob = std::fs::canonicalize(snap.join("model-00001-of-00003.safetensors")).unwrap();
    let (oid, _) = sha256(&blob);
    assert_eq!(blob.file_name().unwrap().to_string_lossy(), oid);

    // A second push of the same directory sends nothing and makes no commit.
    let commits = hub.stats().commits;
    let err = ok(loraweld(
        &hub,
        &home,
        &["push", out.to_str().unwrap(), "mock-user/merged", "--tags", "t1,t2"],
    ));
    assert!(err.contains("0 file(s) committed"), "{err}");
    assert_eq!(hub.stats().objects_stored, 3);
    assert_eq!(hub.stats().commits, commits);
}

fn sha256(p: &Path) -> (String, u64) {
    use sha2::Digest;
    let b = std::fs::read(p).unwrap();
    (
        sha2::Sha256::digest(&b).iter().map(|x| format!("{x:02x}")).collect(),
        b.len() as u64,
    )
}

#[test]
fn a_killed_push_resumes_sending_only_the_missing_objects() {
    let w = Workdir::new();
    let hub = MockHub::start(0, Config::default()).unwrap(); // 8 MB chunks: one PUT per shard
    let home = w.join("hf");
    let out = w.join("merged");
    ok(loraweld(&hub, &home, &strs(&save_args(&out))));

    hub.configure(|c| c.put_delay_ms = 2000); // wide margins: CI runs tests side by side on 2 cores
    let mut child = loraweld(&hub, &home, &["push", out.to_str().unwrap(), "mock-user/resume"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while hub.stats().objects_stored < 1 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no upload happened");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(2500)); // let an in-flight PUT land, as S3 would
    let before = hub.stats();
    assert!(before.objects_stored < 3, "the kill came too late: {before:?}");
    assert_eq!(before.commits, 0, "nothing may be committed by a killed push");
    assert!(
        hub.files("mock-user/resume", "main").unwrap().len() == 1,
        "only .gitattributes"
    );

    hub.configure(|c| c.put_delay_ms = 0);
    let err = ok(loraweld(
        &hub,
        &home,
        &["push", out.to_str().unwrap(), "mock-user/resume"],
    ));
    let after = hub.stats();
    let missing = 3 - before.objects_stored;
    assert_eq!(
        after.puts - before.puts,
        missing,
        "only the missing objects are sent: {after:?}"
    );
    assert_eq!(after.objects_stored, 3);
    assert!(err.contains(&format!("{missing} LFS object(s) sent")), "{err}");
    let files = hub.files("mock-user/resume", "main").unwrap();
    for (name, bytes) in tree(&out) {
        if name != "loraweld-manifest.json" {
            assert_eq!(files.get(&name), Some(&(bytes.len() as u64)), "{name}");
        }
    }
}

#[test]
fn pull_request_on_a_branch_of_a_private_repo() {
    let w = Workdir::new();
    let hub = hub();
    let home = w.join("hf");
    let adapter = fixtures().join("lora");
    let args = [
        "push",
        adapter.to_str().unwrap(),
        "mock-org/adapter",
        "--private",
        "--revision",
        "dev",
        "--create-pr",
        "--commit-message",
        "add adapter",
        "--commit-description",
        "from the test",
    ];
    let err = ok(loraweld(&hub, &home, &args));
    assert!(
        err.contains(&format!("{}/mock-org/adapter/discussions/1", hub.url)),
        "{err}"
    );
    assert_eq!(hub.is_private("mock-org/adapter"), Some(true));
    let pr = hub.files("mock-org/adapter", "refs/pr/1").unwrap();
    assert!(
        pr.contains_key("adapter_model.safetensors") && pr.contains_key("README.md"),
        "{pr:?}"
    );
    assert_eq!(
        hub.files("mock-org/adapter", "dev").unwrap().len(),
        1,
        "the branch itself is untouched"
    );
    assert_eq!(
        hub.commit_message("mock-org/adapter", "refs/pr/1").unwrap(),
        ("add adapter".into(), "from the test".into())
    );

    // The adapter, read back by repo id and revision, saves as `lora` with the same weights.
    let out = w.join("lora-out");
    ok(loraweld(
        &hub,
        &home,
        &[
            "save",
            "mock-org/adapter@refs/pr/1",
            out.to_str().unwrap(),
            "--save-method",
            "lora",
        ],
    ));
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(adapter.join("adapter_model.safetensors")).unwrap()
    );
}

#[test]
fn offline_mode_uses_the_cache_and_names_what_is_missing() {
    let w = Workdir::new();
    let hub = hub();
    let home = w.join("hf");
    let lora = fixtures().join("lora");
    let base = fixtures().join("base_bf16");
    ok(loraweld(
        &hub,
        &home,
        &["push", lora.to_str().unwrap(), "mock-user/lora"],
    ));
    ok(loraweld(
        &hub,
        &home,
        &["push", base.to_str().unwrap(), "mock-user/base"],
    ));
    let online = w.join("online");
    let args = |out: &PathBuf| {
        vec![
            "save".to_string(),
            "mock-user/lora".into(),
            out.display().to_string(),
            "--base".into(),
            "mock-user/base".into(),
            "--max-shard-size".into(),
            "2MB".into(),
        ]
    };
    ok(loraweld(&hub, &home, &strs(&args(&online))));
    let reference = fixtures().join("ref_merged_16bit");
    for (name, bytes) in tree(&reference) {
        if name.ends_with(".safetensors") {
            assert_eq!(std::fs::read(online.join(&name)).unwrap(), bytes, "{name}");
        }
    }

    // Offline, with the server gone: the same save works from the cache alone.
    let url = hub.url.clone();
    drop(hub);
    let dead = MockHub::start(0, Config::default()).unwrap();
    let offline = w.join("offline");
    let mut c = loraweld(&dead, &home, &strs(&args(&offline)));
    c.env("HF_HUB_OFFLINE", "1").env("HF_ENDPOINT", &url);
    ok(c);
    assert_eq!(
        tree(&offline)["model-00001-of-00003.safetensors"],
        tree(&online)["model-00001-of-00003.safetensors"]
    );

    // A repo that was never fetched: exit 2, one line naming what is missing.
    let mut c = loraweld(
        &dead,
        &home,
        &["save", "mock-user/never", w.join("x").to_str().unwrap()],
    );
    c.env("HF_HUB_OFFLINE", "1");
    let o = run(c);
    assert_eq!(o.status.code(), Some(2));
    assert_one_line_error(&String::from_utf8_lossy(&o.stderr), "`refs/main` is not in the cache");
    assert_eq!(
        dead.stats().injected_failures + dead.stats().batches + dead.stats().commits,
        0
    );
}

#[test]
fn hub_errors_are_one_line_and_transient_ones_are_retried() {
    let w = Workdir::new();
    let hub = hub();
    let home = w.join("hf");
    let lora = fixtures().join("lora");

    // No rights on the namespace: the Hub's 403, exit 2, one line, no token.
    let o = run(loraweld(
        &hub,
        &home,
        &["push", lora.to_str().unwrap(), "someone-else/x"],
    ));
    assert_eq!(o.status.code(), Some(2));
    assert_one_line_error(
        &String::from_utf8_lossy(&o.stderr),
        "hub repo `someone-else/x`: create repo: HTTP 403",
    );

    // A bad token: 401 from whoami, before anything is created.
    let mut c = loraweld(&hub, &home, &["push", lora.to_str().unwrap(), "mock-user/x"]);
    c.env("HF_TOKEN", "not-a-token");
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_one_line_error(
        &String::from_utf8_lossy(&o.stderr),
        "whoami: HTTP 401: Invalid username or password.",
    );
    assert!(hub.is_private("mock-user/x").is_none());

    // No token at all.
    let mut c = loraweld(&hub, &home, &["push", lora.to_str().unwrap(), "mock-user/x"]);
    c.env_remove("HF_TOKEN");
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_one_line_error(&String::from_utf8_lossy(&o.stderr), "pushing needs a token");

    // A 503 on the commit is retried (after 1 s), and the push succeeds.
    hub.configure(|c| c.fail_next.push(("/api/models/mock-user/y/commit/".into(), 503, 1)));
    ok(loraweld(&hub, &home, &["push", lora.to_str().unwrap(), "mock-user/y"]));
    assert_eq!(hub.stats().injected_failures, 1);
    assert!(hub
        .files("mock-user/y", "main")
        .unwrap()
        .contains_key("adapter_model.safetensors"));

    // Push flags without --push-to-hub are a usage error.
    let o = run(loraweld(
        &hub,
        &home,
        &[
            "save",
            lora.to_str().unwrap(),
            w.join("o").to_str().unwrap(),
            "--private",
        ],
    ));
    assert_eq!(o.status.code(), Some(2));
    assert_one_line_error(
        &String::from_utf8_lossy(&o.stderr),
        "--private: only with --push-to-hub",
    );
}
