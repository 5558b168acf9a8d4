/*
 * SwiGLU's pointwise half over one stretch of a row: g[i] = silu(g[i]) * u[i] = g[i] / (1 + e^-g[i]) * u[i].
 *
 * The reference uses expf. The AVX-512 kernel evaluates e^-g with hl_exp_avx512 (exp_avx512.h, relative error
 * below 2e-7) and then the same division and product, each rounded once: the two agree within a few ulps, and
 * both give silu(g) = -0 for g below about -88.7 (e^-g is +inf) and NaN for a NaN g.
 */
#include <math.h>

#include "common.h"
#include "exp_avx512.h"
#include "gemm.h"

static void swiglu_ref(float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static hl_swiglu_fn chosen = swiglu_ref;

#if defined(__x86_64__) && !defined(HL_NO_SIMD)
#include <immintrin.h>

__attribute__((target("avx512f,avx512dq"))) static void swiglu_avx512(float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = hl_lanes16(n - i);
        const __m512 x = _mm512_maskz_loadu_ps(m, g + i);
        const __m512 denom = _mm512_add_ps(_mm512_set1_ps(1.0f), hl_exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x)));
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(_mm512_div_ps(x, denom), _mm512_maskz_loadu_ps(m, u + i)));
    }
}
#endif

void hl_swiglu_install(const hl_cpu_features *cpu) {
#if defined(__x86_64__) && !defined(HL_NO_SIMD)
    if (cpu->avx512) chosen = swiglu_avx512;
#else
    (void)cpu;
#endif
}

void hl_swiglu_row(float *g, const float *u, int64_t n, int reference) { (reference ? swiglu_ref : chosen)(g, u, n); }
