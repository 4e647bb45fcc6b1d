/* effnets native CPU kernels, float32: fused BatchNorm (training statistics) + activation,
 * forward and backward, and SiLU, for channels-last (N*H*W rows x C) and NCHW (planes of H*W)
 * tensors; depthwise convolution, channels-last: the training backward and the inference
 * forward (bias + activation fused, optional channel sums for a squeeze-excite); the inference
 * squeeze-excite; the Winograd F(4x4, 3x3) input and output transforms; the inference 1x1
 * convolution (a register-tiled GEMM with bias, activation and residual in its epilogue).  Compiled on
 * first use by effnets/kernels/__init__.py; every caller has a plain PyTorch path, used when no
 * C compiler is found, and tests hold the two to each other.
 *
 * Why: on CPU, BN + SiLU in training are separate memory-bound passes in PyTorch (BN stats,
 * BN apply, SiLU forward; SiLU backward, BN backward reduce, BN backward apply), and
 * torch's sigmoid costs about 1 ns per element on a 2-core AVX2 machine.  Here forward is two
 * passes (stats, apply+act) and backward two passes (act'+reductions, dx), with a vector exp
 * accurate to a few float ulps at half the cost of PyTorch's (Cephes expf for scalar tails).
 *
 * Threads: OpenMP.  Built with -fopenmp this links libgomp.so.1, which resolves to the copy
 * PyTorch has already loaded, so both share one thread pool. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <cpuid.h>
#include <sys/syscall.h>
#define EFF_X86 1
#endif

typedef int64_t i64;
enum { ACT_IDENTITY = 0, ACT_SILU = 1, ACT_RELU = 2, ACT_HARDSWISH = 3, ACT_RELU6 = 4, ACT_SIGMOID = 5,
       ACT_HARDSIGMOID = 6, ACT_GELU = 7 };
/* GELU (the exact, erf form: x/2 (1 + erf(x / sqrt 2))) with erf by Abramowitz & Stegun 7.1.26
 * (|error| <= 1.5e-7), the approximation PyTorch's vectorized CPU erf uses for nn.GELU:
 * erf(a) = 1 - t (A1 + t (A2 + ...)) exp(-a^2), t = 1 / (1 + P a), a >= 0, odd in a */
#define GELU_P 0.3275911f
#define GELU_A1 0.254829592f
#define GELU_A2 -0.284496736f
#define GELU_A3 1.421413741f
#define GELU_A4 -1.453152027f
#define GELU_A5 1.061405429f

/* ---- scalar reference math (tails and non-AVX2 machines) ---- */
static inline float flush_tiny(float v) { return fabsf(v) < FLT_MIN ? 0.0f : v; }  /* see flush_tiny_v */
#define EXP_HI 88.3762626647949f  /* above: exp overflows the fit's range, and the result is +inf */
static inline float exp_s(float x) {
    if (x > EXP_HI) return INFINITY;  /* SiLU(z < -88) = z / inf = -0, as in PyTorch, not z * 4e-39 */
    x = fminf(fmaxf(x, -87.3365402f), EXP_HI);
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f; p = p * r + 8.3334519073E-3f; p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f; p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23; float s; memcpy(&s, &e, 4);
    return p * s;
}
/* erf(x / sqrt 2) by the fit above, and exp(-x^2 / 2) (= exp(-z^2), z = x / sqrt 2) in *ez */
static inline float gelu_erf_s(float x, float* ez) {
    const float z = x * 0.707106781186547524f, a = fabsf(z);
    const float t = 1.0f / (1.0f + GELU_P * a);
    const float r = ((((GELU_A5 * t + GELU_A4) * t + GELU_A3) * t + GELU_A2) * t + GELU_A1) * t;
    *ez = exp_s(-(a * a));
    return copysignf(1.0f - r * *ez, z);
}
static inline float gelu_s(float x) {
    float ez;
    return 0.5f * x * (1.0f + gelu_erf_s(x, &ez));
}
/* GELU's derivative, Phi(x) + x phi(x), from the same erf and exp */
static inline float dgelu_s(float x) {
    float ez;
    const float erf = gelu_erf_s(x, &ez);
    return 0.5f * (1.0f + erf) + x * ez * 0.398942280401432678f;
}
static inline float act_s(float z, int act) {
    if (act == ACT_SILU) return z / (1.0f + exp_s(-z));
    if (act == ACT_GELU) return gelu_s(z);
    if (act == ACT_RELU) return z > 0.0f ? z : 0.0f;
    if (act == ACT_HARDSWISH) return z * fminf(fmaxf(z + 3.0f, 0.0f), 6.0f) * (1.0f / 6.0f);
    if (act == ACT_RELU6) return fminf(fmaxf(z, 0.0f), 6.0f);
    if (act == ACT_SIGMOID) return 1.0f / (1.0f + exp_s(-z));
    if (act == ACT_HARDSIGMOID) return fminf(fmaxf(z * (1.0f / 6.0f) + 0.5f, 0.0f), 1.0f);
    return z;
}
static inline float dact_s(float z, int act) {  /* d act / dz */
    if (act == ACT_SILU) { float s = 1.0f / (1.0f + exp_s(-z)); return s + z * s * (1.0f - s); }
    if (act == ACT_RELU) return z > 0.0f ? 1.0f : 0.0f;
    if (act == ACT_RELU6) return z > 0.0f && z < 6.0f ? 1.0f : 0.0f;  /* as hardtanh_backward: 0 at the kinks */
    if (act == ACT_HARDSWISH) return z <= -3.0f ? 0.0f : z < 3.0f ? z * (1.0f / 3.0f) + 0.5f : 1.0f;  /* as aten's */
    if (act == ACT_GELU) return dgelu_s(z);
    return 1.0f;  /* derivatives serve the training kernels: identity, SiLU, ReLU, ReLU6, hard-swish, GELU */
}

#ifdef EFF_X86
#define AVX2 __attribute__((target("avx2,fma")))
/* exp(x) = 2^n * 2^f, n = round(x log2 e), |f| <= 1/2: f from one FMA on the exact product
 * plus the low part of log2 e, then a degree-5 fit of 2^f (relative error 8e-8) */
AVX2 static inline __m256 exp_v(__m256 x) {
    const __m256 big = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_HI), _CMP_GT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3365402f)), _mm256_set1_ps(EXP_HI));
    const __m256 L = _mm256_set1_ps(1.44269504088896341f), Llo = _mm256_set1_ps(1.92596299e-08f);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, L), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_fmadd_ps(x, Llo, _mm256_fmsub_ps(x, L, n));
    __m256 p = _mm256_set1_ps(0.0013267f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.00967546f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.05550743f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.24022122f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.69314694f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0000001f));
    __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    return _mm256_blendv_ps(_mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e)), _mm256_set1_ps(INFINITY), big);
}
/* |v| below FLT_MIN -> 0.  Squeeze-excite gates reach 1e-38 (sigmoid of a logit near -87.5) and
 * gated activations go lower: on Intel CPUs every FMA that reads such a subnormal value takes a
 * microcode assist, and a trained EfficientNet-B0's last project conv read 17% subnormal inputs
 * and ran 15x slower for it (45 vs 3 ms, batch 8).  The gate kernels flush what they write. */
AVX2 static inline __m256 flush_tiny_v(__m256 v) {
    const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
    return _mm256_and_ps(v, _mm256_cmp_ps(a, _mm256_set1_ps(FLT_MIN), _CMP_GE_OQ));
}
AVX2 static inline __m256 sigmoid_v(__m256 z) {
    return _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), exp_v(_mm256_sub_ps(_mm256_setzero_ps(), z))));
}
/* gelu_erf_s on 8 lanes, step for step */
AVX2 static inline __m256 gelu_erf_v(__m256 x, __m256* ez) {
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    const __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.707106781186547524f)), a = _mm256_andnot_ps(sign, z);
    const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(GELU_P), a, one));
    __m256 r = _mm256_fmadd_ps(_mm256_set1_ps(GELU_A5), t, _mm256_set1_ps(GELU_A4));
    r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(GELU_A3));
    r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(GELU_A2));
    r = _mm256_mul_ps(_mm256_fmadd_ps(r, t, _mm256_set1_ps(GELU_A1)), t);
    *ez = exp_v(_mm256_xor_ps(sign, _mm256_mul_ps(a, a)));
    return _mm256_or_ps(_mm256_fnmadd_ps(r, *ez, one), _mm256_and_ps(sign, z));
}
AVX2 static inline __m256 gelu_v(__m256 x) {  /* gelu_s on 8 lanes */
    __m256 ez;
    const __m256 erf = gelu_erf_v(x, &ez);
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(_mm256_set1_ps(1.0f), erf));
}
/* gelu_v's value (*a_out, where not NULL) and dgelu_s's derivative (returned) from one erf and exp */
AVX2 static inline __m256 gelu_both_v(__m256 x, __m256* a_out) {
    __m256 ez;
    const __m256 erf = gelu_erf_v(x, &ez), one_erf = _mm256_add_ps(_mm256_set1_ps(1.0f), erf);
    if (a_out) *a_out = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), one_erf);
    return _mm256_fmadd_ps(_mm256_mul_ps(x, ez), _mm256_set1_ps(0.398942280401432678f),
                           _mm256_mul_ps(_mm256_set1_ps(0.5f), one_erf));
}
AVX2 static inline __m256 act_v(__m256 z, int act) {
    if (act == ACT_SILU) return _mm256_div_ps(z, _mm256_add_ps(_mm256_set1_ps(1.0f), exp_v(_mm256_sub_ps(_mm256_setzero_ps(), z))));
    if (act == ACT_GELU) return gelu_v(z);
    if (act == ACT_RELU) return _mm256_max_ps(z, _mm256_setzero_ps());
    if (act == ACT_HARDSWISH) {
        __m256 r = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(z, _mm256_set1_ps(3.0f)), _mm256_setzero_ps()), _mm256_set1_ps(6.0f));
        return _mm256_mul_ps(_mm256_mul_ps(z, r), _mm256_set1_ps(1.0f / 6.0f));
    }
    if (act == ACT_RELU6) return _mm256_min_ps(_mm256_max_ps(z, _mm256_setzero_ps()), _mm256_set1_ps(6.0f));
    return z;
}
AVX2 static inline __m256 dact_v(__m256 z, int act) {
    if (act == ACT_SILU) {
        __m256 s = sigmoid_v(z);
        return _mm256_fmadd_ps(_mm256_mul_ps(z, s), _mm256_sub_ps(_mm256_set1_ps(1.0f), s), s);
    }
    if (act == ACT_RELU) return _mm256_and_ps(_mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_GT_OQ), _mm256_set1_ps(1.0f));
    if (act == ACT_RELU6)
        return _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_GT_OQ),
                                           _mm256_cmp_ps(z, _mm256_set1_ps(6.0f), _CMP_LT_OQ)), _mm256_set1_ps(1.0f));
    if (act == ACT_HARDSWISH) {
        const __m256 mid = _mm256_fmadd_ps(z, _mm256_set1_ps(1.0f / 3.0f), _mm256_set1_ps(0.5f));
        const __m256 d = _mm256_and_ps(mid, _mm256_cmp_ps(z, _mm256_set1_ps(-3.0f), _CMP_GT_OQ));
        return _mm256_blendv_ps(d, _mm256_set1_ps(1.0f), _mm256_cmp_ps(z, _mm256_set1_ps(3.0f), _CMP_GE_OQ));
    }
    if (act == ACT_GELU) return gelu_both_v(z, NULL);
    return _mm256_set1_ps(1.0f);  /* training kernels: identity, SiLU, ReLU, ReLU6, hard-swish, GELU */
}
static int have_avx2(void) {
    static int v = -1;
    if (v < 0) { __builtin_cpu_init(); v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
    return v;
}
/* AVX-512 (Intel Xeon since Skylake-SP, AMD since Zen 4): the 1x1-conv GEMM and the depthwise
 * interior have 16-lane code; everything else runs its AVX2 code there */
#define AVX512 __attribute__((target("avx512f,avx2,fma")))
static int have_avx512(void) {
    static int v = -1;
    if (v < 0) { __builtin_cpu_init(); v = have_avx2() && __builtin_cpu_supports("avx512f"); }
    return v;
}
AVX512 static inline __m256 hi256(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }
/* exp_v on 16 lanes: the same n, f and 2^f fit step for step, then 2^n applied by vscalefps (one
 * instruction for exp_v's clamp to EXP_HI, convert, shift and integer add; exact, as that add is,
 * where the result is a normal float: the results equal exp_v's bit for bit over every float,
 * tested), so an epilogue's SiLU costs ~12% less than with exp_v's steps on 16 lanes */
AVX512 static inline __m512 exp16(__m512 x) {
    const __mmask16 big = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_HI), _CMP_GT_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3365402f));
    const __m512 L = _mm512_set1_ps(1.44269504088896341f), Llo = _mm512_set1_ps(1.92596299e-08f);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, L), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_fmadd_ps(x, Llo, _mm512_fmsub_ps(x, L, n));
    __m512 p = _mm512_set1_ps(0.0013267f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.00967546f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.05550743f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24022122f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.69314694f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000001f));
    return _mm512_mask_blend_ps(big, _mm512_scalef_ps(p, n), _mm512_set1_ps(INFINITY));
}
AVX512 static inline __m512 gelu16(__m512 x) {  /* gelu_v on 16 lanes */
    const __m512 sign = _mm512_set1_ps(-0.0f), one = _mm512_set1_ps(1.0f);
    const __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(0.707106781186547524f)), a = _mm512_abs_ps(z);
    const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(GELU_P), a, one));
    __m512 r = _mm512_fmadd_ps(_mm512_set1_ps(GELU_A5), t, _mm512_set1_ps(GELU_A4));
    r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(GELU_A3));
    r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(GELU_A2));
    r = _mm512_mul_ps(_mm512_fmadd_ps(r, t, _mm512_set1_ps(GELU_A1)), t);
    const __m512 e = _mm512_fnmadd_ps(r, exp16(_mm512_mul_ps(a, _mm512_sub_ps(_mm512_setzero_ps(), a))), one);
    const __m512 erf = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(e),
                                                           _mm512_and_si512(_mm512_castps_si512(sign), _mm512_castps_si512(z))));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(one, erf));
}
AVX512 static inline __m512 act16(__m512 z, int act) {
    const __m512 zero = _mm512_setzero_ps();
    if (act == ACT_SILU) return _mm512_div_ps(z, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(zero, z))));
    if (act == ACT_GELU) return gelu16(z);
    if (act == ACT_RELU) return _mm512_max_ps(z, zero);
    if (act == ACT_HARDSWISH) {
        const __m512 r = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(z, _mm512_set1_ps(3.0f)), zero), _mm512_set1_ps(6.0f));
        return _mm512_mul_ps(_mm512_mul_ps(z, r), _mm512_set1_ps(1.0f / 6.0f));
    }
    if (act == ACT_RELU6) return _mm512_min_ps(_mm512_max_ps(z, zero), _mm512_set1_ps(6.0f));
    return z;
}
static inline unsigned short lanes16(i64 n) { return n >= 16 ? 0xFFFF : n <= 0 ? 0 : (unsigned short)((1u << n) - 1u); }
#else
static int have_avx2(void) { return 0; }
static int have_avx512(void) { return 0; }
#endif
/* -1: undecided (the 16-lane code where the CPU has AVX-512F); eff_set_avx512 lets tests and
 * benchmarks run the AVX2 code instead */
static int use_avx512 = -1;
int eff_set_avx512(int on) { use_avx512 = on && have_avx512(); return use_avx512; }
__attribute__((unused)) static int avx512(void) {
    if (use_avx512 < 0) use_avx512 = have_avx512();
    return use_avx512;
}

/* ---- spans: a row of C channels (vector scale) or a plane of one channel (scalar scale) ---- */
#ifdef EFF_X86
AVX2 static void apply_row_v(const float* y, float* o, const float* sc, const float* sh, i64 C, int act) {
    i64 c = 0;
    for (; c + 8 <= C; c += 8)
        _mm256_storeu_ps(o + c, act_v(_mm256_fmadd_ps(_mm256_loadu_ps(y + c), _mm256_loadu_ps(sc + c), _mm256_loadu_ps(sh + c)), act));
    for (; c < C; c++) o[c] = act_s(y[c] * sc[c] + sh[c], act);
}
AVX2 static void apply_plane_v(const float* y, float* o, float sc, float sh, i64 n, int act) {
    i64 i = 0; __m256 vs = _mm256_set1_ps(sc), vh = _mm256_set1_ps(sh);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(o + i, act_v(_mm256_fmadd_ps(_mm256_loadu_ps(y + i), vs, vh), act));
    for (; i < n; i++) o[i] = act_s(y[i] * sc + sh, act);
}
/* pass 1 of backward on a row: gz = g * act'(z) -> out; acc1 += gz, acc2 += gz * (y - mean) */
AVX2 static void bwd1_row_v(const float* g, const float* y, float* o, const float* sc, const float* sh, const float* mu,
                            float* a1, float* a2, i64 C, int act) {
    i64 c = 0;
    for (; c + 8 <= C; c += 8) {
        __m256 vy = _mm256_loadu_ps(y + c);
        __m256 gz = _mm256_mul_ps(_mm256_loadu_ps(g + c), dact_v(_mm256_fmadd_ps(vy, _mm256_loadu_ps(sc + c), _mm256_loadu_ps(sh + c)), act));
        _mm256_storeu_ps(o + c, gz);
        _mm256_storeu_ps(a1 + c, _mm256_add_ps(_mm256_loadu_ps(a1 + c), gz));
        _mm256_storeu_ps(a2 + c, _mm256_fmadd_ps(gz, _mm256_sub_ps(vy, _mm256_loadu_ps(mu + c)), _mm256_loadu_ps(a2 + c)));
    }
    for (; c < C; c++) {
        float gz = g[c] * dact_s(y[c] * sc[c] + sh[c], act);
        o[c] = gz; a1[c] += gz; a2[c] += gz * (y[c] - mu[c]);
    }
}
AVX2 static void bwd1_plane_v(const float* g, const float* y, float* o, float sc, float sh, float mu, i64 n, int act,
                              double* s1, double* s2) {
    __m256 vs = _mm256_set1_ps(sc), vh = _mm256_set1_ps(sh), vm = _mm256_set1_ps(mu);
    i64 i = 0;
    while (i < n) {  /* float partial sums over blocks of 1024, accumulated in double */
        i64 end = i + 1024 < n ? i + 1024 : n;
        __m256 a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps();
        float t1 = 0.0f, t2 = 0.0f;
        for (; i + 8 <= end; i += 8) {
            __m256 vy = _mm256_loadu_ps(y + i);
            __m256 gz = _mm256_mul_ps(_mm256_loadu_ps(g + i), dact_v(_mm256_fmadd_ps(vy, vs, vh), act));
            _mm256_storeu_ps(o + i, gz);
            a1 = _mm256_add_ps(a1, gz);
            a2 = _mm256_fmadd_ps(gz, _mm256_sub_ps(vy, vm), a2);
        }
        for (; i < end; i++) { float gz = g[i] * dact_s(y[i] * sc + sh, act); o[i] = gz; t1 += gz; t2 += gz * (y[i] - mu); }
        float b1[8], b2[8]; _mm256_storeu_ps(b1, a1); _mm256_storeu_ps(b2, a2);
        double d1 = t1, d2 = t2;
        for (int k = 0; k < 8; k++) { d1 += b1[k]; d2 += b2[k]; }
        *s1 += d1; *s2 += d2;
    }
}
AVX2 static void stats_row_v(const float* y, float* a1, float* a2, i64 C) {
    i64 c = 0;
    for (; c + 8 <= C; c += 8) {
        __m256 v = _mm256_loadu_ps(y + c);
        _mm256_storeu_ps(a1 + c, _mm256_add_ps(_mm256_loadu_ps(a1 + c), v));
        _mm256_storeu_ps(a2 + c, _mm256_fmadd_ps(v, v, _mm256_loadu_ps(a2 + c)));
    }
    for (; c < C; c++) { a1[c] += y[c]; a2[c] += y[c] * y[c]; }
}
AVX2 static void stats_plane_v(const float* y, i64 n, double* s1, double* s2) {
    i64 i = 0;
    while (i < n) {
        i64 end = i + 1024 < n ? i + 1024 : n;
        __m256 a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps();
        float t1 = 0.0f, t2 = 0.0f;
        for (; i + 8 <= end; i += 8) { __m256 v = _mm256_loadu_ps(y + i); a1 = _mm256_add_ps(a1, v); a2 = _mm256_fmadd_ps(v, v, a2); }
        for (; i < end; i++) { t1 += y[i]; t2 += y[i] * y[i]; }
        float b1[8], b2[8]; _mm256_storeu_ps(b1, a1); _mm256_storeu_ps(b2, a2);
        double d1 = t1, d2 = t2;
        for (int k = 0; k < 8; k++) { d1 += b1[k]; d2 += b2[k]; }
        *s1 += d1; *s2 += d2;
    }
}
AVX2 static void bwd2_row_v(float* o, const float* y, const float* k1, const float* k2, const float* k3, i64 C) {
    i64 c = 0;
    for (; c + 8 <= C; c += 8)
        _mm256_storeu_ps(o + c, _mm256_fmadd_ps(_mm256_loadu_ps(k1 + c), _mm256_loadu_ps(o + c),
                                                _mm256_fmadd_ps(_mm256_loadu_ps(k2 + c), _mm256_loadu_ps(y + c), _mm256_loadu_ps(k3 + c))));
    for (; c < C; c++) o[c] = k1[c] * o[c] + k2[c] * y[c] + k3[c];
}
AVX2 static void bwd2_plane_v(float* o, const float* y, float k1, float k2, float k3, i64 n) {
    i64 i = 0; __m256 v1 = _mm256_set1_ps(k1), v2 = _mm256_set1_ps(k2), v3 = _mm256_set1_ps(k3);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(o + i, _mm256_fmadd_ps(v1, _mm256_loadu_ps(o + i), _mm256_fmadd_ps(v2, _mm256_loadu_ps(y + i), v3)));
    for (; i < n; i++) o[i] = k1 * o[i] + k2 * y[i] + k3;
}
#ifdef EFF_X86
AVX2 static void act_span_v(const float* x, float* o, i64 s, i64 e, int act, i64* next) {
    i64 i = s;
    for (; i + 8 <= e; i += 8) _mm256_storeu_ps(o + i, act_v(_mm256_loadu_ps(x + i), act));
    *next = i;
}
AVX2 static void gelu_bwd_span_v(const float* g, const float* h, float* dh, float* a, i64 s, i64 e, i64* next) {
    i64 i = s;
    for (; i + 8 <= e; i += 8) {
        __m256 av;
        const __m256 d = gelu_both_v(_mm256_loadu_ps(h + i), &av);
        if (a) _mm256_storeu_ps(a + i, av);
        _mm256_storeu_ps(dh + i, _mm256_mul_ps(_mm256_loadu_ps(g + i), d));
    }
    *next = i;
}
#endif
#endif

static void apply_row(const float* y, float* o, const float* sc, const float* sh, i64 C, int act) {
#ifdef EFF_X86
    if (have_avx2()) { apply_row_v(y, o, sc, sh, C, act); return; }
#endif
    for (i64 c = 0; c < C; c++) o[c] = act_s(y[c] * sc[c] + sh[c], act);
}
static void apply_plane(const float* y, float* o, float sc, float sh, i64 n, int act) {
#ifdef EFF_X86
    if (have_avx2()) { apply_plane_v(y, o, sc, sh, n, act); return; }
#endif
    for (i64 i = 0; i < n; i++) o[i] = act_s(y[i] * sc + sh, act);
}
static void bwd1_row(const float* g, const float* y, float* o, const float* sc, const float* sh, const float* mu,
                     float* a1, float* a2, i64 C, int act) {
#ifdef EFF_X86
    if (have_avx2()) { bwd1_row_v(g, y, o, sc, sh, mu, a1, a2, C, act); return; }
#endif
    for (i64 c = 0; c < C; c++) {
        float gz = g[c] * dact_s(y[c] * sc[c] + sh[c], act);
        o[c] = gz; a1[c] += gz; a2[c] += gz * (y[c] - mu[c]);
    }
}
static void bwd1_plane(const float* g, const float* y, float* o, float sc, float sh, float mu, i64 n, int act,
                       double* s1, double* s2) {
#ifdef EFF_X86
    if (have_avx2()) { bwd1_plane_v(g, y, o, sc, sh, mu, n, act, s1, s2); return; }
#endif
    for (i64 i = 0; i < n; i++) {
        float gz = g[i] * dact_s(y[i] * sc + sh, act);
        o[i] = gz; *s1 += gz; *s2 += (double)gz * (y[i] - mu);
    }
}
static void stats_row(const float* y, float* a1, float* a2, i64 C) {
#ifdef EFF_X86
    if (have_avx2()) { stats_row_v(y, a1, a2, C); return; }
#endif
    for (i64 c = 0; c < C; c++) { a1[c] += y[c]; a2[c] += y[c] * y[c]; }
}
static void stats_plane(const float* y, i64 n, double* s1, double* s2) {
#ifdef EFF_X86
    if (have_avx2()) { stats_plane_v(y, n, s1, s2); return; }
#endif
    for (i64 i = 0; i < n; i++) { *s1 += y[i]; *s2 += (double)y[i] * y[i]; }
}
static void bwd2_row(float* o, const float* y, const float* k1, const float* k2, const float* k3, i64 C) {
#ifdef EFF_X86
    if (have_avx2()) { bwd2_row_v(o, y, k1, k2, k3, C); return; }
#endif
    for (i64 c = 0; c < C; c++) o[c] = k1[c] * o[c] + k2[c] * y[c] + k3[c];
}
static void bwd2_plane(float* o, const float* y, float k1, float k2, float k3, i64 n) {
#ifdef EFF_X86
    if (have_avx2()) { bwd2_plane_v(o, y, k1, k2, k3, n); return; }
#endif
    for (i64 i = 0; i < n; i++) o[i] = k1 * o[i] + k2 * y[i] + k3;
}

#define ROW_BLOCK 64  /* rows summed in float before they are added to the double totals */

/* Per-channel sums s1 = sum x1, s2 = sum x2 over a channels-last tensor, by a row kernel. */
typedef void (*row_reduce_fn)(i64 r, float* a1, float* a2, const void* ctx);

static void reduce_rows(i64 rows, i64 C, int nt, row_reduce_fn fn, const void* ctx, double* s1, double* s2) {
    int T = nt > 0 ? nt : 1;
    double* part = (double*)calloc((size_t)(2 * T * C), sizeof(double));
    #pragma omp parallel num_threads(T)
    {
        int t = omp_get_thread_num(), TT = omp_get_num_threads();
        float* f = (float*)malloc(sizeof(float) * 2 * C);
        double* p1 = part + (size_t)t * 2 * C; double* p2 = p1 + C;
        i64 per = (rows + TT - 1) / TT, r0 = t * per, r1 = r0 + per < rows ? r0 + per : rows;
        for (i64 r = r0; r < r1;) {
            i64 end = r + ROW_BLOCK < r1 ? r + ROW_BLOCK : r1;
            memset(f, 0, sizeof(float) * 2 * C);
            for (; r < end; r++) fn(r, f, f + C, ctx);
            for (i64 c = 0; c < C; c++) { p1[c] += f[c]; p2[c] += f[C + c]; }
        }
        free(f);
    }
    for (i64 c = 0; c < C; c++) { s1[c] = 0; s2[c] = 0; }
    for (int t = 0; t < T; t++)
        for (i64 c = 0; c < C; c++) { s1[c] += part[(size_t)t * 2 * C + c]; s2[c] += part[(size_t)t * 2 * C + C + c]; }
    free(part);
}

typedef struct { const float* y; const float* g; float* o; const float* sc; const float* sh; const float* mu; i64 C; int act; } rowctx;
static void stats_rowfn(i64 r, float* a1, float* a2, const void* p) {
    const rowctx* q = (const rowctx*)p; stats_row(q->y + r * q->C, a1, a2, q->C);
}
static void bwd1_rowfn(i64 r, float* a1, float* a2, const void* p) {
    const rowctx* q = (const rowctx*)p;
    bwd1_row(q->g + r * q->C, q->y + r * q->C, q->o + r * q->C, q->sc, q->sh, q->mu, a1, a2, q->C, q->act);
}

/* Training BatchNorm + activation, forward.  y: (outer, C, inner) with inner == 1 for
 * channels-last.  Writes out, save_mean, save_invstd; updates running stats like
 * nn.BatchNorm2d (unbiased variance); weight/bias/running may be NULL. */
void eff_bn_act_fwd(const float* y, float* out, i64 outer, i64 C, i64 inner, const float* w, const float* b,
                    float* rmean, float* rvar, double momentum, double eps, float* save_mean, float* save_invstd,
                    int act, int nt) {
    i64 count = outer * inner;
    double* s1 = (double*)malloc(sizeof(double) * 2 * C); double* s2 = s1 + C;
    float* sc = (float*)malloc(sizeof(float) * 2 * C); float* sh = sc + C;
    if (inner == 1) {
        rowctx q = {y, NULL, NULL, NULL, NULL, NULL, C, act};
        reduce_rows(outer, C, nt, stats_rowfn, &q, s1, s2);
    } else {
        for (i64 c = 0; c < C; c++) { s1[c] = 0; s2[c] = 0; }
        #pragma omp parallel for num_threads(nt) schedule(static)
        for (i64 c = 0; c < C; c++)
            for (i64 n = 0; n < outer; n++) stats_plane(y + (n * C + c) * inner, inner, s1 + c, s2 + c);
    }
    for (i64 c = 0; c < C; c++) {
        double mean = s1[c] / count, var = s2[c] / count - mean * mean;
        if (var < 0) var = 0;
        double invstd = 1.0 / sqrt(var + eps);
        save_mean[c] = (float)mean; save_invstd[c] = (float)invstd;
        double g = w ? w[c] : 1.0, bb = b ? b[c] : 0.0;
        sc[c] = (float)(g * invstd); sh[c] = (float)(bb - mean * g * invstd);
        if (rmean) rmean[c] = (float)((1.0 - momentum) * rmean[c] + momentum * mean);
        if (rvar) rvar[c] = (float)((1.0 - momentum) * rvar[c] + momentum * var * count / (count > 1 ? count - 1 : 1));
    }
    if (inner == 1) {
        #pragma omp parallel for num_threads(nt) schedule(static)
        for (i64 r = 0; r < outer; r++) apply_row(y + r * C, out + r * C, sc, sh, C, act);
    } else {
        #pragma omp parallel for num_threads(nt) schedule(static)
        for (i64 p = 0; p < outer * C; p++) apply_plane(y + p * inner, out + p * inner, sc[p % C], sh[p % C], inner, act);
    }
    free(s1); free(sc);
}

/* Backward of eff_bn_act_fwd (training statistics): dx into dx (may not alias g or y),
 * dw/db (may be NULL).  Recomputes the BN output from y, mean and invstd. */
void eff_bn_act_bwd(const float* g, const float* y, float* dx, i64 outer, i64 C, i64 inner, const float* w,
                    const float* b, const float* mean, const float* invstd, float* dw, float* db, int act, int nt) {
    i64 count = outer * inner;
    double* s1 = (double*)malloc(sizeof(double) * 2 * C); double* s2 = s1 + C;
    float* k = (float*)malloc(sizeof(float) * 5 * C);
    float *sc = k, *sh = k + C, *k1 = k + 2 * C, *k2 = k + 3 * C, *k3 = k + 4 * C;
    for (i64 c = 0; c < C; c++) {
        double gm = w ? w[c] : 1.0, bb = b ? b[c] : 0.0;
        sc[c] = (float)(gm * invstd[c]); sh[c] = (float)(bb - (double)mean[c] * gm * invstd[c]);
    }
    if (inner == 1) {
        rowctx q = {y, g, dx, sc, sh, mean, C, act};
        reduce_rows(outer, C, nt, bwd1_rowfn, &q, s1, s2);
    } else {
        for (i64 c = 0; c < C; c++) { s1[c] = 0; s2[c] = 0; }
        #pragma omp parallel for num_threads(nt) schedule(static)
        for (i64 c = 0; c < C; c++)
            for (i64 n = 0; n < outer; n++) {
                i64 off = (n * C + c) * inner;
                bwd1_plane(g + off, y + off, dx + off, sc[c], sh[c], mean[c], inner, act, s1 + c, s2 + c);
            }
    }
    for (i64 c = 0; c < C; c++) {
        double is = invstd[c], gm = w ? w[c] : 1.0;
        double a = gm * is, bcoef = -a * is * is * s2[c] / count;
        k1[c] = (float)a; k2[c] = (float)bcoef; k3[c] = (float)(-a * s1[c] / count - bcoef * mean[c]);
        if (dw) dw[c] = (float)(s2[c] * is);
        if (db) db[c] = (float)s1[c];
    }
    if (inner == 1) {
        #pragma omp parallel for num_threads(nt) schedule(static)
        for (i64 r = 0; r < outer; r++) bwd2_row(dx + r * C, y + r * C, k1, k2, k3, C);
    } else {
        #pragma omp parallel for num_threads(nt) schedule(static)
        for (i64 p = 0; p < outer * C; p++) bwd2_plane(dx + p * inner, y + p * inner, k1[p % C], k2[p % C], k3[p % C], inner);
    }
    free(s1); free(k);
}

/* out = act(x) for any DW act code (out may alias x). */
void eff_act(const float* x, float* out, i64 n, int act, int nt) {
    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        i64 per = ((n + T - 1) / T + 15) & ~(i64)15, s = t * per, e = s + per < n ? s + per : n, i = s;
#ifdef EFF_X86
        if (have_avx2()) act_span_v(x, out, s, e, act, &i);
#endif
        for (; i < e; i++) out[i] = act_s(x[i], act);
    }
}

/* GELU's backward in one pass over h: dh = g * GELU'(h) (dh may alias g) and, where a is not
 * NULL, a = GELU(h), the value a memory-efficient MLP recomputes for its next linear's weight
 * gradient (layers.memory._ActLinear). */
void eff_gelu_bwd(const float* g, const float* h, float* dh, float* a, i64 n, int nt) {
    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        i64 per = ((n + T - 1) / T + 15) & ~(i64)15, s = t * per, e = s + per < n ? s + per : n, i = s;
#ifdef EFF_X86
        if (have_avx2()) gelu_bwd_span_v(g, h, dh, a, s, e, &i);
#endif
        for (; i < e; i++) {
            const float x = h[i];
            if (a) a[i] = gelu_s(x);
            dh[i] = g[i] * dgelu_s(x);
        }
    }
}

/* ---- depthwise convolution backward, channels-last (x: N*H*W*C, dy: N*OH*OW*C) ----
 * Weight taps come transposed as wt[K*K][C] so that 8 channels load as one vector.  dx is
 * gathered per input pixel (each element written once, no atomics); dw is summed per output
 * row in float and accumulated per thread in double, then reduced.  oneDNN's depthwise
 * backward costs ~3.8x its forward on B0 here; these loops stream each row once per tap. */
static inline i64 ceil_div_nonneg(i64 a, i64 b) { return a <= 0 ? 0 : (a + b - 1) / b; }

#ifdef EFF_X86
/* o[c] = act(b[c] + sum_t src[t][c] * ws[t][c]) (b NULL: 0): one output pixel of the forward
 * (src = input pixels under the taps) or one input pixel of the input gradient (src = output
 * gradients, act identity).  Four accumulator chains of 8 channels hide the FMA latency. */
AVX2 static void dw_gather_pixel_v(float* o, const float* const* src, const float* const* ws, int nt_, i64 C,
                                   const float* b, int act) {
    i64 c = 0;
    for (; c + 32 <= C; c += 32) {
        __m256 a0, a1, a2, a3;
        if (b) { a0 = _mm256_loadu_ps(b + c); a1 = _mm256_loadu_ps(b + c + 8); a2 = _mm256_loadu_ps(b + c + 16); a3 = _mm256_loadu_ps(b + c + 24); }
        else { a0 = _mm256_setzero_ps(); a1 = a0; a2 = a0; a3 = a0; }
        for (int t = 0; t < nt_; t++) {
            const float* d = src[t] + c; const float* w = ws[t] + c;
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(d), _mm256_loadu_ps(w), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(d + 8), _mm256_loadu_ps(w + 8), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(d + 16), _mm256_loadu_ps(w + 16), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(d + 24), _mm256_loadu_ps(w + 24), a3);
        }
        _mm256_storeu_ps(o + c, act_v(a0, act)); _mm256_storeu_ps(o + c + 8, act_v(a1, act));
        _mm256_storeu_ps(o + c + 16, act_v(a2, act)); _mm256_storeu_ps(o + c + 24, act_v(a3, act));
    }
    for (; c + 8 <= C; c += 8) {
        __m256 a = b ? _mm256_loadu_ps(b + c) : _mm256_setzero_ps();
        for (int t = 0; t < nt_; t++) a = _mm256_fmadd_ps(_mm256_loadu_ps(src[t] + c), _mm256_loadu_ps(ws[t] + c), a);
        _mm256_storeu_ps(o + c, act_v(a, act));
    }
    for (; c < C; c++) {
        float a = b ? b[c] : 0.0f;
        for (int t = 0; t < nt_; t++) a += src[t][c] * ws[t][c];
        o[c] = act_s(a, act);
    }
}
/* Interior output pixels [lo, hi) of one output row (every tap inside the image), four pixels
 * at a time: each weight vector is loaded once for four FMAs, and 4 pixels x 16 channels keep
 * eight accumulator chains in flight.  xr[i]: input row of the i-th valid kernel row kh[i]. */
AVX2 static i64 dw_fwd_row_interior_v(float* yrow, const float* const* xr, const int* kh, int nkh, const float* wt,
                                      const float* b, i64 lo, i64 hi, i64 C, int K, int S, int PW, int act) {
    const i64 sx = (i64)S * C;
    i64 ow = lo;
    for (; ow + 4 <= hi; ow += 4) {
        float* o = yrow + ow * C;
        i64 c = 0;
        for (; c + 16 <= C; c += 16) {
            __m256 b0 = b ? _mm256_loadu_ps(b + c) : _mm256_setzero_ps(), b1 = b ? _mm256_loadu_ps(b + c + 8) : b0;
            __m256 p0 = b0, p1 = b0, p2 = b0, p3 = b0, q0 = b1, q1 = b1, q2 = b1, q3 = b1;
            for (int i = 0; i < nkh; i++) {
                const float* wr = wt + (i64)kh[i] * K * C + c;
                const float* xp = xr[i] + (ow * S - PW) * C + c;
                for (int kw = 0; kw < K; kw++, wr += C, xp += C) {
                    __m256 w0 = _mm256_loadu_ps(wr), w1 = _mm256_loadu_ps(wr + 8);
                    p0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp), w0, p0);
                    q0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp + 8), w1, q0);
                    p1 = _mm256_fmadd_ps(_mm256_loadu_ps(xp + sx), w0, p1);
                    q1 = _mm256_fmadd_ps(_mm256_loadu_ps(xp + sx + 8), w1, q1);
                    p2 = _mm256_fmadd_ps(_mm256_loadu_ps(xp + 2 * sx), w0, p2);
                    q2 = _mm256_fmadd_ps(_mm256_loadu_ps(xp + 2 * sx + 8), w1, q2);
                    p3 = _mm256_fmadd_ps(_mm256_loadu_ps(xp + 3 * sx), w0, p3);
                    q3 = _mm256_fmadd_ps(_mm256_loadu_ps(xp + 3 * sx + 8), w1, q3);
                }
            }
            _mm256_storeu_ps(o + c, act_v(p0, act)); _mm256_storeu_ps(o + c + 8, act_v(q0, act));
            _mm256_storeu_ps(o + C + c, act_v(p1, act)); _mm256_storeu_ps(o + C + c + 8, act_v(q1, act));
            _mm256_storeu_ps(o + 2 * C + c, act_v(p2, act)); _mm256_storeu_ps(o + 2 * C + c + 8, act_v(q2, act));
            _mm256_storeu_ps(o + 3 * C + c, act_v(p3, act)); _mm256_storeu_ps(o + 3 * C + c + 8, act_v(q3, act));
        }
        for (; c + 8 <= C; c += 8) {
            __m256 p0 = b ? _mm256_loadu_ps(b + c) : _mm256_setzero_ps(), p1 = p0, p2 = p0, p3 = p0;
            for (int i = 0; i < nkh; i++) {
                const float* wr = wt + (i64)kh[i] * K * C + c;
                const float* xp = xr[i] + (ow * S - PW) * C + c;
                for (int kw = 0; kw < K; kw++, wr += C, xp += C) {
                    __m256 w0 = _mm256_loadu_ps(wr);
                    p0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp), w0, p0);
                    p1 = _mm256_fmadd_ps(_mm256_loadu_ps(xp + sx), w0, p1);
                    p2 = _mm256_fmadd_ps(_mm256_loadu_ps(xp + 2 * sx), w0, p2);
                    p3 = _mm256_fmadd_ps(_mm256_loadu_ps(xp + 3 * sx), w0, p3);
                }
            }
            _mm256_storeu_ps(o + c, act_v(p0, act)); _mm256_storeu_ps(o + C + c, act_v(p1, act));
            _mm256_storeu_ps(o + 2 * C + c, act_v(p2, act)); _mm256_storeu_ps(o + 3 * C + c, act_v(p3, act));
        }
        for (; c < C; c++)
            for (int j = 0; j < 4; j++) {
                float a = b ? b[c] : 0.0f;
                for (int i = 0; i < nkh; i++)
                    for (int kw = 0; kw < K; kw++)
                        a += xr[i][((ow + j) * S - PW + kw) * C + c] * wt[((i64)kh[i] * K + kw) * C + c];
                o[j * C + c] = act_s(a, act);
            }
    }
    return ow;  /* pixels from here on are left to the per-pixel gather */
}
/* The same with AVX-512: 4 pixels x 32 channels (eight 16-lane accumulator chains); the channels
 * past the last multiple of 32 by masked loads and stores, so no tail loop */
#define DW_FMA4(w, xp, k) do { \
    p0##k = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m##k, xp), w, p0##k); \
    p1##k = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m##k, xp + sx), w, p1##k); \
    p2##k = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m##k, xp + 2 * sx), w, p2##k); \
    p3##k = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m##k, xp + 3 * sx), w, p3##k); } while (0)
AVX512 static i64 dw_fwd_row_interior_512(float* yrow, const float* const* xr, const int* kh, int nkh, const float* wt,
                                          const float* b, i64 lo, i64 hi, i64 C, int K, int S, int PW, int act) {
    const i64 sx = (i64)S * C;
    i64 ow = lo;
    for (; ow + 4 <= hi; ow += 4) {
        float* o = yrow + ow * C;
        for (i64 c = 0; c < C; c += 32) {
            const __mmask16 ma = lanes16(C - c), mb = lanes16(C - c - 16);
            const __m512 ba = b ? _mm512_maskz_loadu_ps(ma, b + c) : _mm512_setzero_ps(),
                         bb = b ? _mm512_maskz_loadu_ps(mb, b + c + 16) : _mm512_setzero_ps();
            __m512 p0a = ba, p1a = ba, p2a = ba, p3a = ba, p0b = bb, p1b = bb, p2b = bb, p3b = bb;
            for (int i = 0; i < nkh; i++) {
                const float* wr = wt + (i64)kh[i] * K * C + c;
                const float* xp = xr[i] + (ow * S - PW) * C + c;
                for (int kw = 0; kw < K; kw++, wr += C, xp += C) {
                    const __m512 wa = _mm512_maskz_loadu_ps(ma, wr), wb = _mm512_maskz_loadu_ps(mb, wr + 16);
                    DW_FMA4(wa, xp, a);
                    DW_FMA4(wb, xp + 16, b);
                }
            }
            _mm512_mask_storeu_ps(o + c, ma, act16(p0a, act)); _mm512_mask_storeu_ps(o + c + 16, mb, act16(p0b, act));
            _mm512_mask_storeu_ps(o + C + c, ma, act16(p1a, act));
            _mm512_mask_storeu_ps(o + C + c + 16, mb, act16(p1b, act));
            _mm512_mask_storeu_ps(o + 2 * C + c, ma, act16(p2a, act));
            _mm512_mask_storeu_ps(o + 2 * C + c + 16, mb, act16(p2b, act));
            _mm512_mask_storeu_ps(o + 3 * C + c, ma, act16(p3a, act));
            _mm512_mask_storeu_ps(o + 3 * C + c + 16, mb, act16(p3b, act));
        }
    }
    return ow;
}
#undef DW_FMA4
/* A whole output row, eight pixels at a time, 16 channels a step, for the common kernels (3x3,
 * 5x5; stride 1 or 2), with K and S known to the compiler.  Input-stationary: for each kernel
 * row, every input pixel under the block is loaded once and multiplied into each of the block's
 * outputs it reaches (K of them at stride 1), with the row's K weight vectors in registers; the
 * 4-pixel code above loads an input vector for every multiply-add, and border pixels go through
 * the per-pixel gather.  Here input columns outside the image are skipped (zero padding), so the
 * borders take the same path: on 7x7 and 14x14 maps most pixels are border pixels for a 5x5
 * kernel.  CPUs that split a 512-bit load in two (AMD Zen 4) ran the 4-pixel code load-bound.
 * Each output still sums its taps in (kernel row, kernel column) order from the bias, skipping
 * those outside the image, so the results equal the 4-pixel, gather and AVX2 code bit for bit. */
#define DW_UR 8
/* one block of eight output pixels (np of them stored) at input column iw0; CHECK 0 where every
 * input column under the block lies inside the image (no tests in the loop) */
__attribute__((always_inline)) AVX512 static inline void dw_block8_512(
        float* o, const float* const* xr, const int* kh, int nkh, const float* wt, const float* b, i64 W, i64 iw0,
        int np, i64 C, const int K, const int S, const int CHECK, int act) {
    for (i64 c = 0; c < C; c += 16) {
        const __mmask16 m = lanes16(C - c);
        const __m512 bv = b ? _mm512_maskz_loadu_ps(m, b + c) : _mm512_setzero_ps();
        __m512 acc[DW_UR];
        _Pragma("GCC unroll 8") for (int p = 0; p < DW_UR; p++) acc[p] = bv;
        for (int i = 0; i < nkh; i++) {
            const float* wr = wt + (i64)kh[i] * K * C + c;
            const float* xp = xr[i] + iw0 * C + c;
            __m512 w[5];
            _Pragma("GCC unroll 5") for (int kw = 0; kw < K; kw++) w[kw] = _mm512_maskz_loadu_ps(m, wr + kw * C);
            _Pragma("GCC unroll 24") for (int j = 0; j < (DW_UR - 1) * S + K; j++) {
                if (CHECK && (iw0 + j < 0 || iw0 + j >= W)) continue;  /* zero padding, or past the row */
                const __m512 v = _mm512_maskz_loadu_ps(m, xp + j * C);
                _Pragma("GCC unroll 8") for (int p = 0; p < DW_UR; p++) {
                    const int kw = j - p * S;
                    if (kw >= 0 && kw < K) acc[p] = _mm512_fmadd_ps(v, w[kw], acc[p]);
                }
            }
        }
        _Pragma("GCC unroll 8") for (int p = 0; p < DW_UR; p++)
            if (p < np) _mm512_mask_storeu_ps(o + p * C + c, m, act16(acc[p], act));
    }
}
__attribute__((always_inline)) AVX512 static inline void dw_row8_512(
        float* yrow, const float* const* xr, const int* kh, int nkh, const float* wt, const float* b, i64 W,
        i64 OW, i64 C, const int K, const int S, int PW, int act) {
    for (i64 ow = 0; ow < OW; ow += DW_UR) {
        const int np = OW - ow < DW_UR ? (int)(OW - ow) : DW_UR;
        const i64 iw0 = ow * S - PW;
        if (iw0 >= 0 && iw0 + (DW_UR - 1) * S + K <= W)
            dw_block8_512(yrow + ow * C, xr, kh, nkh, wt, b, W, iw0, np, C, K, S, 0, act);
        else
            dw_block8_512(yrow + ow * C, xr, kh, nkh, wt, b, W, iw0, np, C, K, S, 1, act);
    }
}
/* dw_row8_512 where it timed faster than the 4-pixel code (AMD Zen 4, 2 threads, batch 8, B0's and
 * MobileNetV3's shapes, min of 40 alternating calls): 5x5 kernels 1.3-2.5x (most on 7x7 and 14x14
 * maps, where the borders dominate), 3x3 stride 1 on rows up to 32 pixels 1.1-1.6x; 3x3 on larger
 * rows 0.9-1.05x (memory-bound; 16-channel steps read half cache lines) and 3x3 stride 2 0.95x
 * (each input feeds one or two outputs) stay on the 4-pixel code.  0 where it did not run. */
static int dw_blocks_fit(int K, int S, i64 OW) { return (K == 3 && S == 1 && OW <= 32) || (K == 5 && S <= 2); }
AVX512 static int dw_fwd_row_blocks_512(float* yrow, const float* const* xr, const int* kh, int nkh, const float* wt,
                                        const float* b, i64 W, i64 OW, i64 C, int K, int S, int PW, int act) {
    if (!dw_blocks_fit(K, S, OW)) return 0;
    if (K == 3) dw_row8_512(yrow, xr, kh, nkh, wt, b, W, OW, C, 3, 1, PW, act);
    else if (S == 1) dw_row8_512(yrow, xr, kh, nkh, wt, b, W, OW, C, 5, 1, PW, act);
    else dw_row8_512(yrow, xr, kh, nkh, wt, b, W, OW, C, 5, 2, PW, act);
    return 1;
}
AVX2 static void add_rows_v(float* acc, const float* y, i64 n, i64 C) {  /* acc[c] += sum_j y[j*C + c] */
    for (i64 j = 0; j < n; j++) {
        const float* r = y + j * C; i64 c = 0;
        for (; c + 8 <= C; c += 8) _mm256_storeu_ps(acc + c, _mm256_add_ps(_mm256_loadu_ps(acc + c), _mm256_loadu_ps(r + c)));
        for (; c < C; c++) acc[c] += r[c];
    }
}
/* acc[c] += sum_{j<n} d[j*sd + c] * x[j*sx + c].  Same 4-chain unroll as dw_gather_pixel_v, written
 * out: a shared helper on an __m256[4] measured ~25% slower here (gcc -O2 kept it in memory). */
AVX2 static void dw_dot_rows_v(float* acc, const float* d, const float* x, i64 n, i64 sd, i64 sx, i64 C) {
    i64 c = 0;
    for (; c + 32 <= C; c += 32) {
        __m256 a0 = _mm256_loadu_ps(acc + c), a1 = _mm256_loadu_ps(acc + c + 8);
        __m256 a2 = _mm256_loadu_ps(acc + c + 16), a3 = _mm256_loadu_ps(acc + c + 24);
        for (i64 j = 0; j < n; j++) {
            const float* dd = d + j * sd + c; const float* xx = x + j * sx + c;
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(dd), _mm256_loadu_ps(xx), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(dd + 8), _mm256_loadu_ps(xx + 8), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(dd + 16), _mm256_loadu_ps(xx + 16), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(dd + 24), _mm256_loadu_ps(xx + 24), a3);
        }
        _mm256_storeu_ps(acc + c, a0); _mm256_storeu_ps(acc + c + 8, a1);
        _mm256_storeu_ps(acc + c + 16, a2); _mm256_storeu_ps(acc + c + 24, a3);
    }
    for (; c + 8 <= C; c += 8) {
        __m256 a = _mm256_loadu_ps(acc + c);
        for (i64 j = 0; j < n; j++) a = _mm256_fmadd_ps(_mm256_loadu_ps(d + j * sd + c), _mm256_loadu_ps(x + j * sx + c), a);
        _mm256_storeu_ps(acc + c, a);
    }
    for (; c < C; c++) { float a = acc[c]; for (i64 j = 0; j < n; j++) a += d[j * sd + c] * x[j * sx + c]; acc[c] = a; }
}
#endif

static void dw_gather_pixel(float* o, const float* const* src, const float* const* ws, int nt_, i64 C,
                            const float* b, int act) {
#ifdef EFF_X86
    if (have_avx2()) { dw_gather_pixel_v(o, src, ws, nt_, C, b, act); return; }
#endif
    for (i64 c = 0; c < C; c++) {
        float a = b ? b[c] : 0.0f;
        for (int t = 0; t < nt_; t++) a += src[t][c] * ws[t][c];
        o[c] = act_s(a, act);
    }
}
static void add_rows(float* acc, const float* y, i64 n, i64 C) {
#ifdef EFF_X86
    if (have_avx2()) { add_rows_v(acc, y, n, C); return; }
#endif
    for (i64 j = 0; j < n; j++) for (i64 c = 0; c < C; c++) acc[c] += y[j * C + c];
}
static void dw_dot_rows(float* acc, const float* d, const float* x, i64 n, i64 sd, i64 sx, i64 C) {
#ifdef EFF_X86
    if (have_avx2()) { dw_dot_rows_v(acc, d, x, n, sd, sx, C); return; }
#endif
    for (i64 c = 0; c < C; c++) { float a = acc[c]; for (i64 j = 0; j < n; j++) a += d[j * sd + c] * x[j * sx + c]; acc[c] = a; }
}

#define DW_MAX_TAPS 121  /* kernels up to 11x11 */

void eff_dw_bwd_input(const float* dy, const float* wt, float* dx, i64 N, i64 H, i64 W, i64 C, i64 OH, i64 OW,
                      int K, int S, int PH, int PW, int nt) {
    /* strides 1 and 2 (all of EfficientNet's) divide by shifting: an integer division per tap
     * per pixel would cost more than the 8-wide FMAs it guards */
    const int shift = S == 1 ? 0 : S == 2 ? 1 : S == 4 ? 2 : -1;
    #pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
    for (i64 n = 0; n < N; n++)
        for (i64 ih = 0; ih < H; ih++) {
            const float* dys[DW_MAX_TAPS]; const float* ws[DW_MAX_TAPS];
            for (i64 iw = 0; iw < W; iw++) {
                int taps = 0;
                for (int kh = 0; kh < K; kh++) {
                    i64 a = ih + PH - kh;
                    if (a < 0) continue;
                    if (shift >= 0 ? (a & (S - 1)) != 0 : a % S != 0) continue;
                    i64 oh = shift >= 0 ? a >> shift : a / S;
                    if (oh >= OH) continue;
                    for (int kw = 0; kw < K; kw++) {
                        i64 b = iw + PW - kw;
                        if (b < 0) continue;
                        if (shift >= 0 ? (b & (S - 1)) != 0 : b % S != 0) continue;
                        i64 ow = shift >= 0 ? b >> shift : b / S;
                        if (ow >= OW) continue;
                        dys[taps] = dy + ((n * OH + oh) * OW + ow) * C;
                        ws[taps] = wt + (i64)(kh * K + kw) * C;
                        taps++;
                    }
                }
                dw_gather_pixel(dx + ((n * H + ih) * W + iw) * C, dys, ws, taps, C, NULL, ACT_IDENTITY);
            }
        }
}

void eff_dw_bwd_weight(const float* dy, const float* x, double* dwt, i64 N, i64 H, i64 W, i64 C, i64 OH, i64 OW,
                       int K, int S, int PH, int PW, int nt) {
    const i64 KK = (i64)K * K;
    memset(dwt, 0, sizeof(double) * KK * C);
    #pragma omp parallel num_threads(nt)
    {
        double* acc = (double*)calloc((size_t)(KK * C), sizeof(double));
        float* row = (float*)malloc(sizeof(float) * (size_t)(KK * C));
        #pragma omp for collapse(2) schedule(static)
        for (i64 n = 0; n < N; n++)
            for (i64 oh = 0; oh < OH; oh++) {
                memset(row, 0, sizeof(float) * (size_t)(KK * C));
                const float* d = dy + (n * OH + oh) * OW * C;
                for (int kh = 0; kh < K; kh++) {
                    i64 ih = oh * S - PH + kh;
                    if (ih < 0 || ih >= H) continue;
                    const float* xr = x + (n * H + ih) * W * C;
                    for (int kw = 0; kw < K; kw++) {
                        /* ow such that 0 <= ow*S - PW + kw < W */
                        i64 lo = ceil_div_nonneg(PW - kw, S), hi = (W - 1 + PW - kw) / S + 1;
                        if (W - 1 + PW - kw < 0) continue;
                        if (hi > OW) hi = OW;
                        if (hi <= lo) continue;
                        dw_dot_rows(row + (kh * K + kw) * C, d + lo * C, xr + (lo * S - PW + kw) * C, hi - lo,
                                    C, S * C, C);
                    }
                }
                for (i64 i = 0; i < KK * C; i++) acc[i] += row[i];
            }
        #pragma omp critical
        for (i64 i = 0; i < KK * C; i++) dwt[i] += acc[i];
        free(acc); free(row);
    }
}

/* ---- depthwise convolution forward for inference, channels-last, bias and activation fused;
 * with sums != NULL also sums[n][c] = sum over the output pixels of image n (the squeeze of a
 * following squeeze-excite, taken while each output row is still in cache instead of in
 * another pass over the block's largest tensor). */
/* One output row of the inference depthwise conv: xrow[kh] is the input row under kernel row kh
 * (NULL where it lies outside the image).  Interior pixels four at a time, borders tap by tap. */
static int dw_blocks = 1;  /* 0: the 4-pixel code only (A/B timing, tests) */
static int dw_last_blocked = -1;  /* whether the last eff_dw_fwd ran the 8-pixel blocks (tests) */
int eff_dw_set_blocks(int on) { const int old = dw_blocks; dw_blocks = on; return old; }
int eff_dw_last_blocked(void) { return dw_last_blocked; }
static void dw_fwd_row(float* yrow, const float* const* xrow, const float* wt, const float* bias, i64 W, i64 C,
                       i64 OW, int K, int S, int PW, int act) {
    i64 lo = OW, hi = OW;  /* interior columns: every tap inside the image */
#ifdef EFF_X86
    if (have_avx2()) {
        const float* xr[11]; int kh_[11], nkh = 0;
        for (int kh = 0; kh < K; kh++)
            if (xrow[kh]) { xr[nkh] = xrow[kh]; kh_[nkh++] = kh; }
        lo = ceil_div_nonneg(PW, S);
        hi = W - K + PW >= 0 ? (W - K + PW) / S + 1 : 0;
        if (hi > OW) hi = OW;
        if (hi < lo) hi = lo;
        if (avx512()) {
            if (dw_blocks && dw_fwd_row_blocks_512(yrow, xr, kh_, nkh, wt, bias, W, OW, C, K, S, PW, act)) return;
            hi = dw_fwd_row_interior_512(yrow, xr, kh_, nkh, wt, bias, lo, hi, C, K, S, PW, act);
        } else {
            hi = dw_fwd_row_interior_v(yrow, xr, kh_, nkh, wt, bias, lo, hi, C, K, S, PW, act);
        }
    }
#endif
    const float* xs[DW_MAX_TAPS]; const float* ws[DW_MAX_TAPS];
    for (i64 ow = 0; ow < OW; ow++) {
        if (ow == lo && hi > lo) { ow = hi - 1; continue; }  /* [lo, hi) done above */
        int taps = 0;
        for (int kh = 0; kh < K; kh++) {
            if (!xrow[kh]) continue;
            for (int kw = 0; kw < K; kw++) {
                i64 iw = ow * S - PW + kw;
                if (iw < 0 || iw >= W) continue;
                xs[taps] = xrow[kh] + iw * C;
                ws[taps] = wt + (i64)(kh * K + kw) * C;
                taps++;
            }
        }
        dw_gather_pixel(yrow + ow * C, xs, ws, taps, C, bias, act);
    }
}

void eff_dw_fwd(const float* x, const float* wt, const float* bias, float* y, float* sums, i64 N, i64 H, i64 W,
                i64 C, i64 OH, i64 OW, int K, int S, int PH, int PW, int act, int nt) {
    if (sums) memset(sums, 0, sizeof(float) * (size_t)(N * C));
#ifdef EFF_X86
    dw_last_blocked = have_avx2() && avx512() && dw_blocks && dw_blocks_fit(K, S, OW);
#else
    dw_last_blocked = 0;
#endif
    #pragma omp parallel num_threads(nt)
    {
        float* acc = sums ? (float*)calloc((size_t)(N * C), sizeof(float)) : NULL;
        #pragma omp for collapse(2) schedule(static)
        for (i64 n = 0; n < N; n++)
            for (i64 oh = 0; oh < OH; oh++) {
                float* yrow = y + (n * OH + oh) * OW * C;
                const float* xrow[11];
                for (int kh = 0; kh < K; kh++) {
                    i64 ih = oh * S - PH + kh;
                    xrow[kh] = ih >= 0 && ih < H ? x + (n * H + ih) * W * C : NULL;
                }
                dw_fwd_row(yrow, xrow, wt, bias, W, C, OW, K, S, PW, act);
                if (acc) add_rows(acc + n * C, yrow, OW, C);
            }
        if (acc) {
            #pragma omp critical
            for (i64 i = 0; i < N * C; i++) sums[i] += acc[i];
            free(acc);
        }
    }
}

/* ---- squeeze-excite for inference: gates from the pooled means, then x *= gate in place ----
 * g[n] = gate(W2 act(W1 mean[n] + b1) + b2); x is channels-last (N*HW rows x C).  One call
 * instead of seven small PyTorch ops (two linears, act, gate, broadcast, multiply), whose
 * dispatch costs more than their arithmetic at batch 1 (~50 us per block here).  With
 * mean == NULL the means are taken here (one pass); with res != NULL the gated value gets the
 * residual added and out_act applied in the same pass (ResNet-RS: SE, + shortcut, ReLU: two
 * passes over the block's output instead of five). */
#ifdef EFF_X86
AVX2 static float dot_v(const float* a, const float* b, i64 n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    i64 i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float t[8]; _mm256_storeu_ps(t, _mm256_add_ps(s0, s1));
    float r = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
    for (; i < n; i++) r += a[i] * b[i];
    return r;
}
AVX2 static void scale_rows_v(float* x, const float* g, const float* res, i64 rows, i64 C, int act) {
    for (i64 j = 0; j < rows; j++) {
        float* r = x + j * C; i64 c = 0;
        if (res) {
            const float* q = res + j * C;
            for (; c + 8 <= C; c += 8)
                _mm256_storeu_ps(r + c, flush_tiny_v(act_v(_mm256_fmadd_ps(_mm256_loadu_ps(r + c), _mm256_loadu_ps(g + c), _mm256_loadu_ps(q + c)), act)));
            for (; c < C; c++) r[c] = flush_tiny(act_s(r[c] * g[c] + q[c], act));
        } else {
            for (; c + 8 <= C; c += 8)
                _mm256_storeu_ps(r + c, flush_tiny_v(_mm256_mul_ps(_mm256_loadu_ps(r + c), _mm256_loadu_ps(g + c))));
            for (; c < C; c++) r[c] = flush_tiny(r[c] * g[c]);
        }
    }
}
#endif
static float dot(const float* a, const float* b, i64 n) {
#ifdef EFF_X86
    if (have_avx2()) return dot_v(a, b, n);
#endif
    float r = 0.0f;
    for (i64 i = 0; i < n; i++) r += a[i] * b[i];
    return r;
}
static void scale_rows(float* x, const float* g, const float* res, i64 rows, i64 C, int act) {
#ifdef EFF_X86
    if (have_avx2()) { scale_rows_v(x, g, res, rows, C, act); return; }
#endif
    for (i64 j = 0; j < rows; j++)
        for (i64 c = 0; c < C; c++)
            x[j * C + c] = flush_tiny(res ? act_s(x[j * C + c] * g[c] + res[j * C + c], act) : x[j * C + c] * g[c]);
}

/* g[i] = act(g[i]) in place, any SE_ACT code (the squeeze-excite's gate) */
#ifdef EFF_X86
AVX2 static void gate_span_v(float* g, i64 n, int act) {
    i64 i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 z = _mm256_loadu_ps(g + i);
        __m256 v;
        if (act == ACT_SIGMOID) v = sigmoid_v(z);
        else if (act == ACT_HARDSIGMOID)
            v = _mm256_min_ps(_mm256_max_ps(_mm256_fmadd_ps(z, _mm256_set1_ps(1.0f / 6.0f), _mm256_set1_ps(0.5f)),
                                            _mm256_setzero_ps()), _mm256_set1_ps(1.0f));
        else v = act_v(z, act);
        _mm256_storeu_ps(g + i, flush_tiny_v(v));
    }
    for (; i < n; i++) g[i] = flush_tiny(act_s(g[i], act));
}
#endif
static void gate_span(float* g, i64 n, int act) {
#ifdef EFF_X86
    if (have_avx2()) { gate_span_v(g, n, act); return; }
#endif
    for (i64 i = 0; i < n; i++) g[i] = flush_tiny(act_s(g[i], act));
}

void eff_se_gate(float* x, const float* mean, float mean_scale, const float* w1, const float* b1, const float* w2,
                 const float* b2, float* gates, const float* res, i64 N, i64 HW, i64 C, i64 R, int act, int gate,
                 int out_act, int nt) {
    float* own_mean = NULL;
    if (!mean) {  /* channel means, one pass: per-thread sums over chunks of rows of one image */
        own_mean = (float*)calloc((size_t)(N * C), sizeof(float));
        #pragma omp parallel num_threads(nt)
        {
            float* acc = (float*)calloc((size_t)(N * C), sizeof(float));
            #pragma omp for collapse(2) schedule(static)
            for (i64 n = 0; n < N; n++)
                for (i64 k = 0; k < (HW + 63) / 64; k++) {
                    i64 s = k * 64, e = s + 64 < HW ? s + 64 : HW;
                    add_rows(acc + n * C, x + (n * HW + s) * C, e - s, C);
                }
            #pragma omp critical
            for (i64 i = 0; i < N * C; i++) own_mean[i] += acc[i];
            free(acc);
        }
        for (i64 i = 0; i < N * C; i++) own_mean[i] /= (float)HW;
        mean = own_mean;
        mean_scale = 1.0f;
    }
    /* N*C*R*2 multiply-adds: weight rows over the threads, every image per row, so each weight
     * row is read once per call (ResNet-RS's last stage: 8 MiB of weights per block; split by
     * image, each thread read all of them, and at batch 1 one thread did); threads only above
     * 32K multiply-adds per image, where they pay for their start.  The C gate activations
     * (sigmoid: an exp each) vectorised: at batch 8 with 1152 channels the scalar ones cost more
     * than the product */
    float* h = (float*)malloc(sizeof(float) * (size_t)(N * R > 0 ? N * R : 1));
    #pragma omp parallel num_threads(C * R >= (1 << 15) ? nt : 1)
    {
        #pragma omp for schedule(static)
        for (i64 r = 0; r < R; r++)
            for (i64 n = 0; n < N; n++)  /* mean_scale: the caller's channel sums times 1 / HW */
                h[n * R + r] = act_s(b1[r] + mean_scale * dot(w1 + r * C, mean + n * C, C), act);
        #pragma omp for schedule(static)
        for (i64 c = 0; c < C; c++)
            for (i64 n = 0; n < N; n++) gates[n * C + c] = b2[c] + dot(w2 + c * R, h + n * R, R);
        #pragma omp for schedule(static)
        for (i64 n = 0; n < N; n++) gate_span(gates + n * C, C, gate);
    }
    free(h);
    free(own_mean);
    if (!x) return;  /* gates only: the caller folds them into the next conv (eff_pw_fwd) */
    const i64 rows = N * HW, chunk = 64, nchunks = (rows + chunk - 1) / chunk;
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (i64 k = 0; k < nchunks; k++) {  /* chunks of pixel rows, split where the image changes */
        i64 s = k * chunk, e = s + chunk < rows ? s + chunk : rows;
        while (s < e) {
            i64 n = s / HW, end = (n + 1) * HW < e ? (n + 1) * HW : e;
            scale_rows(x + s * C, gates + n * C, res ? res + s * C : NULL, end - s, C, out_act);
            s = end;
        }
    }
}

/* ---- Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions, channels-last (Lavin & Gray 2016,
 * "Fast Algorithms for Convolutional Neural Networks", arXiv 1509.09308; interpolation points
 * 0, 1, -1, 2, -2 and infinity).  Each 4x4 output tile is A^T [(G g G^T) . (B^T d B)] A for its
 * 6x6 input patch d: 36 products per tile and channel pair where direct convolution needs 144.
 * The products are 36 matrix products (tiles x C_in) @ (C_in x C_out): done by the caller
 * (torch.bmm) around eff_wino_in / eff_wino_out, or block by block in eff_wino_fused (after the
 * 1x1 GEMM below).  The transforms are vectorised across channels (C % 8 == 0; AVX2, and AVX-512
 * for each 16 channels). */
#ifdef EFF_X86
/* B^T applied to six vectors (a column or row of the patch), on W-bit vectors (256: AVX2, 512:
 * AVX-512, the same arithmetic step for step) */
#define WINO_BT_W(W, d0, d1, d2, d3, d4, d5, o)                                                     \
    do {                                                                                            \
        __m##W f4 = _mm##W##_set1_ps(4.0f), f5 = _mm##W##_set1_ps(5.0f), f2 = _mm##W##_set1_ps(2.0f); \
        __m##W t13 = _mm##W##_fnmadd_ps(f4, d2, d4), t14 = _mm##W##_fnmadd_ps(f4, d1, d3);          \
        __m##W t23 = _mm##W##_sub_ps(d4, d2), t24 = _mm##W##_mul_ps(f2, _mm##W##_sub_ps(d1, d3));    \
        o[0] = _mm##W##_add_ps(_mm##W##_fnmadd_ps(f5, d2, _mm##W##_mul_ps(f4, d0)), d4);            \
        o[1] = _mm##W##_add_ps(t13, t14);                                                           \
        o[2] = _mm##W##_sub_ps(t13, t14);                                                           \
        o[3] = _mm##W##_sub_ps(t23, t24);                                                           \
        o[4] = _mm##W##_add_ps(t23, t24);                                                           \
        o[5] = _mm##W##_add_ps(_mm##W##_fnmadd_ps(f5, d3, _mm##W##_mul_ps(f4, d1)), d5);            \
    } while (0)
#define WINO_BT(d0, d1, d2, d3, d4, d5, o) WINO_BT_W(256, d0, d1, d2, d3, d4, d5, o)
/* A^T applied to six vectors -> four, on W-bit vectors */
#define WINO_AT_W(W, m0, m1, m2, m3, m4, m5, o)                                                     \
    do {                                                                                            \
        __m##W s12 = _mm##W##_add_ps(m1, m2), d12 = _mm##W##_sub_ps(m1, m2);                        \
        __m##W s34 = _mm##W##_add_ps(m3, m4), d34 = _mm##W##_sub_ps(m3, m4);                        \
        o[0] = _mm##W##_add_ps(_mm##W##_add_ps(m0, s12), s34);                                      \
        o[1] = _mm##W##_fmadd_ps(_mm##W##_set1_ps(2.0f), d34, d12);                                 \
        o[2] = _mm##W##_fmadd_ps(_mm##W##_set1_ps(4.0f), s34, s12);                                 \
        o[3] = _mm##W##_add_ps(_mm##W##_fmadd_ps(_mm##W##_set1_ps(8.0f), d34, d12), m5);            \
    } while (0)
#define WINO_AT(m0, m1, m2, m3, m4, m5, o) WINO_AT_W(256, m0, m1, m2, m3, m4, m5, o)

/* wino_in_tile's arithmetic on 16 channels at a time, step for step (the same results bit for
 * bit), for channels [0, C - C % 16); returns where it stopped */
#define WINO_BT16(d0, d1, d2, d3, d4, d5, o) WINO_BT_W(512, d0, d1, d2, d3, d4, d5, o)
AVX512 static i64 wino_in_tile_512(const float* const* src, float* dst, i64 ld, i64 C) {
    i64 ch = 0;
    for (; ch + 16 <= C; ch += 16) {
        __m512 d[36], u[36], o[6];
        for (int k = 0; k < 36; k++) d[k] = src[k] ? _mm512_loadu_ps(src[k] + ch) : _mm512_setzero_ps();
        for (int j = 0; j < 6; j++) {
            WINO_BT16(d[j], d[6 + j], d[12 + j], d[18 + j], d[24 + j], d[30 + j], o);
            for (int i = 0; i < 6; i++) u[i * 6 + j] = o[i];
        }
        for (int i = 0; i < 6; i++) {
            WINO_BT16(u[i * 6], u[i * 6 + 1], u[i * 6 + 2], u[i * 6 + 3], u[i * 6 + 4], u[i * 6 + 5], o);
            for (int j = 0; j < 6; j++) _mm512_storeu_ps(dst + (i64)(i * 6 + j) * ld + ch, o[j]);
        }
    }
    return ch;
}
#undef WINO_BT16

/* x (N, H, W, C) -> v (36, T, C): tile t = (n, ty, tx), row-major over (N, TH, TW), as row t - t0
 * of each of the 36 matrices (row stride C, matrix stride ld >= T * C); the tile reads input rows
 * 4ty - PH .. 4ty - PH + 5 (zero outside) */
AVX2 static void wino_in_tile(const float* x, float* v, i64 ld, i64 t, i64 t0, i64 H, i64 W, i64 C, i64 TH, i64 TW,
                              int PH, int PW) {
    const i64 n = t / (TH * TW), ty = (t / TW) % TH, tx = t % TW;
    const i64 r0 = ty * 4 - PH, c0 = tx * 4 - PW;
    const float* src[36];
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 6; j++) {
            i64 r = r0 + i, c = c0 + j;
            src[i * 6 + j] = (r >= 0 && r < H && c >= 0 && c < W) ? x + ((n * H + r) * W + c) * C : NULL;
        }
    float* dst = v + (t - t0) * C;
    for (i64 ch = avx512() ? wino_in_tile_512(src, dst, ld, C) : 0; ch < C; ch += 8) {
        __m256 d[36], u[36], o[6];
        for (int k = 0; k < 36; k++) d[k] = src[k] ? _mm256_loadu_ps(src[k] + ch) : _mm256_setzero_ps();
        for (int j = 0; j < 6; j++) {  /* columns: u = B^T d */
            WINO_BT(d[j], d[6 + j], d[12 + j], d[18 + j], d[24 + j], d[30 + j], o);
            for (int i = 0; i < 6; i++) u[i * 6 + j] = o[i];
        }
        for (int i = 0; i < 6; i++) {  /* rows: v = u B */
            WINO_BT(u[i * 6], u[i * 6 + 1], u[i * 6 + 2], u[i * 6 + 3], u[i * 6 + 4], u[i * 6 + 5], o);
            for (int j = 0; j < 6; j++) _mm256_storeu_ps(dst + (i64)(i * 6 + j) * ld + ch, o[j]);
        }
    }
}
AVX2 void eff_wino_in(const float* x, float* v, i64 N, i64 H, i64 W, i64 C, i64 TH, i64 TW, int PH, int PW,
                      i64 t0, i64 t1, int nt) {
    (void)N;
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (i64 t = t0; t < t1; t++) wino_in_tile(x, v, (t1 - t0) * C, t, t0, H, W, C, TH, TW, PH, PW);
}

/* wino_out_tile's arithmetic on 16 channels at a time, step for step (the same results bit for
 * bit: act16 repeats act_v), for channels [0, C - C % 16); returns where it stopped */
#define WINO_AT16(m0, m1, m2, m3, m4, m5, o) WINO_AT_W(512, m0, m1, m2, m3, m4, m5, o)
AVX512 static i64 wino_out_tile_512(const float* src, const float* bias, float* y0, i64 ld, i64 OW, i64 C, int rows,
                                    int cols, int act, int stream) {
    i64 ch = 0;
    for (; ch + 16 <= C; ch += 16) {
        __m512 a[36], w[24], o[4];
        for (int k = 0; k < 36; k++) a[k] = _mm512_loadu_ps(src + (i64)k * ld + ch);
        for (int j = 0; j < 6; j++) {
            WINO_AT16(a[j], a[6 + j], a[12 + j], a[18 + j], a[24 + j], a[30 + j], o);
            for (int r = 0; r < 4; r++) w[r * 6 + j] = o[r];
        }
        const __m512 b = bias ? _mm512_loadu_ps(bias + ch) : _mm512_setzero_ps();
        for (int r = 0; r < rows; r++) {
            WINO_AT16(w[r * 6], w[r * 6 + 1], w[r * 6 + 2], w[r * 6 + 3], w[r * 6 + 4], w[r * 6 + 5], o);
            float* yr = y0 + r * OW * C + ch;
            if (stream)  /* whole aligned lines (the caller checked): no read of each line before its write */
                for (int s = 0; s < cols; s++) _mm512_stream_ps(yr + s * C, act16(_mm512_add_ps(o[s], b), act));
            else
                for (int s = 0; s < cols; s++) _mm512_storeu_ps(yr + s * C, act16(_mm512_add_ps(o[s], b), act));
        }
    }
    return ch;
}
#undef WINO_AT16

/* m (36, T, C), tile t at row t - t0, matrix stride ld -> y (N, OH, OW, C): A^T m A, + bias, activation; rows and
 * columns past the output's edge (the last tiles overhang it) are dropped */
AVX2 static void wino_out_at(const float* src, const float* bias, float* y0, i64 ld, i64 OW, i64 C, int rows, int cols,
                             int act, int stream);
AVX2 static void wino_out_tile(const float* m, const float* bias, float* y, i64 ld, i64 t, i64 t0, i64 OH, i64 OW,
                               i64 C, i64 TH, i64 TW, int act, int stream) {
    const i64 n = t / (TH * TW), ty = (t / TW) % TH, tx = t % TW;
    const int rows = OH - ty * 4 < 4 ? (int)(OH - ty * 4) : 4, cols = OW - tx * 4 < 4 ? (int)(OW - tx * 4) : 4;
    wino_out_at(m + (t - t0) * C, bias, y + ((n * OH + ty * 4) * OW + tx * 4) * C, ld, OW, C, rows, cols, act, stream);
}
/* one tile's output transform from src (its row of the 36 matrices, stride ld) to the rows x cols
 * pixels at y0 (rows OW pixels apart, pixels C floats apart) */
AVX2 static void wino_out_at(const float* src, const float* bias, float* y0, i64 ld, i64 OW, i64 C, int rows, int cols,
                             int act, int stream) {
    const i64 start = avx512() ? wino_out_tile_512(src, bias, y0, ld, OW, C, rows, cols, act, stream) : 0;
    for (i64 ch = start; ch < C; ch += 8) {
        __m256 a[36], w[24], o[4];
        for (int k = 0; k < 36; k++) a[k] = _mm256_loadu_ps(src + (i64)k * ld + ch);
        for (int j = 0; j < 6; j++) {  /* columns: w = A^T m */
            WINO_AT(a[j], a[6 + j], a[12 + j], a[18 + j], a[24 + j], a[30 + j], o);
            for (int r = 0; r < 4; r++) w[r * 6 + j] = o[r];
        }
        __m256 b = bias ? _mm256_loadu_ps(bias + ch) : _mm256_setzero_ps();
        for (int r = 0; r < rows; r++) {  /* rows: y = w A */
            WINO_AT(w[r * 6], w[r * 6 + 1], w[r * 6 + 2], w[r * 6 + 3], w[r * 6 + 4], w[r * 6 + 5], o);
            float* yr = y0 + r * OW * C + ch;
            for (int s = 0; s < cols; s++) _mm256_storeu_ps(yr + s * C, act_v(_mm256_add_ps(o[s], b), act));
        }
    }
}
AVX2 void eff_wino_out(const float* m, const float* bias, float* y, i64 N, i64 OH, i64 OW, i64 C, i64 TH, i64 TW,
                       i64 t0, i64 t1, int act, int nt) {
    (void)N;
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (i64 t = t0; t < t1; t++) wino_out_tile(m, bias, y, (t1 - t0) * C, t, t0, OH, OW, C, TH, TW, act, 0);
}
#endif
/* ---- backward of a per-image, per-channel gate y = x * g (squeeze-excite), channels-last ----
 * One pass over dy and x: dx = dy * g (dx may alias dy) and dg[n][c] = sum over pixels of
 * dy * x, summed per chunk of rows in float and across chunks in double.  PyTorch needs three
 * passes and a temporary (dy * g, dy * x, sum). */
#ifdef EFF_X86
AVX2 static void gate_bwd_rows_v(const float* dy, const float* x, const float* g, float* dx, float* acc, i64 rows,
                                 i64 C) {
    i64 c = 0;
    for (; c + 8 <= C; c += 8) {
        __m256 vg = _mm256_loadu_ps(g + c), a = _mm256_setzero_ps();
        for (i64 j = 0; j < rows; j++) {
            __m256 d = _mm256_loadu_ps(dy + j * C + c);
            a = _mm256_fmadd_ps(d, _mm256_loadu_ps(x + j * C + c), a);
            _mm256_storeu_ps(dx + j * C + c, _mm256_mul_ps(d, vg));
        }
        _mm256_storeu_ps(acc + c, a);
    }
    for (; c < C; c++) {
        float a = 0.0f;
        for (i64 j = 0; j < rows; j++) { float d = dy[j * C + c]; a += d * x[j * C + c]; dx[j * C + c] = d * g[c]; }
        acc[c] = a;
    }
}
#endif
static void gate_bwd_rows(const float* dy, const float* x, const float* g, float* dx, float* acc, i64 rows, i64 C) {
#ifdef EFF_X86
    if (have_avx2()) { gate_bwd_rows_v(dy, x, g, dx, acc, rows, C); return; }
#endif
    for (i64 c = 0; c < C; c++) {
        float a = 0.0f;
        for (i64 j = 0; j < rows; j++) { float d = dy[j * C + c]; a += d * x[j * C + c]; dx[j * C + c] = d * g[c]; }
        acc[c] = a;
    }
}

void eff_gate_bwd(const float* dy, const float* x, const float* g, float* dx, double* dg, i64 N, i64 HW, i64 C,
                  int nt) {
    const i64 chunk = 32, per_image = (HW + chunk - 1) / chunk;
    for (i64 i = 0; i < N * C; i++) dg[i] = 0.0;
    #pragma omp parallel num_threads(nt)
    {
        double* mine = (double*)calloc((size_t)(N * C), sizeof(double));
        float* acc = (float*)malloc(sizeof(float) * (size_t)C);
        #pragma omp for collapse(2) schedule(static)
        for (i64 n = 0; n < N; n++)
            for (i64 k = 0; k < per_image; k++) {
                i64 s = k * chunk, e = s + chunk < HW ? s + chunk : HW, off = (n * HW + s) * C;
                gate_bwd_rows(dy + off, x + off, g + n * C, dx + off, acc, e - s, C);
                for (i64 c = 0; c < C; c++) mine[n * C + c] += acc[c];
            }
        #pragma omp critical
        for (i64 i = 0; i < N * C; i++) dg[i] += mine[i];
        free(acc);
        free(mine);
    }
}
/* ---- pointwise (1x1) convolution for inference, channels-last ----
 * y[m, :N] = act(x[m, :K] W + b) (+ res[m, :N]) for the M pixels of a channels-last tensor (rows of
 * K input and N output channels).  W comes packed in panels of 16 output channels, wp[p][k][16],
 * zero past N (kernels.pointwise_weight).  AVX2: a 6 x 16 register tile, twelve accumulators, two
 * weight vectors and one broadcast input value, so each pair of weight loads feeds twelve FMAs.
 * AVX-512: a 12 x 32 tile over two panels, 24 accumulators, so two weight loads and twelve
 * broadcasts feed 24 FMAs (the 12 x 16 tile's 13 loads per 12 FMAs kept it at 0.5-0.85x
 * oneDNN's GEMM on 1x1 convs of ResNet-RS-50 and EfficientNetV2-S at batch 8; with the pair tile
 * ResNet-RS-50's 1x1 convs ran at 0.97-1.09x oneDNN's speed in the model, one-off).  K is
 * blocked by PW_KC so a panel's block (16 KiB, a pair's 32 KiB) stays in L1 while the rows'
 * block (PW_MC x PW_KC) stays in L2.  Bias, activation and residual are applied while the tile is
 * in registers: a 1x1 conv + SiLU is one pass over its output (oneDNN + SiLU: two), and the
 * output may be a buffer the caller reuses from call to call, which a library-allocated output
 * cannot be. */
#define PW_MR 6
#define PW_KC 256
#define PW_MC 96
/* the last-level cache these cores share: sysfs's L3 of cpu0 (on AMD EPYC one CCD's, 32 MiB),
 * else sysconf's, which in a VM on an EPYC reports the whole socket's (320 MiB), most of it out
 * of reach of this guest's cores; 0 if neither knows */
static i64 llc_bytes(void) {
    static i64 llc = -1;
    if (llc < 0) {
        long kib = 0;
        FILE* f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
        if (f) { if (fscanf(f, "%ldK", &kib) != 1) kib = 0; fclose(f); }
        const long l3 = kib > 0 ? kib * 1024 : sysconf(_SC_LEVEL3_CACHE_SIZE);
        llc = l3 > 0 ? (i64)l3 : 0;
    }
    return llc;
}
/* outputs above this leave by streaming stores: twice the last-level cache, at least 16 MiB (the
 * AMD development machine: 8 MiB L3; on a 260 MiB L3 the next layer reads the output from the
 * cache, and streaming it to memory made a 17 MB output 1.6x slower there, one-off) */
static i64 pw_stream_bytes = -1;
static i64 pw_stream_limit(void) {
    if (pw_stream_bytes < 0) {
        const i64 l3 = llc_bytes();
        pw_stream_bytes = l3 > (8 << 20) ? 2 * l3 : 16 << 20;
    }
    return pw_stream_bytes;
}
i64 eff_pw_set_stream_bytes(i64 b) { const i64 old = pw_stream_limit(); pw_stream_bytes = b; return old; }
/* the flags pw_block hands its tiles: outputs by streaming stores, the next tile's rows prefetched */
enum { PW_STREAM = 1, PW_PREFETCH = 2 };
/* inputs above this have each fp32 tile prefetch the next one's rows (not the int8 GEMM, whose rows
 * are read one after another: prefetching its next group of rows timed 1.13-1.18x in one run and
 * 0.84-0.98x in three later ones, docs/benchmarks.md item 36).  A tile reads 8 or 12 rows of at
 * most PW_KC floats (1 KiB): streams too short for the hardware prefetcher to get ahead of, so
 * where the input comes from memory each tile began with a dozen misses.  Measured on the AMD
 * development machine (2 threads, batch 8, in the model, min of 6 runs each way): EfficientNetV2-S's
 * inputs of 8.5-33 MiB (K 192-256) 1.19-1.25x faster; inputs of 4.7-5.6 MiB (K 512-1536, held
 * by the cache) 0.95-0.96x, hence the limit (the cache sysconf reports there is the host's 320 MiB,
 * not the guest's share: a fixed size) */
static i64 pw_prefetch_bytes = 8 << 20;
i64 eff_pw_set_prefetch_bytes(i64 b) { const i64 old = pw_prefetch_bytes; pw_prefetch_bytes = b; return old; }
#ifdef EFF_X86
AVX2 static inline void pw_row_out(float* y, const float* r, __m256 v0, __m256 v1, const float* b, int last, int act,
                                   int full, __m256i m0, __m256i m1, int stream) {
    if (last) {
        v0 = _mm256_add_ps(v0, full ? _mm256_loadu_ps(b) : _mm256_maskload_ps(b, m0));
        v1 = _mm256_add_ps(v1, full ? _mm256_loadu_ps(b + 8) : _mm256_maskload_ps(b + 8, m1));
        v0 = act_v(v0, act); v1 = act_v(v1, act);
        if (r) {
            v0 = _mm256_add_ps(v0, full ? _mm256_loadu_ps(r) : _mm256_maskload_ps(r, m0));
            v1 = _mm256_add_ps(v1, full ? _mm256_loadu_ps(r + 8) : _mm256_maskload_ps(r + 8, m1));
        }
    }
    if (stream) { _mm256_stream_ps(y, v0); _mm256_stream_ps(y + 8, v1); }
    else if (full) { _mm256_storeu_ps(y, v0); _mm256_storeu_ps(y + 8, v1); }
    else { _mm256_maskstore_ps(y, m0, v0); _mm256_maskstore_ps(y + 8, m1, v1); }
}
AVX2 static inline void pw_row_in(const float* y, __m256* v0, __m256* v1, int first, int full, __m256i m0, __m256i m1) {
    if (first || !y) { *v0 = _mm256_setzero_ps(); *v1 = *v0; return; }
    *v0 = full ? _mm256_loadu_ps(y) : _mm256_maskload_ps(y, m0);
    *v1 = full ? _mm256_loadu_ps(y + 8) : _mm256_maskload_ps(y + 8, m1);
}
#define PW_FMA2(a, c0, c1) do { __m256 av_ = _mm256_broadcast_ss(a); \
    c0 = _mm256_fmadd_ps(av_, b0, c0); c1 = _mm256_fmadd_ps(av_, b1, c1); } while (0)
/* rows xr[0..5] (k0..k1) times the panel's rows k0..k1 (w points at row k0) into y rows yr[0..5]
 * (NULL: a padding row, not stored); first: start from zero, else from the partial sums in y;
 * last: bias, act, residual */
AVX2 static void pw_tile_v(const float* const* xr, const float* w, i64 k0, i64 k1, const float* b, float* const* yr,
                           const float* const* rr, int ncols, int first, int last, int act, int stream) {
    const int full = ncols == 16;
    stream = stream && full && last;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(ncols), lane);
    const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(ncols - 8), lane);
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    pw_row_in(yr[0], &c00, &c01, first, full, m0, m1); pw_row_in(yr[1], &c10, &c11, first, full, m0, m1);
    pw_row_in(yr[2], &c20, &c21, first, full, m0, m1); pw_row_in(yr[3], &c30, &c31, first, full, m0, m1);
    pw_row_in(yr[4], &c40, &c41, first, full, m0, m1); pw_row_in(yr[5], &c50, &c51, first, full, m0, m1);
    const float *a0 = xr[0], *a1 = xr[1], *a2 = xr[2], *a3 = xr[3], *a4 = xr[4], *a5 = xr[5];
    const float* wk = w;
    for (i64 k = k0; k < k1; k++, wk += 16) {
        __m256 b0 = _mm256_loadu_ps(wk), b1 = _mm256_loadu_ps(wk + 8);
        PW_FMA2(a0 + k, c00, c01); PW_FMA2(a1 + k, c10, c11); PW_FMA2(a2 + k, c20, c21);
        PW_FMA2(a3 + k, c30, c31); PW_FMA2(a4 + k, c40, c41); PW_FMA2(a5 + k, c50, c51);
    }
    if (yr[0]) pw_row_out(yr[0], rr[0], c00, c01, b, last, act, full, m0, m1, stream);
    if (yr[1]) pw_row_out(yr[1], rr[1], c10, c11, b, last, act, full, m0, m1, stream);
    if (yr[2]) pw_row_out(yr[2], rr[2], c20, c21, b, last, act, full, m0, m1, stream);
    if (yr[3]) pw_row_out(yr[3], rr[3], c30, c31, b, last, act, full, m0, m1, stream);
    if (yr[4]) pw_row_out(yr[4], rr[4], c40, c41, b, last, act, full, m0, m1, stream);
    if (yr[5]) pw_row_out(yr[5], rr[5], c50, c51, b, last, act, full, m0, m1, stream);
}
/* the same for a last panel of at most 8 output channels (N = 24, 40, 72, 120, ...): twelve rows
 * by 8 columns, so the half-empty panel costs half a 16-column tile instead of a whole one */
AVX2 static inline void pw_row8_out(float* y, const float* r, __m256 v, const float* b, int last, int act, int first,
                                    __m256i m) {
    if (!first) v = _mm256_add_ps(v, _mm256_maskload_ps(y, m));
    if (last) {
        v = act_v(_mm256_add_ps(v, _mm256_maskload_ps(b, m)), act);
        if (r) v = _mm256_add_ps(v, _mm256_maskload_ps(r, m));
    }
    _mm256_maskstore_ps(y, m, v);
}
AVX2 static void pw_tile8_v(const float* const* xr, const float* w, i64 k0, i64 k1, const float* b, float* const* yr,
                            const float* const* rr, int ncols, int first, int last, int act) {
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(ncols), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0,
           c9 = c0, c10 = c0, c11 = c0;
    const float *a0 = xr[0], *a1 = xr[1], *a2 = xr[2], *a3 = xr[3], *a4 = xr[4], *a5 = xr[5], *a6 = xr[6],
                *a7 = xr[7], *a8 = xr[8], *a9 = xr[9], *a10 = xr[10], *a11 = xr[11];
    const float* wk = w;
    for (i64 k = k0; k < k1; k++, wk += 16) {
        __m256 b0 = _mm256_loadu_ps(wk);
        c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a0 + k), b0, c0);
        c1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a1 + k), b0, c1);
        c2 = _mm256_fmadd_ps(_mm256_broadcast_ss(a2 + k), b0, c2);
        c3 = _mm256_fmadd_ps(_mm256_broadcast_ss(a3 + k), b0, c3);
        c4 = _mm256_fmadd_ps(_mm256_broadcast_ss(a4 + k), b0, c4);
        c5 = _mm256_fmadd_ps(_mm256_broadcast_ss(a5 + k), b0, c5);
        c6 = _mm256_fmadd_ps(_mm256_broadcast_ss(a6 + k), b0, c6);
        c7 = _mm256_fmadd_ps(_mm256_broadcast_ss(a7 + k), b0, c7);
        c8 = _mm256_fmadd_ps(_mm256_broadcast_ss(a8 + k), b0, c8);
        c9 = _mm256_fmadd_ps(_mm256_broadcast_ss(a9 + k), b0, c9);
        c10 = _mm256_fmadd_ps(_mm256_broadcast_ss(a10 + k), b0, c10);
        c11 = _mm256_fmadd_ps(_mm256_broadcast_ss(a11 + k), b0, c11);
    }
    const __m256 c[12] = {c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11};
    for (int i = 0; i < 12; i++)
        if (yr[i]) pw_row8_out(yr[i], rr[i], c[i], b, last, act, first, m);
}
/* the 16-column tile with AVX-512: twelve rows, one 16-lane accumulator each, so one weight load
 * feeds twelve FMAs (the AVX2 tile above needs two loads for twelve 8-lane FMAs: half the work) */
AVX512 static inline void pw_row_out512(float* y, const float* r, __m512 v, const float* b, int last, int act,
                                        __mmask16 m, int stream) {
    if (last) {
        v = act16(_mm512_add_ps(v, _mm512_maskz_loadu_ps(m, b)), act);
        if (r) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, r));
    }
    if (stream) { _mm256_stream_ps(y, _mm512_castps512_ps256(v)); _mm256_stream_ps(y + 8, hi256(v)); }  /* 32-byte aligned */
    else _mm512_mask_storeu_ps(y, m, v);
}
AVX512 static inline __m512 pw_row_in512(const float* y, int first, __mmask16 m) {
    return first || !y ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, y);
}
#define PW_FMA16(i) c##i = _mm512_fmadd_ps(_mm512_set1_ps(a##i[k]), b0, c##i)
AVX512 static void pw_tile_512(const float* const* xr, const float* w, i64 k0, i64 k1, const float* b,
                               float* const* yr, const float* const* rr, int ncols, int first, int last, int act,
                               int stream) {
    const int full = ncols == 16;
    stream = stream && full && last;
    const __mmask16 m = lanes16(ncols);
    __m512 c0 = pw_row_in512(yr[0], first, m), c1 = pw_row_in512(yr[1], first, m),
           c2 = pw_row_in512(yr[2], first, m), c3 = pw_row_in512(yr[3], first, m),
           c4 = pw_row_in512(yr[4], first, m), c5 = pw_row_in512(yr[5], first, m),
           c6 = pw_row_in512(yr[6], first, m), c7 = pw_row_in512(yr[7], first, m),
           c8 = pw_row_in512(yr[8], first, m), c9 = pw_row_in512(yr[9], first, m),
           c10 = pw_row_in512(yr[10], first, m), c11 = pw_row_in512(yr[11], first, m);
    const float *a0 = xr[0], *a1 = xr[1], *a2 = xr[2], *a3 = xr[3], *a4 = xr[4], *a5 = xr[5], *a6 = xr[6],
                *a7 = xr[7], *a8 = xr[8], *a9 = xr[9], *a10 = xr[10], *a11 = xr[11];
    const float* wk = w;
    for (i64 k = k0; k < k1; k++, wk += 16) {
        const __m512 b0 = _mm512_loadu_ps(wk);
        PW_FMA16(0); PW_FMA16(1); PW_FMA16(2); PW_FMA16(3); PW_FMA16(4); PW_FMA16(5);
        PW_FMA16(6); PW_FMA16(7); PW_FMA16(8); PW_FMA16(9); PW_FMA16(10); PW_FMA16(11);
    }
    const __m512 c[12] = {c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11};
    for (int i = 0; i < 12; i++)
        if (yr[i]) pw_row_out512(yr[i], rr[i], c[i], b, last, act, m, stream);
}
#undef PW_FMA16
/* two panels at once (32 output channels): twelve rows x two 16-lane accumulators, so each
 * broadcast input value feeds two FMAs (14 loads per 24 FMAs; the one-panel tile: 13 per 12) */
#define PW_FMA32(i) do { const __m512 a_ = _mm512_set1_ps(a##i[k]); \
    c##i = _mm512_fmadd_ps(a_, b0, c##i); d##i = _mm512_fmadd_ps(a_, b1, d##i); } while (0)
/* the next tile's input rows (nn rows from nx, ldx apart; NULL: none) fetched into L2 while this
 * tile runs, one cache line per k step (eff_pw_fwd asks for it where the input is larger than the
 * cache: pw_prefetch_bytes) */
#define PW_PF_INIT i64 pf_left = nx ? (i64)nn * ((k1 - k0 + 15) / 16) : 0; int pf_i = 0; \
    const float* pf_p = nx ? nx + k0 : NULL
#define PW_PF_STEP do { if (pf_left > 0) { _mm_prefetch((const char*)(pf_p + pf_i * ldx), _MM_HINT_T1); pf_left--; \
    if (++pf_i == nn) { pf_i = 0; pf_p += 16; } } } while (0)
AVX512 static void pw_tile2_512(const float* const* xr, const float* w, const float* w1, i64 k0, i64 k1,
                                const float* b, float* const* yr, const float* const* rr, int ncols1, int first,
                                int last, int act, int stream, const float* nx, i64 ldx, int nn) {
    stream = stream && ncols1 == 16 && last;
    const __mmask16 m = 0xFFFF, m1 = lanes16(ncols1);
#define PW_IN2(i) __m512 c##i = pw_row_in512(yr[i], first, m), d##i = pw_row_in512(yr[i] ? yr[i] + 16 : NULL, first, m1)
    PW_IN2(0); PW_IN2(1); PW_IN2(2); PW_IN2(3); PW_IN2(4); PW_IN2(5);
    PW_IN2(6); PW_IN2(7); PW_IN2(8); PW_IN2(9); PW_IN2(10); PW_IN2(11);
#undef PW_IN2
    const float *a0 = xr[0], *a1 = xr[1], *a2 = xr[2], *a3 = xr[3], *a4 = xr[4], *a5 = xr[5], *a6 = xr[6],
                *a7 = xr[7], *a8 = xr[8], *a9 = xr[9], *a10 = xr[10], *a11 = xr[11];
    const float *wk = w, *wk1 = w1;
    PW_PF_INIT;
    for (i64 k = k0; k < k1; k++, wk += 16, wk1 += 16) {
        const __m512 b0 = _mm512_loadu_ps(wk), b1 = _mm512_loadu_ps(wk1);
        PW_PF_STEP;
        PW_FMA32(0); PW_FMA32(1); PW_FMA32(2); PW_FMA32(3); PW_FMA32(4); PW_FMA32(5);
        PW_FMA32(6); PW_FMA32(7); PW_FMA32(8); PW_FMA32(9); PW_FMA32(10); PW_FMA32(11);
    }
    const __m512 c[12] = {c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11};
    const __m512 d[12] = {d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11};
    for (int i = 0; i < 12; i++)
        if (yr[i]) {
            pw_row_out512(yr[i], rr[i], c[i], b, last, act, m, stream);
            pw_row_out512(yr[i] + 16, rr[i] ? rr[i] + 16 : NULL, d[i], b + 16, last, act, m1, stream);
        }
}
#undef PW_FMA32
/* three panels at once (48 output channels): eight rows x three 16-lane accumulators, three
 * weight loads and eight broadcasts per 24 FMAs; with the pair tile it covers every panel count
 * above one, so no one-panel tile (13 loads per 12 FMAs) runs where N > 16 (N = 48, 80, 112:
 * EfficientNet's and MobileNet's project convs) */
#define PW_FMA48(i) do { const __m512 a_ = _mm512_set1_ps(a##i[k]); c##i = _mm512_fmadd_ps(a_, b0, c##i); \
    d##i = _mm512_fmadd_ps(a_, b1, d##i); e##i = _mm512_fmadd_ps(a_, b2, e##i); } while (0)
AVX512 static void pw_tile3_512(const float* const* xr, const float* w, i64 pstride, i64 k0, i64 k1,
                                const float* b, float* const* yr, const float* const* rr, int ncols2, int first,
                                int last, int act, int stream, const float* nx, i64 ldx, int nn) {
    stream = stream && ncols2 == 16 && last;
    const __mmask16 m = 0xFFFF, m2 = lanes16(ncols2);
#define PW_IN3(i) __m512 c##i = pw_row_in512(yr[i], first, m), d##i = pw_row_in512(yr[i] ? yr[i] + 16 : NULL, first, m), \
    e##i = pw_row_in512(yr[i] ? yr[i] + 32 : NULL, first, m2)
    PW_IN3(0); PW_IN3(1); PW_IN3(2); PW_IN3(3); PW_IN3(4); PW_IN3(5); PW_IN3(6); PW_IN3(7);
#undef PW_IN3
    const float *a0 = xr[0], *a1 = xr[1], *a2 = xr[2], *a3 = xr[3], *a4 = xr[4], *a5 = xr[5], *a6 = xr[6],
                *a7 = xr[7];
    const float *wk = w, *wk1 = w + pstride, *wk2 = w + 2 * pstride;
    PW_PF_INIT;
    for (i64 k = k0; k < k1; k++, wk += 16, wk1 += 16, wk2 += 16) {
        const __m512 b0 = _mm512_loadu_ps(wk), b1 = _mm512_loadu_ps(wk1), b2 = _mm512_loadu_ps(wk2);
        PW_PF_STEP;
        PW_FMA48(0); PW_FMA48(1); PW_FMA48(2); PW_FMA48(3); PW_FMA48(4); PW_FMA48(5); PW_FMA48(6); PW_FMA48(7);
    }
    const __m512 c[8] = {c0, c1, c2, c3, c4, c5, c6, c7}, d[8] = {d0, d1, d2, d3, d4, d5, d6, d7},
                 e[8] = {e0, e1, e2, e3, e4, e5, e6, e7};
    for (int i = 0; i < 8; i++)
        if (yr[i]) {
            pw_row_out512(yr[i], rr[i], c[i], b, last, act, m, stream);
            pw_row_out512(yr[i] + 16, rr[i] ? rr[i] + 16 : NULL, d[i], b + 16, last, act, m, stream);
            pw_row_out512(yr[i] + 32, rr[i] ? rr[i] + 32 : NULL, e[i], b + 32, last, act, m2, stream);
        }
}
#undef PW_FMA48
/* one to four rows x one to three panels (np; panel j at w + j * pstride, the last one ncols
 * wide): the tiles above always run their 8 or 12 rows, so a GEMM of one row (a classifier or a
 * 1x1 conv on a 1x1 map at batch 1) did 8-12x the multiply-adds it needed.  Each sum is built
 * as in the tiles above, FMA for FMA in k order, so the results are the same bits.  NR and NP are
 * compile-time constants at every call (pw_few_512's switch), so the sums live in registers. */
AVX512 static inline __attribute__((always_inline)) void pw_few_tile_512(
        const float* const* xr, const int NR, const int NP, const float* w, i64 pstride, i64 k0, i64 k1,
        const float* b, float* const* yr, const float* const* rr, int ncols, int first, int last, int act) {
    __m512 c[4][3];
    const __mmask16 ml = lanes16(ncols);
#pragma GCC unroll 4
    for (int i = 0; i < NR; i++)
#pragma GCC unroll 3
        for (int j = 0; j < NP; j++) c[i][j] = pw_row_in512(yr[i] ? yr[i] + 16 * j : NULL, first, j == NP - 1 ? ml : 0xFFFF);
    for (i64 k = k0; k < k1; k++) {
        __m512 bw[3];
#pragma GCC unroll 3
        for (int j = 0; j < NP; j++) bw[j] = _mm512_loadu_ps(w + j * pstride + (k - k0) * 16);
#pragma GCC unroll 4
        for (int i = 0; i < NR; i++) {
            const __m512 a = _mm512_set1_ps(xr[i][k]);
#pragma GCC unroll 3
            for (int j = 0; j < NP; j++) c[i][j] = _mm512_fmadd_ps(a, bw[j], c[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < NR; i++)
#pragma GCC unroll 3
        for (int j = 0; j < NP; j++)
            if (yr[i]) pw_row_out512(yr[i] + 16 * j, rr[i] ? rr[i] + 16 * j : NULL, c[i][j], b + 16 * j, last, act,
                          j == NP - 1 ? ml : 0xFFFF, 0);
}
#define PW_FEW(nr, np) pw_few_tile_512(xr, nr, np, w, pstride, k0, k1, b, yr, rr, ncols, first, last, act)
AVX512 static void pw_few_512(const float* const* xr, int nr, int np, const float* w, i64 pstride, i64 k0, i64 k1,
                              const float* b, float* const* yr, const float* const* rr, int ncols, int first, int last,
                              int act) {
    switch (nr * 4 + np) {
        case 5: PW_FEW(1, 1); break;  case 6: PW_FEW(1, 2); break;  case 7: PW_FEW(1, 3); break;
        case 9: PW_FEW(2, 1); break;  case 10: PW_FEW(2, 2); break; case 11: PW_FEW(2, 3); break;
        case 13: PW_FEW(3, 1); break; case 14: PW_FEW(3, 2); break; case 15: PW_FEW(3, 3); break;
        case 17: PW_FEW(4, 1); break; case 18: PW_FEW(4, 2); break; case 19: PW_FEW(4, 3); break;
        default: break;
    }
}
#undef PW_FEW
#define PW_FEW_ROWS 4
#endif
static void pw_tile(const float* const* xr, const float* w, i64 k0, i64 k1, const float* b, float* const* yr,
                    const float* const* rr, int ncols, int first, int last, int act, int stream) {
#ifdef EFF_X86
    if (have_avx2()) { pw_tile_v(xr, w, k0, k1, b, yr, rr, ncols, first, last, act, stream); return; }
#endif
    for (int r = 0; r < PW_MR; r++) {
        if (!yr[r]) continue;
        for (int j = 0; j < ncols; j++) {
            float a = first ? 0.0f : yr[r][j];
            for (i64 k = k0; k < k1; k++) a += xr[r][k] * w[(k - k0) * 16 + j];
            if (last) { a = act_s(a + b[j], act); if (rr[r]) a += rr[r][j]; }
            yr[r][j] = a;
        }
    }
}

/* the rows r..r+n of panel p as tile arguments: rows past r1 read row r and are not stored (NULL);
 * map (or NULL: row i to row i): input row i goes to output (and residual) row map[i], none where
 * it is negative (eff_wino_pw_fused: a tile's pixels past the map's edge) */
static void pw_gather(const float* x, const float* res, float* y, i64 r, i64 r1, i64 p, i64 K, i64 N, int n,
                      const float** xr, float** yr, const float** rr, const i64* map) {
    for (int i = 0; i < n; i++) {
        const i64 row = r + i < r1 ? r + i : r, to = r + i >= r1 ? -1 : map ? map[row] : row;
        xr[i] = x + row * K;
        yr[i] = to >= 0 ? y + to * N + p * 16 : NULL;
        rr[i] = to >= 0 && res ? res + to * N + p * 16 : NULL;
    }
}

/* rows [r0, r1) of panels p .. p + np - 1 (np 2 or 3: the AVX-512 tiles; panel j's block at
 * wk + j * pstride), input channels k0..k1 (wk: the panel's rows k0..k1) */
static void pw_rows(const float* x, const float* wk, i64 pstride, int np, const float* bias, const float* res,
                    float* y, i64 r0, i64 r1, i64 p, i64 k0, i64 k1, i64 K, i64 N, int act, int stream,
                    const i64* map) {
#ifdef EFF_X86
    const int pf = stream & PW_PREFETCH;  /* the prefetches are x86 code */
#endif
    stream &= PW_STREAM;
    const i64 lastc = N - (p + np - 1) * 16;  /* columns of the last of the np panels */
    const int ncols = lastc < 16 ? (int)lastc : 16;
    const float* xr[2 * PW_MR]; float* yr[2 * PW_MR]; const float* rr[2 * PW_MR];
#ifdef EFF_X86
    /* the last rows, when few, on the few-rows tile: no tile rows computed for nothing (one row
     * of B0's 49 at batch 1 took a whole 12-row tile) */
    const int wide = avx512();
#define PW_TAIL(r) if (wide && r1 - (r) <= PW_FEW_ROWS) { \
        pw_gather(x, res, y, r, r1, p, K, N, (int)(r1 - (r)), xr, yr, rr, map); \
        pw_few_512(xr, (int)(r1 - (r)), np, wk, pstride, k0, k1, bias + p * 16, yr, rr, ncols, k0 == 0, k1 == K, act); \
        return; }
    if (np == 3) {
        for (i64 r = r0; r < r1; r += 8) {
            PW_TAIL(r);
            pw_gather(x, res, y, r, r1, p, K, N, 8, xr, yr, rr, map);
            pw_tile3_512(xr, wk, pstride, k0, k1, bias + p * 16, yr, rr, ncols, k0 == 0, k1 == K, act, stream,
                         pf && r + 16 <= r1 ? x + (r + 8) * K : NULL, K, 8);
        }
        return;
    }
    if (np == 2) {
        for (i64 r = r0; r < r1; r += 2 * PW_MR) {
            PW_TAIL(r);
            pw_gather(x, res, y, r, r1, p, K, N, 2 * PW_MR, xr, yr, rr, map);
            pw_tile2_512(xr, wk, wk + pstride, k0, k1, bias + p * 16, yr, rr, ncols, k0 == 0, k1 == K, act, stream,
                         pf && r + 4 * PW_MR <= r1 ? x + (r + 2 * PW_MR) * K : NULL, K, 2 * PW_MR);
        }
        return;
    }
    if (ncols <= 8 && have_avx2()) {
        for (i64 r = r0; r < r1; r += 2 * PW_MR) {
            PW_TAIL(r);
            pw_gather(x, res, y, r, r1, p, K, N, 2 * PW_MR, xr, yr, rr, map);
            pw_tile8_v(xr, wk, k0, k1, bias + p * 16, yr, rr, ncols, k0 == 0, k1 == K, act);
        }
        return;
    }
    if (wide) {
        for (i64 r = r0; r < r1; r += 2 * PW_MR) {
            PW_TAIL(r);
            pw_gather(x, res, y, r, r1, p, K, N, 2 * PW_MR, xr, yr, rr, map);
            pw_tile_512(xr, wk, k0, k1, bias + p * 16, yr, rr, ncols, k0 == 0, k1 == K, act, stream);
        }
        return;
    }
#undef PW_TAIL
#else
    (void)pstride;
#endif
    for (i64 r = r0; r < r1; r += PW_MR) {
        pw_gather(x, res, y, r, r1, p, K, N, PW_MR, xr, yr, rr, map);
        pw_tile(xr, wk, k0, k1, bias + p * 16, yr, rr, ncols, k0 == 0, k1 == K, act, stream);
    }
}

/* ws[k][:16] = wk[k][:16] * g[k] for k < nk: a panel's K block scaled by one image's gates */
#ifdef EFF_X86
AVX2 static void pw_scale_panel_v(float* ws, const float* wk, const float* g, i64 nk) {
    for (i64 k = 0; k < nk; k++) {
        const __m256 gk = _mm256_broadcast_ss(g + k);
        _mm256_store_ps(ws + k * 16, flush_tiny_v(_mm256_mul_ps(_mm256_loadu_ps(wk + k * 16), gk)));
        _mm256_store_ps(ws + k * 16 + 8, flush_tiny_v(_mm256_mul_ps(_mm256_loadu_ps(wk + k * 16 + 8), gk)));
    }
}
#endif
static void pw_scale_panel(float* ws, const float* wk, const float* g, i64 nk) {
#ifdef EFF_X86
    if (have_avx2()) { pw_scale_panel_v(ws, wk, g, nk); return; }
#endif
    for (i64 k = 0; k < nk; k++)
        for (int j = 0; j < 16; j++) ws[k * 16 + j] = flush_tiny(wk[k * 16 + j] * g[k]);
}

/* rows [m0, m1) x panels [p0, p1) of the 1x1 conv, on the calling thread.  With a gate (one
 * value per image and input channel, gate[n * K + k], hw rows per image) the input is
 * x * gate: a squeeze-excite's product folded into the conv.  Scaling the panel's K block once
 * per image (16 KiB, in L1) costs K*16 multiplies per image and panel, where scaling x costs a
 * read and a write of the whole tensor. */
static void pw_block_map(const float* x, const float* wp, const float* bias, const float* res, const float* gate,
                         i64 hw, float* y, i64 m0, i64 m1, i64 p0, i64 p1, i64 K, i64 N, int act, int stream,
                         const i64* map) {
    float ws[3 * PW_KC * 16] __attribute__((aligned(64)));
    const int wide = avx512();  /* the AVX-512 tiles take three or two panels at a time */
    for (i64 k0 = 0; k0 < K; k0 += PW_KC) {
        const i64 k1 = k0 + PW_KC < K ? k0 + PW_KC : K;
        for (i64 p = p0; p < p1;) {
            const i64 left = p1 - p;  /* in threes and twos: 4 = 2 + 2, 5 = 3 + 2, 7 = 3 + 2 + 2 */
            const int np = !wide || left == 1 ? 1 : left == 2 || left == 4 ? 2 : 3;
            const float* wk = wp + p * K * 16 + k0 * 16;
            if (!gate) pw_rows(x, wk, K * 16, np, bias, res, y, m0, m1, p, k0, k1, K, N, act, stream, map);
            else
                for (i64 r = m0; r < m1;) {  /* one stretch of rows per image */
                    const i64 n = r / hw, e = (n + 1) * hw < m1 ? (n + 1) * hw : m1;
                    for (int j = 0; j < np; j++)
                        pw_scale_panel(ws + j * PW_KC * 16, wk + j * K * 16, gate + n * K + k0, k1 - k0);
                    pw_rows(x, ws, PW_KC * 16, np, bias, res, y, r, e, p, k0, k1, K, N, act, stream, map);
                    r = e;
                }
            p += np;
        }
    }
}

static void pw_block(const float* x, const float* wp, const float* bias, const float* res, const float* gate, i64 hw,
                     float* y, i64 m0, i64 m1, i64 p0, i64 p1, i64 K, i64 N, int act, int stream) {
    pw_block_map(x, wp, bias, res, gate, hw, y, m0, m1, p0, p1, K, N, act, stream, NULL);
}

/* a GEMM's M rows (groups of MR) x P panels of 16 output channels as mt row blocks (whole row
 * groups, sizes differing by at most one group) x pt panel blocks of pc panels, at least 4 per
 * thread and a multiple of the thread count where that is possible, so the threads get equal work
 * (late stages at batch 1 have 49 rows: split the panels too); pairs: blocks of at least two
 * panels (the two-panel tiles: no lone panel on the slower one-panel tile) */
static void gemm_split(i64 M, i64 P, i64 MR, i64 MC, int nt, int pairs, i64* mt_, i64* pt_, i64* pc_) {
    const i64 G = (M + MR - 1) / MR;
    i64 mt = MC ? (M + MC / 2) / MC : 4 * (i64)nt;  /* row blocks of about MC rows, or 4 per thread */
    if (mt < 1) mt = 1;
    if (mt > G) mt = G;
    i64 pt = 1;
    while (pt < P && mt * pt < 4 * (i64)nt) pt++;
    i64 pc = (P + pt - 1) / pt;
    if (pairs && pc == 1 && P > 1) pc = 2;
    pt = (P + pc - 1) / pc;
    while (mt * pt % nt && mt < G && mt * pt < 16 * (i64)nt) mt++;
    *mt_ = mt; *pt_ = pt; *pc_ = pc;
}
/* work item t of gemm_split's blocks: rows [m0, m1), panels [p0, p1) */
static void gemm_item(i64 t, i64 M, i64 P, i64 MR, i64 mt, i64 pt, i64 pc, i64* m0, i64* m1, i64* p0, i64* p1) {
    const i64 G = (M + MR - 1) / MR, im = t / pt, g1 = (im + 1) * G / mt;
    *m0 = (im * G / mt) * MR;
    *m1 = g1 * MR < M ? g1 * MR : M;
    *p0 = (t % pt) * pc;
    *p1 = *p0 + pc < P ? *p0 + pc : P;
}
/* outputs larger than the last-level cache go to memory with streaming stores (no read of each
 * line before it is written); needs 32-byte aligned rows */
static int gemm_stream(i64 M, i64 N, const float* y) {
    return M * N * 4 > pw_stream_limit() && N % 8 == 0 && ((uintptr_t)y & 31) == 0;
}

void eff_pw_fwd(const float* x, const float* wp, const float* bias, const float* res, const float* gate, i64 hw,
                float* y, i64 M, i64 K, i64 N, int act, int nt) {
    /* the AVX-512 tiles are 12 rows by two panels and 8 rows by three: groups of 12 rows, blocks
     * of at least two panels */
#ifdef EFF_X86
    const int wide = avx512();
#else
    const int wide = 0;
#endif
    const i64 MR = wide ? 2 * PW_MR : PW_MR, P = (N + 15) / 16;
    i64 mt, pt, pc;
    gemm_split(M, P, MR, PW_MC, nt, wide, &mt, &pt, &pc);
    /* gated, with at least two images per thread and as many for each: one image's rows per item
     * (all panels), so each image's gate-scaled panels are made once per K block and panel group,
     * not once per 96-row block (about 4 per image on 19x19 maps, each scaling every panel again);
     * an image count the threads do not divide keeps the row split (5 images on 2 threads: 3 + 2) */
    const i64 imgs = gate && hw > 0 && M % hw == 0 ? M / hw : 0;
    const int by_image = imgs >= 2 * (i64)nt && imgs % nt == 0;
    const i64 items = by_image ? imgs : mt * pt;
    const int stream = gemm_stream(M, N, y), flags = stream | (M * K * 4 > pw_prefetch_bytes ? PW_PREFETCH : 0);
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (i64 t = 0; t < items; t++) {
        i64 m0, m1, p0, p1;
        if (by_image) { m0 = t * hw; m1 = m0 + hw; p0 = 0; p1 = P; }
        else gemm_item(t, M, P, MR, mt, pt, pc, &m0, &m1, &p0, &p1);
        pw_block(x, wp, bias, res, gate, hw, y, m0, m1, p0, p1, K, N, act, flags);
#ifdef EFF_X86
        if (stream) _mm_sfence();  /* streamed stores visible before the threads join */
#endif
    }
}

/* ---- a dense KH x KW convolution (any stride and padding) on the 1x1 GEMM ----
 * y[n, oh, ow, :] = act(sum_{kh, kw, c} x[n, oh*S - PH + kh, ow*S - PW + kw, c] W[kh, kw, c, :] + b)
 * (+ res), channels-last.  Each work item (output pixels [m0, m1) x panels [p0, p1), gemm_split's)
 * copies its pixels' patches (kh, kw, c order: one run of KW * C floats per kernel row, zeros
 * where a tap falls in the padding) into a per-thread buffer of at most CV_PATCH_BYTES and runs
 * pw_block on them with K = KH * KW * C: the patch matrix (9x the input for 3x3) is never
 * written whole, and the output gets bias, activation (SiLU included) and residual in the GEMM's
 * epilogue, in a buffer the caller keeps.  For the convs Winograd and the 1x1 GEMM do not take:
 * stems (3 input channels) and stride-2 3x3 convs (EfficientNetV2's Fused-MBConv, ResNet-RS),
 * where oneDNN's conv allocates a fresh output every call and leaves SiLU to a second pass.
 * W comes as pointwise_weight panels of the (C_out, KH * KW * C) matrix.  -1: out of memory. */
#define CV_PATCH_BYTES (192 << 10)
/* n floats from s to d: short runs (a stem's 3 x 3 channels) by masked 16-lane moves, where a
 * memcpy call costs more than the copy; 0 to zero them */
#ifdef EFF_X86
AVX512 static void cv_copy512(float* d, const float* s, i64 n) {
    for (i64 i = 0; i < n; i += 16) {
        const __mmask16 m = lanes16(n - i);
        _mm512_mask_storeu_ps(d + i, m, s ? _mm512_maskz_loadu_ps(m, s + i) : _mm512_setzero_ps());
    }
}
#endif
static inline void cv_copy(float* d, const float* s, i64 n, int wide) {
#ifdef EFF_X86
    if (wide && n <= 64) { cv_copy512(d, s, n); return; }
#else
    (void)wide;
#endif
    if (s) memcpy(d, s, sizeof(float) * (size_t)n);
    else memset(d, 0, sizeof(float) * (size_t)n);
}
static void cv_patches(const float* x, float* buf, i64 r0, i64 n_rows, i64 H, i64 W, i64 C, i64 OH, i64 OW, int KH,
                       int KW, int S, int PH, int PW, int wide) {
    const i64 K = (i64)KH * KW * C;
    i64 n = r0 / (OH * OW), oh = r0 / OW % OH, ow = r0 % OW;  /* advanced pixel by pixel below */
    for (i64 j = 0; j < n_rows; j++) {
        const i64 iw0 = ow * S - PW;
        float* dst = buf + j * K;
        for (int kh = 0; kh < KH; kh++, dst += KW * C) {
            const i64 ih = oh * S - PH + kh;
            if (ih < 0 || ih >= H) { cv_copy(dst, NULL, KW * C, wide); continue; }
            const float* src = x + ((n * H + ih) * W) * C;
            if (iw0 >= 0 && iw0 + KW <= W) { cv_copy(dst, src + iw0 * C, KW * C, wide); continue; }
            for (int kw = 0; kw < KW; kw++) {
                const i64 iw = iw0 + kw;
                cv_copy(dst + kw * C, iw < 0 || iw >= W ? NULL : src + iw * C, C, wide);
            }
        }
        if (++ow == OW) { ow = 0; if (++oh == OH) { oh = 0; n++; } }
    }
}
int eff_conv_fwd(const float* x, const float* wp, const float* bias, const float* res, float* y, i64 N, i64 H, i64 W,
                 i64 C, i64 OH, i64 OW, i64 Cout, int KH, int KW, int S, int PH, int PW, int act, int nt) {
#ifdef EFF_X86
    const int wide = avx512();
#else
    const int wide = 0;
#endif
    const i64 K = (i64)KH * KW * C, M = N * OH * OW, P = (Cout + 15) / 16, MR = wide ? 2 * PW_MR : PW_MR;
    i64 cap = CV_PATCH_BYTES / (K * (i64)sizeof(float)) / MR * MR;  /* pixels per patch buffer */
    if (cap < MR) cap = MR;
    i64 mt, pt, pc;
    gemm_split(M, P, MR, cap < PW_MC ? cap : PW_MC, nt, wide, &mt, &pt, &pc);
    float* bufs = (float*)aligned_alloc(64, (sizeof(float) * (size_t)(cap * K * nt) + 63) / 64 * 64);
    if (!bufs) return -1;
    const int stream = gemm_stream(M, Cout, y);
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (i64 t = 0; t < mt * pt; t++) {
        i64 m0, m1, p0, p1;
        gemm_item(t, M, P, MR, mt, pt, pc, &m0, &m1, &p0, &p1);
        float* buf = bufs + cap * K * omp_get_thread_num();
        for (i64 r = m0; r < m1; r += cap) {
            const i64 n_rows = m1 - r < cap ? m1 - r : cap;
            cv_patches(x, buf, r, n_rows, H, W, C, OH, OW, KH, KW, S, PH, PW, wide);
            pw_block(buf, wp, bias, res ? res + r * Cout : NULL, NULL, 0, y + r * Cout, 0, n_rows, p0, p1, K, Cout,
                     act, stream);
        }
#ifdef EFF_X86
        if (stream) _mm_sfence();
#endif
    }
    free(bufs);
    return 0;
}

#ifdef EFF_X86
/* outputs of at least this many bytes leave eff_wino_fused by streaming stores: an eighth of the
 * last-level cache, at least 2 MiB.  Winograd's outputs are its layers' largest writes (V2-S's 48
 * -> 192 on 75x75: 33 MiB at batch 8, which cannot stay in a 32 MiB L3), and each line was read
 * from memory before being written: that layer alone 17.0 -> 14.8 ms; whole models in paired
 * runs V2-S 1.00-1.03x at batch 1 and 8, ResNet-RS-50 0.99-1.01x (the AMD development machine,
 * `python benchmarks/ab.py wstream`, docs/benchmarks.md item 39). */
static i64 wino_stream_bytes = -1;
static i64 wino_stream_limit(void) {
    if (wino_stream_bytes < 0) wino_stream_bytes = llc_bytes() / 8 > (2 << 20) ? llc_bytes() / 8 : 2 << 20;
    return wino_stream_bytes;
}
i64 eff_wino_set_stream_bytes(i64 b) { const i64 old = wino_stream_limit(); wino_stream_bytes = b; return old; }

/* ---- Winograd F(4x4, 3x3) with the transforms and the 36 products fused, a block of B tiles at a
 * time on one thread: the block's transformed input (36 x B x C) and products (36 x B x C_out)
 * stay in the core's cache, where eff_wino_in / torch.bmm / eff_wino_out send whole rounds of
 * tiles through memory three times; the products run on the 1x1 GEMM's tiles (pw_block), one
 * per position, with up = the 36 (C x C_out) matrices G g G^T as 16-column panels
 * (36, ceil(C_out / 16), C, 16).  The panels are read once per block: for wide layers on small
 * maps (few tiles, 36 x C x C_out large) the bmm route is the better one, and the caller times
 * both.  -1: out of memory. */
/* the projection eff_wino_pw_fused applies to the conv's output: a 1x1 conv (pw panels wp of
 * Co2 output channels, bias, activation) plus res (NULL: none), into y (N, OH, OW, Co2) */
typedef struct { const float* wp; const float* bias; const float* res; float* y; i64 Co2; int act; } wino_proj;
/* tiles per run of the projection: 96 pixels (eight 12-row tiles of the GEMM), their conv output
 * (96 x Co floats: 72 KiB for Co = 192) in L2 */
#define WINO_PROJ_TILES 6

static int wino_fused_run(const float* x, const float* up, const float* bias, float* y, i64 N, i64 H, i64 W, i64 C,
                          i64 Co, i64 OH, i64 OW, int PH, int PW, int act, i64 B, int nt, const wino_proj* pj) {
    const i64 TH = (OH + 3) / 4, TW = (OW + 3) / 4, T = N * TH * TW, P = (Co + 15) / 16, nb = (T + B - 1) / B;
    /* matrix strides of an odd number of cache lines: the 36 rows a tile transform reads or writes
     * then fall in 36 different L1 sets (a stride of 18 KiB put them in two: V2-S's 75x75 48->192
     * layer took 27 ms at batch 8 instead of 19) */
    const i64 ldv = ((B * C + 15) / 16 | 1) * 16, ldm = ((B * Co + 15) / 16 | 1) * 16;
    const i64 vb = (36 * ldv * 4 + 63) / 64 * 64, mb = (36 * ldm * 4 + 63) / 64 * 64;
    const i64 zb = pj ? (WINO_PROJ_TILES * 16 * Co * 4 + 63) / 64 * 64 : 0;
    const int threads = nb < nt ? (int)nb : nt;
    /* whole 64-byte lines only: every 16-channel group of every pixel starts one */
    const int stream = !pj && avx512() && Co % 16 == 0 && ((uintptr_t)y & 63) == 0
                       && N * OH * OW * Co * 4 >= wino_stream_limit();
    char* scratch = (char*)aligned_alloc(64, (size_t)((vb + mb + zb) * threads));
    float* zeros = (float*)calloc((size_t)(P * 16), sizeof(float));
    if (!scratch || !zeros) { free(scratch); free(zeros); return -1; }
    #pragma omp parallel num_threads(threads)
    {
        float* v = (float*)(scratch + (vb + mb + zb) * omp_get_thread_num());
        float* m = (float*)((char*)v + vb);
        float* z = (float*)((char*)m + mb);
        i64 map[WINO_PROJ_TILES * 16];
        #pragma omp for schedule(static)
        for (i64 b = 0; b < nb; b++) {
            const i64 t0 = b * B, t1 = t0 + B < T ? t0 + B : T, n = t1 - t0;
            for (i64 t = t0; t < t1; t++) wino_in_tile(x, v, ldv, t, t0, H, W, C, TH, TW, PH, PW);
            for (int q = 0; q < 36; q++)  /* m[q] = v[q] @ (G g G^T)[q] */
                pw_block(v + q * ldv, up + q * P * C * 16, zeros, NULL, NULL, 1, m + q * ldm, 0, n, 0, P, C, Co,
                         ACT_IDENTITY, 0);
            if (!pj) {
                for (i64 t = t0; t < t1; t++) wino_out_tile(m, bias, y, ldm, t, t0, OH, OW, Co, TH, TW, act, stream);
                if (stream) _mm_sfence();  /* streamed stores visible before the threads join */
                continue;
            }
            /* whole 4x4 tiles into z, 16 rows each, then the projection's GEMM from z into the
             * output pixels (map: a tile's pixels past the output's edge are not stored) */
            for (i64 c0 = t0; c0 < t1; c0 += WINO_PROJ_TILES) {
                const i64 c1 = c0 + WINO_PROJ_TILES < t1 ? c0 + WINO_PROJ_TILES : t1;
                for (i64 t = c0; t < c1; t++) {
                    const i64 img = t / (TH * TW), ty = (t / TW) % TH, tx = t % TW, j = (t - c0) * 16;
                    wino_out_at(m + (t - t0) * Co, bias, z + j * Co, ldm, 4, Co, 4, 4, act, 0);
                    for (int r = 0; r < 4; r++)
                        for (int c = 0; c < 4; c++) {
                            const i64 oy = ty * 4 + r, ox = tx * 4 + c;
                            map[j + r * 4 + c] = oy < OH && ox < OW ? (img * OH + oy) * OW + ox : -1;
                        }
                }
                pw_block_map(z, pj->wp, pj->bias, pj->res, NULL, 0, pj->y, 0, (c1 - c0) * 16, 0, (pj->Co2 + 15) / 16,
                             Co, pj->Co2, pj->act, 0, map);
            }
        }
    }
    free(scratch);
    free(zeros);
    return 0;
}
int eff_wino_fused(const float* x, const float* up, const float* bias, float* y, i64 N, i64 H, i64 W, i64 C,
                   i64 Co, i64 OH, i64 OW, int PH, int PW, int act, i64 B, int nt) {
    return wino_fused_run(x, up, bias, y, N, H, W, C, Co, OH, OW, PH, PW, act, B, nt, NULL);
}
/* eff_wino_fused followed by a 1x1 conv (+ residual) in the same pass: y2 = act2(conv1x1(act(
 * wino(x)))) + res, the 3x3 conv's output (a Fused-MBConv's expanded tensor, 33 MB for V2-S's
 * 75x75 stage at batch 8) never written out: each run of WINO_PROJ_TILES tiles leaves the
 * output transform into a per-thread buffer, and the 1x1 GEMM (wp2: pointwise panels, Co2
 * output channels) reads its rows from there, storing each pixel where it belongs.  The same
 * arithmetic as the two calls (eff_wino_fused, then eff_pw_fwd with res), so the same bits.
 * -1: out of memory. */
int eff_wino_pw_fused(const float* x, const float* up, const float* bias, i64 N, i64 H, i64 W, i64 C, i64 Co,
                      i64 OH, i64 OW, int PH, int PW, int act, const float* wp2, const float* bias2, const float* res,
                      float* y2, i64 Co2, int act2, i64 B, int nt) {
    const wino_proj pj = {wp2, bias2, res, y2, Co2, act2};
    return wino_fused_run(x, up, bias, NULL, N, H, W, C, Co, OH, OW, PH, PW, act, B, nt, &pj);
}
#endif

/* ---- int8 inference glue (post-training quantized models, quint8 tensors) ----
 * y[i] = lut[x[i]]: an activation between two quantized tensors as one lookup per byte (PyTorch:
 * dequantize, a float activation, quantize: three passes and a float tensor 4x the size). */
#ifdef EFF_X86
#define VBMI __attribute__((target("avx512f,avx512bw,avx512vbmi")))
static int have_vbmi(void) {
    static int v = -1;
    if (v < 0) { __builtin_cpu_init(); v = avx512() && __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bw"); }
    return v;
}
/* 64 bytes at a time: two 128-entry permutes (the low seven bits index) and the top bit picks */
VBMI static void q_lut_vbmi(const uint8_t* x, uint8_t* y, i64 n, const uint8_t* lut) {
    const __m512i t0 = _mm512_loadu_si512(lut), t1 = _mm512_loadu_si512(lut + 64), t2 = _mm512_loadu_si512(lut + 128),
                  t3 = _mm512_loadu_si512(lut + 192);
    for (i64 i = 0; i < n; i += 64) {
        const __mmask64 k = n - i >= 64 ? ~0ULL : (~0ULL >> (64 - (n - i)));
        const __m512i v = _mm512_maskz_loadu_epi8(k, x + i);
        const __m512i lo = _mm512_permutex2var_epi8(t0, v, t1), hi = _mm512_permutex2var_epi8(t2, v, t3);
        _mm512_mask_storeu_epi8(y + i, k, _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), lo, hi));
    }
}
#endif
void eff_q_lut(const uint8_t* x, uint8_t* y, i64 n, const uint8_t* lut, int nt) {
    const i64 chunk = 1 << 16, nc = (n + chunk - 1) / chunk;
    #pragma omp parallel for schedule(static) num_threads(nc > 1 ? nt : 1)
    for (i64 c = 0; c < nc; c++) {
        const i64 s = c * chunk, e = s + chunk < n ? s + chunk : n;
#ifdef EFF_X86
        if (have_vbmi()) { q_lut_vbmi(x + s, y + s, e - s, lut); continue; }
#endif
        for (i64 i = s; i < e; i++) y[i] = lut[x[i]];
    }
}
/* y = quantize(dequantize(x) * g): a squeeze-excite's per-image, per-channel gate on a quint8
 * channels-last tensor (N * HW rows of C); m = sx * g / sy per channel, y = clamp(round(m * (x -
 * zx)) + zy, 0, 255), rounding half to even as quantize_per_tensor does (PyTorch's quantized.mul
 * broadcasts the (N, C, 1, 1) gate at ~2 ms per call on B0's batch-8 tensors) */
#ifdef EFF_X86
/* |v| <= 1e6 before the int32 conversion (out of range it gives INT_MIN, which would clamp to 0) */
AVX512 static inline __m512 clamp_q512(__m512 v) {
    return _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-1e6f)), _mm512_set1_ps(1e6f));
}
AVX512 static void q_gate_row512(const uint8_t* x, uint8_t* y, const float* m, i64 C, int zx, int zy) {
    const __m512i vzx = _mm512_set1_epi32(zx), vzy = _mm512_set1_epi32(zy), zero = _mm512_setzero_si512();
    for (i64 c = 0; c < C; c += 16) {
        const __mmask16 k = lanes16(C - c);
        uint8_t tail[16] = {0};
        if (C - c < 16) memcpy(tail, x + c, (size_t)(C - c));
        const __m128i b = _mm_loadu_si128((const __m128i*)(C - c < 16 ? tail : x + c));
        const __m512i q = _mm512_sub_epi32(_mm512_cvtepu8_epi32(b), vzx);
        const __m512 v = clamp_q512(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, m + c), _mm512_cvtepi32_ps(q)));
        const __m512i r = _mm512_max_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(v), vzy), zero);  /* nearest even */
        _mm512_mask_cvtusepi32_storeu_epi8(y + c, k, r);  /* saturates above 255 */
    }
}
#endif
void eff_q_gate_mul(const uint8_t* x, uint8_t* y, const float* g, i64 N, i64 HW, i64 C, float sx, int zx, float sy,
                    int zy, int nt) {
    #pragma omp parallel num_threads(N * HW * C > (1 << 16) ? nt : 1)
    {
        float* m = (float*)malloc(sizeof(float) * (size_t)(C > 0 ? C : 1));
        i64 last = -1;
        #pragma omp for schedule(static)
        for (i64 r = 0; r < N * HW; r++) {
            const i64 n = r / HW;
            if (n != last) {
                for (i64 c = 0; c < C; c++) m[c] = sx * g[n * C + c] / sy;
                last = n;
            }
            const uint8_t* xr = x + r * C;
            uint8_t* yr = y + r * C;
#ifdef EFF_X86
            if (avx512()) { q_gate_row512(xr, yr, m, C, zx, zy); continue; }
#endif
            for (i64 c = 0; c < C; c++) {  /* + 1.5 * 2^23 and back: round half to even, |v| < 2^22 */
                float v = m[c] * (float)((int)xr[c] - zx);
                v = (v + 12582912.0f) - 12582912.0f + (float)zy;
                yr[c] = (uint8_t)(v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v);
            }
        }
        free(m);
    }
}

/* y = clamp(round(act(x) / scale) + zp, 0, 255): a float layer's activation and the quantization
 * of its output in one pass (an int8 model's float stem: PyTorch's SiLU and quantize_per_tensor are
 * two passes and a float tensor); round half to even like quantize_per_tensor */
#ifdef EFF_X86
AVX512 static void q_from_float512(const float* x, uint8_t* y, i64 n, int act, float inv, int zp) {
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i vzp = _mm512_set1_epi32(zp), zero = _mm512_setzero_si512();
    for (i64 i = 0; i < n; i += 16) {
        const __mmask16 k = lanes16(n - i);
        const __m512 v = clamp_q512(_mm512_mul_ps(act16(_mm512_maskz_loadu_ps(k, x + i), act), vinv));
        const __m512i r = _mm512_max_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(v), vzp), zero);
        _mm512_mask_cvtusepi32_storeu_epi8(y + i, k, r);
    }
}
#endif
void eff_q_from_float(const float* x, uint8_t* y, i64 n, int act, float scale, int zp, int nt) {
    const float inv = 1.0f / scale;
    const i64 chunk = 1 << 14, nc = (n + chunk - 1) / chunk;
    #pragma omp parallel for schedule(static) num_threads(nc > 1 ? nt : 1)
    for (i64 c = 0; c < nc; c++) {
        const i64 s = c * chunk, e = s + chunk < n ? s + chunk : n;
#ifdef EFF_X86
        if (avx512()) { q_from_float512(x + s, y + s, e - s, act, inv, zp); continue; }
#endif
        for (i64 i = s; i < e; i++) {  /* + 1.5 * 2^23 and back: round half to even */
            float v = act_s(x[i], act) * inv;
            v = fminf(fmaxf(v, -1e6f), 1e6f);
            v = (v + 12582912.0f) - 12582912.0f + (float)zp;
            y[i] = (uint8_t)(v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v);
        }
    }
}
/* channel sums of a quint8 channels-last tensor (N * HW rows of C bytes) into s[n * C + c], exact
 * (int32 per block of at most 2^23 / 255 rows, then int64): a squeeze-excite's pooling without a
 * dequantized float copy of the tensor */
void eff_q_channel_sums(const uint8_t* x, int64_t* s, i64 N, i64 HW, i64 C, int nt) {
    #pragma omp parallel for schedule(static) num_threads(N > 1 && N * HW * C > (1 << 16) ? nt : 1)
    for (i64 n = 0; n < N; n++) {
        int32_t* acc = (int32_t*)calloc((size_t)(C > 0 ? C : 1), sizeof(int32_t));
        for (i64 c = 0; c < C; c++) s[n * C + c] = 0;
        for (i64 r0 = 0; r0 < HW; r0 += 32768) {
            const i64 r1 = r0 + 32768 < HW ? r0 + 32768 : HW;
            for (i64 r = r0; r < r1; r++) {
                const uint8_t* xr = x + (n * HW + r) * C;
                for (i64 c = 0; c < C; c++) acc[c] += xr[c];
            }
            for (i64 c = 0; c < C; c++) { s[n * C + c] += acc[c]; acc[c] = 0; }
        }
        free(acc);
    }
}

/* channel sums of a bf16 channels-last tensor (N * HW rows of C values) into s[n * C + c], in fp32
 * (a bf16 value is the high half of its fp32): a bf16 model's squeeze-excite pooling.  PyTorch's
 * mean over H, W of a channels-last bf16 tensor converts it to fp32 first: 33 ms for B0's first
 * stage at batch 8 against 1 ms for the fp32 mean (one-off, 2 threads) */
void eff_bf16_channel_sums(const uint16_t* x, float* s, i64 N, i64 HW, i64 C, int nt) {
    #pragma omp parallel for schedule(static) num_threads(N > 1 && N * HW * C > (1 << 16) ? nt : 1)
    for (i64 n = 0; n < N; n++) {
        float* acc = s + n * C;
        for (i64 c = 0; c < C; c++) acc[c] = 0.0f;
        for (i64 r = 0; r < HW; r++) {
            const uint16_t* xr = x + (n * HW + r) * C;
            for (i64 c = 0; c < C; c++) {
                union { uint32_t u; float f; } v = { (uint32_t)xr[c] << 16 };
                acc[c] += v.f;
            }
        }
    }
}

/* ---- int8 1x1 convolution: int8 weights, activations quantized per row on the fly ----
 * y[r, n] = act(sum_k xq[r, k] * wq[n, k] * s_r * sw_n + min_r * sw_n * sum_k wq[n, k] + b_n) (+ res)
 * where row r of x (times its image's gates) is quantized to bytes over its own range:
 * s_r = (max_r - min_r) / 255, xq = round((x - min_r) / s_r) in 0..255, x ~ min_r + s_r * xq;
 * wq in -127..127 with one scale sw_n per output channel.  A per-row (per-pixel) range is what
 * dynamic quantization of transformer activations uses (per token): EfficientNet's activations
 * differ 10x in range between channels and images, which a per-tensor static scale cannot follow.
 * The u8 x s8 products are summed exactly in int32 (VNNI vpdpbusd: 64 multiply-adds per
 * instruction, 4x an fp32 FMA), and the int32 sums never overflow for K < 2^31 / (255 * 127).
 * Weights: panels of 16 output channels, (P, K4, 16, 4) bytes with K4 = ceil(K / 4), panel p at
 * wq + p * ps * 64 (ps >= K4 quads: kernels.pointwise_weight_q8 pads each panel to whole AMX tiles,
 * ps = q8_kp(K), zeros past K4): the four bytes of one k-quad of one channel are adjacent
 * (vpdpbusd's operand layout, and an AMX B tile's: 16 quads by 16 channels); padding is zero.
 * cols: (3, P * 16) floats, sw_n, sw_n * sum_k wq[n, k], b_n, zero past N. */
#define Q8_MR 12
#define Q8_AMX_MR 32  /* the AMX code's rows per group: two tiles of 16 */
/* k-quads per weight panel: a whole number of AMX tiles (16 quads, 64 input channels) */
static inline i64 q8_kp(i64 K) { return (K + 63) / 64 * 16; }
/* a row whose range is below this is stored as its minimum (error < 1e-30; 255 / range would
 * overflow below ~7.5e-37); kernels.quantize_rows uses the same bound */
#define Q8_MIN_SPAN 1e-30f
static int q8_row_range(const float* x, const float* g, i64 K, float* mn_, float* mx_) {
    float mn = INFINITY, mx = -INFINITY;
    int nan = 0;
    for (i64 k = 0; k < K; k++) {
        const float v = g ? x[k] * g[k] : x[k];
        nan |= isnan(v);
        mn = v < mn ? v : mn; mx = v > mx ? v : mx;
    }
    *mn_ = mn; *mx_ = mx;
    return nan;
}
static inline float q8_inv(float mn, float mx) { return mx - mn > Q8_MIN_SPAN ? 255.0f / (mx - mn) : 0.0f; }
/* the row's (scale, min) for the epilogue: NaN where the row holds a NaN or its range is not
 * finite (every output of that pixel NaN, as the float conv gives), the minimum alone where its
 * range is below Q8_MIN_SPAN */
static inline void q8_row_params(int nan, float mn, float mx, float* s, float* m) {
    const float span = mx - mn;
    if (nan || !isfinite(span)) { *s = *m = NAN; return; }
    *s = span > Q8_MIN_SPAN ? span / 255.0f : 0.0f;
    *m = mn;
}
static void q8_row_bytes(const float* x, const float* g, i64 K, i64 K4, float mn, float inv, uint8_t* q) {
    for (i64 k = 0; k < K; k++) {
        const float v = g ? x[k] * g[k] : x[k];
        const float t = nearbyintf((v - mn) * inv);
        q[k] = (uint8_t)(t > 0.0f ? (t < 255.0f ? t : 255.0f) : 0.0f);  /* NaN -> 0 (the row's scale is NaN) */
    }
    for (i64 k = K; k < 4 * K4; k++) q[k] = 0;
}
#ifdef EFF_X86
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")))
/* the VNNI code where the CPU has it and the 16-lane code is on (eff_set_avx512(0): plain C) */
static int have_vnni(void) {
    static int v = -1;
    if (v < 0) { __builtin_cpu_init(); v = have_avx512() && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw"); }
    return v && avx512();
}
/* one row to bytes, 16 lanes at a time: its range, then (v - min) * 255 / range rounded.  Whole
 * vectors unmasked, two running minima and maxima (two dependency chains), NaN and infinity
 * found by one running v * 0 (NaN for both: either makes the row's scale NaN, q8_row_params),
 * and the bytes by vpmovusdb's unsigned saturation: (v - min) * inv lies in [0, 255] up to
 * rounding for every finite row (v >= min), so it packs what clamping to 0..255 would */
VNNI static void q8_row_512(const float* x, const float* g, i64 K, i64 K4, uint8_t* q, float* s_, float* mn_) {
    const __m512 zero = _mm512_setzero_ps();
    __m512 mn0 = _mm512_set1_ps(INFINITY), mx0 = _mm512_set1_ps(-INFINITY), mn1 = mn0, mx1 = mx0, chk = zero;
    i64 k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512 v0 = _mm512_loadu_ps(x + k), v1 = _mm512_loadu_ps(x + k + 16);
        if (g) { v0 = _mm512_mul_ps(v0, _mm512_loadu_ps(g + k)); v1 = _mm512_mul_ps(v1, _mm512_loadu_ps(g + k + 16)); }
        mn0 = _mm512_min_ps(mn0, v0); mx0 = _mm512_max_ps(mx0, v0);
        mn1 = _mm512_min_ps(mn1, v1); mx1 = _mm512_max_ps(mx1, v1);
        chk = _mm512_fmadd_ps(v0, zero, chk); chk = _mm512_fmadd_ps(v1, zero, chk);
    }
    for (; k < K; k += 16) {
        const __mmask16 m = lanes16(K - k);
        __m512 v = _mm512_maskz_loadu_ps(m, x + k);
        if (g) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, g + k));
        mn0 = _mm512_mask_min_ps(mn0, m, mn0, v); mx0 = _mm512_mask_max_ps(mx0, m, mx0, v);
        chk = _mm512_fmadd_ps(v, zero, chk);  /* masked-off lanes: 0 * 0 */
    }
    const float lo = _mm512_reduce_min_ps(_mm512_min_ps(mn0, mn1)), hi = _mm512_reduce_max_ps(_mm512_max_ps(mx0, mx1));
    const int nan = _mm512_cmp_ps_mask(chk, chk, _CMP_UNORD_Q) != 0;
    const float inv = nan ? 0.0f : q8_inv(lo, hi);
    const __m512 vlo = _mm512_set1_ps(lo), vinv = _mm512_set1_ps(inv);
    for (k = 0; k + 16 <= K; k += 16) {
        __m512 v = _mm512_loadu_ps(x + k);
        if (g) v = _mm512_mul_ps(v, _mm512_loadu_ps(g + k));
        _mm_storeu_si128((__m128i*)(q + k), _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(v, vlo), vinv))));
    }
    for (; k < 4 * K4; k += 16) {  /* the last part vector, and zeros up to the quad */
        const __mmask16 m = lanes16(K - k), mq = lanes16(4 * K4 - k);
        __m512 v = _mm512_maskz_loadu_ps(m, x + k);
        if (g) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, g + k));
        const __m512i t = _mm512_maskz_mov_epi32(m, _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(v, vlo), vinv)));
        _mm_mask_storeu_epi8(q + k, mq, _mm512_cvtusepi32_epi8(t));
    }
    q8_row_params(nan, lo, hi, s_, mn_);
}
VNNI static inline void q8_out(float* y, const float* r, __m512i acc, float s, float mn, const float* cols, i64 PN,
                               int act, __mmask16 m, int stream) {
    const __m512 sc = _mm512_mul_ps(_mm512_set1_ps(s), _mm512_loadu_ps(cols));
    const __m512 off = _mm512_fmadd_ps(_mm512_set1_ps(mn), _mm512_loadu_ps(cols + PN), _mm512_loadu_ps(cols + 2 * PN));
    __m512 v = act16(_mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), sc, off), act);
    if (r) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, r));
    if (stream && m == 0xFFFF) { _mm256_stream_ps(y, _mm512_castps512_ps256(v)); _mm256_stream_ps(y + 8, hi256(v)); }
    else _mm512_mask_storeu_ps(y, m, v);
}
/* Q8_MR rows of bytes (row i at q + i * 4 * K4) times two panels (w0, w1), or one (w1 NULL) */
#define Q8_DP(i) do { const __m512i a_ = _mm512_set1_epi32(*(const int32_t*)(q + (i) * ks + 4 * k4)); \
    c##i = _mm512_dpbusd_epi32(c##i, a_, b0); if (two) d##i = _mm512_dpbusd_epi32(d##i, a_, b1); } while (0)
VNNI static void q8_tile(const uint8_t* q, i64 K4, const int8_t* w0, const int8_t* w1, int nrows, float* const* yr,
                         const float* const* rr, const float* rs, const float* rmn, const float* cols, i64 PN,
                         int ncols1, int act, int stream) {
    const i64 ks = 4 * K4;
    const int two = w1 != NULL;
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0,
            c9 = c0, c10 = c0, c11 = c0;
    __m512i d0 = c0, d1 = c0, d2 = c0, d3 = c0, d4 = c0, d5 = c0, d6 = c0, d7 = c0, d8 = c0, d9 = c0, d10 = c0,
            d11 = c0;
    if (two) {
        for (i64 k4 = 0; k4 < K4; k4++) {
            const __m512i b0 = _mm512_loadu_si512(w0 + 64 * k4), b1 = _mm512_loadu_si512(w1 + 64 * k4);
            Q8_DP(0); Q8_DP(1); Q8_DP(2); Q8_DP(3); Q8_DP(4); Q8_DP(5);
            Q8_DP(6); Q8_DP(7); Q8_DP(8); Q8_DP(9); Q8_DP(10); Q8_DP(11);
        }
    } else {
        const __m512i b1 = _mm512_setzero_si512();
        for (i64 k4 = 0; k4 < K4; k4++) {
            const __m512i b0 = _mm512_loadu_si512(w0 + 64 * k4);
            Q8_DP(0); Q8_DP(1); Q8_DP(2); Q8_DP(3); Q8_DP(4); Q8_DP(5);
            Q8_DP(6); Q8_DP(7); Q8_DP(8); Q8_DP(9); Q8_DP(10); Q8_DP(11);
        }
    }
    const __m512i c[12] = {c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11};
    const __m512i d[12] = {d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11};
    const __mmask16 m0 = two ? 0xFFFF : lanes16(ncols1), m1 = lanes16(ncols1);
    for (int i = 0; i < nrows; i++) {
        q8_out(yr[i], rr[i], c[i], rs[i], rmn[i], cols, PN, act, m0, stream);
        if (two) q8_out(yr[i] + 16, rr[i] ? rr[i] + 16 : NULL, d[i], rs[i], rmn[i], cols + 16, PN, act, m1, stream);
    }
}
#undef Q8_DP
/* one to four rows (NR) x one or two panels (w1 NULL: one): q8_tile for a group of few rows (a
 * classifier at batch 1), which q8_tile would run as twelve, eleven of them zeros.  The same
 * exact int32 sums and epilogue, so the same results. */
VNNI static inline __attribute__((always_inline)) void q8_few_tile(
        const uint8_t* q, i64 K4, const int8_t* w0, const int8_t* w1, const int NR, float* const* yr,
        const float* const* rr, const float* rs, const float* rmn, const float* cols, i64 PN, int ncols1, int act) {
    const i64 ks = 4 * K4;
    __m512i c[4], d[4];
#pragma GCC unroll 4
    for (int i = 0; i < NR; i++) c[i] = d[i] = _mm512_setzero_si512();
    if (w1) {
        for (i64 k4 = 0; k4 < K4; k4++) {
            const __m512i b0 = _mm512_loadu_si512(w0 + 64 * k4), b1 = _mm512_loadu_si512(w1 + 64 * k4);
#pragma GCC unroll 4
            for (int i = 0; i < NR; i++) {
                const __m512i a = _mm512_set1_epi32(*(const int32_t*)(q + i * ks + 4 * k4));
                c[i] = _mm512_dpbusd_epi32(c[i], a, b0); d[i] = _mm512_dpbusd_epi32(d[i], a, b1);
            }
        }
    } else {
        for (i64 k4 = 0; k4 < K4; k4++) {
            const __m512i b0 = _mm512_loadu_si512(w0 + 64 * k4);
#pragma GCC unroll 4
            for (int i = 0; i < NR; i++)
                c[i] = _mm512_dpbusd_epi32(c[i], _mm512_set1_epi32(*(const int32_t*)(q + i * ks + 4 * k4)), b0);
        }
    }
    const __mmask16 m0 = w1 ? 0xFFFF : lanes16(ncols1), m1 = lanes16(ncols1);
#pragma GCC unroll 4
    for (int i = 0; i < NR; i++) {
        q8_out(yr[i], rr[i], c[i], rs[i], rmn[i], cols, PN, act, m0, 0);
        if (w1) q8_out(yr[i] + 16, rr[i] ? rr[i] + 16 : NULL, d[i], rs[i], rmn[i], cols + 16, PN, act, m1, 0);
    }
}
#define Q8_FEW_ROWS 4
VNNI static void q8_few(const uint8_t* q, i64 K4, const int8_t* w0, const int8_t* w1, int nr, float* const* yr,
                        const float* const* rr, const float* rs, const float* rmn, const float* cols, i64 PN,
                        int ncols1, int act) {
    switch (nr) {
        case 1: q8_few_tile(q, K4, w0, w1, 1, yr, rr, rs, rmn, cols, PN, ncols1, act); break;
        case 2: q8_few_tile(q, K4, w0, w1, 2, yr, rr, rs, rmn, cols, PN, ncols1, act); break;
        case 3: q8_few_tile(q, K4, w0, w1, 3, yr, rr, rs, rmn, cols, PN, ncols1, act); break;
        default: q8_few_tile(q, K4, w0, w1, 4, yr, rr, rs, rmn, cols, PN, ncols1, act); break;
    }
}
/* AVX2 without VNNI (most AMD CPUs before Zen 4, Intel client CPUs): the bytes widened to 16 bits
 * and vpmaddwd (16 products summed in pairs into 32 bits: exact, as u8 x s8 pairs fit) + vpaddd,
 * ~1.5x the multiply-adds per cycle of fp32 FMA; the same int32 sums as the VNNI code */
AVX2 static void q8_row_avx2(const float* x, const float* g, i64 K, i64 K4, uint16_t* q, float* s_, float* mn_) {
    __m256 mn = _mm256_set1_ps(INFINITY), mx = _mm256_set1_ps(-INFINITY);
    int nan = 0;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (i64 k = 0; k < K; k += 8) {
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(K - k < 8 ? K - k : 8)), lane);
        __m256 v = _mm256_maskload_ps(x + k, m);
        if (g) v = _mm256_mul_ps(v, _mm256_maskload_ps(g + k, m));
        const __m256 mf = _mm256_castsi256_ps(m);
        nan |= _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q), mf));
        mn = _mm256_blendv_ps(mn, _mm256_min_ps(mn, v), mf); mx = _mm256_blendv_ps(mx, _mm256_max_ps(mx, v), mf);
    }
    float lo_[8], hi_[8];
    _mm256_storeu_ps(lo_, mn); _mm256_storeu_ps(hi_, mx);
    float lo = lo_[0], hi = hi_[0];
    for (int i = 1; i < 8; i++) { lo = lo_[i] < lo ? lo_[i] : lo; hi = hi_[i] > hi ? hi_[i] : hi; }
    const float inv = nan ? 0.0f : q8_inv(lo, hi);
    const __m256 vlo = _mm256_set1_ps(lo), vinv = _mm256_set1_ps(inv);
    const __m256i zero = _mm256_setzero_si256(), top = _mm256_set1_epi32(255);
    for (i64 k = 0; k < 4 * K4; k += 8) {
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(K - k < 8 ? (K - k > 0 ? K - k : 0) : 8)), lane);
        __m256 v = _mm256_maskload_ps(x + k, m);
        if (g) v = _mm256_mul_ps(v, _mm256_maskload_ps(g + k, m));
        __m256i t = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(v, vlo), vinv));
        t = _mm256_and_si256(_mm256_min_epi32(_mm256_max_epi32(t, zero), top), m);  /* lanes past K: 0 */
        const __m128i w = _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(t, t), 0x08));
        if (4 * K4 - k >= 8) _mm_storeu_si128((__m128i*)(q + k), w);
        else _mm_storel_epi64((__m128i*)(q + k), w);  /* 4 * K4 - k == 4 */
    }
    q8_row_params(nan != 0, lo, hi, s_, mn_);
}
/* up to six rows (16-bit, row i at q + i * ks) x eight output channels (half h of a panel: the
 * panel's bytes of k-quad k4 at w + 64 * k4 + 32 * h, four channels of four bytes per 16) */
AVX2 static void q8_tile_avx2(const uint16_t* q, i64 ks, i64 K4, const int8_t* w, int nrows, float* const* yr,
                              const float* const* rr, int c, const float* rs, const float* rmn, const float* cols,
                              i64 PN, int ncols, int act) {  /* c: the half's first column in yr / rr */
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;  /* channels 0-3 */
    __m256i b0 = a0, b1 = a0, b2 = a0, b3 = a0, b4 = a0, b5 = a0;  /* channels 4-7 */
    const uint16_t *q0 = q, *q1 = q + (nrows > 1) * ks, *q2 = q + (nrows > 2) * 2 * ks, *q3 = q + (nrows > 3) * 3 * ks,
                   *q4 = q + (nrows > 4) * 4 * ks, *q5 = q + (nrows > 5) * 5 * ks;
#define Q8_MADD(i) do { const __m256i x_ = _mm256_set1_epi64x(*(const int64_t*)(q##i + 4 * k4)); \
    a##i = _mm256_add_epi32(a##i, _mm256_madd_epi16(x_, w0)); b##i = _mm256_add_epi32(b##i, _mm256_madd_epi16(x_, w1)); } while (0)
    for (i64 k4 = 0; k4 < K4; k4++) {
        const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w + 64 * k4)));
        const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w + 64 * k4 + 16)));
        Q8_MADD(0); Q8_MADD(1); Q8_MADD(2); Q8_MADD(3); Q8_MADD(4); Q8_MADD(5);
    }
#undef Q8_MADD
    const __m256i A[6] = {a0, a1, a2, a3, a4, a5}, B[6] = {b0, b1, b2, b3, b4, b5};
    const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(ncols), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 cs = _mm256_loadu_ps(cols), co = _mm256_loadu_ps(cols + PN), cb = _mm256_loadu_ps(cols + 2 * PN);
    for (int i = 0; i < nrows; i++) {  /* each channel's two partial sums (k 0-1, 2-3) added */
        const __m256i acc = _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(A[i], B[i]), order);
        const __m256 sc = _mm256_mul_ps(_mm256_set1_ps(rs[i]), cs);
        const __m256 off = _mm256_fmadd_ps(_mm256_set1_ps(rmn[i]), co, cb);
        __m256 v = act_v(_mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), sc, off), act);
        if (rr[i]) v = _mm256_add_ps(v, _mm256_maskload_ps(rr[i] + c, m));
        if (ncols == 8) _mm256_storeu_ps(yr[i] + c, v);
        else _mm256_maskstore_ps(yr[i] + c, m, v);
    }
}
/* AMX (Intel Xeon since Sapphire Rapids): tdpbusd multiplies a 16 x 64 tile of row bytes by a
 * 16-quad x 16-channel tile of weights into 16 x 16 int32 sums, 1024 multiply-adds per instruction
 * (16x vpdpbusd's), the same exact int32 sums.  Linux (5.16+) lends a thread the 8 KiB tile state
 * only after the process asks for it (arch_prctl ARCH_REQ_XCOMP_PERM); where it refuses, or the CPU
 * lacks AMX-TILE / AMX-INT8 (CPUID 7.0 EDX bits 24, 25), the VNNI code runs. */
#define AMX __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")))
static int have_amx(void) {
    static int v = -1;
    if (v < 0) {
        unsigned a = 0, b = 0, c = 0, d = 0;
        const int cpu = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1u) && (d >> 25 & 1u);
        v = cpu && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
    }
    return v && have_vnni();
}
typedef struct { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } q8_tilecfg;
/* rows [m0, m1) x panels [p0, p1): 32 rows quantized into q (row stride 4 * KP, zeros past K),
 * then each pair of panels: tiles 0-3 the 32 x 32 sums, 4-5 the row bytes, 6-7 the two panels'
 * weights; the sums go through L1 (acc) to the VNNI code's epilogue */
AMX static void q8_block_amx(const float* x, const int8_t* wq, i64 ps, const float* cols, const float* res,
                             const float* gate, i64 hw, float* y, i64 m0, i64 m1, i64 p0, i64 p1, i64 K, i64 N,
                             int act, int stream, uint8_t* q) {
    const i64 KP = q8_kp(K), PN = ((N + 15) / 16) * 16, ks = 4 * KP;
    q8_tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }
    _tile_loadconfig(&cfg);
    int32_t acc[Q8_AMX_MR * 32] __attribute__((aligned(64)));
    float rs[Q8_AMX_MR], rmn[Q8_AMX_MR];
    for (i64 r0 = m0; r0 < m1; r0 += Q8_AMX_MR) {
        const int nrows = (int)(m1 - r0 < Q8_AMX_MR ? m1 - r0 : Q8_AMX_MR), two_a = nrows > 16;
        for (int i = 0; i < (two_a ? 32 : 16); i++) {
            if (i >= nrows) { memset(q + i * ks, 0, ks); continue; }
            const i64 row = r0 + i;
            q8_row_512(x + row * K, gate ? gate + (row / hw) * K : NULL, K, KP, q + i * ks, rs + i, rmn + i);
        }
        for (i64 p = p0; p < p1; p += 2) {
            const int np = p + 1 < p1 ? 2 : 1;
            const int8_t *b0 = wq + p * ps * 64, *b1 = b0 + ps * 64;  /* ps >= KP: the tiles stay in the panel */
            _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
            for (i64 kc = 0; kc < KP; kc += 16) {
                _tile_loadd(4, q + 4 * kc, ks);
                _tile_loadd(6, b0 + 64 * kc, 64);
                _tile_dpbusd(0, 4, 6);
                if (two_a) { _tile_loadd(5, q + 16 * ks + 4 * kc, ks); _tile_dpbusd(2, 5, 6); }
                if (np == 2) {
                    _tile_loadd(7, b1 + 64 * kc, 64);
                    _tile_dpbusd(1, 4, 7);
                    if (two_a) _tile_dpbusd(3, 5, 7);
                }
            }
            _tile_stored(0, acc, 128); _tile_stored(1, acc + 16, 128);
            _tile_stored(2, acc + 16 * 32, 128); _tile_stored(3, acc + 16 * 32 + 16, 128);
            const i64 c0 = p * 16, last = N - c0 - (np - 1) * 16 < 16 ? N - c0 - (np - 1) * 16 : 16;
            const __mmask16 mk0 = np == 2 ? 0xFFFF : lanes16(last), mk1 = lanes16(last);
            for (int i = 0; i < nrows; i++) {
                const i64 r = r0 + i;
                const float* rr = res ? res + r * N + c0 : NULL;
                q8_out(y + r * N + c0, rr, _mm512_load_si512(acc + i * 32), rs[i], rmn[i], cols + c0, PN, act, mk0,
                       stream);
                if (np == 2)
                    q8_out(y + r * N + c0 + 16, rr ? rr + 16 : NULL, _mm512_load_si512(acc + i * 32 + 16), rs[i],
                           rmn[i], cols + c0 + 16, PN, act, mk1, stream);
            }
        }
    }
    _tile_release();
}
#endif
/* which int8 code runs: 3 the best the CPU has (AMX), 2 at most AVX512-VNNI, 1 at most AVX2, 0 plain C
 * (tests, A/B) */
static int q8_isa_cap = 3;
static int q8_last = -1;  /* the code the last eff_pw_q8_fwd ran (tests) */
int eff_q8_set_isa(int level) { const int old = q8_isa_cap; q8_isa_cap = level; return old; }
static int q8_isa(void) {
#ifdef EFF_X86
    if (q8_isa_cap >= 3 && have_amx()) return 3;
    if (q8_isa_cap >= 2 && have_vnni()) return 2;
    if (q8_isa_cap >= 1 && have_avx2()) return 1;
#endif
    return 0;
}
/* rows [m0, m1) x panels [p0, p1) on the calling thread: Q8_MR rows quantized into q (L1), then
 * every panel of the block read against them */
static void q8_block(const float* x, const int8_t* wq, i64 ps, const float* cols, const float* res, const float* gate, i64 hw,
                     float* y, i64 m0, i64 m1, i64 p0, i64 p1, i64 K, i64 N, int act, int stream, uint8_t* q) {
    const i64 K4 = (K + 3) / 4, KP = ps, PN = ((N + 15) / 16) * 16, ks = 4 * K4;
    float rs[Q8_MR], rmn[Q8_MR];
    float* yr[Q8_MR]; const float* rr[Q8_MR];
    const int isa = q8_isa() < 2 ? q8_isa() : 2, vnni = isa == 2;  /* AMX's callers: the VNNI code here */
    for (i64 r0 = m0; r0 < m1; r0 += Q8_MR) {
        const int nrows = (int)(m1 - r0 < Q8_MR ? m1 - r0 : Q8_MR);
        for (int i = 0; i < Q8_MR; i++) {
            const i64 row = r0 + (i < nrows ? i : 0);
            const float* g = gate ? gate + (row / hw) * K : NULL;
            const i64 rb = ks * (isa == 1 ? 2 : 1);  /* a row's bytes (16-bit values on AVX2) */
            if (i >= nrows) { memset(q + i * rb, 0, rb); rs[i] = rmn[i] = 0.0f; continue; }
#ifdef EFF_X86
            if (vnni) { q8_row_512(x + row * K, g, K, K4, q + i * ks, rs + i, rmn + i); continue; }
            if (isa == 1) { q8_row_avx2(x + row * K, g, K, K4, (uint16_t*)q + i * ks, rs + i, rmn + i); continue; }
#endif
            float mn, mx;
            const int nan = q8_row_range(x + row * K, g, K, &mn, &mx);
            q8_row_bytes(x + row * K, g, K, K4, mn, nan ? 0.0f : q8_inv(mn, mx), q + i * ks);
            q8_row_params(nan, mn, mx, rs + i, rmn + i);
        }
        for (i64 p = p0; p < p1;) {
            const int np = p + 1 < p1 ? 2 : 1;
            const i64 c0 = p * 16, ncols = N - c0 - (np - 1) * 16 < 16 ? N - c0 - (np - 1) * 16 : 16;
            for (int i = 0; i < nrows; i++) {
                yr[i] = y + (r0 + i) * N + c0;
                rr[i] = res ? res + (r0 + i) * N + c0 : NULL;
            }
#ifdef EFF_X86
            if (vnni && nrows <= Q8_FEW_ROWS) {
                q8_few(q, K4, wq + p * KP * 64, np == 2 ? wq + (p + 1) * KP * 64 : NULL, nrows, yr, rr, rs, rmn,
                       cols + c0, PN, (int)ncols, act);
                p += np;
                continue;
            }
            if (vnni) {
                q8_tile(q, K4, wq + p * KP * 64, np == 2 ? wq + (p + 1) * KP * 64 : NULL, nrows, yr, rr, rs, rmn,
                        cols + c0, PN, (int)ncols, act, stream);
                p += np;
                continue;
            }
#endif
            const i64 nc = N - c0 < 16 ? N - c0 : 16;
#ifdef EFF_X86
            if (isa == 1) {
                for (int h = 0; h < 2 && 8 * h < nc; h++)
                    for (int r = 0; r < nrows; r += 6)
                        q8_tile_avx2((const uint16_t*)q + r * ks, ks, K4, wq + p * KP * 64 + 32 * h,
                                     nrows - r < 6 ? nrows - r : 6, yr + r, rr + r, 8 * h, rs + r, rmn + r,
                                     cols + c0 + 8 * h, PN, (int)(nc - 8 * h < 8 ? nc - 8 * h : 8), act);
                p += 1;
                continue;
            }
#endif
            for (int i = 0; i < nrows; i++)  /* plain C: one panel, exact int32 sums, same epilogue */
                for (i64 j = 0; j < nc; j++) {
                    int32_t acc = 0;
                    const int8_t* wj = wq + p * KP * 64 + j * 4;
                    for (i64 k = 0; k < 4 * K4; k++) acc += (int32_t)q[i * ks + k] * (int32_t)wj[(k / 4) * 64 + k % 4];
                    const i64 n = c0 + j;
                    float v = act_s((float)acc * (rs[i] * cols[n]) + (rmn[i] * cols[PN + n] + cols[2 * PN + n]), act);
                    if (rr[i]) v += rr[i][j];
                    yr[i][j] = v;
                }
            p += 1;
        }
    }
}

int eff_pw_q8_fwd(const float* x, const int8_t* wq, i64 ps, const float* cols, const float* res, const float* gate, i64 hw,
                  float* y, i64 M, i64 K, i64 N, int act, int nt) {
    /* the fp32 GEMM's split; each item quantizes its rows once per Q8_MR-row group */
    const i64 P = (N + 15) / 16, K4 = (K + 3) / 4, KP = q8_kp(K);
    /* AMX where the product is large: on smaller ones (B0 / MobileNetV3 at batch 1: 49-196 rows)
     * the VNNI code timed faster, 0.7-1.0x (tiles of 32 rows half empty, fewer items per thread),
     * and with few channels (40 -> 240, 96 -> 24 at b8: 0.82-0.94x) the epilogue dominates; 784
     * rows x 8M+ multiply-adds: AMX 1.4-2.3x (one-off sweeps on a Xeon with AMX, 2 threads) */
    const int amx = q8_isa() == 3 && ps >= KP && M >= 256 && K >= 48 && N >= 32 && M * K * N >= ((i64)8 << 20);
    q8_last = amx ? 3 : q8_isa() < 2 ? q8_isa() : 2;
    const i64 MR = amx ? Q8_AMX_MR : Q8_MR;
    i64 mt, pt, pc;
    gemm_split(M, P, MR, 0, nt, 1, &mt, &pt, &pc);
    /* one thread's rows (16-bit on AVX2; AMX: 32 rows of 4 * KP bytes) */
    const i64 qb = ((amx ? Q8_AMX_MR * 4 * KP : Q8_MR * 4 * K4 * 2) + 63) / 64 * 64;
    uint8_t* qs = (uint8_t*)aligned_alloc(64, (size_t)(qb * nt));
    if (!qs) return -1;
    const int stream = gemm_stream(M, N, y);
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (i64 t = 0; t < mt * pt; t++) {
        i64 m0, m1, p0, p1;
        gemm_item(t, M, P, MR, mt, pt, pc, &m0, &m1, &p0, &p1);
        uint8_t* q = qs + qb * omp_get_thread_num();
#ifdef EFF_X86
        if (amx) q8_block_amx(x, wq, ps, cols, res, gate, hw, y, m0, m1, p0, p1, K, N, act, stream, q);
        else
#endif
        q8_block(x, wq, ps, cols, res, gate, hw, y, m0, m1, p0, p1, K, N, act, stream, q);
#ifdef EFF_X86
        if (stream) _mm_sfence();
#endif
    }
    free(qs);
    return 0;
}
/* ---- bf16 1x1 convolution: bf16 weights and inputs, fp32 sums (AVX512-BF16) ----
 * y[r, n] = act(sum_k bf16(x[r, k] * g[k]) * wb[n, k] + b_n) (+ res): each row of x (times its
 * image's gates) rounded to bf16 (nearest even) on the fly while it is in L1, and multiplied by
 * vdpbf16ps: 32 multiply-adds per instruction, twice an fp32 FMA's, the products of two bf16
 * values exact in fp32 and the sums fp32 (the instruction flushes subnormal inputs and sums to
 * zero).  Activations stay fp32 between layers, as under torch.autocast: only the GEMM's operands
 * are bf16.  Weights: panels of 16 output channels, (P, K2, 16, 2) bf16 with K2 = ceil(K / 2),
 * panel p at wb + p * ps * 32 (ps >= K2 pairs): the two input channels of one pair of one output
 * channel adjacent (vdpbf16ps's operand layout), zero padding. */
#define BF_MR 12
#define BF_FEW_ROWS 4
#ifdef EFF_X86
#define BF16A __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))
static int have_bf16(void) {
    static int v = -1;
    if (v < 0) {
        __builtin_cpu_init();
        v = have_avx512() && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
    }
    return v && avx512();
}
static inline __mmask32 lanes32(i64 n) { return n >= 32 ? 0xFFFFFFFFu : n <= 0 ? 0 : (__mmask32)((1u << n) - 1u); }
/* one row (times its gates) to bf16 pairs, zeros from K up to 2 * K2 */
BF16A static void bf_row_512(const float* x, const float* g, i64 K, i64 K2, uint16_t* q) {
    i64 k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512 v0 = _mm512_loadu_ps(x + k), v1 = _mm512_loadu_ps(x + k + 16);
        if (g) { v0 = _mm512_mul_ps(v0, _mm512_loadu_ps(g + k)); v1 = _mm512_mul_ps(v1, _mm512_loadu_ps(g + k + 16)); }
        _mm512_storeu_si512(q + k, (__m512i)_mm512_cvtne2ps_pbh(v1, v0));
    }
    for (; k < 2 * K2; k += 32) {
        const __mmask16 m0 = lanes16(K - k), m1 = lanes16(K - k - 16);
        __m512 v0 = _mm512_maskz_loadu_ps(m0, x + k), v1 = _mm512_maskz_loadu_ps(m1, x + k + 16);
        if (g) {
            v0 = _mm512_mul_ps(v0, _mm512_maskz_loadu_ps(m0, g + k));
            v1 = _mm512_mul_ps(v1, _mm512_maskz_loadu_ps(m1, g + k + 16));
        }
        _mm512_mask_storeu_epi16(q + k, lanes32(2 * K2 - k), (__m512i)_mm512_cvtne2ps_pbh(v1, v0));
    }
}
/* BF_MR rows of pairs (row i at q + i * 2 * K2) times two panels (w0, w1), or one (w1 NULL) */
#define BF_DP(i) do { const __m512bh a_ = (__m512bh)_mm512_set1_epi32(*(const int32_t*)(q + (i) * ks + 2 * k2)); \
    c##i = _mm512_dpbf16_ps(c##i, a_, b0); if (two) d##i = _mm512_dpbf16_ps(d##i, a_, b1); } while (0)
BF16A static void bf_tile(const uint16_t* q, i64 K2, const uint16_t* w0, const uint16_t* w1, int nrows,
                          float* const* yr, const float* const* rr, const float* b, int ncols1, int act, int stream) {
    const i64 ks = 2 * K2;
    const int two = w1 != NULL;
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0, c9 = c0,
           c10 = c0, c11 = c0;
    __m512 d0 = c0, d1 = c0, d2 = c0, d3 = c0, d4 = c0, d5 = c0, d6 = c0, d7 = c0, d8 = c0, d9 = c0, d10 = c0, d11 = c0;
    if (two) {
        for (i64 k2 = 0; k2 < K2; k2++) {
            const __m512bh b0 = (__m512bh)_mm512_loadu_si512(w0 + 32 * k2);
            const __m512bh b1 = (__m512bh)_mm512_loadu_si512(w1 + 32 * k2);
            BF_DP(0); BF_DP(1); BF_DP(2); BF_DP(3); BF_DP(4); BF_DP(5);
            BF_DP(6); BF_DP(7); BF_DP(8); BF_DP(9); BF_DP(10); BF_DP(11);
        }
    } else {
        const __m512bh b1 = (__m512bh)_mm512_setzero_si512();
        for (i64 k2 = 0; k2 < K2; k2++) {
            const __m512bh b0 = (__m512bh)_mm512_loadu_si512(w0 + 32 * k2);
            BF_DP(0); BF_DP(1); BF_DP(2); BF_DP(3); BF_DP(4); BF_DP(5);
            BF_DP(6); BF_DP(7); BF_DP(8); BF_DP(9); BF_DP(10); BF_DP(11);
        }
    }
    const __m512 c[12] = {c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11};
    const __m512 d[12] = {d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11};
    const __mmask16 m0 = two ? 0xFFFF : lanes16(ncols1), m1 = lanes16(ncols1);
    for (int i = 0; i < nrows; i++) {
        pw_row_out512(yr[i], rr[i], c[i], b, 1, act, m0, stream && m0 == 0xFFFF);
        if (two) pw_row_out512(yr[i] + 16, rr[i] ? rr[i] + 16 : NULL, d[i], b + 16, 1, act, m1, stream && m1 == 0xFFFF);
    }
}
#undef BF_DP
/* one to four rows (NR, a compile-time constant at each call) x one or two panels: bf_tile for a
 * group of few rows (a classifier at batch 1) without the tile's empty rows; the same sums */
BF16A static inline __attribute__((always_inline)) void bf_few_tile(
        const uint16_t* q, i64 K2, const uint16_t* w0, const uint16_t* w1, const int NR, float* const* yr,
        const float* const* rr, const float* b, int ncols1, int act) {
    const i64 ks = 2 * K2;
    __m512 c[4], d[4];
#pragma GCC unroll 4
    for (int i = 0; i < NR; i++) c[i] = d[i] = _mm512_setzero_ps();
    for (i64 k2 = 0; k2 < K2; k2++) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(w0 + 32 * k2);
        const __m512bh b1 = w1 ? (__m512bh)_mm512_loadu_si512(w1 + 32 * k2) : b0;
#pragma GCC unroll 4
        for (int i = 0; i < NR; i++) {
            const __m512bh a = (__m512bh)_mm512_set1_epi32(*(const int32_t*)(q + i * ks + 2 * k2));
            c[i] = _mm512_dpbf16_ps(c[i], a, b0);
            if (w1) d[i] = _mm512_dpbf16_ps(d[i], a, b1);
        }
    }
    const __mmask16 m0 = w1 ? 0xFFFF : lanes16(ncols1), m1 = lanes16(ncols1);
#pragma GCC unroll 4
    for (int i = 0; i < NR; i++) {
        pw_row_out512(yr[i], rr[i], c[i], b, 1, act, m0, 0);
        if (w1) pw_row_out512(yr[i] + 16, rr[i] ? rr[i] + 16 : NULL, d[i], b + 16, 1, act, m1, 0);
    }
}
BF16A static void bf_few(const uint16_t* q, i64 K2, const uint16_t* w0, const uint16_t* w1, int nr, float* const* yr,
                         const float* const* rr, const float* b, int ncols1, int act) {
    switch (nr) {
        case 1: bf_few_tile(q, K2, w0, w1, 1, yr, rr, b, ncols1, act); break;
        case 2: bf_few_tile(q, K2, w0, w1, 2, yr, rr, b, ncols1, act); break;
        case 3: bf_few_tile(q, K2, w0, w1, 3, yr, rr, b, ncols1, act); break;
        default: bf_few_tile(q, K2, w0, w1, 4, yr, rr, b, ncols1, act); break;
    }
}
/* rows [m0, m1) x panels [p0, p1) on the calling thread: BF_MR rows rounded into q (L1), then
 * every panel of the block read against them */
BF16A static void bf_block(const float* x, const uint16_t* wb, i64 ps, const float* bias, const float* res,
                           const float* gate, i64 hw, float* y, i64 m0, i64 m1, i64 p0, i64 p1, i64 K, i64 N, int act,
                           int stream, uint16_t* q) {
    const i64 K2 = (K + 1) / 2, ks = 2 * K2;
    float* yr[BF_MR]; const float* rr[BF_MR];
    for (i64 r0 = m0; r0 < m1; r0 += BF_MR) {
        const int nrows = (int)(m1 - r0 < BF_MR ? m1 - r0 : BF_MR);
        for (int i = 0; i < nrows; i++) {
            const i64 row = r0 + i;
            bf_row_512(x + row * K, gate ? gate + (row / hw) * K : NULL, K, K2, q + i * ks);
        }
        if (nrows > BF_FEW_ROWS)  /* the tile's rows past nrows: zeros, their sums not stored */
            memset(q + nrows * ks, 0, sizeof(uint16_t) * (size_t)((BF_MR - nrows) * ks));
        for (i64 p = p0; p < p1;) {
            const int np = p + 1 < p1 ? 2 : 1;
            const i64 c0 = p * 16, ncols = N - c0 - (np - 1) * 16 < 16 ? N - c0 - (np - 1) * 16 : 16;
            for (int i = 0; i < nrows; i++) {
                yr[i] = y + (r0 + i) * N + c0;
                rr[i] = res ? res + (r0 + i) * N + c0 : NULL;
            }
            const uint16_t *w0 = wb + p * ps * 32, *w1 = np == 2 ? w0 + ps * 32 : NULL;
            if (nrows <= BF_FEW_ROWS) bf_few(q, K2, w0, w1, nrows, yr, rr, bias + c0, (int)ncols, act);
            else bf_tile(q, K2, w0, w1, nrows, yr, rr, bias + c0, (int)ncols, act, stream);
            p += np;
        }
    }
}
#endif
/* 1 where eff_pw_bf16_fwd runs (x86 with AVX512-BF16 and BW, the 16-lane code on) */
int eff_bf16_fast(void) {
#ifdef EFF_X86
    return have_bf16();
#else
    return 0;
#endif
}
/* the bf16 GEMM on nt threads (the fp32 GEMM's split): x (M, K) fp32 rows, wb its panels
 * (stride ps pairs), bias (P * 16, zero past N), res / gate as eff_pw_fwd's.  Returns -1 where the
 * row buffers could not be allocated, -2 where the CPU lacks AVX512-BF16 (nothing written). */
int eff_pw_bf16_fwd(const float* x, const uint16_t* wb, i64 ps, const float* bias, const float* res,
                    const float* gate, i64 hw, float* y, i64 M, i64 K, i64 N, int act, int nt) {
#ifdef EFF_X86
    if (!have_bf16()) return -2;
    const i64 P = (N + 15) / 16, K2 = (K + 1) / 2;
    i64 mt, pt, pc;
    gemm_split(M, P, BF_MR, 0, nt, 1, &mt, &pt, &pc);
    const i64 qb = (BF_MR * 2 * K2 * (i64)sizeof(uint16_t) + 63) / 64 * 64;
    uint8_t* qs = (uint8_t*)aligned_alloc(64, (size_t)(qb * nt));
    if (!qs) return -1;
    const int stream = gemm_stream(M, N, y);
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (i64 t = 0; t < mt * pt; t++) {
        i64 m0, m1, p0, p1;
        gemm_item(t, M, P, BF_MR, mt, pt, pc, &m0, &m1, &p0, &p1);
        bf_block(x, wb, ps, bias, res, gate, hw, y, m0, m1, p0, p1, K, N, act, stream,
                 (uint16_t*)(qs + qb * omp_get_thread_num()));
        if (stream) _mm_sfence();
    }
    free(qs);
    return 0;
#else
    (void)x; (void)wb; (void)ps; (void)bias; (void)res; (void)gate; (void)hw; (void)y; (void)M; (void)K; (void)N;
    (void)act; (void)nt;
    return -2;
#endif
}

/* ---- an inverted-residual block's expand 1x1 conv and depthwise conv in one pass (inference) ----
 * y = dw(act_e(pw(x))) (+ the depthwise output's channel sums) without writing the expanded
 * tensor out: each thread walks its share of output rows in order and keeps the expanded input
 * rows they read in a ring (~L2-sized), computing each expanded row once (the rows at the seam
 * of two threads' shares twice).  The expanded tensor is the widest of the block (6x its input
 * channels at the input resolution: 38.5 MB for B0's second stage at batch 8); written and read
 * back it costs two passes through memory.  Rows are expanded G at a time, G * W >= 48 pixels,
 * so the GEMM still fills its 12-row tiles on 7x7 and 14x14 maps; the ring holds the K rows one
 * output row reads plus the G - 1 expanded ahead, K + G - 1 consecutive rows, so slot = row mod
 * that.  The arithmetic is the two kernels' own (pw_block, dw_fwd_row), so the output equals the
 * two calls' bit for bit.  x: (N, H, W, Cin) channels-last; wp / pb: pw panels and bias, or with
 * kind 1 the int8 GEMM's panels (int8_t, panel stride ps quads) and its cols (pointwise_q8's,
 * eff_pw_q8_fwd: each pixel's input rounded to bytes over its own range), with kind 2 the bf16
 * GEMM's panels (stride ps pairs) and bias (eff_pw_bf16_fwd); kind 0: fp32 (ps unused); wt / db:
 * depthwise taps (K*K, Cm) and bias; y: (N, OH, OW, Cm); sums: (N, Cm) or NULL.  Returns -1 where
 * the buffers could not be allocated (nothing written), -2 for K outside 1..11, -3 for kind 2 on
 * a CPU without AVX512-BF16. */
#define PWDW_MIN_PIXELS 48
int eff_pw_dw_fwd(const void* x_, const void* wp, const float* pb, i64 ps, int kind, int pact, const float* wt,
                  const float* db, float* y, float* sums, i64 N, i64 H, i64 W, i64 Cin, i64 Cm, i64 OH, i64 OW, int K,
                  int S, int PH, int PW, int dact, int nt) {
    if (K < 1 || K > 11) return -2;
    if (kind == 2 && !eff_bf16_fast()) return -3;
    const float* x = (const float*)x_;
    const i64 G = W >= PWDW_MIN_PIXELS ? 1 : (PWDW_MIN_PIXELS + W - 1) / W < H ? (PWDW_MIN_PIXELS + W - 1) / W : H;
    const i64 RING = K + G - 1, rowf = W * Cm, P = (Cm + 15) / 16, R = N * OH;
    /* the row buffer of eff_pw_q8_fwd / eff_pw_bf16_fwd */
    const i64 qb = kind == 1 ? (Q8_MR * 4 * ((Cin + 3) / 4) * 2 + 63) / 64 * 64
                 : kind == 2 ? (BF_MR * 2 * ((Cin + 1) / 2) * (i64)sizeof(uint16_t) + 63) / 64 * 64 : 0;
    float* rings = (float*)aligned_alloc(64, (sizeof(float) * (size_t)(rowf * RING * nt) + 63) / 64 * 64);
    uint8_t* qs = qb ? (uint8_t*)aligned_alloc(64, (size_t)(qb * nt)) : NULL;
    float* accs = sums ? (float*)calloc((size_t)(N * Cm * nt), sizeof(float)) : NULL;
    if (!rings || (qb && !qs) || (sums && !accs)) { free(rings); free(qs); free(accs); return -1; }
    #pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        float* ring = rings + rowf * RING * t;
        float* acc = accs ? accs + N * Cm * t : NULL;
        i64 held[PWDW_MIN_PIXELS + 11];  /* the image row (n * H + ih) each ring slot holds, -1: none */
        for (i64 k = 0; k < RING; k++) held[k] = -1;
        for (i64 r = R * t / T; r < R * (t + 1) / T; r++) {
            const i64 n = r / OH, oh = r % OH;
            const float* xrow[11];
            for (int kh = 0; kh < K; kh++) {
                const i64 ih = oh * S - PH + kh;
                if (ih < 0 || ih >= H) { xrow[kh] = NULL; continue; }
                if (held[ih % RING] != n * H + ih) {  /* expand rows [ih, ih + g), in at most two runs of slots */
                    const i64 g = ih + G < H ? G : H - ih;
                    for (i64 r0 = ih; r0 < ih + g;) {
                        const i64 slot = r0 % RING, run = RING - slot < ih + g - r0 ? RING - slot : ih + g - r0;
                        const float* xr = x + (n * H + r0) * W * Cin;
                        if (kind == 1) q8_block(xr, (const int8_t*)wp, ps, pb, NULL, NULL, W, ring + rowf * slot, 0,
                                                run * W, 0, P, Cin, Cm, pact, 0, qs + qb * t);
#ifdef EFF_X86
                        else if (kind == 2) bf_block(xr, (const uint16_t*)wp, ps, pb, NULL, NULL, W, ring + rowf * slot,
                                                     0, run * W, 0, P, Cin, Cm, pact, 0, (uint16_t*)(qs + qb * t));
#endif
                        else pw_block(xr, (const float*)wp, pb, NULL, NULL, W, ring + rowf * slot, 0, run * W, 0, P,
                                      Cin, Cm, pact, 0);
                        for (i64 j = 0; j < run; j++) held[slot + j] = n * H + r0 + j;
                        r0 += run;
                    }
                }
                xrow[kh] = ring + rowf * (ih % RING);
            }
            float* yrow = y + r * OW * Cm;
            dw_fwd_row(yrow, xrow, wt, db, W, Cm, OW, K, S, PW, dact);
            if (acc) add_rows(acc + n * Cm, yrow, OW, Cm);
        }
    }
    if (sums) {  /* the threads' partial sums, in thread order */
        memset(sums, 0, sizeof(float) * (size_t)(N * Cm));
        for (int t = 0; t < nt; t++)
            for (i64 i = 0; i < N * Cm; i++) sums[i] += accs[N * Cm * t + i];
    }
    free(rings); free(qs); free(accs);
    return 0;
}

/* ---- the CPU's fp32 multiply-add rate (benchmarks: how far a model is from the arithmetic limit) ----
 * nt threads each run 12 independent FMA chains (enough to hide the latency) on the widest
 * vectors the kernels use, `rounds` rounds; returns GFLOP/s (two per multiply-add) over the
 * slowest thread's time.  A large matmul reaches 80-90% of it. */
#define FMA_CHAINS 12
#ifdef EFF_X86
AVX512 static float fma_run512(i64 rounds) {
    __m512 a[FMA_CHAINS];
    const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < FMA_CHAINS; i++) a[i] = _mm512_set1_ps((float)i);
    for (i64 r = 0; r < rounds; r++)
#pragma GCC unroll 12
        for (int i = 0; i < FMA_CHAINS; i++) a[i] = _mm512_fmadd_ps(a[i], m, c);  /* in registers */
    for (int i = 1; i < FMA_CHAINS; i++) a[0] = _mm512_add_ps(a[0], a[i]);
    return _mm512_reduce_add_ps(a[0]);
}
AVX2 static float fma_run256(i64 rounds) {
    __m256 a[FMA_CHAINS];
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < FMA_CHAINS; i++) a[i] = _mm256_set1_ps((float)i);
    for (i64 r = 0; r < rounds; r++)
#pragma GCC unroll 12
        for (int i = 0; i < FMA_CHAINS; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);  /* in registers */
    float t[8];
    for (int i = 1; i < FMA_CHAINS; i++) a[0] = _mm256_add_ps(a[0], a[i]);
    _mm256_storeu_ps(t, a[0]);
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#endif
static float fma_run_scalar(i64 rounds) {
    float a[FMA_CHAINS];
    for (int i = 0; i < FMA_CHAINS; i++) a[i] = (float)i;
    for (i64 r = 0; r < rounds; r++)
#pragma GCC unroll 12
        for (int i = 0; i < FMA_CHAINS; i++) a[i] = a[i] * 0.999999f + 1e-7f;
    float s = 0.0f;
    for (int i = 0; i < FMA_CHAINS; i++) s += a[i];
    return s;
}
double eff_fma_peak(i64 rounds, int nt) {
    int lanes = 1;
#ifdef EFF_X86
    lanes = avx512() ? 16 : have_avx2() ? 8 : 1;
#endif
    double worst = 0.0;
    int team = 1;
    volatile float sink = 0.0f;  /* keeps the chains from being optimized away */
    #pragma omp parallel num_threads(nt) reduction(max: worst)
    {
        #pragma omp single nowait
        team = omp_get_num_threads();  /* the threads the runtime gave, which may be fewer than nt */
        const double t0 = omp_get_wtime();
        float s;
#ifdef EFF_X86
        s = lanes == 16 ? fma_run512(rounds) : lanes == 8 ? fma_run256(rounds) : fma_run_scalar(rounds);
#else
        s = fma_run_scalar(rounds);
#endif
        worst = omp_get_wtime() - t0;
        if (s == 12345.0f) sink = s;
    }
    (void)sink;
    return worst > 0.0 ? 2.0 * FMA_CHAINS * lanes * (double)rounds * team / worst / 1e9 : 0.0;
}

int eff_q8_isa(void) { return q8_isa(); }
int eff_q8_last_code(void) { return q8_last; }

int eff_have_avx2(void) { return have_avx2(); }

int eff_have_avx512(void) { return have_avx512(); }

int eff_abi_version(void) { return 15; }
