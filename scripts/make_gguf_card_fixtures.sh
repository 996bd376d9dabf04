#!/usr/bin/env bash
# Reference heads for `--gguf-card-metadata`: what llama.cpp's converter writes when the folder it
# reads holds the model card loraweld's merged_16bit writes. For each base-model id, the llama_spm
# fixture's adapter is copied with that `base_model_name_or_path`, merged by loraweld (merged_16bit,
# bit-exact with PEFT, with its README card), and converted with
#   convert_hf_to_gguf.py DIR --outtype q8_0 --model-name loraweld-test
# Only the file's head (everything before the tensor data) is kept: the card changes no tensor, and
# the tensors are checked against refs/lora.q8_0.json.
#
#   . DIR/env.sh   # scripts/setup_llamacpp.sh
#   scripts/make_gguf_card_fixtures.sh            (needs target/release/loraweld)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SET="$HERE/tests/fixtures/gguf_models/llama_spm"
OUT="$SET/refs/card"
LW="$HERE/target/release/loraweld"
W="$(mktemp -d)"; trap 'rm -rf "$W"' EXIT
mkdir -p "$OUT"
IDS=("unsloth/Llama-3.2-1B-Instruct" "mistralai/Mistral-7B-v0.1" "https://huggingface.co/google/gemma-3-1b-it" "../base_bf16")
: > "$OUT/ids.txt"
for n in "${!IDS[@]}"; do
  id="${IDS[$n]}"; d="$W/$n"; mkdir -p "$d"; cp -r "$SET/lora" "$d/lora"
  "$LLAMACPP_PY" - "$d/lora/adapter_config.json" "$id" <<'PY'
import json, sys
p, v = sys.argv[1], sys.argv[2]
c = json.load(open(p)); c["base_model_name_or_path"] = v; json.dump(c, open(p, "w"), indent=2)
PY
  "$LW" save "$d/lora" "$d/merged" --base "$SET/base_bf16" > /dev/null
  "$LLAMACPP_PY" "$LLAMACPP_CONVERT" "$d/merged" --outtype q8_0 --model-name loraweld-test --outfile "$d/ref.gguf" > "$d/conv.log" 2>&1
  "$LLAMACPP_PY" - "$d/ref.gguf" "$OUT/$n.head.gguf" <<'PY'
import sys
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
open(sys.argv[2], "wb").write(open(sys.argv[1], "rb").read()[: r.data_offset])
PY
  printf '%s\t%s\n' "$n" "$id" >> "$OUT/ids.txt"
done
ls -la "$OUT"
