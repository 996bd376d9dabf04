#!/usr/bin/env python3
"""Reference LoRA adapter GGUFs for tests/fixtures/gguf_models/, made by llama.cpp's own convert_lora_to_gguf.py
from the PEFT adapters already there (made by scripts/make_gguf_model_fixtures.sh). Nothing here runs loraweld.
Runs in the llama.cpp venv (scripts/setup_llamacpp.sh):

    . $LLAMACPP_DIR/env.sh
    $LLAMACPP_PY scripts/make_gguf_lora_refs.py [FIXTURES_DIR] [WORK_DIR]

For every case below (set, adapter folder, base folder, the name the adapter folder is given):
    cp -r SET/ADAPTER WORK/SET/NAME            (gguf-py names the output from the adapter folder's name)
    $LLAMACPP_PY convert_lora_to_gguf.py --base SET/BASE --outtype T --outfile WORK/SET/out_T/ WORK/SET/NAME
for T in f32, f16, bf16, q8_0; the output keeps the converter's default file name. Each output is recorded as in
make_gguf_model_refs.py (<file>.json with per-KV and per-tensor sha256, <file>.head.gguf) in SET/refs_lora/, and
every case is listed in FIXTURES_DIR/LORA_REFS.json. The adapters carry no README.md (the fixture script removes
PEFT's card), so no card metadata is read.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.argv, _argv = sys.argv[:1] + ["-", "-", "-", "-"], sys.argv
import make_gguf_model_refs as refs  # noqa: E402  (its describe/record helpers)
sys.argv = _argv

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIX = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else f"{ROOT}/tests/fixtures/gguf_models")
WORK = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="gguf-lora-refs."))
CONVERT_LORA = os.path.join(os.path.dirname(refs.CONVERT), "convert_lora_to_gguf.py")
TYPES = ["f32", "f16", "bf16", "q8_0"]

# Folder names chosen to walk gguf-py's name heuristics: a plain word, an HF-style id with version, size,
# finetune and a redundant "lora", a context-length label, word sizes, underscores.
CASES = [
    ("llama_spm", "lora", "base_bf16", "lora"),
    # The QLoRA adapter: the converter refuses a bitsandbytes config ("Quant method is not yet supported"),
    # though an adapter GGUF needs only the architecture, so its reference reads the 16-bit base's config;
    # loraweld is run with --base base_nf4 (`ours_base`).
    ("llama_spm", "lora_on_nf4", "base_bf16", "Llama-2-7b-chat-qlora-v1.1"),
    ("llama3_bpe", "lora", "base_bf16", "Llama-3.2-1B-Instruct-lora-v2"),
    ("qwen2", "lora", "base_bf16", "qwen2-0.5b-chat-lora"),
    ("mistral_spm", "lora", "base_bf16", "my_adapter"),
    ("gemma3_spm", "lora", "base_bf16", "gemma-3-270m-it-sft-32k"),
    ("phi3_spm", "lora", "base_bf16", "Phi-3-mini-4k-instruct-LoRA"),
]


def main():
    cases = []
    for s, adapter, base, name in CASES:
        out_dir = f"{FIX}/{s}/refs_lora"
        os.makedirs(out_dir, exist_ok=True)
        work = f"{WORK}/{s}"
        src = f"{work}/{name}"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(f"{FIX}/{s}/{adapter}", src)
        log = f"{work}/tools.log"
        files = []
        for t in TYPES:
            o = f"{work}/out_{adapter}_{t}/"
            shutil.rmtree(o, ignore_errors=True)
            os.makedirs(o)
            cmd = [refs.PY, CONVERT_LORA, "--base", f"{FIX}/{s}/{base}", "--outtype", t, "--outfile", o, src]
            with open(log, "a") as f:
                f.write("$ " + " ".join(cmd) + "\n")
                f.flush()
                subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
            (made,) = os.listdir(o)
            saved_whole, refs.WHOLE_MAX = refs.WHOLE_MAX, 0
            e = refs.record(o + made, out_dir, t, None, adapter)
            refs.WHOLE_MAX = saved_whole
            files.append({"method": t, "file": made, "json": e["json"], "head": e["head"], "size": e["size"],
                          "sha256": e["sha256"]})
            print(f"  {s}/{name} {t}: {made} ({e['size']} bytes)")
        ours = "base_nf4" if adapter == "lora_on_nf4" else base
        cases.append({"set": s, "adapter": adapter, "base": base, "ours_base": ours, "folder": name, "refs_dir": f"{s}/refs_lora",
                      "files": files})
    manifest = {
        "about": "LoRA adapter GGUFs made by llama.cpp's convert_lora_to_gguf.py (llama-cpp-python 0.3.36) "
                 "from each set's PEFT adapter copied into a folder named `folder`, with --base <set>/<base> and "
                 "--outtype <method>, default output names; by scripts/make_gguf_lora_refs.py",
        "command": "convert_lora_to_gguf.py --base SET/BASE --outtype METHOD --outfile DIR/ FOLDER",
        "cases": cases,
    }
    with open(f"{FIX}/LORA_REFS.json", "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
