//! `loraweld inspect PATH`: what a model, an adapter or a safetensors file holds: tensors,
//! dtypes, shapes, 4-bit quant types and the parameter count; for an adapter its rank, alpha
//! and targets, and with a base, how it covers that base (the merge plan, without writing).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::checkpoint::adapter::{parse_key, AdapterTensorKind};
use crate::checkpoint::model::Shard;
use crate::checkpoint::{Adapter, Checkpoint};
use crate::error::{Error, Result};
use crate::format::gguf;
use crate::format::safetensors::TensorInfo;
use crate::job::Job;
use crate::plan::{find_quantized, is_quant_helper, plan_merged};

/// One listed tensor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorLine {
    /// Name.
    pub name: String,
    /// Stored dtype.
    pub dtype: String,
    /// Stored shape.
    pub shape: Vec<u64>,
    /// `nf4`/`fp4` (+ `-dq`, blocksize) for a 4-bit weight, with its logical shape.
    pub quant: Option<String>,
}

/// What `inspect` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InspectReport {
    /// The path.
    pub path: PathBuf,
    /// `model`, `adapter` or `file`.
    pub kind: &'static str,
    /// Tensors (4-bit helper tensors folded into their weight).
    pub tensors: Vec<TensorLine>,
    /// Parameters (4-bit weights counted by their logical shape).
    pub parameters: u64,
    /// Adapter: rank, alpha, flags and target modules.
    pub adapter: Option<AdapterSummary>,
    /// Adapter with `--base`: how the adapter covers the base.
    pub coverage: Option<String>,
    /// A GGUF file's metadata in file order (`key`, `type`, value; arrays summarised).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<(String, String, String)>,
}

/// An adapter's settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterSummary {
    /// `r`.
    pub rank: u64,
    /// `lora_alpha`.
    pub alpha: f64,
    /// rsLoRA, DoRA, fan_in_fan_out, …
    pub flags: Vec<String>,
    /// Modules with adapter tensors.
    pub targets: Vec<String>,
    /// `base_model_name_or_path`.
    pub base_model: Option<String>,
}

fn lines(
    tensors: &[(String, TensorInfo)],
    quantized: &std::collections::BTreeMap<String, crate::plan::QuantSrc>,
) -> (Vec<TensorLine>, u64) {
    let mut out = Vec::new();
    let mut params = 0u64;
    for (name, t) in tensors {
        if is_quant_helper(name, quantized) {
            continue;
        }
        let quant = quantized.get(name).map(|q| {
            params += q.state.numel();
            format!(
                "{}{} blocksize {} {:?} ({})",
                q.state.quant_type.as_str(),
                if q.nested.is_some() { "+dq" } else { "" },
                q.state.blocksize,
                q.state.shape,
                q.state.dtype.torch_name()
            )
        });
        if quant.is_none() {
            params += t.numel();
        }
        out.push(TensorLine {
            name: name.clone(),
            dtype: t.dtype.to_string(),
            shape: t.shape.clone(),
            quant,
        });
    }
    (out, params)
}

/// Inspects a model directory, an adapter directory, or one safetensors file.
pub fn inspect(path: &Path, base: Option<&Path>) -> Result<InspectReport> {
    if path.is_file() && is_gguf(path) {
        return inspect_gguf(path);
    }
    if path.is_file() {
        let s = Shard::open(path)?;
        let ts: Vec<(String, TensorInfo)> = s.header.tensors.iter().map(|t| (t.name.clone(), t.clone())).collect();
        let (tensors, parameters) = lines(&ts, &Default::default());
        return Ok(InspectReport {
            path: path.to_path_buf(),
            kind: "file",
            tensors,
            parameters,
            adapter: None,
            coverage: None,
            metadata: Vec::new(),
        });
    }
    if path.join("adapter_config.json").is_file() {
        let a = Adapter::open(path)?;
        let ts: Vec<(String, TensorInfo)> = a
            .weights
            .header
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        let (tensors, parameters) = lines(&ts, &Default::default());
        let targets: BTreeSet<String> = a
            .weights
            .header
            .tensors
            .iter()
            .map(|t| parse_key(&t.name))
            .filter(|k| !matches!(k.kind, AdapterTensorKind::Other(_)))
            .map(|k| k.module)
            .collect();
        let c = &a.config;
        let mut flags = Vec::new();
        for (on, name) in [
            (c.use_rslora, "rslora"),
            (c.use_dora, "dora"),
            (c.fan_in_fan_out, "fan_in_fan_out"),
            (c.lora_bias, "lora_bias"),
            (
                c.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()),
                "modules_to_save",
            ),
            (c.rank_pattern.as_ref().is_some_and(|m| !m.is_empty()), "rank_pattern"),
            (c.alpha_pattern.as_ref().is_some_and(|m| !m.is_empty()), "alpha_pattern"),
        ] {
            if on {
                flags.push(name.to_string());
            }
        }
        let coverage = match base {
            Some(b) => {
                let ck = Checkpoint::open(b)?;
                Some(match plan_merged(&ck, &a, &Job::merged_16bit()) {
                    Ok(p) => format!(
                        "covers {}: {} tensors merged, {} copied, {} dequantized; {} output tensors",
                        b.display(),
                        p.counts.merged,
                        p.counts.copied,
                        p.counts.dequantized,
                        p.tensors.len()
                    ),
                    Err(Error::Coverage { problems, .. }) => {
                        format!("does not fit {}: {}", b.display(), problems.join("; "))
                    }
                    Err(e) => return Err(e),
                })
            }
            None => None,
        };
        return Ok(InspectReport {
            path: path.to_path_buf(),
            kind: "adapter",
            tensors,
            parameters,
            adapter: Some(AdapterSummary {
                rank: c.r,
                alpha: c.lora_alpha,
                flags,
                targets: targets.into_iter().collect(),
                base_model: c.base_model_name_or_path.clone(),
            }),
            coverage,
            metadata: Vec::new(),
        });
    }
    let ck = Checkpoint::open(path)?;
    let quantized = find_quantized(&ck)?;
    let ts: Vec<(String, TensorInfo)> = ck.tensors.iter().map(|(n, l)| (n.clone(), l.info.clone())).collect();
    let (tensors, parameters) = lines(&ts, &quantized);
    Ok(InspectReport {
        path: path.to_path_buf(),
        kind: "model",
        tensors,
        parameters,
        adapter: None,
        coverage: None,
        metadata: Vec::new(),
    })
}

fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// A GGUF file: its header, metadata (arrays summarised: count, type, the first items) and
/// tensors with their ggml types.
fn inspect_gguf(path: &Path) -> Result<InspectReport> {
    let file = crate::checkpoint::mmap::MappedFile::open(path)?;
    let h = gguf::parse(file.bytes()).map_err(|what| Error::Unsupported {
        path: path.to_path_buf(),
        what: format!("invalid GGUF: {what}"),
    })?;
    let mut parameters = 0u64;
    let tensors = h
        .tensors
        .iter()
        .map(|(t, _)| {
            parameters += t.shape.iter().product::<u64>();
            TensorLine {
                name: t.name.clone(),
                dtype: t.ggml_type.name().to_string(),
                shape: t.shape.clone(),
                quant: None,
            }
        })
        .collect();
    let metadata = h
        .kvs
        .iter()
        .map(|(k, v)| (k.clone(), type_name(v).to_string(), summary(v)))
        .collect();
    Ok(InspectReport {
        path: path.to_path_buf(),
        kind: "gguf",
        tensors,
        parameters,
        adapter: None,
        coverage: None,
        metadata,
    })
}

fn type_name(v: &gguf::Value) -> &'static str {
    use gguf::Value as V;
    match v {
        V::U8(_) => "u8",
        V::I8(_) => "i8",
        V::U16(_) => "u16",
        V::I16(_) => "i16",
        V::U32(_) => "u32",
        V::I32(_) => "i32",
        V::F32(_) => "f32",
        V::Bool(_) => "bool",
        V::String(_) => "str",
        V::Array(_) => "arr",
        V::U64(_) => "u64",
        V::I64(_) => "i64",
        V::F64(_) => "f64",
    }
}

/// A value in one line: strings quoted and cut at 80 characters, arrays as their length, item
/// type and first three items.
fn summary(v: &gguf::Value) -> String {
    use gguf::Value as V;
    match v {
        V::String(s) => {
            let cut: String = s.chars().take(80).collect();
            let more = if cut.len() < s.len() {
                format!("… ({} bytes)", s.len())
            } else {
                String::new()
            };
            format!("{:?}{more}", cut)
        }
        V::Array(items) => {
            let first: Vec<String> = items.iter().take(3).map(summary).collect();
            format!(
                "[{} × {}] {}{}",
                items.len(),
                items.first().map_or("-", type_name),
                first.join(", "),
                if items.len() > 3 { ", …" } else { "" }
            )
        }
        V::U8(x) => x.to_string(),
        V::I8(x) => x.to_string(),
        V::U16(x) => x.to_string(),
        V::I16(x) => x.to_string(),
        V::U32(x) => x.to_string(),
        V::I32(x) => x.to_string(),
        V::F32(x) => format!("{x:?}"),
        V::Bool(x) => x.to_string(),
        V::U64(x) => x.to_string(),
        V::I64(x) => x.to_string(),
        V::F64(x) => format!("{x:?}"),
    }
}

/// The report as text.
pub fn render(r: &InspectReport) -> String {
    let mut s = format!(
        "{} ({}): {} tensors, {} parameters\n",
        r.path.display(),
        r.kind,
        r.tensors.len(),
        r.parameters
    );
    if let Some(a) = &r.adapter {
        s.push_str(&format!(
            "LoRA r={} alpha={}{} base={}\ntargets: {}\n",
            a.rank,
            a.alpha,
            if a.flags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", a.flags.join(", "))
            },
            a.base_model.as_deref().unwrap_or("-"),
            a.targets.join(", ")
        ));
    }
    if let Some(c) = &r.coverage {
        s.push_str(&format!("coverage: {c}\n"));
    }
    for (k, t, v) in &r.metadata {
        s.push_str(&format!("  {k:<44} {t:<4} {v}\n"));
    }
    for t in &r.tensors {
        s.push_str(&format!("  {:<60} {:<5} {:?}", t.name, t.dtype, t.shape));
        if let Some(q) = &t.quant {
            s.push_str(&format!("  {q}"));
        }
        s.push('\n');
    }
    s
}
