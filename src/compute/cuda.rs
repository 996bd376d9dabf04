//! The CUDA backend: the hand-written PTX of `kernels/lora_merge.ptx`, launched through `cust`
//! (cargo feature `cuda`). Bit-identical to [`super::reference`] on every non-NaN output (and
//! on NaN for bf16 outputs, which are canonical 0x7FC0 on both sides; see kernels/README.md).
//!
//! A tile is cut into row chunks that flow through two slots, each with its own stream, pinned
//! host staging and device buffers. While the GPU copies in, computes and copies out one chunk,
//! the calling thread copies the previous chunk's result out of pinned memory and stages the next
//! chunk's inputs, so host copies, transfers and kernels overlap (the pipeline's reader and packer
//! threads overlap disk I/O with all of it).
//!
//! Without the `cuda` feature the same names exist and [`CudaBackend::new`] returns
//! [`Error::CudaNotCompiled`], so callers carry no `cfg` (candle's `dummy_cuda_backend.rs`).
//!
//! The `cust` side is split by job; each file imports only from those listed before it:
//! `device` (driver errors, device 0), `module` (loading the PTX or its cubin), `kernels` (which
//! entry point takes a tile, its arguments, its launch shape), `slots` (streams, pinned and
//! device staging), `launch` (the row-chunk launcher), `kquant` (GGUF k-quant blocks), `backend` ([`CudaBackend`]). `bench`, the
//! kernel timing harness of examples/gpu-bench.rs, is built only with the `internals` feature.

#[cfg(feature = "cuda")]
#[expect(unsafe_code)]
mod device;

#[cfg(feature = "cuda")]
mod module;

#[cfg(feature = "cuda")]
mod kernels;

#[cfg(feature = "cuda")]
#[expect(unsafe_code)]
mod slots;

#[cfg(feature = "cuda")]
#[expect(unsafe_code)]
mod launch;

#[cfg(feature = "cuda")]
#[expect(unsafe_code)]
mod kquant;

#[cfg(feature = "cuda")]
#[expect(unsafe_code)]
mod backend;

// The kernel timing harness, for examples/gpu-bench.rs only.
#[cfg(all(feature = "cuda", feature = "internals"))]
#[expect(unsafe_code)]
pub mod bench;

#[cfg(feature = "cuda")]
pub use backend::CudaBackend;

#[cfg(not(feature = "cuda"))]
pub use stub::CudaBackend;

#[cfg(not(feature = "cuda"))]
mod stub {
    use crate::compute::{Backend, MergeTile};
    use crate::error::{Error, Result};
    use crate::sys::MemoryBudget;

    /// Placeholder for the GPU backend; cannot be constructed in this build.
    pub struct CudaBackend {
        _private: (),
    }

    impl CudaBackend {
        /// Always fails in this build: it was compiled without the `cuda` feature.
        pub fn new(_budget: MemoryBudget, _threads: Option<usize>) -> Result<Self> {
            Err(Error::CudaNotCompiled)
        }

        /// Always fails in this build, as [`CudaBackend::new`].
        pub fn with_jit(_budget: MemoryBudget, _threads: Option<usize>, _jit: bool) -> Result<Self> {
            Err(Error::CudaNotCompiled)
        }

        /// The GPU's name.
        pub fn device_name(&self) -> &str {
            ""
        }
    }

    impl Backend for CudaBackend {
        fn name(&self) -> String {
            "cuda".into()
        }

        fn merge_tile(&self, _tile: &MergeTile<'_>, _out: &mut [u8]) -> Result<bool> {
            Err(Error::CudaNotCompiled)
        }
    }
}
