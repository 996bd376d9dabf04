//! The `loraweld` command: parses arguments, calls the library, prints one line on error.

use std::path::PathBuf;
use std::process::ExitCode as ProcessExit;

use clap::{Parser, Subcommand};
use loraweld::hub::{HubConfig, PushOptions, PushReport};
use loraweld::options::parse_size;
use loraweld::{
    DeviceChoice, Error, ExitCode, FloatDtype, MemoryBudget, PaddingSide, SaveMethod, SaveOptions, ShardOrder,
};

const AFTER_HELP: &str = "\
Examples:
  # merge a LoRA into its 16-bit or bitsandbytes 4-bit base (base from adapter_config.json)
  loraweld save my-adapter merged

  # same, with an explicit base, 2 GB shards and fp16 output
  loraweld save my-adapter merged --base ./Llama-3-8B-bnb-4bit --max-shard-size 2GB --dtype fp16

  # write the adapter itself, with tokenizer files and a model card
  loraweld save my-adapter out --save-method lora

  # show the plan (tensors merged/copied, output bytes, shard count, free disk) and stop
  loraweld save my-adapter merged --dry-run

  # inputs from the Hub by repo id (cached in $HF_HOME/hub), output pushed to the Hub
  loraweld save me/my-adapter@main merged --base unsloth/llama-3-8b-bnb-4bit --push-to-hub me/my-model

  # push a saved directory
  loraweld push merged me/my-model --private --tags unsloth,llama

Exit codes:
  0  success
  1  runtime failure (I/O error while writing, internal error)
  2  bad input or usage (malformed file, adapter that does not fit its base, bad flag)
  3  resources (not enough disk space or memory)";

/// Save fine-tuned models: write a LoRA adapter, or merge it into its base as sharded safetensors.
#[derive(Parser, Debug)]
#[command(name = "loraweld", version, about, after_help = AFTER_HELP, term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Save an adapter (`lora`) or merge it into its base (`merged_16bit`, `merged_4bit`).
    #[command(after_help = AFTER_HELP)]
    Save(SaveArgs),
    /// Push a saved directory to a Hub model repo (LFS upload + one commit).
    #[command(after_help = AFTER_HELP)]
    Push(PushArgs),
    /// Re-hash every shard against the manifest and check headers and the index (exit 0 or 1).
    Verify(VerifyArgs),
    /// Show the tensors, dtypes, shapes, quant types and parameter count of a model, adapter or file.
    Inspect(InspectArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionArgs),
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// A directory written by `loraweld save` (or any safetensors model directory).
    dir: PathBuf,
    /// Print a JSON report on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct InspectArgs {
    /// A model directory, an adapter directory, or one .safetensors file.
    path: PathBuf,
    /// For an adapter: the base to check its coverage against.
    #[arg(long, value_name = "PATH")]
    base: Option<PathBuf>,
    /// Print a JSON report on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct CompletionArgs {
    /// The shell.
    shell: clap_complete::Shell,
}

/// The Hub flags shared by `save --push-to-hub` and `push`.
#[derive(clap::Args, Debug)]
struct HubArgs {
    /// Hub token [default: HF_TOKEN, then HF_TOKEN_PATH or $HF_HOME/token]; never printed.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Create the repo private (an existing repo keeps its visibility).
    #[arg(long)]
    private: bool,
    /// Branch to push to, created from main if missing [default: main].
    #[arg(long, value_name = "BRANCH")]
    revision: Option<String>,
    /// Open a pull request instead of committing to the branch.
    #[arg(long)]
    create_pr: bool,
    /// Commit title [default: "Upload model with loraweld"].
    #[arg(long, value_name = "TEXT")]
    commit_message: Option<String>,
    /// Commit description.
    #[arg(long, value_name = "TEXT")]
    commit_description: Option<String>,
    /// Tags added to the model card's front matter (comma-separated or repeated).
    #[arg(long, value_name = "TAG", value_delimiter = ',')]
    tags: Vec<String>,
}

impl HubArgs {
    fn push_options(&self, repo: &str) -> PushOptions {
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
struct PushArgs {
    /// The saved directory to push (every file but loraweld-manifest.json).
    dir: PathBuf,
    /// The model repo, `owner/name`; created if missing.
    repo: String,
    #[command(flatten)]
    hub: HubArgs,
    /// Where the model card with --tags is staged [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    temporary_location: Option<PathBuf>,
    /// Print a JSON report on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct SaveArgs {
    /// PEFT adapter: a directory, or a Hub repo id `owner/name[@revision]`.
    adapter: PathBuf,
    /// Output directory; created atomically (staged, then renamed).
    out: PathBuf,
    /// Base model: a directory or a Hub repo id [default: the adapter's base_model_name_or_path].
    #[arg(long, value_name = "PATH|REPO")]
    base: Option<PathBuf>,
    /// What to write: `lora` (the adapter) or `merged_16bit` (merged weights).
    #[arg(
        long,
        default_value = "merged_16bit",
        value_name = "METHOD",
        long_help = "What to write, by Unsloth's names:\n  lora          the adapter as is (or cast with --dtype), tokenizer files, a model card\n  merged_16bit  the adapter merged into its base (16-bit or bnb 4-bit), as 16-bit\n                safetensors\n  merged_4bit   merged and written as bitsandbytes 4-bit safetensors: from a 4-bit base\n                the updated weights are requantized with the base's settings, from a\n                16-bit base with --quant-type"
    )]
    save_method: String,
    /// Output dtype: bf16, fp16 or f32 [default: the base's own].
    #[arg(long, value_name = "DTYPE")]
    dtype: Option<String>,
    /// Largest shard, decimal units (5GB = 5,000,000,000 bytes), as transformers.
    #[arg(
        long,
        default_value = "5GB",
        value_name = "SIZE",
        long_help = "Largest output shard. Decimal units as transformers and huggingface_hub parse them: KB, MB, GB, TB = 10^3 … 10^12 bytes (GiB is refused there, so here too). A tensor larger than the limit gets a shard of its own."
    )]
    max_shard_size: String,
    /// Memory budget: a fraction of available RAM (0 < x <= 0.95) or a size (1.5GiB).
    #[arg(long, default_value = "0.9", value_name = "FRACTION|SIZE")]
    maximum_memory_usage: String,
    /// Compute threads [default: one per core].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Print the plan and exit without writing anything.
    #[arg(long)]
    dry_run: bool,
    /// Print a JSON report on stdout.
    #[arg(long)]
    json: bool,
    /// Weight-file variant: model.<NAME>-00001-of-00002.safetensors, model.safetensors.index.<NAME>.json.
    #[arg(long, value_name = "NAME")]
    variant: Option<String>,
    /// padding_side in tokenizer_config.json: left (inference-ready, default), right, or keep.
    #[arg(long, default_value = "left", value_name = "SIDE")]
    padding_side: String,
    /// Order that assigns tensors to shards: natural (transformers v5) or module (registration order).
    #[arg(
        long,
        default_value = "natural",
        value_name = "ORDER",
        long_help = "Order that decides which tensors share a shard (each file is sorted by dtype and name anyway):\n  natural  transformers v5 save_pretrained after from_pretrained (what PEFT\n           merge_and_unload + save_pretrained writes)\n  module   module registration order for Llama-family names (transformers v4;\n           v5 models built from_config)"
    )]
    shard_order: String,
    /// Compute device: auto, cpu or cuda.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: String,
    /// Where output is staged before the final rename [default: beside OUT].
    #[arg(long, value_name = "DIR")]
    temporary_location: Option<PathBuf>,
    /// Let NaN/Inf produced by a merge through instead of failing.
    #[arg(long)]
    allow_nonfinite: bool,
    /// Replace OUT if it exists.
    #[arg(long)]
    force: bool,
    /// merged_4bit from a 16-bit base: nf4 (default) or fp4.
    #[arg(long, default_value = "nf4", value_name = "TYPE")]
    quant_type: String,
    /// merged_4bit from a 16-bit base: elements per absmax block.
    #[arg(long, default_value_t = 64, value_name = "N")]
    blocksize: u64,
    /// merged_4bit from a 16-bit base: no double quantization of the absmax values.
    #[arg(long)]
    no_double_quant: bool,
    /// With tied embeddings, write the merged head beside an unchanged input embedding.
    #[arg(
        long,
        long_help = "With tied embeddings (only the input embedding stored), a LoRA on lm_head changes the shared matrix, so the input embedding changes too: that is what PEFT does, and the default. With this flag, lm_head.weight = W + delta is written beside an unchanged embedding and tie_word_embeddings is set to false, so the merged model computes what the adapter model computed."
    )]
    untie_embeddings: bool,
    /// After saving, push OUT to this Hub model repo (shards upload while the merge runs).
    #[arg(long, value_name = "OWNER/NAME")]
    push_to_hub: Option<String>,
    #[command(flatten)]
    hub: HubArgs,
}

impl SaveArgs {
    fn options(&self) -> Result<SaveOptions, Error> {
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
        // Progress bars only for a person watching: stderr is a terminal and no JSON is wanted.
        o.progress = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !self.json;
        o.quant_type = match self.quant_type.as_str() {
            "nf4" => loraweld::quant::bnb::QuantType::Nf4,
            "fp4" => loraweld::quant::bnb::QuantType::Fp4,
            q => return Err(Error::Usage(format!("--quant-type: expected nf4 or fp4, got `{q}`"))),
        };
        if !self.blocksize.is_power_of_two() || !(32..=4096).contains(&self.blocksize) {
            return Err(Error::Usage(format!(
                "--blocksize {}: expected a power of two from 32 to 4096",
                self.blocksize
            )));
        }
        o.blocksize = self.blocksize;
        o.double_quant = !self.no_double_quant;
        o.hub = HubConfig::from_env(self.hub.token.as_deref());
        match &self.push_to_hub {
            Some(repo) => o.push_to_hub = Some(self.hub.push_options(repo)),
            None => {
                if let Some(flag) = self.hub.push_only_flag() {
                    return Err(Error::Usage(format!("{flag}: only with --push-to-hub")));
                }
            }
        }
        Ok(o)
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Save(args) => {
            let opts = args.options()?;
            let report = loraweld::save(&opts)?;
            for w in &report.warnings {
                eprintln!("loraweld: warning: {w}");
            }
            if args.json {
                let s = serde_json::to_string_pretty(&report).map_err(|e| Error::Internal(e.to_string()))?;
                println!("{s}");
            } else if report.up_to_date {
                eprintln!(
                    "loraweld: {} is up to date (same inputs and options; --force rewrites it)",
                    report.out.display()
                );
            } else if opts.dry_run {
                print!("{}", report.plan_text);
                println!("backend: {}", report.backend);
            } else {
                eprintln!(
                    "loraweld: saved {} ({}: {} merged, {} copied, {} dequantized; {} bytes in {} file(s); {:.2}s; backend {})",
                    report.out.display(),
                    report.save_method,
                    report.counts.merged,
                    report.counts.copied,
                    report.counts.dequantized,
                    report.bytes_written,
                    report.shards.len(),
                    report.seconds,
                    report.backend
                );
                if let Some(p) = &report.push {
                    print_push(&report.out, p);
                }
            }
            Ok(())
        }
        Command::Verify(args) => {
            let r = loraweld::verify::verify(&args.dir)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).map_err(|e| Error::Internal(e.to_string()))?
                );
            } else {
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
            if r.ok() {
                Ok(())
            } else {
                Err(Error::VerifyFailed {
                    dir: args.dir.clone(),
                    problems: r.problems.len(),
                })
            }
        }
        Command::Inspect(args) => {
            let r = loraweld::inspect::inspect(&args.path, args.base.as_deref())?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).map_err(|e| Error::Internal(e.to_string()))?
                );
            } else {
                print!("{}", loraweld::inspect::render(&r));
            }
            Ok(())
        }
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut cmd, "loraweld", &mut std::io::stdout());
            Ok(())
        }
        Command::Push(args) => {
            let hub = HubConfig::from_env(args.hub.token.as_deref());
            let opts = args.hub.push_options(&args.repo);
            let report = loraweld::hub::push(&args.dir, &opts, &hub, args.temporary_location.as_deref())?;
            if args.json {
                let s = serde_json::to_string_pretty(&report).map_err(|e| Error::Internal(e.to_string()))?;
                println!("{s}");
            } else {
                print_push(&args.dir, &report);
            }
            Ok(())
        }
    }
}

fn print_push(dir: &std::path::Path, p: &PushReport) {
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

fn main() -> ProcessExit {
    // SIGINT stops a save at the next work item and keeps its staging directory for a re-run.
    loraweld::sys::install_sigint_handler();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { ExitCode::BadInput as u8 } else { 0 };
            let _ = e.print();
            return ProcessExit::from(code);
        }
    };
    match run(cli) {
        Ok(()) => ProcessExit::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                let t = s.to_string();
                if !msg.contains(&t) {
                    msg.push_str(": ");
                    msg.push_str(&t);
                }
                src = s.source();
            }
            eprintln!("loraweld: error: {msg}");
            ProcessExit::from(e.exit_code() as u8)
        }
    }
}
