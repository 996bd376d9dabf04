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
        progress: None,
        tries: 5,
    };
    let repo = loraweld::hub::RepoRef::parse("mock-user/merged").unwrap();
    let snap = loraweld::hub::fetch(&cfg, &repo, loraweld::hub::Need::Base(None)).unwrap();
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

/// The snapshot `refs/main` of a cached repo points at.
fn snapshot(home: &Path, id: &str) -> PathBuf {
    let dir = home.join("hub").join(format!("models--{}", id.replace('/', "--")));
    let sha = std::fs::read_to_string(dir.join("refs/main")).unwrap();
    dir.join("snapshots").join(sha.trim())
}

#[test]
fn downloads_send_the_token_to_the_hub_only_and_resume() {
    let w = Workdir::new();
    let hub = hub();
    let home = w.join("hf");
    let lora = fixtures().join("lora");
    ok(loraweld(
        &hub,
        &home,
        &["push", lora.to_str().unwrap(), "mock-user/lora"],
    ));

    // Fetch the adapter by repo id with HF_TOKEN set: the Hub's resolve gets the token, the
    // storage origin its LFS blob redirects to gets none.
    let before = hub.stats();
    let out = w.join("lora-out");
    ok(loraweld(
        &hub,
        &home,
        &["save", "mock-user/lora", out.to_str().unwrap(), "--save-method", "lora"],
    ));
    let s = hub.stats();
    let resolves = s.resolve_gets - before.resolve_gets;
    assert!(resolves >= 3, "config, card, weights: {s:?}");
    assert_eq!(
        s.resolve_gets_with_token - before.resolve_gets_with_token,
        resolves,
        "every Hub resolve carries the token"
    );
    assert!(s.blob_gets > before.blob_gets, "the LFS file came from storage: {s:?}");
    assert_eq!(
        s.blob_gets_with_authorization, 0,
        "the token went to the storage origin"
    );
    // Every request (pushes and downloads) says who we are.
    let ua = format!("loraweld/{}; rust/ureq", env!("CARGO_PKG_VERSION"));
    assert_eq!(s.user_agents, vec![ua], "{:?}", s.user_agents);

    // The cache holds what was pushed, byte for byte, in Python's layout.
    let snap = snapshot(&home, "mock-user/lora");
    let pushed_card = loraweld::hub::card::card_for(&lora, &[]).unwrap();
    assert_eq!(std::fs::read_to_string(snap.join("README.md")).unwrap(), pushed_card);
    for name in ["adapter_config.json", "adapter_model.safetensors"] {
        assert_eq!(
            std::fs::read(snap.join(name)).unwrap(),
            std::fs::read(lora.join(name)).unwrap(),
            "{name}"
        );
    }
    let weights = snap.join("adapter_model.safetensors");
    let (oid, size) = sha256(&lora.join("adapter_model.safetensors"));
    assert_eq!(
        std::fs::read_link(&weights).unwrap(),
        PathBuf::from(format!("../../blobs/{oid}")),
        "a relative link to the blob named by its sha256"
    );
    let blobs = home.join("hub/models--mock-user--lora/blobs");
    let config_blob = std::fs::read_link(snap.join("adapter_config.json")).unwrap();
    let config = std::fs::read(lora.join("adapter_config.json")).unwrap();
    assert_eq!(
        config_blob.file_name().unwrap().to_string_lossy(),
        git_blob_oid(&config),
        "a regular file's blob is named by its git blob id (its ETag)"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".incomplete"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // An interrupted download resumes: half the blob left in `.incomplete`, the rest asked for
    // with Range, and the result is the same bytes.
    let bytes = std::fs::read(lora.join("adapter_model.safetensors")).unwrap();
    std::fs::remove_file(&weights).unwrap();
    std::fs::remove_file(blobs.join(&oid)).unwrap();
    let half = (size / 2) as usize;
    std::fs::write(blobs.join(format!("{oid}.incomplete")), &bytes[..half]).unwrap();
    let cfg = loraweld::hub::HubConfig {
        endpoint: hub.url.clone(),
        cache_dir: home.join("hub"),
        token: loraweld::hub::Token::new(TOKEN),
        offline: false,
        progress: None,
        tries: 2,
    };
    let repo = loraweld::hub::RepoRef::parse("mock-user/lora").unwrap();
    let ranged = hub.stats().blob_gets_with_range;
    let got = loraweld::hub::fetch(&cfg, &repo, loraweld::hub::Need::Adapter).unwrap();
    assert_eq!(got, snap);
    assert_eq!(std::fs::read(&weights).unwrap(), bytes);
    assert_eq!(hub.stats().blob_gets_with_range, ranged + 1);
    assert!(!blobs.join(format!("{oid}.incomplete")).exists());
    assert_eq!(hub.stats().blob_gets_with_authorization, 0);
}

fn git_blob_oid(content: &[u8]) -> String {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(content);
    h.finalize().iter().map(|x| format!("{x:02x}")).collect()
}

/// Copies the bf16 fixture base's weights into `dir` under the names `save_pretrained(variant=v)`
/// gives them, and its configs and tokenizer as they are.
fn variant_base(dir: &Path, v: &str, with_default: bool) {
    let base = fixtures().join("base_bf16");
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in tree(&base) {
        let weights = name.starts_with("model");
        if !weights || with_default {
            std::fs::write(dir.join(&name), &bytes).unwrap();
        }
        if let Some(rest) = name.strip_prefix("model-") {
            std::fs::write(dir.join(format!("model.{v}-{rest}")), &bytes).unwrap();
        }
    }
    let index = std::fs::read_to_string(base.join("model.safetensors.index.json")).unwrap();
    let mut idx: serde_json::Value = serde_json::from_str(&index).unwrap();
    for f in idx["weight_map"].as_object_mut().unwrap().values_mut() {
        let name = f.as_str().unwrap().replacen("model-", &format!("model.{v}-"), 1);
        *f = serde_json::Value::String(name);
    }
    std::fs::write(
        dir.join(format!("model.safetensors.index.{v}.json")),
        serde_json::to_string_pretty(&idx).unwrap(),
    )
    .unwrap();
}

#[test]
fn a_variant_base_is_fetched_by_its_own_file_names() {
    let w = Workdir::new();
    let hub = hub();
    let home = w.join("hf");
    let lora = fixtures().join("lora");
    // The repo holds the default weights and the `v2` variant; the local copy only the variant.
    let both = w.join("both");
    variant_base(&both, "v2", true);
    let only = w.join("only");
    variant_base(&only, "v2", false);
    ok(loraweld(&hub, &home, &["push", both.to_str().unwrap(), "mock-user/x"]));
    let remote = hub.files("mock-user/x", "main").unwrap();
    assert!(
        remote.contains_key("model-00001-of-00003.safetensors")
            && remote.contains_key("model.v2-00001-of-00003.safetensors")
    );

    let save = |base: &Path, out: &Path, variant: &str| {
        vec![
            "save".to_string(),
            lora.display().to_string(),
            out.display().to_string(),
            "--base".into(),
            base.display().to_string(),
            "--variant".into(),
            variant.into(),
            "--max-shard-size".into(),
            "2MB".into(),
        ]
    };
    let from_hub = w.join("from-hub");
    ok(loraweld(
        &hub,
        &home,
        &strs(&save(Path::new("mock-user/x"), &from_hub, "v2")),
    ));

    // Only the variant's weights were fetched.
    let snap = snapshot(&home, "mock-user/x");
    let mut fetched: Vec<String> = std::fs::read_dir(&snap)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("model"))
        .collect();
    fetched.sort();
    assert_eq!(
        fetched,
        vec![
            "model.safetensors.index.v2.json",
            "model.v2-00001-of-00003.safetensors",
            "model.v2-00002-of-00003.safetensors",
            "model.v2-00003-of-00003.safetensors",
        ]
    );

    // The same merge as from the local variant directory, and PEFT's bytes.
    let local = w.join("local");
    ok(loraweld(&hub, &home, &strs(&save(&only, &local, "v2"))));
    let (a, b) = (tree(&from_hub), tree(&local));
    let weights: Vec<&String> = a.keys().filter(|k| k.starts_with("model")).collect();
    assert_eq!(weights.len(), 4, "{weights:?}");
    for name in weights {
        assert_eq!(a[name], b[name], "{name}");
    }
    for i in 1..=3 {
        let name = format!("model-0000{i}-of-00003.safetensors");
        assert_eq!(
            a[&format!("model.v2-0000{i}-of-00003.safetensors")],
            std::fs::read(fixtures().join("ref_merged_16bit").join(&name)).unwrap(),
            "{name}"
        );
    }

    // Offline, the variant's files are what is checked: present for v2, missing for v3.
    let offline = w.join("offline");
    let mut c = loraweld(&hub, &home, &strs(&save(Path::new("mock-user/x"), &offline, "v2")));
    c.env("HF_HUB_OFFLINE", "1");
    ok(c);
    assert_eq!(
        tree(&offline)["model.v2-00001-of-00003.safetensors"],
        a["model.v2-00001-of-00003.safetensors"]
    );
    let mut c = loraweld(&hub, &home, &strs(&save(Path::new("mock-user/x"), &w.join("v3"), "v3")));
    c.env("HF_HUB_OFFLINE", "1");
    let o = run(c);
    assert_eq!(o.status.code(), Some(2));
    assert_one_line_error(
        &String::from_utf8_lossy(&o.stderr),
        "`model.v3.safetensors` is not in the cache",
    );
}

/// `--save-method gguf --push-to-hub` uploads the GGUF files (LFS) with the Modelfile and the
/// card in one commit, as Unsloth's `push_to_hub_gguf` does; what lands is what was written.
#[test]
fn push_gguf_files() {
    let w = Workdir::new();
    let hub = hub();
    let home = w.join("hf");
    let out = w.join("gguf");
    let set = fixtures().parent().unwrap().join("gguf_models/llama_spm");
    let err = ok(loraweld(
        &hub,
        &home,
        &[
            "save",
            set.join("lora").to_str().unwrap(),
            out.to_str().unwrap(),
            "--base",
            set.join("base_bf16").to_str().unwrap(),
            "--save-method",
            "gguf",
            "--quantization-method",
            "q4_k_m,q8_0",
            "--model-name",
            "loraweld-test",
            "--push-to-hub",
            "mock-user/gguf",
        ],
    ));
    assert!(err.contains("pushed"), "{err}");
    let files = hub.files("mock-user/gguf", "main").unwrap();
    assert_eq!(
        files.keys().cloned().collect::<Vec<_>>(),
        [
            ".gitattributes",
            "Modelfile",
            "README.md",
            "loraweld-test.Q4_K_M.gguf",
            "loraweld-test.Q8_0.gguf"
        ]
    );
    assert_eq!(hub.stats().objects_stored, 2, "the two GGUF files went through LFS");
    assert_eq!(hub.stats().commits, 1);
    // Every file whole (the LFS uploads were verified against the sha256 the packer computed).
    for (name, bytes) in tree(&out) {
        if name != "loraweld-manifest.json" {
            assert_eq!(files[&name], bytes.len() as u64, "{name}");
        }
    }
    assert_eq!(hub.stats().verifies, 2);
}
