//! The driver itself: its errors in ours, and device 0 (its primary context, its SMs). Every
//! `unsafe` block here is a driver call (FFI); each says why it is sound.

use std::ffi::CStr;
use std::os::raw::c_char;

use cust::context::Context;
use cust::device::{Device, DeviceAttribute};
use cust::error::CudaError;
use cust::sys as cu;

use crate::error::{Error, Result};

/// Converts a driver error into ours, naming the operation.
pub(super) fn cu_err(op: impl Into<String>) -> impl FnOnce(CudaError) -> Error {
    let op = op.into();
    move |e| Error::Cuda {
        op,
        what: e.to_string(),
    }
}

/// The driver's name for a raw result code; the stub library's own code is spelled out.
pub(super) fn result_name(rc: cu::CUresult) -> String {
    let code = rc as u32;
    if code == 34 {
        return "CUDA_ERROR_STUB_LIBRARY (libcuda.so.1 is the link-time stub; no NVIDIA driver here)".into();
    }
    let mut p: *const c_char = std::ptr::null();
    // SAFETY: FFI; `p` is a valid out-pointer, and on success the driver points it at a static
    // NUL-terminated string.
    let ok = unsafe { cu::cuGetErrorName(rc, &mut p) } == cu::cudaError_enum::CUDA_SUCCESS;
    if ok && !p.is_null() {
        // SAFETY: checked non-null; the driver's error names are static C strings.
        let name = unsafe { CStr::from_ptr(p) };
        return name.to_string_lossy().into_owned();
    }
    format!("CUresult {code}")
}

/// Initializes the driver and takes device 0's primary context (current on this thread).
pub(super) fn open_device() -> Result<(Context, String)> {
    let none = |why: String| Error::NoCudaDevice { why };
    // Raw cuInit so that the stub's code is named rather than reported as "unknown error".
    // SAFETY: FFI with a valid flags value (0).
    let rc = unsafe { cu::cuInit(0) };
    if rc != cu::cudaError_enum::CUDA_SUCCESS {
        return Err(none(format!("cuInit: {}", result_name(rc))));
    }
    let n = Device::num_devices().map_err(|e| none(format!("cuDeviceGetCount: {e}")))?;
    if n == 0 {
        return Err(none("the driver reports no CUDA device".into()));
    }
    let dev = Device::get_device(0).map_err(|e| none(format!("cuDeviceGet: {e}")))?;
    let name = dev.name().unwrap_or_else(|_| "CUDA device 0".into());
    let ctx = Context::new(dev).map_err(|e| none(format!("cuDevicePrimaryCtxRetain: {e}")))?;
    Ok((ctx, name))
}

/// The SMs of device 0 (at least 1).
pub(super) fn sm_count() -> Result<u32> {
    let sms = Device::get_device(0)
        .and_then(|d| d.get_attribute(DeviceAttribute::MultiprocessorCount))
        .map_err(cu_err("cuDeviceGetAttribute(MultiprocessorCount)"))?;
    Ok(sms.max(1) as u32)
}
