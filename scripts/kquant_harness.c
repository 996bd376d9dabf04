// kquant_harness.c -- drive llama.cpp's reference k-quant quantizers (quantize_row_q{4,5,6}_K_ref from
// ggml/src/ggml-quants.c of the llama-cpp-python 0.3.36 sdist) over rows of 256 f32 and dump the raw blocks.
//
// Built and run by scripts/make_kquant_fixtures.sh; see that script for the sdist, the compiler flags and why.
//
// Usage:
//   kquant_harness quantize IN.bin OUT_Q4K.bin OUT_Q5K.bin OUT_Q6K.bin
//       IN.bin: rows x 256 f32 (little-endian IEEE-754 bit patterns). For every row r (in order) it calls
//       quantize_row_qX_K_ref(row_r, &block, 256) and appends the block bytes exactly as laid out in memory
//       (block_q4_K = 144 bytes, block_q5_K = 176, block_q6_K = 210; x86-64 is little-endian so the f16 d/dmin
//       fields come out little-endian, which is the GGUF on-disk layout).
//   kquant_harness probe-asserts IN.bin
//       For each row and type, fork a child that quantizes only that row; print "TYPE ROW" for every child that
//       died (used with a build WITHOUT -DNDEBUG, to list rows that trip ggml-quants.c's assert()s, e.g. the
//       `assert(fabsf(fval) <= 4194303.f)` in nearest_int; the release build that makes the fixtures has
//       -DNDEBUG, like CMake's Release config, so those asserts are compiled out there).
//   kquant_harness count-ties IN.bin
//       Only in a build with -DKQ_COUNT_TIES against a copy of ggml-quants.c whose nearest_int() was patched by
//       the script to bump kq_tie_count on exact .5 arguments; prints "ROW q4 q5 q6" tie counts per row.
//       Diagnostic only: never used to produce expected outputs.
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

#define GGML_COMMON_DECL_C
#include "ggml-common.h"
#include "ggml-quants.h"
#include "ggml.h"

_Static_assert(QK_K == 256, "QK_K must be 256");
_Static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");
_Static_assert(sizeof(block_q5_K) == 176, "block_q5_K size");
_Static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");

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

int main(int argc, char ** argv) {
    if (argc >= 3 && strcmp(argv[1], "quantize") == 0 && argc == 6) {
        size_t n;
        float * x = read_rows(argv[2], &n);
        FILE * fo[3] = { open_out(argv[3]), open_out(argv[4]), open_out(argv[5]) };
        uint8_t buf[256];
        for (size_t r = 0; r < n; ++r) {
            for (int t = 4; t <= 6; ++t) {
                size_t nb = 0;
                quant_one(t, x + r * QK_K, buf, &nb);
                if (fwrite(buf, 1, nb, fo[t - 4]) != nb) { perror("fwrite"); return 2; }
            }
        }
        for (int i = 0; i < 3; ++i) if (fclose(fo[i]) != 0) { perror("fclose"); return 2; }
        fprintf(stderr, "quantized %zu rows\n", n);
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
    fprintf(stderr, "usage: %s quantize IN OUT_Q4K OUT_Q5K OUT_Q6K | probe-asserts IN"
#ifdef KQ_COUNT_TIES
                    " | count-ties IN"
#endif
                    "\n", argv[0]);
    return 2;
}
