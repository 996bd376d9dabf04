#!/usr/bin/env bash
# Proves the mock Hub (examples/mock-hub.rs) against the real Python `huggingface_hub` client,
# and loraweld against both:
#   1. Python: create_repo, upload_folder (basic + multipart LFS, verify), create_commit with
#      create_pr, hf_hub_download of everything; byte comparisons (hub-python-check.py upload).
#   2. loraweld downloads what Python uploaded, by repo id, through the same HF cache, merges it,
#      and pushes the result (--push-to-hub): the merged shards must equal PEFT's.
#   3. Python reads loraweld's push back, byte for byte, and parses its model card.
# Usage: scripts/hub-python-check.sh   (PYTHON=/path/to/python with huggingface_hub installed)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

cargo build --quiet --example mock-hub --bin loraweld
target="$(cargo metadata --format-version 1 --no-deps | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
# 1 MB parts, so the ~1.8 MB fixture shards go multipart and the adapter (~450 kB) goes basic.
"$target/debug/examples/mock-hub" --port 0 --chunk-size 1000000 >"$work/url" &
pid=$!
for _ in $(seq 100); do [ -s "$work/url" ] && break; sleep 0.1; done
export HF_ENDPOINT="$(head -n1 "$work/url")"
export HF_TOKEN=hf_ci_mock_token HF_HOME="$work/hf" HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_PROGRESS_BARS=1
unset HF_HUB_OFFLINE
echo "mock hub at $HF_ENDPOINT"

"$PY" scripts/hub-python-check.py upload tests/fixtures/llama

"$target/debug/loraweld" save mock-user/py-lora "$work/merged" --base mock-user/py-base --max-shard-size 2MB \
  --push-to-hub mock-user/rs-merged --tags ci-tag --commit-message "merged by loraweld" 2>&1 | tee "$work/save.log"
if grep -q "$HF_TOKEN" "$work/save.log"; then echo "FAIL: the token was printed"; exit 1; fi
ref=tests/fixtures/llama/ref_merged_16bit
for f in "$ref"/*.safetensors "$ref"/model.safetensors.index.json; do
  cmp "$f" "$work/merged/$(basename "$f")"
done
echo "ok   loraweld merge of Python-uploaded repos equals PEFT's ($(ls "$ref"/*.safetensors | wc -l) shards + index)"

"$PY" scripts/hub-python-check.py verify-push mock-user/rs-merged "$work/merged"
