//! Which kernel takes a tile, its arguments in the order the PTX declares them, and its launch
//! shape (grid and block).

use std::ffi::c_void;

use cust::function::{BlockSize, Function, GridSize};

use super::device::{cu_err, sm_count};
use crate::compute::{BaseRows, MergeTile};
use crate::error::Result;
use crate::format::bnb::AbsmaxRef;
use crate::format::dtype::FloatDtype;

/// The fast kernels' block: 128 threads, each an 8x8 output tile, so 128 columns x 64 rows
/// (kernels/README.md).
const FAST_BLOCK: (u32, u32) = (32, 4);

fn fast_grid(rows: usize, cols: usize) -> GridSize {
    (cols.div_ceil(128) as u32, rows.div_ceil(64) as u32).into()
}

/// How many blocks of `func` (a lean kernel, 128-thread blocks) the GPU holds at once: the
/// occupancy API times the SMs. Asked once per kernel (at backend start), not per launch.
pub(super) fn resident_blocks(func: &Function<'_>) -> Result<u32> {
    let per_sm = func
        .max_active_blocks_per_multiprocessor(FAST_BLOCK.into(), 0)
        .map_err(cu_err("cuOccupancyMaxActiveBlocksPerMultiprocessor"))?;
    Ok(per_sm.max(1).saturating_mul(sm_count()?))
}

/// The lean kernels' entry points (see [`KernelSpec::of`]).
pub(super) const LEAN_KERNELS: [&str; 4] = [
    "lora_merge_q64_bf16",
    "lora_merge_q64_f16",
    "lora_merge_q64n_bf16",
    "lora_merge_q64n_f16",
];

/// Grid and block of entry point `name` (a `lora_merge_*` kernel) for `rows x cols`. The lean
/// kernels' grid is persistent: `resident` blocks (what fits on the GPU at once, from
/// [`resident_blocks`]), at most one per 128 x 64 tile; each block walks tiles `gridDim.x` apart.
pub(super) fn launch_shape(name: &str, rows: usize, cols: usize, resident: u32) -> (GridSize, BlockSize) {
    if name.contains("_q64") {
        let tiles = cols.div_ceil(128) * rows.div_ceil(64);
        let blocks = (resident.max(1) as usize).min(tiles).max(1);
        ((blocks as u32).into(), FAST_BLOCK.into())
    } else if name.contains("_any_") {
        (((rows * cols).div_ceil(256).min(65535) as u32).into(), 256u32.into())
    } else {
        (fast_grid(rows, cols), FAST_BLOCK.into())
    }
}

/// Dtype code used by the kernels' flag bits (0 bf16, 1 f16, 2 f32).
pub(super) fn dt_code(dt: FloatDtype) -> u32 {
    match dt {
        FloatDtype::Bf16 => 0,
        FloatDtype::F16 => 1,
        FloatDtype::F32 => 2,
    }
}

fn dt_suffix(dt: FloatDtype) -> &'static str {
    match dt {
        FloatDtype::Bf16 => "bf16",
        FloatDtype::F16 => "f16",
        FloatDtype::F32 => "f32",
    }
}

/// How one tile maps onto the kernels: the entry point and its `p_flags` word.
pub(super) struct KernelSpec {
    /// `lora_merge_q64_{out}` / `lora_merge_q64n_{out}` (lean, persistent; plain / double-quant
    /// absmax), `lora_merge_{out}` (8x8 register tiles) or `lora_merge_any_{out}` (any shape);
    /// [`launch_shape`] gives each its grid.
    pub(super) name: String,
    pub(super) flags: u32,
    pub(super) log2_bs: u32,
    pub(super) log2_nbs: u32,
    pub(super) offset: f32,
}

impl KernelSpec {
    /// `None` for the rare tiles the kernels do not cover (a non-power-of-two nested
    /// blocksize, a malformed code table); those run on the CPU backend.
    pub(super) fn of(tile: &MergeTile<'_>) -> Option<Self> {
        let (mut flags, mut log2_bs, mut log2_nbs, mut offset) = (0u32, 0u32, 0u32, 0f32);
        match tile.base {
            BaseRows::Float { dtype, .. } => {
                flags |= 1 + dt_code(dtype);
            }
            BaseRows::Bnb(q) => {
                if !q.blocksize.is_power_of_two() || q.blocksize < 8 || q.quant_map.len() != 64 {
                    return None;
                }
                log2_bs = q.blocksize.trailing_zeros();
                flags |= dt_code(q.dtype) << 3;
                if let AbsmaxRef::Nested {
                    nested_blocksize,
                    offset: off,
                    nested_map,
                    ..
                } = q.absmax
                {
                    if !nested_blocksize.is_power_of_two() || nested_map.len() != 1024 {
                        return None;
                    }
                    flags |= 4;
                    log2_nbs = nested_blocksize.trailing_zeros();
                    offset = off;
                }
            }
        }
        if let Some(l) = tile.lora {
            flags |= 32 | (dt_code(l.delta_dtype) << 6);
        }
        let name = entry_point(tile, flags & 4 != 0);
        Some(KernelSpec {
            name,
            flags,
            log2_bs,
            log2_nbs,
            offset,
        })
    }
}

/// The entry point for `tile` (see [`KernelSpec::name`]); `nested`: double-quant absmax.
fn entry_point(tile: &MergeTile<'_>, nested: bool) -> String {
    let fast = tile.cols.is_multiple_of(8);
    // The lean kernels (`lora_merge_q64_*`, `lora_merge_q64n_*` for double quant): the common
    // QLoRA case, with a shorter epilogue (kernels/README.md). Rows start on a 64-element
    // block because cols % 64 == 0.
    let lean = match (tile.base, tile.lora) {
        (BaseRows::Bnb(q), Some(l)) => {
            q.blocksize == 64
                && tile.cols.is_multiple_of(64)
                && tile.out_dtype != FloatDtype::F32
                && q.dtype == tile.out_dtype
                && (l.delta_dtype == tile.out_dtype || l.delta_dtype == FloatDtype::F32)
                && l.r > 0
        }
        _ => false,
    };
    format!(
        "lora_merge_{}{}",
        if lean && nested {
            "q64n_"
        } else if lean {
            "q64_"
        } else if fast {
            ""
        } else {
            "any_"
        },
        dt_suffix(tile.out_dtype)
    )
}

/// A kernel argument: the address of a local of the parameter's exact type.
fn arg<T>(p: &T) -> *mut c_void {
    p as *const T as *mut c_void
}

/// The merge kernels' 20 parameters, in their order (kernels/lora_merge.ptx documents them).
pub(super) struct KernelArgs {
    pub(super) out: u64,
    pub(super) base: u64,
    pub(super) absmax: u64,
    pub(super) nabs: u64,
    pub(super) nmap: u64,
    pub(super) qmap: u64,
    pub(super) a: u64,
    pub(super) b: u64,
    pub(super) flag: u64,
    pub(super) k0: u64,
    pub(super) blk0: u64,
    pub(super) nblk0: u64,
    pub(super) rows: u32,
    pub(super) cols: u32,
    pub(super) r: u32,
    pub(super) scale: f32,
    pub(super) offset: f32,
    pub(super) flags: u32,
    pub(super) log2bs: u32,
    pub(super) log2nbs: u32,
}

impl KernelArgs {
    /// Pointers to each field, as `cuLaunchKernel` takes them; valid while `self` is.
    pub(super) fn ptrs(&self) -> [*mut c_void; 20] {
        [
            arg(&self.out),
            arg(&self.base),
            arg(&self.absmax),
            arg(&self.nabs),
            arg(&self.nmap),
            arg(&self.qmap),
            arg(&self.a),
            arg(&self.b),
            arg(&self.flag),
            arg(&self.k0),
            arg(&self.blk0),
            arg(&self.nblk0),
            arg(&self.rows),
            arg(&self.cols),
            arg(&self.r),
            arg(&self.scale),
            arg(&self.offset),
            arg(&self.flags),
            arg(&self.log2bs),
            arg(&self.log2nbs),
        ]
    }
}

/// `quant4`'s 8 parameters, in their order (kernels/quant4.ptx documents them).
pub(super) struct QuantArgs {
    pub(super) input: u64,
    pub(super) codes: u64,
    pub(super) absmax: u64,
    pub(super) n: u32,
    pub(super) log2bs: u32,
    pub(super) partial: u32,
    pub(super) kind: u32,
    pub(super) qt: u32,
}

impl QuantArgs {
    /// Pointers to each field, as `cuLaunchKernel` takes them; valid while `self` is.
    pub(super) fn ptrs(&self) -> [*mut c_void; 8] {
        [
            arg(&self.input),
            arg(&self.codes),
            arg(&self.absmax),
            arg(&self.n),
            arg(&self.log2bs),
            arg(&self.partial),
            arg(&self.kind),
            arg(&self.qt),
        ]
    }
}

/// `quant4`'s grid for `nb` blocks of `2^log2bs` elements: a lane per 8 elements, at most 32
/// lanes per block (larger blocks loop), 256-thread CTAs (kernels/quant4.ptx).
pub(super) fn quant_shape(nb: usize, log2bs: u32) -> (GridSize, BlockSize) {
    let lanes_log = (log2bs - 3).min(5);
    let per_warp = 32usize >> lanes_log;
    let warps = nb.div_ceil(per_warp);
    ((warps.div_ceil(8).max(1) as u32).into(), 256u32.into())
}

#[cfg(test)]
mod tests {
    use crate::compute::cuda::module::cubins;
    use super::{launch_shape, KernelSpec, LEAN_KERNELS};
    use crate::compute::{BaseRows, LoraRows, MergeTile};
    use crate::format::bnb::{AbsmaxRef, QuantView, NF4};
    use crate::format::dtype::FloatDtype;

    /// The entry point the launcher picks for a bnb 4-bit tile with an r = 4 LoRA (`nested`:
    /// double-quant absmax).
    fn pick(blocksize: u64, cols: usize, qdt: FloatDtype, delta: FloatDtype, out: FloatDtype, nested: bool) -> String {
        let qmap: Vec<u8> = NF4.iter().flat_map(|x| x.to_le_bytes()).collect();
        let nmap = vec![0u8; 1024];
        let (a, b) = (vec![0f32; 4 * cols], vec![0f32; 4 * 2]);
        let absmax = if nested {
            AbsmaxRef::Nested {
                codes: &[],
                nested_absmax: &[],
                nested_map: &nmap,
                nested_blocksize: 256,
                offset: 0.0,
            }
        } else {
            AbsmaxRef::Plain(&[])
        };
        let tile = MergeTile {
            row0: 0,
            rows: 2,
            cols,
            base: BaseRows::Bnb(QuantView {
                codes: &[],
                absmax,
                quant_map: &qmap,
                blocksize,
                dtype: qdt,
            }),
            lora: Some(LoraRows {
                a: &a,
                b: &b,
                r: 4,
                scale: 2.0,
                delta_dtype: delta,
            }),
            out_dtype: out,
        };
        KernelSpec::of(&tile).map(|s| s.name).unwrap_or_default()
    }

    #[test]
    fn the_common_qlora_tile_gets_the_lean_kernel_and_the_rest_the_general_ones() {
        use FloatDtype::{Bf16, F16, F32};
        assert_eq!(pick(64, 4096, Bf16, F32, Bf16, false), "lora_merge_q64_bf16");
        assert_eq!(pick(64, 4096, Bf16, Bf16, Bf16, false), "lora_merge_q64_bf16");
        assert_eq!(pick(64, 192, F16, F16, F16, false), "lora_merge_q64_f16");
        // double quant: the nested lean kernel
        assert_eq!(pick(64, 4096, Bf16, F32, Bf16, true), "lora_merge_q64n_bf16");
        assert_eq!(pick(64, 192, F16, F16, F16, true), "lora_merge_q64n_f16");
        assert_eq!(pick(128, 4096, Bf16, F32, Bf16, true), "lora_merge_bf16");
        // blocksize, width, dtypes outside the lean kernel's case
        assert_eq!(pick(128, 4096, Bf16, F32, Bf16, false), "lora_merge_bf16");
        assert_eq!(pick(64, 4104, Bf16, F32, Bf16, false), "lora_merge_bf16");
        assert_eq!(pick(64, 4096, F32, F32, Bf16, false), "lora_merge_bf16");
        assert_eq!(pick(64, 4096, Bf16, F16, Bf16, false), "lora_merge_bf16");
        assert_eq!(pick(64, 4096, F32, F32, F32, false), "lora_merge_f32");
        assert_eq!(pick(64, 4100, Bf16, F32, Bf16, false), "lora_merge_any_bf16");
        // every lean pick is one the backend sized a grid for at start
        for (q, o, n) in [
            (Bf16, Bf16, false),
            (F16, F16, false),
            (Bf16, Bf16, true),
            (F16, F16, true),
        ] {
            assert!(LEAN_KERNELS.contains(&pick(64, 4096, q, F32, o, n).as_str()));
        }
    }

    #[test]
    fn launch_shapes() {
        let dims = |name: &str, rows, cols, resident| {
            let (g, b) = launch_shape(name, rows, cols, resident);
            ((g.x, g.y), (b.x, b.y))
        };
        // lean: as many blocks as fit at once (528 on an H100), never more than the 128 x 64 tiles
        assert_eq!(dims("lora_merge_q64n_bf16", 8192, 8192, 528), ((528, 1), (32, 4)));
        assert_eq!(dims("lora_merge_q64_f16", 100, 256, 528), ((4, 1), (32, 4)));
        assert_eq!(dims("lora_merge_q64_bf16", 64, 64, 0), ((1, 1), (32, 4)));
        // general fast path: one block per tile
        assert_eq!(dims("lora_merge_bf16", 100, 300, 0), ((3, 2), (32, 4)));
        // any shape: one element per thread, 256 per block
        assert_eq!(dims("lora_merge_any_f32", 3, 7, 0), ((1, 1), (256, 1)));
    }


    /// The cubins build.rs embedded are CUDA ELF files for the arch they claim, holding every
    /// entry point the launcher asks for. A build with `LORAWELD_PTXAS` set (CI's) must have both.
    #[test]
    fn embedded_cubins_are_elf_for_their_arch_with_every_entry_point() {
        let merge: Vec<&str> = LEAN_KERNELS
            .iter()
            .copied()
            .chain([
                "lora_merge_bf16",
                "lora_merge_f16",
                "lora_merge_f32",
                "lora_merge_any_bf16",
                "lora_merge_any_f16",
                "lora_merge_any_f32",
            ])
            .collect();
        for (file, built, names) in [
            ("lora_merge", cubins::CUBINS, merge),
            ("quant4", cubins::QUANT4_CUBINS, vec!["quant4"]),
        ] {
            if option_env!("LORAWELD_PTXAS").is_some_and(|p| p != "none") {
                let archs: Vec<u32> = built.iter().map(|&(sm, _)| sm).collect();
                assert_eq!(
                    archs,
                    [80, 90],
                    "LORAWELD_PTXAS was set, so build.rs must embed both cubins of {file}"
                );
            }
            for &(sm, bytes) in built {
                assert_eq!(&bytes[..4], b"\x7fELF", "{file} sm_{sm}");
                let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
                assert_eq!(machine, 0xBE, "{file} sm_{sm}: e_machine is EM_CUDA");
                let flags = u32::from_le_bytes([bytes[48], bytes[49], bytes[50], bytes[51]]);
                assert_eq!((flags >> 8) & 0xFF, sm, "{file} sm_{sm}: the arch in e_flags");
                for name in &names {
                    let found = bytes
                        .windows(name.len() + 1)
                        .any(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0);
                    assert!(found, "{file} sm_{sm} cubin has no {name}");
                }
            }
        }
    }
}
