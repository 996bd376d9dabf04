//! Resolves where the inputs are: the adapter (a directory or a Hub repo id), and the base
//! (`--base`, or the adapter's `base_model_name_or_path`). A repo id (`owner/name[@revision]`)
//! that is not a local directory is fetched into the HF cache by [`crate::hub::fetch`].

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::hub::{self, HubConfig, Need, RepoRef};

/// Finds the adapter directory: `spec` itself when it is a directory, else the snapshot of the
/// Hub repo it names.
pub fn resolve_adapter(spec: &Path, hub: &HubConfig) -> Result<PathBuf> {
    if spec.is_dir() {
        return Ok(spec.to_path_buf());
    }
    not_a_file(
        spec,
        "ADAPTER expects a PEFT adapter directory (the folder holding adapter_config.json)",
    )?;
    from_hub_or_not_found(&spec.to_string_lossy(), hub, Need::Adapter)
}

/// Finds the base directory for an adapter.
///
/// A relative `base_model_name_or_path` is tried against the current directory, then against
/// the adapter directory and each of its ancestors (PEFT writes whatever path the trainer
/// used, often relative to a parent folder). An `owner/name[@revision]` that is none of those
/// is a Hub repo, fetched with what `need` asks for.
pub fn resolve_base(
    adapter_dir: &Path,
    explicit: Option<&Path>,
    from_config: Option<&str>,
    hub: &HubConfig,
    need: Need,
) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_dir() {
            return Ok(p.to_path_buf());
        }
        not_a_file(
            p,
            "--base expects a model directory (the folder holding config.json and the weights)",
        )?;
        return from_hub_or_not_found(&p.to_string_lossy(), hub, need);
    }
    let Some(name) = from_config.filter(|s| !s.is_empty()) else {
        return Err(Error::Usage(format!(
            "{}: adapter_config.json has no base_model_name_or_path: pass --base PATH",
            adapter_dir.display()
        )));
    };
    let p = Path::new(name);
    if p.is_absolute() {
        if p.is_dir() {
            return Ok(p.to_path_buf());
        }
        return Err(Error::NotFound { path: p.to_path_buf() });
    }
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    for anc in adapter_dir.ancestors() {
        let cand = anc.join(p);
        if cand.is_dir() {
            return Ok(cand);
        }
    }
    from_hub_or_not_found(name, hub, need)
}

/// Refuses a path that names a file where a directory (or a Hub repo id) is expected: a
/// `config.json` or a `.safetensors` given instead of its folder is a common slip.
fn not_a_file(p: &Path, expected: &str) -> Result<()> {
    if p.is_file() {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        return Err(Error::Usage(format!(
            "{}: is a file; {expected} or a Hub repo id like owner/name (did you mean {}?)",
            p.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// A name that is no local directory: a Hub repo if it reads as one, else "not found".
fn from_hub_or_not_found(name: &str, hub: &HubConfig, need: Need) -> Result<PathBuf> {
    if RepoRef::looks_like(name) {
        return hub::fetch(hub, &RepoRef::parse(name)?, need);
    }
    Err(Error::NotFound {
        path: PathBuf::from(name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offline config over an empty cache: a repo id resolves to "not in the cache".
    fn offline(cache: &Path) -> HubConfig {
        HubConfig {
            endpoint: "http://127.0.0.1:9".into(),
            cache_dir: cache.to_path_buf(),
            token: None,
            offline: true,
            progress: None,
            tries: 1,
        }
    }

    #[test]
    fn walks_up_from_the_adapter() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("llama/base")).unwrap();
        std::fs::create_dir_all(d.path().join("llama/lora")).unwrap();
        let hub = offline(d.path());
        let got = resolve_base(
            &d.path().join("llama/lora"),
            None,
            Some("llama/base"),
            &hub,
            Need::Base(None),
        )
        .unwrap();
        assert_eq!(got, d.path().join("llama/base"));
    }

    #[test]
    fn hub_ids_go_to_the_hub_and_paths_are_not_found() {
        let d = tempfile::tempdir().unwrap();
        let hub = offline(d.path());
        let e = resolve_base(
            d.path(),
            None,
            Some("unsloth/llama-3-8b-bnb-4bit"),
            &hub,
            Need::Base(None),
        )
        .unwrap_err();
        assert!(matches!(e, Error::HubOffline { .. }), "{e}");
        let e = resolve_base(d.path(), None, Some("no/such/dir"), &hub, Need::Base(None)).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
        let e = resolve_base(d.path(), None, None, &hub, Need::Base(None)).unwrap_err();
        assert!(e.to_string().contains("--base"), "{e}");
        let e = resolve_adapter(Path::new("me/adapter@v1"), &hub).unwrap_err();
        assert!(matches!(e, Error::HubOffline { .. }), "{e}");
        let cfg = d.path().join("config.json");
        std::fs::write(&cfg, "{}").unwrap();
        let e = resolve_base(d.path(), Some(&cfg), None, &hub, Need::Base(None)).unwrap_err();
        assert!(
            e.to_string()
                .contains("config.json: is a file; --base expects a model directory"),
            "{e}"
        );
    }
}
