#!/usr/bin/env bash
# make_kquant_fixtures.sh -- reference Q4_K / Q5_K / Q6_K, legacy Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 and Q2_K / Q3_K
# blocks from llama.cpp's own C quantizers.
#
# Every expected byte comes from quantize_row_q4_K_ref / quantize_row_q5_K_ref / quantize_row_q6_K_ref and
# quantize_row_q4_0_ref / _q4_1_ref / _q5_0_ref / _q5_1_ref / _q8_0_ref and quantize_row_q2_K_ref /
# quantize_row_q3_K_ref in ggml/src/ggml-quants.c of the llama.cpp
# copy vendored in the llama-cpp-python 0.3.36 sdist (ggml 0.25.3), compiled as-is (the file is not modified) and
# driven by scripts/kquant_harness.c. The legacy quantizers get the same rows, each called on the whole 256-value
# row (k = 256 -> 8 blocks of 32). The inputs are made by scripts/kquant_gen_cases.py (numpy, fixed seed) -- they
# are just numbers.
#
# The fixtures in the repository were made from the committed inputs (the generator is not re-run):
#
#     PYTHON=/path/to/venv/bin/python scripts/make_kquant_fixtures.sh /path/to/llama_cpp_python-0.3.36 \
#         --inputs tests/fixtures/gguf/kquant_cases.bin --categories tests/fixtures/gguf/kquant_cases.json
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
#   rounded half away from zero (roundf) (these three concern the k-quants only).
#   Legacy UB scan (`kquant_harness legacy-ub`): the legacy quantizers convert floats to int8_t/uint8_t with plain
#   casts ((int8_t)(x0 + 8.5f), (uint8_t)(x0 + 0.5f), int8_t qs = roundf(x0)); when that float is NaN/inf or its
#   truncation does not fit the type (e.g. id = 1/d = inf for a subnormal d) the conversion is C undefined
#   behaviour (C11 6.3.1.4), so the bytes the release build writes for such rows are whatever the compiled code
#   happens to produce. The harness recomputes every converted float (same flags, same operation order) and tests
#   its range before the cast; rows found are listed in the json (diagnostics.legacy_ub_rows) for tests to skip.
#   Cross-check: a -O0 -fsanitize=float-cast-overflow build of the unmodified ggml-quants.c is run one (type, row)
#   at a time (`kquant_harness ub-probe`); the script fails unless, for every type, the rows UBSan reports are
#   exactly the rows the harness found (none for the k-quants).
#   Q2_K / Q3_K UB scan (`kquant_harness kquant-ub`): these have no float->int casts (nearest_int is a bit trick),
#   but quantize_row_q2_K_ref does `y[i].scales[j] |= (l << 4)` with int l = nearest_int(15/max_min * mins[j]),
#   and a left shift of a negative int is undefined (C11 6.5.7p4); l < 0 when 15/max_min overflows to inf
#   (subnormal max_min; nearest_int(inf) = -2^22). Q3_K's `int8_t l = nearest_int(...)` of an out-of-range int is
#   only implementation-defined (GCC: modulo 2^8) and is reported, not treated as UB. Rows found are listed in the
#   json (diagnostics.kquant_ub_rows). Cross-check: a -O0 -fsanitize=shift,signed-integer-overflow,
#   float-cast-overflow build, run one (type, row) at a time; the script fails unless its Q2_K / Q3_K rows are
#   exactly the rows the scan found (its reports for the other types are recorded, informational).
#   The script also builds -O0 and -O2 variants and fails if their output differs in any byte (legacy types and
#   Q2_K / Q3_K: in any row without UB; differing UB rows are only reported), and reports (informational only) whether a
#   -march=native -ffp-contract=fast build would differ.
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
#   q4_0_expected.bin     rows x 8 x 18 = 144 bytes (block_q4_0: f16 d, qs[16])
#   q4_1_expected.bin     rows x 8 x 20 = 160 bytes (block_q4_1: f16 d, f16 m, qs[16])
#   q5_0_expected.bin     rows x 8 x 22 = 176 bytes (block_q5_0: f16 d, qh[4] (u32 LE), qs[16])
#   q5_1_expected.bin     rows x 8 x 24 = 192 bytes (block_q5_1: f16 d, f16 m, qh[4] (u32 LE), qs[16])
#   q8_0_c_expected.bin   rows x 8 x 34 = 272 bytes (block_q8_0: f16 d, qs[32] i8); "_c" = from the C function,
#                         unlike q8_0_expected.bin (gguf-py, made by another script, not touched here)
#   q2_k_expected.bin     rows x 84 bytes (block_q2_K: scales[16] (low nibble scale, high nibble min), qs[64],
#                         f16 d, f16 dmin)
#   q3_k_expected.bin     rows x 110 bytes (block_q3_K: hmask[32], qs[64], scales[12] (6-bit packed), f16 d)
#   kquant_cases.json     categories + row ranges, generator, compiler version/flags, sha256s, and diagnostics:
#                         rows that trip assert() in a non-NDEBUG build, per-category counts of exact .5 ties seen
#                         by nearest_int (from a separately built, instrumented copy -- diagnostic only), and the
#                         rows whose legacy quantization hits undefined float->int conversions, and the rows whose
#                         Q2_K / Q3_K quantization hits undefined behaviour (kquant_ub_rows).
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
        -h|--help) sed -n '2,104p' "$0"; exit 0 ;;
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
"$TMP/ref" quantize "$TMP/kquant_cases.bin" "$TMP/q4_k_expected.bin" "$TMP/q5_k_expected.bin" "$TMP/q6_k_expected.bin" \
    "$TMP/q4_0_expected.bin" "$TMP/q4_1_expected.bin" "$TMP/q5_0_expected.bin" "$TMP/q5_1_expected.bin" \
    "$TMP/q8_0_c_expected.bin" "$TMP/q2_k_expected.bin" "$TMP/q3_k_expected.bin"
# legacy UB scan (recomputes the converted floats; does not look at the bytes)
"$TMP/ref" legacy-ub "$TMP/kquant_cases.bin" > "$TMP/legacy_ub.txt"
# Q2_K / Q3_K UB scan (negative left shift in q2_K; q3_K's implementation-defined int8_t conversions, field 4)
"$TMP/ref" kquant-ub "$TMP/kquant_cases.bin" > "$TMP/kquant_ub_all.txt"
awk '$3 > 0' "$TMP/kquant_ub_all.txt" > "$TMP/kquant_ub.txt"

# compare_outputs PREFIX: one line "TYPE n_rows_differing_without_UB n_rows_differing_with_UB rows..." per type,
# comparing $TMP/PREFIX.<name> with the reference output (UB = the legacy-ub / kquant-ub rows of that type; none
# for Q4_K..Q6_K)
compare_outputs() {
    "$HOST_PYTHON" - "$TMP" "$1" <<'EOF'
import sys
t, pre = sys.argv[1:3]
ub = {}
for line in list(open(f"{t}/legacy_ub.txt")) + list(open(f"{t}/kquant_ub.txt")):
    f = line.split(); ub.setdefault(f[0], set()).add(int(f[1]))
for name, ref, bs, ubkey in (("Q4_K", "q4_k", 144, None), ("Q5_K", "q5_k", 176, None), ("Q6_K", "q6_k", 210, None),
                             ("Q4_0", "q4_0", 144, "q4_0"), ("Q4_1", "q4_1", 160, "q4_1"), ("Q5_0", "q5_0", 176, "q5_0"),
                             ("Q5_1", "q5_1", 192, "q5_1"), ("Q8_0", "q8_0_c", 272, "q8_0"),
                             ("Q2_K", "q2_k", 84, "q2_K"), ("Q3_K", "q3_k", 110, "q3_K")):
    a = open(f"{t}/{ref}_expected.bin", "rb").read(); b = open(f"{t}/{pre}.{ref}", "rb").read()
    assert len(a) == len(b), name
    rows = [i for i in range(len(a) // bs) if a[i*bs:(i+1)*bs] != b[i*bs:(i+1)*bs]]
    u = ub.get(ubkey, set())
    print(name, sum(r not in u for r in rows), sum(r in u for r in rows), ",".join(map(str, rows)))
EOF
}
variant_quantize() {  # variant_quantize EXE PREFIX
    "$1" quantize "$TMP/kquant_cases.bin" "$TMP/$2.q4_k" "$TMP/$2.q5_k" "$TMP/$2.q6_k" \
        "$TMP/$2.q4_0" "$TMP/$2.q4_1" "$TMP/$2.q5_0" "$TMP/$2.q5_1" "$TMP/$2.q8_0_c" "$TMP/$2.q2_k" "$TMP/$2.q3_k" \
        2>/dev/null
}

# ---- cross-checks: optimisation level must not matter (legacy / Q2_K / Q3_K UB rows excepted: reported, not enforced)
UB_OPT_NOTE=""
for opt in O0 O2; do
    build "x$opt" "$SRC" "${BASE_FLAGS[@]}" "-$opt" -DNDEBUG
    variant_quantize "$TMP/x$opt" "$opt"
    compare_outputs "$opt" > "$TMP/cmp.$opt.txt"
    while read -r name n_ok n_ub rows; do
        [ "$n_ok" = 0 ] || { echo "ERROR: -$opt build differs for $name in rows without UB: $rows" >&2; exit 1; }
        [ "$n_ub" = 0 ] || UB_OPT_NOTE="$UB_OPT_NOTE -$opt $name UB rows $rows differ;"
    done < "$TMP/cmp.$opt.txt"
    echo "cross-check -$opt: identical outside legacy / Q2_K / Q3_K UB rows" >&2
done
UB_OPT_NOTE="${UB_OPT_NOTE:- legacy UB rows identical too}"
echo "legacy / Q2_K / Q3_K UB rows at -O0/-O2:$UB_OPT_NOTE" >&2
NATIVE_NOTE="not run"
if build native "$SRC" -std=gnu11 -fPIC -O3 -DNDEBUG -march=native -ffp-contract=fast 2>/dev/null; then
    variant_quantize "$TMP/native" n
    NATIVE_NOTE="$(compare_outputs n | while read -r name n_ok n_ub rows; do
        if [ "$n_ub" = 0 ]; then printf '%s: %s rows differ; ' "$name" "$n_ok"
        else printf '%s: %s rows differ (+ %s legacy UB rows); ' "$name" "$n_ok" "$n_ub"; fi
    done)"
    NATIVE_NOTE="${NATIVE_NOTE%; }"
fi
echo "informational -march=native -ffp-contract=fast build: $NATIVE_NOTE" >&2

# ---- cross-check of the legacy UB scan: a -fsanitize=float-cast-overflow build of the unmodified ggml-quants.c,
# run one (type, row) at a time; for every type the rows it reports must be exactly the legacy-ub rows of that type
# (none for the k-quants, Q2_K / Q3_K included) (enforced if it builds)
UBSAN_NOTE="not run (no -fsanitize=float-cast-overflow build)"
UBSAN_FLAGS=("${BASE_FLAGS[@]}" -O0 -DNDEBUG -fsanitize=float-cast-overflow "${INC[@]}")
if "$CC" "${UBSAN_FLAGS[@]}" -c "$SRC" -o "$TMP/ubsan.q.o" 2>/dev/null \
   && "$CC" "${UBSAN_FLAGS[@]}" -c "$here/kquant_harness.c" -o "$TMP/ubsan.h.o" 2>/dev/null \
   && "$CC" -fsanitize=float-cast-overflow "$TMP/ubsan.h.o" "$TMP/ubsan.q.o" -lm -o "$TMP/ubsan" 2>/dev/null; then
    "$TMP/ubsan" ub-probe "$TMP/kquant_cases.bin" > "$TMP/ubsan_probe.txt"
    UBSAN_NOTE="$("$HOST_PYTHON" - "$TMP" <<'EOF'
import sys
t = sys.argv[1]
legacy = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")
want, got, lines = {}, {}, set()
for l in open(f"{t}/legacy_ub.txt"):
    f = l.split(); want.setdefault(f[0], set()).add(int(f[1]))
for l in open(f"{t}/ubsan_probe.txt"):
    f = l.split(maxsplit=2); got.setdefault(f[0], set()).add(int(f[1]))
    if f[0] in legacy and "ggml-quants.c:" in f[2]:
        lines.add(f[2].split("ggml-quants.c:")[1].split(":")[0])
hits = sorted(set().union(*[got.get(k, set()) for k in legacy]))
expect = sorted({r for k in legacy for r in want.get(k, set())})
bad = [k for k in set(want) | set(got) if want.get(k, set()) != got.get(k, set())]
if bad:
    print("MISMATCH: " + "; ".join(f"{k}: UBSan rows {sorted(got.get(k, set()))} vs legacy-ub rows "
                                   f"{sorted(want.get(k, set()))}" for k in sorted(bad)))
else:
    print(f"UBSan float-cast-overflow reports rows {hits} (ggml-quants.c lines {','.join(sorted(lines, key=int))}) "
          "= the legacy-ub rows; no k-quant row reported")
EOF
)"
    case "$UBSAN_NOTE" in MISMATCH*) echo "ERROR: $UBSAN_NOTE" >&2; exit 1 ;; esac
fi
echo "legacy UB cross-check: $UBSAN_NOTE" >&2

# ---- cross-check of the Q2_K / Q3_K UB scan: -fsanitize=shift,signed-integer-overflow,float-cast-overflow build,
# run one (type, row) at a time; its Q2_K / Q3_K rows must be exactly the kquant-ub rows (enforced if it builds);
# what it reports for the other types is recorded (informational)
KUBSAN_NOTE="not run (no -fsanitize=shift,signed-integer-overflow,float-cast-overflow build)"
KUBSAN_SAN=-fsanitize=shift,signed-integer-overflow,float-cast-overflow
KUBSAN_FLAGS=("${BASE_FLAGS[@]}" -O0 -DNDEBUG "$KUBSAN_SAN" "${INC[@]}")
if "$CC" "${KUBSAN_FLAGS[@]}" -c "$SRC" -o "$TMP/kubsan.q.o" 2>/dev/null \
   && "$CC" "${KUBSAN_FLAGS[@]}" -c "$here/kquant_harness.c" -o "$TMP/kubsan.h.o" 2>/dev/null \
   && "$CC" "$KUBSAN_SAN" "$TMP/kubsan.h.o" "$TMP/kubsan.q.o" -lm -o "$TMP/kubsan" 2>/dev/null; then
    "$TMP/kubsan" ub-probe "$TMP/kquant_cases.bin" > "$TMP/kubsan_probe.txt"
    KUBSAN_NOTE="$("$HOST_PYTHON" - "$TMP" <<'EOF'
import sys
t = sys.argv[1]
want, got, lines, kinds = {}, {}, {}, {}
for l in open(f"{t}/kquant_ub.txt"):
    f = l.split(); want.setdefault(f[0], set()).add(int(f[1]))
for l in open(f"{t}/kubsan_probe.txt"):
    f = l.split(maxsplit=2); got.setdefault(f[0], set()).add(int(f[1]))
    if "ggml-quants.c:" in f[2]:
        lines.setdefault(f[0], set()).add(f[2].split("ggml-quants.c:")[1].split(":")[0])
    if "runtime error: " in f[2]:
        kinds.setdefault(f[0], set()).add(" ".join(f[2].split("runtime error: ")[1].split()[:4]))
bad = [k for k in ("q2_K", "q3_K") if want.get(k, set()) != got.get(k, set())]
if bad:
    print("MISMATCH: " + "; ".join(f"{k}: UBSan rows {sorted(got.get(k, set()))} vs kquant-ub rows "
                                   f"{sorted(want.get(k, set()))}" for k in bad))
else:
    desc = lambda k: (f"rows {sorted(got[k])} (ggml-quants.c lines {','.join(sorted(lines.get(k, ()), key=int))}: "
                      f"{'; '.join(sorted(kinds.get(k, ())))} ...)" if got.get(k) else "no row")
    others = [k for k in sorted(got) if k not in ("q2_K", "q3_K")]
    print(f"UBSan shift,signed-integer-overflow,float-cast-overflow reports for q2_K {desc('q2_K')}, for q3_K "
          f"{desc('q3_K')} = the kquant-ub rows; other types (informational): "
          + ("; ".join(f"{k} {desc(k)}" for k in others) if others else "none"))
EOF
)"
    case "$KUBSAN_NOTE" in MISMATCH*) echo "ERROR: $KUBSAN_NOTE" >&2; exit 1 ;; esac
fi
echo "Q2_K / Q3_K UB cross-check: $KUBSAN_NOTE" >&2

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
for f in kquant_cases.bin q4_k_expected.bin q5_k_expected.bin q6_k_expected.bin \
         q4_0_expected.bin q4_1_expected.bin q5_0_expected.bin q5_1_expected.bin q8_0_c_expected.bin \
         q2_k_expected.bin q3_k_expected.bin; do
    cp "$TMP/$f" "$OUT/$f"
done
CC_VERSION="$("$CC" --version | head -1)"
SDIST_TGZ_SHA="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SRC_SHA="$(sha256sum "$SRC" | cut -d' ' -f1)"
"$HOST_PYTHON" - "$TMP" "$OUT" "$CC_VERSION" "$SRC_SHA" "$SDIST_TGZ_SHA" "$NATIVE_NOTE" "${BASE_FLAGS[*]} ${REF_OPT[*]}" "$ROUNDF_NOTE" \
    "$UB_OPT_NOTE" "$UBSAN_NOTE" "$KUBSAN_NOTE" <<'EOF'
import hashlib, json, os, platform, sys
tmp, out, ccv, src_sha, tgz_sha, native_note, flags, roundf_note, ub_opt_note, ubsan_note, kubsan_note = sys.argv[1:12]
gen = json.load(open(f"{tmp}/gen.json"))
sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
rows = os.path.getsize(f"{out}/kquant_cases.bin") // 1024
assert rows == gen["rows"]
asserts = {"q4_K": [], "q5_K": [], "q6_K": [], "q2_K": [], "q3_K": []}
for line in open(f"{tmp}/asserts.txt"):
    t, r = line.split(); asserts[t].append(int(r))
ties = [list(map(int, l.split()))[1:] for l in open(f"{tmp}/ties.txt")]
legacy_ub = {"q4_0": [], "q4_1": [], "q5_0": [], "q5_1": [], "q8_0": []}
legacy_ub_detail = []
for line in open(f"{tmp}/legacy_ub.txt"):
    f = line.split()
    t, r, n_ub, n_nan, n_inf, n_fin = f[0], int(f[1]), int(f[2]), int(f[3]), int(f[4]), int(f[5])
    legacy_ub[t].append(r)
    legacy_ub_detail.append({"type": t, "row": r, "ub_conversions": n_ub, "nan": n_nan, "inf": n_inf,
                             "finite_out_of_range": n_fin, "blocks_mask": f[6].split("=")[1],
                             "first": " ".join(f[8:])})
kquant_ub = {"q2_K": [], "q3_K": []}
kquant_impl = {"q2_K": [], "q3_K": []}
kquant_ub_detail = []
for line in open(f"{tmp}/kquant_ub_all.txt"):
    f = line.split()
    t, r, n_ub, n_impl = f[0], int(f[1]), int(f[2]), int(f[3])
    (kquant_ub if n_ub else kquant_impl)[t].append(r)
    if n_ub:
        kquant_ub_detail.append({"type": t, "row": r, "ub_ops": n_ub, "impl_defined_conversions": n_impl,
                                 "subblocks_mask": f[4].split("=")[1], "first": " ".join(f[6:])})
cats = []
for c in gen["categories"]:
    rr = range(c["first_row"], c["first_row"] + c["n_rows"])
    c = dict(c)
    c["exact_ties"] = {q: {"total": sum(ties[r][i] for r in rr), "rows_with_ties": sum(1 for r in rr if ties[r][i])}
                       for i, q in enumerate(("q4_K", "q5_K", "q6_K"))}
    cats.append(c)
files = {}
for name, bs in (("kquant_cases.bin", 1024), ("q4_k_expected.bin", 144), ("q5_k_expected.bin", 176), ("q6_k_expected.bin", 210),
                 ("q4_0_expected.bin", 144), ("q4_1_expected.bin", 160), ("q5_0_expected.bin", 176),
                 ("q5_1_expected.bin", 192), ("q8_0_c_expected.bin", 272), ("q2_k_expected.bin", 84),
                 ("q3_k_expected.bin", 110)):
    p = f"{out}/{name}"
    assert os.path.getsize(p) == rows * bs, name
    files[name] = {"bytes": os.path.getsize(p), "bytes_per_row": bs, "sha256": sha(p)}
doc = {
    "about": "k-quant reference: kquant_cases.bin holds rows x 256 f32 (little-endian u32 bit patterns); "
             "qN_k_expected.bin holds, per row in order, the one block written by llama.cpp's C "
             "quantize_row_qN_K_ref(row, &block, 256) (ggml-quants.c), raw bytes as in memory on x86-64 "
             "(f16 fields little-endian = GGUF layout). Q4_K 144 B: d f16, dmin f16, scales[12], qs[128]. "
             "Q5_K 176 B: d, dmin, scales[12], qh[32], qs[128]. Q6_K 210 B: ql[128], qh[64], scales[16] i8, d f16. "
             "Legacy: q4_0/q4_1/q5_0/q5_1_expected.bin and q8_0_c_expected.bin hold, per row in order, the 8 blocks "
             "(32 values each) written by quantize_row_{q4_0,q4_1,q5_0,q5_1,q8_0}_ref(row, blocks, 256), raw bytes: "
             "Q4_0 18 B: d f16, qs[16]; Q4_1 20 B: d, m, qs[16]; Q5_0 22 B: d, qh[4] (u32 LE), qs[16]; "
             "Q5_1 24 B: d, m, qh[4], qs[16]; Q8_0 34 B: d, qs[32] i8 -> 144/160/176/192/272 B per row. "
             "(q8_0_c = from the C function; q8_0_expected.bin with q8_0_cases.bin is a separate gguf-py fixture.) "
             "Skip diagnostics.legacy_ub_rows[type] when comparing legacy blocks. "
             "q2_k_expected.bin / q3_k_expected.bin hold, per row, the one block of quantize_row_q2_K_ref / "
             "quantize_row_q3_K_ref(row, &block, 256): Q2_K 84 B: scales[16] (low nibble scale, high nibble min), "
             "qs[64], d f16, dmin f16; Q3_K 110 B: hmask[32], qs[64], scales[12] (6-bit packed), d f16. "
             "Skip diagnostics.kquant_ub_rows[type] when comparing them.",
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
        "cross_checks": "-O0 and -O2 builds: byte-identical outputs (enforced; for the legacy types outside "
                        "diagnostics.legacy_ub_rows, for Q2_K / Q3_K outside diagnostics.kquant_ub_rows;"
                        + ub_opt_note + "). -march=native -ffp-contract=fast "
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
        "legacy_ub_rows": legacy_ub,
        "legacy_ub_note": "rows where the legacy quantizer converts a float to an integer with undefined behaviour "
                          "(C11 6.3.1.4: NaN, inf, or a finite value whose truncation does not fit): q4_0 "
                          "(int8_t)(x*id + 8.5f), q4_1 (int8_t)((x-min)*id + 0.5f), q5_0 (int8_t)(x*id + 16.5f), "
                          "q5_1 (uint8_t)((x-min)*id + 0.5f), q8_0 int8_t qs = roundf(x*id). Found by "
                          "`kquant_harness legacy-ub`, which recomputes each converted float with the same flags "
                          "and operation order and range-checks it before the cast (int8_t: (-129, 128), uint8_t: "
                          "(-1, 256)). The expected files still hold the bytes the release build wrote for these rows, "
                          "but they are compiler artefacts: tests must skip them. The k-quants have no such casts "
                          "(they go through nearest_int; see rows_tripping_assert_without_NDEBUG). Cross-check (enforced when the "
                          "sanitizer builds): " + ubsan_note + ".",
        "legacy_ub_detail": legacy_ub_detail,
        "kquant_ub_rows": kquant_ub,
        "kquant_ub_note": "rows where quantize_row_q2_K_ref / quantize_row_q3_K_ref execute undefined behaviour. "
                          "Neither casts a float to an integer (roundings go through nearest_int's bit trick, "
                          "defined for any float once its assert() is compiled out). Q2_K: `y[i].scales[j] |= "
                          "(l << 4)` with int l = nearest_int((15.f/max_min)*mins[j]); a left shift of a negative "
                          "int is undefined (C11 6.5.7p4). It happens when 15.f/max_min overflows to +inf (max_min "
                          "subnormal; nearest_int(+inf) = -4194304). Q3_K: no UB operation; its `int8_t l = "
                          "nearest_int(...)` of an int outside [-128, 127] is implementation-defined (C11 6.3.1.3p3; "
                          "GCC: modulo 2^8, as Rust's `as i8`), listed in kquant_impl_defined_rows, not skipped. "
                          "Found by `kquant_harness kquant-ub`, which mirrors make_qkx2_quants / make_q3_quants and "
                          "the scale code statement by statement (same flags) and checks the operands. Tests must "
                          "skip the kquant_ub_rows rows (bytes are compiler artefacts). Cross-check (enforced when "
                          "the sanitizer builds): " + kubsan_note + ".",
        "kquant_impl_defined_rows": kquant_impl,
        "kquant_ub_detail": kquant_ub_detail,
    },
    "categories": cats,
}
json.dump(doc, open(f"{out}/kquant_cases.json", "w"), indent=1)
open(f"{out}/kquant_cases.json", "a").write("\n")
total = sum(v["bytes"] for v in files.values()) + os.path.getsize(f"{out}/kquant_cases.json")
print(f"rows={rows} total bytes ({len(files)} bins + json) = {total}; legacy UB rows: {legacy_ub}; "
      f"Q2_K/Q3_K UB rows: {kquant_ub}; Q2_K/Q3_K implementation-defined-only rows: {kquant_impl}", file=sys.stderr)
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
ub = dict(meta["diagnostics"]["legacy_ub_rows"], **meta["diagnostics"]["kquant_ub_rows"])
for name, qt, bs, ubkey in (("q4_k", T.Q4_K, 144, None), ("q5_k", T.Q5_K, 176, None), ("q6_k", T.Q6_K, 210, None),
                            ("q4_0", T.Q4_0, 18, "q4_0"), ("q4_1", T.Q4_1, 20, "q4_1"), ("q5_0", T.Q5_0, 22, "q5_0"),
                            ("q5_1", T.Q5_1, 24, "q5_1"), ("q8_0_c", T.Q8_0, 34, "q8_0"),
                            ("q2_k", T.Q2_K, 84, "q2_K"), ("q3_k", T.Q3_K, 110, "q3_K")):
    q = np.fromfile(f"{out}/{name}_expected.bin", dtype=np.uint8).reshape(-1, bs)
    with np.errstate(all="ignore"):
        y = dequantize(q, qt).reshape(-1, 256)
    for c in meta["categories"]:
        if c.get("extreme"):
            continue
        r = [i for i in range(c["first_row"], c["first_row"] + c["n_rows"]) if i not in ub.get(ubkey, [])]
        if not r:
            continue
        amax = np.max(np.abs(x[r]), axis=1)
        err = np.max(np.abs(y[r] - x[r]), axis=1)
        rel = np.where(amax > 0, err / np.where(amax > 0, amax, 1), 0)
        print(f"  {name} {c['name']:<26} max|err| {err.max():.3e}  max|err|/amax(row) {rel.max():.4f}", file=sys.stderr)
EOF
fi
ls -l "$OUT"/kquant_cases.bin "$OUT"/q?_k_expected.bin "$OUT"/q[45]_[01]_expected.bin "$OUT"/q8_0_c_expected.bin "$OUT"/kquant_cases.json >&2
