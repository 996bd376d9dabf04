//! The plan as the `--dry-run` text.

use std::path::Path;

use super::types::Plan;

/// The plan as the `--dry-run` text.
pub fn describe(plan: &Plan, out: &Path, free: Option<u64>) -> String {
    let c = &plan.counts;
    let mut s = format!(
        "plan: {} tensors ({} merged, {} copied, {} dequantized, {} converted; {} 4-bit helper tensors consumed)\n",
        plan.tensors.len(),
        c.merged,
        c.copied,
        c.dequantized,
        c.converted,
        c.consumed_quant_helpers
    );
    s.push_str(&format!(
        "output: {} bytes of tensor data in {} file(s), {} bytes on disk\n",
        plan.total_size,
        plan.shards.len(),
        plan.file_bytes()
    ));
    for sh in &plan.shards {
        s.push_str(&format!(
            "  {}  {} tensors  {} bytes\n",
            sh.file_name,
            sh.tensors.len(),
            sh.file_len
        ));
    }
    match free {
        Some(f) => s.push_str(&format!("free disk at {}: {f} bytes\n", out.display())),
        None => s.push_str(&format!("free disk at {}: unknown\n", out.display())),
    }
    s
}
