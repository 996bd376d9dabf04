//! The README model card a push sends: the card in the directory (or a fresh one from
//! [`crate::writer::meta::model_card`]) with the `--tags` added to its YAML front matter, which the
//! Hub reads for `base_model`, `tags`, `library_name` and `pipeline_tag`.

use std::path::Path;

use crate::error::{Error, Result};
use crate::writer::meta::model_card;

/// The card to push for `dir`: its `README.md`, else one made from what the directory holds
/// (an `adapter_config.json` makes it an adapter card with its `base_model_name_or_path`), with
/// `tags` merged in.
pub fn card_for(dir: &Path, tags: &[String]) -> Result<String> {
    let readme = dir.join("README.md");
    let card = if readme.is_file() {
        std::fs::read_to_string(&readme).map_err(|e| Error::io(&readme, e))?
    } else {
        let cfg = dir.join("adapter_config.json");
        if cfg.is_file() {
            let v = crate::checkpoint::model::read_json(&cfg)?;
            let base = v.get("base_model_name_or_path").and_then(|b| b.as_str());
            model_card(base, "lora", true)
        } else {
            model_card(None, "merged_16bit", false)
        }
    };
    Ok(with_tags(&card, tags))
}

/// Adds `tags` (those not already there) to the card's front matter `tags:` list, creating the
/// list, or the front matter, when missing. Only the block-list form (`- tag` lines) is edited.
pub fn with_tags(card: &str, tags: &[String]) -> String {
    if tags.is_empty() {
        return card.to_string();
    }
    let Some(rest) = card.strip_prefix("---\n") else {
        let mut s = String::from("---\ntags:\n");
        for t in tags {
            s.push_str(&format!("- {}\n", yaml_item(t)));
        }
        s.push_str("---\n\n");
        s.push_str(card);
        return s;
    };
    let Some(end) = rest
        .find("\n---\n")
        .map(|i| i + 1)
        .or_else(|| rest.starts_with("---\n").then_some(0))
    else {
        return card.to_string();
    };
    let front: Vec<&str> = rest[..end].lines().collect();
    let body = &rest[end..];
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    let mut done = false;
    while i < front.len() {
        out.push(front[i].to_string());
        if front[i].trim_end() == "tags:" {
            let mut have = Vec::new();
            i += 1;
            while i < front.len() && front[i].trim_start().starts_with("- ") {
                have.push(front[i].trim_start()[2..].trim().trim_matches('"').to_string());
                out.push(front[i].to_string());
                i += 1;
            }
            for t in tags {
                if !have.iter().any(|h| h == t) {
                    out.push(format!("- {}", yaml_item(t)));
                }
            }
            done = true;
            continue;
        }
        i += 1;
    }
    if !done {
        out.push("tags:".into());
        out.extend(tags.iter().map(|t| format!("- {}", yaml_item(t))));
    }
    format!("---\n{}\n{body}", out.join("\n"))
}

/// A tag as a YAML scalar: plain when safe, else JSON-quoted (valid YAML).
fn yaml_item(t: &str) -> String {
    if !t.is_empty()
        && t.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c))
        && !t.starts_with(['-', ':'])
    {
        t.to_string()
    } else {
        serde_json::to_string(t).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_join_the_front_matter_list() {
        let card = model_card(Some("meta-llama/Llama-3.2-1B"), "merged_16bit", false);
        let t = with_tags(&card, &["unsloth".into(), "loraweld".into(), "my tag".into()]);
        assert!(t.contains("- loraweld\n- unsloth\n- \"my tag\"\n---\n"), "{t}");
        assert_eq!(t.matches("- loraweld").count(), 1);
        assert!(t.starts_with("---\nbase_model: meta-llama/Llama-3.2-1B\n"));
        assert!(t.ends_with(&card[card.find("\n---\n").unwrap() + 5..]));
    }

    #[test]
    fn tags_create_a_list_or_front_matter() {
        let t = with_tags("---\nlicense: mit\n---\n# Hi\n", &["x".into()]);
        assert_eq!(t, "---\nlicense: mit\ntags:\n- x\n---\n# Hi\n");
        let t = with_tags("# Hi\n", &["x".into()]);
        assert_eq!(t, "---\ntags:\n- x\n---\n\n# Hi\n");
        assert_eq!(with_tags("# Hi\n", &[]), "# Hi\n");
    }
}
