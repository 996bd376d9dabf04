// kquant_harness.c -- drive llama.cpp's reference quantizers from ggml/src/ggml-quants.c of the llama-cpp-python
// 0.3.36 sdist over rows of 256 f32 and dump the raw blocks: the k-quants quantize_row_q{4,5,6}_K_ref and the
// legacy 32-value-block quantizers quantize_row_q4_0_ref / q4_1 / q5_0 / q5_1 / q8_0_ref, and (optionally)
// quantize_row_q2_K_ref / quantize_row_q3_K_ref.
//
// Built and run by scripts/make_kquant_fixtures.sh; see that script for the sdist, the compiler flags and why.
//
// Usage:
//   kquant_harness quantize IN.bin OUT_Q4K.bin OUT_Q5K.bin OUT_Q6K.bin [OUT_Q4_0 OUT_Q4_1 OUT_Q5_0 OUT_Q5_1 OUT_Q8_0
//                  [OUT_Q2K OUT_Q3K]]
//       IN.bin: rows x 256 f32 (little-endian IEEE-754 bit patterns). For every row r (in order) it calls
//       quantize_row_qX_K_ref(row_r, &block, 256) and appends the block bytes exactly as laid out in memory
//       (block_q4_K = 144 bytes, block_q5_K = 176, block_q6_K = 210; x86-64 is little-endian so the f16 d/dmin
//       fields come out little-endian, which is the GGUF on-disk layout).
//       With the five optional outputs it also calls, for every row, quantize_row_{q4_0,q4_1,q5_0,q5_1,q8_0}_ref
//       (row_r, blocks, 256) on the whole 256-value row (8 blocks of 32 values) and appends the 8 blocks:
//       block_q4_0 = 18 bytes (f16 d, qs[16]), block_q4_1 = 20 (d, m, qs[16]), block_q5_0 = 22 (d, qh[4],
//       qs[16]), block_q5_1 = 24 (d, m, qh[4], qs[16]), block_q8_0 = 34 (d, qs[32] i8) -> 144/160/176/192/272
//       bytes per row. With the two further outputs it also calls quantize_row_q2_K_ref / quantize_row_q3_K_ref
//       (row_r, &block, 256) and appends block_q2_K = 84 bytes (scales[16], qs[64], f16 d, f16 dmin) /
//       block_q3_K = 110 bytes (hmask[32], qs[64], scales[12], f16 d). Every output is the same bytes whichever
//       optional outputs are requested (each call is independent).
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
//   kquant_harness kquant-ub IN.bin
//       The same kind of scan for quantize_row_q2_K_ref / quantize_row_q3_K_ref. Neither converts a float to an
//       integer by a cast (all roundings go through nearest_int's memcpy bit trick, defined for any float with
//       -DNDEBUG), so the candidates are integer operations. Mirrored here (make_qkx2_quants / make_q3_quants
//       copied statement by statement, same flags) up to the operation checked:
//         q2_K: `y[i].scales[j] |= (l << 4)` with int l = nearest_int(iscale*mins[j]), iscale = 15.f/max_min:
//               C11 6.5.7p4 makes a left shift of a NEGATIVE signed value undefined. l < 0 happens when
//               iscale*mins[j] is +inf (max_min subnormal -> 15/max_min = inf; nearest_int(inf) = -4194304) or
//               otherwise < -0.5. (l << 4 cannot overflow: nearest_int's result is within [-2^22, 2^22).)
//         q3_K: `int8_t l = nearest_int(iscale*scales[j])`, iscale = -32.f/max_scale: an int outside [-128, 127]
//               converted to int8_t is IMPLEMENTATION-DEFINED (C11 6.3.1.3p3; GCC: modulo 2^8), not UB; counted
//               as n_impl, never as UB. Every other integer operation of q3_K works on values already clamped.
//       Prints "TYPE ROW n_ub n_impl blocks=<16-bit sub-block mask> first: j=J v=.. l=.." per row with n_ub or n_impl.
//   kquant_harness ub-probe IN.bin
//       For a -fsanitize=... build: for every row and every type (q4_K q5_K q6_K q4_0 q4_1 q5_0 q5_1 q8_0 q2_K
//       q3_K) fork a child that quantizes only that row with only that type (fresh sanitizer state, so no report
//       is deduplicated away) and print "TYPE ROW <message>" for each "runtime error" line it wrote to stderr, or
//       "TYPE ROW died <status>" if it did not exit 0.
//   kquant_harness probe-asserts IN.bin
//       For each row and type, fork a child that quantizes only that row; print "TYPE ROW" for every child that
//       died (used with a build WITHOUT -DNDEBUG, to list rows that trip ggml-quants.c's assert()s, e.g. the
//       `assert(fabsf(fval) <= 4194303.f)` in nearest_int; the release build that makes the fixtures has
//       -DNDEBUG, like CMake's Release config, so those asserts are compiled out there). k-quants only; the
//       q4_K/q5_K/q6_K lines come first (all rows), then q2_K/q3_K.
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
_Static_assert(sizeof(block_q2_K) == 84, "block_q2_K size");
_Static_assert(sizeof(block_q3_K) == 110, "block_q3_K size");
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
        case 2: { block_q2_K b; memset(&b, 0, sizeof b); quantize_row_q2_K_ref(row, &b, QK_K); memcpy(out, &b, sizeof b); *nbytes = sizeof b; } break;
        case 3: { block_q3_K b; memset(&b, 0, sizeof b); quantize_row_q3_K_ref(row, &b, QK_K); memcpy(out, &b, sizeof b); *nbytes = sizeof b; } break;
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

// ---------------------------------------------------------------- q2_K / q3_K UB scan (mirror of ggml-quants.c)
// Copies of nearest_int (without its assert: the reference build has -DNDEBUG), make_qkx2_quants and
// make_q3_quants from ggml-quants.c (ggml 0.25.3), same statements in the same order.
#define KQ_GROUP_MAX_EPS 1e-15f
#define KQ_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KQ_MAX(a, b) ((a) > (b) ? (a) : (b))
static inline int kq_nearest_int(float fval) {
    float val = fval + 12582912.f;
    int i; memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

static float kq_make_qkx2_quants(int n, int nmax, const float * x, const float * weights, uint8_t * L, float * the_min,
                                 uint8_t * Laux, float rmin, float rdelta, int nstep, bool use_mad) {
    float min = x[0];
    float max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax/(max - min);
    float scale = 1/iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        int l = kq_nearest_int(iscale*(x[i] - min));
        L[i] = KQ_MAX(0, KQ_MIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        float w = weights[i];
        best_error += w * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta*is + nmax)/(max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = kq_nearest_int(iscale*(x[i] - min));
            l = KQ_MAX(0, KQ_MIN(nmax, l));
            Laux[i] = l;
            float w = weights[i];
            sum_l += w*l;
            sum_l2 += w*l*l;
            sum_xl += w*l*x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l)/D;
            float this_min   = (sum_l2 * sum_x - sum_l * sum_xl)/D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                float w = weights[i];
                cur_error += w * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) {
                    L[i] = Laux[i];
                }
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

static float kq_make_q3_quants(int n, int nmax, const float * x, int8_t * L, bool do_rmse) {
    float max = 0;
    float amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < KQ_GROUP_MAX_EPS) { // all zero
        for (int i = 0; i < n; ++i) { L[i] = 0; }
        return 0.f;
    }
    float iscale = -nmax / max;
    if (do_rmse) {
        float sumlx = 0;
        float suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = kq_nearest_int(iscale * x[i]);
            l = KQ_MAX(-nmax, KQ_MIN(nmax-1, l));
            L[i] = l;
            float w = x[i]*x[i];
            sumlx += w*x[i]*l;
            suml2 += w*l*l;
        }
        for (int itry = 0; itry < 5; ++itry) {
            int n_changed = 0;
            for (int i = 0; i < n; ++i) {
                float w = x[i]*x[i];
                float slx = sumlx - w*x[i]*L[i];
                if (slx > 0) {
                    float sl2 = suml2 - w*L[i]*L[i];
                    int new_l = kq_nearest_int(x[i] * sl2 / slx);
                    new_l = KQ_MAX(-nmax, KQ_MIN(nmax-1, new_l));
                    if (new_l != L[i]) {
                        slx += w*x[i]*new_l;
                        sl2 += w*new_l*new_l;
                        if (sl2 > 0 && slx*slx*suml2 > sumlx*sumlx*sl2) {
                            L[i] = new_l; sumlx = slx; suml2 = sl2;
                            ++n_changed;
                        }
                    }
                }
            }
            if (!n_changed) {
                break;
            }
        }
        for (int i = 0; i < n; ++i) {
            L[i] += nmax;
        }
        return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    }
    for (int i = 0; i < n; ++i) {
        int l = kq_nearest_int(iscale * x[i]);
        l = KQ_MAX(-nmax, KQ_MIN(nmax-1, l));
        L[i] = l + nmax;
    }
    return 1/iscale;
}

typedef struct { int n_ub, n_impl; unsigned mask; int j, l; float v; } kub_info;
static void kub_note(kub_info * u, int is_ub, int j, float v, int l) {
    if (u->n_ub == 0 && u->n_impl == 0) { u->j = j; u->v = v; u->l = l; }
    if (is_ub) { ++u->n_ub; u->mask |= 1u << j; } else ++u->n_impl;
}

// q2_K: rows where quantize_row_q2_K_ref left-shifts a negative int (`y[i].scales[j] |= (l << 4)`)
static kub_info q2k_ub(const float * x) {
    kub_info u; memset(&u, 0, sizeof u);
    uint8_t L[QK_K]; uint8_t Laux[16]; float weights[16]; float mins[QK_K/16]; float scales[QK_K/16];
    const float q4scale = 15.f;
    float max_scale = 0;
    float max_min = 0;
    for (int j = 0; j < QK_K/16; ++j) {
        for (int l = 0; l < 16; ++l) weights[l] = fabsf(x[16*j + l]);
        scales[j] = kq_make_qkx2_quants(16, 3, x + 16*j, weights, L + 16*j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
        float scale = scales[j];
        if (scale > max_scale) max_scale = scale;
        float min = mins[j];
        if (min > max_min) max_min = min;
    }
    (void) max_scale;   // the scales path assigns l to a uint8_t: defined for any int
    if (max_min > 0) {
        float iscale = q4scale/max_min;
        for (int j = 0; j < QK_K/16; ++j) {
            const float v = iscale*mins[j];
            int l = kq_nearest_int(v);
            if (l < 0) kub_note(&u, 1, j, v, l);
        }
    }
    return u;
}

// q3_K: no UB candidate; counts the implementation-defined int -> int8_t conversions of out-of-range ints
static kub_info q3k_ub(const float * x) {
    kub_info u; memset(&u, 0, sizeof u);
    int8_t L[QK_K]; float scales[QK_K/16];
    float max_scale = 0;
    float amax = 0;
    for (int j = 0; j < QK_K/16; ++j) {
        scales[j] = kq_make_q3_quants(16, 4, x + 16*j, L + 16*j, true);
        float scale = fabsf(scales[j]);
        if (scale > amax) { amax = scale; max_scale = scales[j]; }
    }
    if (max_scale) {
        float iscale = -32.f/max_scale;
        for (int j = 0; j < QK_K/16; ++j) {
            const float v = iscale*scales[j];
            int l = kq_nearest_int(v);
            if (l < -128 || l > 127) kub_note(&u, 0, j, v, l);
        }
    }
    return u;
}

// ---------------------------------------------------------------- one type by name (ub-probe)
static const char * const all_names[10] = { "q4_K", "q5_K", "q6_K", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K" };
static void quant_by_index(int t, const float * row, uint8_t * out, size_t * nbytes) {
    if (t < 3) quant_one(4 + t, row, out, nbytes);
    else if (t < 8) quant_legacy(t - 3, row, out, nbytes);
    else quant_one(t - 6, row, out, nbytes);
}

int main(int argc, char ** argv) {
    if (argc >= 3 && strcmp(argv[1], "quantize") == 0 && (argc == 6 || argc == 11 || argc == 13)) {
        size_t n;
        float * x = read_rows(argv[2], &n);
        FILE * fo[3] = { open_out(argv[3]), open_out(argv[4]), open_out(argv[5]) };
        const int legacy = argc >= 11, low = argc == 13;
        FILE * fl[5] = { 0 };
        if (legacy) for (int i = 0; i < 5; ++i) fl[i] = open_out(argv[6 + i]);
        FILE * fk[2] = { 0 };
        if (low) for (int i = 0; i < 2; ++i) fk[i] = open_out(argv[11 + i]);
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
            if (low) {
                for (int t = 2; t <= 3; ++t) {
                    size_t nb = 0;
                    quant_one(t, x + r * QK_K, buf, &nb);
                    if (fwrite(buf, 1, nb, fk[t - 2]) != nb) { perror("fwrite"); return 2; }
                }
            }
        }
        for (int i = 0; i < 3; ++i) if (fclose(fo[i]) != 0) { perror("fclose"); return 2; }
        if (legacy) for (int i = 0; i < 5; ++i) if (fclose(fl[i]) != 0) { perror("fclose"); return 2; }
        if (low) for (int i = 0; i < 2; ++i) if (fclose(fk[i]) != 0) { perror("fclose"); return 2; }
        fprintf(stderr, "quantized %zu rows%s\n", n,
                low ? " (k-quants + legacy + q2_K/q3_K)" : legacy ? " (k-quants + legacy)" : " (k-quants)");
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
    if (argc == 3 && strcmp(argv[1], "kquant-ub") == 0) {
        size_t n;
        float * x = read_rows(argv[2], &n);
        int rows_ub = 0, rows_impl = 0;
        for (int t = 2; t <= 3; ++t) {
            for (size_t r = 0; r < n; ++r) {
                const kub_info u = t == 2 ? q2k_ub(x + r * QK_K) : q3k_ub(x + r * QK_K);
                if (!u.n_ub && !u.n_impl) continue;
                if (u.n_ub) ++rows_ub; else ++rows_impl;
                printf("q%d_K %zu %d %d blocks=0x%04x first: j=%d v=%.9g l=%d\n", t, r, u.n_ub, u.n_impl, u.mask,
                       u.j, (double) u.v, u.l);
            }
        }
        fprintf(stderr, "kquant-ub: %d (type,row) pairs with UB, %d more with only implementation-defined conversions\n",
                rows_ub, rows_impl);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "ub-probe") == 0) {
        size_t n;
        float * x = read_rows(argv[2], &n);
        static char msg[1 << 16];
        for (int t = 0; t < 10; ++t) {
            for (size_t r = 0; r < n; ++r) {
                int fds[2];
                if (pipe(fds) != 0) { perror("pipe"); return 2; }
                fflush(stdout);
                pid_t pid = fork();
                if (pid < 0) { perror("fork"); return 2; }
                if (pid == 0) {
                    close(fds[0]);
                    dup2(fds[1], 2);
                    uint8_t buf[512]; size_t nb;
                    quant_by_index(t, x + r * QK_K, buf, &nb);
                    _exit(0);
                }
                close(fds[1]);
                size_t len = 0; ssize_t k;
                while ((k = read(fds[0], msg + len, sizeof msg - 1 - len)) > 0) len += (size_t) k;
                close(fds[0]);
                msg[len] = 0;
                int st = 0;
                waitpid(pid, &st, 0);
                for (char * line = strtok(msg, "\n"); line; line = strtok(NULL, "\n"))
                    if (strstr(line, "runtime error")) printf("%s %zu %s\n", all_names[t], r, line);
                if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) printf("%s %zu died %d\n", all_names[t], r, st);
            }
        }
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
        for (int t = 2; t <= 3; ++t) {
            for (size_t r = 0; r < n; ++r) {
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
    fprintf(stderr, "usage: %s quantize IN OUT_Q4K OUT_Q5K OUT_Q6K [OUT_Q4_0 OUT_Q4_1 OUT_Q5_0 OUT_Q5_1 OUT_Q8_0"
                    " [OUT_Q2K OUT_Q3K]] | legacy-ub IN | kquant-ub IN | ub-probe IN | probe-asserts IN"
#ifdef KQ_COUNT_TIES
                    " | count-ties IN"
#endif
                    "\n", argv[0]);
    return 2;
}
