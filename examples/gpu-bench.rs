//! GPU kernel throughput at Llama-70B shapes against the card's own ceilings, measured in the
//! same run: device-to-device copy bandwidth (bytes read + written) and the plain f32 FMA rate.
//! Then the host-to-host tile path (pinned staging, two streams) on the same shapes.
//!
//! ```text
//! cargo build --release --features cuda --example gpu-bench
//! target/release/examples/gpu-bench            # prints a table; CSV lines start with "csv,"
//! ```

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("gpu-bench: this build has no CUDA support (rebuild with --features cuda)");
    std::process::exit(2);
}

#[cfg(feature = "cuda")]
fn main() {
    if let Err(e) = run() {
        eprintln!("gpu-bench: error: {e}");
        std::process::exit(1);
    }
}

#[cfg(feature = "cuda")]
fn run() -> loraweld::Result<()> {
    use loraweld::compute::cuda::bench::Bench;
    use loraweld::compute::cuda::CudaBackend;
    use loraweld::compute::{Backend, BaseRows, LoraRows, MergeTile};
    use loraweld::format::bnb::{AbsmaxRef, QuantView, NF4};
    use loraweld::{FloatDtype, MemoryBudget};
    use std::time::Instant;

    let b = Bench::new()?;
    println!("device: {} (merge kernels: {})", b.device, b.image);
    // LW_SOAK=1: a few seconds of each kernel back to back, with wall-clock marks, so a clock
    // and power log taken beside it (nvidia-smi -lms) shows what the SM clock is under each
    // load; then exit.
    if std::env::var_os("LW_SOAK").is_some() {
        let now_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        };
        // about 10 s of the probe (25-30 ms a call on an H100)
        for _ in 0..400 {
            let t0 = now_ms();
            let f = b.fma_tflops("fma_rate")?;
            println!("soak,fma_rate,{t0},{},{f:.2}", now_ms());
        }
        for (rows, cols, r, iters) in [(8192usize, 28672usize, 64usize, 1500usize), (8192, 28672, 16, 4000)] {
            let t0 = now_ms();
            let t = b.nf4_merge(rows, cols, r, iters)?;
            println!(
                "soak,merge_r{r},{t0},{},{:.2},{:.4},{:.4},{:.4}",
                now_ms(),
                t.tflops_at(t.ms_b2b),
                t.ms,
                t.ms_b2b,
                t.ms_cold
            );
        }
        return Ok(());
    }
    let c = b.copy_rates(1 << 30)?;
    let copy2 = b.copy_rates(1 << 30)?.alone;
    // The FMA ceiling: `fma_rate` (128 FMAs per loop trip). `fma_rate32` (32 per trip, the probe
    // of earlier runs) spends 3 of every 35 issue slots on its loop, so it reads about 9% low on
    // a card that issues one FFMA per scheduler per cycle; it is timed too, for comparison.
    let fma = b.fma_tflops("fma_rate")?;
    let fma32 = b.fma_tflops("fma_rate32")?;
    println!(
        "device-to-device copy (bytes read + written, 1 GiB): {:.0} GB/s alone, again {copy2:.0}; {:.0} back to back; {:.0} from a cold L2",
        c.alone, c.b2b, c.cold
    );
    println!(
        "plain f32 FMA rate: {fma:.1} TFLOP/s (fma_rate, 128 FMAs per loop trip); {fma32:.1} (fma_rate32, 32 per trip)"
    );
    // The ceiling is the best of them: the higher it is, the harder the target.
    let copy = c.alone.max(copy2).max(c.b2b).max(c.cold);
    let fma = fma.max(fma32);
    println!("csv,ceiling,copy_gbs,{copy:.1}");
    println!("csv,ceiling,fma_tflops,{fma:.2}");
    println!("csv,ceiling,fma32_tflops,{fma32:.2}");

    let mut shapes = vec![(8192usize, 8192usize), (8192, 28672), (28672, 8192), (1024, 8192)];
    let mut ranks = vec![16usize, 64];
    // LW_SHAPES=8192x8192,1024x8192 and LW_RANKS=16 narrow the run (for profiling).
    if let Ok(v) = std::env::var("LW_SHAPES") {
        shapes = v
            .split(',')
            .filter_map(|x| x.split_once('x'))
            .filter_map(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .collect();
    }
    if let Ok(v) = std::env::var("LW_RANKS") {
        ranks = v.split(',').filter_map(|x| x.parse().ok()).collect();
    }
    // Variants under test (LW_VARIANTS=dir of lora_merge.ptx builds): their lora_merge_bf16 is
    // timed on every shape next to the built-in one, and its output hash compared.
    let mut variants = Vec::new();
    if let Ok(dir) = std::env::var("LW_VARIANTS") {
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| loraweld::Error::Internal(format!("{dir}: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "ptx"))
            .collect();
        paths.sort();
        for p in paths {
            let name = p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).map_err(|e| loraweld::Error::Internal(format!("{name}: {e}")))?;
            match b.load_variant(&text) {
                Ok(m) => variants.push((name, m)),
                Err(e) => println!("variant {name}: {e}"),
            }
        }
    }
    // The bound that applies to a timing, and its time in ms: the slower of moving the bytes at
    // copy speed and doing the FMAs at the FMA rate.
    let bound_of = |t: &loraweld::compute::cuda::bench::KernelTiming| {
        let t_mem = t.bytes as f64 / (copy * 1e9) * 1e3;
        let t_fma = 2.0 * t.r as f64 * (t.rows * t.cols) as f64 / (fma * 1e12) * 1e3;
        if t_mem >= t_fma {
            ("copy", t_mem)
        } else {
            ("fma", t_fma)
        }
    };
    let mut rows_out = Vec::new();
    let mut cmp_out = Vec::new();
    let mut floors = Vec::new();
    // An empty launch, timed cold: what every figure below carries.
    let (empty_ms, _) = b.traffic_floor(0, 0)?;
    println!("csv,empty_launch,{empty_ms:.4}");
    floors.push(format!("an empty launch: {:.2} us cold", empty_ms * 1e3));
    // One round of dependent traffic on each shape's merge grid, timed cold: every thread (or
    // one lane per warp) reads a 16-byte piece and writes it back. Any merge launches, waits for
    // its first inputs before its first FMA and drains its last stores after its last; this is
    // that fixed cost with nothing computed in between (the floor of the small shape's budget).
    for &(rows, cols) in &shapes {
        let threads = b.lean_blocks(rows, cols)? as usize * 128;
        for (who, pieces) in [("thread", threads), ("warp", threads / 32)] {
            let (ms, grid) = b.traffic_floor(pieces * 16, pieces * 16)?;
            println!("csv,one_round,{rows},{cols},{who},{pieces},{ms:.4},{grid}");
            floors.push(format!(
                "{rows:>6}x{cols:<6} one read then one write per {who} of the merge grid ({pieces} pieces): {:.2} us cold",
                ms * 1e3
            ));
        }
    }
    for &r in &ranks {
        for &(rows, cols) in &shapes {
            let t = b.nf4_merge(rows, cols, r, 20)?;
            let mut line = format!(
                "{rows:>6}x{cols:<6} r={r:<3} built-in {:>7.3} / {:.3} ms",
                t.ms, t.ms_b2b
            );
            println!(
                "csv,compare,{rows},{cols},{r},built-in,{:.4},{:016x},{:.4}",
                t.ms, t.hash, t.ms_b2b
            );
            // Another kernel on the same inputs: its times on the table line and a CSV line, and
            // whether its output bytes are the built-in kernel's.
            let mut compare = |name: &str, v: &loraweld::compute::cuda::bench::KernelTiming| {
                line += &format!(
                    "  {name} {:>7.3} / {:.3} ms{}",
                    v.ms,
                    v.ms_b2b,
                    if v.hash == t.hash { "" } else { " DIFFERENT BYTES" }
                );
                println!(
                    "csv,compare,{rows},{cols},{r},{name},{:.4},{:016x},{:.4}",
                    v.ms, v.hash, v.ms_b2b
                );
            };
            // The general fast kernel on the same tile, for comparison with the lean one.
            compare(
                "general",
                &b.nf4_merge_in(b.module(), "lora_merge_bf16", rows, cols, r, 20)?,
            );
            for (name, m) in &variants {
                // A variant's lean kernel if it has one (the nested one, else the one kernel of builds
                // before the split), else its general one.
                let v = b
                    .nf4_merge_in(m, "lora_merge_q64n_bf16", rows, cols, r, 20)
                    .or_else(|_| b.nf4_merge_in(m, "lora_merge_q64_bf16", rows, cols, r, 20))
                    .or_else(|_| b.nf4_merge_in(m, "lora_merge_bf16", rows, cols, r, 20))?;
                compare(name, &v);
            }
            cmp_out.push(line);
            let (bound, floor) = bound_of(&t);
            // A device copy moving the same number of bytes (read + written), and the FMA probe
            // doing as many FLOP on the lean kernel's grid, both timed cold: small launches reach
            // neither 1 GiB copy rate nor the long probe's FMA rate (launch, ramp and tail).
            let same = b.copy_rates((t.bytes / 2) as usize)?;
            println!(
                "csv,copy_same_bytes,{rows},{cols},{r},{:.1},{:.1},{:.1}",
                same.alone, same.b2b, same.cold
            );
            // The floor: a kernel that moves the merge's bytes (bf16 out, the rest in) and does
            // nothing else, launched and timed cold the same way.
            let written = rows * cols * 2;
            let (floor_ms, floor_grid) = b.traffic_floor(t.bytes as usize - written, written)?;
            println!(
                "csv,traffic_floor,{rows},{cols},{r},{floor_ms:.4},{},{written},{floor_grid},{:.1}",
                t.bytes as usize - written,
                100.0 * (t.bytes as f64 / (copy * 1e9) * 1e3) / floor_ms
            );
            floors.push(format!(
                "{rows:>6}x{cols:<6} r={r:<3} moving the bytes alone: {floor_ms:.4} ms cold ({floor_grid} blocks), {:.1}% of the copy bound; the kernel {:.4} ms",
                100.0 * (t.bytes as f64 / (copy * 1e9) * 1e3) / floor_ms,
                t.ms_cold
            ));
            let flop = 2.0 * r as f64 * (rows * cols) as f64;
            let (same_fma, same_flop) = b.fma_same_work(flop, b.lean_blocks(rows, cols)?)?;
            println!("csv,fma_same_work,{rows},{cols},{r},{same_fma:.2},{same_flop:.0}");
            for (mode, ms, same) in [
                ("alone", t.ms, same.alone),
                ("cold", t.ms_cold, same.cold),
                ("b2b", t.ms_b2b, same.b2b),
            ] {
                let (gbs, tflops) = (t.gbs_at(ms), t.tflops_at(ms));
                rows_out.push(format!(
                    "{rows:>6}x{cols:<6} r={r:<3} {mode:<5} {ms:>7.4} ms {gbs:>5.0} GB/s ({:>3.0}% of copy; {:>3.0}% of a {same:.0} GB/s copy of as many bytes) {tflops:>5.1} TFLOP/s ({:>3.0}% of fma, {:>3.0}% of fma_rate32, {:>3.0}% of a same-work probe launch at {same_fma:.1})  bound {bound}: {:>4.1}%",
                    100.0 * gbs / copy,
                    100.0 * gbs / same,
                    100.0 * tflops / fma,
                    100.0 * tflops / fma32,
                    100.0 * tflops / same_fma,
                    100.0 * floor / ms
                ));
                // csv,kernel,rows,cols,r,ms,bytes,GB/s,TFLOP/s,bound,% of bound,% of fma_rate32,% of same-work FMA,mode
                println!(
                    "csv,kernel,{rows},{cols},{r},{ms:.4},{},{gbs:.1},{tflops:.2},{bound},{:.1},{:.1},{:.1},{mode}",
                    t.bytes,
                    100.0 * floor / ms,
                    100.0 * tflops / fma32,
                    100.0 * tflops / same_fma
                );
            }
        }
    }
    // The 16-bit base variant (`lora_merge_bf16` on a bf16 weight, f32 update, bf16 output), the
    // kernel a LoRA on an unquantized model gets, against the same ceilings, cold.
    let mut base16 = Vec::new();
    for &r in &ranks {
        for &(rows, cols) in &shapes {
            let t = b.bf16_merge(rows, cols, r, 20)?;
            let (bound, floor) = bound_of(&t);
            let (gbs, tflops) = (t.gbs_at(t.ms_cold), t.tflops_at(t.ms_cold));
            println!(
                "csv,kernel16,{rows},{cols},{r},{:.4},{},{gbs:.1},{tflops:.2},{bound},{:.1},cold",
                t.ms_cold,
                t.bytes,
                100.0 * floor / t.ms_cold
            );
            base16.push(format!(
                "{rows:>6}x{cols:<6} r={r:<3} cold {:>7.4} ms {gbs:>5.0} GB/s ({:>3.0}% of copy) {tflops:>5.1} TFLOP/s ({:>3.0}% of fma)  bound {bound}: {:>4.1}%   alone {:.4} ms, b2b {:.4} ms",
                t.ms_cold,
                100.0 * gbs / copy,
                100.0 * tflops / fma,
                100.0 * floor / t.ms_cold,
                t.ms,
                t.ms_b2b
            ));
        }
    }
    drop(b);
    let print_base16 = |lines: &[String]| {
        println!("16-bit base (lora_merge_bf16: bf16 weight + f32 LoRA -> bf16, device-resident), median of 20:");
        for l in lines {
            println!("  {l}");
        }
    };

    // Host to host through merge_tile: what the pipeline's compute stage sees.
    if std::env::var_os("LW_NO_TILE").is_some() {
        for l in rows_out {
            println!("  {l}");
        }
        for l in cmp_out {
            println!("  {l}");
        }
        for l in floors {
            println!("  {l}");
        }
        print_base16(&base16);
        return Ok(());
    }
    let gpu = CudaBackend::new(MemoryBudget::Fraction(0.5), None)?;
    let mut tile_rows = Vec::new();
    for (rows, cols, r) in [(8192usize, 28672usize, 16usize), (8192, 8192, 64)] {
        let n = rows * cols;
        let nb = n / 64;
        let mut s = 7u64;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let codes: Vec<u8> = (0..n / 2).map(|_| rnd() as u8).collect();
        let am: Vec<u8> = (0..nb).map(|_| rnd() as u8).collect();
        let nabs: Vec<u8> = (0..nb.div_ceil(256))
            .flat_map(|i| (0.01f32 + i as f32 * 1e-6).to_le_bytes())
            .collect();
        let nmap: Vec<u8> = (0..256)
            .flat_map(|i| ((i as f32 - 127.0) / 128.0).to_le_bytes())
            .collect();
        let qmap: Vec<u8> = NF4.iter().flat_map(|x| x.to_le_bytes()).collect();
        let a: Vec<f32> = (0..r * cols).map(|_| (rnd() % 1000) as f32 * 1e-5).collect();
        let bm: Vec<f32> = (0..rows * r).map(|_| (rnd() % 1000) as f32 * 1e-5).collect();
        // The pipeline's tiles: at most 64 MiB of f32-equivalent rows each.
        let tile_rows_n = ((64usize << 20) / (cols * 4)).max(1);
        let mut out = vec![0u8; tile_rows_n * cols * 2];
        let mut total = 0.0;
        for pass in 0..2 {
            let t0 = Instant::now();
            let mut row0 = 0;
            while row0 < rows {
                let nr = tile_rows_n.min(rows - row0);
                let t = MergeTile {
                    row0: row0 as u64,
                    rows: nr,
                    cols,
                    base: BaseRows::Bnb(QuantView {
                        codes: &codes,
                        absmax: AbsmaxRef::Nested {
                            codes: &am,
                            nested_absmax: &nabs,
                            nested_map: &nmap,
                            nested_blocksize: 256,
                            offset: 0.02,
                        },
                        quant_map: &qmap,
                        blocksize: 64,
                        dtype: FloatDtype::Bf16,
                    }),
                    lora: Some(LoraRows {
                        a: &a,
                        b: &bm[row0 * r..(row0 + nr) * r],
                        r,
                        scale: 2.0,
                        delta_dtype: FloatDtype::F32,
                    }),
                    out_dtype: FloatDtype::Bf16,
                };
                gpu.merge_tile(&t, &mut out[..nr * cols * 2])?;
                row0 += nr;
            }
            if pass == 1 {
                total = t0.elapsed().as_secs_f64();
            }
        }
        let gbs = (n * 2) as f64 / total / 1e9;
        tile_rows.push(format!(
            "{rows:>6}x{cols:<6} r={r:<3} {:>8.1} ms  {gbs:>5.1} GB/s of bf16 output, host to host",
            total * 1e3
        ));
        println!("csv,tile_path,{rows},{cols},{r},{:.2},{gbs:.2}", total * 1e3);
    }

    println!("\n== {} ({}) ==", gpu.device_name(), gpu.kernel_image());
    println!("ceilings: copy {copy:.0} GB/s, fma {fma:.1} TFLOP/s (fma_rate32: {fma32:.1})");
    println!("kernel (NF4 double quant -> bf16, device-resident), median of 20, each timed three ways (copies too):");
    println!("  alone: one launch between events on an idle stream (the CPU's launch latency is inside)");
    println!("  cold:  one launch queued behind a 256 MiB read of another buffer (kernels/l2_flush.ptx: L2 cold and clean, no launch latency)");
    println!(
        "  b2b:   per launch over {} back-to-back launches (no launch latency; inputs that fit stay in L2)",
        loraweld::compute::cuda::bench::BATCH
    );
    for l in rows_out {
        println!("  {l}");
    }
    println!("kernel variants on the same inputs (same card, same run; alone / back to back):");
    for l in cmp_out {
        println!("  {l}");
    }
    println!("floors (kernels/traffic.ptx: the same bytes moved by a kernel that does nothing else, cold):");
    for l in floors {
        println!("  {l}");
    }
    print_base16(&base16);
    println!("tile path (merge_tile from host memory, 64 MiB tiles):");
    for l in tile_rows {
        println!("  {l}");
    }
    Ok(())
}
