//! Finding the bitsandbytes 4-bit weights of a base: each `P.weight` with its codes, block
//! scales, quant map and parsed quant state, and which tensors are its helpers.

use std::collections::BTreeMap;

use super::types::{QuantSrc, Src};
use crate::checkpoint::{Checkpoint, TensorLoc};
use crate::error::{Error, Result};
use crate::format::bnb::QuantState;
use crate::format::safetensors::Dtype;

const QUANT_SUFFIXES: [&str; 5] = [
    ".absmax",
    ".quant_map",
    ".nested_absmax",
    ".nested_quant_map",
    ".quant_state.",
];

/// The bnb 4-bit weights of a checkpoint: `P.weight` → its tensors and parsed quant state.
pub fn find_quantized(ck: &Checkpoint) -> Result<BTreeMap<String, QuantSrc>> {
    let mut out = BTreeMap::new();
    for (name, loc) in &ck.tensors {
        let (prefix, qt) = if let Some(p) = name.strip_suffix(".quant_state.bitsandbytes__nf4") {
            (p, "nf4")
        } else if let Some(p) = name.strip_suffix(".quant_state.bitsandbytes__fp4") {
            (p, "fp4")
        } else {
            continue;
        };
        let path = ck.path_of(loc);
        let bad = |what: String| Error::QuantState {
            path: path.to_path_buf(),
            tensor: prefix.to_string(),
            what,
        };
        let state = QuantState::parse(path, prefix, ck.data(loc))?;
        if state.quant_type.as_str() != qt {
            return Err(bad(format!(
                "key says {qt} but quant_type is {}",
                state.quant_type.as_str()
            )));
        }
        let get = |suffix: &str| -> Result<&TensorLoc> {
            ck.get(&format!("{prefix}{suffix}"))
                .ok_or_else(|| bad(format!("missing `{prefix}{suffix}`")))
        };
        let codes = get("")?;
        let absmax = get(".absmax")?;
        let quant_map = get(".quant_map")?;
        let n = state.numel();
        let nb = state.blocks();
        if codes.info.nbytes() < n.div_ceil(2) {
            return Err(bad(format!(
                "{} packed bytes for {n} elements, expected {}",
                codes.info.nbytes(),
                n.div_ceil(2)
            )));
        }
        if quant_map.info.dtype != Dtype::F32 || quant_map.info.numel() != 16 {
            return Err(bad("quant_map must be F32[16]".into()));
        }
        let nested = match state.nested {
            Some((nbs, _)) => {
                let na = get(".nested_absmax")?;
                let nm = get(".nested_quant_map")?;
                if absmax.info.dtype != Dtype::U8 || absmax.info.numel() != nb {
                    return Err(bad(format!("absmax must be U8[{nb}] with double quant")));
                }
                if na.info.dtype != Dtype::F32 || na.info.numel() != nb.div_ceil(nbs) {
                    return Err(bad(format!("nested_absmax must be F32[{}]", nb.div_ceil(nbs))));
                }
                if nm.info.dtype != Dtype::F32 || nm.info.numel() != 256 {
                    return Err(bad("nested_quant_map must be F32[256]".into()));
                }
                Some((Src::base(na), Src::base(nm)))
            }
            None => {
                if absmax.info.dtype != Dtype::F32 || absmax.info.numel() != nb {
                    return Err(bad(format!("absmax must be F32[{nb}] without double quant")));
                }
                None
            }
        };
        out.insert(
            prefix.to_string(),
            QuantSrc {
                codes: Src::base(codes),
                absmax: Src::base(absmax),
                quant_map: Src::base(quant_map),
                nested,
                state,
            },
        );
    }
    Ok(out)
}

/// Whether `name` is a 4-bit helper tensor (`absmax`, `quant_map`, …) of a weight in `quantized`.
pub fn is_quant_helper(name: &str, quantized: &BTreeMap<String, QuantSrc>) -> bool {
    QUANT_SUFFIXES.iter().any(|s| {
        name.find(s)
            .map(|i| quantized.contains_key(&name[..i]))
            .unwrap_or(false)
    })
}

