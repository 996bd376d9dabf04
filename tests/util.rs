//! Test harness: a temp work dir, a command wrapper that dumps everything on failure, byte
//! comparisons that name the first differing tensor, and the two shapes most tests take: a save
//! compared with a reference folder ([`SaveCase::run_and_compare`]) and a refused input
//! ([`SaveCase::assert_refused`]).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The fixtures folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama")
}

/// A unique temporary directory for one test.
pub struct Workdir {
    dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Self {
        Workdir {
            dir: tempfile::Builder::new().prefix("loraweld-test").tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Names in the work dir (to prove nothing half-written is left behind).
    pub fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    /// Copies a fixture directory into the work dir (writable).
    pub fn copy_fixture(&self, name: &str) -> PathBuf {
        let to = self.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(fixtures().join(name)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        to
    }
}

/// A `loraweld` invocation.
pub struct LoraweldCommand {
    cmd: Command,
    args: Vec<String>,
}

impl LoraweldCommand {
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_loraweld"));
        let mut shown = Vec::new();
        for a in args {
            shown.push(a.as_ref().to_string_lossy().to_string());
            cmd.arg(a);
        }
        LoraweldCommand { cmd, args: shown }
    }

    fn describe(&self, o: &Output) -> String {
        format!(
            "loraweld {}\nstatus: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.args.join(" "),
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// Runs in `dir`.
    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    /// Sets an environment variable for the run.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.cmd.env(k, v);
        self
    }

    /// `loraweld save ARGS…`.
    pub fn save<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut v: Vec<std::ffi::OsString> = vec!["save".into()];
        v.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        Self::new(v)
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(mut self) -> String {
        let o = self.cmd.output().unwrap();
        assert!(o.status.success(), "expected success\n{}", self.describe(&o));
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs and asserts the exit code; returns stderr.
    pub fn fails_with(mut self, code: i32) -> String {
        let o = self.cmd.output().unwrap();
        assert_eq!(o.status.code(), Some(code), "\n{}", self.describe(&o));
        String::from_utf8(o.stderr).unwrap()
    }
}

/// Asserts a failure message is one line of the documented shape and mentions `needle`.
pub fn assert_one_line_error(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one line, got:\n{stderr}");
    assert!(lines[0].starts_with("loraweld: error: "), "{stderr}");
    assert!(lines[0].contains(needle), "expected `{needle}` in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Asserts a failure message is a summary line of the documented shape mentioning `needle`,
/// then at most five items, one per line, and a "… and N more" line when there are more.
pub fn assert_listed_error(stderr: &str, needle: &str) -> Vec<String> {
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines[0].starts_with("loraweld: error: "), "{stderr}");
    assert!(lines[0].contains(needle), "expected `{needle}` in: {stderr}");
    assert!(lines[0].ends_with(':'), "a summary introducing a list: {stderr}");
    let items: Vec<String> = lines[1..]
        .iter()
        .filter(|l| !l.starts_with("  … and "))
        .map(|l| l.strip_prefix("  ").expect("list items are indented").to_string())
        .collect();
    assert!(!items.is_empty() && items.len() <= 5, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    items
}

/// Compares two safetensors files; on mismatch names the first differing tensor and byte.
pub fn tensors_diff(got: &Path, want: &Path) -> Option<String> {
    let g = std::fs::read(got).unwrap();
    let w = std::fs::read(want).unwrap();
    if g == w {
        return None;
    }
    let gs = safetensors::SafeTensors::deserialize(&g).expect("our output must parse with the safetensors crate");
    let ws = safetensors::SafeTensors::deserialize(&w).unwrap();
    let mut names: Vec<String> = ws.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let mut gnames: Vec<String> = gs.names().into_iter().map(|s| s.to_string()).collect();
    gnames.sort();
    if names != gnames {
        return Some(format!(
            "{}: tensor names differ: got {gnames:?}, want {names:?}",
            got.display()
        ));
    }
    for n in &names {
        let (a, b) = (gs.tensor(n).unwrap(), ws.tensor(n).unwrap());
        if a.dtype() != b.dtype() || a.shape() != b.shape() {
            return Some(format!(
                "`{n}`: got {:?}{:?}, want {:?}{:?}",
                a.dtype(),
                a.shape(),
                b.dtype(),
                b.shape()
            ));
        }
        if let Some(i) = a.data().iter().zip(b.data()).position(|(x, y)| x != y) {
            return Some(format!("`{n}`: first differing byte at offset {i}"));
        }
    }
    Some(format!(
        "{}: same tensors but the file bytes differ (header layout)",
        got.display()
    ))
}

/// Sorted names of the `*.safetensors` files in `dir`.
pub fn weight_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    v.sort();
    v
}

/// Compares the weights of two model folders: the same `*.safetensors` file names, each file
/// byte-identical. `Err` names the first differing file and tensor (see [`tensors_diff`]);
/// `Ok` counts the files.
pub fn weights_diff(got: &Path, want: &Path) -> Result<usize, String> {
    let names = weight_files(want);
    let got_names = weight_files(got);
    if got_names != names {
        return Err(format!(
            "weight files differ: {} has {got_names:?}, {} has {names:?}",
            got.display(),
            want.display()
        ));
    }
    for n in &names {
        if let Some(d) = tensors_diff(&got.join(n), &want.join(n)) {
            return Err(d);
        }
    }
    Ok(names.len())
}

/// Asserts `out` is `reference`: the same weight files, byte for byte ([`weights_diff`]; the
/// reference must have some), and each of `files` identical in both (and present in both).
pub fn assert_same_output(out: &Path, reference: &Path, files: &[&str]) {
    match weights_diff(out, reference) {
        Ok(0) => panic!("{}: reference has no weights", reference.display()),
        Ok(_) => {}
        Err(d) => panic!("{d}"),
    }
    for f in files {
        let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(read(out.join(f)), read(reference.join(f)), "{f} differs");
    }
}

/// The files besides the weights that transformers writes for a sharded merged model.
pub const SHARDED_MODEL_FILES: &[&str] = &["model.safetensors.index.json", "config.json", "generation_config.json"];

/// Tensor name → (dtype, shape, bytes) of a model directory, whatever its sharding.
pub fn all_tensors(dir: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let mut m = BTreeMap::new();
    for n in weight_files(dir) {
        let bytes = std::fs::read(dir.join(n)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (n, t) in st.tensors() {
            m.insert(n, (format!("{:?}", t.dtype()), t.shape().to_vec(), t.data().to_vec()));
        }
    }
    m
}

/// One `loraweld save ADAPTER OUT [--base BASE] ARGS…`: run into a fresh work dir and compared
/// with a reference folder, or refused.
pub struct SaveCase {
    adapter: PathBuf,
    base: Option<PathBuf>,
    out: Option<PathBuf>,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
}

/// A finished save: its work dir (removed on drop), OUT inside it, and what it printed.
pub struct Saved {
    pub dir: Workdir,
    pub out: PathBuf,
    pub stdout: String,
}

/// Keeps `saved.out` from being moved out of a temporary (`case.run().out` would remove the
/// work dir, and OUT with it, at the end of the statement): a type with `Drop` cannot be
/// taken apart.
impl Drop for Saved {
    fn drop(&mut self) {}
}

impl SaveCase {
    pub fn new(adapter: impl Into<PathBuf>) -> Self {
        SaveCase {
            adapter: adapter.into(),
            base: None,
            out: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// `--base BASE`.
    pub fn base(mut self, base: impl Into<PathBuf>) -> Self {
        self.base = Some(base.into());
        self
    }

    /// OUT for [`Self::assert_refused`] (`out` in the work dir unless set).
    pub fn out(mut self, out: impl Into<PathBuf>) -> Self {
        self.out = Some(out.into());
        self
    }

    /// More arguments after ADAPTER OUT.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable for the run.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    fn command(&self, out: &Path) -> LoraweldCommand {
        let mut v: Vec<OsString> = vec![self.adapter.clone().into(), out.into()];
        if let Some(b) = &self.base {
            v.extend(["--base".into(), b.into()]);
        }
        v.extend(self.args.iter().cloned());
        let mut c = LoraweldCommand::save(v);
        for (k, val) in &self.env {
            c = c.env(k, val);
        }
        c
    }

    /// Runs into `merged` in a fresh work dir and asserts success.
    pub fn run(self) -> Saved {
        let dir = Workdir::new();
        let out = dir.join("merged");
        let stdout = self.command(&out).ok();
        Saved { dir, out, stdout }
    }

    /// [`Self::run`], then asserts OUT is `reference`: every weight file byte for byte, no
    /// other weight file, and each of `files` the same (see [`assert_same_output`]).
    pub fn run_and_compare(self, reference: &Path, files: &[&str]) -> Saved {
        let saved = self.run();
        assert_same_output(&saved.out, reference, files);
        saved
    }

    /// Runs in work dir `w` (which holds the case's inputs), expecting a refusal: exit code 2,
    /// no panic, the work dir's listing unchanged, and OUT neither created nor removed. Returns
    /// stderr for the message's own checks.
    pub fn refused(self, w: &Workdir) -> String {
        let out = self.out.clone().unwrap_or_else(|| w.join("out"));
        let (before, existed) = (w.listing(), out.exists());
        let err = self.command(&out).fails_with(2);
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(
            out.exists(),
            existed,
            "a refused run must not create (or remove) OUT\n{err}"
        );
        assert_eq!(w.listing(), before, "a refused run must leave nothing behind\n{err}");
        err
    }

    /// [`Self::refused`], with a message of one line of the documented shape that contains
    /// every one of `needles` ([`assert_one_line_error`]).
    pub fn assert_refused(self, w: &Workdir, needles: &[&str]) -> String {
        assert!(!needles.is_empty(), "say what the message must contain");
        let err = self.refused(w);
        for n in needles {
            assert_one_line_error(&err, n);
        }
        err
    }
}
