//! What the user asked for: [`SaveOptions`] and the small value types it is built from.
//!
//! Names follow Unsloth's `unsloth_save_model` (`save_method`, `max_shard_size`,
//! `maximum_memory_usage`, …) so a Python user finds the same knobs.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::hub::{HubConfig, PushOptions};

/// How to save: Unsloth's `save_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveMethod {
    /// Write the adapter as is (optionally cast), with tokenizer files and a model card.
    Lora,
    /// Merge into the base and write 16-bit (or f32) safetensors.
    Merged16bit,
    /// Merge and write bitsandbytes 4-bit safetensors.
    Merged4bit,
}

impl SaveMethod {
    /// Parses `lora` | `merged_16bit`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "lora" => Ok(SaveMethod::Lora),
            "merged_16bit" => Ok(SaveMethod::Merged16bit),
            "merged_4bit" | "merged_4bit_forced" => Ok(SaveMethod::Merged4bit),
            _ => Err(Error::Usage(format!(
                "--save-method: expected lora, merged_16bit or merged_4bit, got `{s}`"
            ))),
        }
    }

    /// The Unsloth name.
    pub fn as_str(self) -> &'static str {
        match self {
            SaveMethod::Lora => "lora",
            SaveMethod::Merged16bit => "merged_16bit",
            SaveMethod::Merged4bit => "merged_4bit",
        }
    }
}

/// A floating output dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatDtype {
    /// bfloat16
    Bf16,
    /// IEEE half
    F16,
    /// IEEE single
    F32,
}

impl FloatDtype {
    /// Parses `bf16|bfloat16`, `fp16|f16|float16`, `f32|fp32|float32`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "bf16" | "bfloat16" => Ok(FloatDtype::Bf16),
            "fp16" | "f16" | "float16" | "half" => Ok(FloatDtype::F16),
            "f32" | "fp32" | "float32" | "float" => Ok(FloatDtype::F32),
            _ => Err(Error::Usage(format!("--dtype: expected bf16, fp16 or f32, got `{s}`"))),
        }
    }

    /// The torch name written into `config.json` (`bfloat16`, `float16`, `float32`).
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatDtype::Bf16 => "bfloat16",
            FloatDtype::F16 => "float16",
            FloatDtype::F32 => "float32",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FloatDtype::Bf16 | FloatDtype::F16 => 2,
            FloatDtype::F32 => 4,
        }
    }
}

/// Which order decides shard membership (safetensors sorts inside each file anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardOrder {
    /// transformers v5 `save_pretrained` after `from_pretrained` (`dot_natural_key`): what
    /// PEFT `merge_and_unload()` + `save_pretrained` writes today. The default.
    Natural,
    /// Module registration order for Llama-family names (transformers v4, and v5 models built
    /// with `from_config`): embeddings, then per layer attention, MLP, norms; final norm; head.
    Module,
}

impl ShardOrder {
    /// Parses `natural` | `module`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "natural" => Ok(ShardOrder::Natural),
            "module" => Ok(ShardOrder::Module),
            _ => Err(Error::Usage(format!(
                "--shard-order: expected natural or module, got `{s}`"
            ))),
        }
    }
}

/// What to do with `padding_side` in `tokenizer_config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingSide {
    /// Set `"left"` (inference-ready, as Unsloth does). The default.
    Left,
    /// Set `"right"`.
    Right,
    /// Leave the file untouched.
    Keep,
}

impl PaddingSide {
    /// Parses `left|right|keep`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "left" => Ok(PaddingSide::Left),
            "right" => Ok(PaddingSide::Right),
            "keep" => Ok(PaddingSide::Keep),
            _ => Err(Error::Usage(format!(
                "--padding-side: expected left, right or keep, got `{s}`"
            ))),
        }
    }
}

/// Which compute backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The GPU when the build and the machine have one, else the CPU with a notice.
    Auto,
    /// The CPU (rayon + SIMD).
    Cpu,
    /// The GPU, or fail.
    Cuda,
}

impl DeviceChoice {
    /// Parses `auto|cpu|cuda`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            _ => Err(Error::Usage(format!("--device: expected auto, cpu or cuda, got `{s}`"))),
        }
    }
}

/// The memory budget: a fraction of `MemAvailable`, or an absolute size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryBudget {
    /// 0 < x ≤ 0.95 of available RAM.
    Fraction(f64),
    /// Bytes.
    Bytes(u64),
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

    /// Resolves the budget to bytes, reading `MemAvailable` for a fraction.
    pub fn bytes(self) -> u64 {
        match self {
            MemoryBudget::Bytes(b) => b,
            MemoryBudget::Fraction(f) => (mem_available().unwrap_or(4 << 30) as f64 * f) as u64,
        }
    }
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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
    /// Draw a progress bar on stderr (the CLI sets this when stderr is a terminal).
    pub progress: bool,
    /// `merged_4bit` from a 16-bit base: quant type.
    pub quant_type: crate::quant::bnb::QuantType,
    /// `merged_4bit` from a 16-bit base: block size.
    pub blocksize: u64,
    /// `merged_4bit` from a 16-bit base: double quantization.
    pub double_quant: bool,
    /// The Hub: endpoint, cache, token, offline (for repo-id inputs and pushes).
    pub hub: HubConfig,
    /// Push the saved directory to this repo afterwards (`--push-to-hub`).
    pub push_to_hub: Option<PushOptions>,
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
            progress: false,
            quant_type: crate::quant::bnb::QuantType::Nf4,
            blocksize: 64,
            double_quant: true,
            // The one place the library reads the Hub's environment variables.
            hub: HubConfig::from_env(None),
            push_to_hub: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(SaveMethod::parse("gguf").is_err());
        assert_eq!(SaveMethod::parse("merged_4bit").unwrap(), SaveMethod::Merged4bit);
    }
}
