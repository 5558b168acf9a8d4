/*
 * Per-type kernels, part 3: x86-64 AVX2 + FMA + F16C versions of the dot
 * products and activation quantizers. The project is compiled without -mavx2,
 * so every function carries a target attribute and hl_quants_init() installs
 * them only when cpuid reports all three extensions. Building with
 * -DHL_NO_SIMD leaves this file empty and every kernel scalar.
 *
 * Quantized dot products compute exactly the same integer block sums as the
 * references in quants.c / quants_kquants.c (int8 x uint8 products through
 * maddubs, which cannot saturate for these ranges: at most 2*128*127 per
 * pair), then scale and accumulate in float32 lanes; only the float summation
 * order differs from the references.
 *
 * The Q8_0/Q8_1 quantizers here round half to even (cvtps under the default
 * MXCSR) where the references round half away from zero (roundf); otherwise
 * they produce identical bytes (same d = amax/127, id = 1/d in float32).
 */
#if defined(__x86_64__) && !defined(HL_NO_SIMD)

#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "common.h"
#include "quants.h"

#define TARGET __attribute__((target("avx2,fma,f16c")))

/* ------------------------------------------------------------------- helpers */

TARGET static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

TARGET static inline float hsum_ps(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

TARGET static inline int hsum_epi32(__m256i v) {
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, _MM_SHUFFLE(1, 0, 3, 2)));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(r);
}

/* 16 packed bytes -> 32 nibbles: lanes 0..15 low nibbles, 16..31 high nibbles
 * (the non-interleaved order of the 32-element types). */
TARGET static inline __m256i nibbles_32(const uint8_t *p) {
    const __m128i t = _mm_loadu_si128((const __m128i *)p);
    const __m256i b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(b, _mm256_set1_epi8(0xF));
}

/* 32 bits -> 32 bytes, byte e = 0xFF if bit e is set else 0. */
TARGET static inline __m256i bits_32(const uint8_t *p) {
    uint32_t x;
    memcpy(&x, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                           0x0101010101010101, 0x0000000000000000);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
}

/* Unsigned bytes u times signed bytes s, summed in groups of 4 -> 8 int32. */
TARGET static inline __m256i dot_us8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* Signed bytes x times signed bytes y (y never -128), groups of 4 -> 8 int32. */
TARGET static inline __m256i dot_s8(__m256i x, __m256i y) {
    return dot_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

/* Unsigned bytes u times signed bytes s, each 16-lane half weighted by an int16
 * scale (lo for elements 0..15, hi for 16..31) -> 8 int32. */
TARGET static inline __m256i dot_us8_scaled(__m256i u, __m256i s, int lo, int hi) {
    const __m256i sc = _mm256_set_m128i(_mm_set1_epi16((short)hi), _mm_set1_epi16((short)lo));
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), sc);
}

/* --------------------------------------------------------------- float types */

void TARGET hl_vec_dot_f32_avx2(int64_t n, float *s, const void *w, const void *a) {
    const float *x = w, *y = a;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc0);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) sum += x[i] * y[i];
    *s = sum;
}

TARGET static inline __m256 load_f16x8(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

void TARGET hl_vec_dot_f16_avx2(int64_t n, float *s, const void *w, const void *a) {
    const uint16_t *x = w;
    const float *y = a;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(load_f16x8(x + i), _mm256_loadu_ps(y + i), acc0);
        acc1 = _mm256_fmadd_ps(load_f16x8(x + i + 8), _mm256_loadu_ps(y + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(load_f16x8(x + i + 16), _mm256_loadu_ps(y + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(load_f16x8(x + i + 24), _mm256_loadu_ps(y + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(load_f16x8(x + i), _mm256_loadu_ps(y + i), acc0);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) sum += h2f(x[i]) * y[i];
    *s = sum;
}

/* y += alpha * x with FMA; the scalar tail uses fmaf so every element rounds the same way. */
void TARGET hl_axpy_f32_avx2(int64_t n, float alpha, const void *vx, float *y) {
    const float *x = vx;
    const __m256 a = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = fmaf(alpha, x[i], y[i]);
}

void TARGET hl_axpy_f16_avx2(int64_t n, float alpha, const void *vx, float *y) {
    const uint16_t *x = vx;
    const __m256 a = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, load_f16x8(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = fmaf(alpha, h2f(x[i]), y[i]);
}

void TARGET hl_axpy_bf16_avx2(int64_t n, float alpha, const void *vx, float *y) {
    const uint16_t *x = vx;
    const __m256 a = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(x + i)));
        const __m256 xf = _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, xf, _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) y[i] = fmaf(alpha, hl_bf16_to_fp32(x[i]), y[i]);
}

/* F16C conversion is exact (subnormals, inf kept; NaNs come back quiet). */
void TARGET hl_to_float_f16_avx2(const void *vx, float *y, int64_t n) {
    const uint16_t *x = vx;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load_f16x8(x + i));
    for (; i < n; i++) y[i] = hl_fp16_to_fp32(x[i]);
}

TARGET static inline __m256 load_bf16x8(const uint16_t *p) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

/* BF16 weights against BF16 activations (both widen exactly). */
void TARGET hl_vec_dot_bf16_avx2(int64_t n, float *s, const void *w, const void *a) {
    const uint16_t *x = w, *y = a;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(load_bf16x8(x + i), load_bf16x8(y + i), acc0);
        acc1 = _mm256_fmadd_ps(load_bf16x8(x + i + 8), load_bf16x8(y + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(load_bf16x8(x + i + 16), load_bf16x8(y + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(load_bf16x8(x + i + 24), load_bf16x8(y + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(load_bf16x8(x + i), load_bf16x8(y + i), acc0);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) sum += hl_bf16_to_fp32(x[i]) * hl_bf16_to_fp32(y[i]);
    *s = sum;
}

/* F32 -> BF16 activations, bit for bit hl_fp32_to_bf16: round to nearest even, a NaN kept quiet. */
void TARGET hl_from_float_bf16_avx2(const float *x, void *vy, int64_t n) {
    uint16_t *y = vy;
    const __m256i one = _mm256_set1_epi32(1), half = _mm256_set1_epi32(0x7fff), inf = _mm256_set1_epi32(0x7f800000);
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), quiet = _mm256_set1_epi32(64);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i bits = _mm256_castps_si256(_mm256_loadu_ps(x + i));
        const __m256i high = _mm256_srli_epi32(bits, 16);
        const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(bits, half),
                                                                   _mm256_and_si256(high, one)), 16);
        const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(bits, abs_mask), inf);
        const __m256i h = _mm256_blendv_epi8(rounded, _mm256_or_si256(high, quiet), nan); /* 8 x 16 bits */
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(h, h), 0x08);
        _mm_storeu_si128((__m128i *)(y + i), _mm256_castsi256_si128(packed));
    }
    for (; i < n; i++) y[i] = hl_fp32_to_bf16(x[i]);
}

/* ----------------------------------------------------- 32-element weight types */

void TARGET hl_vec_dot_q8_0_q8_0_avx2(int64_t n, float *s, const void *w, const void *a) {
    const block_q8_0 *x = w;
    const block_q8_0 *y = a;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK; i++) {
        const __m256i qx = _mm256_loadu_si256((const __m256i *)x[i].qs);
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256 d = _mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_s8(qx, qy)), acc);
    }
    *s = hsum_ps(acc);
}

void TARGET hl_vec_dot_q4_0_q8_0_avx2(int64_t n, float *s, const void *w, const void *a) {
    const block_q4_0 *x = w;
    const block_q8_0 *y = a;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK; i++) {
        const __m256i qx = _mm256_sub_epi8(nibbles_32(x[i].qs), _mm256_set1_epi8(8));
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256 d = _mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_s8(qx, qy)), acc);
    }
    *s = hsum_ps(acc);
}

/* Q5_0: q - 16 = nibble | (bit clear ? 0xF0 : 0) as a signed byte. */
void TARGET hl_vec_dot_q5_0_q8_0_avx2(int64_t n, float *s, const void *w, const void *a) {
    const block_q5_0 *x = w;
    const block_q8_0 *y = a;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK; i++) {
        const __m256i hi = _mm256_andnot_si256(bits_32(x[i].qh), _mm256_set1_epi8((char)0xF0));
        const __m256i qx = _mm256_or_si256(nibbles_32(x[i].qs), hi);
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256 d = _mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_s8(qx, qy)), acc);
    }
    *s = hsum_ps(acc);
}

void TARGET hl_vec_dot_q4_1_q8_1_avx2(int64_t n, float *s, const void *w, const void *a) {
    const block_q4_1 *x = w;
    const block_q8_1 *y = a;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256 d = _mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_us8(nibbles_32(x[i].qs), qy)), acc);
        summs += h2f(x[i].m) * y[i].s;
    }
    *s = hsum_ps(acc) + summs;
}

void TARGET hl_vec_dot_q5_1_q8_1_avx2(int64_t n, float *s, const void *w, const void *a) {
    const block_q5_1 *x = w;
    const block_q8_1 *y = a;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        const __m256i hi = _mm256_and_si256(bits_32(x[i].qh), _mm256_set1_epi8(0x10));
        const __m256i qx = _mm256_or_si256(nibbles_32(x[i].qs), hi);
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256 d = _mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_us8(qx, qy)), acc);
        summs += h2f(x[i].m) * y[i].s;
    }
    *s = hsum_ps(acc) + summs;
}

/* ----------------------------------------------------------- Q8_0 / Q8_1 quantizers */

/* The lanes of |x| (ax) that are NaN or an infinity: !(ax <= FLT_MAX), folded into each quantizer's amax pass. */
TARGET static inline __m256 nonfinite_lanes(__m256 ax) {
    return _mm256_cmp_ps(ax, _mm256_set1_ps(FLT_MAX), _CMP_NLE_UQ);
}



/* One block: d = amax/127, id = 1/d, q = rne(x*id). Returns d; *qsum = sum(q). */
TARGET static inline float quantize_block_q8_avx2(const float *x, int8_t *qs, int *qsum) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        const __m256 ax = _mm256_andnot_ps(sign, v[k]);
        amax = _mm256_max_ps(amax, ax);
        bad = _mm256_or_ps(bad, nonfinite_lanes(ax));
    }
    __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(amax, 1), _mm256_castps256_ps128(amax));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    if (!_mm256_testz_ps(bad, bad)) { /* as the reference: d = NaN, q = 0 */
        memset(qs, 0, QK);
        *qsum = 0;
        return NAN;
    }
    const float d = _mm_cvtss_f32(m4) / 127.0f;
    const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
    __m256i q[4];
    for (int k = 0; k < 4; k++) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], id));
    *qsum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    /* packs interleave 128-bit lanes; the permute restores element order */
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)qs, p);
    return d;
}

void TARGET hl_quantize_row_q8_0_avx2(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    int sum;
    for (int64_t i = 0; i < n / QK; i++)
        y[i].d = hl_fp32_to_fp16(quantize_block_q8_avx2(x + i * QK, y[i].qs, &sum));
}

void TARGET hl_quantize_row_q8_1_avx2(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    int sum;
    for (int64_t i = 0; i < n / QK; i++) {
        const float d = quantize_block_q8_avx2(x + i * QK, y[i].qs, &sum);
        y[i].d = hl_fp32_to_fp16(d);
        y[i].unused = 0;
        y[i].s = hl_fp16_to_fp32(y[i].d) * (float)sum; /* exact, as the reference */
    }
}

/* The index of the first of the QK_K values at x whose |x| is amax (the last index if none is, as the
 * reference's search). */
TARGET static inline int first_of_abs(const float *x, float amax) {
    const __m256 sign = _mm256_set1_ps(-0.0f), target = _mm256_set1_ps(amax);
    for (int e = 0; e < QK_K; e += 8) {
        const __m256 ax = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + e));
        const int mask = _mm256_movemask_ps(_mm256_cmp_ps(ax, target, _CMP_EQ_OQ));
        if (mask) return e + __builtin_ctz((unsigned)mask);
    }
    return QK_K - 1;
}

/* Q8_K as hl_quantize_row_q8_K_ref, bit for bit: the same m (first value of largest |x|), the same iscale * x
 * products, rne by vcvtps2dq as nearest_int, min 127; a non-finite block as the reference's. */
void TARGET hl_quantize_row_q8_K_avx2(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        __m256 amax8 = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
        for (int e = 0; e < QK_K; e += 8) { /* max(|x|, amax8) keeps amax8 where x is NaN */
            const __m256 ax = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + e));
            amax8 = _mm256_max_ps(ax, amax8);
            bad = _mm256_or_ps(bad, nonfinite_lanes(ax));
        }
        __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(amax8, 1), _mm256_castps256_ps128(amax8));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        const int finite = _mm256_testz_ps(bad, bad);
        if (amax == 0.0f || !finite) {
            memset(&y[i], 0, sizeof y[i]);
            y[i].d = finite ? 0.0f : NAN;
            continue;
        }
        const float iscale = -127.0f / x[first_of_abs(x, amax)];
        for (int e = 0; e < QK_K; e += 32) {
            __m256i q[4];
            for (int k = 0; k < 4; k++)
                q[k] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_set1_ps(iscale), _mm256_loadu_ps(x + e + 8 * k))),
                                        _mm256_set1_epi32(127));
            y[i].bsums[e / 16] = (int16_t)hsum_epi32(_mm256_add_epi32(q[0], q[1]));
            y[i].bsums[e / 16 + 1] = (int16_t)hsum_epi32(_mm256_add_epi32(q[2], q[3]));
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(y[i].qs + e), p);
        }
        y[i].d = 1.0f / iscale;
    }
}

/* ------------------------------------------------------------------- K-quants */
/* Each loop step handles 32 weights as unsigned bytes u against 32 Q8_K quants;
 * a constant offset in q (Q3_K: -4, Q6_K: -32) or a min (Q2_K, Q4_K, Q5_K) is
 * applied once per super-block through bsums. */

/* sum over 16 sub-blocks of sc16[s] * bsums[s] (int16 x int16 -> int32). */
TARGET static inline int scaled_bsums(const int16_t *sc16, const int16_t *bsums) {
    const __m256i sc = _mm256_loadu_si256((const __m256i *)sc16);
    const __m256i bs = _mm256_loadu_si256((const __m256i *)bsums);
    return hsum_epi32(_mm256_madd_epi16(sc, bs));
}

/* Q2_K: for h, j the 32 quants of elements 128h+32j.. are bits 2j..2j+1 of
 * qs[32h..32h+31]; sub-blocks 8h+2j (first 16) and 8h+2j+1. */
void TARGET hl_vec_dot_q2_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *a) {
    const block_q2_K *x = w;
    const block_q8_K *y = a;
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    float summ_acc = 0.0f;
    int16_t mins[16];
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *sc = x[i].scales;
        for (int sb = 0; sb < 16; sb++) mins[sb] = sc[sb] >> 4;
        const int summ = scaled_bsums(mins, y[i].bsums);
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i qb = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
            for (int j = 0; j < 4; j++) {
                const __m256i u = _mm256_and_si256(_mm256_srl_epi16(qb, _mm_cvtsi32_si128(2 * j)), m3);
                const __m256i q8 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 128 * h + 32 * j));
                const int sb = 8 * h + 2 * j;
                sumi = _mm256_add_epi32(sumi, dot_us8_scaled(u, q8, sc[sb] & 0xF, sc[sb + 1] & 0xF));
            }
        }
        const float dd = h2f(x[i].d) * y[i].d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(sumi), acc);
        summ_acc += h2f(x[i].dmin) * y[i].d * (float)summ;
    }
    *s = hsum_ps(acc) - summ_acc;
}

/* Q3_K: as Q2_K for the low bits; u = q2 + 4*hbit (0..7) and q = u - 4, the
 * -4 applied as -4 * sum(scale_s * bsums_s). */
void TARGET hl_vec_dot_q3_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *a) {
    const block_q3_K *x = w;
    const block_q8_K *y = a;
    const __m256i m3 = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4);
    float sum = 0.0f;
    int16_t sc[16];
    for (int64_t i = 0; i < n / QK_K; i++) {
        hl_unpack_q3_k_scales(x[i].scales, sc);
        const int offs = scaled_bsums(sc, y[i].bsums);
        const __m256i hm = _mm256_loadu_si256((const __m256i *)x[i].hmask);
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i qb = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
            for (int j = 0; j < 4; j++) {
                const __m256i bit = _mm256_set1_epi8((char)(1 << (4 * h + j)));
                const __m256i hb = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit), four);
                const __m256i q2 = _mm256_and_si256(_mm256_srl_epi16(qb, _mm_cvtsi32_si128(2 * j)), m3);
                const __m256i u = _mm256_or_si256(q2, hb);
                const __m256i q8 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 128 * h + 32 * j));
                const int sb = 8 * h + 2 * j;
                sumi = _mm256_add_epi32(sumi, dot_us8_scaled(u, q8, sc[sb], sc[sb + 1]));
            }
        }
        const int total = hsum_epi32(sumi) - 4 * offs;
        sum += h2f(x[i].d) * y[i].d * (float)total;
    }
    *s = sum;
}

/* Q4_K / Q5_K: sum over the 8 sub-blocks of mn_s * (bsums[2s] + bsums[2s+1]). */
TARGET static inline int k4_mins_bsums(const uint8_t *mn, const int16_t *bsums) {
    const __m256i bs = _mm256_loadu_si256((const __m256i *)bsums);
    const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    const __m128i m = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mn));
    __m128i p = _mm_madd_epi16(m, pairs);
    p = _mm_add_epi32(p, _mm_shuffle_epi32(p, _MM_SHUFFLE(1, 0, 3, 2)));
    p = _mm_add_epi32(p, _mm_shuffle_epi32(p, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(p);
}

/* Q4_K: 64 elements per step g: low nibbles of qs[32g..] are sub-block 2g,
 * high nibbles sub-block 2g+1. */
void TARGET hl_vec_dot_q4_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *a) {
    const block_q4_K *x = w;
    const block_q8_K *y = a;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    __m256 acc = _mm256_setzero_ps();
    float summ_acc = 0.0f;
    uint8_t sc[8], mn[8];
    for (int64_t i = 0; i < n / QK_K; i++) {
        for (int sb = 0; sb < 8; sb++) hl_get_scale_min_k4(sb, x[i].scales, &sc[sb], &mn[sb]);
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int g = 0; g < 4; g++, q8 += 64) {
            const __m256i qb = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * g));
            const __m256i lo = _mm256_and_si256(qb, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qb, 4), m4);
            const __m256i q8a = _mm256_loadu_si256((const __m256i *)q8);
            const __m256i q8b = _mm256_loadu_si256((const __m256i *)(q8 + 32));
            sumi = _mm256_add_epi32(sumi, dot_us8_scaled(lo, q8a, sc[2 * g], sc[2 * g]));
            sumi = _mm256_add_epi32(sumi, dot_us8_scaled(hi, q8b, sc[2 * g + 1], sc[2 * g + 1]));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * y[i].d), _mm256_cvtepi32_ps(sumi), acc);
        summ_acc += h2f(x[i].dmin) * y[i].d * (float)k4_mins_bsums(mn, y[i].bsums);
    }
    *s = hsum_ps(acc) - summ_acc;
}

/* Q5_K: Q4_K plus bit (2g+k) of qh[l] as 16. */
void TARGET hl_vec_dot_q5_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *a) {
    const block_q5_K *x = w;
    const block_q8_K *y = a;
    const __m256i m4 = _mm256_set1_epi8(0xF), sixteen = _mm256_set1_epi8(16);
    __m256 acc = _mm256_setzero_ps();
    float summ_acc = 0.0f;
    uint8_t sc[8], mn[8];
    for (int64_t i = 0; i < n / QK_K; i++) {
        for (int sb = 0; sb < 8; sb++) hl_get_scale_min_k4(sb, x[i].scales, &sc[sb], &mn[sb]);
        const __m256i qh = _mm256_loadu_si256((const __m256i *)x[i].qh);
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int g = 0; g < 4; g++, q8 += 64) {
            const __m256i b0 = _mm256_set1_epi8((char)(1 << (2 * g)));
            const __m256i b1 = _mm256_set1_epi8((char)(1 << (2 * g + 1)));
            const __m256i h0 = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b0), b0), sixteen);
            const __m256i h1 = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b1), b1), sixteen);
            const __m256i qb = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * g));
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(qb, m4), h0);
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qb, 4), m4), h1);
            const __m256i q8a = _mm256_loadu_si256((const __m256i *)q8);
            const __m256i q8b = _mm256_loadu_si256((const __m256i *)(q8 + 32));
            sumi = _mm256_add_epi32(sumi, dot_us8_scaled(lo, q8a, sc[2 * g], sc[2 * g]));
            sumi = _mm256_add_epi32(sumi, dot_us8_scaled(hi, q8b, sc[2 * g + 1], sc[2 * g + 1]));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * y[i].d), _mm256_cvtepi32_ps(sumi), acc);
        summ_acc += h2f(x[i].dmin) * y[i].d * (float)k4_mins_bsums(mn, y[i].bsums);
    }
    *s = hsum_ps(acc) - summ_acc;
}

/* Q6_K: per half h, with L = ql+64h and H = qh+32h, chunk c (elements
 * 128h+32c..) is u = nibble | (2 bits of H << 4), 0..63; q = u - 32, the -32
 * applied as -32 * sum(scale_s * bsums_s). Sub-blocks 8h+2c, 8h+2c+1. */
void TARGET hl_vec_dot_q6_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *a) {
    const block_q6_K *x = w;
    const block_q8_K *y = a;
    const __m256i m4 = _mm256_set1_epi8(0xF), m3 = _mm256_set1_epi8(3);
    float sum = 0.0f;
    int16_t sc16[16];
    for (int64_t i = 0; i < n / QK_K; i++) {
        for (int sb = 0; sb < 16; sb++) sc16[sb] = x[i].scales[sb];
        const int offs = scaled_bsums(sc16, y[i].bsums);
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(x[i].ql + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(x[i].ql + 64 * h + 32));
            const __m256i hb = _mm256_loadu_si256((const __m256i *)(x[i].qh + 32 * h));
            __m256i u[4];
            u[0] = _mm256_and_si256(l0, m4);
            u[1] = _mm256_and_si256(l1, m4);
            u[2] = _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4);
            u[3] = _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4);
            u[0] = _mm256_or_si256(u[0], _mm256_slli_epi16(_mm256_and_si256(hb, m3), 4));
            u[1] = _mm256_or_si256(u[1], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m3), 4));
            u[2] = _mm256_or_si256(u[2], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m3), 4));
            u[3] = _mm256_or_si256(u[3], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m3), 4));
            for (int c = 0; c < 4; c++) {
                const __m256i q8 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 128 * h + 32 * c));
                const int sb = 8 * h + 2 * c;
                sumi = _mm256_add_epi32(sumi, dot_us8_scaled(u[c], q8, sc16[sb], sc16[sb + 1]));
            }
        }
        /* the integer total first: the -32 offset cancels most of the lane sums */
        const int total = hsum_epi32(sumi) - 32 * offs;
        sum += h2f(x[i].d) * y[i].d * (float)total;
    }
    *s = sum;
}

#else
typedef int hl_quants_avx2_unused; /* ISO C wants a non-empty unit */
#endif /* __x86_64__ && !HL_NO_SIMD */
