#!/usr/bin/env bash
# GGUF export, side by side in one run: loraweld's one pass (NF4 base + LoRA -> Q4_K_M GGUF)
# against the route Unsloth takes (merged_16bit on disk -> llama.cpp's convert_hf_to_gguf.py
# --outtype bf16 -> llama-quantize Q4_K_M), on the same inputs; wall time and peak RSS of every
# step (/usr/bin/time), and the two Q4_K_M files compared byte for byte.
#
#   scripts/bench-gguf.sh WORKDIR [SHAPE] [METHOD] [BUDGET]
#
#   SHAPE   1b (default: hidden 2048, 6 layers, ffn 8192, 32/8 heads, vocab 128,256 - 0.9B
#           parameters, the anchor of the GGUF notes) or 8b (hidden 4096, 32 layers, ffn 14,336)
#   METHOD  q4_k_m (default) or any llama-quantize type loraweld writes
#   BUDGET  --maximum-memory-usage for loraweld (default 1GiB)
#
# Needs the reference tools: scripts/setup_llamacpp.sh DIR (LLAMACPP_ENV=DIR/env.sh, default
# ~/.cache/loraweld-llamacpp/env.sh) and a Llama-3 tokenizer folder (TOKENIZER, default the
# fixture's tests/fixtures/gguf_models/llama3_bpe/base_bf16). Inputs come from
# `cargo run --release --example synth` (random but valid NF4+dq base and r=16 adapter). llama-quantize
# runs with THREADS threads (default: the number of cores), as Unsloth runs it. COLD=1 drops the
# page cache before every step (root only); by default the cache is warm.
# Output: a table on stdout and WORKDIR/gguf.csv.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
W="${1:?usage: bench-gguf.sh WORKDIR [1b|8b] [METHOD] [BUDGET]}"
SHAPE="${2:-1b}"; METHOD="${3:-q4_k_m}"; BUDGET="${4:-1GiB}"
mkdir -p "$W"; W="$(cd "$W" && pwd)"
ENV="${LLAMACPP_ENV:-$HOME/.cache/loraweld-llamacpp/env.sh}"
[ -f "$ENV" ] || { echo "no $ENV: run scripts/setup_llamacpp.sh first (or set LLAMACPP_ENV)"; exit 1; }
# shellcheck disable=SC1090
. "$ENV"
TOK="${TOKENIZER:-$HERE/tests/fixtures/gguf_models/llama3_bpe/base_bf16}"
THREADS="${THREADS:-$(nproc)}"
LW="${LORAWELD:-$HERE/target/release/loraweld}"; SYNTH="${SYNTH:-$HERE/target/release/examples/synth}"
[ -x "$LW" ] && [ -x "$SYNTH" ] || (cd "$HERE" && cargo build --release --quiet --bin loraweld --example synth)
case "$SHAPE" in
  1b) ARGS=(--hidden 2048 --layers 6 --intermediate 8192 --heads 32 --kv-heads 8) ;;
  8b) ARGS=(--hidden 4096 --layers 32 --intermediate 14336 --heads 32 --kv-heads 8) ;;
  *) echo "shape $SHAPE: 1b or 8b"; exit 2 ;;
esac
UP="$(echo "$METHOD" | tr a-z A-Z)"
d="$W/$SHAPE"; rm -rf "$d"
"$SYNTH" "$d" --base nf4 --r 16 --alpha 32 --vocab 128256 "${ARGS[@]}" > /dev/null
cp "$TOK"/tokenizer.json "$TOK"/tokenizer_config.json "$d/base_nf4/"
[ -f "$TOK/special_tokens_map.json" ] && cp "$TOK/special_tokens_map.json" "$d/base_nf4/"
inb=$(du -cb "$d"/base_nf4/*.safetensors | tail -1 | cut -f1)

secs() { awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; printf "%.2f", s}' "$1"; }
rss() { awk -F': ' '/Maximum resident set size/{printf "%.0f", $2/1024}' "$1"; }
step() { # name log cmd...
  local name="$1" log="$2"; shift 2
  sync
  # COLD=1: every step starts with an empty page cache (root only); else warm, as the GGUF
  # notes' anchor figures were measured.
  [ "${COLD:-0}" = 1 ] && { echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
  /usr/bin/time -v "$@" > "$log.out" 2> "$log" || { tail -5 "$log"; exit 1; }
  printf '%-44s %8s s %8s MiB\n' "$name" "$(secs "$log")" "$(rss "$log")"
}

echo "page cache: $([ "${COLD:-0}" = 1 ] && echo "cold (dropped before every step)" || echo warm)"
echo "inputs: $SHAPE NF4 base $((inb / 1000000)) MB + r=16 adapter; $METHOD; llama-quantize threads $THREADS; $(nproc) cores"
# loraweld: one pass from the NF4 base, nothing 16-bit on disk.
step "loraweld --save-method gguf" "$d/lw.log" \
  "$LW" save "$d/lora" "$d/lw" --base "$d/base_nf4" --save-method gguf --quantization-method "$METHOD" \
  --model-name bench --maximum-memory-usage "$BUDGET"
# Unsloth's route: merged 16-bit checkpoint, converter to bf16, llama-quantize.
step "  route 1/3: loraweld merged_16bit" "$d/m16.log" \
  "$LW" save "$d/lora" "$d/bench" --base "$d/base_nf4" --maximum-memory-usage "$BUDGET"
# The reference the GGUF is byte-identical with has no model card (the converter would copy its
# front matter into general.base_model.* / general.tags).
rm -f "$d/bench/README.md"
step "  route 2/3: convert_hf_to_gguf.py --outtype bf16" "$d/conv.log" \
  "$LLAMACPP_PY" "$LLAMACPP_CONVERT" "$d/bench" --outtype bf16 --model-name bench --outfile "$d/bench.BF16.gguf"
step "  route 3/3: llama-quantize $UP" "$d/quant.log" \
  "$LLAMACPP_QUANTIZE" "$d/bench.BF16.gguf" "$d/bench.$UP.gguf" "$UP" "$THREADS"
route=$(awk -v a="$(secs "$d/m16.log")" -v b="$(secs "$d/conv.log")" -v c="$(secs "$d/quant.log")" 'BEGIN{printf "%.2f", a+b+c}')
rroute=$(printf '%s\n' "$(rss "$d/m16.log")" "$(rss "$d/conv.log")" "$(rss "$d/quant.log")" | sort -n | tail -1)
ours=$(secs "$d/lw.log"); rours=$(rss "$d/lw.log")
same=no; cmp -s "$d/lw/bench.$UP.gguf" "$d/bench.$UP.gguf" && same=yes
speed=$(awk -v a="$route" -v b="$ours" 'BEGIN{printf "%.1f", a/b}')
rfrac=$(awk -v a="$rours" -v b="$(rss "$d/conv.log")" 'BEGIN{printf "%.0f", 100*a/b}')
printf '%-44s %8s s %8s MiB\n' "route total (peak RSS of its steps)" "$route" "$rroute"
echo "loraweld ${speed}x faster end to end; its peak RSS ${rfrac}% of the converter's; files identical: $same"
CSV="$W/gguf.csv"; [ -f "$CSV" ] || echo "date,cache,shape,method,in_bytes,loraweld_s,loraweld_rss_mib,route_s,merge_s,convert_s,quantize_s,convert_rss_mib,quantize_rss_mib,speedup,identical" > "$CSV"
echo "$(date -u +%F),$([ "${COLD:-0}" = 1 ] && echo cold || echo warm),$SHAPE,$METHOD,$inb,$ours,$rours,$route,$(secs "$d/m16.log"),$(secs "$d/conv.log"),$(secs "$d/quant.log"),$(rss "$d/conv.log"),$(rss "$d/quant.log"),$speed,$same" >> "$CSV"
rm -rf "$d/bench" "$d/bench.BF16.gguf"
