//! What the stages share: the mapped inputs, the tuning, the work items that flow between the
//! stages, the stage times.

use std::path::Path;

use crate::checkpoint::mmap::MappedFile;
use crate::checkpoint::{Adapter, Checkpoint};
use crate::format::bnb::{AbsmaxRef, QuantView};
use crate::plan::{FileRef, QuantSrc, Src};
use crate::writer::shard::{AlignedBuf, ShardResult};

/// The mapped inputs a plan reads from.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    /// The base checkpoint (absent for a `lora` save).
    pub base: Option<&'a Checkpoint>,
    /// The adapter.
    pub adapter: &'a Adapter,
}

impl<'a> Inputs<'a> {
    pub(super) fn file(&self, f: FileRef) -> &'a MappedFile {
        match f {
            FileRef::Adapter => &self.adapter.weights.file,
            FileRef::Base(i) => &self.base.expect("plan names a base shard, so a base exists").shards[i].file,
        }
    }

    pub(super) fn abs(&self, src: &Src) -> usize {
        let start = match src.file {
            FileRef::Adapter => self.adapter.weights.header.data_start,
            FileRef::Base(i) => self.base.expect("plan names a base shard").shards[i].header.data_start,
        };
        (start + src.info.offsets.0) as usize
    }

    /// The bytes of a source tensor.
    pub fn data(&self, src: &Src) -> &'a [u8] {
        let s = self.abs(src);
        &self.file(src.file).bytes()[s..s + src.info.nbytes() as usize]
    }

    /// Drops every mapped page of every input from this process.
    pub(super) fn release_all(&self) {
        self.adapter.weights.file.release_all();
        for sh in self.base.iter().flat_map(|b| &b.shards) {
            sh.file.release_all();
        }
    }

    pub(super) fn quant_view(&self, q: &QuantSrc) -> QuantView<'a> {
        let absmax = match &q.nested {
            Some((na, nm)) => AbsmaxRef::Nested {
                codes: self.data(&q.absmax),
                nested_absmax: self.data(na),
                nested_map: self.data(nm),
                nested_blocksize: q.state.nested.map(|n| n.0).unwrap_or(256),
                offset: q.state.nested.map(|n| n.1).unwrap_or(0.0),
            },
            None => AbsmaxRef::Plain(self.data(&q.absmax)),
        };
        QuantView {
            codes: self.data(&q.codes),
            absmax,
            quant_map: self.data(&q.quant_map),
            blocksize: q.state.blocksize,
            dtype: q.state.dtype,
        }
    }
}

/// Tuning derived from the memory budget.
#[derive(Debug, Clone, Copy)]
pub struct ExecConfig {
    /// Target bytes per work item.
    pub tile_bytes: usize,
    /// Capacity of each channel.
    pub depth: usize,
    /// Let NaN/Inf through.
    pub allow_nonfinite: bool,
    /// Also hash each shard with sha256 (for a Hub push).
    pub sha256: bool,
    /// Force or forbid `copy_file_range` clones (the `LORAWELD_COPY_FILE_RANGE` hook).
    pub copy_file_range: Option<bool>,
}

impl ExecConfig {
    /// Derives tile size and depth from a budget in bytes: a sixty-fourth of the budget per
    /// tile, between 1 MiB and 64 MiB, with two items in flight per channel. Small tiles keep
    /// the resident set a function of the budget, not of the model's largest tensor.
    pub fn from_budget(budget: u64, allow_nonfinite: bool) -> Self {
        let tile = (budget / 64).clamp(1 << 20, 64 << 20) as usize;
        ExecConfig {
            tile_bytes: tile,
            depth: 2,
            allow_nonfinite,
            sha256: false,
            copy_file_range: None,
        }
    }
}

/// Called by the packer with each shard's path once it is complete and synced (the Hub push
/// uploads it from there while the pipeline goes on). It must not block for long.
pub type OnShard<'a> = dyn Fn(&Path, &ShardResult) + Sync + 'a;

/// Busy time per stage.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StageTimes {
    /// Reader busy seconds.
    pub read_s: f64,
    /// Compute busy seconds.
    pub compute_s: f64,
    /// Packer busy seconds (writing + hashing + syncing).
    pub pack_s: f64,
    /// Seconds the compute backend took to start (set by `save`; it starts on its own thread
    /// while the inputs are planned, so most of it is hidden). For CUDA:
    /// the context, the staging buffers and loading the kernels: 0.2-0.3 s on an H100 from the
    /// embedded cubin, 2-3 s more when the driver must JIT-compile the PTX and its cache lacks it
    /// (BENCHMARKS.md, session 7).
    pub backend_start_s: f64,
    /// Seconds of `merged_4bit`'s statistics pass, before the stages run (set by `save`): every
    /// double-quantized weight merged once more for its block absmax values; 0 otherwise.
    pub quant_stats_s: f64,
    /// A GPU backend's breakdown of the compute stage (set by `save`); absent on the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<crate::compute::GpuTimes>,
}

/// Rows `row0..row0 + rows` of a `cols`-wide tensor: one tile.
#[derive(Debug, Clone, Copy)]
pub(super) struct TileRows {
    pub cols: usize,
    pub row0: u64,
    pub rows: usize,
}

/// Row tiles of about `tile_bytes` of f32 scratch, each a multiple of `step` rows.
pub(super) fn tiles(rows: u64, cols: u64, step: u64, tile_bytes: usize) -> Vec<(u64, u64)> {
    let row_bytes = (cols as usize * 4).max(1);
    let per = ((tile_bytes / row_bytes) as u64 / step).max(1) * step;
    let mut v = Vec::new();
    let mut r = 0;
    while r < rows {
        let n = per.min(rows - r);
        v.push((r, n));
        r += n;
    }
    v
}

pub(super) enum Work<'a> {
    /// A whole small tensor produced in one go (4-bit helper tensors).
    Part {
        tensor: usize,
    },
    StartShard(usize),
    /// Input bytes copied as they are to `at` in output file `shard`.
    Copy {
        shard: usize,
        data: &'a [u8],
        file: &'a MappedFile,
        abs: usize,
        at: u64,
    },
    Tile {
        tensor: usize,
        row0: u64,
        rows: usize,
    },
    EndShard(usize),
}

/// Output bytes and where they go: file `shard`, at `at` (absolute, as planned).
pub(super) enum Packed<'a> {
    StartShard(usize),
    /// A computed tile at `buf[lead..lead + len]`, placed for a copy-free direct write.
    Aligned {
        shard: usize,
        buf: AlignedBuf,
        lead: usize,
        len: usize,
        at: u64,
    },
    Borrowed {
        shard: usize,
        data: &'a [u8],
        file: &'a MappedFile,
        abs: usize,
        at: u64,
    },
    Owned {
        shard: usize,
        bytes: Vec<u8>,
        at: u64,
    },
    EndShard(usize),
}
