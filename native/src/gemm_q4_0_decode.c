/*
 * Decode-sized calls (1 to HL_GEMM_BATCH_MIN - 1 tokens) of Q4_0 on AVX-512 VNNI: each weight row is read
 * once, front to back, two blocks (36 bytes) per step.
 *
 * The tokens' activations are repacked once per call into the order the unpacked weights come in: a pair
 * of blocks b, b+1 becomes one 64-byte register [b: 0..15 | b+1: 0..15 | b: 16..31 | b+1: 16..31] (low
 * nibbles, then high nibbles, of each block's 16 bytes), with, per lane, -8 * (its four activation quants)
 * (the Q4_0 offset, exact) and the block's d_a. Per row and pair: unpack (4 ops), one vpdpbusd started at
 * the correction, one convert, the rows' d_w spread to the lanes from a register of 16 d_w gathered once
 * per 16 blocks, one multiply by d_a and one FMA into 16 float lanes, summed at the row's end. Every
 * (row, token) sees the same operations whatever the call, so decode calls agree bit for bit.
 */
#include "common.h"
#include "gemm_q32.h"

#if defined(__x86_64__) && !defined(HL_NO_SIMD)
#include <immintrin.h>

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")))
#define AI __attribute__((always_inline)) inline
#define MAX_TOKENS (HL_GEMM_BATCH_MIN - 1)
#define CHUNK_PAIRS 128 /* pairs repacked at once (n <= 8192: once per call) */

typedef struct { /* one token's repacked pair */
    __m512i q;    /* the activation quants in the unpacked weights' order */
    __m512i corr; /* per lane: -8 * sum of its four quants */
    __m512 d;     /* per lane: its block's d_a */
} act_pair;

/* Pairs p0 .. p0 + np - 1 of one token's Q8_0 row (nb blocks; a missing last block reads as zeros). */
TGT static void repack(const block_q8_0 *a, int64_t nb, int64_t p0, int64_t np, act_pair *out) {
    for (int64_t p = 0; p < np; p++) {
        const int64_t b = 2 * (p0 + p);
        const int two = b + 1 < nb;
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)a[b].qs);
        const __m256i x1 = two ? _mm256_loadu_si256((const __m256i *)a[b + 1].qs) : _mm256_setzero_si256();
        const __m512i lo = _mm512_inserti64x4(_mm512_castsi256_si512(x0), x1, 1); /* [b | b+1] */
        out[p].q = _mm512_permutexvar_epi64(_mm512_set_epi64(7, 6, 3, 2, 5, 4, 1, 0), lo);
        out[p].corr = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(8), out[p].q);
        out[p].corr = _mm512_sub_epi32(_mm512_setzero_si512(), out[p].corr);
        const float d1 = two ? _cvtsh_ss(a[b + 1].d) : 0.0f, d0 = _cvtsh_ss(a[b].d);
        out[p].d = _mm512_set_ps(d1, d1, d1, d1, d0, d0, d0, d0, d1, d1, d1, d1, d0, d0, d0, d0);
    }
}

/* The 16 d_w of blocks b0 .. b0+15 of a row (fewer at the end), as floats. */
TGT static AI __m512 row_scales(const char *row, int64_t b0, int64_t nb) {
    const __m512i at = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32((int32_t)sizeof(block_q4_0)));
    const __mmask16 m = hl_lanes16(nb - b0);
    const __m512i raw = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, at, row + b0 * sizeof(block_q4_0), 1);
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(raw));
}

/* Pair p (blocks 2p, 2p+1) of a row as unsigned nibbles in the repacked order. */
TGT static AI __m512i row_pair(const block_q4_0 *w, int64_t b, int two) {
    const __m128i q0 = _mm_loadu_si128((const __m128i *)w[b].qs);
    const __m128i q1 = two ? _mm_loadu_si128((const __m128i *)w[b + 1].qs) : _mm_setzero_si128();
    const __m256i y = _mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1);
    const __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(y), _mm256_srli_epi16(y, 4), 1);
    return _mm512_and_si512(z, _mm512_set1_epi8(0x0F));
}

/* acc[t] += the row's pairs p0 .. p0+np-1 against each token's repacked pairs. */
TGT static AI void row_chunk(const int NT, const char *row, int64_t nb, int64_t p0, int64_t np,
                             act_pair (*act)[CHUNK_PAIRS], __m512 *acc) {
    const __m512i spread_lo = _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
    __m512 dw16 = _mm512_setzero_ps();
    for (int64_t p = 0; p < np; p++) {
        const int64_t b = 2 * (p0 + p);
        if (b % 16 == 0 || p == 0) dw16 = row_scales(row, b - b % 16, nb);
        const __m512i idx = _mm512_add_epi32(spread_lo, _mm512_set1_epi32((int32_t)(b % 16)));
        const __m512 dw = _mm512_permutexvar_ps(idx, dw16);
        const __m512i wq = row_pair((const block_q4_0 *)row, b, b + 1 < nb);
        for (int t = 0; t < NT; t++) {
            const __m512i sum = _mm512_dpbusd_epi32(act[t][p].corr, wq, act[t][p].q);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw, act[t][p].d), acc[t]);
        }
    }
}

TGT static AI void decode_tokens(const int NT, int64_t n, int64_t nr, const char *w, size_t w_stride, const char *a,
                                 size_t a_stride, float *dst, size_t dst_stride) {
    act_pair act[MAX_TOKENS][CHUNK_PAIRS];
    const int64_t nb = n / QK, npairs = (nb + 1) / 2;
    const int once = npairs <= CHUNK_PAIRS; /* else each row repacks chunk by chunk (rows over 8192) */
    for (int t = 0; once && t < NT; t++) repack((const block_q8_0 *)(a + (size_t)t * a_stride), nb, 0, npairs, act[t]);
    for (int64_t r = 0; r < nr; r++) {
        const char *row = w + (size_t)r * w_stride;
        __m512 acc[MAX_TOKENS];
        for (int t = 0; t < NT; t++) acc[t] = _mm512_setzero_ps();
        for (int64_t p0 = 0; p0 < npairs; p0 += CHUNK_PAIRS) {
            const int64_t np = npairs - p0 < CHUNK_PAIRS ? npairs - p0 : CHUNK_PAIRS;
            for (int t = 0; !once && t < NT; t++)
                repack((const block_q8_0 *)(a + (size_t)t * a_stride), nb, p0, np, act[t]);
            row_chunk(NT, row, nb, p0, np, act, acc);
        }
        for (int t = 0; t < NT; t++) dst[(size_t)t * dst_stride + r] = _mm512_reduce_add_ps(acc[t]);
    }
}

TGT void hl_gemm_q4_0_decode_avx512(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                                    size_t a_stride, float *dst, size_t dst_stride) {
    if (nt == 1) decode_tokens(1, n, nr, w, w_stride, a, a_stride, dst, dst_stride);
    else if (nt == 2) decode_tokens(2, n, nr, w, w_stride, a, a_stride, dst, dst_stride);
    else decode_tokens(3, n, nr, w, w_stride, a, a_stride, dst, dst_stride);
}
#endif
