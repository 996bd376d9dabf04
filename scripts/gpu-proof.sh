#!/usr/bin/env bash
# The GPU proof, run on a machine with an NVIDIA GPU from the repository root. It builds nothing:
# the binaries come prebuilt in gpu-bin/ (see kernels/README.md, "Proof on a GPU machine"):
#
#   gpu-bin/loraweld gpu-bin/synth gpu-bin/gpu-bench   cargo build --release --features cuda --bins --examples
#   gpu-bin/tests                                      cargo test --release --features cuda --no-run
#   gpu-bin/bnb/bitsandbytes/                          the bitsandbytes 0.50.2 wheel's Python files and
#                                                      libbitsandbytes_cuda130.so (for the PyTorch peer)
#
#   scripts/gpu-proof.sh check   # GPU bytes == CPU bytes (tests/gpu.rs)
#   scripts/gpu-proof.sh bench   # kernel vs copy bandwidth and FMA rate; the PyTorch peer
#   scripts/gpu-proof.sh e2e     # an 8B-shaped NF4 checkpoint merged with --device cpu and cuda
#   scripts/gpu-proof.sh start   # backend start without the driver's JIT cache: cubin vs PTX
#   scripts/gpu-proof.sh cores   # the 8B merge pinned to a few cores (E2E_CORES="2 4"): cpu vs cuda
#   scripts/gpu-proof.sh q4      # the 8B merge to merged_4bit, all cores and Q4_CORES="2": cpu vs cuda
#
# Logs go to $OUT (or /tmp/gpu-proof); a short table is printed last.
set -uo pipefail
B=gpu-bin
OUT="${OUT:-/tmp/gpu-proof}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader \
    | tee "$OUT/gpu.txt"

check() {
    echo "== check: GPU bytes == CPU bytes"
    "$B/tests" gpu:: --nocapture --test-threads 1 2>&1 | tee "$OUT/check.log" | grep -vE "^\s*$"
}

bench() {
    echo "== bench: kernel throughput (device-resident) and the tile path"
    "$B/gpu-bench" 2>&1 | tee "$OUT/bench.log" | grep -v "^csv,"
    echo "== peer: PyTorch + bitsandbytes (dequantize_4bit -> float -> addmm_ -> bf16)"
    PYTHONPATH="$B/bnb${PYTHONPATH:+:$PYTHONPATH}" python3 scripts/gpu-peer.py 2>&1 | tee "$OUT/peer.log" | grep -v "^csv,"
    python3 - "$OUT/bench.log" "$OUT/peer.log" <<'EOF'
import sys
k, p = {}, {}
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    # the peer is timed one call at a time, so the kernel's "alone" time is the one to set beside it
    if f[:2] == ["csv", "kernel"] and f[-1] == "alone":
        k[(int(f[2]), int(f[3]), int(f[4]))] = float(f[5])
for line in open(sys.argv[2]):
    f = line.strip().split(",")
    if f[:2] == ["csv", "peer"]:
        p[(int(f[2]), int(f[3]), int(f[4]))] = float(f[5])
print("loraweld kernel vs PyTorch peer (same shapes, same card):")
for key in sorted(k, key=lambda x: (x[2], x)):
    if key in p:
        print(f"  {key[0]:>6}x{key[1]:<6} r={key[2]:<3} kernel {k[key]:8.3f} ms  peer {p[key]:8.3f} ms  {p[key] / k[key]:5.1f}x")
EOF
}

synth8b() {
    W="${E2E_DIR:-/tmp/lw-e2e}"
    rm -rf "$W" /dev/shm/lw-out
    mkdir -p "$W"
    echo "== e2e: synthesize an 8B-shaped NF4 double-quant checkpoint + r=16 LoRA on 7 modules"
    local t0=$SECONDS
    "$B/synth" "$W" --base nf4 --hidden 4096 --layers 32 --intermediate 14336 --vocab 128256 \
        --heads 32 --kv-heads 8 --r 16 --alpha 32 >"$OUT/synth.log" 2>&1 || { cat "$OUT/synth.log"; return 1; }
    echo "synth: $((SECONDS - t0)) s; $(du -sh "$W/base_nf4" | cut -f1) base, $(du -sh "$W/lora" | cut -f1) adapter"
    df -h "$W" /dev/shm | tail -n +1
}

e2e() {
    synth8b || return 1
    # cuda-jit: the PTX instead of the embedded cubin, with the driver's JIT cache off (what a
    # fresh machine or container pays without the cubin)
    for dst in disk shm; do
        for dev in cpu cuda cuda-jit; do
            if [ "$dst" = disk ]; then out="$W/out"; else out=/dev/shm/lw-out; fi
            [ "$dst" = shm ] && [ "$dev" = cuda-jit ] && continue
            local jit=0 cache=0
            [ "$dev" = cuda-jit ] && jit=1 cache=1
            rm -rf "$out"
            sync
            CUDA_CACHE_DISABLE=$cache LORAWELD_CUDA_JIT=$jit "$B/loraweld" save "$W/lora" "$out" --device "${dev%-jit}" --json \
                >"$OUT/e2e-$dst-$dev.json" 2>"$OUT/e2e-$dst-$dev.err" || { cat "$OUT/e2e-$dst-$dev.err"; return 1; }
            rm -rf "$out"
        done
    done
    echo "== e2e: I/O floor on the same disk: dd 16 GB, O_DIRECT + fdatasync"
    dd if=/dev/zero of="$W/dd" bs=8M count=1907 oflag=direct conv=fdatasync 2>&1 | tail -n 1 | tee "$OUT/dd.log"
    rm -f "$W/dd"
    python3 - "$OUT" <<'EOF'
import json, sys, os
out = sys.argv[1]
print("e2e (8B-shaped NF4 dq -> merged_16bit bf16):")
print(f"  {'output':<6} {'device':<8} {'wall s':>7} {'start s':>7} {'read s':>7} {'compute s':>9} {'pack s':>7} {'GB out':>7} {'GB/s':>6}  backend")
for dst in ("disk", "shm"):
    for dev in ("cpu", "cuda", "cuda-jit"):
        p = os.path.join(out, f"e2e-{dst}-{dev}.json")
        if not os.path.exists(p):
            continue
        r = json.load(open(p))
        st = r["stages"]
        gb = r["bytes_written"] / 1e9
        print(f"  {dst:<6} {dev:<8} {r['seconds']:7.2f} {st.get('backend_start_s', 0):7.2f} {st['read_s']:7.2f} {st['compute_s']:9.2f} {st['pack_s']:7.2f} {gb:7.2f} {gb / r['seconds']:6.2f}  {r['backend']}")
print("where a GPU run's compute stage went (stages.gpu, busy seconds; they overlap):")
print(f"  {'output':<6} {'device':<8} {'compute':>7} {'stage in':>8} {'h2d':>6} {'kernel':>6} {'d2h':>6} {'gpu busy':>8} {'wait':>6} {'copy out':>8} {'chunks':>6} {'GB in':>6} {'GB out':>6}")
for dst in ("disk", "shm"):
    for dev in ("cuda", "cuda-jit"):
        p = os.path.join(out, f"e2e-{dst}-{dev}.json")
        if not os.path.exists(p):
            continue
        r = json.load(open(p))
        g = r["stages"].get("gpu")
        if not g:
            continue
        print(f"  {dst:<6} {dev:<8} {r['stages']['compute_s']:7.2f} {g['stage_in_s']:8.2f} {g['h2d_s']:6.2f} {g['kernel_s']:6.2f} {g['d2h_s']:6.2f} {g['gpu_busy_s']:8.2f} {g['wait_s']:6.2f} {g['copy_out_s']:8.2f} {g['chunks']:6d} {g['h2d_bytes'] / 1e9:6.2f} {g['d2h_bytes'] / 1e9:6.2f}")
EOF
    rm -rf "$W"
}

cores() {
    # The 8B merge on a few cores, as on the small machines loraweld is for: the whole process
    # pinned to the first N cores (taskset) with --threads N, CPU backend vs GPU backend.
    synth8b || return 1
    echo "== cores: the same merge pinned to ${E2E_CORES:-2 4} cores"
    for n in ${E2E_CORES:-2 4}; do
        for dst in disk shm; do
            for dev in cpu cuda; do
                if [ "$dst" = disk ]; then out="$W/out"; else out=/dev/shm/lw-out; fi
                rm -rf "$out"
                sync
                taskset -c "0-$((n - 1))" "$B/loraweld" save "$W/lora" "$out" --device "$dev" --threads "$n" --json \
                    >"$OUT/cores-$n-$dst-$dev.json" 2>"$OUT/cores-$n-$dst-$dev.err" || { cat "$OUT/cores-$n-$dst-$dev.err"; return 1; }
                rm -rf "$out"
            done
        done
    done
    python3 - "$OUT" ${E2E_CORES:-2 4} <<'EOF'
import json, sys, os
out, cores = sys.argv[1], sys.argv[2:]
print("8B-shaped NF4 dq -> merged_16bit on N cores (taskset, --threads N):")
print(f"  {'cores':>5} {'output':<6} {'device':<6} {'wall s':>7} {'start s':>7} {'compute s':>9} {'pack s':>7} {'GB/s':>6}  shard blake3")
for n in cores:
    for dst in ("disk", "shm"):
        for dev in ("cpu", "cuda"):
            p = os.path.join(out, f"cores-{n}-{dst}-{dev}.json")
            if not os.path.exists(p):
                continue
            r = json.load(open(p))
            st = r["stages"]
            gb = r["bytes_written"] / 1e9
            h = r["shards"][0]["blake3"][:12] if r.get("shards") else "-"
            print(f"  {n:>5} {dst:<6} {dev:<6} {r['seconds']:7.2f} {st.get('backend_start_s', 0):7.2f} {st['compute_s']:9.2f} {st['pack_s']:7.2f} {gb / r['seconds']:6.2f}  {h}")
EOF
    rm -rf "$W"
}

q4() {
    # merged_4bit: merge plus requantization (and the double-quant stats pass), on all cores and
    # pinned to a few, CPU backend vs GPU backend; the shard hashes must agree.
    synth8b || return 1
    echo "== q4: the 8B merge to merged_4bit, all cores and ${Q4_CORES:-2} cores"
    for n in all ${Q4_CORES:-2}; do
        for dev in cpu cuda; do
            local out="$W/out" pin=() threads=()
            if [ "$n" != all ]; then pin=(taskset -c "0-$((n - 1))"); threads=(--threads "$n"); fi
            rm -rf "$out"
            sync
            "${pin[@]}" "$B/loraweld" save "$W/lora" "$out" --save-method merged_4bit --device "$dev" "${threads[@]}" --json \
                >"$OUT/q4-$n-$dev.json" 2>"$OUT/q4-$n-$dev.err" || { cat "$OUT/q4-$n-$dev.err"; return 1; }
            rm -rf "$out"
        done
    done
    python3 - "$OUT" all ${Q4_CORES:-2} <<'EOF'
import json, sys, os
out, cores = sys.argv[1], sys.argv[2:]
print("8B-shaped NF4 dq -> merged_4bit (NF4 dq), to disk:")
print(f"  {'cores':>5} {'device':<6} {'wall s':>7} {'stats s':>7} {'compute s':>9} {'pack s':>7} {'GB out':>7}  shard blake3 (all shards)")
hashes = {}
for n in cores:
    for dev in ("cpu", "cuda"):
        p = os.path.join(out, f"q4-{n}-{dev}.json")
        if not os.path.exists(p):
            continue
        r = json.load(open(p))
        st = r["stages"]
        h = ",".join(s["blake3"][:8] for s in r.get("shards", []))
        hashes.setdefault(h, []).append(f"{n}/{dev}")
        print(f"  {n:>5} {dev:<6} {r['seconds']:7.2f} {st.get('quant_stats_s', 0):7.2f} {st['compute_s']:9.2f} {st['pack_s']:7.2f} {r['bytes_written'] / 1e9:7.2f}  {h}")
print("same bytes in every run" if len(hashes) == 1 else f"OUTPUTS DIFFER: {hashes}")
EOF
    rm -rf "$W"
}

start() {
    # The bundled NF4 fixture (lora_on_nf4 on base_nf4_dq) is a few MB, so the wall is mostly the
    # backend's start. CUDA_CACHE_DISABLE=1 keeps the driver's JIT cache out, as on a fresh
    # machine or container; LORAWELD_CUDA_JIT=1 makes loraweld load the PTX instead of its cubin.
    echo "== start: backend start with the driver's JIT cache off, embedded cubin vs PTX"
    local fx=tests/fixtures/llama/lora_on_nf4 ref=/tmp/lw-start-cpu
    rm -rf "$ref"
    "$B/loraweld" save "$fx" "$ref" --device cpu --json >"$OUT/start-cpu.json" || return 1
    for mode in cubin ptx; do
        for i in 1 2 3; do
            local o="/tmp/lw-start-$mode-$i" jit=0
            [ "$mode" = ptx ] && jit=1
            rm -rf "$o"
            CUDA_CACHE_DISABLE=1 LORAWELD_CUDA_JIT=$jit "$B/loraweld" save "$fx" "$o" --device cuda --json \
                >"$OUT/start-$mode-$i.json" || return 1
            cmp "$ref/model.safetensors" "$o/model.safetensors" || { echo "start: $mode output differs from the CPU's"; return 1; }
            rm -rf "$o"
        done
    done
    python3 - "$OUT" <<'EOF'
import json, sys, os, glob
out = sys.argv[1]
print("backend start, NF4 fixture -> merged_16bit, CUDA_CACHE_DISABLE=1 (output bytes == --device cpu's):")
print(f"  {'kernels':<7} {'run':>3} {'start s':>8} {'wall s':>7}  backend")
for p in sorted(glob.glob(os.path.join(out, "start-*.json"))):
    r = json.load(open(p))
    mode, _, run = os.path.basename(p)[6:-5].partition("-")
    print(f"  {mode:<7} {run or '-':>3} {r['stages'].get('backend_start_s', 0):8.3f} {r['seconds']:7.3f}  {r['backend']}")
EOF
    rm -rf "$ref"
}

for step in "${@:-check}"; do
    case "$step" in
        check) check ;;
        bench) bench ;;
        e2e) e2e ;;
        start) start ;;
        cores) cores ;;
        q4) q4 ;;
        *) echo "gpu-proof: unknown step $step (check, bench, e2e, start, cores, q4)"; exit 2 ;;
    esac
done
