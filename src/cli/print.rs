//! What people and scripts see: the save's summary, the push's line, errors in one line (a
//! list: one item per line), and clap's usage errors in the same shape.

use loraweld::{Error, PushReport, SaveReport, VerifyReport};

/// Offenders listed under a multi-item error; `--json` carries them all.
pub const LIST_CAP: usize = 5;

/// A report as pretty JSON on stdout.
pub fn print_json(report: &impl serde::Serialize) -> Result<(), Error> {
    let s = serde_json::to_string_pretty(report).map_err(|e| Error::Internal(e.to_string()))?;
    println!("{s}");
    Ok(())
}

/// A save's notices and warnings, one line each on stderr (with `--json` too).
pub fn print_notes(report: &SaveReport) {
    for n in &report.notices {
        eprintln!("loraweld: notice: {n}");
    }
    for w in &report.warnings {
        eprintln!("loraweld: warning: {w}");
    }
}

/// A save, for people: the dry run's plan, "up to date", or the summary (and the push's line).
pub fn print_save(report: &SaveReport) {
    if report.dry_run {
        print!("{}", report.plan_text);
        println!("backend: {}", report.backend);
    } else if report.up_to_date {
        eprintln!(
            "loraweld: {} is up to date (same inputs and options; --force rewrites it)",
            report.out.display()
        );
    } else {
        for line in summary(report) {
            eprintln!("{line}");
        }
        if let Some(p) = &report.push {
            print_push(&report.out, p);
        }
    }
}

/// `verify`, for people: a line per file, the problems, and the verdict.
pub fn print_verify(r: &VerifyReport) {
    for f in &r.files {
        let m = match f.matches_manifest {
            Some(true) => "ok",
            Some(false) => "MISMATCH",
            None => "no manifest entry",
        };
        println!("{}  {} bytes  blake3 {}  {m}", f.file, f.bytes, f.blake3);
    }
    for p in &r.problems {
        println!("problem: {p}");
    }
    println!(
        "{}: {} ({} files, {} tensors{})",
        r.dir.display(),
        if r.ok() { "ok" } else { "FAILED" },
        r.files.len(),
        r.tensors,
        if r.had_manifest {
            ""
        } else {
            "; no manifest, hashes not compared"
        }
    );
}

/// The end of a save, for people: where it went, then one line under 100 columns of what it
/// did (sizes human-readable; `--json` has the exact bytes).
pub fn summary(r: &SaveReport) -> Vec<String> {
    let mut first = format!("loraweld: saved {}", r.out.display());
    if r.resumed_shards > 0 {
        first.push_str(&format!(
            " (resumed: {} of {} shards kept from the interrupted run)",
            r.resumed_shards,
            r.shards.len()
        ));
    }
    let files = match r.shards.len() {
        1 => "1 file".to_string(),
        n => format!("{n} files"),
    };
    // The backend's kind only (`cuda`, not the card's name): --json has it whole.
    let backend = r.backend.split(" (").next().unwrap_or(&r.backend);
    let second = format!(
        "  {}: {} of {} tensors merged; {} in {files}; {:.1} s on {backend}",
        r.save_method,
        r.counts.merged,
        r.tensors,
        loraweld::options::human_bytes(r.bytes_written),
        r.seconds,
    );
    vec![first, second]
}

pub fn print_push(dir: &std::path::Path, p: &PushReport) {
    eprintln!(
        "loraweld: pushed {} to {} as {}: {} ({} file(s) committed, {} unchanged; {} LFS object(s) sent, {} bytes; {} already there)",
        dir.display(),
        p.repo,
        p.username,
        p.pull_request_url.as_deref().unwrap_or(&p.commit_url),
        p.files_committed,
        p.files_unchanged,
        p.lfs_uploaded,
        p.bytes_uploaded,
        p.lfs_skipped,
    );
}

/// The error and its causes in one line, each cause once.
pub fn error_line(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        src = s.source();
    }
    msg
}

/// clap's usage errors in our shape: one line, the flag and value first, a "did you mean" when
/// a name is close (clap's own tip, or ours for values such as `gpu`).
pub fn clap_error_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let text = |k| match e.get(k) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    if e.kind() == ErrorKind::InvalidValue {
        let valid = match e.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(v)) => v.clone(),
            _ => Vec::new(),
        };
        if let (Some(arg), Some(value), false) = (
            text(ContextKind::InvalidArg),
            text(ContextKind::InvalidValue),
            valid.is_empty(),
        ) {
            let flag = arg.split_whitespace().next().unwrap_or(&arg).to_string();
            let names: Vec<&str> = valid.iter().map(String::as_str).collect();
            let list = match names.split_last() {
                Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
                _ => names.join(""),
            };
            let hint = loraweld::options::did_you_mean(&value, &names)
                .map(|n| format!("; did you mean {n}?"))
                .unwrap_or_default();
            let shown = if value.is_empty() { "(empty)".to_string() } else { value };
            return format!("{flag} {shown}: expected {list}{hint}");
        }
    }
    // Everything else: clap's first line, its tips folded in, and where to look.
    let rendered = e.render().to_string();
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("bad arguments");
    let mut out = first.strip_prefix("error: ").unwrap_or(first).to_string();
    for tip in lines.filter_map(|l| l.strip_prefix("tip: ")) {
        out.push_str(&format!(" ({tip})"));
    }
    out.push_str(" (see --help)");
    out
}

/// Prints a failed command's error on stderr (and, with `--json`, as JSON on stdout); returns
/// its exit code.
pub fn report_error(e: &Error, json: bool) -> u8 {
    let msg = error_line(e);
    let list = match e {
        Error::Coverage { problems, .. } => problems.clone(),
        _ => Vec::new(),
    };
    if json {
        let v = serde_json::json!({"error": {
            "message": msg,
            "exit_code": e.exit_code() as u8,
            "problems": list,
        }});
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    if list.is_empty() {
        eprintln!("loraweld: error: {msg}");
    } else {
        eprintln!("loraweld: error: {msg}; first {}:", list.len().min(LIST_CAP));
        for p in list.iter().take(LIST_CAP) {
            eprintln!("  {p}");
        }
        if list.len() > LIST_CAP {
            eprintln!("  … and {} more (--json lists them all)", list.len() - LIST_CAP);
        }
    }
    e.exit_code() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The summary's second line stays under 100 columns even for a big model.
    #[test]
    fn summary_fits_100_columns() {
        let counts = loraweld::PlanCounts {
            merged: 4480,
            copied: 2910,
            dequantized: 1234,
            converted: 123,
            consumed_quant_helpers: 99999,
            quantized: 1000,
        };
        let shard = loraweld::ShardResult {
            file: "model-00001-of-00030.safetensors".into(),
            bytes: 4_999_999_999,
            blake3: String::new(),
            sha256: None,
            cloned_bytes: 0,
        };
        let r = SaveReport {
            out: "merged".into(),
            save_method: "merged_16bit",
            adapter: "a".into(),
            base: None,
            backend: "cuda (NVIDIA H100 80GB HBM3, sm_90 cubin)".into(),
            dry_run: false,
            counts,
            tensors: 9747,
            total_size: 141_000_000_000,
            bytes_written: 141_000_000_000,
            shards: vec![shard; 30],
            files: Vec::new(),
            free_disk: None,
            stages: Default::default(),
            seconds: 12345.678,
            peak_rss: None,
            warnings: Vec::new(),
            notices: Vec::new(),
            up_to_date: false,
            resumed_shards: 29,
            earlier_seconds: None,
            push: None,
            plan_text: String::new(),
        };
        let lines = summary(&r);
        assert_eq!(
            lines[0],
            "loraweld: saved merged (resumed: 29 of 30 shards kept from the interrupted run)"
        );
        assert!(
            lines[1].chars().count() <= 100,
            "{} columns: {}",
            lines[1].chars().count(),
            lines[1]
        );
        assert!(lines[1].contains("141 GB in 30 files"), "{}", lines[1]);
    }
}
