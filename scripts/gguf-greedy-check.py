#!/usr/bin/env python3
"""Runs llama.cpp on GGUF files and compares their greedy continuations of one prompt.

    . DIR/env.sh        # from scripts/setup_llamacpp.sh: LLAMA_CPP_LIB_PATH, the sdist's bindings
    $LLAMACPP_PY scripts/gguf-greedy-check.py OURS.gguf REFERENCE.gguf [N_TOKENS]

Loads each file with llama.cpp (the llama_cpp bindings of the llama-cpp-python 0.3.36 sdist, on
the libllama built by setup_llamacpp.sh), tokenizes the same prompt with the file's own
tokenizer, generates N tokens greedily (temperature 0, one thread, fixed seed) and prints both
token lists; exits 1 when they differ.
"""
import sys

import llama_cpp.llama_cpp as lib
from llama_cpp import Llama

# No extra buffer types (weight repacking): ggml's AMX path faults on machines that report AMX
# but whose kernel does not enable it (this VM); the plain CPU path computes the same logits.
_default_params = lib.llama_model_default_params


def _params():
    p = _default_params()
    p.use_extra_bufts = False
    return p


lib.llama_model_default_params = _params

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"


def greedy(path: str, n: int) -> list[int]:
    llm = Llama(model_path=path, n_ctx=256, n_threads=1, seed=0, verbose=False, logits_all=False)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True)
    out = []
    for tok in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0):
        out.append(int(tok))
        if len(out) == n:
            break
    return prompt, out


def main() -> int:
    ours, ref = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    p1, a = greedy(ours, n)
    p2, b = greedy(ref, n)
    print(f"prompt tokens: {len(p1)} / {len(p2)} (same: {p1 == p2})")
    print(f"ours:      {a}")
    print(f"reference: {b}")
    same = p1 == p2 and a == b
    print("greedy tokens identical" if same else "greedy tokens DIFFER")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
