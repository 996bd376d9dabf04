#!/usr/bin/env bash
# Out-of-core benchmarks at 8B and 70B shape: NF4 double-quant base -> merged_16bit with a fixed
# memory budget, beside the I/O floor (dd of the same byte count, O_DIRECT) on the same disk.
#
#   scripts/bench-scale.sh WORKDIR 8b  [BUDGET]          # 8B shape, then again inside a 2 GiB cgroup
#   scripts/bench-scale.sh WORKDIR 70b N [N ...] [-- BUDGET]   # 70B shape, first N layers only
#
# LORAWELD / SYNTH override the binaries (default target/release/{loraweld,examples/synth}).
# Inputs are generated with `cargo run --release --example synth` (random but valid NF4+dq
# checkpoint and r=16 adapter), each removed after its run. Output: a table on stdout and
# WORKDIR/scale.csv (shape,layers,in_bytes,out_bytes,wall_s,peak_rss_mib,floor_s,ratio).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
W="${1:?usage: bench-scale.sh WORKDIR 8b|70b [N...]}"; shift
KIND="${1:?8b or 70b}"; shift
mkdir -p "$W"; W="$(cd "$W" && pwd)"
LW="${LORAWELD:-$HERE/target/release/loraweld}"; SYNTH="${SYNTH:-$HERE/target/release/examples/synth}"
[ -x "$LW" ] && [ -x "$SYNTH" ] || (cd "$HERE" && cargo build --release --quiet --bin loraweld --example synth)
BUDGET=1GiB
CSV="$W/scale.csv"; [ -f "$CSV" ] || echo "shape,layers,in_bytes,out_bytes,wall_s,peak_rss_mib,floor_s,ratio,note" > "$CSV"

secs() { awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; printf "%.2f", s}' "$1"; }
rss() { awk -F': ' '/Maximum resident set size/{printf "%.1f", $2/1024}' "$1"; }

one() { # shape layers synth-args... ; runs synth, loraweld, the floor, and (8b) the cgroup run
  local shape="$1" layers="$2"; shift 2
  local d="$W/$shape-$layers"; rm -rf "$d"
  "$SYNTH" "$d" --base nf4 --r 16 --alpha 32 --layers "$layers" "$@" > /dev/null
  local inb; inb=$(du -cb "$d"/base_nf4/*.safetensors | tail -1 | cut -f1)
  sync
  /usr/bin/time -v "$LW" save "$d/lora" "$d/out" --base "$d/base_nf4" --maximum-memory-usage "$BUDGET" > /dev/null 2> "$d/time.log"
  local outb; outb=$(du -cb "$d"/out/*.safetensors | tail -1 | cut -f1)
  local wall; wall=$(secs "$d/time.log"); local r; r=$(rss "$d/time.log")
  rm -rf "$d/out"; sync
  /usr/bin/time -v dd if=/dev/zero of="$d/floor.bin" bs=16M count=$(( (outb + 16777215) / 16777216 )) oflag=direct conv=fdatasync status=none 2> "$d/floor.log"
  rm -f "$d/floor.bin"
  local fl; fl=$(secs "$d/floor.log")
  echo "$shape,$layers,$inb,$outb,$wall,$r,$fl,$(awk -v a="$wall" -v b="$fl" 'BEGIN{printf "%.2f", a/b}'),budget $BUDGET" >> "$CSV"
  if [ "$shape" = 8b ]; then
    # The small-machine proof: the same run inside a 2 GiB memory cgroup (v2 memory.max, or v1
    # memory.limit_in_bytes, which also counts page cache).
    local cg=""
    if [ -w /sys/fs/cgroup/cgroup.subtree_control ] && grep -q memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
      cg=/sys/fs/cgroup/loraweld-2g; mkdir -p "$cg"; echo 2G > "$cg/memory.max"
    elif [ -d /sys/fs/cgroup/memory ]; then
      cg=/sys/fs/cgroup/memory/loraweld-2g; mkdir -p "$cg"; echo 2G > "$cg/memory.limit_in_bytes"
    fi
    if [ -n "$cg" ]; then
      sync
      /usr/bin/time -v sh -c "echo \$\$ > $cg/cgroup.procs && exec '$LW' save '$d/lora' '$d/out' --base '$d/base_nf4' --maximum-memory-usage $BUDGET" > /dev/null 2> "$d/cgroup.log"
      echo "$shape,$layers,$inb,$(du -cb "$d"/out/*.safetensors | tail -1 | cut -f1),$(secs "$d/cgroup.log"),$(rss "$d/cgroup.log"),$fl,$(awk -v a="$(secs "$d/cgroup.log")" -v b="$fl" 'BEGIN{printf "%.2f", a/b}'),inside a 2 GiB cgroup ($cg)" >> "$CSV"
      rm -rf "$d/out"
    fi
  fi
  rm -rf "$d"
}

case "$KIND" in
  8b)
    [ $# -gt 0 ] && BUDGET="$1"
    one 8b 32 --hidden 4096 --intermediate 14336 --vocab 128256 --heads 32 --kv-heads 8 --shard 5GB ;;
  70b)
    NS=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do NS+=("$1"); shift; done
    [ $# -gt 1 ] && BUDGET="$2"
    for n in "${NS[@]}"; do
      one 70b "$n" --hidden 8192 --intermediate 28672 --vocab 128256 --heads 64 --kv-heads 8 --shard 5GB
    done ;;
  *) echo "unknown kind $KIND"; exit 2 ;;
esac
echo "# $(date -u +%F) $(uname -n): $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
column -s, -t "$CSV"
