#!/usr/bin/env bash
# Resuming vs starting afresh, on one machine, back to back.
#
#   scripts/bench-resume.sh [RUNS] [LORAWELD]      (root: it drops the page cache)
#
# Makes a ~1.1 GB bf16 Llama-shaped base + r=8 adapter with examples/synth (hidden 2048, 8
# layers) under $WORK (default target/bench-resume), saves it to 7 shards of 200 MB, stops a run
# with SIGINT once some shards are done, and keeps that staging folder. Then, RUNS times each:
# "fresh" (no staging) and "resume" (the kept staging folder put back, mtimes preserved). Before
# every run the page cache is dropped and the inputs read once, as after an interrupted run: the
# inputs are cached, the shards written so far are not (they were written with O_DIRECT).
# Prints the --json seconds of each run and min/median/max.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS="${1:-5}"
L="${2:-target/release/loraweld}"
WORK="${WORK:-target/bench-resume}"
mkdir -p "$WORK"
if [ ! -d "$WORK/m/lora" ]; then
  cargo build --release --quiet --example synth
  target/release/examples/synth "$WORK/m" --base bf16 --hidden 2048 --layers 8 --intermediate 5632 \
    --vocab 32000 --shard 500MB >/dev/null
fi
save() { "$L" save "$WORK/m/lora" "$WORK/out" --max-shard-size 200MB --json "$@"; }
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; cat "$WORK"/m/base_bf16/* "$WORK"/m/lora/* >/dev/null; }
rm -rf "$WORK/out" "$WORK/.out.loraweld-partial" "$WORK/partial"
# The interrupted run: SIGINT after a few shards (the last one it did not finish is dropped).
cold
# Started directly (not through the function), so the signal reaches loraweld itself.
"$L" save "$WORK/m/lora" "$WORK/out" --max-shard-size 200MB >/dev/null 2>&1 & pid=$!
for _ in $(seq 200); do
  n=$(grep -c '"done": true' "$WORK/.out.loraweld-partial/loraweld-manifest.json" 2>/dev/null || true)
  [ "${n:-0}" -ge 3 ] && break
  sleep 0.02
done
kill -INT "$pid" 2>/dev/null || true
wait "$pid" || true
cp -a "$WORK/.out.loraweld-partial" "$WORK/partial"
echo "kept by the interrupted run: $(grep -c '"done": true' "$WORK/partial/loraweld-manifest.json") of 7 shards"
run() {
  rm -rf "$WORK/out" "$WORK/.out.loraweld-partial"
  [ "$1" = resume ] && cp -a "$WORK/partial" "$WORK/.out.loraweld-partial"
  cold
  save 2>/dev/null | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.3f %d" % (r["seconds"], r["resumed_shards"]))'
}
for kind in fresh resume; do : >"$WORK/$kind.txt"; done
for _ in $(seq "$RUNS"); do
  for kind in fresh resume; do run "$kind" >>"$WORK/$kind.txt"; done
done
for kind in fresh resume; do
  python3 - "$kind" "$WORK/$kind.txt" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[2]) if l.strip()]
s = sorted(float(r[0]) for r in rows)
print(f"{sys.argv[1]:7s} seconds min {s[0]:.3f} median {statistics.median(s):.3f} max {s[-1]:.3f}  (shards kept: {rows[0][1]}; runs: {len(s)})")
PY
done
