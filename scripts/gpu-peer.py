#!/usr/bin/env python3
"""The PyTorch peer of the GPU kernel, timed in the same run as examples/gpu-bench.rs: what
Unsloth does on the GPU for a 4-bit layer, on the same Llama-70B shapes.

    w = bitsandbytes.functional.dequantize_4bit(packed, state)   # NF4 double quant -> bf16
    w = w.float(); w.addmm_(B, A, alpha=s); out = w.to(torch.bfloat16)

Needs torch with CUDA and bitsandbytes (PYTHONPATH to an unpacked 0.50.2 wheel is enough).
Prints one `csv,peer,ROWS,COLS,R,MS` line per shape and rank, and a table. First it times
torch's plain f32 matmul (TF32 off, 8192^3), the "plain f32 FMA" rate issue 5 quotes (about
51 TFLOP/s on an H100), beside gpu-bench's FMA probes: `csv,torch_sgemm,TFLOP/s`.
"""
import sys

import torch
import bitsandbytes.functional as F


def median_ms(fn, iters=10, warm=3):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    print(f"peer: torch {torch.__version__}, bitsandbytes {F.__name__}, {torch.cuda.get_device_name(0)}")
    n = 8192
    x = torch.randn(n, n, device=dev)
    y = torch.randn(n, n, device=dev)
    z = torch.empty(n, n, device=dev)
    ms = median_ms(lambda: torch.mm(x, y, out=z))
    tflops = 2 * n**3 / (ms * 1e-3) / 1e12
    print(f"csv,torch_sgemm,{tflops:.2f}")
    print(f"torch f32 matmul (TF32 off) {n}^3: {ms:.2f} ms, {tflops:.1f} TFLOP/s")
    del x, y, z
    torch.cuda.empty_cache()
    shapes = [(8192, 8192), (8192, 28672), (28672, 8192), (1024, 8192)]
    rows_out = []
    for r in (16, 64):
        for rows, cols in shapes:
            g = torch.Generator(device=dev).manual_seed(rows * 31 + cols + r)
            w = (torch.randn(rows, cols, device=dev, generator=g) * 0.02).to(torch.bfloat16)
            packed, state = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
            del w
            A = torch.randn(r, cols, device=dev, generator=g) * 0.01
            B = torch.randn(rows, r, device=dev, generator=g) * 0.01
            s = 2.0

            def step():
                x = F.dequantize_4bit(packed, state).float()
                x.addmm_(B, A, alpha=s)
                return x.to(torch.bfloat16)

            ms = median_ms(step)
            rows_out.append((rows, cols, r, ms))
            print(f"csv,peer,{rows},{cols},{r},{ms:.4f}")
            del packed, state, A, B
            torch.cuda.empty_cache()
    print("peer (dequantize_4bit -> float -> addmm_ -> bf16), median of 10:")
    for rows, cols, r, ms in rows_out:
        print(f"  {rows:>6}x{cols:<6} r={r:<3} {ms:8.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
