//! The staging directory: output is written into a hidden sibling of `OUT`,
//! `.<OUT>.loraweld-partial` (or the same name under `--temporary-location`), synced, and renamed
//! into place only when complete. A failed run removes it, so nothing that looks like a finished
//! model is ever left behind; a run stopped by SIGINT, or killed, leaves it for the next run
//! to resume (see `resume.rs`). A lock file keeps two runs from writing the same `OUT`.

use std::path::{Path, PathBuf};

use super::existing::{examine, Existing};
use crate::error::{Error, Result};

/// A staging directory that is removed on drop unless committed.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    committed: bool,
    keep: bool,
    _lock: std::fs::File,
}

impl Staging {
    /// Opens (or creates) `.<name>.loraweld-partial` beside `out`, or inside `temp` when given,
    /// keeping what an interrupted run left there, and locks it.
    pub fn create(out: &Path, temp: Option<&Path>) -> Result<Self> {
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "out".into());
        let parent = match temp {
            Some(t) => t.to_path_buf(),
            None => out
                .parent()
                .map(Path::to_path_buf)
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or_else(|| PathBuf::from(".")),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let dir = parent.join(format!(".{name}.loraweld-partial"));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let lock_path = dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        if !crate::sys::try_lock(&lock) {
            return Err(Error::Usage(format!(
                "{}: another loraweld run is writing it",
                out.display()
            )));
        }
        Ok(Staging {
            dir,
            committed: false,
            keep: false,
            _lock: lock,
        })
    }

    /// Leaves the directory in place on drop (a stopped run, to be resumed).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// The directory to write into.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Syncs and renames the staging directory to `out`. What is at `out` is looked at again
    /// now (it may have changed during the run): nothing or an empty directory is replaced; a
    /// directory loraweld wrote only with `force`, moved aside first and removed after the
    /// rename succeeds; anything else is refused, and the finished output stays in staging.
    pub fn commit(mut self, out: &Path, force: bool) -> Result<()> {
        let _ = std::fs::remove_file(self.dir.join(".lock"));
        sync_dir(&self.dir)?;
        let refuse = |s: &mut Self, why: String| {
            s.keep = true;
            Err(Error::OutNotOurs {
                out: out.to_path_buf(),
                why: format!("{why} (the finished output is in {})", s.dir.display()),
            })
        };
        let mut aside = None;
        match examine(out)? {
            // rename(2) replaces an empty directory in one step.
            Existing::Absent | Existing::EmptyDir => {}
            Existing::Ours if force => {
                let a = out.with_file_name(format!(
                    ".{}.loraweld-old-{}",
                    out.file_name()
                        .map(|n| n.to_string_lossy().to_string())
                        .unwrap_or_default(),
                    std::process::id()
                ));
                std::fs::rename(out, &a).map_err(|e| Error::io(out, e))?;
                aside = Some(a);
            }
            Existing::Ours => return refuse(&mut self, "already exists (use --force to replace it)".into()),
            Existing::NotOurs(why) => return refuse(&mut self, why),
        }
        if let Err(e) = std::fs::rename(&self.dir, out) {
            if e.raw_os_error() == Some(libc::EXDEV) {
                copy_dir(&self.dir, out)?;
                std::fs::remove_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
            } else {
                if let Some(a) = &aside {
                    let _ = std::fs::rename(a, out);
                }
                return Err(Error::io(out, e));
            }
        }
        self.committed = true;
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = sync_dir(parent);
        }
        if let Some(a) = aside {
            let _ = std::fs::remove_dir_all(a);
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed && !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn sync_dir(d: &Path) -> Result<()> {
    let f = std::fs::File::open(d).map_err(|e| Error::io(d, e))?;
    f.sync_all().map_err(|e| Error::io(d, e))
}

/// Cross-device fallback: copy into a temporary sibling of `out`, then rename it.
fn copy_dir(src: &Path, out: &Path) -> Result<()> {
    let tmp = out.with_file_name(format!(
        ".{}.loraweld-copy-{}",
        out.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    for e in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let e = e.map_err(|e| Error::io(src, e))?;
        let to = tmp.join(e.file_name());
        std::fs::copy(e.path(), &to).map_err(|err| Error::io(e.path(), err))?;
        std::fs::File::open(&to)
            .and_then(|f| f.sync_all())
            .map_err(|err| Error::io(&to, err))?;
    }
    sync_dir(&tmp)?;
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_staging_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        {
            let s = Staging::create(&out, None).unwrap();
            std::fs::write(s.path().join("model.safetensors"), b"x").unwrap();
            assert!(Staging::create(&out, None).is_err(), "a second run is locked out");
        }
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        {
            let mut s = Staging::create(&out, None).unwrap();
            std::fs::write(s.path().join("model.safetensors"), b"x").unwrap();
            s.keep();
        }
        let s = Staging::create(&out, None).unwrap();
        assert_eq!(
            std::fs::read(s.path().join("model.safetensors")).unwrap(),
            b"x",
            "kept for resume"
        );
    }

    #[test]
    fn commit_renames_and_refuses_to_clobber() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let s = Staging::create(&out, None).unwrap();
        std::fs::write(s.path().join("a"), b"1").unwrap();
        s.commit(&out, false).unwrap();
        assert_eq!(std::fs::read(out.join("a")).unwrap(), b"1");
        // `a` is not named by a manifest: not ours, refused even with force, and kept.
        let s = Staging::create(&out, None).unwrap();
        let staged = s.path().to_path_buf();
        let e = s.commit(&out, true).unwrap_err().to_string();
        assert!(
            e.contains("not written by loraweld") && e.contains("the finished output is in"),
            "{e}"
        );
        assert!(staged.exists(), "the finished output is kept");
        assert_eq!(std::fs::read(out.join("a")).unwrap(), b"1");
        // Once a manifest names every file, it is ours: replaced only with force.
        let manifest = r#"{"loraweld_version": "0", "files": ["a", "loraweld-manifest.json"]}"#;
        std::fs::write(out.join("loraweld-manifest.json"), manifest).unwrap();
        let s = Staging::create(&out, None).unwrap();
        assert!(s.commit(&out, false).is_err());
        let s = Staging::create(&out, None).unwrap();
        std::fs::write(s.path().join("b"), b"2").unwrap();
        s.commit(&out, true).unwrap();
        assert!(out.join("b").exists() && !out.join("a").exists());
        // An empty directory is taken over without force.
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let s = Staging::create(&empty, None).unwrap();
        std::fs::write(s.path().join("c"), b"3").unwrap();
        s.commit(&empty, false).unwrap();
        assert_eq!(std::fs::read(empty.join("c")).unwrap(), b"3");
    }
}
