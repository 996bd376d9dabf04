//! The compute stage: turns one row tile of a base weight (16-bit, f32 or bnb 4-bit) plus an
//! optional LoRA pair into output bytes.
//!
//! The arithmetic is PEFT's `merge_and_unload()` on CPU, bit for bit (docs/formats.md §2.4):
//! ```text
//! acc[o,i] = fma chain over k = 0..r-1 of B[o,k] * A[k,i], starting at 0     (f32)
//! delta    = fl32(acc * fl32(s))           then, for 16-bit adapters, rounded to their dtype
//! W'       = round_out( f32(W) + delta )   one rounding to the output dtype
//! ```
//! [`reference`] is the plain scalar specification; [`cpu::CpuBackend`] (rayon + SIMD) and the
//! CUDA backend must produce the same bytes.

pub mod cpu;
pub mod cuda;
pub mod general;
pub mod reference;
pub mod simd;
pub mod start;

use crate::error::Result;
use crate::format::bnb::QuantView;
use crate::format::dtype::FloatDtype;
use crate::format::gguf::GgmlType;
pub use crate::writer::shard::PinRelease;

/// Where the base rows of a tile come from.
#[derive(Debug, Clone, Copy)]
pub enum BaseRows<'a> {
    /// 16/32-bit float rows: `rows * cols` elements of `dtype`.
    Float {
        /// The bytes of exactly the tile's rows.
        bytes: &'a [u8],
        /// Their dtype.
        dtype: FloatDtype,
    },
    /// bitsandbytes 4-bit: the whole weight's view; the tile starts at flat element `row0 * cols`.
    Bnb(QuantView<'a>),
}

/// The LoRA update for a tile.
#[derive(Debug, Clone, Copy)]
pub struct LoraRows<'a> {
    /// `A` as f32, `[r, cols]` row-major.
    pub a: &'a [f32],
    /// The tile's rows of `B` as f32, `[rows, r]` row-major.
    pub b: &'a [f32],
    /// Rank.
    pub r: usize,
    /// `fl32(s)`.
    pub scale: f32,
    /// The adapter's dtype: 16-bit adapters round the delta to it before the add (PEFT on CPU).
    pub delta_dtype: FloatDtype,
}

/// One unit of compute work.
#[derive(Debug, Clone, Copy)]
pub struct MergeTile<'a> {
    /// First row of the tile within the weight.
    pub row0: u64,
    /// Rows in the tile.
    pub rows: usize,
    /// Columns (`in_features`).
    pub cols: usize,
    /// Base rows.
    pub base: BaseRows<'a>,
    /// LoRA update, if this weight has one.
    pub lora: Option<LoraRows<'a>>,
    /// Output dtype.
    pub out_dtype: FloatDtype,
}

impl MergeTile<'_> {
    /// Output bytes this tile produces.
    pub fn out_len(&self) -> usize {
        self.rows * self.cols * self.out_dtype.size()
    }
}

/// How `merged_4bit` requantizes a weight (bitsandbytes 4-bit, `src/format/encode.rs`).
#[derive(Debug, Clone, Copy)]
pub struct QuantSpec {
    /// NF4 or FP4.
    pub quant_type: crate::format::bnb::QuantType,
    /// Elements per block.
    pub blocksize: usize,
    /// Elements in the whole weight: its last block is partial when this is not a multiple of
    /// `blocksize`.
    pub numel: u64,
}

/// A compute backend. Implementations must be bit-identical to [`reference::merge_tile`].
pub trait Backend: Send + Sync {
    /// A short name for reports (`cpu-avx2`, `cuda`).
    fn name(&self) -> String;
    /// Computes `tile` into `out` (`tile.out_len()` bytes). Returns whether every output value
    /// is finite.
    fn merge_tile(&self, tile: &MergeTile<'_>, out: &mut [u8]) -> Result<bool>;
    /// Merges `tile` and requantizes the result as `merged_4bit` does, if this backend can do
    /// it itself: the values rounded to `tile.out_dtype` (the quant group's 16-bit dtype, or f32),
    /// then [`crate::format::encode::quantize_block`] on each block. Writes the block absmax
    /// values into `absmax` and, when `codes` is given, the packed codes (two per byte). The tile
    /// starts on a block boundary. `Ok(None)`: not done here (the default); the caller merges
    /// with [`Backend::merge_tile`] and quantizes on the host. `Ok(Some(finite))` otherwise.
    fn quant_tile(
        &self,
        _tile: &MergeTile<'_>,
        _q: &QuantSpec,
        _codes: Option<&mut [u8]>,
        _absmax: &mut [f32],
    ) -> Result<Option<bool>> {
        Ok(None)
    }
    /// The GGUF block types this backend quantizes itself with [`Backend::kquant`] (none by
    /// default: the caller encodes on the host).
    fn device_kquants(&self) -> &'static [GgmlType] {
        &[]
    }
    /// Encodes `half` (little-endian f16 when `f16`, else bf16: llama-quantize's intermediate
    /// GGUF; whole 256-value super-blocks) as `ty`, one of [`Backend::device_kquants`], into
    /// `out`: bit for bit [`crate::format::ggml_rows::encode_rows`] of those values.
    fn kquant(&self, ty: GgmlType, _half: &[u8], _f16: bool, _out: &mut [u8]) -> Result<()> {
        Err(crate::error::Error::Internal(format!("{} has no {ty:?} kernel", self.name())))
    }
    /// A thread pool for the host's work around the merge (the 4-bit requantization of
    /// `merged_4bit`), sized by `--threads`; `None`: do it on the calling thread.
    fn host_pool(&self) -> Option<&rayon::ThreadPool> {
        None
    }
    /// Where a GPU backend's time went so far; `None` for the CPU.
    fn gpu_times(&self) -> Option<GpuTimes> {
        None
    }
    /// Offers `buf`, an output buffer that lives for the whole run, to the backend, which may
    /// page-lock it so that results are copied into it directly (the CUDA backend registers it
    /// with the driver, and its device-to-host copies then land in it without a pass through
    /// its own pinned staging). Returns what must run before the buffer is freed; `None`:
    /// nothing was done.
    fn pin_output(&self, _buf: &mut [u8]) -> Option<PinRelease> {
        None
    }
}

/// Where a GPU backend's time went, summed over the tiles it merged (`--json`:
/// `stages.gpu`). Busy times of parts that run at the same time: the GPU's copies and kernels
/// on its two streams, and the host's copies in and out of pinned staging, overlap one another
/// and the pipeline's other stages. `gpu_busy_s` counts time when either stream had work, so
/// `h2d_s + kernel_s + d2h_s - gpu_busy_s` is how much the two streams overlapped.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GpuTimes {
    /// Row chunks launched.
    pub chunks: u64,
    /// Host: copying each chunk's inputs (codes, absmax, base rows, `B` transposed) into pinned
    /// staging.
    pub stage_in_s: f64,
    /// GPU: host-to-device copies of the staged inputs (and each tile's synchronous upload of
    /// `lora_A`, timed on the host).
    pub h2d_s: f64,
    /// GPU: the merge kernels (and, for `merged_4bit`, the requantization after each).
    pub kernel_s: f64,
    /// GPU: device-to-host copies of the results.
    pub d2h_s: f64,
    /// GPU: time with a chunk in flight on either stream (the union of the two streams'
    /// busy intervals, from each chunk's first copy in to its last copy out).
    pub gpu_busy_s: f64,
    /// Host: waiting for a slot's stream before reusing it.
    pub wait_s: f64,
    /// Host: copying results out of pinned staging into the caller's buffer.
    pub copy_out_s: f64,
    /// Host: the GGUF k-quants on the device, from the first copy in to the last copy out
    /// (their copies count in `h2d_bytes` and `d2h_bytes`, their chunks in `chunks`).
    pub kquant_s: f64,
    /// Bytes copied to the device (`lora_A` included).
    pub h2d_bytes: u64,
    /// Bytes copied back.
    pub d2h_bytes: u64,
}
