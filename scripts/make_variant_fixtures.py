#!/usr/bin/env python3
"""Tiny golden fixtures for every LoRA variant and architecture, made by the real
transformers + PEFT (+ bitsandbytes) on CPU. Writes tests/fixtures/variants/ (a few MB).

    bash ../shared/ref-python/setup_refenv.sh ../.refenv
    ../.refenv/bin/python scripts/make_variant_fixtures.py tests/fixtures/variants

Layout: <case>/base/ (the base model), <case>/adapter/ (PEFT save_pretrained, with
base_model_name_or_path = "../base"), <case>/ref/ (PEFT merge_and_unload() + save_pretrained),
and cases.json listing each case with its loraweld flags. Every merged reference comes from
`PeftModel.from_pretrained(fresh base from disk, adapter) -> merge_and_unload()`, the user flow.
"""

import json
import math
import os
import shutil
import sys
import warnings

if os.environ.get("PYTHONHASHSEED") != "0":  # PEFT writes target_modules from a set: pin the order
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.environ.get("REF_PYTHON", os.path.join(HERE, "..", "..", "shared", "ref-python"))
sys.path.insert(0, REF)

import torch  # noqa: E402

import bnb_cpu_compat  # noqa: E402

bnb_cpu_compat.patch()

import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/variants"
SEED = 4321
LLAMA_T = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES = []


def small(cfg_cls_name, **kw):
    cfg = getattr(transformers, cfg_cls_name)(**kw)
    return cfg


def randomize_(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln_" in name):
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            else:
                v = 0.05 * torch.randn(p.shape, generator=g)
            p.copy_(v.to(p.dtype))


def save(model, path):
    if os.path.exists(path):
        shutil.rmtree(path)
    model.save_pretrained(path)


def make_base(name, cfg, dtype=torch.bfloat16, seed=SEED):
    m = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    randomize_(m, seed)
    m.tie_weights()
    save(m, f"{OUT}/{name}")
    return f"{OUT}/{name}"


def load(path, dtype=torch.bfloat16):
    m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map="cpu")
    m.eval()
    return m


def make_adapter(base_path, cfg, adir, seed, dtype=torch.bfloat16, autocast=True, perturb=()):
    base = load(base_path, dtype)
    pm = get_peft_model(base, cfg, autocast_adapter_dtype=autocast)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters()):
            if "lora_B" in name or "lora_embedding_B" in name:
                p.copy_((0.1 * torch.randn(p.shape, generator=g)).to(p.dtype))
            elif "lora_A" in name or "lora_embedding_A" in name:
                p.copy_((0.2 * torch.randn(p.shape, generator=g)).to(p.dtype))
            elif "lora_magnitude_vector" in name and "dora" in perturb:
                p.mul_((1.0 + 0.1 * torch.randn(p.shape, generator=g)).to(p.dtype))
            elif ("modules_to_save" in name or "trainable_tokens" in name) and "mts" in perturb:
                p.add_((0.05 * torch.randn(p.shape, generator=g)).to(p.dtype))
    if os.path.exists(adir):
        shutil.rmtree(adir)
    pm.save_pretrained(adir)
    c = json.load(open(f"{adir}/adapter_config.json"))
    c["base_model_name_or_path"] = "../base"
    with open(f"{adir}/adapter_config.json", "w") as f:
        f.write(json.dumps(c, indent=2, sort_keys=True))
    for f in ("README.md",):
        if os.path.exists(f"{adir}/{f}"):
            os.remove(f"{adir}/{f}")


def peft_merge(base_path, adir, out, dtype=torch.bfloat16, autocast=True, dequantize=False):
    base = load(base_path, dtype)
    if dequantize:
        bnb_cpu_compat.disable_cpu_packing(base)
        base = base.dequantize()
    pm = PeftModel.from_pretrained(base, adir, autocast_adapter_dtype=autocast)
    pm.eval()
    merged = pm.merge_and_unload()
    save(merged, out)


def case(name, base_dir, lora_cfg, *, flags=(), dtype=torch.bfloat16, autocast=True, perturb=(), dequantize=False,
         note=""):
    d = f"{OUT}/{name}"
    os.makedirs(d, exist_ok=True)
    rel_base = os.path.relpath(base_dir, d)
    make_adapter(base_dir if not dequantize else base_dir, lora_cfg, f"{d}/adapter", SEED + len(CASES), dtype,
                 autocast, perturb)
    c = json.load(open(f"{d}/adapter/adapter_config.json"))
    c["base_model_name_or_path"] = rel_base
    with open(f"{d}/adapter/adapter_config.json", "w") as f:
        f.write(json.dumps(c, indent=2, sort_keys=True))
    peft_merge(base_dir, f"{d}/adapter", f"{d}/ref", dtype, autocast, dequantize)
    CASES.append({"name": name, "base": os.path.relpath(base_dir, OUT), "flags": list(flags), "note": note})
    print("case", name, flush=True)


def lcfg(**kw):
    base = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LLAMA_T, task_type="CAUSAL_LM")
    base.update(kw)
    return LoraConfig(**base)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(SEED)
    dims = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)

    # ---- Llama: variants
    llama = make_base("base_llama", small("LlamaConfig", tie_word_embeddings=False, **dims))
    llama16 = make_base("base_llama_fp16", small("LlamaConfig", tie_word_embeddings=False, **dims), torch.float16)
    case("llama_rslora_patterns", llama,
         lcfg(use_rslora=True, rank_pattern={"q_proj": 4, "layers.1.self_attn.k_proj": 2}, alpha_pattern={"down_proj": 32}))
    case("llama_dora", llama, lcfg(use_dora=True), perturb=("dora",))
    case("llama_embed_head", llama, lcfg(target_modules=["embed_tokens", "lm_head", "q_proj", "v_proj"]))
    case("llama_mts_tokens", llama,
         lcfg(target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"], trainable_token_indices=[3, 17, 200]),
         perturb=("mts",))
    case("llama_bf16_adapter", llama, lcfg(), autocast=False)
    case("llama_fp16_base", llama16, lcfg(), dtype=torch.float16)

    # ---- Llama NF4 base: DoRA merged from 4-bit = transformers dequantize() + PEFT merge
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16)
    m4 = AutoModelForCausalLM.from_pretrained(llama, quantization_config=q, dtype=torch.bfloat16, device_map="cpu")
    bnb_cpu_compat.disable_cpu_packing(m4)
    save(m4, f"{OUT}/base_llama_nf4")
    del m4
    d = f"{OUT}/llama_nf4_dora"
    os.makedirs(d, exist_ok=True)
    make_adapter(llama, lcfg(use_dora=True), f"{d}/adapter", SEED + 77, perturb=("dora",))
    c = json.load(open(f"{d}/adapter/adapter_config.json"))
    c["base_model_name_or_path"] = "../base_llama_nf4"
    with open(f"{d}/adapter/adapter_config.json", "w") as f:
        f.write(json.dumps(c, indent=2, sort_keys=True))
    peft_merge(f"{OUT}/base_llama_nf4", f"{d}/adapter", f"{d}/ref", dequantize=True)
    CASES.append({"name": "llama_nf4_dora", "base": "base_llama_nf4", "flags": [],
                  "note": "transformers dequantize() + PEFT DoRA merge"})
    print("case llama_nf4_dora", flush=True)

    # ---- Qwen2: q/k/v bias, tied embeddings
    qwen = make_base("base_qwen2", small("Qwen2Config", tie_word_embeddings=True, **dims))
    case("qwen2_tied_head", qwen, lcfg(target_modules=LLAMA_T + ["lm_head"]),
         note="LoRA on a tied lm_head lands in the shared embedding (PEFT)")
    case("qwen2_lora_bias", qwen, lcfg(lora_bias=True, target_modules=["q_proj", "k_proj", "v_proj"]))
    case("qwen2_mts_untie", qwen, lcfg(target_modules=["q_proj"], modules_to_save=["lm_head"]), perturb=("mts",),
         note="a trained copy of a tied head unties it")

    # ---- Mistral
    mistral = make_base("base_mistral", small("MistralConfig", tie_word_embeddings=False, sliding_window=None, **dims))
    case("mistral", mistral, lcfg())

    # ---- Gemma: its own norm naming, tied embeddings
    gemma = make_base("base_gemma", small("GemmaConfig", head_dim=16, **dims))
    case("gemma", gemma, lcfg())

    # ---- Phi-3: fused qkv_proj / gate_up_proj
    phi = make_base("base_phi3", small("Phi3Config", tie_word_embeddings=False, pad_token_id=0, **dims))
    case("phi3", phi, lcfg(target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]))

    # ---- GPT-2: Conv1D weights [in, out], fan_in_fan_out
    gpt2 = make_base("base_gpt2", small("GPT2Config", n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=64))
    case("gpt2", gpt2, lcfg(target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True))

    # ---- MoE (Qwen2-MoE): attention-only adapter
    moe = make_base("base_qwen2moe", small("Qwen2MoeConfig", tie_word_embeddings=False, num_experts=4,
                                            num_experts_per_tok=2, moe_intermediate_size=32,
                                            shared_expert_intermediate_size=64, **dims))
    case("qwen2moe_attn", moe, lcfg(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))

    with open(f"{OUT}/cases.json", "w") as f:
        f.write(json.dumps(CASES, indent=2) + "\n")
    print("done", OUT)


if __name__ == "__main__":
    main()
