//! Loading the kernels: the embedded PTX, or the cubin build.rs assembled from it for this GPU.

use cust::device::{Device, DeviceAttribute};
use cust::module::Module;

use super::device::cu_err;
use crate::error::Result;

/// The kernels, embedded (candle's `include_str!` of its PTX).
const PTX: &str = include_str!("../../../kernels/lora_merge.ptx");
/// Machine code for `PTX` from build.rs (`ptxas` for sm_80 and sm_90), when the build found a
/// `ptxas`; empty otherwise.
pub(super) mod cubins {
    include!(concat!(env!("OUT_DIR"), "/cubins.rs"));
}

/// The requantization of `merged_4bit` (bitsandbytes 4-bit blocks), run after a merge kernel.
const QUANT_PTX: &str = include_str!("../../../kernels/quant4.ptx");

/// llama-quantize's Q4_K, Q5_K and Q6_K blocks (GGUF outputs).
const KQUANT_PTX: &str = include_str!("../../../kernels/kquant.ptx");

/// Which of the embedded cubins (their `sm` numbers, `archs`) a GPU of compute capability
/// `major.minor` runs: the same major and the highest minor not above its own, since a cubin runs
/// on later minors of its major (sm_80 on an RTX 3090's 8.6 or an RTX 4090's 8.9). `None`: no
/// cubin fits, the PTX is JIT-compiled.
fn pick_cubin(major: u32, minor: u32, archs: &[u32]) -> Option<usize> {
    archs
        .iter()
        .enumerate()
        .filter(|&(_, &sm)| sm / 10 == major && sm % 10 <= minor)
        .max_by_key(|&(_, &sm)| sm)
        .map(|(i, _)| i)
}

/// Loads the merge kernels on the current context: the embedded cubin for this GPU when there is
/// one and the driver takes it, otherwise the PTX, which the driver JIT-compiles (2-3 s on an H100
/// unless its cache has it; BENCHMARKS.md, session 7). Returns the module and what was loaded (`sm_90 cubin`, `PTX`).
/// `LORAWELD_CUDA_JIT=1` skips the cubins (a timing aid).
pub(super) fn load_merge_module(jit: bool) -> Result<(Module, String)> {
    load_module("kernels/lora_merge.ptx", PTX, cubins::CUBINS, jit)
}

/// The requantization kernel (`kernels/quant4.ptx`), loaded like the merge kernels.
pub(super) fn load_quant_module(jit: bool) -> Result<(Module, String)> {
    load_module("kernels/quant4.ptx", QUANT_PTX, cubins::QUANT4_CUBINS, jit)
}

/// The k-quant kernels (`kernels/kquant.ptx`), loaded like the merge kernels.
pub(super) fn load_kquant_module(jit: bool) -> Result<(Module, String)> {
    load_module("kernels/kquant.ptx", KQUANT_PTX, cubins::KQUANT_CUBINS, jit)
}

/// Loads `ptx` (from `file`) or the cubin of it for this GPU; see [`load_merge_module`].
/// With `jit` (`LORAWELD_CUDA_JIT`, read with the options) the PTX even when a cubin is there.
fn load_module(file: &str, ptx: &str, built: &[(u32, &[u8])], jit: bool) -> Result<(Module, String)> {
    let load_ptx = |what: String| {
        Module::from_ptx(ptx, &[])
            .map(|m| (m, what))
            .map_err(cu_err(format!("load {file}")))
    };
    if jit {
        return load_ptx("PTX, LORAWELD_CUDA_JIT".into());
    }
    let dev = Device::get_device(0).map_err(cu_err("cuDeviceGet"))?;
    let cc = |a| dev.get_attribute(a).map(|v| v.max(0) as u32);
    let major = cc(DeviceAttribute::ComputeCapabilityMajor).map_err(cu_err("cuDeviceGetAttribute"))?;
    let minor = cc(DeviceAttribute::ComputeCapabilityMinor).map_err(cu_err("cuDeviceGetAttribute"))?;
    let archs: Vec<u32> = built.iter().map(|&(sm, _)| sm).collect();
    match pick_cubin(major, minor, &archs) {
        Some(i) => {
            let (sm, bytes) = built[i];
            match Module::from_cubin(bytes, &[]) {
                Ok(m) => Ok((m, format!("sm_{sm} cubin"))),
                // An older driver may refuse a newer toolkit's cubin; its JIT still takes the PTX.
                Err(e) => load_ptx(format!("PTX; the sm_{sm} cubin was refused: {e}")),
            }
        }
        None => load_ptx("PTX".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::pick_cubin;

    #[test]
    fn a_gpu_runs_the_cubin_of_its_major_with_the_highest_minor_not_above_its_own() {
        let built = [80, 90];
        assert_eq!(pick_cubin(9, 0, &built), Some(1)); // H100, H200
        assert_eq!(pick_cubin(8, 0, &built), Some(0)); // A100
        assert_eq!(pick_cubin(8, 6, &built), Some(0)); // RTX 3090
        assert_eq!(pick_cubin(8, 9, &built), Some(0)); // RTX 4090, L40S
        assert_eq!(pick_cubin(8, 6, &[80, 86]), Some(1));
        assert_eq!(pick_cubin(8, 0, &[86]), None); // a later minor's cubin does not run on 8.0
        assert_eq!(pick_cubin(10, 0, &built), None); // Blackwell: the PTX
        assert_eq!(pick_cubin(12, 0, &built), None);
        assert_eq!(pick_cubin(7, 5, &built), None);
        assert_eq!(pick_cubin(9, 0, &[]), None); // built without ptxas
    }
}
