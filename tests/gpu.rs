//! The GPU backend against the CPU backend (the spec), byte for byte: random tiles of every
//! kind (NF4/FP4, double quant on and off, bf16/fp16/f32 bases and outputs, r from 1 to 128,
//! odd shapes, tiles that start mid-weight), big tensors, special values, and whole fixture
//! merges. Without a usable GPU each of these prints why it skipped; the fallback tests check
//! what a machine without one gets (one notice line and the CPU's bytes, or a clear error).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::gen::{kquant_blocks, Rng};
use crate::util::{assert_same_output, weights_diff, SHARDED_MODEL_FILES};

use loraweld::compute::cpu::CpuBackend;
use loraweld::compute::cuda::CudaBackend;
use loraweld::compute::{Backend, BaseRows, LoraRows, MergeTile, QuantSpec};
use loraweld::format::bnb::{AbsmaxRef, QuantType, QuantView, NF4};
use loraweld::format::encode;
use loraweld::{DeviceChoice, FloatDtype, MemoryBudget, SaveMethod, SaveOptions, SaveReport, ShardOrder};

/// The fixtures, found from the working directory first so that a test binary built elsewhere
/// runs from a checkout on the GPU machine.
fn fixtures() -> PathBuf {
    let here = Path::new("tests/fixtures/llama");
    if here.is_dir() {
        return here.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama")
}

/// The GPU backend, or `None` after printing why this test is skipped.
fn gpu(test: &str) -> Option<CudaBackend> {
    match CudaBackend::new(MemoryBudget::Fraction(0.5), None) {
        Ok(b) => {
            println!("{test}: on {}", b.device_name());
            Some(b)
        }
        Err(e) => {
            println!("{test}: SKIPPED, no usable GPU: {e}");
            None
        }
    }
}

/// Runs the enclosing test's cases on every backend: the CPU backend (the spec) and the CUDA
/// backend, comparing their bytes. The closure gets `b: &mut Backends`, whose `merge`,
/// `merge_with`, `merge_tile`, `requant` and `save` each run one case on both and count it,
/// recording how it differs if it does (`b.cpu` and `b.gpu` are there for the rest); after it,
/// the test fails listing every case that differed. Without a usable GPU (no device, or a build
/// without the `cuda` feature) it prints `TEST: SKIPPED, no usable GPU: …` and runs nothing.
/// The test's name, for those lines, is the enclosing function's.
macro_rules! on_every_backend {
    (|$b:ident| $body:block) => {{
        fn here() {}
        let path = std::any::type_name_of_val(&here).trim_end_matches("::here");
        let test = path.rsplit("::").next().unwrap();
        if let Some(mut backends) = Backends::start(test) {
            (|$b: &mut Backends| $body)(&mut backends);
            backends.assert_none_differ();
        }
    }};
}

/// The backends of one test and the cases run on them so far.
struct Backends {
    test: &'static str,
    cpu: CpuBackend,
    gpu: CudaBackend,
    cases: usize,
    failures: Vec<String>,
    /// Cases already passed by [`Backends::assert_none_differ`].
    reported: usize,
}

impl Backends {
    /// Both backends, or `None` after printing why the test is skipped (see [`gpu`]).
    fn start(test: &'static str) -> Option<Self> {
        let gpu = gpu(test)?;
        Some(Backends {
            test,
            cpu: CpuBackend::new(None).unwrap(),
            gpu,
            cases: 0,
            failures: Vec::new(),
            reported: 0,
        })
    }

    /// Counts one case and records its failure, if it failed.
    fn check<T>(&mut self, res: Result<T, String>) -> Option<T> {
        self.cases += 1;
        res.map_err(|e| self.failures.push(e)).ok()
    }

    /// Records a failure of a case already counted.
    fn fail(&mut self, e: String) {
        self.failures.push(e);
    }

    /// Merges case `c` on both backends ([`compare_with`]); `Some(the tile is finite)` when
    /// they agree.
    fn merge(&mut self, c: &Case) -> Option<bool> {
        self.merge_with(c, |_| {})
    }

    /// [`Backends::merge`] with the case's inputs changed by `edit`.
    fn merge_with(&mut self, c: &Case, edit: impl FnOnce(&mut Inputs)) -> Option<bool> {
        let res = compare_with(&self.gpu, &self.cpu, c, edit);
        self.check(res)
    }

    /// Merges tile `t` on both backends ([`compare_tile`]).
    fn merge_tile(&mut self, t: &MergeTile<'_>, what: &str) -> Option<bool> {
        let res = compare_tile(&self.gpu, &self.cpu, t, what);
        self.check(res)
    }

    /// Requantizes tile `t` on `gpu` (this test's or another instance) and on the host
    /// ([`compare_requant`]).
    fn requant(&mut self, gpu: Option<&CudaBackend>, t: &MergeTile<'_>, q: &QuantSpec, what: &str) {
        let res = compare_requant(gpu.unwrap_or(&self.gpu), &self.cpu, t, q, what);
        self.check(res);
    }

    /// Saves `o` with `--device cpu` and with `--device cuda` (OUT suffixed `-Cpu` and `-Cuda`),
    /// hands each report to `report`, and compares the two outputs' weights byte for byte (one
    /// case). Returns the two folders, CPU's first.
    fn save(&mut self, o: &SaveOptions, report: impl Fn(DeviceChoice, &SaveReport)) -> [PathBuf; 2] {
        let outs = [DeviceChoice::Cpu, DeviceChoice::Cuda].map(|device| {
            let mut o = o.clone();
            o.out = PathBuf::from(format!("{}-{device:?}", o.out.display()));
            o.device = device;
            let rep = loraweld::save(&o).unwrap_or_else(|e| panic!("{}: {device:?}: {e}", o.out.display()));
            report(device, &rep);
            o.out
        });
        let res = match weights_diff(&outs[1], &outs[0]) {
            Ok(0) => Err("no weights".to_string()),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        self.check(res.map_err(|e| format!("{}: gpu vs cpu: {e}", o.out.display())));
        outs
    }

    /// Prints how many cases ran and how many differ, and fails the test, listing them, if any
    /// did.
    fn assert_none_differ(&mut self) {
        let (test, n, failures) = (self.test, self.cases, &self.failures);
        if n == self.reported {
            return;
        }
        self.reported = n;
        println!("{test}: {n} cases, {} differ", failures.len());
        assert!(
            failures.is_empty(),
            "{} of {n} cases differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

fn le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Rewrites the little-endian f32 array `bytes` in place, value `i` as `f(i, value)`.
fn map_f32(bytes: &mut Vec<u8>, f: impl Fn(usize, f32) -> f32) {
    let v: Vec<f32> = bytes
        .chunks_exact(4)
        .enumerate()
        .map(|(i, b)| f(i, f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect();
    *bytes = le(&v);
}

fn encode(v: &[f32], dt: FloatDtype) -> Vec<u8> {
    let mut out = vec![0u8; v.len() * dt.size()];
    loraweld::format::dtype::encode_into(v, dt, &mut out);
    out
}

/// FP4 as bitsandbytes stores `quant_map` (code 8 is +0.0 in the file).
fn fp4_map(code8: f32) -> [f32; 16] {
    let v = [
        0., 0.0625, 8., 12., 4., 6., 2., 3., 0., -0.0625, -8., -12., -4., -6., -2., -3.,
    ];
    let mut m = [0f32; 16];
    for (i, x) in v.iter().enumerate() {
        m[i] = *x as f32 / 12.0;
    }
    m[8] = code8;
    m
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Base {
    Nf4 {
        nested: bool,
        blocksize: u64,
        qdt: FloatDtype,
    },
    Fp4 {
        nested: bool,
        blocksize: u64,
        qdt: FloatDtype,
        neg_zero: bool,
    },
    Float(FloatDtype),
}

#[derive(Debug, Clone, Copy)]
struct Case {
    base: Base,
    /// Rows of the whole weight; the tile is rows `row0..row0 + rows`.
    total_rows: usize,
    row0: usize,
    rows: usize,
    cols: usize,
    /// 0 = no LoRA.
    r: usize,
    scale: f32,
    delta: FloatDtype,
    out: FloatDtype,
    seed: u64,
}

/// The inputs of a case, owned.
struct Inputs {
    codes: Vec<u8>,
    absmax: Vec<u8>,
    nested_absmax: Vec<u8>,
    nested_map: Vec<u8>,
    quant_map: Vec<u8>,
    float: Vec<u8>,
    a: Vec<f32>,
    b: Vec<f32>,
}

fn inputs(c: &Case) -> Inputs {
    let mut g = Rng(c.seed);
    let n = c.total_rows * c.cols;
    let (blocksize, nested) = match c.base {
        Base::Nf4 { blocksize, nested, .. } | Base::Fp4 { blocksize, nested, .. } => (blocksize, nested),
        Base::Float(_) => (64, false),
    };
    let nb = (n as u64).div_ceil(blocksize) as usize;
    let codes: Vec<u8> = (0..n.div_ceil(2)).map(|_| g.next() as u8).collect();
    let absmax = if nested {
        (0..nb).map(|_| g.next() as u8).collect()
    } else {
        le(&(0..nb).map(|_| 0.002 + g.f32(0.2).abs()).collect::<Vec<_>>())
    };
    let nested_absmax = le(&(0..nb.div_ceil(256))
        .map(|_| 0.01 + g.f32(0.1).abs())
        .collect::<Vec<_>>());
    let nested_map = le(&(0..256).map(|i| (i as f32 - 127.0) / 128.0).collect::<Vec<_>>());
    let quant_map = match c.base {
        Base::Fp4 { neg_zero, .. } => le(&fp4_map(if neg_zero { -0.0 } else { 0.0 })),
        _ => le(&NF4),
    };
    let fdt = match c.base {
        Base::Float(dt) => dt,
        _ => FloatDtype::Bf16,
    };
    let float = encode(&(0..n).map(|_| g.f32(1.0)).collect::<Vec<_>>(), fdt);
    let a = (0..c.r * c.cols).map(|_| g.f32(0.1)).collect();
    let b = (0..c.total_rows * c.r).map(|_| g.f32(0.1)).collect();
    Inputs {
        codes,
        absmax,
        nested_absmax,
        nested_map,
        quant_map,
        float,
        a,
        b,
    }
}

fn tile<'a>(c: &Case, x: &'a Inputs) -> MergeTile<'a> {
    let base = match c.base {
        Base::Float(dt) => {
            let s = dt.size();
            BaseRows::Float {
                bytes: &x.float[c.row0 * c.cols * s..(c.row0 + c.rows) * c.cols * s],
                dtype: dt,
            }
        }
        Base::Nf4 { nested, blocksize, qdt }
        | Base::Fp4 {
            nested, blocksize, qdt, ..
        } => BaseRows::Bnb(QuantView {
            codes: &x.codes,
            absmax: if nested {
                AbsmaxRef::Nested {
                    codes: &x.absmax,
                    nested_absmax: &x.nested_absmax,
                    nested_map: &x.nested_map,
                    nested_blocksize: 256,
                    offset: 0.0123,
                }
            } else {
                AbsmaxRef::Plain(&x.absmax)
            },
            quant_map: &x.quant_map,
            blocksize,
            dtype: qdt,
        }),
    };
    MergeTile {
        row0: c.row0 as u64,
        rows: c.rows,
        cols: c.cols,
        base,
        lora: (c.r > 0).then(|| LoraRows {
            a: &x.a,
            b: &x.b[c.row0 * c.r..(c.row0 + c.rows) * c.r],
            r: c.r,
            scale: c.scale,
            delta_dtype: c.delta,
        }),
        out_dtype: c.out,
    }
}

const DTS: [FloatDtype; 3] = [FloatDtype::Bf16, FloatDtype::F16, FloatDtype::F32];

#[test]
fn gpu_tiles_equal_cpu_bytes() {
    on_every_backend!(|b| {
        let mut g = Rng(5);
        let ranks = [
            0usize, 1, 2, 3, 4, 5, 7, 8, 12, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 160,
        ];
        let shapes = [
            (1, 8),
            (3, 67),
            (17, 130),
            (64, 256),
            (65, 688),
            (5, 63),
            (33, 1),
            (7, 8),
            (130, 264),
            (2, 4104),
        ];
        for (i, &r) in ranks.iter().enumerate() {
            for (j, &(rows, cols)) in shapes.iter().enumerate() {
                let blocksize = [32u64, 64, 128, 256][(i + j) % 4];
                let qdt = DTS[(i + 2 * j) % 3];
                let base = match (i + j) % 6 {
                    0 => Base::Nf4 {
                        nested: true,
                        blocksize,
                        qdt,
                    },
                    1 => Base::Nf4 {
                        nested: false,
                        blocksize,
                        qdt,
                    },
                    2 => Base::Fp4 {
                        nested: true,
                        blocksize,
                        qdt,
                        neg_zero: j % 2 == 0,
                    },
                    3 => Base::Fp4 {
                        nested: false,
                        blocksize,
                        qdt,
                        neg_zero: j % 2 == 1,
                    },
                    k => Base::Float(DTS[(k + j) % 3]),
                };
                let row0 = [0usize, 1, 3, 64][j % 4];
                let c = Case {
                    base,
                    total_rows: row0 + rows + (j % 3),
                    row0,
                    rows,
                    cols,
                    r,
                    scale: [2.0, 0.5, std::f32::consts::SQRT_2, 16.0][i % 4],
                    delta: if i % 5 == 0 { DTS[j % 3] } else { FloatDtype::F32 },
                    out: DTS[(i + j) % 3],
                    seed: g.next(),
                };
                b.merge(&c);
            }
        }
    });
}

/// Whether `w` (one element of dtype `dt`) is a NaN whose payload the kernels need not match:
/// fp16 and f32 NaNs (kernels/README.md). A bf16 NaN must be torch's 0x7FC0, so never here.
fn nan_with_free_payload(dt: FloatDtype, w: &[u8]) -> bool {
    match dt {
        FloatDtype::F32 => f32::from_le_bytes([w[0], w[1], w[2], w[3]]).is_nan(),
        FloatDtype::F16 => u16::from_le_bytes([w[0], w[1]]) & 0x7FFF > 0x7C00,
        FloatDtype::Bf16 => false,
    }
}

/// Merges `c` (inputs changed by `edit`) on both backends; Ok(the tile is finite) when every
/// byte and the finite flag agree.
fn compare_with(gpu: &CudaBackend, cpu: &CpuBackend, c: &Case, edit: impl FnOnce(&mut Inputs)) -> Result<bool, String> {
    let mut x = inputs(c);
    edit(&mut x);
    compare_tile(gpu, cpu, &tile(c, &x), &format!("{c:?}"))
}

/// Merges `t` on both backends (into outputs filled differently, so a byte left unwritten
/// shows); Ok(the tile is finite) when every byte and the finite flag agree, else `Err`
/// naming `what` and the first differing element.
fn compare_tile(gpu: &CudaBackend, cpu: &CpuBackend, t: &MergeTile<'_>, what: &str) -> Result<bool, String> {
    let mut want = vec![0x5Au8; t.out_len()];
    let mut got = vec![0xA5u8; t.out_len()];
    let wf = cpu.merge_tile(t, &mut want).map_err(|e| format!("{what}: cpu: {e}"))?;
    let gf = gpu.merge_tile(t, &mut got).map_err(|e| format!("{what}: {e}"))?;
    // fp16/f32 NaN payloads are not specified (kernels/README.md): a NaN matches any NaN there.
    let sz = t.out_dtype.size();
    let nan = |w: &[u8]| nan_with_free_payload(t.out_dtype, w);
    let differs = |e: usize| {
        let (g, w) = (&got[e * sz..(e + 1) * sz], &want[e * sz..(e + 1) * sz]);
        g != w && !(nan(g) && nan(w))
    };
    if let Some(e) = (0..got.len() / sz).find(|&e| differs(e)) {
        let i = e * sz;
        return Err(format!(
            "{what}: first differing byte {i} (element {e}, row {}, col {}): gpu {:02x?} cpu {:02x?}",
            e / t.cols,
            e % t.cols,
            &got[e * sz..(e + 1) * sz],
            &want[e * sz..(e + 1) * sz]
        ));
    }
    if gf != wf {
        return Err(format!("{what}: finite flag gpu {gf} cpu {wf}"));
    }
    Ok(wf)
}

/// The lean kernels (`lora_merge_q64_*`, the common QLoRA case: blocksize 64, cols % 64 == 0,
/// quant-state dtype = output dtype, delta in the output dtype or f32): every rank from 1 to 128
/// that changes the k loop's shape, rows that end mid-warp, widths whose last block of columns
/// is half empty, tiles that start mid-weight, and values that overflow, underflow into
/// subnormals, or are NaN.
#[test]
fn gpu_lean_tiles_equal_cpu_bytes() {
    on_every_backend!(|b| {
        let mut g = Rng(11);
        let ranks = [1usize, 2, 3, 15, 16, 17, 31, 32, 33, 64, 100, 128];
        let shapes = [
            (1, 64),
            (7, 192),
            (64, 128),
            (65, 320),
            (130, 4160),
            (9, 576),
            (200, 640),
        ];
        for (i, &r) in ranks.iter().enumerate() {
            for (j, &(rows, cols)) in shapes.iter().enumerate() {
                for out in [FloatDtype::Bf16, FloatDtype::F16] {
                    for delta in [out, FloatDtype::F32] {
                        let k = i * 7 + j;
                        let nested = k % 2 == 0;
                        let base = if k % 3 == 0 {
                            Base::Fp4 {
                                nested,
                                blocksize: 64,
                                qdt: out,
                                neg_zero: k % 4 == 0,
                            }
                        } else {
                            Base::Nf4 {
                                nested,
                                blocksize: 64,
                                qdt: out,
                            }
                        };
                        let row0 = [0usize, 5, 64][k % 3];
                        // 0: plain; 1: deltas that overflow the output dtype; 2: tiny absmax and
                        // deltas (subnormal results; plain absmax only); 3: a NaN in A.
                        let mode = k % 4;
                        let scale = match mode {
                            1 => 3e37,
                            2 => 1e-3,
                            _ => [2.0, 0.5, std::f32::consts::SQRT_2][k % 3],
                        };
                        let c = Case {
                            base,
                            total_rows: row0 + rows + (k % 2),
                            row0,
                            rows,
                            cols,
                            r,
                            scale,
                            delta,
                            out,
                            seed: g.next(),
                        };
                        b.merge_with(&c, |x| {
                            if mode == 2 && !nested {
                                let tiny = if out == FloatDtype::F16 { 1e-6 } else { 1e-37 };
                                map_f32(&mut x.absmax, |_, v| v * tiny);
                                for a in &mut x.a {
                                    *a *= tiny;
                                }
                            }
                            if mode == 3 {
                                let at = (r / 2) * cols + (cols / 3);
                                x.a[at] = f32::NAN;
                            }
                        });
                    }
                }
            }
        }
        // Large but finite outputs (|w| up to about 2e29 in bf16, 2e3 in fp16): their pairwise
        // products overflow, which sends the kernel's cheap not-finite check to its exact recheck;
        // that must leave the bytes alone and the tile flagged finite.
        // An NF4 tile of 130 rows (the lean kernel's case) with an f32 delta.
        let nf4_tile = |out, nested, cols, r, scale, seed| Case {
            base: Base::Nf4 {
                nested,
                blocksize: 64,
                qdt: out,
            },
            total_rows: 130,
            row0: 0,
            rows: 130,
            cols,
            r,
            scale,
            delta: FloatDtype::F32,
            out,
            seed,
        };
        for out in [FloatDtype::Bf16, FloatDtype::F16] {
            for nested in [false, true] {
                for r in [1usize, 16, 64] {
                    let c = nf4_tile(out, nested, 4160, r, 2.0, g.next());
                    let big = if out == FloatDtype::F16 { 1e4f32 } else { 1e30 };
                    let res = b.merge_with(&c, |x| {
                        let f = if nested { &mut x.nested_absmax } else { &mut x.absmax };
                        map_f32(f, |_, v| v * big);
                    });
                    if res == Some(false) {
                        b.fail(format!("{c:?}: meant to be finite, but the CPU flags it"));
                    }
                }
            }
        }
        // Scales that are powers of two with deltas that overflow f32, absmax that makes w huge (or
        // Inf in fp16), and both at once, in a few blocks of an otherwise ordinary tile. (A variant
        // that folded such scales into one FMA was checked on these and not kept: kernels/README.md.)
        for out in [FloatDtype::Bf16, FloatDtype::F16] {
            for nested in [false, true] {
                let huge = if out == FloatDtype::F16 { 1e6f32 } else { 2f32.powi(102) };
                for (scale, big_a, big_absmax) in [
                    (2f32.powi(127), 100f32, 1f32),
                    (2.0, 1.0, huge),
                    (2f32.powi(127), 100.0, huge),
                ] {
                    let c = nf4_tile(out, nested, 640, 16, scale, g.next());
                    b.merge_with(&c, |x| {
                        // a few blocks only: the rest of the tile stays ordinary
                        let f = if nested { &mut x.nested_absmax } else { &mut x.absmax };
                        map_f32(f, |i, v| if i % 7 == 3 { v * big_absmax } else { v });
                        for a in &mut x.a {
                            *a *= big_a;
                        }
                    });
                }
            }
        }
    });
}

#[test]
fn gpu_big_tensors_equal_cpu_bytes() {
    on_every_backend!(|b| {
        let bf = FloatDtype::Bf16;
        let f32_ = FloatDtype::F32;
        let cases = [
            (
                Base::Nf4 {
                    nested: true,
                    blocksize: 64,
                    qdt: bf,
                },
                4096,
                4096,
                64,
                bf,
            ),
            (
                Base::Nf4 {
                    nested: true,
                    blocksize: 64,
                    qdt: bf,
                },
                14336,
                4096,
                16,
                bf,
            ),
            (
                Base::Fp4 {
                    nested: false,
                    blocksize: 64,
                    qdt: bf,
                    neg_zero: false,
                },
                4096,
                14336,
                128,
                bf,
            ),
            (
                Base::Fp4 {
                    nested: true,
                    blocksize: 128,
                    qdt: FloatDtype::F16,
                    neg_zero: false,
                },
                1024,
                4096,
                1,
                FloatDtype::F16,
            ),
            (
                Base::Nf4 {
                    nested: false,
                    blocksize: 64,
                    qdt: bf,
                },
                3001,
                4104,
                33,
                f32_,
            ),
            (Base::Float(bf), 8192, 8192, 64, bf),
            (Base::Float(FloatDtype::F16), 4096, 4100, 16, FloatDtype::F16),
        ];
        let out_bytes: u64 = cases.iter().map(|c| (c.1 * c.2 * c.4.size()) as u64).sum();
        for (k, (base, rows, cols, r, out)) in cases.into_iter().enumerate() {
            let c = Case {
                base,
                total_rows: rows,
                row0: 0,
                rows,
                cols,
                r,
                scale: 2.0,
                delta: FloatDtype::F32,
                out,
                seed: 100 + k as u64,
            };
            let t0 = std::time::Instant::now();
            let ok = b.merge(&c).is_some();
            println!(
                "  {rows}x{cols} r={r} {base:?} -> {out:?}: {ok:?} in {:.2}s",
                t0.elapsed().as_secs_f64()
            );
        }
        b.assert_none_differ();
        // The backend's account of where its time went (`--json` stages.gpu): every one of these
        // tensors ran on the GPU, so every output byte, plus each chunk's 4-byte flag word, came back
        // through it; and two streams can at most double the busy time.
        let t = b.gpu.gpu_times().expect("the cuda backend reports its times");
        println!("  {t:?}");
        assert_eq!(t.d2h_bytes, out_bytes + 4 * t.chunks);
        assert!(t.chunks >= 7 && t.h2d_bytes > 0);
        assert!(t.h2d_s > 0.0 && t.kernel_s > 0.0 && t.d2h_s > 0.0 && t.stage_in_s > 0.0 && t.copy_out_s > 0.0);
        let sum = t.h2d_s + t.kernel_s + t.d2h_s;
        assert!(
            t.gpu_busy_s <= sum * 1.0001 && t.gpu_busy_s >= sum / 2.0 * 0.9999,
            "{t:?}"
        );
    });
}

/// A page-locked output (what the pipeline's buffers are once `pin_output` registered them):
/// the results are downloaded straight into it, with no copy out of the backend's staging, and
/// the bytes are the CPU's. After the release the same buffer goes through the staging again.
#[test]
fn gpu_merges_into_a_pinned_output_equal_cpu_bytes() {
    on_every_backend!(|b| {
        let c = Case {
            base: Base::Nf4 {
                nested: true,
                blocksize: 64,
                qdt: FloatDtype::Bf16,
            },
            total_rows: 3000,
            row0: 0,
            rows: 3000,
            cols: 4096,
            r: 16,
            scale: 2.0,
            delta: FloatDtype::F32,
            out: FloatDtype::Bf16,
            seed: 77,
        };
        let x = inputs(&c);
        let t = tile(&c, &x);
        let len = t.out_len();
        let mut want = vec![0u8; len];
        let gpu = &b.gpu;
        b.cpu.merge_tile(&t, &mut want).unwrap();
        // The tile sits 4096 + 16 bytes into a larger buffer, as in the pipeline's (a page lead).
        let lead = 4096 + 16;
        let mut buf = vec![0xA5u8; lead + len + 4096];
        let release = gpu
            .pin_output(&mut buf)
            .expect("the cuda backend pins an output buffer");
        let before = gpu.gpu_times().unwrap();
        gpu.merge_tile(&t, &mut buf[lead..lead + len]).unwrap();
        let after = gpu.gpu_times().unwrap();
        assert!(
            buf[lead..lead + len] == want[..],
            "pinned output differs from the CPU's"
        );
        assert!(
            buf[..lead].iter().chain(&buf[lead + len..]).all(|&b| b == 0xA5),
            "bytes outside the tile changed"
        );
        assert!(after.chunks > before.chunks);
        assert_eq!(
            after.d2h_bytes - before.d2h_bytes,
            len as u64 + 4 * (after.chunks - before.chunks)
        );
        assert_eq!(
            after.copy_out_s, before.copy_out_s,
            "a pinned output needs no copy out of staging"
        );
        release();
        buf.fill(0xA5);
        gpu.merge_tile(&t, &mut buf[lead..lead + len]).unwrap();
        let again = gpu.gpu_times().unwrap();
        assert!(
            buf[lead..lead + len] == want[..],
            "output after the release differs from the CPU's"
        );
        assert!(
            again.copy_out_s > after.copy_out_s,
            "after the release the output goes through staging"
        );
    });
}

/// NaN, infinities, subnormals and values that overflow the output dtype. Non-NaN outputs and
/// bf16 NaN (always 0x7FC0) are compared bit for bit; the payload of an f16/f32 NaN is not
/// specified (the CPU's own scalar and SIMD paths need not agree on it), only that it is NaN.
#[test]
fn gpu_special_values_equal_cpu() {
    on_every_backend!(|backends| {
        let specials = [
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7F81_2345),
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
            f32::from_bits(0x7F7F_8000),
            f32::from_bits(0x7F7F_7FFF),
            65504.0,
            65520.0,
            65519.99,
            f32::from_bits(1),
            -f32::from_bits(0x0040_0000),
            f32::MIN_POSITIVE,
            1e-40,
            6e-8,
            3e-8,
            0.0,
            -0.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            1.0 + 1.0 / 2048.0,
        ];
        let (rows, cols) = (4, specials.len() * 8);
        let mut base = Vec::new();
        for i in 0..rows * cols {
            base.push(specials[(i * 7 + i / cols) % specials.len()]);
        }
        for (r, scale) in [(0usize, 1.0f32), (4, 1.0), (4, 1e30), (8, f32::INFINITY)] {
            let a: Vec<f32> = (0..r * cols).map(|i| [0.5f32, -0.25, 1e-3, 3.0][i % 4]).collect();
            let b: Vec<f32> = (0..rows * r).map(|i| [1.0f32, -1.0, 0.125][i % 3]).collect();
            for out in DTS {
                let bytes = le(&base);
                let t = MergeTile {
                    row0: 0,
                    rows,
                    cols,
                    base: BaseRows::Float {
                        bytes: &bytes,
                        dtype: FloatDtype::F32,
                    },
                    lora: (r > 0).then(|| LoraRows {
                        a: &a,
                        b: &b,
                        r,
                        scale,
                        delta_dtype: FloatDtype::F32,
                    }),
                    out_dtype: out,
                };
                backends.merge_tile(&t, &format!("special values, r {r} scale {scale} out {out:?}"));
            }
        }
    });
}

/// `merged_4bit`'s requantization as the host does it (src/pipeline/requant.rs, `host_quant`): the
/// tile merged by the CPU backend into `t.out_dtype`, widened to f32, quantized block by block
/// (the weight's last block partial when `numel % bs != 0`) and packed. Returns (codes, absmax
/// bits, finite).
fn host_requant(cpu: &CpuBackend, t: &MergeTile<'_>, q: &QuantSpec) -> (Vec<u8>, Vec<u32>, bool) {
    let mut bytes = vec![0u8; t.out_len()];
    let finite = cpu.merge_tile(t, &mut bytes).unwrap();
    let len = t.rows * t.cols;
    let mut x = vec![0f32; len];
    loraweld::format::dtype::decode_into(&bytes, t.out_dtype, &mut x);
    let bs = q.blocksize;
    let k0 = t.row0 as usize * t.cols;
    let n = q.numel as usize;
    let mut codes = vec![0u8; len];
    let mut am = Vec::new();
    for (j, (b, c)) in x.chunks(bs).zip(codes.chunks_mut(bs)).enumerate() {
        let partial = k0 + j * bs + bs > n && !n.is_multiple_of(bs);
        am.push(encode::quantize_block(b, partial, q.quant_type, c).to_bits());
    }
    let mut packed = vec![0u8; len.div_ceil(2)];
    encode::pack(&codes, encode::zero_code(q.quant_type), &mut packed);
    (packed, am, finite)
}

/// Requantizes `t` on the GPU (codes and absmax, then the absmax alone) and compares with
/// [`host_requant`]; `Err` says what differs.
fn compare_requant(
    gpu: &CudaBackend,
    cpu: &CpuBackend,
    t: &MergeTile<'_>,
    q: &QuantSpec,
    what: &str,
) -> Result<(), String> {
    let (want_codes, want_am, want_finite) = host_requant(cpu, t, q);
    let len = t.rows * t.cols;
    let mut codes = vec![0xA5u8; len.div_ceil(2)];
    let mut am = vec![f32::from_bits(0x7FA5_A5A5); len.div_ceil(q.blocksize)];
    let finite = gpu
        .quant_tile(t, q, Some(&mut codes), &mut am)
        .map_err(|e| format!("{what}: {e}"))?
        .ok_or_else(|| format!("{what}: the GPU backend did not requantize"))?;
    let mut am_only = vec![f32::from_bits(0x7FA5_A5A5); am.len()];
    gpu.quant_tile(t, q, None, &mut am_only)
        .map_err(|e| format!("{what}: {e}"))?
        .ok_or_else(|| format!("{what}: the GPU backend did not compute the absmax"))?;
    if finite != want_finite {
        return Err(format!("{what}: finite {finite}, cpu {want_finite}"));
    }
    for (name, got) in [("absmax", &am), ("absmax-only pass", &am_only)] {
        if let Some(b) = (0..want_am.len()).find(|&b| got[b].to_bits() != want_am[b]) {
            return Err(format!(
                "{what}: {name} of block {b}: gpu {:08x} cpu {:08x}",
                got[b].to_bits(),
                want_am[b]
            ));
        }
    }
    if let Some(i) = (0..codes.len()).find(|&i| codes[i] != want_codes[i]) {
        return Err(format!(
            "{what}: code byte {i} (block {}): gpu {:02x} cpu {:02x}",
            2 * i / q.blocksize,
            codes[i],
            want_codes[i]
        ));
    }
    Ok(())
}

/// `merged_4bit` on the GPU: merge plus requantization (`kernels/quant4.ptx`) against the host's,
/// bit for bit: NF4 and FP4 targets, blocksizes 8 to 4096, pre-rounding through bf16/fp16 or
/// none (f32), 4-bit and 16-bit bases, r from 0 to 128, odd shapes with a partial last block and
/// an odd element count, tiles that start mid-weight, and chunks cut by a small device budget.
#[test]
fn gpu_requantization_equals_cpu_bytes() {
    on_every_backend!(|b| {
        // 8 MiB of device memory: 1 MiB chunks, so the larger tiles cross several chunk edges.
        let small = CudaBackend::new(MemoryBudget::Bytes(8 << 20), None).unwrap();
        let mut g = Rng(77);
        let qts = [QuantType::Nf4, QuantType::Fp4];
        let shapes = [
            (64usize, 256usize),
            (33, 67),
            (7, 9),
            (128, 4096),
            (1, 8),
            (640, 1000),
            (17, 4104),
            (2048, 520),
        ];
        for (i, &(rows, cols)) in shapes.iter().enumerate() {
            for (j, bs) in [64usize, 32, 128, 256, 8, 512, 4096, 1024].into_iter().enumerate() {
                let qt = qts[(i + j) % 2];
                let pre = DTS[(i + 2 * j) % 3];
                let r = [16usize, 0, 1, 64, 7, 128, 33, 2][(i + j) % 8];
                let base = match (i + j) % 4 {
                    0 => Base::Nf4 {
                        nested: true,
                        blocksize: 64,
                        qdt: FloatDtype::Bf16,
                    },
                    1 => Base::Fp4 {
                        nested: false,
                        blocksize: 128,
                        qdt: pre,
                        neg_zero: false,
                    },
                    2 => Base::Float(DTS[j % 3]),
                    _ => Base::Nf4 {
                        nested: false,
                        blocksize: 64,
                        qdt: pre,
                    },
                };
                // A tile that starts mid-weight, on a block boundary, and one that ends it.
                let step = bs / gcd(cols, bs);
                let row0 = if j % 2 == 1 { step } else { 0 };
                let total_rows = row0 + rows;
                let c = Case {
                    base,
                    total_rows,
                    row0,
                    rows,
                    cols,
                    r,
                    scale: [2.0, 0.5, std::f32::consts::SQRT_2][j % 3],
                    delta: FloatDtype::F32,
                    out: pre,
                    seed: g.next(),
                };
                let x = inputs(&c);
                let t = tile(&c, &x);
                let q = QuantSpec {
                    quant_type: qt,
                    blocksize: bs,
                    numel: (total_rows * cols) as u64,
                };
                let backend = ((i + j) % 3 == 0).then_some(&small);
                b.requant(backend, &t, &q, &format!("{c:?} bs {bs} {qt:?}"));
            }
        }
    });
}

/// Requantized codes downloaded straight into a page-locked output (the pipeline's pool
/// buffers are) equal the host's, and nothing around the tile changes.
#[test]
fn gpu_requantizes_into_a_pinned_output_equal_cpu_bytes() {
    on_every_backend!(|b| {
        let c = Case {
            base: Base::Nf4 {
                nested: true,
                blocksize: 64,
                qdt: FloatDtype::Bf16,
            },
            total_rows: 3001,
            row0: 0,
            rows: 3001,
            cols: 4096,
            r: 16,
            scale: 2.0,
            delta: FloatDtype::F32,
            out: FloatDtype::Bf16,
            seed: 78,
        };
        let x = inputs(&c);
        let t = tile(&c, &x);
        let q = QuantSpec {
            quant_type: QuantType::Nf4,
            blocksize: 64,
            numel: (c.total_rows * c.cols) as u64,
        };
        let (want_codes, want_am, _) = host_requant(&b.cpu, &t, &q);
        let gpu = &b.gpu;
        let len = want_codes.len();
        let lead = 4096 + 16;
        let mut buf = vec![0xA5u8; lead + len + 4096];
        let release = gpu
            .pin_output(&mut buf)
            .expect("the cuda backend pins an output buffer");
        let mut am = vec![0f32; want_am.len()];
        gpu.quant_tile(&t, &q, Some(&mut buf[lead..lead + len]), &mut am)
            .unwrap()
            .expect("the GPU requantizes");
        assert!(
            buf[lead..lead + len] == want_codes[..],
            "pinned codes differ from the CPU's"
        );
        assert!(
            buf[..lead].iter().chain(&buf[lead + len..]).all(|&b| b == 0xA5),
            "bytes outside the tile changed"
        );
        assert!(
            am.iter().map(|a| a.to_bits()).eq(want_am.iter().copied()),
            "absmax differs"
        );
        release();
    });
}

/// The requantization of special values: NaN (skipped by the max, no bound below it), +-Inf
/// (a zero scale), subnormals (kept, and the 1e-38 floor), zeros, all-zero blocks, and a
/// partial last block, through f32 and bf16 values.
#[test]
fn gpu_requantization_of_special_values_equals_cpu() {
    on_every_backend!(|b| {
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::from_bits(1),
            -f32::from_bits(0x0040_0000),
            1e-38,
            1e-39,
            f32::MIN_POSITIVE,
            0.0,
            -0.0,
            0.5,
            -0.75,
            0.33,
        ];
        for (rows, cols) in [(12usize, 64usize), (5, 77)] {
            // Blocks of specials at stride 7, then runs of zeros and of tiny values alone.
            let mut base = Vec::new();
            for i in 0..rows * cols {
                let v = match (i / 64) % 4 {
                    0 => specials[(i * 7) % specials.len()],
                    1 => 0.0,
                    2 => specials[4 + i % 5],
                    _ => specials[9 + i % 5] * (1.0 + i as f32 / 1000.0),
                };
                base.push(v);
            }
            let bytes = le(&base);
            for out in [FloatDtype::F32, FloatDtype::Bf16] {
                for qt in [QuantType::Nf4, QuantType::Fp4] {
                    for bs in [64usize, 32] {
                        let t = MergeTile {
                            row0: 0,
                            rows,
                            cols,
                            base: BaseRows::Float {
                                bytes: &bytes,
                                dtype: FloatDtype::F32,
                            },
                            lora: None,
                            out_dtype: out,
                        };
                        let q = QuantSpec {
                            quant_type: qt,
                            blocksize: bs,
                            numel: (rows * cols) as u64,
                        };
                        b.requant(None, &t, &q, &format!("{rows}x{cols} {out:?} {qt:?} bs {bs}"));
                    }
                }
            }
        }
    });
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[test]
fn gpu_fixture_merges_equal_cpu() {
    on_every_backend!(|b| {
        let fx = fixtures();
        let tmp = tempfile::tempdir().unwrap();
        let refs = [
            ("lora", None, "ref_merged_16bit"),
            ("lora_on_nf4", None, "ref_merged_16bit_from_nf4"),
            ("lora_on_nf4", Some("base_fp4"), "ref_merged_16bit_from_fp4"),
        ];
        for (adapter, base, reference) in refs {
            let out = tmp.path().join(format!("{adapter}-{}", base.unwrap_or("default")));
            let mut o = SaveOptions::new(fx.join(adapter), &out);
            o.base = base.map(|b| fx.join(b));
            o.max_shard_size = 2_000_000;
            o.shard_order = ShardOrder::Module;
            let [_, gpu_out] = b.save(&o, |device, rep| {
                println!("  {adapter} base {base:?}: {} in {:.3}s", rep.backend, rep.seconds);
                // The report says where a GPU run's compute time went, and only for a GPU run.
                match (device, &rep.stages.gpu) {
                    (DeviceChoice::Cuda, Some(g)) => assert!(g.chunks > 0 && g.d2h_bytes > 0, "{g:?}"),
                    (DeviceChoice::Cpu, None) => {}
                    (d, g) => panic!("{d:?} run reported stages.gpu = {g:?}"),
                }
            });
            // The PEFT-made reference too, where its shard layout is module order.
            if adapter == "lora_on_nf4" {
                let res = weights_diff(&gpu_out, &fx.join(reference));
                b.check(res.map_err(|e| format!("{adapter}: gpu vs {reference}: {e}")));
            }
        }
    });
}

/// What a CUDA build does on a machine with no usable GPU (CI runs this against the stub driver).
/// `merged_4bit` of the fixtures on the GPU (merge and requantization on the device, double
/// quant statistics included) gives the CPU's files, byte for byte.
#[test]
fn gpu_fixture_merged_4bit_equals_cpu() {
    on_every_backend!(|b| {
        let fx = fixtures();
        let tmp = tempfile::tempdir().unwrap();
        for (adapter, base) in [("lora_on_nf4", None), ("lora_on_nf4", Some("base_fp4")), ("lora", None)] {
            let out = tmp.path().join(format!("q4-{adapter}-{}", base.unwrap_or("default")));
            let mut o = SaveOptions::new(fx.join(adapter), &out);
            o.base = base.map(|b| fx.join(b));
            o.save_method = SaveMethod::Merged4bit;
            o.max_shard_size = 2_000_000;
            b.save(&o, |device, rep| {
                println!(
                    "  merged_4bit {adapter} base {base:?}: {} in {:.3}s",
                    rep.backend, rep.seconds
                );
                if device == DeviceChoice::Cuda {
                    let g = rep.stages.gpu.as_ref().expect("a GPU run reports stages.gpu");
                    assert!(g.chunks > 0, "{g:?}");
                }
            });
        }
    });
}

#[test]
fn no_gpu_auto_falls_back_with_one_notice_and_cuda_fails_clearly() {
    if CudaBackend::new(MemoryBudget::Fraction(0.5), None).is_ok() {
        println!("no_gpu_auto_falls_back…: SKIPPED, this machine has a usable GPU");
        return;
    }
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_loraweld");
    let out = tmp.path().join("auto");
    let o = Command::new(bin)
        .args(["save", fx.join("lora_on_nf4").to_str().unwrap(), out.to_str().unwrap()])
        .args(["--max-shard-size", "2MB", "--shard-order", "module"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let notices: Vec<&str> = stderr.lines().filter(|l| l.contains("notice")).collect();
    if cfg!(feature = "cuda") {
        assert_eq!(notices.len(), 1, "{stderr}");
        assert!(
            notices[0].starts_with("loraweld: notice: no usable CUDA device ("),
            "{stderr}"
        );
        assert!(notices[0].ends_with("; using the CPU"), "{stderr}");
    } else {
        assert!(
            notices.is_empty(),
            "a build without cuda has nothing to fall back from: {stderr}"
        );
    }
    // What the CPU writes: PEFT's merge, in its layout.
    assert_same_output(&out, &fx.join("ref_merged_16bit_from_nf4"), SHARDED_MODEL_FILES);

    let o = Command::new(bin)
        .args([
            "save",
            fx.join("lora_on_nf4").to_str().unwrap(),
            tmp.path().join("cuda").to_str().unwrap(),
        ])
        .args(["--device", "cuda"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let needle = if cfg!(feature = "cuda") {
        "loraweld: error: --device cuda: no usable CUDA device: "
    } else {
        "loraweld: error: --device cuda: this build has no CUDA support"
    };
    assert!(stderr.starts_with(needle), "{stderr}");
    assert!(!tmp.path().join("cuda").exists());
}

#[test]
fn gpu_kquants_equal_cpu_bytes() {
    use loraweld::format::dtype::{bf16_to_f32, f16_to_f32};
    use loraweld::format::ggml::{bf16_bits, f16_bits};
    use loraweld::format::ggml_rows::{encode_rows, Encoding, Writer};
    use loraweld::format::gguf::GgmlType;
    on_every_backend!(|backends| {
        assert_eq!(
            backends.gpu.device_kquants(),
            [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K]
        );
        let mut g = Rng(19);
        // The second set is two of the launcher's chunks (32768 blocks) and part of a third, so
        // both slots and a partial chunk run.
        for (nb, cols) in [(1200usize, 1024usize), (2 * 32768 + 20, 256 * 5)] {
            let nb = nb / (cols / 256) * (cols / 256);
            let vals = kquant_blocks(&mut g, nb);
            for ty in [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K] {
                for f16 in [false, true] {
                    let enc = Encoding {
                        ty,
                        writer: Writer::Quantizer,
                    };
                    let rounded: Vec<f32> = vals
                        .iter()
                        .map(|x| {
                            if f16 {
                                f16_to_f32(f16_bits(*x))
                            } else {
                                bf16_to_f32(bf16_bits(*x))
                            }
                        })
                        .collect();
                    let bytes = enc.row_bytes(cols as u64).unwrap() as usize * (vals.len() / cols);
                    let mut want = vec![0u8; bytes];
                    encode_rows(enc, &rounded, cols, &mut want);
                    let half: Vec<u8> = vals
                        .iter()
                        .flat_map(|x| if f16 { f16_bits(*x) } else { bf16_bits(*x) }.to_le_bytes())
                        .collect();
                    let mut got = vec![0xAAu8; bytes];
                    let res = match backends.gpu.kquant(ty, &half, f16, &mut got) {
                        Ok(()) => {
                            let bpb = bytes / (vals.len() / 256);
                            let bad: Vec<usize> = (0..vals.len() / 256)
                                .filter(|b| got[b * bpb..(b + 1) * bpb] != want[b * bpb..(b + 1) * bpb])
                                .collect();
                            if bad.is_empty() {
                                Ok(())
                            } else {
                                let b = bad[0];
                                Err(format!(
                                    "{ty:?} f16={f16} {nb} blocks: {} blocks differ, first {b} (kind {}): gpu {:02x?} cpu {:02x?}",
                                    bad.len(),
                                    b % 12,
                                    &got[b * bpb..b * bpb + 24],
                                    &want[b * bpb..b * bpb + 24]
                                ))
                            }
                        }
                        Err(e) => Err(format!("{ty:?} f16={f16} {nb} blocks: the kernel call failed: {e}")),
                    };
                    backends.check(res);
                }
            }
        }
    });
}
