#!/usr/bin/env python3
"""Real HF tokenizer folders for the GGUF model fixtures, rebuilt from llama.cpp's own vocab files.

    . $LLAMACPP_DIR/env.sh
    $LLAMACPP_PY scripts/make_gguf_tokenizers.py OUT_DIR        # OUT_DIR/{llama-bpe,qwen2,llama-spm}

Runs in the llama.cpp reference venv (transformers 4.57.6, tokenizers 0.22.2, sentencepiece 0.2.3, the sdist's gguf-py).

- llama-bpe/: Llama-3 tokenizer.json rebuilt from $LLAMACPP_SRC/models/ggml-vocab-llama-bpe.gguf (128,000 BPE tokens,
  280,147 merges, 256 special added tokens 128000..128255), Llama-3's pre-tokenizer (Split on the Llama-3 regex +
  ByteLevel without regex), ByteLevel decoder, BOS template post-processor, BPE ignore_merges=true (as Meta's file);
  tokenizer_config.json with bos <|begin_of_text|>, eos <|eot_id|> and the Llama-3 Instruct chat template.
- qwen2/: Qwen2 tokenizer.json from ggml-vocab-qwen2.gguf (151,643 BPE tokens, 151,387 merges, 3 special added tokens
  <|endoftext|> <|im_start|> <|im_end|>), NFC normalizer, Qwen2's Split regex + ByteLevel, no BOS, ChatML template.
- llama-spm/: a SMALL SentencePiece BPE model (vocab 1000, byte_fallback like Llama-2, <unk>=0 <s>=1 </s>=2) trained
  with sentencepiece on $LLAMACPP_SRC/README.md (deterministic, one thread), saved as a LlamaTokenizer
  (tokenizer.model + tokenizer_config.json + special_tokens_map.json; no tokenizer.json).

Each BPE folder is checked against the converter's pre-tokenizer hash table (get_vocab_base_pre) and against the
reference tokenizations $LLAMACPP_SRC/models/ggml-vocab-*.gguf.inp/.out.
"""

import json
import os
import shutil
import sys

import gguf
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SRC = os.environ["LLAMACPP_SRC"]
OUT = sys.argv[1] if len(sys.argv) > 1 else "tok"

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
             r"|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
            r"|\s+(?!\S)|\s+")

LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = '<<SYS>>\\n' + messages[0]['content'] | trim + '\\n<</SYS>>\\n\\n' %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = '' %}{% endif %}"
    "{% for message in loop_messages %}{% if loop.index0 == 0 %}{% set content = system_message + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content | trim + ' ' + eos_token }}{% endif %}{% endfor %}"
)


def read_vocab(name):
    r = gguf.GGUFReader(f"{SRC}/models/ggml-vocab-{name}.gguf")
    f = r.fields["tokenizer.ggml.tokens"]
    toks = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    t = r.fields["tokenizer.ggml.token_type"]
    types = [int(t.parts[i][0]) for i in t.data]
    m = r.fields.get("tokenizer.ggml.merges")
    merges = [tuple(bytes(m.parts[i]).decode("utf-8").split(" ")) for i in m.data] if m else None
    return toks, types, merges


def bpe_tokenizer(name, regex, ignore_merges, nfc, bos):
    toks, types, merges = read_vocab(name)
    assert all(len(x) == 2 for x in merges)
    vocab = {}
    specials = []
    for i, (t, ty) in enumerate(zip(toks, types)):
        if ty == 1:
            vocab[t] = i
        elif ty == 3:
            specials.append((i, t))
        # type 4 [PAD{i}] holes (qwen2) are not part of the HF tokenizer: the converter re-creates them
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges, fuse_unk=False,
                               byte_fallback=False, dropout=None, unk_token=None))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=not nfc, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    from tokenizers import AddedToken
    # special added tokens in id order (ids must equal the vocab file's ids)
    for i, t in sorted(specials):
        got = tok.add_special_tokens([AddedToken(t, special=True, normalized=False)])
        assert tok.token_to_id(t) == i, (t, i, tok.token_to_id(t))
    bl = processors.ByteLevel(add_prefix_space=not nfc, trim_offsets=False, use_regex=not nfc)
    if bos:
        bid = tok.token_to_id(bos)
        tok.post_processor = processors.Sequence([
            bl,
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bid)]),
        ])
    else:
        tok.post_processor = bl
    assert tok.get_vocab_size(with_added_tokens=True) == len([x for x in types if x in (1, 3)])
    return tok


def save_fast(tok, path, template, **kw):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **kw)
    fast.chat_template = template
    if os.path.exists(path):
        shutil.rmtree(path)
    fast.save_pretrained(path)
    compact(path)
    return fast


def compact(path):
    """tokenizer.json without indentation (half the size); chat template inside tokenizer_config.json (where the
    converter's gguf-py SpecialVocab and real Llama-3 / Qwen2 repos have it) instead of transformers 4.57's
    separate chat_template.jinja."""
    tj = os.path.join(path, "tokenizer.json")
    if os.path.exists(tj):
        Tokenizer.from_file(tj).save(tj, pretty=False)
    jf = os.path.join(path, "chat_template.jinja")
    if os.path.exists(jf):
        cfg_path = os.path.join(path, "tokenizer_config.json")
        cfg = json.load(open(cfg_path, encoding="utf-8"))
        cfg["chat_template"] = open(jf, encoding="utf-8").read()
        with open(cfg_path, "w", encoding="utf-8") as f:
            f.write(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        os.remove(jf)


def check_bpe(path, pre_name):
    """The converter's own pre-tokenizer recognition + llama.cpp's reference tokenizations."""
    sys.path.insert(0, SRC)
    from transformers import AutoTokenizer
    from conversion.base import TextModel  # noqa: F401  (the converter package of this sdist)
    import conversion.base as cb

    import pathlib
    import types

    probe = types.SimpleNamespace(dir_model=pathlib.Path(path))
    got = cb.TextModel.get_vocab_base_pre(probe, AutoTokenizer.from_pretrained(path))
    assert got == pre_name, (path, got, pre_name)
    tk = AutoTokenizer.from_pretrained(path)
    inp = open(f"{SRC}/models/ggml-vocab-{pre_name}.gguf.inp", encoding="utf-8").read().split("\n__ggml_vocab_test__\n")
    outs = open(f"{SRC}/models/ggml-vocab-{pre_name}.gguf.out", encoding="utf-8").read().split("\n")
    n = 0
    for i, o in zip(inp[:-1], outs):  # .inp ends with a separator; .out has one line per text
        ids = tk.encode(i, add_special_tokens=False)
        want = [int(x) for x in o.split()]
        assert ids == want, (pre_name, repr(i[:60]), ids[:20], want[:20])
        n += 1
    assert n == len(inp) - 1, n
    print(f"  {path}: converter pre-tokenizer = {got!r}; {n} llama.cpp reference tokenizations match")


def spm(path):
    import sentencepiece as spm_lib
    from transformers import LlamaTokenizer

    os.makedirs(path, exist_ok=True)
    text = open(f"{SRC}/README.md", encoding="utf-8").read()
    tmp = os.path.join(path, "_corpus.txt")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    spm_lib.SentencePieceTrainer.train(
        input=tmp, model_prefix=os.path.join(path, "_spm"), model_type="bpe", vocab_size=1000,
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", add_dummy_prefix=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
        max_sentence_length=1 << 20, shuffle_input_sentence=False, seed_sentencepiece_size=100000,
    )
    os.remove(tmp)
    model = os.path.join(path, "_spm.model")
    t = LlamaTokenizer(vocab_file=model, legacy=True, add_bos_token=True, add_eos_token=False,
                       clean_up_tokenization_spaces=False)
    t.chat_template = LLAMA2_TEMPLATE
    final = path + ".tmp"
    if os.path.exists(final):
        shutil.rmtree(final)
    t.save_pretrained(final)
    shutil.rmtree(path)
    os.rename(final, path)
    compact(path)
    ids = t.encode("Hello world, 12345 ünïcødé 🦙")
    print(f"  {path}: sentencepiece BPE vocab {t.vocab_size}; 'Hello world, 12345 ünïcødé 🦙' -> {ids}")


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = bpe_tokenizer("llama-bpe", LLAMA3_RE, ignore_merges=True, nfc=False, bos="<|begin_of_text|>")
    save_fast(tok, f"{OUT}/llama-bpe", LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
              model_max_length=131072, model_input_names=["input_ids", "attention_mask"])
    check_bpe(f"{OUT}/llama-bpe", "llama-bpe")
    tok = bpe_tokenizer("qwen2", QWEN2_RE, ignore_merges=False, nfc=True, bos=None)
    save_fast(tok, f"{OUT}/qwen2", CHATML_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>",
              model_max_length=32768)
    check_bpe(f"{OUT}/qwen2", "qwen2")
    spm(f"{OUT}/llama-spm")


if __name__ == "__main__":
    main()
