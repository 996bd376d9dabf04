#!/usr/bin/env python3
"""Inputs + PEFT merges for the GGUF model fixtures (tests/fixtures/gguf_models/), made by the real transformers 5 +
PEFT + bitsandbytes on CPU. Called by scripts/make_gguf_model_fixtures.sh (which then runs the llama.cpp tools).

    REFENV/bin/python scripts/make_gguf_model_fixtures.py TOK_DIR OUT_DIR WORK_DIR [SET ...]

Per set <name> (llama_spm, llama3_bpe, qwen2, mistral_spm, gemma3_spm, phi3_spm):
  OUT_DIR/<name>/base_bf16/      the tiny base model (bf16, sharded with max_shard_size=SHARD) + tokenizer files +
                                 generation_config.json
  OUT_DIR/<name>/base_nf4/       (llama_spm only) the same weights pre-quantized by bnb: NF4, double quant,
                                 compute dtype bf16, storage uint8 (exactly as tests/fixtures/llama/base_nf4_dq)
  OUT_DIR/<name>/lora/           PEFT LoRA r=8 alpha=16 on the 7 linear projections (phi3_spm: the fused qkv_proj,
                                 o_proj, gate_up_proj, down_proj), B non-zero (fixed seed),
                                 base_model_name_or_path = "../base_bf16"
  OUT_DIR/<name>/lora_on_nf4/    (llama_spm only) the same adapter tensors, created on base_nf4
  WORK_DIR/<name>/merged_lora/   PEFT: fresh base_bf16 from disk + lora -> merge_and_unload() -> save_pretrained
  WORK_DIR/<name>/merged_nf4/    (llama_spm only) merged_16bit from the NF4 base, the formula of
                                 tests/fixtures/llama/ref_merged_16bit_from_nf4 (Unsloth _merge_lora: W =
                                 dequantize_4bit(W4) in quant_state.dtype -> f32; W += s*B@A (addmm on W^T) -> bf16)
  Both merged folders get the base's tokenizer files and generation_config.json, no README.md / model card.
  Per-set options in SETS: targets (LoRA target_modules), norm_center (norms drawn as norm_center + 0.1*randn; 0 for
  Gemma 3, whose norms are offsets from 1), drop_cfg (config.json keys removed from base_bf16 and merged_lora after
  save_pretrained: Mistral's head_dim).
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
sys.path.insert(0, HERE)

import torch  # noqa: E402

import bnb_cpu_compat  # noqa: E402

bnb_cpu_compat.patch()

import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.functional as bnbF  # noqa: E402
import peft  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.utils import set_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig, GenerationConfig  # noqa: E402

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

TOK, OUT, WORK = (os.path.abspath(x) for x in sys.argv[1:4])
ONLY = sys.argv[4:]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHARD = "2MB"

SETS = {
    "llama_spm": dict(
        tok="llama-spm", seed=20261,
        cfg=lambda: transformers.LlamaConfig(
            vocab_size=1000, hidden_size=256, intermediate_size=256, num_hidden_layers=11, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, architectures=["LlamaForCausalLM"]),
        gen=dict(bos_token_id=1, eos_token_id=2, do_sample=True, temperature=0.6, top_p=0.9, top_k=40,
                 max_length=2048),
        nf4=True, edge=True),
    "llama3_bpe": dict(
        tok="llama-bpe", seed=20262,
        cfg=lambda: transformers.LlamaConfig(
            vocab_size=128256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=131072, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128009, architectures=["LlamaForCausalLM"]),
        gen=dict(bos_token_id=128000, eos_token_id=[128001, 128009], do_sample=True, temperature=0.6, top_p=0.9,
                 top_k=50, max_length=131072),
        nf4=False, edge=False),
    "qwen2": dict(
        tok="qwen2", seed=20263,
        cfg=lambda: transformers.Qwen2Config(
            vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
            tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645, use_sliding_window=False,
            architectures=["Qwen2ForCausalLM"]),
        gen=dict(bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643, do_sample=True,
                 temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05),
        nf4=False, edge=False),
    # Mistral-7B-v0.1 style: config.json WITHOUT head_dim (transformers 5 writes head_dim: 64; drop_cfg removes it from the
    # base's and the merged folder's config.json, so the converter (transformers 4.57.6 config) sees head_dim None and
    # writes no llama.attention.key_length / value_length).
    "mistral_spm": dict(
        tok="llama-spm", seed=20270,
        cfg=lambda: transformers.MistralConfig(
            vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=10000.0,
            sliding_window=4096, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
            architectures=["MistralForCausalLM"]),
        gen=dict(bos_token_id=1, eos_token_id=2),
        drop_cfg=["head_dim"], nf4=False, edge=False),
    # Gemma 3 text-only (model_type gemma3_text): tied embeddings, q_norm / k_norm, 4 norms per layer stored as offsets
    # (the converter adds 1 to every *norm.weight), so norms are drawn as 0.1*randn (norm_center 0).
    "gemma3_spm": dict(
        tok="llama-spm", seed=20280,
        cfg=lambda: transformers.Gemma3TextConfig(
            vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=128, max_position_embeddings=32768, rms_norm_eps=1e-6, sliding_window=64,
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            architectures=["Gemma3ForCausalLM"]),
        gen=dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=True, top_k=64, top_p=0.95),
        norm_center=0.0, nf4=False, edge=False),
    # Phi-3 (fused qkv_proj / gate_up_proj) with LongRoPE (Phi-3-mini-128k style): rope_parameters rope_type longrope,
    # long_factor / short_factor of head_dim/2 = 32, max_position_embeddings 131072 over original 4096.
    "phi3_spm": dict(
        tok="llama-spm", seed=20290,
        cfg=lambda: transformers.Phi3Config(
            vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=131072, original_max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
                             "original_max_position_embeddings": 4096,
                             "long_factor": [round(1.0 + 0.25 * i, 4) for i in range(32)],
                             "short_factor": [round(1.0 + 0.01 * i, 4) for i in range(32)]},
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=None,
            architectures=["Phi3ForCausalLM"]),
        gen=dict(bos_token_id=1, eos_token_id=2),
        targets=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], nf4=False, edge=False),
}

# (module, rows, scale): rows of the base weight replaced by scale * randn (seeded) or zero (scale 0).
# ~1e-4 / ~1e-5: q8_0 block scales (amax/127) subnormal in f16, values partly f16-subnormal; ~1e-6: f16 subnormals, q8_0
# scale rounds to 0 in f16; ~1e-8: below half of f16's smallest subnormal (mostly 0 in f16); 0: an all-zero row.
# lm_head / embed_tokens carry no LoRA; for v_proj the LoRA B rows are zeroed (merged rows = base rows exactly); for
# up_proj the B rows are scaled by 1e-6 (tiny merged deltas on tiny rows).
SCALES = [1e-6, 1e-8, 0.0, 1e-5, 1e-4]
EDGE = [
    ("lm_head", [5, 6, 7, 8, 9], SCALES),
    ("model.embed_tokens", [10, 11, 12, 13, 14], SCALES),
    ("model.layers.0.self_attn.v_proj", [3, 4, 5, 6, 7], SCALES),
    ("model.layers.1.mlp.up_proj", [0, 1, 2, 3, 4], SCALES),
    ("model.layers.10.mlp.down_proj", [254, 255], [1e-4, 1e-6]),
]
EDGE_B = {"model.layers.0.self_attn.v_proj": 0.0, "model.layers.1.mlp.up_proj": 1e-6}


def log(*a):
    print(*a, flush=True)


def rm(p):
    if os.path.isdir(p):
        shutil.rmtree(p)


def copy_tok(src, dst):
    for f in sorted(os.listdir(src)):
        shutil.copy(os.path.join(src, f), os.path.join(dst, f))


def randomize_(model, seed, norm_center=1.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                v = norm_center + 0.1 * torch.randn(p.shape, generator=g)
            else:  # weights and biases
                v = 0.02 * torch.randn(p.shape, generator=g)
            p.copy_(v.to(p.dtype))


def load16(path):
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cpu")
    m.eval()
    return m


def load4(path):
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cpu")
    bnb_cpu_compat.disable_cpu_packing(m)
    m.eval()
    return m


def lora_cfg(targets=TARGETS):
    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets, bias="none", task_type="CAUSAL_LM")


def drop_cfg_keys(d, keys):
    """Remove keys transformers 5 adds to config.json (e.g. Mistral's head_dim) so the folder looks like the original
    checkpoint's; same json.dumps layout as PretrainedConfig.to_json_file (indent 2, sort_keys, trailing newline)."""
    if not keys:
        return
    c = json.load(open(f"{d}/config.json"))
    for k in keys:
        c.pop(k, None)
    with open(f"{d}/config.json", "w") as f:
        f.write(json.dumps(c, indent=2, sort_keys=True) + "\n")


def finish_adapter(adir, base_rel):
    c = json.load(open(f"{adir}/adapter_config.json"))
    c["base_model_name_or_path"] = base_rel
    with open(f"{adir}/adapter_config.json", "w") as f:
        f.write(json.dumps(c, indent=2, sort_keys=True) + "\n")
    if os.path.exists(f"{adir}/README.md"):
        os.remove(f"{adir}/README.md")


def finish_merged(d, base_dir):
    """Tokenizer files + generation_config.json of the base; no README.md."""
    copy_tok(TOK_OF[base_dir], d)
    shutil.copy(f"{base_dir}/generation_config.json", f"{d}/generation_config.json")
    if os.path.exists(f"{d}/README.md"):
        os.remove(f"{d}/README.md")


TOK_OF = {}


def make_set(name, spec):
    out, work = f"{OUT}/{name}", f"{WORK}/{name}"
    os.makedirs(out, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    seed = spec["seed"]
    tokdir = f"{TOK}/{spec['tok']}"

    # ---------------------------------------------------------------- base (bf16)
    torch.manual_seed(seed)
    cfg = spec["cfg"]()
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    randomize_(m, seed + 1, spec.get("norm_center", 1.0))
    if spec["edge"]:
        g = torch.Generator().manual_seed(seed + 2)
        sd = dict(m.named_parameters())
        with torch.no_grad():
            for mod, rows, scales in EDGE:
                w = sd[f"{mod}.weight"]
                for r, s in zip(rows, scales):
                    w[r] = (s * torch.randn(w.shape[1], generator=g)).to(w.dtype)
    if cfg.tie_word_embeddings:
        m.tie_weights()
    m.generation_config = GenerationConfig(**spec["gen"])
    base = f"{out}/base_bf16"
    rm(base)
    m.save_pretrained(base, max_shard_size=SHARD)
    drop_cfg_keys(base, spec.get("drop_cfg"))
    copy_tok(tokdir, base)
    TOK_OF[base] = tokdir
    log(f"{name}: base_bf16 {sum(p.numel() for p in m.parameters())} params, files {sorted(os.listdir(base))}")
    del m

    # ---------------------------------------------------------------- LoRA on the bf16 base
    pm = get_peft_model(load16(base), lora_cfg(spec.get("targets", TARGETS)))
    g = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():
        for pname, p in sorted(pm.named_parameters()):
            if "lora_B" in pname:
                p.copy_((0.05 * torch.randn(p.shape, generator=g)).to(p.dtype))
                mod = pname.split("base_model.model.", 1)[1].rsplit(".lora_B", 1)[0]
                if spec["edge"] and mod in EDGE_B:
                    rows = next(r for mm, r, _ in EDGE if mm == mod)
                    p[rows] *= EDGE_B[mod]
            elif "lora_A" in pname:
                bound = 1.0 / math.sqrt(p.shape[1])
                p.copy_(((torch.rand(p.shape, generator=g) * 2 - 1) * bound).to(p.dtype))
    lora = f"{out}/lora"
    rm(lora)
    pm.save_pretrained(lora)
    finish_adapter(lora, "../base_bf16")
    del pm

    # ---------------------------------------------------------------- PEFT merge (the user flow: fresh base from disk)
    pm = PeftModel.from_pretrained(load16(base), lora)
    pm.eval()
    merged = pm.merge_and_unload()
    d = f"{work}/merged_lora"
    rm(d)
    merged.save_pretrained(d)
    drop_cfg_keys(d, spec.get("drop_cfg"))
    TOK_OF[base] = tokdir
    finish_merged(d, base)
    log(f"{name}: merged_lora -> {d}: {sorted(os.listdir(d))}")
    del pm, merged

    if not spec["nf4"]:
        return

    # ---------------------------------------------------------------- NF4 + double-quant base (as base_nf4_dq)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.uint8)
    m4 = AutoModelForCausalLM.from_pretrained(base, quantization_config=q, dtype=torch.bfloat16, device_map="cpu")
    bnb_cpu_compat.disable_cpu_packing(m4)
    nf4 = f"{out}/base_nf4"
    rm(nf4)
    m4.save_pretrained(nf4, max_shard_size=SHARD)
    copy_tok(tokdir, nf4)
    TOK_OF[nf4] = tokdir
    log(f"{name}: base_nf4 {sum(isinstance(x, bnb.nn.Linear4bit) for x in m4.modules())} Linear4bit")
    del m4

    # adapter created on the nf4 base, carrying exactly the tensors of lora/
    pm = get_peft_model(load4(nf4), lora_cfg())
    res = set_peft_model_state_dict(pm, load_file(f"{lora}/adapter_model.safetensors"))
    assert not getattr(res, "unexpected_keys", []), res
    lnf4 = f"{out}/lora_on_nf4"
    rm(lnf4)
    pm.save_pretrained(lnf4)
    finish_adapter(lnf4, "../base_nf4")
    del pm
    a1, a2 = load_file(f"{lora}/adapter_model.safetensors"), load_file(f"{lnf4}/adapter_model.safetensors")
    assert a1.keys() == a2.keys() and all(torch.equal(a1[k], a2[k]) for k in a1)

    # merged_16bit from the NF4 base: the formula of tests/fixtures/llama/ref_merged_16bit_from_nf4
    pm = PeftModel.from_pretrained(load4(nf4), lnf4)
    pm.eval()
    state, dtypes = {}, set()
    for mname, mod in pm.base_model.model.named_modules():
        if isinstance(mod, peft.tuners.lora.LoraLayer):
            bl = mod.get_base_layer()
            w = bl.weight
            qs = w.quant_state
            dtypes.add(str(qs.dtype))
            W = bnbF.dequantize_4bit(w.data, qs).to(qs.dtype)
            W = W.to(torch.float32).t().contiguous()
            A, B, s = mod.lora_A["default"].weight, mod.lora_B["default"].weight, mod.scaling["default"]
            W.addmm_(A.t().to(torch.float32), B.t().to(torch.float32), alpha=s)
            state[f"{mname}.weight"] = W.t().to(qs.dtype).contiguous()
            if bl.bias is not None:
                state[f"{mname}.bias"] = bl.bias.data.clone()
    for k, v in pm.base_model.model.state_dict().items():
        if "lora_" in k or ".weight." in k:
            continue
        kk = k.replace(".base_layer.", ".")
        if kk not in state:
            state[kk] = v
    c = AutoConfig.from_pretrained(nf4)
    if hasattr(c, "quantization_config"):
        del c.quantization_config
    c.dtype = torch.bfloat16
    m16 = AutoModelForCausalLM.from_config(c, dtype=torch.bfloat16)
    r = m16.load_state_dict(state, strict=False)
    missing = [k for k in r.missing_keys if not (k == "lm_head.weight" and c.tie_word_embeddings)]
    assert not missing and not r.unexpected_keys, (missing, r.unexpected_keys)
    if c.tie_word_embeddings:
        m16.tie_weights()
    m16.generation_config = GenerationConfig.from_pretrained(nf4)
    d = f"{work}/merged_nf4"
    rm(d)
    m16.save_pretrained(d)
    finish_merged(d, nf4)
    log(f"{name}: merged_nf4 -> {d} (quant_state dtypes {sorted(dtypes)}): {sorted(os.listdir(d))}")


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for name, spec in SETS.items():
        if ONLY and name not in ONLY:
            continue
        make_set(name, spec)
    import bitsandbytes, safetensors, tokenizers  # noqa: E401
    v = {x.__name__: x.__version__ for x in (torch, transformers, peft, bitsandbytes, safetensors, tokenizers)}
    with open(f"{WORK}/refenv_versions.json", "w") as f:
        json.dump(v, f, indent=1, sort_keys=True)
    log("versions", v)


if __name__ == "__main__":
    main()
