//! The one integration-test binary. It runs the real `loraweld` binary on copies of the golden
//! fixtures made by transformers + PEFT + bitsandbytes (tests/fixtures/llama, see its README).

/// Deterministic test data (splitmix64, the k-quant edge-case blocks).
mod gen;
mod util;

/// Bad input: one clear line, exit code 2, nothing written.
mod bad_input;
/// The command line itself: `--help`, `--dry-run`, `--json`.
mod cli;
/// `--save-method gguf` against llama.cpp's converter and llama-quantize, byte for byte.
mod gguf;
/// The CUDA backend against the CPU backend, byte for byte, and the no-GPU fallback.
mod gpu;
/// Hostile inputs, one test per case.
mod hostile;
/// The Hugging Face Hub against the mock Hub: push, download by repo id, resume, offline, errors.
mod hub;
/// `--save-method lora`.
mod lora;
/// Bit-exactness against PEFT `merge_and_unload()` and the file layout transformers writes.
mod merged;
/// `merged_4bit` against PEFT's merge into bitsandbytes `Linear4bit`.
mod merged4;
/// OUT is replaced only when loraweld wrote it or it is empty.
mod out_safety;
/// Disk preflight.
mod resources;
/// Kill -9 and SIGINT at random moments, then resume.
mod resume;
/// `verify`, `inspect`, `completions`.
mod tools;
/// Every LoRA variant and architecture against tiny PEFT-made fixtures.
mod variants;
