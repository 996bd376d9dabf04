#!/usr/bin/env python3
"""Make GGUF reference fixtures for loraweld's GGUF writer, using ONLY llama.cpp's own gguf-py.

Every byte of the fixture files below comes from the real `gguf.GGUFWriter` and `gguf.quants.quantize` of the
llama.cpp copy vendored in the `llama-cpp-python==0.3.36` sdist (gguf-py 0.19.0 as shipped there; the PyPI `gguf`
wheel differs and must NOT be used). Nothing is hand-written; the JSON files only describe the inputs.

Environment (no torch needed; only registries are used):

    mkdir -p target/gguf-ref/dl && cd target/gguf-ref
    python3 -m pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d dl
    sha256sum dl/llama_cpp_python-0.3.36.tar.gz
    #   832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
    tar xzf dl/llama_cpp_python-0.3.36.tar.gz          # -> llama_cpp_python-0.3.36/vendor/llama.cpp/...
    python3 -m venv venv
    venv/bin/pip install numpy==2.2.6 PyYAML==6.0.4 tqdm==4.70.1   # gguf-py's deps (requests is imported lazily)

(a setup that also builds llama-quantize works as well: its venv has the same numpy and the sdist's
gguf-py on sys.path; it additionally installs transformers/torch and builds llama-quantize, not needed here.)

Run (from the repository root):

    PYTHONPATH=target/gguf-ref/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py \
        target/gguf-ref/venv/bin/python scripts/make_gguf_fixtures.py [OUT_DIR]

OUT_DIR defaults to tests/fixtures/gguf/ next to this script's repository. The output is deterministic (fixed
seeds); the script refuses to run with a gguf package that is not the sdist's (checked by path and version).

Files written:
  kv_and_tensors.gguf   GGUF v3 file written by gguf.GGUFWriter: KVs of every value type and 4 tensors
                        (F32 [7], F16 [3,40], BF16 [2,64], Q8_0 [2,64]); data converted by gguf.quants.quantize
                        exactly as convert_hf_to_gguf.py (conversion/base.py, prepare_tensors) does.
  kv_and_tensors.json   the inputs: KVs in file order (key, type, value; f32 values also as bit patterns), the KVs
                        that gguf-py silently dropped, tensors in file order (name, HF shape rows x cols, ggml type,
                        input f32 values as u32 bit patterns so NaN/-0 survive), sha256 of the .gguf.
  q8_0_cases.bin        N rows x 32 f32, little-endian u32 bit patterns (the quantizer input), N = N_ROWS below.
  q8_0_expected.bin     N x 34-byte Q8_0 blocks (f16 d little-endian, then 32 x i8) from gguf.quants.quantize.
  q8_0_cases.json       row-range -> category table, sizes, sha256 of both .bin files.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import warnings
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT
from gguf.quants import quantize

# ---------------------------------------------------------------------------------------------- guard rails
GGUF_PY_DIR = Path(gguf.__file__).resolve().parent
if "vendor/llama.cpp/gguf-py" not in GGUF_PY_DIR.as_posix():
    sys.exit(f"gguf imported from {GGUF_PY_DIR}: put the sdist's vendor/llama.cpp/gguf-py on PYTHONPATH "
             "(not the PyPI gguf wheel)")
SDIST_ROOT = GGUF_PY_DIR.parents[3]  # .../llama_cpp_python-0.3.36
if SDIST_ROOT.name != "llama_cpp_python-0.3.36":
    sys.exit(f"expected the llama_cpp_python-0.3.36 sdist, got {SDIST_ROOT}")
if np.__version__ != "2.2.6":
    print(f"warning: numpy {np.__version__} (fixtures were made with 2.2.6)", file=sys.stderr)

REPO = Path(__file__).resolve().parents[1]
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "tests" / "fixtures" / "gguf"
OUT.mkdir(parents=True, exist_ok=True)

N_ROWS = 1100  # Q8_0 cases: 1100 * (128 + 34) bytes = 178,200 bytes, keeps all fixtures < 200 KB

warnings.simplefilter("ignore", RuntimeWarning)  # the tiny/huge/NaN Q8_0 cases warn in numpy; expected


def f32_bits(a: np.ndarray) -> list[int]:
    return [int(v) for v in np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).ravel()]


def from_bits(bits: list[int], shape) -> np.ndarray:
    return np.array(bits, dtype=np.uint32).view(np.float32).reshape(shape)


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


GENERATOR = {
    "script": "scripts/make_gguf_fixtures.py",
    "gguf_py": str(GGUF_PY_DIR.relative_to(SDIST_ROOT.parent)),
    "gguf_py_version": "0.19.0 (vendored in llama-cpp-python 0.3.36 sdist)",
    "sdist_sha256": "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
    "numpy": np.__version__,
    "python": sys.version.split()[0],
}

# =============================================================================== 1. kv_and_tensors.gguf
gguf_path = OUT / "kv_and_tensors.gguf"
w = gguf.GGUFWriter(gguf_path, "llama")  # constructor adds general.architecture = "llama" first

kvs: list[dict] = []   # what we asked for, in call order (rebuilt into file order below)
dropped: list[dict] = []


def kv(method: str, key: str, value, type_name: str, sub_type: str | None = None):
    getattr(w, method)(key, value)
    kvs.append({"key": key, "type": type_name, "sub_type": sub_type, "value": value, "call": method})


def kv_array_typed(key: str, value: list, sub: VT):
    # add_array() infers the element type from the first element (int -> INT32, float -> FLOAT32, str -> STRING,
    # bool -> BOOL); other element types need add_key_value(..., sub_type=...), as gguf-py's own callers do.
    w.add_key_value(key, value, VT.ARRAY, sub_type=sub)
    kvs.append({"key": key, "type": "ARRAY", "sub_type": sub.name, "value": value,
                "call": f"add_key_value(sub_type={sub.name})"})


w.add_type("model")
kvs.append({"key": "general.type", "type": "STRING", "sub_type": None, "value": "model", "call": "add_type"})
kv("add_string", "general.name", "loraweld tëst — 模型 🦙 \"quoted\"\n2nd line", "STRING")
kv("add_uint8", "test.u8", 200, "UINT8")
kv("add_int8", "test.i8", -100, "INT8")
kv("add_uint16", "test.u16", 60000, "UINT16")
kv("add_int16", "test.i16", -30000, "INT16")
kv("add_uint32", "test.u32", 4000000000, "UINT32")
kv("add_int32", "test.i32", -2000000000, "INT32")
kv("add_float32", "test.f32", 0.1, "FLOAT32")            # python float -> struct '<f' (round to nearest)
kv("add_float32", "test.f32_neg_zero", -0.0, "FLOAT32")
kv("add_bool", "test.bool_true", True, "BOOL")
kv("add_bool", "test.bool_false", False, "BOOL")
kv("add_uint64", "test.u64", 2**63 + 5, "UINT64")
kv("add_int64", "test.i64", -(2**62) - 7, "INT64")
kv("add_float64", "test.f64", 0.1, "FLOAT64")
kv("add_string", "test.ascii", "plain ascii", "STRING")
# dropped silently by gguf-py (add_string: `if not val: return`; add_array: `if len(val) == 0: return`)
w.add_string("test.empty_string", "")
dropped.append({"key": "test.empty_string", "call": "add_string", "value": ""})
w.add_array("test.empty_array", [])
dropped.append({"key": "test.empty_array", "call": "add_array", "value": []})
kv_array_typed("test.arr_u32", [0, 1, 4000000000, 4294967295], VT.UINT32)
kv("add_array", "test.arr_i32", [1, -2, 2147483647, -2147483648], "ARRAY", "INT32")
kv("add_array", "test.arr_f32", [0.5, -1.25, 0.1, 1e-45, 3.0e38], "ARRAY", "FLOAT32")
kv("add_array", "test.arr_str", ["a", "ü", "", "模型", "two words", "end"], "ARRAY", "STRING")  # "" kept in arrays
kv("add_array", "test.arr_bool", [True, False, True], "ARRAY", "BOOL")
kv_array_typed("test.arr_u8", [0, 7, 255], VT.UINT8)
kv_array_typed("test.arr_i64", [-1, 2**40], VT.INT64)
# a key written twice: gguf-py keeps the dict slot of the first call and the value of the last one
kv("add_uint32", "test.dup", 1, "UINT32")
kv("add_uint32", "test.after_dup", 3, "UINT32")
kv("add_uint32", "test.dup", 2, "UINT32")
w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
kvs.append({"key": "general.file_type", "type": "UINT32", "sub_type": None, "value": 7, "call": "add_file_type"})
w.add_quantization_version(gguf.GGML_QUANT_VERSION)
kvs.append({"key": "general.quantization_version", "type": "UINT32", "sub_type": None, "value": 2,
            "call": "add_quantization_version"})

# ---------------------------------------------------------------- tensors
rng = np.random.default_rng(0)

t_f32 = rng.standard_normal(7).astype(np.float32)
t_f32[3] = -0.0

t_f16 = (rng.standard_normal((3, 40)) * 2.0).astype(np.float32)
f16_specials = [
    0.0, -0.0, 65504.0, 70000.0, -70000.0, 1e-8, -1e-8,
    65519.99609375,            # just below the f16 overflow midpoint -> 65504
    65520.0,                   # exact midpoint between 65504 and 65536 -> RNE -> inf
    5.960464477539063e-08,     # 2^-24, smallest f16 subnormal
    2.9802322387695312e-08,    # 2^-25, tie with 0 -> 0 (even)
    8.940696716308594e-08,     # 1.5 * 2^-24, tie -> 2^-23 (even)
    6.097555160522461e-05,     # f16 subnormal range
    6.103515625e-05,           # 2^-14, smallest f16 normal
    1.0009765625,              # 1 + 2^-10 (exact)
    1.00048828125,             # 1 + 2^-11, tie -> 1.0 (even)
    1.00146484375,             # 1 + 3*2^-11, tie -> 1 + 2^-9 (even)
    float("inf"), float("-inf"),
]
t_f16.ravel()[: len(f16_specials)] = np.array(f16_specials, dtype=np.float32)
# quiet NaNs only (canonical payload): signalling-NaN payloads depend on the numpy cast path
t_f16.ravel()[len(f16_specials)] = np.uint32(0x7FC00000).view(np.float32)
t_f16.ravel()[len(f16_specials) + 1] = np.uint32(0xFFC00000).view(np.float32)

t_bf16 = rng.standard_normal((2, 64)).astype(np.float32)
bf16_special_bits = [
    0x00000000, 0x80000000,                        # 0, -0
    np.float32(65504.0).view(np.uint32), np.float32(70000.0).view(np.uint32),
    np.float32(1e-8).view(np.uint32),
    0x7FC00000, 0xFFC00000,                        # quiet NaN +/-
    0x7F800001, 0xFF800001, 0x7FA00000, 0x7FFFFFFF, 0x7F80FFFF,  # NaNs with payloads (forced quiet)
    0x7F800000, 0xFF800000,                        # +/-inf
    0x7F7FFFFF, 0xFF7FFFFF,                        # +/-f32 max -> rounds to +/-inf
    0x7F7F7FFF,                                    # just below a tie -> down
    0x3F808000,                                    # tie, even below -> stays 0x3F80
    0x3F818000,                                    # tie, odd below -> 0x3F82
    0x3F808001,                                    # above tie -> up
    0x3F807FFF,                                    # below tie -> down
    0x00000001, 0x00008000, 0x00018000, 0x807FFFFF,  # f32 subnormals, ties
    0x3F7FFFFF,                                    # rounds up across exponent -> 0x3F80
]
t_bf16.ravel()[: len(bf16_special_bits)] = np.array(bf16_special_bits, dtype=np.uint32).view(np.float32)

t_q8 = rng.standard_normal((2, 64)).astype(np.float32)
t_q8[0, 32:64] = 0.0                                              # block 1: all zeros
ties = np.array([127.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5, 63.5, -63.5, 0.49999997, -0.49999997,
                 3.5, 4.5, -4.5, 99.5, 100.5, 0.0, -0.0, 7.5, 8.5, -7.5, -8.5, 31.5, 32.5, 64.5, -64.5,
                 1.0, -1.0, 125.5, -125.5], dtype=np.float32)     # amax 127 -> d = 1, id = 1: exact .5 ties
t_q8[1, 0:32] = ties                                              # block 2: ties (half away from zero)
t_q8[1, 40] = -5.0                                                # block 3: random, negative amax
t_q8[1, 32:64] *= 0.01

tensors = [
    ("test.f32", t_f32, QT.F32),
    ("test.f16", t_f16, QT.F16),
    ("test.bf16", t_bf16, QT.BF16),
    ("test.q8_0", t_q8, QT.Q8_0),
]
tensor_desc = []
for name, data, qtype in tensors:
    # exactly what conversion/base.py prepare_tensors does:
    #   data = gguf.quants.quantize(data, data_qtype); self.gguf_writer.add_tensor(new_name, data, raw_dtype=data_qtype)
    q = quantize(data, qtype)
    w.add_tensor(name, q, raw_dtype=qtype)
    tensor_desc.append({
        "name": name,
        "hf_shape": list(data.shape),
        "gguf_dims": list(reversed(data.shape)),
        "ggml_type": qtype.name,
        "ggml_type_id": int(qtype),
        "nbytes": int(q.nbytes),
        "input_f32_bits": f32_bits(data),
    })

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

# KV list in file order: the writer's dict order (general.architecture first; re-added keys keep their first slot)
by_key: dict[str, dict] = {}
for e in kvs:
    if e["key"] in by_key:
        by_key[e["key"]]["value"] = e["value"]
        by_key[e["key"]]["note"] = "written twice (1 then 2): first call's position, last call's value"
    else:
        by_key[e["key"]] = dict(e)
file_order = list(w.kv_data[0].keys())
assert file_order[0] == "general.architecture"
kv_out = [{"key": "general.architecture", "type": "STRING", "sub_type": None, "value": "llama",
           "call": "GGUFWriter(path, 'llama')"}]
for k in file_order[1:]:
    kv_out.append(by_key[k])
for e in kv_out:
    if e["type"] == "FLOAT32":
        e["f32_bits"] = struct.unpack("<I", struct.pack("<f", e["value"]))[0]
    elif e["type"] == "FLOAT64":
        e["f64_bits"] = struct.unpack("<Q", struct.pack("<d", e["value"]))[0]
    elif e["type"] == "ARRAY" and e["sub_type"] == "FLOAT32":
        e["f32_bits"] = [struct.unpack("<I", struct.pack("<f", v))[0] for v in e["value"]]
    if e["sub_type"] is None:
        del e["sub_type"]

desc = {
    "about": "Inputs of kv_and_tensors.gguf, written by llama.cpp gguf-py's GGUFWriter (see generator). "
             "KVs and tensors are listed in file order. Tensor values are f32 bit patterns (little-endian u32), "
             "row-major in HF shape (rows x cols); GGUF stores the dims reversed (gguf_dims). Each tensor was "
             "converted with gguf.quants.quantize(data, type) and added with add_tensor(name, q, raw_dtype=type).",
    "generator": GENERATOR,
    "gguf_file": gguf_path.name,
    "gguf_sha256": sha256(gguf_path),
    "gguf_size": gguf_path.stat().st_size,
    "alignment": gguf.GGUF_DEFAULT_ALIGNMENT,
    "kv_count": len(kv_out),
    "kvs": kv_out,
    "dropped_kvs": dropped,
    "tensor_order": [t["name"] for t in tensor_desc],
    "tensors": tensor_desc,
}
(OUT / "kv_and_tensors.json").write_text(json.dumps(desc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

# =============================================================================== 2. Q8_0 cases
rng = np.random.default_rng(12345)
rows: list[np.ndarray] = []
cats: list[dict] = []


def add(cat: str, block: np.ndarray, note: str = ""):
    block = np.asarray(block, dtype=np.float32).reshape(-1, 32)
    if cats and cats[-1]["name"] == cat:
        cats[-1]["n_rows"] += block.shape[0]
    else:
        cats.append({"name": cat, "first_row": sum(r.shape[0] for r in rows), "n_rows": block.shape[0], "note": note})
    rows.append(block)


for scale in (1.0, 0.02, 1e-3, 1e-6, 1e3, 1e6):
    add(f"normal_scale_{scale:g}", rng.standard_normal((40, 32)) * scale, "random normals")
add("uniform_mixed_scales", rng.uniform(-1, 1, (40, 32)) * 10.0 ** rng.integers(-20, 20, (40, 1)),
    "uniform(-1,1) times 10^k per row, k in [-20,20)")
add("huge_1e30", rng.standard_normal((20, 32)) * 1e30, "d ~ 1e28: f16(d) = inf")
add("near_f32_max", rng.uniform(-3.4e38, 3.4e38, (10, 32)), "d = amax/127 -> f16 inf")
add("f16_subnormal_d", rng.standard_normal((20, 32)) * 10.0 ** rng.uniform(-6, -3, (20, 1)),
    "d falls in the f16 subnormal range (< 6.1e-5)")
add("f16_underflow_d", rng.standard_normal((15, 32)) * 10.0 ** rng.uniform(-12, -7, (15, 1)),
    "d below 2^-25: f16(d) = 0 while the int8 codes are not")
add("tiny_normal_id_inf", rng.standard_normal((15, 32)) * 10.0 ** rng.uniform(-38, -36.5, (15, 1)),
    "amax < ~3.7e-37: 1/d overflows to inf, x*inf = +-inf or nan, np_roundf(+-inf) = nan, nan.astype(int8) = 0")
sub = rng.standard_normal((15, 32)) * 10.0 ** rng.uniform(-45, -39, (15, 1))
add("f32_subnormal", sub, "inputs are f32 subnormals (d may be 0 or subnormal)")
add("min_subnormal", np.where(rng.random((5, 32)) < 0.5, 1, -1) * np.float32(1.4e-45), "+-2^-149: d = 0")
add("all_zero", np.zeros((10, 32)), "d = 0 -> id = 0")
add("all_neg_zero", np.full((5, 32), -0.0), "-0: d = +0, codes 0")
z = np.zeros((60, 32), dtype=np.float32)
pos = rng.integers(0, 32, 60)
val = rng.standard_normal(60) * 10.0 ** rng.uniform(-30, 30, 60)
z[np.arange(60), pos] = val
add("single_nonzero", z, "one nonzero value (+-127 code), zeros elsewhere")

# exact .5 ties: amax = 127 * 2^k, d = 2^k exactly, x = (m + 0.5) * 2^k -> x * id = m + 0.5 exactly
tie_rows = []
for i in range(40):
    k = int(rng.integers(-20, 20))
    m = rng.integers(0, 127, 32).astype(np.float64)
    sgn = np.where(rng.random(32) < 0.5, -1.0, 1.0)
    r = sgn * (m + 0.5) * 2.0 ** k
    r[int(rng.integers(0, 32))] = (1 if i % 2 else -1) * 127 * 2.0 ** k
    tie_rows.append(r)
add("exact_half_ties_pow2_d", np.array(tie_rows), "x*id lands exactly on .5 (round half away from zero)")


# x*(1/d) versus x/d: d = amax/127 not a power of two, x = (m + 0.5) * d exactly; where f32(x * f32(1/d)) is not
# m + 0.5 the rounding differs from a division-based quantizer
def search_mul_vs_div(limit_rows: int):
    out = []
    for dd in [3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 33, 35, 37, 41, 43, 47, 51, 53, 59, 61,
               67, 71, 73, 79, 83, 89, 97, 101, 103, 107, 109, 113, 127]:
        for sc in (1.0, 0.001, 2.0 ** -10, 1e-5):
            d = np.float32(dd * sc)
            amax = np.float32(d * np.float32(127))
            if np.float32(amax / np.float32(127)) != d:
                continue
            idv = np.float32(1) / d
            xs = []
            for m in range(127):
                x = np.float32((m + 0.5) * np.float64(d))
                if np.float32(x / d) != np.float32(m + 0.5):
                    continue  # x not an exact tie under division
                p = np.float32(x * idv)
                if p != np.float32(m + 0.5):
                    xs.append(x if len(xs) % 2 == 0 else -x)
            if len(xs) >= 4:
                r = np.zeros(32, dtype=np.float32)
                r[0] = amax
                n = min(31, len(xs))
                r[1:1 + n] = xs[:n]
                out.append(r)
            if len(out) >= limit_rows:
                return out
    return out


mvd = search_mul_vs_div(30)
add("mul_by_reciprocal_not_div", np.array(mvd),
    "x/d is exactly m+0.5 but f32(x * f32(1/d)) is not: proves q = roundf(x * id), not roundf(x / d)")

# d exactly on an f16 rounding midpoint: amax = 127 * t, t an f16 tie (normal and subnormal ranges)
f16t = []
for e in range(-14, 16):
    for k in (1024, 1025, 1500, 1501, 2046, 2047):
        t = (k + 0.5) * 2.0 ** (e - 10)
        if t * 127 < 3e38:
            f16t.append(t)
for k in (0, 1, 2, 3, 100, 101, 1022, 1023):  # subnormal f16 midpoints
    f16t.append((k + 0.5) * 2.0 ** -24)
f16rows = []
for t in f16t[:60]:
    amax = np.float32(127 * t)
    assert np.float32(amax / np.float32(127)) == np.float32(t)
    r = rng.uniform(-1, 1, 32).astype(np.float32) * amax
    r[int(rng.integers(0, 32))] = amax if len(f16rows) % 2 == 0 else -amax
    f16rows.append(r)
add("d_on_f16_tie", np.array(f16rows), "d = amax/127 is exactly halfway between two f16 values (RNE)")

nf = rng.standard_normal((8, 32)).astype(np.float32)
nf[0, 3] = np.nan
nf[1, 0] = np.inf
nf[2, 5] = -np.inf
nf[3, :] = np.nan
nf[4, 7] = np.inf
nf[4, 8] = -np.inf
nf[5, 9] = np.uint32(0x7F800001).view(np.float32)  # signalling NaN
nf[6, :] = np.inf
nf[7, 1] = np.nan
nf[7, 2] = np.inf
add("nonfinite", nf, "NaN/inf inputs: d = nan or inf; codes via nan.astype(int8) = 0 (x86 and numpy 2.2.6)")

used = sum(r.shape[0] for r in rows)
assert used <= N_ROWS, used
add("normal_fill", rng.standard_normal((N_ROWS - used, 32)) * 10.0 ** rng.uniform(-4, 2, (N_ROWS - used, 1)),
    "random normals, per-row scale 10^[-4,2)")

cases = np.concatenate(rows, axis=0).astype(np.float32)
assert cases.shape == (N_ROWS, 32)
expected = quantize(cases, QT.Q8_0)          # the converter's call, on an (N, 32) tensor
assert expected.dtype == np.uint8 and expected.shape == (N_ROWS, 34)
# quantizing row by row must give the same bytes (blocks are independent)
for i in range(0, N_ROWS, 97):
    assert (quantize(cases[i:i + 1], QT.Q8_0) == expected[i:i + 1]).all()

cases_path = OUT / "q8_0_cases.bin"
exp_path = OUT / "q8_0_expected.bin"
cases.view(np.uint32).astype("<u4").tofile(cases_path)
expected.tofile(exp_path)
(OUT / "q8_0_cases.json").write_text(json.dumps({
    "about": "Q8_0 reference: q8_0_cases.bin holds rows x 32 f32 (little-endian u32 bit patterns); "
             "q8_0_expected.bin holds rows x 34 bytes (f16 d little-endian, then 32 x i8) from "
             "gguf.quants.quantize(cases, GGMLQuantizationType.Q8_0) on the whole (rows, 32) array.",
    "generator": GENERATOR,
    "rows": N_ROWS,
    "block_size": 32,
    "type_size": 34,
    "input": cases_path.name,
    "input_sha256": sha256(cases_path),
    "expected": exp_path.name,
    "expected_sha256": sha256(exp_path),
    "categories": cats,
}, indent=1) + "\n")

for p in sorted(OUT.iterdir()):
    print(f"{p.stat().st_size:8d}  {p}")
