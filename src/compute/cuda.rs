//! The CUDA backend slot. This build has no GPU kernels yet: constructing the backend reports
//! [`Error::CudaNotCompiled`], so callers carry no `cfg` and `--device auto` falls back to the
//! CPU with a one-line notice (candle's `dummy_cuda_backend.rs` pattern).

use super::{Backend, MergeTile};
use crate::error::{Error, Result};

/// Placeholder for the GPU backend; cannot be constructed in this build.
pub struct CudaBackend {
    _private: (),
}

impl CudaBackend {
    /// Always fails in this build: the PTX kernels are not part of it yet.
    pub fn new() -> Result<Self> {
        Err(Error::CudaNotCompiled)
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
