//! What the user asked for: [`SaveOptions`] and the small value types it is built from.
//!
//! Names follow Unsloth's `unsloth_save_model` (`save_method`, `max_shard_size`,
//! `maximum_memory_usage`, …) so a Python user finds the same knobs.

use std::path::PathBuf;

use crate::error::{Error, Result};
pub use crate::format::dtype::FloatDtype;
use crate::hub::{HubConfig, PushOptions};
use crate::job::{BackendChoice, Budget, GgufSpec, Hooks, Job, OutputFormat, QuantSpec};
pub use crate::job::{DeviceChoice, FileType, GgufTarget, PaddingSide, SaveMethod, ShardOrder};
use crate::progress::ProgressHook;
pub use crate::sys::MemoryBudget;

impl SaveMethod {
    /// The names `--save-method` takes, as shown (`merged_4bit_forced` is accepted too).
    pub const NAMES: &'static [&'static str] = &["lora", "merged_16bit", "merged_4bit", "gguf"];

    /// Parses `lora` | `merged_16bit` | `merged_4bit`. `merged_4bit_forced` is Unsloth's name for
    /// `merged_4bit` (Unsloth refuses plain `merged_4bit` and asks for the forced spelling), so
    /// both mean the same here.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "lora" => Ok(SaveMethod::Lora),
            "merged_16bit" => Ok(SaveMethod::Merged16bit),
            "merged_4bit" | "merged_4bit_forced" => Ok(SaveMethod::Merged4bit),
            "gguf" => Ok(SaveMethod::Gguf),
            _ => Err(bad_value("--save-method", s, Self::NAMES)),
        }
    }
}

impl GgufTarget {
    /// Unsloth's aliases, then llama.cpp's file-type names (`--quantization-method` takes a
    /// comma-separated list of them).
    pub const NAMES: &'static [&'static str] = &[
        "not_quantized",
        "fast_quantized",
        "quantized",
        "f32",
        "f16",
        "bf16",
        "q8_0",
        "q4_0",
        "q4_1",
        "q5_0",
        "q5_1",
        "q2_k",
        "q3_k_s",
        "q3_k_m",
        "q3_k_l",
        "q4_k_s",
        "q4_k_m",
        "q5_k_s",
        "q5_k_m",
        "q6_k",
    ];

    /// Parses one entry: `not_quantized` (the model's 16-bit type), `fast_quantized` (q8_0),
    /// `quantized` (q4_k_m), or a llama.cpp name, case-insensitive.
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "not_quantized" => Ok(GgufTarget::NotQuantized),
            "fast_quantized" => Ok(GgufTarget::File(FileType::Q8_0)),
            "quantized" => Ok(GgufTarget::File(FileType::Q4KM)),
            // llama.cpp's short names for the middle k-quant of a size.
            "q3_k" => Ok(GgufTarget::File(FileType::Q3KM)),
            "q4_k" => Ok(GgufTarget::File(FileType::Q4KM)),
            "q5_k" => Ok(GgufTarget::File(FileType::Q5KM)),
            _ => FileType::parse(&t)
                .map(GgufTarget::File)
                .ok_or_else(|| bad_value("--quantization-method", s, Self::NAMES)),
        }
    }

    /// Parses a comma-separated list; a method named twice is written once.
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        let mut v: Vec<GgufTarget> = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let t = Self::parse(part)?;
            if !v.contains(&t) {
                v.push(t);
            }
        }
        if v.is_empty() {
            return Err(Error::Usage(format!(
                "--quantization-method {s:?}: expected at least one method"
            )));
        }
        Ok(v)
    }
}

// The CLI names of value types defined where they are used (format, job, sys): parsing a
// user's string is this layer's job.

impl FloatDtype {
    /// The names `--dtype` shows.
    pub const NAMES: &'static [&'static str] = &["bf16", "fp16", "f32"];
    /// Other spellings it takes (torch's names and short forms).
    pub const ALIASES: &'static [&'static str] = &["bfloat16", "f16", "float16", "half", "fp32", "float32", "float"];

    /// Parses `bf16|bfloat16`, `fp16|f16|float16`, `f32|fp32|float32`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "bf16" | "bfloat16" => Ok(FloatDtype::Bf16),
            "fp16" | "f16" | "float16" | "half" => Ok(FloatDtype::F16),
            "f32" | "fp32" | "float32" | "float" => Ok(FloatDtype::F32),
            _ => Err(bad_value("--dtype", s, Self::NAMES)),
        }
    }
}

impl ShardOrder {
    /// The names `--shard-order` takes.
    pub const NAMES: &'static [&'static str] = &["natural", "module"];

    /// Parses `natural` | `module`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "natural" => Ok(ShardOrder::Natural),
            "module" => Ok(ShardOrder::Module),
            _ => Err(bad_value("--shard-order", s, Self::NAMES)),
        }
    }
}

impl PaddingSide {
    /// The names `--padding-side` takes.
    pub const NAMES: &'static [&'static str] = &["left", "right", "keep"];

    /// Parses `left|right|keep`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "left" => Ok(PaddingSide::Left),
            "right" => Ok(PaddingSide::Right),
            "keep" => Ok(PaddingSide::Keep),
            _ => Err(bad_value("--padding-side", s, Self::NAMES)),
        }
    }
}

impl MemoryBudget {
    /// Parses `0.9` (a fraction) or `1.5GiB` / `800MB` (a size).
    pub fn parse(s: &str) -> Result<Self> {
        if let Ok(x) = s.parse::<f64>() {
            if x > 0.0 && x <= 0.95 {
                return Ok(MemoryBudget::Fraction(x));
            }
            if x > 0.95 && x <= 1.0 {
                return Err(Error::Usage(format!(
                    "--maximum-memory-usage {s}: a fraction must be at most 0.95 (leave room for the OS)"
                )));
            }
            if x >= 1024.0 && x.fract() == 0.0 {
                return Ok(MemoryBudget::Bytes(x as u64));
            }
            return Err(Error::Usage(format!(
                "--maximum-memory-usage {s}: expected a fraction in (0, 0.95] or a size like 1.5GiB"
            )));
        }
        parse_size(s, true).map(MemoryBudget::Bytes).map_err(|_| {
            Error::Usage(format!(
                "--maximum-memory-usage {s}: expected a fraction in (0, 0.95] or a size like 1.5GiB"
            ))
        })
    }
}

impl DeviceChoice {
    /// The names `--device` takes.
    pub const NAMES: &'static [&'static str] = &["auto", "cpu", "cuda"];

    /// Parses `auto|cpu|cuda`. `gpu` is refused with a pointer to `cuda`: the name says which
    /// kind of GPU, so a future backend for another kind stays unambiguous.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            _ => Err(bad_value("--device", s, Self::NAMES)),
        }
    }
}

/// Parses a size the way `huggingface_hub.parse_size_to_int` does: decimal units
/// (`KB`=10^3 … `TB`), case-insensitive, float values allowed, a bare integer is bytes.
/// With `binary_ok`, `KiB/MiB/GiB/TiB` (powers of 1024) are accepted too; the Hub's parser
/// rejects them, so `--max-shard-size` does not allow them.
pub fn parse_size(s: &str, binary_ok: bool) -> Result<u64> {
    let t = s.trim();
    let bad = || {
        Error::Usage(format!(
            "size `{s}`: expected a number with a unit like 5GB, 500MB{}",
            if binary_ok { " or 1.5GiB" } else { "" }
        ))
    };
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    let split = t.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num.trim().parse().map_err(|_| bad())?;
    let mult: f64 = match unit.to_ascii_uppercase().as_str() {
        "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" if binary_ok => 1024.0,
        "MIB" if binary_ok => 1024f64.powi(2),
        "GIB" if binary_ok => 1024f64.powi(3),
        "TIB" if binary_ok => 1024f64.powi(4),
        _ => return Err(bad()),
    };
    if !(value.is_finite() && value > 0.0) {
        return Err(bad());
    }
    Ok((value * mult) as u64)
}

/// The smallest `--max-shard-size`: a bare `5` is 5 bytes, almost certainly a missing unit.
pub const MIN_SHARD_SIZE: u64 = 1_000_000;

/// The smallest memory budget the pipeline can keep to: tiles never go below 1 MiB of f32, six
/// of them in the output pool plus one being read, three 8 MiB writer windows, and ~30 MiB of
/// fixed overhead (binary, stacks, headers, one tensor's LoRA factors).
pub const MIN_MEMORY_BUDGET: u64 = 64 << 20;

/// Parses `--quant-type`: `nf4` or `fp4`.
pub fn parse_quant_type(s: &str) -> Result<crate::format::bnb::QuantType> {
    match s {
        "nf4" => Ok(crate::format::bnb::QuantType::Nf4),
        "fp4" => Ok(crate::format::bnb::QuantType::Fp4),
        _ => Err(bad_value("--quant-type", s, &["nf4", "fp4"])),
    }
}

/// `FLAG VALUE: expected a, b or c`, with a "did you mean" when one name is close.
pub(crate) fn bad_value(flag: &str, got: &str, names: &[&str]) -> Error {
    let list = match names {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    };
    let hint = did_you_mean(got, names)
        .map(|n| format!("; did you mean {n}?"))
        .unwrap_or_default();
    Error::Usage(format!("{flag} {got}: expected {list}{hint}"))
}

/// The name in `names` that `got` was most likely meant to be: a known synonym (`gpu` for
/// `cuda`), a prefix or part of one, or one at most a third of its letters away.
pub fn did_you_mean<'a>(got: &str, names: &[&'a str]) -> Option<&'a str> {
    const SYNONYMS: &[(&str, &str)] = &[
        ("gpu", "cuda"),
        ("nvidia", "cuda"),
        ("adapter", "lora"),
        ("peft", "lora"),
        ("merged", "merged_16bit"),
        ("16bit", "merged_16bit"),
        ("merged_bf16", "merged_16bit"),
        ("merged_fp16", "merged_16bit"),
        ("4bit", "merged_4bit"),
        ("merged_nf4", "merged_4bit"),
        ("bfloat", "bf16"),
        ("double", "f32"),
    ];
    let g = got.trim().to_ascii_lowercase().replace(['-', ' '], "_");
    if g.is_empty() {
        return None;
    }
    if let Some(n) = names.iter().find(|n| n.eq_ignore_ascii_case(&g)) {
        return Some(n);
    }
    if let Some((_, to)) = SYNONYMS.iter().find(|(from, _)| *from == g) {
        if let Some(n) = names.iter().find(|n| *n == to) {
            return Some(n);
        }
    }
    let close = |n: &&str| {
        let d = edit_distance(&g, n);
        d <= (n.len().max(g.len()) / 3).max(1)
    };
    let part = |n: &&str| g.len() >= 3 && (n.starts_with(g.as_str()) || n.contains(g.as_str()) || g.contains(*n));
    names
        .iter()
        .copied()
        .filter(close)
        .min_by_key(|n| edit_distance(&g, n))
        .or_else(|| names.iter().copied().find(part))
}

/// Edit distance over bytes (the names are ASCII), a swap of two neighbours counting as one
/// edit (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// Everything `save` needs; mirrors `loraweld save`.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// The PEFT adapter directory.
    pub adapter: PathBuf,
    /// The output directory (created atomically).
    pub out: PathBuf,
    /// The base model directory; `None` = the adapter's `base_model_name_or_path`.
    pub base: Option<PathBuf>,
    /// `lora` or `merged_16bit`.
    pub save_method: SaveMethod,
    /// Output dtype; `None` = the base's own.
    pub dtype: Option<FloatDtype>,
    /// Shard limit in bytes (decimal units on the command line). Default 5 GB.
    pub max_shard_size: u64,
    /// Memory budget.
    pub maximum_memory_usage: MemoryBudget,
    /// Compute threads; `None` = all cores.
    pub threads: Option<usize>,
    /// Print the plan and stop.
    pub dry_run: bool,
    /// Weight-file variant (`model.<variant>-00001-of-00002.safetensors`).
    pub variant: Option<String>,
    /// `padding_side` handling for the tokenizer config.
    pub padding_side: PaddingSide,
    /// Which order assigns tensors to shards.
    pub shard_order: ShardOrder,
    /// Compute backend choice.
    pub device: DeviceChoice,
    /// Where output is staged; `None` = beside `out`.
    pub temporary_location: Option<PathBuf>,
    /// Let NaN/Inf produced by a merge through.
    pub allow_nonfinite: bool,
    /// Replace an existing `out`.
    pub force: bool,
    /// With tied embeddings, keep the input embedding and write a separate merged head.
    pub untie_embeddings: bool,
    /// Where progress goes (the CLI draws bars on a terminal); `None`: nowhere.
    pub progress: Option<ProgressHook>,
    /// `merged_4bit` from a 16-bit base: quant type.
    pub quant_type: crate::format::bnb::QuantType,
    /// `merged_4bit` from a 16-bit base: block size.
    pub blocksize: u64,
    /// `merged_4bit` from a 16-bit base: double quantization.
    pub double_quant: bool,
    /// The Hub: endpoint, cache, token, offline (for repo-id inputs and pushes).
    pub hub: HubConfig,
    /// Push the saved directory to this repo afterwards (`--push-to-hub`).
    pub push_to_hub: Option<PushOptions>,
    /// `gguf`: the files to write (Unsloth's `quantization_method`); `None`: `fast_quantized`.
    /// `lora`: `Some` writes the adapter as llama.cpp LoRA GGUFs (f32, f16, bf16, q8_0).
    pub quantization_method: Option<Vec<GgufTarget>>,
    /// `gguf`: `general.name` (the converter's `--model-name`); `None`: the base model's name.
    pub model_name: Option<String>,
    /// `gguf`: the 16-bit GGUF whose `llama-quantize` route the k-quant files reproduce
    /// (bf16, or f16).
    pub gguf_intermediate: FloatDtype,
    /// `gguf`: also write the keys the converter copies from the model card (`base_model`,
    /// `tags`) of the merged checkpoint.
    pub gguf_card_metadata: bool,
    /// The caller exits as soon as `save` returns (the command line): the compute backend is
    /// then left to the operating system instead of torn down (a CUDA context's teardown took
    /// 0.1-0.15 s on an H100, longer than the process's exit).
    pub process_exits_after: bool,
}

impl SaveOptions {
    /// Options with the documented defaults for an adapter and an output path.
    pub fn new(adapter: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        SaveOptions {
            adapter: adapter.into(),
            out: out.into(),
            base: None,
            save_method: SaveMethod::Merged16bit,
            dtype: None,
            max_shard_size: 5_000_000_000,
            maximum_memory_usage: MemoryBudget::Fraction(0.9),
            threads: None,
            dry_run: false,
            variant: None,
            padding_side: PaddingSide::Left,
            shard_order: ShardOrder::Natural,
            device: DeviceChoice::Auto,
            temporary_location: None,
            allow_nonfinite: false,
            force: false,
            untie_embeddings: false,
            progress: None,
            quant_type: crate::format::bnb::QuantType::Nf4,
            blocksize: 64,
            double_quant: true,
            // The one place the library reads the Hub's environment variables.
            hub: HubConfig::from_env(None),
            push_to_hub: None,
            quantization_method: None,
            model_name: None,
            gguf_intermediate: FloatDtype::Bf16,
            gguf_card_metadata: false,
            process_exits_after: false,
        }
    }
}

impl SaveOptions {
    /// Refuses values that are almost certainly mistakes, with the reason; `save` calls it
    /// first, so a library caller gets the same refusals as the command line.
    pub fn validate(&self) -> Result<()> {
        if self.max_shard_size < MIN_SHARD_SIZE {
            return Err(Error::Usage(format!(
                "--max-shard-size {}: {} bytes is too small to be meant (give a unit, like 5GB or 500MB; the least is 1MB)",
                self.max_shard_size, self.max_shard_size
            )));
        }
        if self.threads == Some(0) {
            return Err(Error::Usage(
                "--threads 0: expected at least 1 (leave it out for one per core)".into(),
            ));
        }
        if let MemoryBudget::Bytes(b) = self.maximum_memory_usage {
            if b < MIN_MEMORY_BUDGET {
                return Err(Error::Usage(format!(
                    "--maximum-memory-usage {}: below the 64MiB the pipeline needs at least (its smallest tiles, write windows and fixed overhead)",
                    human_bytes(b)
                )));
            }
        }
        if self.save_method == SaveMethod::Merged4bit
            && (!self.blocksize.is_power_of_two() || !(32..=4096).contains(&self.blocksize))
        {
            // 4-bit codes pack two per byte and tiles start on blocks, so the blocksize must be
            // even; bitsandbytes takes powers of two from 32 to 4096.
            return Err(Error::Usage(format!(
                "--blocksize {}: expected a power of two from 32 to 4096",
                self.blocksize
            )));
        }
        match (self.save_method, &self.quantization_method) {
            (SaveMethod::Gguf, _) | (_, None) => {}
            (SaveMethod::Lora, Some(q)) => {
                if let Some(t) = q
                    .iter()
                    .find(|t| !matches!(t, GgufTarget::File(ft) if !ft.is_quantize()))
                {
                    return Err(Error::Usage(format!(
                        "--quantization-method {}: a LoRA GGUF is f32, f16, bf16 or q8_0 (convert_lora_to_gguf.py's types)",
                        t.name()
                    )));
                }
                if self.gguf_card_metadata {
                    return Err(Error::Usage(
                        "--gguf-card-metadata: only with --save-method gguf".into(),
                    ));
                }
            }
            (m, Some(_)) => {
                return Err(Error::Usage(format!(
                    "--quantization-method: only with --save-method gguf or lora (not {})",
                    m.as_str()
                )))
            }
        }
        Ok(())
    }
}

impl SaveOptions {
    /// The job these options ask for, decided once: validated, the memory budget resolved, the
    /// test hooks read from the environment.
    pub(crate) fn job(&self) -> Result<Job> {
        self.validate()?;
        if self.save_method == SaveMethod::Gguf && self.gguf_intermediate == FloatDtype::F32 {
            return Err(Error::Usage(
                "--gguf-intermediate f32: expected bf16 or f16 (the 16-bit GGUF llama-quantize starts from)".into(),
            ));
        }
        let gguf = |targets: Vec<GgufTarget>| {
            OutputFormat::Gguf(GgufSpec {
                targets,
                model_name: self.model_name.clone(),
                intermediate: self.gguf_intermediate,
                merged_shard_size: self.max_shard_size,
                card_metadata: self.gguf_card_metadata,
            })
        };
        let output = match (self.save_method, &self.quantization_method) {
            (SaveMethod::Gguf, q) => gguf(q.clone().unwrap_or_else(|| vec![GgufTarget::File(FileType::Q8_0)])),
            (SaveMethod::Lora, Some(q)) => gguf(q.clone()),
            _ => OutputFormat::Safetensors {
                max_shard_size: self.max_shard_size,
                order: self.shard_order,
                variant: self.variant.clone(),
            },
        };
        Ok(Job {
            method: self.save_method,
            output,
            dtype: self.dtype,
            quantize: (self.save_method == SaveMethod::Merged4bit).then_some(QuantSpec {
                quant_type: self.quant_type,
                blocksize: self.blocksize,
                double_quant: self.double_quant,
            }),
            padding_side: self.padding_side,
            untie_embeddings: self.untie_embeddings,
            allow_nonfinite: self.allow_nonfinite,
            budget: Budget {
                host_bytes: self.maximum_memory_usage.bytes(),
                device: self.maximum_memory_usage,
            },
            backend: BackendChoice {
                device: self.device,
                threads: self.threads,
                cuda_jit: std::env::var_os("LORAWELD_CUDA_JIT").is_some_and(|v| v != "0"),
            },
            hooks: Hooks::from_env(),
        })
    }
}

/// A size for people: decimal units (as `--max-shard-size` and the Hub count), three significant
/// digits: `5.38 MB`, `16.1 GB`, `512 B`. Bytes stay exact in `--json`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 999.5 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    if v < 9.995 {
        format!("{v:.2} {unit}")
    } else if v < 99.95 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.0} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_for_near_misses() {
        assert_eq!(did_you_mean("gpu", DeviceChoice::NAMES), Some("cuda"));
        assert_eq!(did_you_mean("cdua", DeviceChoice::NAMES), Some("cuda"));
        assert_eq!(did_you_mean("merged_16", SaveMethod::NAMES), Some("merged_16bit"));
        assert_eq!(did_you_mean("merged-4bit", SaveMethod::NAMES), Some("merged_4bit"));
        assert_eq!(did_you_mean("Lora", SaveMethod::NAMES), Some("lora"));
        assert_eq!(did_you_mean("bf61", FloatDtype::NAMES), Some("bf16"));
        assert_eq!(did_you_mean("rigth", PaddingSide::NAMES), Some("right"));
        assert_eq!(did_you_mean("xyzzy", SaveMethod::NAMES), None);
        assert_eq!(did_you_mean("q", ShardOrder::NAMES), None);
        let e = DeviceChoice::parse("gpu").unwrap_err().to_string();
        assert_eq!(e, "--device gpu: expected auto, cpu or cuda; did you mean cuda?");
        let e = SaveMethod::parse("merged_8bit").unwrap_err().to_string();
        assert_eq!(
            e,
            "--save-method merged_8bit: expected lora, merged_16bit, merged_4bit or gguf; did you mean merged_4bit?"
        );
    }

    #[test]
    fn mistakes_are_refused_with_the_reason() {
        let ok = SaveOptions::new("a", "b");
        assert!(ok.validate().is_ok());
        let mut o = ok.clone();
        o.max_shard_size = 5;
        assert!(o.validate().unwrap_err().to_string().contains("give a unit"));
        let mut o = ok.clone();
        o.threads = Some(0);
        assert!(o.validate().unwrap_err().to_string().contains("at least 1"));
        let mut o = ok.clone();
        o.maximum_memory_usage = MemoryBudget::parse("1MB").unwrap();
        let e = o.validate().unwrap_err().to_string();
        assert!(e.contains("1.00 MB: below the 64MiB"), "{e}");
        let mut o = ok.clone();
        o.save_method = SaveMethod::Merged4bit;
        o.blocksize = 48;
        assert!(o.validate().unwrap_err().to_string().contains("power of two"));
        o.save_method = SaveMethod::Merged16bit;
        assert!(o.validate().is_ok(), "blocksize matters only for merged_4bit");
    }

    #[test]
    fn human_sizes_are_decimal() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(5_377_536), "5.38 MB");
        assert_eq!(human_bytes(16_060_000_000), "16.1 GB");
        assert_eq!(human_bytes(999_999), "1.00 MB");
        assert_eq!(human_bytes(123_400_000_000), "123 GB");
    }

    #[test]
    fn sizes_use_decimal_units_like_the_hub() {
        assert_eq!(parse_size("5GB", false).unwrap(), 5_000_000_000);
        assert_eq!(parse_size("2MB", false).unwrap(), 2_000_000);
        assert_eq!(parse_size("1.5gb", false).unwrap(), 1_500_000_000);
        assert_eq!(parse_size("12345", false).unwrap(), 12345);
        assert!(parse_size("1GiB", false).is_err());
        assert_eq!(parse_size("1GiB", true).unwrap(), 1 << 30);
        assert!(parse_size("GB", false).is_err());
        assert!(parse_size("-1GB", false).is_err());
    }

    #[test]
    fn memory_budget_takes_fractions_or_sizes() {
        assert_eq!(MemoryBudget::parse("0.5").unwrap(), MemoryBudget::Fraction(0.5));
        assert_eq!(MemoryBudget::parse("1.5GiB").unwrap(), MemoryBudget::Bytes(3 << 29));
        assert!(MemoryBudget::parse("0.99").is_err());
        assert!(MemoryBudget::parse("0").is_err());
        assert!(MemoryBudget::parse("lots").is_err());
    }

    #[test]
    fn method_names_are_unsloths() {
        assert_eq!(SaveMethod::parse("lora").unwrap(), SaveMethod::Lora);
        assert_eq!(SaveMethod::parse("merged_16bit").unwrap().as_str(), "merged_16bit");
        assert_eq!(SaveMethod::parse("gguf").unwrap(), SaveMethod::Gguf);
        assert_eq!(
            GgufTarget::parse_list("quantized, Q8_0,not_quantized,q4_k_m").unwrap(),
            [
                GgufTarget::File(FileType::Q4KM),
                GgufTarget::File(FileType::Q8_0),
                GgufTarget::NotQuantized
            ]
        );
        assert_eq!(
            GgufTarget::parse("fast_quantized").unwrap(),
            GgufTarget::File(FileType::Q8_0)
        );
        let e = GgufTarget::parse("q4_km").unwrap_err().to_string();
        assert!(e.contains("did you mean q4_k_m"), "{e}");
        assert_eq!(SaveMethod::parse("merged_4bit").unwrap(), SaveMethod::Merged4bit);
    }
}
