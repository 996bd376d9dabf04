#!/usr/bin/env python3
"""The rank-r product alone through cuBLAS, for comparison with the merge kernel: torch.mm of
B[rows, r] and A[r, cols] in f32 (TF32 off) into an f32 output, on gpu-bench's shapes. Each call
is timed after a 256 MiB memset that evicts L2 (median of 20). Prints one
`csv,skinny_sgemm,ROWS,COLS,R,MS,TFLOPS` line and one table line per shape. On the GPU machine:

    python3 scripts/gpu-skinny-sgemm.py
"""
import torch
torch.backends.cuda.matmul.allow_tf32 = False
dev = torch.device("cuda")
def med(fn, iters=20, warm=3):
    for _ in range(warm): fn()
    ts = []
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    for _ in range(iters):
        flush.zero_()  # evict the inputs from L2 (as gpu-bench's cold timing does, roughly)
        a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b))
    ts.sort(); return ts[len(ts) // 2]
print("torch", torch.__version__, torch.cuda.get_device_name(0))
for r in (16, 64):
    for rows, cols in [(8192, 8192), (8192, 28672), (28672, 8192), (1024, 8192)]:
        B = torch.randn(rows, r, device=dev); A = torch.randn(r, cols, device=dev)
        out = torch.empty(rows, cols, device=dev)
        ms = med(lambda: torch.mm(B, A, out=out))
        tf = 2 * rows * cols * r / (ms * 1e-3) / 1e12
        print(f"csv,skinny_sgemm,{rows},{cols},{r},{ms:.4f},{tf:.2f}")
        print(f"  B[{rows},{r}] @ A[{r},{cols}] f32 (TF32 off): {ms:.4f} ms, {tf:.1f} TFLOP/s")
        del B, A, out; torch.cuda.empty_cache()
