//! Resolves where the base model is: `--base`, or the adapter's `base_model_name_or_path`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Finds the base directory for an adapter.
///
/// A relative `base_model_name_or_path` is tried against the current directory, then against
/// the adapter directory and each of its ancestors (PEFT writes whatever path the trainer
/// used, often relative to a parent folder). An `owner/name` that is none of those is a Hub id,
/// which this build refuses clearly.
pub fn resolve_base(adapter_dir: &Path, explicit: Option<&Path>, from_config: Option<&str>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_dir() {
            return Ok(p.to_path_buf());
        }
        return Err(not_found_or_hub(&p.to_string_lossy()));
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
    Err(not_found_or_hub(name))
}

fn not_found_or_hub(name: &str) -> Error {
    let parts: Vec<&str> = name.split('/').collect();
    let looks_like_id = parts.len() == 2
        && parts
            .iter()
            .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && *s != "..");
    if looks_like_id {
        Error::HubNotSupported { id: name.to_string() }
    } else {
        Error::NotFound {
            path: PathBuf::from(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_up_from_the_adapter() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("llama/base")).unwrap();
        std::fs::create_dir_all(d.path().join("llama/lora")).unwrap();
        let got = resolve_base(&d.path().join("llama/lora"), None, Some("llama/base")).unwrap();
        assert_eq!(got, d.path().join("llama/base"));
    }

    #[test]
    fn hub_ids_are_refused_clearly() {
        let d = tempfile::tempdir().unwrap();
        let e = resolve_base(d.path(), None, Some("unsloth/llama-3-8b-bnb-4bit")).unwrap_err();
        assert!(matches!(e, Error::HubNotSupported { .. }), "{e}");
        let e = resolve_base(d.path(), None, None).unwrap_err();
        assert!(e.to_string().contains("--base"), "{e}");
    }
}
