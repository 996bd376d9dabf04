//! The job, decided once: [`crate::SaveOptions`] validated into what to write, in which format,
//! with which budget, on which backend, and the test hooks read from the environment. Everything
//! after that reads the job (the plan carries it), never the options: the way ripgrep turns its
//! low-level arguments into the high-level ones that build the searcher and the printer.

use crate::format::bnb::QuantType;
use crate::format::dtype::FloatDtype;
pub use crate::format::gguf_rules::FileType;
use crate::sys::MemoryBudget;

/// How to save: Unsloth's `save_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveMethod {
    /// Write the adapter as is (optionally cast), with tokenizer files and a model card.
    Lora,
    /// Merge into the base and write 16-bit (or f32) safetensors.
    Merged16bit,
    /// Merge and write bitsandbytes 4-bit safetensors.
    Merged4bit,
    /// Merge and write GGUF files for llama.cpp (one per quantization method).
    Gguf,
}

impl SaveMethod {
    /// The Unsloth name.
    pub fn as_str(self) -> &'static str {
        match self {
            SaveMethod::Lora => "lora",
            SaveMethod::Merged16bit => "merged_16bit",
            SaveMethod::Merged4bit => "merged_4bit",
            SaveMethod::Gguf => "gguf",
        }
    }

    /// Whether the output is the base with the adapter merged in (it needs the base's weights).
    pub fn merges(self) -> bool {
        self != SaveMethod::Lora
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

/// How `merged_4bit` quantizes: bitsandbytes 4-bit settings (from a 4-bit base, each weight
/// keeps its own; these apply to weights of a 16-bit base).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantSpec {
    /// NF4 or FP4.
    pub quant_type: QuantType,
    /// Elements per block.
    pub blocksize: u64,
    /// Double quantization.
    pub double_quant: bool,
}

/// One GGUF file to write: an entry of Unsloth's `quantization_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufTarget {
    /// `not_quantized`: the merged model's own 16-bit type (bf16 or f16).
    NotQuantized,
    /// A llama.cpp file type (`fast_quantized` is q8_0, `quantized` q4_k_m).
    File(FileType),
}

impl GgufTarget {
    /// The name it is asked by.
    pub fn name(self) -> &'static str {
        match self {
            GgufTarget::NotQuantized => "not_quantized",
            GgufTarget::File(ft) => ft.name(),
        }
    }
}

/// What a GGUF save writes and how it reproduces llama.cpp's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufSpec {
    /// The files, in the order asked (the Modelfile names the first).
    pub targets: Vec<GgufTarget>,
    /// `general.name` (the converter's `--model-name`); `None`: the base model's name.
    pub model_name: Option<String>,
    /// The 16-bit GGUF `llama-quantize` starts from in the route reproduced (bf16 or f16).
    pub intermediate: FloatDtype,
    /// The shard limit of the merged checkpoint the converter reads: its files' order is the
    /// order of the tensors in f16/bf16/q8_0 files.
    pub merged_shard_size: u64,
    /// Also write the `general.base_model.*` and `general.tags` keys the converter copies from
    /// the model card `merged_16bit` writes.
    pub card_metadata: bool,
}

/// The output format and how its files are cut. The packer writes through the writer's
/// format seam: sharded safetensors, or GGUF files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputFormat {
    /// Sharded safetensors, laid out as transformers and huggingface_hub do.
    Safetensors {
        /// Largest shard in bytes (a larger tensor gets a shard of its own).
        max_shard_size: u64,
        /// Which tensors share a shard.
        order: ShardOrder,
        /// Weight-file variant (`model.<variant>-00001-of-00002.safetensors`).
        variant: Option<String>,
    },
    /// GGUF files for llama.cpp.
    Gguf(GgufSpec),
}

/// How much memory the run may use, interpreted once: host bytes for the pipeline's tiles and
/// buffers; the device's share is a fraction or size of *free VRAM*, which only the GPU
/// backend can know, so it gets the budget as given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Host bytes (`--maximum-memory-usage` resolved against `MemAvailable`).
    pub host_bytes: u64,
    /// The same setting, for the GPU backend to apply to free device memory.
    pub device: MemoryBudget,
}

/// The compute backend to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendChoice {
    /// auto, cpu or cuda.
    pub device: DeviceChoice,
    /// Host threads; `None` = one per core.
    pub threads: Option<usize>,
    /// `LORAWELD_CUDA_JIT`: load the kernels from PTX even when a cubin is embedded.
    pub cuda_jit: bool,
}

/// Test hooks, read from the environment once with the options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hooks {
    /// `LORAWELD_NO_DISK_PREFLIGHT=1`: skip the free-space check (to fill a disk mid-write).
    pub no_disk_preflight: bool,
    /// `LORAWELD_COPY_FILE_RANGE=always|never`: force or forbid cloning pass-through ranges.
    pub copy_file_range: Option<bool>,
}

impl Hooks {
    /// Reads the hooks' environment variables.
    pub fn from_env() -> Self {
        Hooks {
            no_disk_preflight: std::env::var_os("LORAWELD_NO_DISK_PREFLIGHT").is_some_and(|v| v != "0"),
            copy_file_range: match std::env::var_os("LORAWELD_COPY_FILE_RANGE") {
                Some(v) if v == "always" => Some(true),
                Some(v) if v == "never" => Some(false),
                _ => None,
            },
        }
    }
}

/// What a save does, decided once.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// lora, merged_16bit or merged_4bit.
    pub method: SaveMethod,
    /// The files to write.
    pub output: OutputFormat,
    /// Output dtype of floating tensors; `None` = the base's own.
    pub dtype: Option<FloatDtype>,
    /// `merged_4bit`: the 4-bit settings; `None` for the other methods.
    pub quantize: Option<QuantSpec>,
    /// `padding_side` in the tokenizer config.
    pub padding_side: PaddingSide,
    /// With tied embeddings, write the merged head beside an unchanged input embedding.
    pub untie_embeddings: bool,
    /// Let NaN/Inf produced by a merge through.
    pub allow_nonfinite: bool,
    /// Memory.
    pub budget: Budget,
    /// The compute backend.
    pub backend: BackendChoice,
    /// Test hooks.
    pub hooks: Hooks,
}

impl Job {
    /// A `merged_16bit` job with the documented defaults (for `inspect`'s coverage check and
    /// tests).
    pub fn merged_16bit() -> Self {
        Job {
            method: SaveMethod::Merged16bit,
            output: OutputFormat::Safetensors {
                max_shard_size: 5_000_000_000,
                order: ShardOrder::Natural,
                variant: None,
            },
            dtype: None,
            quantize: None,
            padding_side: PaddingSide::Left,
            untie_embeddings: false,
            allow_nonfinite: false,
            budget: Budget {
                host_bytes: 1 << 30,
                device: MemoryBudget::Bytes(1 << 30),
            },
            backend: BackendChoice {
                device: DeviceChoice::Cpu,
                threads: None,
                cuda_jit: false,
            },
            hooks: Hooks::default(),
        }
    }

    /// The shard limit, order and variant of a safetensors output (for GGUF: of the merged
    /// checkpoint the converter would read).
    pub fn safetensors_layout(&self) -> (u64, ShardOrder, Option<&str>) {
        match &self.output {
            OutputFormat::Safetensors {
                max_shard_size,
                order,
                variant,
            } => (*max_shard_size, *order, variant.as_deref()),
            OutputFormat::Gguf(g) => (g.merged_shard_size, ShardOrder::Natural, None),
        }
    }

    /// The GGUF settings, for a GGUF save.
    pub fn gguf(&self) -> Option<&GgufSpec> {
        match &self.output {
            OutputFormat::Gguf(g) => Some(g),
            OutputFormat::Safetensors { .. } => None,
        }
    }
}
