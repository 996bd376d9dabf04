//! OUT is replaced only when loraweld wrote it or it is empty: every other case is refused with
//! exit 2 and a message saying what is there, and every byte that was there before is still
//! there afterwards, `--force` or not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::util::{assert_one_line_error, fixtures, LoraweldCommand, Workdir};

/// Every file under `dir` with its bytes (symlinks as their target text).
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let t = e.file_type().unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if t.is_dir() {
                stack.push(p);
                out.insert(rel, b"<dir>".to_vec());
            } else if t.is_symlink() {
                out.insert(
                    rel,
                    std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes(),
                );
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn save(out: &Path, extra: &[&str]) -> LoraweldCommand {
    let mut args: Vec<std::ffi::OsString> = vec![fixtures().join("lora").into(), out.into()];
    args.extend(extra.iter().map(Into::into));
    LoraweldCommand::save(args)
}

/// `mine/` holding only `notes.txt`: refused with and without --force, and in a dry run; the
/// note survives every attempt.
#[test]
fn a_folder_loraweld_did_not_write_is_never_replaced() {
    let w = Workdir::new();
    let mine = w.join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), b"my notes, not a model").unwrap();
    let before = tree(w.path());
    let want = format!(
        "{}: exists and was not written by loraweld (1 file: notes.txt); choose another OUT or remove it yourself",
        mine.display()
    );
    for extra in [&[][..], &["--force"], &["--dry-run"], &["--force", "--dry-run"]] {
        let err = save(&mine, extra).fails_with(2);
        assert_one_line_error(&err, &want);
        assert_eq!(tree(w.path()), before, "{extra:?}: nothing may change");
    }
}

/// A plain file at OUT, a symlink at OUT, and a loraweld output the user added a file to.
#[test]
fn files_symlinks_and_additions_to_our_output_are_kept() {
    let w = Workdir::new();
    let file = w.join("file");
    std::fs::write(&file, b"precious").unwrap();
    let link = w.join("link");
    std::os::unix::fs::symlink(w.path(), &link).unwrap();
    let ours = w.join("merged");
    save(&ours, &[]).ok();
    std::fs::write(ours.join("eval-results.txt"), b"hours of evaluation").unwrap();
    let before = tree(w.path());
    let err = save(&file, &["--force"]).fails_with(2);
    assert_one_line_error(&err, "file: exists and is a file, not a directory; choose another OUT");
    let err = save(&link, &["--force"]).fails_with(2);
    assert_one_line_error(&err, "link: exists and is a symbolic link");
    let err = save(&ours, &["--force", "--dtype", "f32"]).fails_with(2);
    assert_one_line_error(
        &err,
        "merged: holds a loraweld save and files loraweld did not write (1 file: eval-results.txt)",
    );
    assert_eq!(tree(w.path()), before, "nothing may change");
}

/// `.`, `/`, `$HOME`, an input and a parent of an input are refused whatever they hold.
#[test]
fn places_a_save_never_replaces() {
    let w = Workdir::new();
    let cwd = w.join("cwd");
    let home = w.join("home");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(cwd.join("work.txt"), b"w").unwrap();
    std::fs::write(home.join(".bashrc"), b"h").unwrap();
    let inputs = w.join("inputs");
    std::fs::create_dir(&inputs).unwrap();
    let adapter = inputs.join("lora");
    std::fs::create_dir(&adapter).unwrap();
    for e in std::fs::read_dir(fixtures().join("lora")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), adapter.join(e.file_name())).unwrap();
    }
    let before = tree(w.path());
    let run = |out: &Path| {
        LoraweldCommand::save([
            adapter.as_path(),
            out,
            "--force".as_ref(),
            "--base".as_ref(),
            &fixtures().join("base_bf16"),
        ])
        .current_dir(&cwd)
        .env("HOME", home.to_str().unwrap())
        .fails_with(2)
    };
    assert_one_line_error(&run(Path::new(".")), ".: is the current directory or a folder above it");
    assert_one_line_error(
        &run(Path::new("..")),
        "..: is the current directory or a folder above it",
    );
    assert_one_line_error(&run(Path::new("/")), "/: is the filesystem root");
    assert_one_line_error(&run(&home), "home: is your home directory or a folder above it");
    assert_one_line_error(&run(&adapter), "output overlaps input");
    assert_one_line_error(&run(&inputs), "output overlaps input");
    assert_one_line_error(&run(w.path()), "is the current directory or a folder above it");
    assert_eq!(tree(w.path()), before, "nothing may change");
}

/// An empty folder is taken over without --force (nothing to lose); a save of other options
/// needs --force, and the dry run says so.
#[test]
fn empty_folders_and_our_own_output() {
    let w = Workdir::new();
    let out = w.join("merged");
    std::fs::create_dir(&out).unwrap();
    let plan = save(&out, &["--dry-run"]).ok();
    assert!(
        plan.contains("an empty directory: the output takes its place"),
        "{plan}"
    );
    save(&out, &[]).ok();
    assert!(out.join("model.safetensors").is_file());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("loraweld-manifest.json")).unwrap()).unwrap();
    let mut listed: Vec<String> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    present.sort();
    assert_eq!(listed, present, "the manifest names every file");

    let plan = save(&out, &["--dry-run"]).ok();
    assert!(plan.contains("up to date, a run does nothing"), "{plan}");
    let plan = save(&out, &["--dry-run", "--dtype", "f32"]).ok();
    assert!(plan.contains("refused without --force"), "{plan}");
    let plan = save(&out, &["--dry-run", "--dtype", "f32", "--force"]).ok();
    assert!(plan.contains("--force replaces it"), "{plan}");
    let before = tree(&out);
    let err = save(&out, &["--dtype", "f32"]).fails_with(2);
    assert_one_line_error(
        &err,
        "merged: holds a loraweld save of other inputs or options (use --force to replace it)",
    );
    assert_eq!(tree(&out), before);
    save(&out, &["--dtype", "f32", "--force"]).ok();
    assert_ne!(tree(&out), before, "--force replaced our own output");
    assert_eq!(w.listing(), vec!["merged"], "no staging or aside folder is left");
}

/// An up-to-date re-run's JSON carries the run that wrote OUT: its backend and stage times.
#[test]
fn up_to_date_json_carries_the_earlier_report() {
    let w = Workdir::new();
    let out = w.join("merged");
    let first: serde_json::Value = serde_json::from_str(&save(&out, &["--json"]).ok()).unwrap();
    let again: serde_json::Value = serde_json::from_str(&save(&out, &["--json"]).ok()).unwrap();
    assert_eq!(again["up_to_date"], true);
    assert_eq!(again["bytes_written"], 0);
    assert_eq!(again["backend"], first["backend"]);
    assert!(!again["backend"].as_str().unwrap().is_empty());
    assert_eq!(again["stages"], first["stages"]);
    assert!(again["stages"]["pack_s"].as_f64().unwrap() > 0.0);
    assert_eq!(again["shards"], first["shards"]);
    let sorted = |v: &serde_json::Value| {
        let mut f: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        f.sort();
        f
    };
    assert_eq!(sorted(&again["files"]), sorted(&first["files"]));
    assert!(again["earlier_seconds"].as_f64().unwrap() > 0.0);
}
