//! The library's one error type: what failed, in which file, on which tensor.
//!
//! Every variant maps to an [`ExitCode`] so the CLI can tell bad input (2) from a runtime
//! failure (1) and a resource problem (3) without parsing messages.

use std::path::PathBuf;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Documented process exit codes (also in `--help` and the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// A runtime failure (I/O error while writing, a worker died).
    Runtime = 1,
    /// Bad input or usage: a malformed file, an adapter that does not fit its base, a bad flag.
    BadInput = 2,
    /// Not enough resources: disk space or memory.
    Resources = 3,
}

/// Everything that can go wrong, one variant per failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a named path failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A required input file does not exist.
    #[error("{}: file not found", path.display())]
    NotFound {
        /// The missing file.
        path: PathBuf,
    },
    /// An input is in a format we refuse (pickle `.bin` and the like).
    #[error("{}: not supported: {what}", path.display())]
    Unsupported {
        /// The offending file or directory.
        path: PathBuf,
        /// Why, and what to do instead.
        what: String,
    },
    /// A safetensors file is malformed.
    #[error("{}: invalid safetensors: {what}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The first broken invariant.
        what: SafetensorsProblem,
    },
    /// A JSON file (config, index, adapter config) could not be parsed or lacks a field.
    #[error("{}: invalid json: {what}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// A bitsandbytes quant state is malformed or disagrees with its tensors.
    #[error("{}: tensor `{tensor}`: invalid 4-bit quant state: {what}", path.display())]
    QuantState {
        /// The shard holding the tensor.
        path: PathBuf,
        /// The quantized weight.
        tensor: String,
        /// What disagrees.
        what: String,
    },
    /// The adapter does not fit the base: unmatched tensors or shape mismatches, all listed.
    /// Its message is one summary line; `problems` has the list (the CLI prints the first few,
    /// one per line, and `--json` all of them).
    #[error("{}: adapter does not fit base {}: {} problem(s) in {modules} adapter module(s)", adapter.display(), base.display(), problems.len())]
    Coverage {
        /// The adapter directory.
        adapter: PathBuf,
        /// The base directory.
        base: PathBuf,
        /// Adapter modules (LoRA pairs and full replacements) checked.
        modules: usize,
        /// One line per offending tensor.
        problems: Vec<String>,
    },
    /// A tensor has a dtype this operation cannot handle.
    #[error("{}: tensor `{tensor}`: unsupported dtype {dtype} for {op}", path.display())]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: String,
        /// What we tried to do with it.
        op: &'static str,
    },
    /// A bad command-line value or option combination.
    #[error("{0}")]
    Usage(String),
    /// A Hub repo id (`owner/name[@revision]`) is malformed.
    #[error("`{id}`: not a Hub repo id: {why}")]
    BadRepoId {
        /// What was given.
        id: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The Hub answered a request with an error status (after retries for 408/429/5xx).
    #[error("hub repo `{repo}`: {op}: HTTP {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    HubHttp {
        /// The repo the request was for.
        repo: String,
        /// What we asked for (`create repo`, `lfs batch`, `commit`, …).
        op: &'static str,
        /// The HTTP status.
        status: u16,
        /// The server's message (`X-Error-Message` or the JSON `error`), at most 300 characters.
        message: String,
    },
    /// The Hub could not be reached (connection refused, timeout, TLS), after retries.
    #[error("hub repo `{repo}`: {op}: cannot reach {url}")]
    HubUnreachable {
        /// The repo the request was for.
        repo: String,
        /// What we asked for.
        op: &'static str,
        /// The URL without its query string.
        url: String,
        /// The transport error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The Hub answered with something that is not the documented shape.
    #[error("hub repo `{repo}`: {op}: unexpected answer: {what}")]
    HubProtocol {
        /// The repo the request was for.
        repo: String,
        /// What we asked for.
        op: &'static str,
        /// What was wrong with the answer.
        what: String,
    },
    /// `HF_HUB_OFFLINE=1` and a needed file is not in the local cache.
    #[error("hub repo `{repo}`: `{file}` is not in the cache {} and HF_HUB_OFFLINE is set", cache.display())]
    HubOffline {
        /// The repo.
        repo: String,
        /// The missing file (or `refs/<revision>` when the revision was never fetched).
        file: String,
        /// The cache directory searched.
        cache: PathBuf,
    },
    /// A file download failed (after retries).
    #[error("hub repo `{repo}`: downloading `{file}`")]
    HubDownload {
        /// The repo.
        repo: String,
        /// The file.
        file: String,
        /// What failed: [`Error::HubHttp`], [`Error::HubUnreachable`], [`Error::HubProtocol`]
        /// or an I/O error on the cache.
        #[source]
        source: Box<Error>,
    },
    /// A push needs a token and none was found.
    #[error("hub repo `{repo}`: pushing needs a token: pass --token, set HF_TOKEN, or write one to $HF_HOME/token")]
    HubNoToken {
        /// The repo.
        repo: String,
    },
    /// The output directory would overlap an input.
    #[error("{}: output overlaps input {}: inputs are never overwritten", out.display(), input.display())]
    OutputOverlapsInput {
        /// The requested output.
        out: PathBuf,
        /// The input it collides with.
        input: PathBuf,
    },
    /// `OUT` holds something a save must not replace (or is a place it never replaces).
    #[error("{}: {why}", out.display())]
    OutNotOurs {
        /// The output path.
        out: PathBuf,
        /// What is there, and what to do.
        why: String,
    },
    /// Not enough free disk space for the planned output.
    #[error("{}: not enough free disk space: need {need} bytes, {free} bytes free", path.display())]
    DiskFull {
        /// Where the output goes.
        path: PathBuf,
        /// Planned bytes.
        need: u64,
        /// Free bytes.
        free: u64,
    },
    /// The disk filled up while writing (ENOSPC), after the preflight.
    #[error("{}: no space left on device while writing", path.display())]
    NoSpace {
        /// The file being written.
        path: PathBuf,
    },
    /// The merge produced NaN or Inf.
    #[error("tensor `{tensor}`: merge produced a non-finite value (NaN or Inf)")]
    NonFinite {
        /// The tensor.
        tensor: String,
    },
    /// The GPU backend was asked for but this build has no CUDA support.
    #[error("--device cuda: this build has no CUDA support (rebuild with --features cuda)")]
    CudaNotCompiled,
    /// The GPU backend was asked for, but no usable CUDA device was found (no driver, the
    /// link-time stub driver, no device, or the kernels did not load).
    #[error("--device cuda: no usable CUDA device: {why}")]
    NoCudaDevice {
        /// What failed first, e.g. `cuInit: CUDA_ERROR_NO_DEVICE`.
        why: String,
    },
    /// A CUDA driver call failed while merging on the GPU.
    #[error("cuda: {op}: {what}")]
    Cuda {
        /// The operation (`launch lora_merge_bf16`, `copy to device`, ...).
        op: String,
        /// The driver's error.
        what: String,
    },
    /// SIGINT stopped the run; the staging directory is kept for the next run to resume.
    #[error("{}: interrupted; run the same command again to resume", out.display())]
    Interrupted {
        /// The output directory.
        out: PathBuf,
    },
    /// `verify` found problems (listed on stdout).
    #[error("{}: verification failed ({problems} problem(s))", dir.display())]
    VerifyFailed {
        /// The directory.
        dir: PathBuf,
        /// How many problems.
        problems: usize,
    },
    /// A pipeline worker failed without a more specific error (a panic).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The broken safetensors invariant, one per check of the header parser.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SafetensorsProblem {
    /// The file is shorter than the 8-byte length prefix.
    #[error("file is {0} bytes, shorter than the 8-byte header length")]
    TooShortForHeader(u64),
    /// The header length exceeds the 100 MB cap.
    #[error("header length {0} is above the 100000000-byte limit")]
    HeaderTooLarge(u64),
    /// The header length runs past the end of the file (truncated file).
    #[error("header length {len} runs past the end of the file ({file_len} bytes): truncated?")]
    HeaderPastEnd {
        /// Declared header length.
        len: u64,
        /// File length.
        file_len: u64,
    },
    /// The header is not UTF-8.
    #[error("header is not valid UTF-8")]
    NotUtf8,
    /// The header is not the expected JSON.
    #[error("header is not valid JSON: {0}")]
    BadJson(String),
    /// Unknown dtype string.
    #[error("tensor `{0}`: unknown dtype `{1}`")]
    UnknownDtype(String, String),
    /// Tensor name appears twice.
    #[error("tensor `{0}` appears twice")]
    Duplicate(String),
    /// `data_offsets` do not match dtype × shape.
    #[error("tensor `{name}`: data_offsets span {span} bytes, expected {expected} for its dtype and shape")]
    SpanMismatch {
        /// Tensor.
        name: String,
        /// `end - begin`.
        span: u64,
        /// dtype size × numel.
        expected: u64,
    },
    /// Offsets do not tile the data buffer (gap, overlap, or begin > end).
    #[error("tensor `{0}`: data_offsets overlap or leave a gap")]
    BadOffsets(String),
    /// The data section is shorter or longer than the offsets say.
    #[error("data section is {actual} bytes but the header describes {expected}: truncated or trailing bytes")]
    DataLength {
        /// Bytes the offsets cover.
        expected: u64,
        /// Bytes in the file after the header.
        actual: u64,
    },
    /// A size computation overflowed.
    #[error("tensor `{0}`: size overflows")]
    Overflow(String),
}

impl Error {
    /// The exit code the CLI uses for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Io { .. }
            | Error::Internal(_)
            | Error::Cuda { .. }
            | Error::VerifyFailed { .. }
            | Error::Interrupted { .. }
            | Error::HubUnreachable { .. }
            | Error::HubProtocol { .. }
            | Error::HubDownload { .. } => ExitCode::Runtime,
            // 4xx is about what was asked (no such repo, no rights, bad revision); the rest is the server.
            Error::HubHttp { status, .. } if !(400..500).contains(status) || matches!(status, 408 | 429) => {
                ExitCode::Runtime
            }
            Error::DiskFull { .. } | Error::NoSpace { .. } => ExitCode::Resources,
            _ => ExitCode::BadInput,
        }
    }

    /// Wraps an I/O error with its path.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            return Error::NotFound { path };
        }
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return Error::NoSpace { path };
        }
        Error::Io { path, source }
    }

    /// A JSON problem in a named file.
    pub(crate) fn json(path: impl Into<PathBuf>, what: impl std::fmt::Display) -> Self {
        Error::Json {
            path: path.into(),
            what: what.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_documented_table() {
        let bad = Error::Usage("x".into());
        assert_eq!(bad.exit_code(), ExitCode::BadInput);
        let disk = Error::DiskFull {
            path: "/o".into(),
            need: 2,
            free: 1,
        };
        assert_eq!(disk.exit_code(), ExitCode::Resources);
        assert_eq!(
            disk.to_string(),
            "/o: not enough free disk space: need 2 bytes, 1 bytes free"
        );
        let io = Error::io("/f", std::io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(io.exit_code(), ExitCode::Runtime);
        let nf = Error::io("/f", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(nf.to_string(), "/f: file not found");
    }
}
