//! Criterion benches for the compute stage: one merge tile through the CPU backend, from a
//! bf16 base and from an NF4 double-quant base, reported as bytes of bf16 output per second,
//! per core (one thread) for every instruction set the CPU has, and with all threads for the
//! best one.
//!
//!   cargo bench --bench kernels

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use loraweld::compute::cpu::CpuBackend;
use loraweld::compute::simd::Isa;
use loraweld::compute::{Backend, BaseRows, LoraRows, MergeTile};
use loraweld::format::bnb::{AbsmaxRef, QuantView, NF4};
use loraweld::FloatDtype;

fn bench(c: &mut Criterion) {
    let (rows, cols) = (512usize, 4096usize);
    let n = rows * cols;
    let base: Vec<u8> = (0..n)
        .flat_map(|i| half::bf16::from_f32((i % 97) as f32 * 1e-3).to_le_bytes())
        .collect();
    let codes: Vec<u8> = (0..n / 2).map(|i| (i * 31) as u8).collect();
    let nb = n / 64;
    let absmax: Vec<u8> = (0..nb).map(|i| i as u8).collect();
    let nested: Vec<u8> = (0..nb.div_ceil(256)).flat_map(|_| 0.01f32.to_le_bytes()).collect();
    let nmap: Vec<u8> = (0..256)
        .flat_map(|i| ((i as f32 - 127.5) / 127.5).to_le_bytes())
        .collect();
    let qmap: Vec<u8> = NF4.iter().flat_map(|x| x.to_le_bytes()).collect();
    // The 4-bit base: NF4 with double quant, blocksize 64.
    let nf4 = || QuantView {
        codes: &codes,
        absmax: AbsmaxRef::Nested {
            codes: &absmax,
            nested_absmax: &nested,
            nested_map: &nmap,
            nested_blocksize: 256,
            offset: 0.02,
        },
        quant_map: &qmap,
        blocksize: 64,
        dtype: FloatDtype::Bf16,
    };
    let mut configs: Vec<(Isa, Option<usize>)> = Isa::available().into_iter().map(|i| (i, Some(1))).collect();
    configs.push((Isa::detect(), None));
    for (isa, threads) in configs {
        let be = CpuBackend::new(threads).unwrap().with_isa(isa);
        let mut g = c.benchmark_group(format!("merge_tile {rows}x{cols} on {}", be.name()));
        g.throughput(Throughput::Bytes((n * 2) as u64));
        for r in [8usize, 16, 64] {
            let a: Vec<f32> = (0..r * cols).map(|i| (i % 13) as f32 * 1e-3).collect();
            let b: Vec<f32> = (0..rows * r).map(|i| (i % 7) as f32 * 1e-3).collect();
            for kind in ["bf16", "nf4"] {
                let base_rows = if kind == "bf16" {
                    BaseRows::Float {
                        bytes: &base,
                        dtype: FloatDtype::Bf16,
                    }
                } else {
                    BaseRows::Bnb(nf4())
                };
                let tile = MergeTile {
                    row0: 0,
                    rows,
                    cols,
                    base: base_rows,
                    lora: Some(LoraRows {
                        a: &a,
                        b: &b,
                        r,
                        scale: 2.0,
                        delta_dtype: FloatDtype::F32,
                    }),
                    out_dtype: FloatDtype::Bf16,
                };
                let mut out = vec![0u8; tile.out_len()];
                g.bench_with_input(BenchmarkId::new(kind, format!("r{r}")), &tile, |bch, t| {
                    bch.iter(|| be.merge_tile(t, &mut out).unwrap())
                });
            }
            let tile = MergeTile {
                row0: 0,
                rows,
                cols,
                base: BaseRows::Bnb(nf4()),
                lora: None,
                out_dtype: FloatDtype::Bf16,
            };
            if r == 8 {
                let mut out = vec![0u8; tile.out_len()];
                g.bench_with_input(BenchmarkId::new("nf4_decode_only", "r0"), &tile, |bch, t| {
                    bch.iter(|| be.merge_tile(t, &mut out).unwrap())
                });
            }
        }
        g.finish();
    }
}

/// GGUF row encoding, per core, for every instruction set the CPU has: 64 rows of 4096 values,
/// reported as values per second (the k-quant searches dominate a Q4_K_M export).
fn gguf_rows(c: &mut Criterion) {
    use loraweld::format::ggml_rows::{encode_row_with, Encoding, Isa as RowIsa, Writer};
    use loraweld::format::gguf::GgmlType;
    let (rows, cols) = (64usize, 4096usize);
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| (((i * 2654435761usize) % 100_003) as f32 / 50_001.5 - 1.0) * 0.02)
        .collect();
    for isa in RowIsa::available() {
        let mut g = c.benchmark_group(format!("gguf rows {rows}x{cols} {isa:?}"));
        g.throughput(Throughput::Elements((rows * cols) as u64));
        for (ty, writer) in [
            (GgmlType::Q4K, Writer::Quantizer),
            (GgmlType::Q5K, Writer::Quantizer),
            (GgmlType::Q6K, Writer::Quantizer),
            (GgmlType::Q8_0, Writer::Converter),
        ] {
            let enc = Encoding { ty, writer };
            let rb = enc.row_bytes(cols as u64).unwrap() as usize;
            let mut out = vec![0u8; rb];
            g.bench_function(format!("{ty:?}"), |b| {
                b.iter(|| {
                    for r in x.chunks_exact(cols) {
                        encode_row_with(isa, enc, r, &mut out);
                    }
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench, gguf_rows);
criterion_main!(benches);
