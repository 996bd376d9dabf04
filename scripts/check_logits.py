#!/usr/bin/env python3
"""Loads loraweld outputs in transformers (+ PEFT, bitsandbytes on CPU) and compares logits.

    ../.refenv/bin/python scripts/check_logits.py [path/to/loraweld]

1. merged_4bit of lora_on_nf4 on base_nf4_dq (ours and PEFT's ref_merged_4bit) against the
   16-bit merge from the same base (ref_merged_16bit_from_nf4): the 4-bit outputs load, and
   their logits differ from the 16-bit merge's by the quantization error only.
2. merged_4bit from the bf16 base against the bf16 merge (ref_merged_16bit).
3. Tied embeddings (tests/fixtures/variants/qwen2_tied_head): the adapter model (PEFT, not
   merged) against PEFT's merge (shared matrix changed) and against --untie-embeddings.

All logits are computed in float32 from the files (4-bit weights dequantized exactly).
Prints one line per comparison: max |logit difference| and the mean.
"""

import os
import subprocess
import sys
import tempfile
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.environ.get("REF_PYTHON", os.path.join(ROOT, "..", "shared", "ref-python")))

import torch  # noqa: E402

import bnb_cpu_compat  # noqa: E402

bnb_cpu_compat.patch()

import bitsandbytes as bnb  # noqa: E402
import transformers  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

LW = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "loraweld")
FIX = os.path.join(ROOT, "tests", "fixtures")
IDS = torch.tensor([[0, 17, 250, 3, 99, 512, 7, 42, 300, 1]])


def load(path):
    import json

    cfg = json.load(open(os.path.join(path, "config.json")))
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cpu")
    if "quantization_config" in cfg:
        bnb_cpu_compat.disable_cpu_packing(m)
        for x in m.modules():
            if isinstance(x, bnb.nn.Linear4bit):
                x.compute_dtype = torch.float32
                x.compute_type_is_set = True
    m.eval()
    return m


@torch.no_grad()
def logits(model, ids=IDS):
    return model(input_ids=ids).logits[0].float()


def report(name, a, b):
    d = (a - b).abs()
    print(f"{name}: max |dlogit| {d.max().item():.4g}, mean {d.mean().item():.4g}", flush=True)
    return d.max().item()


def run(*args):
    subprocess.run([LW, "save", *args], check=True, stderr=subprocess.DEVNULL)


def main():
    tmp = tempfile.mkdtemp(prefix="loraweld-logits-")
    ll = os.path.join(FIX, "llama")
    ours4 = os.path.join(tmp, "ours_merged_4bit")
    run(os.path.join(ll, "lora_on_nf4"), ours4, "--save-method", "merged_4bit")
    ref16 = logits(load(os.path.join(ll, "ref_merged_16bit_from_nf4")))
    report("merged_4bit (loraweld, from NF4) vs 16-bit merge", logits(load(ours4)), ref16)
    report("merged_4bit (PEFT, from NF4)     vs 16-bit merge", logits(load(os.path.join(ll, "ref_merged_4bit"))), ref16)
    report("merged_4bit loraweld vs PEFT", logits(load(ours4)), logits(load(os.path.join(ll, "ref_merged_4bit"))))

    ours4b = os.path.join(tmp, "ours_merged_4bit_from_bf16")
    run(os.path.join(ll, "lora"), ours4b, "--save-method", "merged_4bit")
    report("merged_4bit (loraweld, from bf16) vs bf16 merge", logits(load(ours4b)),
           logits(load(os.path.join(ll, "ref_merged_16bit"))))
    report("base NF4 (PEFT quantized) vs base bf16", logits(load(os.path.join(ll, "base_nf4_dq"))),
           logits(load(os.path.join(ll, "base_bf16"))))

    v = os.path.join(FIX, "variants")
    ids = IDS % 256
    base = load(os.path.join(v, "base_qwen2"))
    adapter_model = PeftModel.from_pretrained(base, os.path.join(v, "qwen2_tied_head", "adapter"))
    adapter_model.eval()
    want = logits(adapter_model, ids)
    untied = os.path.join(tmp, "qwen2_untied")
    run(os.path.join(v, "qwen2_tied_head", "adapter"), untied, "--untie-embeddings", "--dtype", "f32")
    report("tied head, PEFT merge (shared matrix) vs adapter model", logits(load(os.path.join(v, "qwen2_tied_head", "ref")), ids), want)
    report("tied head, --untie-embeddings (f32) vs adapter model", logits(load(untied), ids), want)
    untied16 = os.path.join(tmp, "qwen2_untied_bf16")
    run(os.path.join(v, "qwen2_tied_head", "adapter"), untied16, "--untie-embeddings")
    report("tied head, --untie-embeddings (bf16) vs adapter model", logits(load(untied16), ids), want)


if __name__ == "__main__":
    main()
