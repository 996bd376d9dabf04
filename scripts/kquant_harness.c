// kquant_harness.c -- drive llama.cpp's reference quantizers from ggml/src/ggml-quants.c of the llama-cpp-python
// 0.3.36 sdist over rows of 256 f32 and dump the raw blocks: the k-quants quantize_row_q{4,5,6}_K_ref and the
// legacy 32-value-block quantizers quantize_row_q4_0_ref / q4_1 / q5_0 / q5_1 / q8_0_ref.
//
// Built and run by scripts/make_kquant_fixtures.sh; see that script for the sdist, the compiler flags and why.
//
// Usage:
//   kquant_harness quantize IN.bin OUT_Q4K.bin OUT_Q5K.bin OUT_Q6K.bin [OUT_Q4_0 OUT_Q4_1 OUT_Q5_0 OUT_Q5_1 OUT_Q8_0]
//       IN.bin: rows x 256 f32 (little-endian IEEE-754 bit patterns). For every row r (in order) it calls
//       quantize_row_qX_K_ref(row_r, &block, 256) and appends the block bytes exactly as laid out in memory
//       (block_q4_K = 144 bytes, block_q5_K = 176, block_q6_K = 210; x86-64 is little-endian so the f16 d/dmin
//       fields come out little-endian, which is the GGUF on-disk layout).
//       With the five optional outputs it also calls, for every row, quantize_row_{q4_0,q4_1,q5_0,q5_1,q8_0}_ref
//       (row_r, blocks, 256) on the whole 256-value row (8 blocks of 32 values) and appends the 8 blocks:
//       block_q4_0 = 18 bytes (f16 d, qs[16]), block_q4_1 = 20 (d, m, qs[16]), block_q5_0 = 22 (d, qh[4],
//       qs[16]), block_q5_1 = 24 (d, m, qh[4], qs[16]), block_q8_0 = 34 (d, qs[32] i8) -> 144/160/176/192/272
//       bytes per row. The k-quant outputs are the same bytes with or without the optional outputs.
//   kquant_harness legacy-ub IN.bin
//       For every row and legacy type, recompute (in this file, same flags, same operation order as ggml-quants.c)
//       the float that each _ref function converts to an integer -- q4_0: x*id + 8.5f -> int8_t, q4_1:
//       (x-min)*id + 0.5f -> int8_t, q5_0: x*id + 16.5f -> int8_t, q5_1: (x-min)*id + 0.5f -> uint8_t, q8_0:
//       roundf(x*id) -> int8_t -- and test it BEFORE the cast. C11 6.3.1.4p1: converting a float whose truncated
//       value does not fit the integer type (or a NaN / inf) is undefined behaviour; int8_t needs v in (-129, 128),
//       uint8_t v in (-1, 256). Prints one line per (type, row) with at least one such conversion:
//       "TYPE ROW n_ub n_nan n_inf n_finite blocks=<8-bit mask> first: blk=B j=J x=.. d=.. id=.. v=..".
//       Diagnostic for the expected bytes (the release build still produces SOME bytes for those rows, but a
//       port cannot be required to match them).
//   kquant_harness probe-asserts IN.bin
//       For each row and type, fork a child that quantizes only that row; print "TYPE ROW" for every child that
//       died (used with a build WITHOUT -DNDEBUG, to list rows that trip ggml-quants.c's assert()s, e.g. the
//       `assert(fabsf(fval) <= 4194303.f)` in nearest_int; the release build that makes the fixtures has
//       -DNDEBUG, like CMake's Release config, so those asserts are compiled out there). k-quants only.
//   kquant_harness count-ties IN.bin
//       Only in a build with -DKQ_COUNT_TIES against a copy of ggml-quants.c whose nearest_int() was patched by
//       the script to bump kq_tie_count on exact .5 arguments; prints "ROW q4 q5 q6" tie counts per row.
//       Diagnostic only: never used to produce expected outputs. k-quants only.
//
// Stubs: ggml-quants.c references four symbols from the rest of ggml-base (ggml.c) that the _ref quantizers
// never reach: ggml_abort (GGML_ASSERT/GGML_ABORT), ggml_row_size, ggml_type_size, ggml_type_name (used by the
// imatrix quantize_* wrappers and ggml_validate_row_data). They are defined below; ggml_abort prints and aborts,
// the other three abort if ever called. Nothing else of ggml is linked (no ggml.c, no ggml-cpu).

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>

#define GGML_COMMON_DECL_C
#include "ggml-common.h"
#include "ggml-quants.h"
#include "ggml.h"

_Static_assert(QK_K == 256, "QK_K must be 256");
_Static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");
_Static_assert(sizeof(block_q5_K) == 176, "block_q5_K size");
_Static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");
_Static_assert(QK4_0 == 32 && QK4_1 == 32 && QK5_0 == 32 && QK5_1 == 32 && QK8_0 == 32, "legacy block length");
_Static_assert(sizeof(block_q4_0) == 18, "block_q4_0 size");
_Static_assert(sizeof(block_q4_1) == 20, "block_q4_1 size");
_Static_assert(sizeof(block_q5_0) == 22, "block_q5_0 size");
_Static_assert(sizeof(block_q5_1) == 24, "block_q5_1 size");
_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0 size");
#define N_LEGACY_BLOCKS (QK_K / 32)

// ---------------------------------------------------------------- stubs for the rest of ggml-base
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    fprintf(stderr, "ggml_abort %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

static void stub_called(const char * name) {
    fprintf(stderr, "kquant_harness: stub %s() called -- not expected from the _ref quantizers\n", name);
    abort();
}
size_t ggml_row_size(enum ggml_type type, int64_t ne) { (void) type; (void) ne; stub_called("ggml_row_size"); return 0; }
size_t ggml_type_size(enum ggml_type type) { (void) type; stub_called("ggml_type_size"); return 0; }
const char * ggml_type_name(enum ggml_type type) { (void) type; stub_called("ggml_type_name"); return NULL; }

#ifdef KQ_COUNT_TIES
unsigned long kq_tie_count = 0;
#endif

// ---------------------------------------------------------------- io
static float * read_rows(const char * path, size_t * n_rows) {
    FILE * f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (sz <= 0 || sz % (QK_K * 4) != 0) {
        fprintf(stderr, "%s: size %ld is not a positive multiple of %d\n", path, sz, QK_K * 4);
        exit(2);
    }
    *n_rows = (size_t) sz / (QK_K * 4);
    uint8_t * raw = malloc((size_t) sz);
    float * x = malloc((size_t) sz);
    if (fread(raw, 1, (size_t) sz, f) != (size_t) sz) { perror("fread"); exit(2); }
    fclose(f);
    for (size_t i = 0; i < (size_t) sz / 4; ++i) {   // explicit little-endian decode
        uint32_t u = (uint32_t) raw[4*i] | ((uint32_t) raw[4*i+1] << 8) | ((uint32_t) raw[4*i+2] << 16) |
                     ((uint32_t) raw[4*i+3] << 24);
        memcpy(&x[i], &u, 4);
    }
    free(raw);
    return x;
}

static FILE * open_out(const char * path) {
    FILE * f = fopen(path, "wb");
    if (!f) { perror(path); exit(2); }
    return f;
}

static void quant_one(int type, const float * row, uint8_t * out, size_t * nbytes) {
    switch (type) {
        case 4: { block_q4_K b; memset(&b, 0, sizeof b); quantize_row_q4_K_ref(row, &b, QK_K); memcpy(out, &b, sizeof b); *nbytes = sizeof b; } break;
        case 5: { block_q5_K b; memset(&b, 0, sizeof b); quantize_row_q5_K_ref(row, &b, QK_K); memcpy(out, &b, sizeof b); *nbytes = sizeof b; } break;
        case 6: { block_q6_K b; memset(&b, 0, sizeof b); quantize_row_q6_K_ref(row, &b, QK_K); memcpy(out, &b, sizeof b); *nbytes = sizeof b; } break;
        default: abort();
    }
}

// ---------------------------------------------------------------- legacy 32-value-block quantizers
static const char * const legacy_names[5] = { "q4_0", "q4_1", "q5_0", "q5_1", "q8_0" };

// legacy type index 0..4 (order of legacy_names); the whole 256-value row -> 8 blocks
static void quant_legacy(int lt, const float * row, uint8_t * out, size_t * nbytes) {
    switch (lt) {
        case 0: { block_q4_0 b[N_LEGACY_BLOCKS]; memset(b, 0, sizeof b); quantize_row_q4_0_ref(row, b, QK_K); memcpy(out, b, sizeof b); *nbytes = sizeof b; } break;
        case 1: { block_q4_1 b[N_LEGACY_BLOCKS]; memset(b, 0, sizeof b); quantize_row_q4_1_ref(row, b, QK_K); memcpy(out, b, sizeof b); *nbytes = sizeof b; } break;
        case 2: { block_q5_0 b[N_LEGACY_BLOCKS]; memset(b, 0, sizeof b); quantize_row_q5_0_ref(row, b, QK_K); memcpy(out, b, sizeof b); *nbytes = sizeof b; } break;
        case 3: { block_q5_1 b[N_LEGACY_BLOCKS]; memset(b, 0, sizeof b); quantize_row_q5_1_ref(row, b, QK_K); memcpy(out, b, sizeof b); *nbytes = sizeof b; } break;
        case 4: { block_q8_0 b[N_LEGACY_BLOCKS]; memset(b, 0, sizeof b); quantize_row_q8_0_ref(row, b, QK_K); memcpy(out, b, sizeof b); *nbytes = sizeof b; } break;
        default: abort();
    }
}

// UB scan: mirrors the float arithmetic of quantize_row_*_ref in ggml-quants.c (0.25.3) statement by statement
// (same types, same order; this file is compiled with the same flags, no FMA) and checks the value that the
// reference converts to int8_t / uint8_t. Returns the number of undefined conversions in the row.
typedef struct { int n_ub, n_nan, n_inf, n_fin; unsigned mask; int blk, j; float x, d, id, v; } ub_info;

static void ub_note(ub_info * u, int blk, int j, float x, float d, float id, float v) {
    if (u->n_ub == 0) { u->blk = blk; u->j = j; u->x = x; u->d = d; u->id = id; u->v = v; }
    ++u->n_ub;
    if (isnan(v)) ++u->n_nan; else if (isinf(v)) ++u->n_inf; else ++u->n_fin;
    u->mask |= 1u << blk;
}
// int8_t: trunc(v) in [-128, 127] <=> v in (-129, 128); uint8_t: trunc(v) in [0, 255] <=> v in (-1, 256).
// NaN fails both comparisons.
static int fits_i8(float v) { return v > -129.0f && v < 128.0f; }
static int fits_u8(float v) { return v > -1.0f && v < 256.0f; }

static ub_info legacy_ub(int lt, const float * row) {
    ub_info u; memset(&u, 0, sizeof u);
    for (int i = 0; i < N_LEGACY_BLOCKS; ++i) {
        const float * x = row + i * 32;
        if (lt == 0 || lt == 2) {   // q4_0 / q5_0: d = max / -8 (-16), x0 = x*id, (int8_t)(x0 + 8.5f) (16.5f)
            float amax = 0.0f, max = 0.0f;
            for (int j = 0; j < 32; j++) { const float v = x[j]; if (amax < fabsf(v)) { amax = fabsf(v); max = v; } }
            const float d  = lt == 0 ? max / -8 : max / -16;
            const float id = d ? 1.0f/d : 0.0f;
            for (int j = 0; j < 32; ++j) {
                const float x0 = x[j]*id;
                const float v  = lt == 0 ? x0 + 8.5f : x0 + 16.5f;
                if (!fits_i8(v)) ub_note(&u, i, j, x[j], d, id, v);
            }
        } else if (lt == 1 || lt == 3) {   // q4_1 / q5_1: d = (max-min)/15 (31), x0 = (x-min)*id, cast of x0 + 0.5f
            float min = FLT_MAX, max = -FLT_MAX;
            for (int j = 0; j < 32; j++) { const float v = x[j]; if (v < min) min = v; if (v > max) max = v; }
            const float d  = lt == 1 ? (max - min) / ((1 << 4) - 1) : (max - min) / ((1 << 5) - 1);
            const float id = d ? 1.0f/d : 0.0f;
            for (int j = 0; j < 32; ++j) {
                const float x0 = (x[j] - min)*id;
                const float v  = x0 + 0.5f;
                if (lt == 1 ? !fits_i8(v) : !fits_u8(v)) ub_note(&u, i, j, x[j], d, id, v);   // q4_1 int8_t, q5_1 uint8_t
            }
        } else {   // q8_0: d = amax/127, qs[j] (int8_t) = roundf(x*id)
            float amax = 0.0f;
            for (int j = 0; j < 32; j++) { const float v = x[j]; amax = ((amax) > (fabsf(v)) ? (amax) : (fabsf(v))); }
            const float d  = amax / ((1 << 7) - 1);
            const float id = d ? 1.0f/d : 0.0f;
            for (int j = 0; j < 32; ++j) {
                const float x0 = x[j]*id;
                const float v  = roundf(x0);
                if (!fits_i8(v)) ub_note(&u, i, j, x[j], d, id, v);
            }
        }
    }
    return u;
}

int main(int argc, char ** argv) {
    if (argc >= 3 && strcmp(argv[1], "quantize") == 0 && (argc == 6 || argc == 11)) {
        size_t n;
        float * x = read_rows(argv[2], &n);
        FILE * fo[3] = { open_out(argv[3]), open_out(argv[4]), open_out(argv[5]) };
        const int legacy = argc == 11;
        FILE * fl[5] = { 0 };
        if (legacy) for (int i = 0; i < 5; ++i) fl[i] = open_out(argv[6 + i]);
        uint8_t buf[512];
        for (size_t r = 0; r < n; ++r) {
            for (int t = 4; t <= 6; ++t) {
                size_t nb = 0;
                quant_one(t, x + r * QK_K, buf, &nb);
                if (fwrite(buf, 1, nb, fo[t - 4]) != nb) { perror("fwrite"); return 2; }
            }
            if (legacy) {
                for (int lt = 0; lt < 5; ++lt) {
                    size_t nb = 0;
                    quant_legacy(lt, x + r * QK_K, buf, &nb);
                    if (fwrite(buf, 1, nb, fl[lt]) != nb) { perror("fwrite"); return 2; }
                }
            }
        }
        for (int i = 0; i < 3; ++i) if (fclose(fo[i]) != 0) { perror("fclose"); return 2; }
        if (legacy) for (int i = 0; i < 5; ++i) if (fclose(fl[i]) != 0) { perror("fclose"); return 2; }
        fprintf(stderr, "quantized %zu rows%s\n", n, legacy ? " (k-quants + legacy)" : " (k-quants)");
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "legacy-ub") == 0) {
        size_t n;
        float * x = read_rows(argv[2], &n);
        int rows_hit = 0;
        for (int lt = 0; lt < 5; ++lt) {
            for (size_t r = 0; r < n; ++r) {
                const ub_info u = legacy_ub(lt, x + r * QK_K);
                if (!u.n_ub) continue;
                ++rows_hit;
                printf("%s %zu %d %d %d %d blocks=0x%02x first: blk=%d j=%d x=%.9g d=%.9g id=%.9g v=%.9g\n",
                       legacy_names[lt], r, u.n_ub, u.n_nan, u.n_inf, u.n_fin, u.mask, u.blk, u.j,
                       (double) u.x, (double) u.d, (double) u.id, (double) u.v);
            }
        }
        fprintf(stderr, "legacy-ub: %d (type,row) pairs with undefined float->int conversions\n", rows_hit);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "probe-asserts") == 0) {
        size_t n;
        float * x = read_rows(argv[2], &n);
        int bad = 0;
        for (size_t r = 0; r < n; ++r) {
            for (int t = 4; t <= 6; ++t) {
                fflush(stdout);
                pid_t pid = fork();
                if (pid == 0) {
                    int devnull = open("/dev/null", O_WRONLY);
                    if (devnull >= 0) dup2(devnull, 2);
                    uint8_t buf[256]; size_t nb;
                    quant_one(t, x + r * QK_K, buf, &nb);
                    _exit(0);
                }
                int st = 0;
                waitpid(pid, &st, 0);
                if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) { printf("q%d_K %zu\n", t, r); ++bad; }
            }
        }
        fprintf(stderr, "probe-asserts: %d (type,row) pairs died\n", bad);
        return 0;
    }
#ifdef KQ_COUNT_TIES
    if (argc == 3 && strcmp(argv[1], "count-ties") == 0) {
        size_t n;
        float * x = read_rows(argv[2], &n);
        for (size_t r = 0; r < n; ++r) {
            unsigned long c[3];
            for (int t = 4; t <= 6; ++t) {
                uint8_t buf[256]; size_t nb;
                kq_tie_count = 0;
                quant_one(t, x + r * QK_K, buf, &nb);
                c[t - 4] = kq_tie_count;
            }
            printf("%zu %lu %lu %lu\n", r, c[0], c[1], c[2]);
        }
        return 0;
    }
#endif
    fprintf(stderr, "usage: %s quantize IN OUT_Q4K OUT_Q5K OUT_Q6K [OUT_Q4_0 OUT_Q4_1 OUT_Q5_0 OUT_Q5_1 OUT_Q8_0]"
                    " | legacy-ub IN | probe-asserts IN"
#ifdef KQ_COUNT_TIES
                    " | count-ties IN"
#endif
                    "\n", argv[0]);
    return 2;
}
