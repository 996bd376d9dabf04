//! Test harness: a temp work dir, a command wrapper that dumps everything on failure, and
//! byte comparisons that name the first differing tensor.

#![allow(dead_code)]

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

/// Asserts two safetensors files are byte-identical, naming the first differing tensor.
macro_rules! assert_bytes_eq {
    ($got:expr, $want:expr) => {
        if let Some(d) = $crate::util::tensors_diff(&$got, &$want) {
            panic!("{}", d);
        }
    };
}
