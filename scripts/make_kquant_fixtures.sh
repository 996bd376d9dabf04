#!/usr/bin/env bash
# make_kquant_fixtures.sh -- reference Q4_K / Q5_K / Q6_K blocks from llama.cpp's own C quantizers.
#
# Every expected byte comes from quantize_row_q4_K_ref / quantize_row_q5_K_ref / quantize_row_q6_K_ref in
# ggml/src/ggml-quants.c of the llama.cpp copy vendored in the llama-cpp-python 0.3.36 sdist (ggml 0.25.3),
# compiled as-is (the file is not modified) and driven by scripts/kquant_harness.c. The inputs are made by
# scripts/kquant_gen_cases.py (numpy, fixed seed) -- they are just numbers.
#
# Getting the sdist (only package registries are needed):
#
#     mkdir -p target/gguf-ref/dl && cd target/gguf-ref
#     python3 -m pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d dl
#     sha256sum dl/llama_cpp_python-0.3.36.tar.gz
#     #   832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
#     tar xzf dl/llama_cpp_python-0.3.36.tar.gz        # -> llama_cpp_python-0.3.36/vendor/llama.cpp/...
#     python3 -m venv venv && venv/bin/pip install numpy==2.2.6    # for the input generator / sanity check
#
# Usage (from anywhere):
#
#     scripts/make_kquant_fixtures.sh [SDIST_DIR] [--out DIR] [--inputs CASES.bin --categories CASES.json]
#
#   SDIST_DIR   default target/gguf-ref/llama_cpp_python-0.3.36
#   --out       default tests/fixtures/gguf/ of this repository
#   --inputs    reuse an existing kquant_cases.bin instead of regenerating (then numpy is only needed for the
#               optional gguf-py sanity check); --categories gives the json whose "categories" are kept
#               (default: OUT/kquant_cases.json)
#   env: CC (default gcc), PYTHON (default target/gguf-ref/venv/bin/python; needs numpy), HOST_PYTHON (python3
#        used to write the json; stdlib only)
#
# Compiler flags and why. In the real build, ggml-quants.c is a source of the `ggml-base` library
# (ggml/src/CMakeLists.txt: add_library(ggml-base ... ggml-quants.c ...)). What CMake gives it:
#   * CMAKE_BUILD_TYPE defaults to Release (ggml/CMakeLists.txt and the top llama.cpp CMakeLists.txt)
#     -> CMake's GCC Release flags "-O3 -DNDEBUG" (so assert() is compiled out; GGML_ASSERT stays).
#   * CMAKE_C_STANDARD 11 with extensions (CMake default) -> -std=gnu11; shared lib -> -fPIC.
#   * GGML_ALL_WARNINGS (ON) only adds -W... flags; GGML_NATIVE / -march=native and every -m<isa> flag
#     (GGML_AVX2, GGML_FMA, GGML_F16C, ...) are applied ONLY to the ggml-cpu backend targets
#     (ggml/src/ggml-cpu/CMakeLists.txt: target_compile_options(${GGML_CPU_NAME} PRIVATE ${ARCH_FLAGS})),
#     never to ggml-base. So on x86-64 ggml-base is baseline x86-64 (SSE2 scalar float math, no FMA, no F16C:
#     GGML_FP32_TO_FP16 is the software ggml_compute_fp32_to_fp16, round-to-nearest-even).
#   Here: $CC -std=gnu11 -O3 -DNDEBUG -fPIC -ffp-contract=off, no -m flags, on x86-64.
#   -ffp-contract=off is belt and braces: baseline x86-64 has no FMA instruction, so GCC's default
#   -ffp-contract=fast cannot contract anything there anyway (the script checks the object has no vfmadd*).
#   Diagnostics (never used for the expected bytes): a non-NDEBUG build lists rows tripping assert(); copies of
#   ggml-quants.c patched by sed count exact .5 ties in nearest_int and measure how many rows change if it
#   rounded half away from zero (roundf).
#   The script also builds -O0 and -O2 variants and fails if their output differs in any byte, and reports
#   (informational only) whether a -march=native -ffp-contract=fast build would differ.
#
# Stubs (in kquant_harness.c): ggml-quants.c needs 4 symbols from ggml.c that the _ref functions never call:
#   ggml_abort (print + abort), ggml_row_size, ggml_type_size, ggml_type_name (abort if called). Nothing else
#   of ggml is compiled or linked (only ggml-quants.c + the harness + libm).
#
# Files written to OUT:
#   kquant_cases.bin      rows x 256 f32, little-endian
#   q4_k_expected.bin     rows x 144 bytes (block_q4_K: f16 d, f16 dmin, scales[12], qs[128])
#   q5_k_expected.bin     rows x 176 bytes (block_q5_K: f16 d, f16 dmin, scales[12], qh[32], qs[128])
#   q6_k_expected.bin     rows x 210 bytes (block_q6_K: ql[128], qh[64], scales[16] (i8), f16 d)
#   kquant_cases.json     categories + row ranges, generator, compiler version/flags, sha256s, and diagnostics:
#                         rows that trip assert() in a non-NDEBUG build, and per-category counts of exact .5
#                         ties seen by nearest_int (from a separately built, instrumented copy -- diagnostic only).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
SDIST=target/gguf-ref/llama_cpp_python-0.3.36
OUT="$repo/tests/fixtures/gguf"
INPUTS=""
CATS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --inputs) INPUTS="$2"; shift 2 ;;
        --categories) CATS="$2"; shift 2 ;;
        -h|--help) sed -n '2,60p' "$0"; exit 0 ;;
        *) SDIST="$1"; shift ;;
    esac
done
CC="${CC:-gcc}"
PYTHON="${PYTHON:-target/gguf-ref/venv/bin/python}"
HOST_PYTHON="${HOST_PYTHON:-python3}"
GGML="$SDIST/vendor/llama.cpp/ggml"
SRC="$GGML/src/ggml-quants.c"
[ -f "$SRC" ] || { echo "not found: $SRC (pass the unpacked sdist dir)" >&2; exit 1; }
[ "$(uname -m)" = x86_64 ] || echo "WARNING: not x86-64; the fixtures were defined on x86-64 (SSE2 baseline)" >&2
mkdir -p "$OUT"

BASE_FLAGS=(-std=gnu11 -fPIC -ffp-contract=off)
REF_OPT=(-O3 -DNDEBUG)
INC=(-I"$GGML/include" -I"$GGML/src")
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

build() {  # build NAME SRC_FILE FLAGS...
    local name="$1" src="$2"; shift 2
    "$CC" "$@" "${INC[@]}" -c "$src" -o "$TMP/$name.q.o"
    "$CC" "$@" "${INC[@]}" -c "$here/kquant_harness.c" -o "$TMP/$name.h.o"
    "$CC" "$TMP/$name.h.o" "$TMP/$name.q.o" -lm -o "$TMP/$name"
}

echo "== building reference: $CC ${BASE_FLAGS[*]} ${REF_OPT[*]}" >&2
build ref "$SRC" "${BASE_FLAGS[@]}" "${REF_OPT[@]}"
if objdump -d "$TMP/ref.q.o" | grep -qE '\bvfn?m(add|sub)'; then
    echo "ERROR: FMA instructions in the reference object" >&2; exit 1
fi

# ---- inputs
if [ -n "$INPUTS" ]; then
    cp "$INPUTS" "$TMP/kquant_cases.bin"
    CATS="${CATS:-$OUT/kquant_cases.json}"
    "$HOST_PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); g=d["generator"]
json.dump({"rows": d["rows"], "seed": g.get("seed"), "numpy": g.get("numpy"), "categories": d["categories"]}, open(sys.argv[2], "w"))' \
        "$CATS" "$TMP/gen.json"
else
    "$PYTHON" "$here/kquant_gen_cases.py" "$TMP/kquant_cases.bin" "$TMP/gen.json"
fi

# ---- expected outputs (reference build only)
"$TMP/ref" quantize "$TMP/kquant_cases.bin" "$TMP/q4_k_expected.bin" "$TMP/q5_k_expected.bin" "$TMP/q6_k_expected.bin"

# ---- cross-checks: optimisation level must not matter
for opt in O0 O2; do
    build "x$opt" "$SRC" "${BASE_FLAGS[@]}" "-$opt" -DNDEBUG
    "$TMP/x$opt" quantize "$TMP/kquant_cases.bin" "$TMP/$opt.q4" "$TMP/$opt.q5" "$TMP/$opt.q6" 2>/dev/null
    for t in 4 5 6; do
        cmp -s "$TMP/$opt.q$t" "$TMP/q${t}_k_expected.bin" || { echo "ERROR: -$opt build differs for Q${t}_K" >&2; exit 1; }
    done
    echo "cross-check -$opt: identical" >&2
done
NATIVE_NOTE="not run"
if build native "$SRC" -std=gnu11 -fPIC -O3 -DNDEBUG -march=native -ffp-contract=fast 2>/dev/null; then
    "$TMP/native" quantize "$TMP/kquant_cases.bin" "$TMP/n.q4" "$TMP/n.q5" "$TMP/n.q6" 2>/dev/null
    NATIVE_NOTE="$("$HOST_PYTHON" - "$TMP" <<'EOF'
import sys
t = sys.argv[1]
parts = []
for q, bs in ((4, 144), (5, 176), (6, 210)):
    a = open(f"{t}/q{q}_k_expected.bin", "rb").read(); b = open(f"{t}/n.q{q}", "rb").read()
    rows = [i for i in range(len(a) // bs) if a[i*bs:(i+1)*bs] != b[i*bs:(i+1)*bs]]
    parts.append(f"Q{q}_K: {len(rows)} rows differ")
print("; ".join(parts))
EOF
)"
fi
echo "informational -march=native -ffp-contract=fast build: $NATIVE_NOTE" >&2

# ---- diagnostics: assert() trips in a non-NDEBUG build, and exact-tie counts (instrumented copy)
build dbg "$SRC" "${BASE_FLAGS[@]}" -O3
"$TMP/dbg" probe-asserts "$TMP/kquant_cases.bin" > "$TMP/asserts.txt"
sed 's|^    float val = fval + 12582912.f;|    { extern unsigned long kq_tie_count; if (fval - floorf(fval) == 0.5f) ++kq_tie_count; }\n    float val = fval + 12582912.f;|' \
    "$SRC" > "$TMP/ggml-quants-ties.c"
[ "$(grep -c kq_tie_count "$TMP/ggml-quants-ties.c")" = 1 ] || { echo "ERROR: tie hook not inserted" >&2; exit 1; }
build ties "$TMP/ggml-quants-ties.c" "${BASE_FLAGS[@]}" "${REF_OPT[@]}" -DKQ_COUNT_TIES -I"$GGML/src"
"$TMP/ties" count-ties "$TMP/kquant_cases.bin" > "$TMP/ties.txt"
# sensitivity (informational): how many rows change if nearest_int rounded half AWAY from zero (roundf)?
sed 's|^    float val = fval + 12582912.f;|    return (int) roundf(fval);\n    float val = fval + 12582912.f;|' "$SRC" > "$TMP/ggml-quants-roundf.c"
grep -q "return (int) roundf(fval);" "$TMP/ggml-quants-roundf.c" || { echo "ERROR: roundf patch not applied" >&2; exit 1; }
build roundf "$TMP/ggml-quants-roundf.c" "${BASE_FLAGS[@]}" "${REF_OPT[@]}" -w
"$TMP/roundf" quantize "$TMP/kquant_cases.bin" "$TMP/r.q4" "$TMP/r.q5" "$TMP/r.q6" 2>/dev/null
ROUNDF_NOTE="$("$HOST_PYTHON" - "$TMP" <<'PYEOF'
import sys
t = sys.argv[1]
parts = []
for q, bs in ((4, 144), (5, 176), (6, 210)):
    a = open(f"{t}/q{q}_k_expected.bin", "rb").read(); b = open(f"{t}/r.q{q}", "rb").read()
    rows = [i for i in range(len(a) // bs) if a[i*bs:(i+1)*bs] != b[i*bs:(i+1)*bs]]
    parts.append(f"Q{q}_K: {len(rows)} rows differ")
print("; ".join(parts))
PYEOF
)"
echo "informational nearest_int -> roundf (half away from zero) build: $ROUNDF_NOTE" >&2

# ---- install + json
for f in kquant_cases.bin q4_k_expected.bin q5_k_expected.bin q6_k_expected.bin; do cp "$TMP/$f" "$OUT/$f"; done
CC_VERSION="$("$CC" --version | head -1)"
SDIST_TGZ_SHA="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SRC_SHA="$(sha256sum "$SRC" | cut -d' ' -f1)"
"$HOST_PYTHON" - "$TMP" "$OUT" "$CC_VERSION" "$SRC_SHA" "$SDIST_TGZ_SHA" "$NATIVE_NOTE" "${BASE_FLAGS[*]} ${REF_OPT[*]}" "$ROUNDF_NOTE" <<'EOF'
import hashlib, json, os, platform, sys
tmp, out, ccv, src_sha, tgz_sha, native_note, flags, roundf_note = sys.argv[1:9]
gen = json.load(open(f"{tmp}/gen.json"))
sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
rows = os.path.getsize(f"{out}/kquant_cases.bin") // 1024
assert rows == gen["rows"]
asserts = {"q4_K": [], "q5_K": [], "q6_K": []}
for line in open(f"{tmp}/asserts.txt"):
    t, r = line.split(); asserts[t].append(int(r))
ties = [list(map(int, l.split()))[1:] for l in open(f"{tmp}/ties.txt")]
cats = []
for c in gen["categories"]:
    rr = range(c["first_row"], c["first_row"] + c["n_rows"])
    c = dict(c)
    c["exact_ties"] = {q: {"total": sum(ties[r][i] for r in rr), "rows_with_ties": sum(1 for r in rr if ties[r][i])}
                       for i, q in enumerate(("q4_K", "q5_K", "q6_K"))}
    cats.append(c)
files = {}
for name, bs in (("kquant_cases.bin", 1024), ("q4_k_expected.bin", 144), ("q5_k_expected.bin", 176), ("q6_k_expected.bin", 210)):
    p = f"{out}/{name}"
    assert os.path.getsize(p) == rows * bs, name
    files[name] = {"bytes": os.path.getsize(p), "bytes_per_row": bs, "sha256": sha(p)}
doc = {
    "about": "k-quant reference: kquant_cases.bin holds rows x 256 f32 (little-endian u32 bit patterns); "
             "qN_k_expected.bin holds, per row in order, the one block written by llama.cpp's C "
             "quantize_row_qN_K_ref(row, &block, 256) (ggml-quants.c), raw bytes as in memory on x86-64 "
             "(f16 fields little-endian = GGUF layout). Q4_K 144 B: d f16, dmin f16, scales[12], qs[128]. "
             "Q5_K 176 B: d, dmin, scales[12], qh[32], qs[128]. Q6_K 210 B: ql[128], qh[64], scales[16] i8, d f16.",
    "rows": rows,
    "block_size": 256,
    "files": files,
    "generator": {
        "inputs": "scripts/kquant_gen_cases.py (numpy default_rng, fixed seed)",
        "seed": gen["seed"], "numpy": gen["numpy"],
        "expected": "scripts/make_kquant_fixtures.sh + scripts/kquant_harness.c",
        "c_source": "llama_cpp_python-0.3.36/vendor/llama.cpp/ggml/src/ggml-quants.c (unmodified)",
        "c_source_sha256": src_sha,
        "sdist_sha256": tgz_sha,
        "ggml_version": "0.25.3",
        "compiler": ccv,
        "cflags": flags + " -I<ggml>/include -I<ggml>/src  (no -m flags; host " + platform.machine() + ")",
        "why_flags": "mirrors CMake's Release build of ggml-base: -O3 -DNDEBUG, gnu11, -fPIC; -march=native and "
                     "-m<isa> flags only go to the ggml-cpu targets, so ggml-base is baseline x86-64 (SSE2, no FMA, "
                     "software f16 conversion). -ffp-contract=off is redundant on baseline x86-64 (no FMA insn); "
                     "object checked free of vfmadd*.",
        "stubs": "ggml_abort (prints, aborts), ggml_row_size / ggml_type_size / ggml_type_name (abort if called); "
                 "no other ggml source linked",
        "cross_checks": "-O0 and -O2 builds: byte-identical outputs (enforced). -march=native -ffp-contract=fast "
                        "build (informational): " + native_note,
    },
    "diagnostics": {
        "rows_tripping_assert_without_NDEBUG": asserts,
        "assert_note": "rows whose quantization hits a failing assert() (e.g. nearest_int's |x| <= 4194303) when "
                       "built without -DNDEBUG; the Release build (used here) has them compiled out, so these rows "
                       "exercise nearest_int on inf/nan/huge arguments (result is its bit-trick value).",
        "exact_ties_note": "exact_ties per category = calls of nearest_int(f) with f - floorf(f) == 0.5, counted by an "
                           "instrumented copy of ggml-quants.c. nearest_int rounds half to EVEN (f + 1.5*2^23 trick), "
                           "not half away from zero. Many such ties are structural: the search steps "
                           "iscale = (nmax - 1 + 0.1*is)/(max-min) and -(nmax + 0.1*is)/max put the extreme element at "
                           "nmax +- 0.5, so nearly every row has some.",
        "tie_sensitivity": "informational: replacing nearest_int by (int)roundf (half away from zero) in a copy "
                           "changes: " + roundf_note,
    },
    "categories": cats,
}
json.dump(doc, open(f"{out}/kquant_cases.json", "w"), indent=1)
open(f"{out}/kquant_cases.json", "a").write("\n")
total = sum(v["bytes"] for v in files.values()) + os.path.getsize(f"{out}/kquant_cases.json")
print(f"rows={rows} total bytes (4 bins + json) = {total}", file=sys.stderr)
EOF

# ---- sanity: dequantize with the sdist's gguf-py and compare to the inputs (not stored anywhere)
if "$PYTHON" -c 'import numpy' 2>/dev/null; then
    PYTHONPATH="$SDIST/vendor/llama.cpp/gguf-py" "$PYTHON" - "$OUT" <<'EOF' || echo "WARNING: gguf-py sanity check failed to run" >&2
import json, sys, numpy as np, gguf
from gguf.quants import dequantize
from gguf.constants import GGMLQuantizationType as T
out = sys.argv[1]
meta = json.load(open(f"{out}/kquant_cases.json"))
x = np.fromfile(f"{out}/kquant_cases.bin", dtype="<f4").reshape(-1, 256)
print("gguf-py from", gguf.__file__, file=sys.stderr)
for name, qt, bs in (("q4_k", T.Q4_K, 144), ("q5_k", T.Q5_K, 176), ("q6_k", T.Q6_K, 210)):
    q = np.fromfile(f"{out}/{name}_expected.bin", dtype=np.uint8).reshape(-1, bs)
    with np.errstate(all="ignore"):
        y = dequantize(q, qt).reshape(-1, 256)
    for c in meta["categories"]:
        if c.get("extreme"):
            continue
        r = slice(c["first_row"], c["first_row"] + c["n_rows"])
        amax = np.max(np.abs(x[r]), axis=1)
        err = np.max(np.abs(y[r] - x[r]), axis=1)
        rel = np.where(amax > 0, err / np.where(amax > 0, amax, 1), 0)
        print(f"  {name} {c['name']:<26} max|err| {err.max():.3e}  max|err|/amax(row) {rel.max():.4f}", file=sys.stderr)
EOF
fi
ls -l "$OUT"/kquant_cases.bin "$OUT"/q?_k_expected.bin "$OUT"/kquant_cases.json >&2
