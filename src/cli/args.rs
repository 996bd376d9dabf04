//! The command line: clap's structs, validated once into the library's options.

use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Parser, Subcommand, ValueHint};
use loraweld::options::parse_size;
use loraweld::{
    DeviceChoice, Error, FloatDtype, GgufTarget, HubConfig, MemoryBudget, PaddingSide, ProgressHook, PushOptions,
    SaveMethod, SaveOptions, ShardOrder,
};

const AFTER_HELP: &str = "\
Examples:
  # merge a LoRA into its 16-bit or bitsandbytes 4-bit base (base from adapter_config.json)
  loraweld save my-adapter merged

  # same, with an explicit base, 2 GB shards and fp16 output
  loraweld save my-adapter merged --base ./Llama-3-8B-bnb-4bit --max-shard-size 2GB --dtype fp16

  # write the adapter itself, with tokenizer files and a model card
  loraweld save my-adapter out --save-method lora

  # GGUF for llama.cpp / Ollama in one pass: Q4_K_M and Q8_0, byte-identical with llama.cpp's tools
  loraweld save my-adapter gguf --save-method gguf --quantization-method q4_k_m,q8_0

  # show the plan (tensors merged/copied, output bytes, shard count, free disk) and stop
  loraweld save my-adapter merged --dry-run

  # inputs from the Hub by repo id (cached in $HF_HOME/hub), output pushed to the Hub
  loraweld save me/my-adapter@main merged --base unsloth/llama-3-8b-bnb-4bit --push-to-hub me/my-model

  # push a saved directory
  loraweld push merged me/my-model --private --tags unsloth,llama

Exit codes:
  0  success (also when OUT was already up to date)
  1  runtime failure: I/O error, Hub unreachable, interrupted (run again to resume), verify failed
  2  bad input or usage: malformed file, adapter that does not fit its base, bad value, OUT not ours
  3  resources: not enough disk space (checked before heavy work, or the disk filled while writing)";

/// Save fine-tuned models: write a LoRA adapter, or merge it into its base as sharded safetensors
/// or GGUF.
#[derive(Parser, Debug)]
#[command(name = "loraweld", version, about, after_help = AFTER_HELP, term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Save an adapter (`lora`) or merge it into its base (`merged_16bit`, `merged_4bit`, `gguf`).
    #[command(after_help = AFTER_HELP)]
    Save(SaveArgs),
    /// Push a saved directory to a Hub model repo (LFS upload + one commit).
    #[command(after_help = AFTER_HELP)]
    Push(PushArgs),
    /// Re-hash every shard against the manifest and check headers and the index (exit 0 or 1).
    Verify(VerifyArgs),
    /// Show the tensors, dtypes, shapes, quant types and parameter count of a model, adapter or
    /// file (safetensors or GGUF, with its metadata).
    Inspect(InspectArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionArgs),
}

impl Command {
    /// Whether the answer goes to stdout as JSON (errors too).
    pub fn json(&self) -> bool {
        match self {
            Command::Save(a) => a.json,
            Command::Push(a) => a.json,
            Command::Verify(a) => a.json,
            Command::Inspect(a) => a.json,
            Command::Completions(_) => false,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// A directory written by `loraweld save` (or any safetensors model directory).
    pub dir: PathBuf,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A model directory, an adapter directory, or one .safetensors file.
    pub path: PathBuf,
    /// For an adapter: the base to check its coverage against.
    #[arg(long, value_name = "PATH")]
    pub base: Option<PathBuf>,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct CompletionArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// The Hub flags shared by `save --push-to-hub` and `push`.
#[derive(clap::Args, Debug)]
pub struct HubArgs {
    /// Hub token [default: HF_TOKEN, then HF_TOKEN_PATH or $HF_HOME/token]; never printed.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Create the repo private (an existing repo keeps its visibility).
    #[arg(long)]
    pub private: bool,
    /// Branch to push to, created from main if missing [default: main].
    #[arg(long, value_name = "BRANCH")]
    pub revision: Option<String>,
    /// Open a pull request instead of committing to the branch.
    #[arg(long)]
    pub create_pr: bool,
    /// Commit title [default: "Upload model with loraweld"].
    #[arg(long, value_name = "TEXT")]
    pub commit_message: Option<String>,
    /// Commit description.
    #[arg(long, value_name = "TEXT")]
    pub commit_description: Option<String>,
    /// Tags added to the model card's front matter (comma-separated or repeated).
    #[arg(long, value_name = "TAG", value_delimiter = ',')]
    pub tags: Vec<String>,
}

impl HubArgs {
    pub fn push_options(&self, repo: &str) -> PushOptions {
        let mut p = PushOptions::new(repo);
        p.private = self.private;
        p.revision = self.revision.clone();
        p.create_pr = self.create_pr;
        p.commit_message = self.commit_message.clone();
        p.commit_description = self.commit_description.clone();
        p.tags = self.tags.clone();
        p
    }

    /// The first push-only flag given, to refuse it without `--push-to-hub`.
    fn push_only_flag(&self) -> Option<&'static str> {
        [
            (self.private, "--private"),
            (self.revision.is_some(), "--revision"),
            (self.create_pr, "--create-pr"),
            (self.commit_message.is_some(), "--commit-message"),
            (self.commit_description.is_some(), "--commit-description"),
            (!self.tags.is_empty(), "--tags"),
        ]
        .into_iter()
        .find_map(|(set, name)| set.then_some(name))
    }
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// The saved directory to push (every file but loraweld-manifest.json).
    pub dir: PathBuf,
    /// The model repo, `owner/name`; created if missing.
    pub repo: String,
    #[command(flatten)]
    pub hub: HubArgs,
    /// Where the model card with --tags is staged [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub temporary_location: Option<PathBuf>,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Progress bars only for a person watching: stderr is a terminal and no JSON is wanted.
pub fn bars(json: bool) -> Option<ProgressHook> {
    (std::io::IsTerminal::is_terminal(&std::io::stderr()) && !json).then(super::progress::stderr_bars)
}

/// A clap parser over a fixed list of names (shell completions offer them); `hidden` are other
/// spellings that parse but are not offered.
fn choices(names: &'static [&'static str], hidden: &'static [&'static str]) -> PossibleValuesParser {
    PossibleValuesParser::new(
        names
            .iter()
            .map(|n| PossibleValue::new(*n))
            .chain(hidden.iter().map(|h| PossibleValue::new(*h).hide(true))),
    )
}

fn save_methods() -> PossibleValuesParser {
    PossibleValuesParser::new([
        PossibleValue::new("lora").help("the adapter as is (or cast with --dtype), tokenizer files, a model card"),
        PossibleValue::new("merged_16bit")
            .help("the adapter merged into its base (16-bit or bnb 4-bit), as 16-bit safetensors"),
        PossibleValue::new("merged_4bit").alias("merged_4bit_forced").help(
            "merged, then written as bitsandbytes 4-bit: from a 4-bit base requantized with its settings, \
             from a 16-bit base with --quant-type/--blocksize (merged_4bit_forced, Unsloth's name, is the same)",
        ),
        PossibleValue::new("gguf").help(
            "merged, then written as GGUF files for llama.cpp / Ollama, one per --quantization-method, \
             byte-identical with llama.cpp's converter and llama-quantize; no 16-bit copy on disk",
        ),
    ])
}

#[derive(clap::Args, Debug)]
pub struct SaveArgs {
    /// PEFT adapter: a directory, or a Hub repo id `owner/name[@revision]`.
    #[arg(value_hint = ValueHint::DirPath)]
    pub adapter: PathBuf,
    /// Output directory; created atomically (staged, then renamed).
    #[arg(value_hint = ValueHint::DirPath)]
    pub out: PathBuf,
    /// Base model: a directory or a Hub repo id [default: the adapter's base_model_name_or_path].
    #[arg(long, value_name = "PATH|REPO", value_hint = ValueHint::DirPath)]
    pub base: Option<PathBuf>,
    /// What to write: lora (the adapter), merged_16bit or merged_4bit (merged into the base), gguf.
    #[arg(long, default_value = "merged_16bit", value_name = "METHOD", value_parser = save_methods())]
    pub save_method: String,
    /// Output dtype [default: the base's own].
    #[arg(long, value_name = "DTYPE", value_parser = choices(FloatDtype::NAMES, FloatDtype::ALIASES))]
    pub dtype: Option<String>,
    /// Largest shard, decimal units (5GB = 5,000,000,000 bytes), as transformers.
    #[arg(
        long,
        default_value = "5GB",
        value_name = "SIZE",
        long_help = "Largest output shard. Decimal units as transformers and huggingface_hub parse them: KB, MB, GB, TB = 10^3 … 10^12 bytes (GiB is refused there, so here too); at least 1MB. A tensor larger than the limit gets a shard of its own."
    )]
    pub max_shard_size: String,
    /// Memory budget: a fraction of available RAM (0 < x <= 0.95) or a size (1.5GiB; at least 64MiB).
    #[arg(long, default_value = "0.9", value_name = "FRACTION|SIZE")]
    pub maximum_memory_usage: String,
    /// Compute threads, at least 1 [default: one per core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Print the plan (and what would happen to an existing OUT) and exit without writing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Print a JSON report on stdout (on failure: the error, with every problem listed).
    #[arg(long)]
    pub json: bool,
    /// Weight-file variant: model.<NAME>-00001-of-00002.safetensors, model.safetensors.index.<NAME>.json.
    #[arg(long, value_name = "NAME")]
    pub variant: Option<String>,
    /// padding_side in tokenizer_config.json: left (inference-ready), right, or keep.
    #[arg(long, default_value = "left", value_name = "SIDE", value_parser = choices(PaddingSide::NAMES, &[]))]
    pub padding_side: String,
    /// Order that assigns tensors to shards: natural (transformers v5) or module (registration order).
    #[arg(
        long,
        default_value = "natural",
        value_name = "ORDER",
        value_parser = choices(ShardOrder::NAMES, &[]),
        long_help = "Order that decides which tensors share a shard (each file is sorted by dtype and name anyway):\n  natural  transformers v5 save_pretrained after from_pretrained (what PEFT\n           merge_and_unload + save_pretrained writes)\n  module   module registration order for Llama-family names (transformers v4;\n           v5 models built from_config)"
    )]
    pub shard_order: String,
    /// Compute device: auto (the GPU if this build and machine have one), cpu or cuda.
    #[arg(long, default_value = "auto", value_name = "DEVICE", value_parser = choices(DeviceChoice::NAMES, &[]))]
    pub device: String,
    /// Where output is staged before the final rename [default: beside OUT].
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub temporary_location: Option<PathBuf>,
    /// Let NaN/Inf produced by a merge through instead of failing.
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// Replace OUT if loraweld wrote it (its manifest names every file there) or it is empty.
    #[arg(long)]
    pub force: bool,
    /// merged_4bit from a 16-bit base: nf4 or fp4 [default: nf4].
    #[arg(long, value_name = "TYPE", value_parser = choices(&["nf4", "fp4"], &[]))]
    pub quant_type: Option<String>,
    /// merged_4bit from a 16-bit base: elements per absmax block, a power of two 32-4096 [default: 64].
    #[arg(long, value_name = "N")]
    pub blocksize: Option<u64>,
    /// merged_4bit from a 16-bit base: no double quantization of the absmax values.
    #[arg(long)]
    pub no_double_quant: bool,
    /// With tied embeddings, write the merged head beside an unchanged input embedding.
    #[arg(
        long,
        long_help = "With tied embeddings (only the input embedding stored), a LoRA on lm_head changes the shared matrix, so the input embedding changes too: that is what PEFT does, and the default. With this flag, lm_head.weight = W + delta is written beside an unchanged embedding and tie_word_embeddings is set to false, so the merged model computes what the adapter model computed."
    )]
    pub untie_embeddings: bool,
    /// gguf: comma-separated methods, one .gguf each: not_quantized, fast_quantized (q8_0),
    /// quantized (q4_k_m), or f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s/m/l,
    /// q4_k_s/m, q5_k_s/m, q6_k [default: fast_quantized].
    #[arg(long, value_name = "LIST")]
    pub quantization_method: Option<String>,
    /// gguf: general.name in the files (the converter's --model-name) [default: the base's name].
    #[arg(long, value_name = "NAME")]
    pub model_name: Option<String>,
    /// gguf: the 16-bit GGUF llama-quantize types are made from in the route reproduced: bf16
    /// or f16 (they differ where f16 has subnormals).
    #[arg(long, default_value = "bf16", value_name = "DTYPE")]
    pub gguf_intermediate: String,
    /// gguf: also write general.base_model.* and general.tags, as llama.cpp's converter copies
    /// them from the model card of the merged checkpoint.
    #[arg(long)]
    pub gguf_card_metadata: bool,
    /// After saving, push OUT to this Hub model repo (shards upload while the merge runs).
    #[arg(long, value_name = "OWNER/NAME")]
    pub push_to_hub: Option<String>,
    #[command(flatten)]
    pub hub: HubArgs,
}

impl SaveArgs {
    pub fn options(&self) -> Result<SaveOptions, Error> {
        let mut o = SaveOptions::new(&self.adapter, &self.out);
        o.base = self.base.clone();
        o.save_method = SaveMethod::parse(&self.save_method)?;
        o.dtype = self.dtype.as_deref().map(FloatDtype::parse).transpose()?;
        o.max_shard_size = parse_size(&self.max_shard_size, false).map_err(|_| {
            Error::Usage(format!(
                "--max-shard-size {}: expected a size like 5GB or 500MB (decimal units)",
                self.max_shard_size
            ))
        })?;
        o.maximum_memory_usage = MemoryBudget::parse(&self.maximum_memory_usage)?;
        o.threads = self.threads;
        o.dry_run = self.dry_run;
        o.variant = self.variant.clone();
        if let Some(v) = &o.variant {
            if v.is_empty() || v.contains(['/', '\\']) {
                return Err(Error::Usage(format!("--variant `{v}`: expected a plain name")));
            }
        }
        o.padding_side = PaddingSide::parse(&self.padding_side)?;
        o.shard_order = ShardOrder::parse(&self.shard_order)?;
        o.device = DeviceChoice::parse(&self.device)?;
        o.temporary_location = self.temporary_location.clone();
        o.allow_nonfinite = self.allow_nonfinite;
        o.force = self.force;
        o.untie_embeddings = self.untie_embeddings;
        o.progress = bars(self.json);
        // The 4-bit settings mean something only when the output is quantized: refuse them
        // elsewhere rather than ignore them.
        if o.save_method != SaveMethod::Merged4bit {
            let given = [
                (self.quant_type.is_some(), "--quant-type"),
                (self.blocksize.is_some(), "--blocksize"),
                (self.no_double_quant, "--no-double-quant"),
            ];
            if let Some((_, flag)) = given.iter().find(|(set, _)| *set) {
                return Err(Error::Usage(format!(
                    "{flag}: only with --save-method merged_4bit (--save-method {} does not quantize)",
                    o.save_method.as_str()
                )));
            }
        }
        if let Some(q) = &self.quant_type {
            o.quant_type = loraweld::options::parse_quant_type(q)?;
        }
        if let Some(b) = self.blocksize {
            o.blocksize = b;
        }
        o.double_quant = !self.no_double_quant;
        let lora_gguf = o.save_method == SaveMethod::Lora && self.quantization_method.is_some();
        if o.save_method == SaveMethod::Gguf || lora_gguf {
            if let Some(q) = &self.quantization_method {
                o.quantization_method = Some(GgufTarget::parse_list(q)?);
            }
            o.model_name = self.model_name.clone();
            o.gguf_intermediate = FloatDtype::parse(&self.gguf_intermediate)?;
            o.gguf_card_metadata = self.gguf_card_metadata;
        } else if self.quantization_method.is_some() || self.model_name.is_some() {
            return Err(Error::Usage(format!(
                "{}: only with --save-method gguf (or lora with --quantization-method)",
                if self.quantization_method.is_some() {
                    "--quantization-method"
                } else {
                    "--model-name"
                }
            )));
        }
        // The command ends when the save does.
        o.process_exits_after = true;
        o.hub = HubConfig::from_env(self.hub.token.as_deref());
        o.hub.progress = o.progress.clone();
        match &self.push_to_hub {
            Some(repo) => o.push_to_hub = Some(self.hub.push_options(repo)),
            None => {
                if let Some(flag) = self.hub.push_only_flag() {
                    return Err(Error::Usage(format!("{flag}: only with --push-to-hub")));
                }
            }
        }
        o.validate()?;
        Ok(o)
    }
}
