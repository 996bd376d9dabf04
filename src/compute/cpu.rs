//! The CPU backend: rayon over rows of a tile, each row through the SIMD row kernel.
//! Always available, and the fallback when no GPU is usable.

use rayon::prelude::*;

use super::simd::{self, Isa};
use super::{Backend, BaseRows, MergeTile};
use crate::error::{Error, Result};
use crate::format::dtype::decode_into;

/// Rows handed to one rayon task: enough to amortize scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 16;
/// Columns per block at most (the accumulator scratch is this long).
const COL_BLOCK: usize = 1024;
/// Bytes of packed A per column block: the block (r x cols f32) stays in the L1 data cache
/// (32-48 KiB) while the task's 16 rows pass over it. At 64 KiB it streamed from L2 once per
/// row, and the FMA loop waited on those loads.
const A_BLOCK_BYTES: usize = 24 << 10;

thread_local! {
    /// Decoded rows and accumulators of the current task.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// rayon + SIMD merge backend.
pub struct CpuBackend {
    pool: rayon::ThreadPool,
    threads: usize,
    isa: Isa,
}

impl CpuBackend {
    /// A backend with `threads` workers (`None` = one per core).
    pub fn new(threads: Option<usize>) -> Result<Self> {
        let mut b = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("loraweld-cpu-{i}"));
        if let Some(t) = threads {
            b = b.num_threads(t.max(1));
        }
        let pool = b
            .build()
            .map_err(|e| Error::Internal(format!("cannot start compute threads: {e}")))?;
        let threads = pool.current_num_threads();
        Ok(CpuBackend {
            pool,
            threads,
            isa: Isa::detect(),
        })
    }

    /// Uses the row kernel compiled for `isa` (one of [`Isa::available`]); for tests and benches
    /// that compare the paths.
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.isa = isa;
        self
    }

    /// Forces the portable row kernel.
    pub fn portable(self) -> Self {
        self.with_isa(Isa::Portable)
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({}, {} threads)", self.isa.name(), self.threads)
    }

    fn host_pool(&self) -> Option<&rayon::ThreadPool> {
        Some(&self.pool)
    }

    fn merge_tile(&self, tile: &MergeTile<'_>, out: &mut [u8]) -> Result<bool> {
        let cols = tile.cols;
        let osz = tile.out_dtype.size();
        let row_bytes = cols * osz;
        if out.len() != tile.out_len() {
            return Err(Error::Internal(format!(
                "tile output buffer is {} bytes, expected {}",
                out.len(),
                tile.out_len()
            )));
        }
        if cols == 0 || tile.rows == 0 {
            return Ok(true);
        }
        let isa = self.isa;
        // A packed once per tile for the kernel's register blocks (r x cols floats: small
        // beside the tile's rows x cols x r FMAs).
        let nb = super::simd::block(isa);
        let col_block = match &tile.lora {
            Some(l) => (A_BLOCK_BYTES / (4 * l.r.max(1)) / nb).clamp(1, COL_BLOCK / nb) * nb,
            None => COL_BLOCK,
        };
        let panel = match &tile.lora {
            Some(l) => simd::pack_panel(l.a, l.r, cols, nb),
            None => Vec::new(),
        };
        let finite = self.pool.install(|| {
            out.par_chunks_mut(row_bytes * ROWS_PER_TASK)
                .enumerate()
                .map(|(chunk, out_chunk)| {
                    let nrows = out_chunk.len() / row_bytes;
                    // Per-thread scratch, reused across tasks and tiles (no zeroing: every
                    // element is written before it is read).
                    let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
                    if scratch.len() < nrows * cols + COL_BLOCK {
                        scratch.resize(nrows * cols + COL_BLOCK, 0.0);
                    }
                    let (w, acc) = scratch.split_at_mut(nrows * cols);
                    let mut finite = true;
                    for (j, wr) in w.chunks_exact_mut(cols).enumerate() {
                        let r = chunk * ROWS_PER_TASK + j;
                        match tile.base {
                            BaseRows::Float { bytes, dtype } => {
                                let s = dtype.size();
                                decode_into(&bytes[r * cols * s..(r + 1) * cols * s], dtype, wr);
                            }
                            BaseRows::Bnb(q) => q.decode((tile.row0 + r as u64) * cols as u64, wr),
                        }
                    }
                    // Column blocks across the task's rows, so the block of A (r x col_block) is
                    // read from cache once per 16 rows instead of from memory once per row. The
                    // order of operations on each element is unchanged.
                    for c0 in (0..cols).step_by(col_block) {
                        let c1 = (c0 + col_block).min(cols);
                        for (j, out_row) in out_chunk.chunks_exact_mut(row_bytes).enumerate() {
                            let r = chunk * ROWS_PER_TASK + j;
                            let (a, p, b_row, scale, ddt) = match &tile.lora {
                                Some(l) => (
                                    &l.a[c0..],
                                    &panel[(c0 / nb * l.r * nb).min(panel.len())..],
                                    Some(&l.b[r * l.r..(r + 1) * l.r]),
                                    l.scale,
                                    l.delta_dtype,
                                ),
                                None => (&[][..], &[][..], None, 1.0, tile.out_dtype),
                            };
                            finite &= simd::row(
                                &mut w[j * cols + c0..j * cols + c1],
                                acc,
                                a,
                                cols,
                                p,
                                b_row,
                                scale,
                                ddt,
                                tile.out_dtype,
                                &mut out_row[c0 * osz..c1 * osz],
                                isa,
                            );
                        }
                    }
                    SCRATCH.with(|s| *s.borrow_mut() = scratch);
                    finite
                })
                .reduce(|| true, |x, y| x && y)
        });
        Ok(finite)
    }
}

#[cfg(test)]
mod tests {
    use super::super::reference;
    use super::super::LoraRows;
    use super::*;
    use crate::format::bnb::{AbsmaxRef, QuantView, NF4};
    use crate::format::dtype::FloatDtype;
    use proptest::prelude::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    fn check(rows: usize, cols: usize, r: usize, out_dtype: FloatDtype, bnb: bool, seed0: u64) {
        let mut seed = seed0;
        let base_f: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        let mut base = vec![0u8; rows * cols * 2];
        crate::format::dtype::encode_into(&base_f, FloatDtype::Bf16, &mut base);
        let a: Vec<f32> = (0..r * cols).map(|_| lcg(&mut seed) * 0.1).collect();
        let b: Vec<f32> = (0..rows * r).map(|_| lcg(&mut seed) * 0.1).collect();
        let n = rows * cols;
        let codes: Vec<u8> = (0..n.div_ceil(2)).map(|i| (i * 37 % 256) as u8).collect();
        let nb = n.div_ceil(64);
        let absmax: Vec<u8> = (0..nb)
            .flat_map(|i| (0.01f32 + i as f32 * 0.001).to_le_bytes())
            .collect();
        let qmap: Vec<u8> = NF4.iter().flat_map(|x| x.to_le_bytes()).collect();
        let base_rows = if bnb {
            BaseRows::Bnb(QuantView {
                codes: &codes,
                absmax: AbsmaxRef::Plain(&absmax),
                quant_map: &qmap,
                blocksize: 64,
                dtype: FloatDtype::Bf16,
            })
        } else {
            BaseRows::Float {
                bytes: &base,
                dtype: FloatDtype::Bf16,
            }
        };
        let tile = MergeTile {
            row0: 0,
            rows,
            cols,
            base: base_rows,
            lora: (r > 0).then_some(LoraRows {
                a: &a,
                b: &b,
                r,
                scale: 2.0,
                delta_dtype: FloatDtype::F32,
            }),
            out_dtype,
        };
        let mut want = vec![0u8; tile.out_len()];
        let wf = reference::merge_tile(&tile, &mut want);
        for isa in Isa::available() {
            let be = CpuBackend::new(Some(2)).unwrap().with_isa(isa);
            let mut got = vec![0u8; tile.out_len()];
            let gf = be.merge_tile(&tile, &mut got).unwrap();
            assert_eq!(gf, wf);
            if let Some(i) = got.iter().zip(&want).position(|(x, y)| x != y) {
                panic!(
                    "rows {rows} cols {cols} r {r} bnb {bnb} {}: first differing byte {i}",
                    isa.name()
                );
            }
        }
    }

    #[test]
    fn matches_reference_on_odd_shapes() {
        check(3, 67, 1, FloatDtype::Bf16, false, 1);
        check(17, 130, 8, FloatDtype::F16, true, 2);
        check(5, 63, 128, FloatDtype::F32, false, 3);
        check(33, 1, 3, FloatDtype::Bf16, true, 4);
        check(2, 129, 0, FloatDtype::Bf16, true, 5);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn simd_equals_scalar_reference(rows in 1usize..40, cols in 1usize..200, r in 1usize..=128,
                                        dt in 0u8..3, bnb in any::<bool>(), seed in any::<u64>()) {
            let out = [FloatDtype::Bf16, FloatDtype::F16, FloatDtype::F32][dt as usize];
            check(rows, cols, r, out, bnb, seed);
        }
    }
}
