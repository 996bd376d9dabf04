//! Starting the backend a job asks for (`--device`), without printing: what it chose goes back
//! as a notice for the report.

use super::cpu::CpuBackend;
use super::cuda::CudaBackend;
use super::Backend;
use crate::error::{Error, Result};
use crate::job::{BackendChoice, Budget, DeviceChoice};

/// Starts the backend the job asks for. `auto` takes the GPU when this build has CUDA support
/// and finds one, else the CPU; the second value is then a notice for the report when a CUDA
/// build could not use the GPU. `cuda` fails without a usable GPU. The GPU backend's device
/// memory is the budget applied to free VRAM.
pub fn start(choice: &BackendChoice, budget: &Budget) -> Result<(Box<dyn Backend>, Option<String>)> {
    let gpu = || CudaBackend::with_jit(budget.device, choice.threads, choice.cuda_jit);
    match choice.device {
        DeviceChoice::Cpu => Ok((Box::new(CpuBackend::new(choice.threads)?), None)),
        DeviceChoice::Cuda => Ok((Box::new(gpu()?), None)),
        DeviceChoice::Auto => match gpu() {
            Ok(b) => Ok((Box::new(b), None)),
            Err(e) => {
                let notice = match e {
                    Error::CudaNotCompiled => None,
                    Error::NoCudaDevice { why } => {
                        Some(format!("no usable CUDA device ({why}); using the CPU"))
                    }
                    e => Some(format!("the GPU backend failed to start ({e}); using the CPU")),
                };
                Ok((Box::new(CpuBackend::new(choice.threads)?), notice))
            }
        },
    }
}

/// What [`start`] would start, without starting it (a dry run touches no GPU).
pub fn describe_choice(choice: &BackendChoice) -> String {
    match choice.device {
        DeviceChoice::Cpu => "cpu".into(),
        DeviceChoice::Cuda => "cuda (not started in a dry run)".into(),
        DeviceChoice::Auto if cfg!(feature = "cuda") => {
            "auto: cuda if a usable GPU is found, else cpu (not started in a dry run)".into()
        }
        DeviceChoice::Auto => "cpu".into(),
    }
}
