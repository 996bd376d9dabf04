//! What is at `OUT` before a save, and whether a save may replace it.
//!
//! A save replaces `OUT` as a whole (staged, then renamed into place), so it must never replace
//! what it did not write. Replaceable are: nothing, an empty directory, and a directory whose
//! manifest (written last by every finished save) names every file in it; the last only with
//! `--force`, or when it is already up to date. Anything else is refused before any work with
//! what is there, and checked again just before the rename. `.`, `/`, `$HOME`, the inputs and
//! their parents are refused whatever they hold.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::resume::MANIFEST;
use crate::error::{Error, Result};

/// What `OUT` is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// Nothing there: the save creates it.
    Absent,
    /// An empty directory: the save takes its place.
    EmptyDir,
    /// A directory loraweld wrote: its manifest names every file in it.
    Ours,
    /// Anything else; the text says what is there and what to do.
    NotOurs(String),
}

impl Existing {
    /// One line for `--dry-run`.
    pub fn describe(&self, force: bool) -> String {
        match self {
            Existing::Absent => "does not exist yet: it will be created".into(),
            Existing::EmptyDir => "an empty directory: the output takes its place".into(),
            Existing::Ours if force => "a loraweld save of other inputs or options: --force replaces it".into(),
            Existing::Ours => {
                "a loraweld save of other inputs or options: refused without --force (it would be replaced)".into()
            }
            Existing::NotOurs(why) => format!("{why}: refused"),
        }
    }
}

/// Looks at `out` without changing anything.
pub fn examine(out: &Path) -> Result<Existing> {
    let md = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Absent),
        Err(e) => return Err(Error::io(out, e)),
    };
    let foreign = |what: String| {
        Ok(Existing::NotOurs(format!(
            "{what}; choose another OUT or remove it yourself"
        )))
    };
    if md.file_type().is_symlink() {
        return foreign("exists and is a symbolic link".into());
    }
    if !md.is_dir() {
        return foreign("exists and is a file, not a directory".into());
    }
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for e in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
        let e = e.map_err(|e| Error::io(out, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if e.file_type().map_err(|err| Error::io(e.path(), err))?.is_dir() {
            dirs.push(name);
        } else {
            files.push(name);
        }
    }
    files.sort();
    dirs.sort();
    if files.is_empty() && dirs.is_empty() {
        if is_mount_point(out) {
            return Ok(Existing::NotOurs(
                "is a mount point (a save replaces OUT by renaming onto it); write into a folder inside it".into(),
            ));
        }
        return Ok(Existing::EmptyDir);
    }
    let listed = manifest_files(out);
    let Some(listed) = listed else {
        return foreign(format!(
            "exists and was not written by loraweld ({})",
            summary(&files, &dirs, files.len(), dirs.len())
        ));
    };
    let Some(listed) = listed else {
        return foreign(format!(
            "holds a manifest that does not list its files (an older loraweld, or not ours), so it is not replaced ({})",
            summary(&files, &dirs, files.len(), dirs.len())
        ));
    };
    let extra_files: Vec<String> = files.iter().filter(|f| !listed.contains(f)).cloned().collect();
    if extra_files.is_empty() && dirs.is_empty() {
        return Ok(Existing::Ours);
    }
    foreign(format!(
        "holds a loraweld save and files loraweld did not write ({})",
        summary(&extra_files, &dirs, extra_files.len(), dirs.len())
    ))
}

/// The manifest's `files` list: `None` without a readable manifest, `Some(None)` for a manifest
/// without the list.
fn manifest_files(out: &Path) -> Option<Option<Vec<String>>> {
    let text = std::fs::read_to_string(out.join(MANIFEST)).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("loraweld_version")?;
    Some(
        v.get("files")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()),
    )
}

/// `3 files, 1 folder: a.txt, b.txt, sub/, …`: counts, then the first few names.
fn summary(files: &[String], dirs: &[String], n_files: usize, n_dirs: usize) -> String {
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut counts = Vec::new();
    if n_files > 0 {
        counts.push(plural(n_files, "file", "files"));
    }
    if n_dirs > 0 {
        counts.push(plural(n_dirs, "folder", "folders"));
    }
    const SHOWN: usize = 3;
    let names: Vec<String> = dirs
        .iter()
        .map(|d| format!("{d}/"))
        .chain(files.iter().cloned())
        .collect();
    let mut shown = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        shown.push_str(", …");
    }
    format!("{}: {shown}", counts.join(", "))
}

fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = absolute(dir)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    match (std::fs::metadata(dir), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Refuses an `OUT` that a save must never replace, whatever it holds and with `--force` too:
/// the filesystem root, the current directory, the home directory or a folder above them, an
/// input, a folder above an input, or a folder inside one.
pub fn refuse_forbidden(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    let out_abs = absolute(out);
    let refuse = |why: &str| {
        Err(Error::OutNotOurs {
            out: out.to_path_buf(),
            why: format!("{why}; choose a new folder for the output, like ./merged"),
        })
    };
    if out_abs.parent().is_none() {
        return refuse("is the filesystem root, which a save never replaces");
    }
    if let Ok(cwd) = std::env::current_dir() {
        if absolute(&cwd).starts_with(&out_abs) {
            return refuse("is the current directory or a folder above it, which a save never replaces");
        }
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        if absolute(Path::new(&home)).starts_with(&out_abs) {
            return refuse("is your home directory or a folder above it, which a save never replaces");
        }
    }
    for i in inputs {
        let in_abs = absolute(i);
        if out_abs.starts_with(&in_abs) || in_abs.starts_with(&out_abs) {
            return Err(Error::OutputOverlapsInput {
                out: out.to_path_buf(),
                input: i.clone(),
            });
        }
    }
    Ok(())
}

/// Canonical path of `p`, or of its nearest existing ancestor joined with the rest (`..` and
/// `.` resolved).
pub fn absolute(p: &Path) -> PathBuf {
    let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut existing = p.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut c = existing.canonicalize().unwrap_or_else(|_| existing.to_path_buf());
    for r in rest.iter().rev() {
        c.push(r);
    }
    // A missing part followed by `..` (`new/../x`): resolve it by hand.
    let mut out = PathBuf::new();
    for comp in c.components() {
        match comp {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_ours_from_theirs() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        assert_eq!(examine(&out).unwrap(), Existing::Absent);
        std::fs::create_dir(&out).unwrap();
        assert_eq!(examine(&out).unwrap(), Existing::EmptyDir);
        std::fs::write(out.join("notes.txt"), b"mine").unwrap();
        let Existing::NotOurs(why) = examine(&out).unwrap() else {
            panic!()
        };
        assert_eq!(
            why,
            "exists and was not written by loraweld (1 file: notes.txt); choose another OUT or remove it yourself"
        );
        std::fs::remove_file(out.join("notes.txt")).unwrap();
        let manifest = r#"{"loraweld_version": "0", "files": ["loraweld-manifest.json", "model.safetensors"]}"#;
        std::fs::write(out.join(MANIFEST), manifest).unwrap();
        std::fs::write(out.join("model.safetensors"), b"x").unwrap();
        assert_eq!(examine(&out).unwrap(), Existing::Ours);
        std::fs::write(out.join("notes.txt"), b"mine").unwrap();
        std::fs::create_dir(out.join("runs")).unwrap();
        let Existing::NotOurs(why) = examine(&out).unwrap() else {
            panic!()
        };
        assert!(
            why.contains("files loraweld did not write (1 file, 1 folder: runs/, notes.txt)"),
            "{why}"
        );
        std::fs::write(out.join(MANIFEST), r#"{"loraweld_version": "0"}"#).unwrap();
        let Existing::NotOurs(why) = examine(&out).unwrap() else {
            panic!()
        };
        assert!(why.contains("does not list its files"), "{why}");
        let file = d.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let Existing::NotOurs(why) = examine(&file).unwrap() else {
            panic!()
        };
        assert!(why.starts_with("exists and is a file"), "{why}");
    }

    #[test]
    fn never_the_root_home_cwd_or_inputs() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("adapter");
        std::fs::create_dir(&input).unwrap();
        let e = |p: &Path| {
            refuse_forbidden(p, std::slice::from_ref(&input))
                .unwrap_err()
                .to_string()
        };
        assert!(e(Path::new("/")).contains("filesystem root"));
        assert!(e(Path::new(".")).contains("current directory"));
        assert!(e(Path::new("..")).contains("current directory"));
        assert!(e(&input).contains("overlaps input"));
        assert!(e(d.path()).contains("overlaps input"));
        assert!(e(&input.join("out")).contains("overlaps input"));
        assert!(e(&input.join("new/../x")).contains("overlaps input"));
        assert!(refuse_forbidden(&d.path().join("merged"), &[input]).is_ok());
    }
}
