//! The k-quant launcher: GGUF rows quantized as Q4_K, Q5_K or Q6_K by `kernels/kquant.ptx`, bit
//! for bit the CPU's `src/format/kquants.rs`. The values come as llama-quantize's 16-bit
//! intermediate holds them and go through the two slots in chunks: while the GPU copies in,
//! quantizes and copies out one chunk, the host stages the next and copies the previous one's
//! blocks out. Every `unsafe` block here is a driver call (FFI); each says why it is sound.

use std::ffi::c_void;

use cust::sys as cu;

use super::device::{cu_err, result_name};
use super::launch::Gpu;
use super::slots::{dev_buf, host_buf, par_copy, Slot};
use crate::error::{Error, Result};
use crate::format::gguf::GgmlType;

/// Values in one super-block.
const QK_K: usize = 256;
/// Super-blocks per chunk: 16 MiB of 16-bit values in, at most 13 MiB of blocks out; 256
/// CTAs, two per SM of an H100.
const CHUNK_BLOCKS: usize = 32768;
/// Threads per CTA (any size works: one thread per super-block).
const THREADS: u32 = 128;

/// The types the kernels write.
pub(super) const KQUANTS: &[GgmlType] = &[GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K];

/// A k-quant the kernels write: its entry point and block size.
fn kquant_entry(ty: GgmlType) -> Option<(&'static str, usize)> {
    match ty {
        GgmlType::Q4K => Some(("kquant_q4_k", 144)),
        GgmlType::Q5K => Some(("kquant_q5_k", 176)),
        GgmlType::Q6K => Some(("kquant_q6_k", 210)),
        _ => None,
    }
}

fn check(rc: cu::CUresult, op: &str) -> Result<()> {
    if rc == cu::cudaError_enum::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(Error::Cuda {
            op: op.into(),
            what: result_name(rc),
        })
    }
}

impl Gpu {
    /// Quantizes `half` (16-bit values, f16 when `f16`, else bf16; whole super-blocks) as `ty`
    /// (one of [`KQUANTS`]) into `out`. Every tile's merge chunks are drained before this runs,
    /// so the slots are free.
    pub(super) fn kquant(
        &mut self,
        ty: GgmlType,
        half: &[u8],
        f16: bool,
        out: &mut [u8],
        pool: &rayon::ThreadPool,
    ) -> Result<()> {
        let (entry, bpb) =
            kquant_entry(ty).ok_or_else(|| Error::Internal(format!("no GPU kernel for {ty:?}")))?;
        let nb = half.len() / (2 * QK_K);
        if !half.len().is_multiple_of(2 * QK_K) || out.len() != nb * bpb {
            return Err(Error::Internal(format!(
                "k-quant of {} bytes of values into {} bytes of {ty:?}",
                half.len(),
                out.len()
            )));
        }
        let Gpu {
            slots, kquant, times, ..
        } = self;
        let func = kquant
            .get_function(entry)
            .map_err(cu_err(format!("cuModuleGetFunction {entry}")))?;
        // Each slot's chunk in flight: the part of `out` its blocks go to.
        let mut in_flight: [Option<&mut [u8]>; 2] = [None, None];
        let chunks = half.chunks(CHUNK_BLOCKS * QK_K * 2).zip(out.chunks_mut(CHUNK_BLOCKS * bpb));
        for (j, (v, o)) in chunks.enumerate() {
            let s = j % 2;
            drain(&mut slots[s], &mut in_flight[s], pool)?;
            let slot = &mut slots[s];
            let blocks = v.len() / (2 * QK_K);
            let (in_len, out_len) = (v.len(), o.len());
            let host_in = host_buf(&mut slot.host_in, in_len)?;
            par_copy(pool, &mut host_in[..in_len], v);
            let src = host_in.as_ptr();
            let dev_in = dev_buf(&mut slot.dev_in, in_len)?.as_device_ptr().as_raw();
            let dev_out = dev_buf(&mut slot.dev_out, out_len)?.as_device_ptr().as_raw();
            let dst = host_buf(&mut slot.host_out, out_len)?.as_mut_ptr();
            let stream = slot.stream.as_inner();
            // SAFETY: FFI; an async copy of `in_len` pinned bytes into a device buffer of at
            // least that size, on this slot's stream, which has nothing else queued (drained
            // above); the pinned buffer is not touched again until the slot is drained.
            check(
                unsafe { cu::cuMemcpyHtoDAsync_v2(dev_in, src as *const c_void, in_len, stream) },
                "copy k-quant values to device",
            )?;
            let (mut p_in, mut p_out, mut p_nb, mut p_kind) = (dev_in, dev_out, blocks as u32, f16 as u32);
            let args = [
                &mut p_in as *mut u64 as *mut c_void,
                &mut p_out as *mut u64 as *mut c_void,
                &mut p_nb as *mut u32 as *mut c_void,
                &mut p_kind as *mut u32 as *mut c_void,
            ];
            let grid = (blocks as u32).div_ceil(THREADS);
            // SAFETY: FFI. The four arguments are the kernel's (u64, u64, u32, u32) in order;
            // `dev_in` holds `blocks * 256` 16-bit values and `dev_out` has room for `blocks`
            // blocks of `bpb` bytes; threads past `blocks` return at once.
            unsafe { slot.stream.launch(&func, grid, THREADS, 0, &args) }.map_err(cu_err(format!("launch {entry}")))?;
            // SAFETY: FFI; an async copy of `out_len` device bytes into the slot's pinned output
            // staging (sized above), read only after the stream is synchronized in the drain.
            check(
                unsafe { cu::cuMemcpyDtoHAsync_v2(dst as *mut c_void, dev_out, out_len, stream) },
                "copy k-quant blocks to host",
            )?;
            times.h2d_bytes += in_len as u64;
            times.d2h_bytes += out_len as u64;
            times.chunks += 1;
            in_flight[s] = Some(o);
        }
        for (slot, f) in slots.iter_mut().zip(&mut in_flight) {
            drain(slot, f, pool)?;
        }
        Ok(())
    }
}

/// Waits for a slot's k-quant chunk, if any, and copies its blocks into their part of the output.
fn drain(slot: &mut Slot, f: &mut Option<&mut [u8]>, pool: &rayon::ThreadPool) -> Result<()> {
    let Some(dst) = f.take() else { return Ok(()) };
    slot.stream.synchronize().map_err(cu_err("cuStreamSynchronize"))?;
    let host = slot
        .host_out
        .as_ref()
        .ok_or_else(|| Error::Internal("cuda: no pinned k-quant staging".into()))?;
    let n = dst.len();
    par_copy(pool, dst, &host[..n]);
    Ok(())
}
