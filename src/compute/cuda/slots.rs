//! The staging: pinned host and device buffers that grow on demand, the two slots a tile's
//! chunks alternate between (a stream each, with its own buffers and events), and the host
//! copies into and out of pinned memory. Every `unsafe` block here is an allocation of plain
//! bytes; each says why it is sound.

use cust::event::{Event, EventFlags};
use cust::memory::{DeviceBuffer, LockedBuffer};
use cust::stream::{Stream, StreamFlags};
use rayon::prelude::*;

use super::device::cu_err;
use crate::error::Result;

/// Copies with a few threads: one core's `memcpy` is well under the PCIe rate.
pub(super) fn par_copy(pool: &rayon::ThreadPool, dst: &mut [u8], src: &[u8]) {
    const PIECE: usize = 1 << 20;
    if src.len() < 2 * PIECE {
        dst.copy_from_slice(src);
        return;
    }
    pool.install(|| {
        dst.par_chunks_mut(PIECE)
            .zip(src.par_chunks(PIECE))
            .for_each(|(d, s)| d.copy_from_slice(s))
    });
}

pub(super) fn f32_bytes_into(dst: &mut [u8], src: &[f32]) {
    for (d, v) in dst.chunks_exact_mut(4).zip(src) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

/// Writes `B` rows (`[n, r]`, row-major) as `Bt[k][i]` with `rows_pad` columns, zero-padded.
pub(super) fn stage_bt(dst: &mut [u8], b: &[f32], r: usize, rows_pad: usize) {
    dst.fill(0);
    for (i, row) in b.chunks_exact(r).enumerate() {
        for (k, v) in row.iter().enumerate() {
            let o = (k * rows_pad + i) * 4;
            dst[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Pinned host bytes that grow on demand.
pub(super) fn host_buf(b: &mut Option<LockedBuffer<u8>>, n: usize) -> Result<&mut LockedBuffer<u8>> {
    if b.as_ref().is_none_or(|x| x.len() < n) {
        *b = None;
        let cap = n.max(4096).next_multiple_of(1 << 16);
        // SAFETY: u8 has no invalid bit patterns; every byte read back was written first.
        let nb = unsafe { LockedBuffer::uninitialized(cap) }.map_err(cu_err("cuMemAllocHost"))?;
        *b = Some(nb);
    }
    Ok(b.as_mut().expect("allocated just above"))
}

/// Device bytes that grow on demand.
pub(super) fn dev_buf(b: &mut Option<DeviceBuffer<u8>>, n: usize) -> Result<&mut DeviceBuffer<u8>> {
    if b.as_ref().is_none_or(|x| x.len() < n) {
        *b = None;
        let cap = n.max(4096).next_multiple_of(1 << 16);
        // SAFETY: device bytes are only read by kernels after a copy or a kernel wrote them.
        let nb = unsafe { DeviceBuffer::uninitialized(cap) }.map_err(cu_err("cuMemAlloc"))?;
        *b = Some(nb);
    }
    Ok(b.as_mut().expect("allocated just above"))
}

/// A chunk in flight: where its bytes go in the caller's output, and how many it sent.
pub(super) struct Pending {
    pub(super) out_start: usize,
    /// Bytes downloaded (the flag word aside): the values, or a requantized chunk's codes and
    /// absmax values.
    pub(super) len: usize,
    pub(super) in_len: usize,
    /// The download went straight into the caller's (page-locked) buffer.
    pub(super) direct: bool,
    /// A requantized chunk: where its codes and absmax values go.
    pub(super) quant: Option<QuantPending>,
}

/// Where a requantized chunk's download goes: codes first in the staging, then (at `am_off`)
/// the absmax values.
pub(super) struct QuantPending {
    /// Byte offset of the chunk's codes in the tile's packed codes.
    pub(super) codes_start: usize,
    /// Bytes of codes (0: only the absmax values were asked for).
    pub(super) codes_len: usize,
    /// The chunk's first block within the tile.
    pub(super) am_start: usize,
    /// Blocks in the chunk.
    pub(super) am_len: usize,
    /// Byte offset of the absmax values in the download.
    pub(super) am_off: usize,
}

/// One of the two staging slots: a stream with its own pinned and device buffers.
pub(super) struct Slot {
    pub(super) stream: Stream,
    pub(super) host_in: Option<LockedBuffer<u8>>,
    pub(super) host_out: Option<LockedBuffer<u8>>,
    pub(super) host_flag: LockedBuffer<u8>,
    pub(super) dev_in: Option<DeviceBuffer<u8>>,
    pub(super) dev_out: Option<DeviceBuffer<u8>>,
    /// A requantized chunk's codes and absmax values.
    pub(super) dev_q: Option<DeviceBuffer<u8>>,
    pub(super) pending: Option<Pending>,
    /// Recorded on the stream before the chunk's upload, after it, after the kernel and after
    /// the download: the GPU's own times for [`GpuTimes`](crate::compute::GpuTimes).
    pub(super) ev: [Event; 4],
}

impl Slot {
    pub(super) fn new() -> Result<Self> {
        Ok(Slot {
            stream: Stream::new(StreamFlags::NON_BLOCKING, None).map_err(cu_err("cuStreamCreate"))?,
            host_in: None,
            host_out: None,
            host_flag: LockedBuffer::new(&0u8, 16).map_err(cu_err("cuMemAllocHost"))?,
            dev_in: None,
            dev_out: None,
            dev_q: None,
            pending: None,
            ev: [event()?, event()?, event()?, event()?],
        })
    }
}

pub(super) fn event() -> Result<Event> {
    Event::new(EventFlags::DEFAULT).map_err(cu_err("cuEventCreate"))
}

/// Milliseconds from event `a` to event `b`, both completed.
pub(super) fn ms_between(a: &Event, b: &Event) -> Result<f64> {
    Ok(b.elapsed_time_f32(a).map_err(cu_err("cuEventElapsedTime"))? as f64)
}

/// The GPU's clock for [`GpuTimes::gpu_busy_s`](crate::compute::GpuTimes::gpu_busy_s): an event recorded before the first chunk, and
/// the end of the busy time counted so far, in ms after it.
pub(super) struct Clock {
    pub(super) origin: Event,
    pub(super) started: bool,
    pub(super) busy_end_ms: f64,
}
