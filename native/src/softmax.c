/*
 * The causal softmax of attention (attention.c), one row of scores at a time:
 *
 *   p[j] = exp(s[j] * scale - m) / sum_k exp(s[k] * scale - m)   for j < n_seen (m: their maximum), 0 beyond
 *
 * The reference uses expf and sums in double. The AVX-512 kernel evaluates exp with hl_exp_avx512
 * (exp_avx512.h, relative error below 2e-7) and sums in double lanes.
 */
#include <math.h>
#include <string.h>

#include "common.h"
#include "exp_avx512.h"
#include "gemm.h"

static void softmax_ref(float *p, int64_t n_seen, int64_t n_kv, float scale) {
    float max = -INFINITY;
    for (int64_t j = 0; j < n_seen; j++) {
        p[j] *= scale;
        if (p[j] > max) max = p[j];
    }
    double sum = 0.0;
    for (int64_t j = 0; j < n_seen; j++) {
        p[j] = expf(p[j] - max);
        sum += p[j];
    }
    const float inv = (float)(1.0 / sum);
    for (int64_t j = 0; j < n_seen; j++) p[j] *= inv;
    memset(p + n_seen, 0, (size_t)(n_kv - n_seen) * sizeof(float));
}

static hl_softmax_fn chosen = softmax_ref;

#if defined(__x86_64__) && !defined(HL_NO_SIMD)
#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512dq")))

TARGET static void softmax_avx512(float *p, int64_t n_seen, int64_t n_kv, float scale) {
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n_seen; j += 16) {
        const __mmask16 m = hl_lanes16(n_seen - j);
        const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + j), _mm512_set1_ps(scale));
        _mm512_mask_storeu_ps(p + j, m, v);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, v);
    }
    const __m512 max = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    __m512d sum_lo = _mm512_setzero_pd(), sum_hi = _mm512_setzero_pd();
    for (int64_t j = 0; j < n_seen; j += 16) {
        const __mmask16 m = hl_lanes16(n_seen - j);
        const __m512 e = _mm512_maskz_mov_ps(m, hl_exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p + j), max)));
        _mm512_mask_storeu_ps(p + j, m, e);
        sum_lo = _mm512_add_pd(sum_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        sum_hi = _mm512_add_pd(sum_hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    const __m512 inv = _mm512_set1_ps((float)(1.0 / _mm512_reduce_add_pd(_mm512_add_pd(sum_lo, sum_hi))));
    for (int64_t j = 0; j < n_seen; j += 16) {
        const __mmask16 m = hl_lanes16(n_seen - j);
        _mm512_mask_storeu_ps(p + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + j), inv));
    }
    memset(p + n_seen, 0, (size_t)(n_kv - n_seen) * sizeof(float));
}
#endif

void hl_softmax_install(const hl_cpu_features *cpu) {
#if defined(__x86_64__) && !defined(HL_NO_SIMD)
    if (cpu->avx512) chosen = softmax_avx512;
#else
    (void)cpu;
#endif
}

void hl_softmax_causal(float *p, int64_t n_seen, int64_t n_kv, float scale) { chosen(p, n_seen, n_kv, scale); }
