#!/usr/bin/env python3
"""Reference GGUFs for tests/fixtures/gguf_models/, made by llama.cpp's own tools from PEFT's merged checkpoints.
Called by scripts/make_gguf_model_fixtures.sh after make_gguf_model_fixtures.py; runs in the llama.cpp venv
(. $LLAMACPP_DIR/env.sh; $LLAMACPP_PY ...).

    $LLAMACPP_PY scripts/make_gguf_model_refs.py OUT_DIR WORK_DIR SET ROUTE[,ROUTE] TYPES...

For every ROUTE (merged folder WORK_DIR/SET/merged_<ROUTE>):
    $LLAMACPP_PY $LLAMACPP_CONVERT MERGED --model-name loraweld-test --outtype {f16,bf16,q8_0} --outfile ROUTE.<t>.gguf
    $LLAMACPP_QUANTIZE ROUTE.bf16.gguf ROUTE.<TYPE>.gguf <TYPE>          (no imatrix, default threads)
    $LLAMACPP_QUANTIZE ROUTE.f16.gguf  ROUTE.f16route.Q4_K_M.gguf Q4_K_M
Each output is recorded in OUT_DIR/SET/refs/ as
    <file>.json       sha256 + size of the whole file, data_offset, per KV (key, type, sha256 of its bytes) and per
                      tensor (name, ggml type, shape as in gguf (row length first), offset from the data start,
                      nbytes, sha256)
    <file>.head.gguf  the bytes before the tensor data (header, KVs, tensor infos, padding), when under HEAD_MAX bytes
    <file>            the whole file, when under WHOLE_MAX bytes
and listed in OUT_DIR/SET/refs/refs.json (appended to MANIFEST.json by the shell script).
"""

import hashlib
import json
import os
import shlex
import subprocess
import sys

import gguf
import numpy as np

WHOLE_MAX = int(os.environ.get("WHOLE_MAX", 2_000_000))
HEAD_MAX = int(os.environ.get("HEAD_MAX", 2_000_000))
PY, CONVERT, QUANTIZE = os.environ["LLAMACPP_PY"], os.environ["LLAMACPP_CONVERT"], os.environ["LLAMACPP_QUANTIZE"]

OUT, WORK, SET, ROUTES = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
QTYPES = sys.argv[5:]
METHOD = {"f16": "f16", "bf16": "bf16", "q8_0": "q8_0"}

COMMANDS = []


def run(cmd, log):
    line = " ".join(shlex.quote(c) for c in cmd)
    for path, var in ((PY, "$LLAMACPP_PY"), (CONVERT, "$LLAMACPP_CONVERT"), (QUANTIZE, "$LLAMACPP_QUANTIZE"),
                      (os.path.abspath(WORK), "$WORK"), (WORK, "$WORK")):
        line = line.replace(path, var)
    COMMANDS.append(line)
    with open(log, "a") as f:
        f.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)


def sha(b):
    return hashlib.sha256(b).hexdigest()


def describe(path):
    data = open(path, "rb").read()
    r = gguf.GGUFReader(path)
    kvs = []
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        start = int(f.offset)
        end = start + sum(int(p.nbytes) for p in f.parts)
        kvs.append({"key": k, "type": gguf.GGUFValueType(f.types[0]).name if f.types else None,
                    "offset": start, "nbytes": end - start, "sha256": sha(data[start:end])})
    tensors = []
    for t in r.tensors:
        off = int(t.data_offset) - r.data_offset
        nb = int(t.n_bytes)
        tensors.append({"name": t.name, "ggml_type": t.tensor_type.name, "ggml_type_id": int(t.tensor_type),
                        "shape": [int(x) for x in t.shape], "offset": off, "nbytes": nb,
                        "sha256": sha(data[r.data_offset + off: r.data_offset + off + nb])})
    return data, {"size": len(data), "sha256": sha(data), "data_offset": int(r.data_offset),
                  "n_kv": len(kvs), "n_tensors": len(tensors), "kv": kvs, "tensors": tensors}


def record(path, refs_dir, method, intermediate, route):
    name = os.path.basename(path)
    data, desc = describe(path)
    desc.update({"file": name, "route": route, "method": method, "intermediate": intermediate})
    head = f"{name[:-5]}.head.gguf"
    desc["head_file"] = head if desc["data_offset"] <= HEAD_MAX else None
    desc["head_sha256"] = sha(data[:desc["data_offset"]])
    desc["whole_file"] = name if len(data) <= WHOLE_MAX else None
    if desc["head_file"]:
        with open(f"{refs_dir}/{head}", "wb") as f:
            f.write(data[:desc["data_offset"]])
    if desc["whole_file"]:
        with open(f"{refs_dir}/{name}", "wb") as f:
            f.write(data)
    with open(f"{refs_dir}/{name[:-5]}.json", "w") as f:
        json.dump(desc, f, indent=1)
        f.write("\n")
    return {"route": route, "method": method, "intermediate": intermediate, "file": name,
            "json": f"{name[:-5]}.json", "head": desc["head_file"], "whole": desc["whole_file"],
            "size": len(data), "sha256": desc["sha256"]}


def main():
    refs_dir = f"{OUT}/{SET}/refs"
    os.makedirs(refs_dir, exist_ok=True)
    tmp = f"{WORK}/{SET}/gguf"
    os.makedirs(tmp, exist_ok=True)
    log = f"{WORK}/{SET}/tools.log"
    entries = []
    for route in ROUTES:
        merged = f"{WORK}/{SET}/merged_{route}"
        for t in ("f16", "bf16", "q8_0"):
            o = f"{tmp}/{route}.{t}.gguf"
            run([PY, CONVERT, merged, "--model-name", "loraweld-test", "--outtype", t, "--outfile", o], log)
            entries.append(record(o, refs_dir, METHOD[t], None, route))
        for q in QTYPES:
            o = f"{tmp}/{route}.{q}.gguf"
            run([QUANTIZE, f"{tmp}/{route}.bf16.gguf", o, q], log)
            entries.append(record(o, refs_dir, q.lower(), "bf16", route))
        o = f"{tmp}/{route}.f16route.Q4_K_M.gguf"
        run([QUANTIZE, f"{tmp}/{route}.f16.gguf", o, "Q4_K_M"], log)
        entries.append(record(o, refs_dir, "q4_k_m", "f16", route))
    with open(f"{refs_dir}/refs.json", "w") as f:
        json.dump({"set": SET, "commands": COMMANDS, "refs": entries}, f, indent=1)
        f.write("\n")
    for e in entries:
        print(f"  {SET}/{e['file']}: {e['size']} bytes, whole={bool(e['whole'])}, head={bool(e['head'])}")


if __name__ == "__main__":
    main()
