/* Prototype behind docs/benchmarks.md (session 22): one output row of a 3x3 stride-1 depthwise
 * conv (C=144, W=56: B0's second stage), data in L2, one thread, in four forms timed in turns:
 * fp32 as effnets' input-stationary 8-pixel blocks (native.c dw_block8_512) and the same with two
 * 16-channel chunks (16 accumulators); bf16 with the input rows stored as bf16 pairs of
 * neighbouring pixels (2m, 2m+1), each pair vector feeding four outputs through `vdpbf16ps`
 * (even and odd outputs with their own weight pairs: (w0,w1),(w2,0) and (0,w0),(w1,w2)); and the
 * conversion of one fp32 row into those pairs (a separate pass here; an expand GEMM's epilogue
 * would do it with the rows in registers).  Checks the bf16 result against float64 sums of the
 * rounded operands.  Not part of the library.
 *   gcc -O2 -o /tmp/dw_bf16_pairs benchmarks/proto/dw_bf16_pairs.c -lm && /tmp/dw_bf16_pairs */
#include <immintrin.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <math.h>
#include <time.h>
#include <stdint.h>
#define T __attribute__((target("avx512f,avx512bw,avx512bf16,avx2,fma")))
#define C 144
#define W 56
#define WP (W + 2)          /* padded row: a zero column each side */
#define NP (WP / 2)         /* pairs per padded row */
#define ROWS 10
static float xf[ROWS][WP][C] __attribute__((aligned(64)));
static uint32_t xb[ROWS][NP][C] __attribute__((aligned(64)));   /* (pixel 2m, pixel 2m+1) bf16 pairs */
static float wt[3][3][C] __attribute__((aligned(64)));
static uint32_t we0[3][C], we1[3][C], wo0[3][C], wo1[3][C];       /* weight pairs */
static float out[W][C] __attribute__((aligned(64)));
static uint16_t bf(float f) { uint32_t u; memcpy(&u, &f, 4); u += 0x7FFF + ((u >> 16) & 1); return (uint16_t)(u >> 16); }
static float fb(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static uint32_t pr(uint16_t lo, uint16_t hi) { return (uint32_t)lo | ((uint32_t)hi << 16); }
T static void row_f32(int r0) {
    for (int ow0 = 0; ow0 < W; ow0 += 8)
        for (int c = 0; c < C; c += 16) {
            __m512 acc[8];
            for (int p = 0; p < 8; p++) acc[p] = _mm512_setzero_ps();
            for (int kh = 0; kh < 3; kh++) {
                const float* xr = &xf[r0 + kh][ow0][c];
                __m512 w0 = _mm512_load_ps(&wt[kh][0][c]), w1 = _mm512_load_ps(&wt[kh][1][c]), w2 = _mm512_load_ps(&wt[kh][2][c]);
#pragma GCC unroll 10
                for (int j = 0; j < 10; j++) {
                    __m512 v = _mm512_load_ps(xr + j * C);
                    if (j < 8) acc[j] = _mm512_fmadd_ps(v, w0, acc[j]);
                    if (j >= 1 && j - 1 < 8) acc[j - 1] = _mm512_fmadd_ps(v, w1, acc[j - 1]);
                    if (j >= 2) acc[j - 2] = _mm512_fmadd_ps(v, w2, acc[j - 2]);
                }
            }
            for (int p = 0; p < 8; p++) _mm512_store_ps(&out[ow0 + p][c], acc[p]);
        }
}
T static void row_f32x2(int r0) {  /* 8 pixels x 32 channels: 16 independent accumulators */
    for (int ow0 = 0; ow0 < W; ow0 += 8)
        for (int c = 0; c < C; c += 32) {
            const int two = c + 16 < C;
            __m512 a[8], b[8];
            for (int p = 0; p < 8; p++) a[p] = b[p] = _mm512_setzero_ps();
            for (int kh = 0; kh < 3; kh++) {
                const float* xr = &xf[r0 + kh][ow0][c];
                __m512 w0 = _mm512_load_ps(&wt[kh][0][c]), w1 = _mm512_load_ps(&wt[kh][1][c]), w2 = _mm512_load_ps(&wt[kh][2][c]);
                __m512 u0 = two ? _mm512_load_ps(&wt[kh][0][c + 16]) : w0, u1 = two ? _mm512_load_ps(&wt[kh][1][c + 16]) : w1,
                       u2 = two ? _mm512_load_ps(&wt[kh][2][c + 16]) : w2;
#pragma GCC unroll 10
                for (int j = 0; j < 10; j++) {
                    __m512 v = _mm512_load_ps(xr + j * C), q = _mm512_load_ps(xr + j * C + 16);
                    if (j < 8) { a[j] = _mm512_fmadd_ps(v, w0, a[j]); b[j] = _mm512_fmadd_ps(q, u0, b[j]); }
                    if (j >= 1 && j - 1 < 8) { a[j - 1] = _mm512_fmadd_ps(v, w1, a[j - 1]); b[j - 1] = _mm512_fmadd_ps(q, u1, b[j - 1]); }
                    if (j >= 2) { a[j - 2] = _mm512_fmadd_ps(v, w2, a[j - 2]); b[j - 2] = _mm512_fmadd_ps(q, u2, b[j - 2]); }
                }
            }
            for (int p = 0; p < 8; p++) { _mm512_store_ps(&out[ow0 + p][c], a[p]); if (two) _mm512_store_ps(&out[ow0 + p][c + 16], b[p]); }
        }
}
T static void row_bf(int r0) {
    for (int ow0 = 0; ow0 < W; ow0 += 8)
        for (int c = 0; c < C; c += 16) {
            __m512 acc[8];
            for (int p = 0; p < 8; p++) acc[p] = _mm512_setzero_ps();
            const int m0 = ow0 / 2;
            for (int kh = 0; kh < 3; kh++) {
                const __m512bh e0 = (__m512bh)_mm512_loadu_si512(&we0[kh][c]), e1 = (__m512bh)_mm512_loadu_si512(&we1[kh][c]),
                               o0 = (__m512bh)_mm512_loadu_si512(&wo0[kh][c]), o1 = (__m512bh)_mm512_loadu_si512(&wo1[kh][c]);
#pragma GCC unroll 5
                for (int i = 0; i < 5; i++) {
                    const __m512bh v = (__m512bh)_mm512_load_si512(&xb[r0 + kh][m0 + i][c]);
                    if (2 * i < 8) acc[2 * i] = _mm512_dpbf16_ps(acc[2 * i], v, e0);
                    if (2 * i - 2 >= 0 && 2 * i - 2 < 8) acc[2 * i - 2] = _mm512_dpbf16_ps(acc[2 * i - 2], v, e1);
                    if (2 * i + 1 < 8) acc[2 * i + 1] = _mm512_dpbf16_ps(acc[2 * i + 1], v, o0);
                    if (2 * i - 1 >= 0 && 2 * i - 1 < 8) acc[2 * i - 1] = _mm512_dpbf16_ps(acc[2 * i - 1], v, o1);
                }
            }
            for (int p = 0; p < 8; p++) _mm512_store_ps(&out[ow0 + p][c], acc[p]);
        }
}
T static void convert_row(int r) {  /* fp32 padded row -> bf16 pairs (what an epilogue would write) */
    static const uint16_t idx_[32] = {0,16,1,17,2,18,3,19,4,20,5,21,6,22,7,23,8,24,9,25,10,26,11,27,12,28,13,29,14,30,15,31};
    const __m512i idx = _mm512_loadu_si512(idx_);
    for (int m = 0; m < NP; m++)
        for (int c = 0; c < C; c += 16) {
            __m512bh h = _mm512_cvtne2ps_pbh(_mm512_load_ps(&xf[r][2 * m + 1][c]), _mm512_load_ps(&xf[r][2 * m][c]));
            _mm512_store_si512(&xb[r][m][c], _mm512_permutexvar_epi16(idx, (__m512i)h));
        }
}
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(void) {
    srand(1);
    for (int r = 0; r < ROWS; r++) for (int p = 0; p < WP; p++) for (int c = 0; c < C; c++)
        xf[r][p][c] = (p == 0 || p == WP - 1) ? 0.0f : (float)rand() / RAND_MAX - 0.3f;
    for (int a = 0; a < 3; a++) for (int b = 0; b < 3; b++) for (int c = 0; c < C; c++) wt[a][b][c] = (float)rand() / RAND_MAX - 0.5f;
    for (int kh = 0; kh < 3; kh++) for (int c = 0; c < C; c++) {
        uint16_t w0 = bf(wt[kh][0][c]), w1 = bf(wt[kh][1][c]), w2 = bf(wt[kh][2][c]);
        we0[kh][c] = pr(w0, w1); we1[kh][c] = pr(w2, 0); wo0[kh][c] = pr(0, w0); wo1[kh][c] = pr(w1, w2);
    }
    for (int r = 0; r < ROWS; r++) convert_row(r);
    /* reference on bf16-rounded values */
    row_bf(0);
    double maxerr = 0, maxv = 0;
    for (int ow = 0; ow < W; ow++) for (int c = 0; c < C; c++) {
        double s = 0;
        for (int kh = 0; kh < 3; kh++) for (int kw = 0; kw < 3; kw++)
            s += (double)fb(bf(xf[kh][ow + kw][c])) * fb(bf(wt[kh][kw][c]));
        maxerr = fmax(maxerr, fabs(s - out[ow][c])); maxv = fmax(maxv, fabs(s));
    }
    printf("bf16 pairs vs float64 of the rounded operands: max abs err %.2e (max |y| %.2f)\n", maxerr, maxv);
    const int N = 2000;
    double best[4] = {1e9, 1e9, 1e9, 1e9};
    const char* names[4] = {"fp32 3x3 row", "bf16-pair 3x3 row", "convert one input row", "fp32 x2 chunks row"};
    for (int rep = 0; rep < 15; rep++)  /* the four in turns, best round of each */
        for (int k = 0; k < 4; k++) {
            double t = now();
            for (int n = 0; n < N; n++) {
                int r0 = n % (ROWS - 2);
                if (k == 0) row_f32(r0); else if (k == 1) row_bf(r0); else if (k == 2) convert_row(r0); else row_f32x2(r0);
                __asm__ volatile("" ::: "memory");
            }
            best[k] = fmin(best[k], (now() - t) / N);
        }
    for (int k = 0; k < 4; k++) printf("%-22s %.2f us per output row (%d x %d)\n", names[k], best[k] * 1e6, W, C);
    return 0;
}
