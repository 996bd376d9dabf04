#!/usr/bin/env bash
# Reference GGUF fixtures (tests/fixtures/gguf_models/) made with the REAL tools only: transformers 5 + PEFT +
# bitsandbytes for the models and merges, llama.cpp's convert_hf_to_gguf.py + llama-quantize for the GGUFs.
# Nothing here runs loraweld.
#
#   bash scripts/make_gguf_model_fixtures.sh [OUT_DIR] [SET ...]     (default tests/fixtures/gguf_models, all sets:
#        llama_spm llama3_bpe qwen2 mistral_spm gemma3_spm phi3_spm; MANIFEST.json is rebuilt from every set's refs/)
#
# Environment (all optional):
#   LLAMACPP_DIR   llama.cpp reference tools (default ~/.cache/loraweld-llamacpp; made by scripts/setup_llamacpp.sh)
#   REFENV         transformers 5 / PEFT / bitsandbytes venv (default ~/.cache/loraweld-refenv/venv;
#                  made by scripts/setup_refenv.sh)
#   WORK           scratch dir for merged checkpoints and full GGUFs (default a fresh mktemp dir; kept)
#   TOK            tokenizer folders (default $WORK/tok, made by scripts/make_gguf_tokenizers.py)
#
# Steps:
#   1. setup_refenv.sh / setup_llamacpp.sh (idempotent; pip only: llama.cpp comes from the llama-cpp-python 0.3.36 sdist)
#   2. make_gguf_tokenizers.py   (llama.cpp venv): llama-bpe / qwen2 tokenizer.json rebuilt from the sdist's
#                                models/ggml-vocab-*.gguf, a small trained SentencePiece model for llama-spm
#   3. make_gguf_model_fixtures.py (refenv): bases, adapters, PEFT merges
#   4. make_gguf_model_refs.py   (llama.cpp venv): converter + llama-quantize on each merged folder; refs/ per set
#   5. MANIFEST.json
#   6. make_gguf_lora_refs.py   (llama.cpp venv): convert_lora_to_gguf.py on each set's adapter; refs_lora/ per set
#                                and LORA_REFS.json
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/tests/fixtures/gguf_models}" && cd "${1:-$ROOT/tests/fixtures/gguf_models}" && pwd)"
shift || true
SETS=("$@")
[ ${#SETS[@]} -gt 0 ] || SETS=(llama_spm llama3_bpe qwen2 mistral_spm gemma3_spm phi3_spm)
LLAMACPP_DIR="${LLAMACPP_DIR:-$HOME/.cache/loraweld-llamacpp}"
REFENV="${REFENV:-$HOME/.cache/loraweld-refenv/venv}"
WORK="${WORK:-$(mktemp -d /tmp/gguf-fixtures.XXXXXX)}"
TOK="${TOK:-$WORK/tok}"
mkdir -p "$WORK"

# 1. tools
bash "$HERE/setup_refenv.sh" "$REFENV"
REFENV="$REFENV" bash "$HERE/setup_llamacpp.sh" "$LLAMACPP_DIR"
. "$LLAMACPP_DIR/env.sh"

# 2. tokenizers
if [ ! -f "$TOK/llama-spm/tokenizer.model" ]; then
  "$LLAMACPP_PY" "$HERE/make_gguf_tokenizers.py" "$TOK"
fi

# 3. models, adapters, merges (transformers 5 + PEFT + bnb)
"$REFENV/bin/python" "$HERE/make_gguf_model_fixtures.py" "$TOK" "$OUT" "$WORK" "${SETS[@]}"

# 4. reference GGUFs
for s in "${SETS[@]}"; do
  rm -rf "$OUT/$s/refs" "$WORK/$s/gguf" "$WORK/$s/tools.log"
  case "$s" in
    llama_spm) "$LLAMACPP_PY" "$HERE/make_gguf_model_refs.py" "$OUT" "$WORK" "$s" lora,nf4 \
                 Q4_K_M Q5_K_M Q6_K Q2_K Q3_K_M Q4_0 Q8_0 ;;
    # small-vocab sets: every GGUF is under 2 MB but the base already takes ~3.5 MB, so only <f>.json and
    # <f>.head.gguf are stored (WHOLE_MAX=0) to keep each set near 4 MB
    mistral_spm|gemma3_spm|phi3_spm)
               WHOLE_MAX=0 "$LLAMACPP_PY" "$HERE/make_gguf_model_refs.py" "$OUT" "$WORK" "$s" lora Q4_K_M Q5_K_M Q6_K ;;
    *)         "$LLAMACPP_PY" "$HERE/make_gguf_model_refs.py" "$OUT" "$WORK" "$s" lora Q4_K_M Q5_K_M Q6_K ;;
  esac
done

# 5. manifest
"$LLAMACPP_PY" - "$OUT" "$WORK" <<'EOF'
import json, os, sys, hashlib
out, work = sys.argv[1], sys.argv[2]
sets = {}
for s in sorted(os.listdir(out)):
    rj = os.path.join(out, s, "refs", "refs.json")
    if not os.path.isfile(rj):
        continue
    r = json.load(open(rj))
    inputs = {}
    for d in sorted(os.listdir(os.path.join(out, s))):
        p = os.path.join(out, s, d)
        if os.path.isdir(p) and d != "refs":
            inputs[d] = {f: {"size": os.path.getsize(os.path.join(p, f)),
                             "sha256": hashlib.sha256(open(os.path.join(p, f), "rb").read()).hexdigest()}
                         for f in sorted(os.listdir(p))}
    routes = {"lora": {"base": "base_bf16", "adapter": "lora", "merge": "PEFT merge_and_unload (bf16)"},
              "nf4": {"base": "base_nf4", "adapter": "lora_on_nf4",
                      "merge": "merged_16bit from NF4: dequantize_4bit -> f32 + s*B@A -> bf16 (as llama/ref_merged_16bit_from_nf4)"}}
    used = sorted({e["route"] for e in r["refs"]})
    sets[s] = {"inputs": inputs, "routes": {k: routes[k] for k in used}, "refs_dir": f"{s}/refs",
               "refs": r["refs"], "commands": r["commands"]}
vers = {}
for f in ("refenv_versions.json",):
    p = os.path.join(work, f)
    if os.path.exists(p):
        vers["refenv"] = json.load(open(p))
m = {"about": "Reference GGUFs made by llama.cpp's convert_hf_to_gguf.py + llama-quantize (llama-cpp-python 0.3.36 sdist, "
              "llama.cpp 0c1e570) from PEFT-merged checkpoints; see each set's README.md and scripts/make_gguf_model_fixtures.sh. "
              "Per ref: <json> always (whole-file sha256/size, data_offset, head_sha256, per-KV and per-tensor sha256); "
              "<head> = bytes before the tensor data when <= 2,000,000 bytes; <whole> = the file when <= 2,000,000 bytes.",
     "versions": vers, "sets": sets}
with open(os.path.join(out, "MANIFEST.json"), "w") as f:
    json.dump(m, f, indent=1)
    f.write("\n")
print("MANIFEST:", {s: len(v["refs"]) for s, v in sets.items()})
EOF
du -sh "$OUT" "$OUT"/*

# 6. LoRA adapter GGUFs (convert_lora_to_gguf.py on the adapters above)
"$LLAMACPP_PY" "$HERE/make_gguf_lora_refs.py" "$OUT" "$WORK/lora-refs"
