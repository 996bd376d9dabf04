#!/usr/bin/env bash
# End-to-end merge benchmark: loraweld from a bf16 and from an NF4 double-quant base, the I/O
# floor on the same disk, and (optionally) the PEFT peer, measured in one run.
#
#   scripts/bench-merge.sh WORKDIR [synth flags...]
#
# WORKDIR holds base_bf16/, base_nf4_dq/ (or base_nf4/) and lora/. If they are missing they are
# generated with `cargo run --release --example synth` and the synth flags (default: the ~1B
# shape: --hidden 2048 --layers 16 --intermediate 5632 --vocab 32000 --heads 32 --r 8).
# Inputs prepared by ../shared/ref-python/peft_merge_bench.py prepare --with-nf4 work as is,
# which puts both tools on the very same files.
#
# Environment:
#   REFENV=/path/to/venv   also time PEFT (peft_merge_bench.py merge, modes peft16 and unsloth_nf4)
#   PEFT_BENCH=path        the PEFT script (default ../shared/ref-python/peft_merge_bench.py)
#   LORAWELD=path          the binary (default target/release/loraweld, built if missing)
#   EXTRA="..."            extra flags for loraweld save
#
# Output: a table on stdout and WORKDIR/results.csv (tool,base,wall_s,peak_rss_mib,out_bytes).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
W="${1:?usage: bench-merge.sh WORKDIR [synth flags]}"; shift || true
mkdir -p "$W"; W="$(cd "$W" && pwd)"
LW="${LORAWELD:-$HERE/target/release/loraweld}"
[ -x "$LW" ] || (cd "$HERE" && cargo build --release --quiet)
SYNTH_FLAGS=("$@")
[ ${#SYNTH_FLAGS[@]} -gt 0 ] || SYNTH_FLAGS=(--hidden 2048 --layers 16 --intermediate 5632 --vocab 32000 --heads 32 --r 8)
if [ ! -d "$W/base_bf16" ] || [ ! -d "$W/lora" ]; then
  (cd "$HERE" && cargo run --release --quiet --example synth -- "$W" --base bf16 "${SYNTH_FLAGS[@]}")
fi
NF4="$W/base_nf4_dq"; [ -d "$NF4" ] || NF4="$W/base_nf4"
if [ ! -d "$NF4" ]; then
  (cd "$HERE" && cargo run --release --quiet --example synth -- "$W" --base nf4 "${SYNTH_FLAGS[@]}")
  NF4="$W/base_nf4"
fi

CSV="$W/results.csv"
echo "tool,base,wall_s,peak_rss_mib,out_bytes" > "$CSV"
timed() { # label base cmd... -> appends a CSV row
  local label="$1" base="$2"; shift 2
  local log="$W/time-$label-$base.log"
  sync
  /usr/bin/time -v "$@" > "$W/stdout-$label-$base.log" 2> "$log" || { cat "$log"; exit 1; }
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; printf "%.2f\n", s}' "$log")
  rss=$(awk -F': ' '/Maximum resident set size/{printf "%.1f", $2/1024}' "$log")
  echo "$label,$base,$wall,$rss,${OUT_BYTES:-}" >> "$CSV"
}

for b in bf16 nf4; do
  base="$W/base_bf16"; [ $b = nf4 ] && base="$NF4"
  out="$W/out_loraweld_$b"; rm -rf "$out"
  timed loraweld "$b" "$LW" save "$W/lora" "$out" --base "$base" --json ${EXTRA:-}
  OUT_BYTES=$(du -cb "$out"/*.safetensors | tail -1 | cut -f1)
  sed -i '$ s/,$/,'"$OUT_BYTES"'/' "$CSV"
done

# The I/O floor on the same disk: write OUT_BYTES with dd (buffered + fdatasync, and O_DIRECT
# as loraweld writes), and copy the bf16
# base with cp + sync (reads and writes the same number of bytes as a bf16 merge).
rm -f "$W/floor.bin"; rm -rf "$W/floor_cp"
timed dd_write bf16 dd if=/dev/zero of="$W/floor.bin" bs=16M count=$(( (OUT_BYTES + 16777215) / 16777216 )) conv=fdatasync status=none
sed -i '$ s/,$/,'"$OUT_BYTES"'/' "$CSV"
timed dd_direct bf16 dd if=/dev/zero of="$W/floor.bin" bs=16M count=$(( (OUT_BYTES + 16777215) / 16777216 )) oflag=direct conv=fdatasync status=none
sed -i '$ s/,$/,'"$OUT_BYTES"'/' "$CSV"
rm -f "$W/floor.bin"
timed cp_sync bf16 bash -c "mkdir -p '$W/floor_cp' && cp '$W'/base_bf16/*.safetensors '$W/floor_cp/' && sync '$W'/floor_cp/*"
sed -i '$ s/,$/,'"$(du -cb "$W"/floor_cp/*.safetensors | tail -1 | cut -f1)"'/' "$CSV"
rm -rf "$W/floor.bin" "$W/floor_cp"

if [ -n "${REFENV:-}" ]; then
  PB="${PEFT_BENCH:-$HERE/../shared/ref-python/peft_merge_bench.py}"
  for mode in peft16 unsloth_nf4; do
    b=bf16; [ $mode = unsloth_nf4 ] && b=nf4
    if [ $mode = unsloth_nf4 ] && [ ! -d "$W/base_nf4_dq" ]; then continue; fi
    rm -rf "$W/merged_$mode"
    timed "peft_$mode" "$b" "$REFENV/bin/python" "$PB" merge --workdir "$W" --mode $mode
    sed -i '$ s/,$/,'"$(du -cb "$W/merged_$mode"/*.safetensors | tail -1 | cut -f1)"'/' "$CSV"
    rm -rf "$W/merged_$mode"
  done
fi

echo "# $(date -u +%F) $(uname -n): $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(lscpu | awk -F': *' '/Model name/{print $2}')"
column -s, -t "$CSV"
