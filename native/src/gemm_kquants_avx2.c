/*
 * The AVX2 K-quant kernel set (gemm_kquants.h): eight (row, token, super-block) pairs at a time, as
 * 2 rows x 4 tokens (each half of a 4-row panel tile) for prompts, 8 super-blocks in memory order
 * when decoding.
 *
 * Per pair and super-block, eight vpmaddubsw (unsigned weight bytes x signed activation bytes, at
 * most 2 * 63 * 127: no saturation) and eight vpmaddwd with the chunk's two 16-element scales give
 * eight int32 lanes. A transposing reduction (fold_*) turns eight pairs' lane vectors into one vector
 * of their exact integer totals, lane 4k + i for pair 2i + k. The min term (min coefficients times the
 * activation's bsums, vpmaddwd) joins the integer total for the offset types and goes through the
 * same reduction for the others. Then, lane-wise and identical for every pair and for the decode
 * kernel: F = fma(d * yd, main, F), F = fnmadd(dmin * yd, mins, F), one super-block after the other.
 */
#if defined(__x86_64__) && !defined(HL_NO_SIMD)

#include <math.h>

#include "gemm_kquants.h"

#define TARGET __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

_Static_assert(KQ_ROWS == 4 && KQ_TOKENS == 4, "the tiles are two halves of 4 rows x 4 tokens");

/* Byte shuffles picking, from a half of sc16 (scales 0..7 or 8..15 in both 128-bit lanes), scale
 * 2j for int16 0..7 and 2j + 1 for int16 8..15. */
static const uint8_t scale_pick[4][32] = {
    {0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
     2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3},
    {4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5,
     6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7},
    {8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9,
     10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11},
    {12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13,
     14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15},
};

/* Chunk c's scale vector: int16 0..7 = scale of sub-block 2c, 8..15 = of 2c + 1 (vpmaddubsw's
 * outputs 0..7 are elements 0..15 of the chunk); halves[h] = sc16's half h in both lanes. */
TARGET INLINE __m256i chunk_scales(const __m256i halves[2], int c) {
    return _mm256_shuffle_epi8(halves[c / 4], _mm256_loadu_si256((const __m256i *)scale_pick[c % 4]));
}

/* halves[0] = scales 0..7 in both 128-bit lanes, halves[1] = scales 8..15. */
TARGET INLINE void scale_halves(__m256i sc16, __m256i halves[2]) {
    halves[0] = _mm256_permute2x128_si256(sc16, sc16, 0x00);
    halves[1] = _mm256_permute2x128_si256(sc16, sc16, 0x11);
}

TARGET static void layout_avx2(kq_block *b) {
    __m256i halves[2];
    scale_halves(_mm256_load_si256((const __m256i *)b->sc), halves);
    for (int c = 0; c < 8; c++) _mm256_store_si256((__m256i *)(b->sc + 16 * c), chunk_scales(halves, c));
}

/* An activation block: 8 x 32 quants and the 16 bsums. */
typedef struct {
    __m256i q[8];
    __m256i bsums;
} act256;

TARGET INLINE act256 load_act(const block_q8_K *y) {
    act256 a;
    for (int c = 0; c < 8; c++) a.q[c] = _mm256_loadu_si256((const __m256i *)(y->qs + 32 * c));
    a.bsums = _mm256_loadu_si256((const __m256i *)y->bsums);
    return a;
}

/* Chunk c's contribution: 8 int32 lanes of scale * u * a. */
TARGET INLINE __m256i chunk_dot(__m256i u, __m256i a, __m256i scales) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), scales);
}

/* Eight int32 lanes summing to sum_s scale_s * sum_{e in s} u_e * a_e (+ the offset types' mins),
 * the weights from a panel block. */
TARGET INLINE __m256i panel_pair(const kq_block *b, const act256 *a, int offset_mins) {
    const __m256i mn = _mm256_load_si256((const __m256i *)b->mn);
    __m256i s = offset_mins ? _mm256_madd_epi16(mn, a->bsums) : _mm256_setzero_si256();
    for (int c = 0; c < 8; c++)
        s = _mm256_add_epi32(s, chunk_dot(_mm256_load_si256((const __m256i *)(b->q + 32 * c)), a->q[c],
                                          _mm256_load_si256((const __m256i *)(b->sc + 16 * c))));
    return s;
}

/* As panel_pair, the weights unpacked in registers. */
TARGET INLINE __m256i register_pair(const kq_regs *k, const act256 *a, int offset_mins) {
    __m256i s = offset_mins ? _mm256_madd_epi16(k->mn, a->bsums) : _mm256_setzero_si256();
    __m256i halves[2];
    scale_halves(k->sc, halves);
    for (int c = 0; c < 8; c++) s = _mm256_add_epi32(s, chunk_dot(k->q[c], a->q[c], chunk_scales(halves, c)));
    return s;
}

/* The transposing reduction. fold_a(x, y) = [x folded to 4 lanes | y folded to 4]. */
TARGET INLINE __m256i fold_a(__m256i x, __m256i y) {
    return _mm256_add_epi32(_mm256_permute2x128_si256(x, y, 0x20), _mm256_permute2x128_si256(x, y, 0x31));
}
/* In each 128-bit lane k: [x_k folded to 2 lanes, y_k folded to 2]. */
TARGET INLINE __m256i fold_c(__m256i x, __m256i y) {
    return _mm256_add_epi32(_mm256_unpacklo_epi64(x, y), _mm256_unpackhi_epi64(x, y));
}
/* In each 128-bit lane k: [x_k's two totals, y_k's two totals]. */
TARGET INLINE __m256i fold_d(__m256i x, __m256i y) {
    const __m256 xf = _mm256_castsi256_ps(x), yf = _mm256_castsi256_ps(y);
    return _mm256_add_epi32(_mm256_castps_si256(_mm256_shuffle_ps(xf, yf, 0x88)),
                            _mm256_castps_si256(_mm256_shuffle_ps(xf, yf, 0xDD)));
}
/* x[i] = fold_a(pair 2i, pair 2i + 1) -> lane 4k + i = the total of pair 2i + k. */
TARGET INLINE __m256i totals(const __m256i x[4]) { return fold_d(fold_c(x[0], x[1]), fold_c(x[2], x[3])); }

/* F += one super-block's terms of eight pairs from their fold_a'd main and min lanes. */
TARGET INLINE __m256 add_terms(__m256 F, const __m256i xm[4], const __m256i xn[4], __m256 d, __m256 dmin, __m256 yd,
                               const int offset_mins) {
    F = _mm256_fmadd_ps(_mm256_mul_ps(d, yd), _mm256_cvtepi32_ps(totals(xm)), F);
    if (!offset_mins) F = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, yd), _mm256_cvtepi32_ps(totals(xn)), F);
    return F;
}

/* Rows 2h, 2h + 1 of a panel tile x T tokens: pair 2t + r, so lane 4r + t. */
TARGET INLINE void half_tile(const kq_block *panel, int kc, const block_q8_K *const tok[4], const int T, int h,
                             float out[8], const int offset_mins) {
    __m256 F = _mm256_loadu_ps(out);
    for (int i = 0; i < kc; i++) {
        const kq_block *b = panel + i * KQ_ROWS + 2 * h;
        __m256i xm[4], xn[4];
        float yd[4];
        for (int t = 0; t < 4; t++) {
            xm[t] = xn[t] = _mm256_setzero_si256();
            yd[t] = tok[t][i].d;
            if (t >= T) continue;
            const act256 a = load_act(&tok[t][i]);
            xm[t] = fold_a(panel_pair(&b[0], &a, offset_mins), panel_pair(&b[1], &a, offset_mins));
            if (!offset_mins)
                xn[t] = fold_a(_mm256_madd_epi16(_mm256_load_si256((const __m256i *)b[0].mn), a.bsums),
                               _mm256_madd_epi16(_mm256_load_si256((const __m256i *)b[1].mn), a.bsums));
        }
        const __m256 d = _mm256_setr_m128(_mm_set1_ps(b[0].d), _mm_set1_ps(b[1].d));
        const __m256 dmin = _mm256_setr_m128(_mm_set1_ps(b[0].dmin), _mm_set1_ps(b[1].dmin));
        const __m128 y4 = _mm_loadu_ps(yd);
        F = add_terms(F, xm, xn, d, dmin, _mm256_setr_m128(y4, y4), offset_mins);
    }
    _mm256_storeu_ps(out, F);
}

/* A prompt tile (kq_tile_fn) as two halves of 2 rows. */
TARGET INLINE void tile(const kq_block *panel, int kc, const block_q8_K *act, size_t a_stride, const int T,
                        float *dst, size_t dst_stride, int rows, int accumulate, const int offset_mins) {
    float out[16] = {0}; /* lane 4r + t */
    if (accumulate)
        for (int r = 0; r < rows; r++)
            for (int t = 0; t < T; t++) out[4 * r + t] = dst[(size_t)t * dst_stride + r];
    const block_q8_K *tok[4];
    for (int t = 0; t < 4; t++) tok[t] = (const block_q8_K *)((const char *)act + (size_t)(t < T ? t : 0) * a_stride);
    half_tile(panel, kc, tok, T, 0, out, offset_mins);
    if (rows > 2) half_tile(panel, kc, tok, T, 1, out + 8, offset_mins);
    for (int r = 0; r < rows; r++)
        for (int t = 0; t < T; t++) dst[(size_t)t * dst_stride + r] = out[4 * r + t];
}

#define TILE_FOR_TOKENS(offset_mins)                                                                    \
    switch (tokens) {                                                                                   \
    case 1: tile(panel, kc, act, a_stride, 1, dst, dst_stride, rows, accumulate, offset_mins); break;   \
    case 2: tile(panel, kc, act, a_stride, 2, dst, dst_stride, rows, accumulate, offset_mins); break;   \
    case 3: tile(panel, kc, act, a_stride, 3, dst, dst_stride, rows, accumulate, offset_mins); break;   \
    default: tile(panel, kc, act, a_stride, 4, dst, dst_stride, rows, accumulate, offset_mins); break;  \
    }

TARGET static void tile_float_mins(const kq_block *panel, int kc, const block_q8_K *act, size_t a_stride,
                                   int tokens, float *dst, size_t dst_stride, int rows, int accumulate) {
    TILE_FOR_TOKENS(0)
}

TARGET static void tile_offset_mins(const kq_block *panel, int kc, const block_q8_K *act, size_t a_stride,
                                    int tokens, float *dst, size_t dst_stride, int rows, int accumulate) {
    TILE_FOR_TOKENS(1)
}

/* Where a decode pair of super-blocks comes from: row, first super-block, how many (1, 2) count. */
typedef struct {
    int64_t row, i0;
    int count;
} duo_src;

/* The four duos' integer totals, a duo's second super-block past count repeating its first. */
TARGET INLINE void decode_totals(const int id, size_t block_bytes, const char *w, size_t w_stride,
                                 const block_q8_K *act, const duo_src q[4], int32_t main[8], int32_t mins[8],
                                 float dy[8], float dmy[8], const int offset_mins) {
    __m256i xm[4], xn[4];
#pragma GCC unroll 4
    for (int u = 0; u < 4; u++) {
        __m256i s[2], m[2];
        const char *row = w + (size_t)q[u].row * w_stride;
#pragma GCC unroll 2
        for (int k = 0; k < 2; k++) {
            const int64_t i = q[u].i0 + (k < q[u].count ? k : 0);
            const char *block = row + (size_t)i * block_bytes;
            for (size_t line = 0; line < block_bytes; line += 64)
                _mm_prefetch(block + 8 * block_bytes + line, _MM_HINT_T0);
            const kq_regs kr = kq_unpack(id, block);
            const act256 a = load_act(&act[i]);
            s[k] = register_pair(&kr, &a, offset_mins);
            m[k] = _mm256_madd_epi16(kr.mn, a.bsums);
            dy[4 * k + u] = kr.d * act[i].d;
            dmy[4 * k + u] = kr.dmin * act[i].d;
        }
        xm[u] = fold_a(s[0], s[1]);
        xn[u] = fold_a(m[0], m[1]);
    }
    _mm256_storeu_si256((__m256i *)main, totals(xm));
    _mm256_storeu_si256((__m256i *)mins, totals(xn));
}

/*
 * One token (kq_decode_fn) for type id, streaming W in memory order like a vec_dot: duos of up to 2
 * consecutive super-blocks of a row, rows one after another, four duos per reduction (pair 2u + k,
 * so lane 4k + u is super-block k of duo u). Each row's float sum then takes its super-blocks' terms
 * in order with the scalar forms of the tiles' lane operations: s = fmaf(d * yd, main, s) and
 * s = fmaf(-(dmin * yd), mins, s), which round as fma / fnmadd do in the lanes.
 */
TARGET INLINE void decode(const int id, size_t block_bytes, int64_t n, int64_t nr, const char *w, size_t w_stride,
                          const block_q8_K *act, float *dst, const int offset_mins) {
    const int64_t nb = n / QK_K;
    duo_src q[4];
    int nq = 0;
    int64_t row = 0, i0 = 0, sum_row = 0;
    float sum = 0.0f;
    while (nq > 0 || row < nr) {
        if (row < nr) { /* the next duo in memory order */
            q[nq].row = row;
            q[nq].i0 = i0;
            q[nq].count = nb - i0 < 2 ? (int)(nb - i0) : 2;
            nq++;
            i0 += 2;
            if (i0 >= nb) row++, i0 = 0;
        }
        if (nq < 4 && row < nr) continue;
        for (int u = nq; u < 4; u++) q[u] = q[0]; /* the last reduction's spare duos: unused */
        int32_t main[8], mins[8];
        float dy[8], dmy[8];
        decode_totals(id, block_bytes, w, w_stride, act, q, main, mins, dy, dmy, offset_mins);
        for (int u = 0; u < nq; u++) {
            if (q[u].row != sum_row) {
                dst[sum_row] = sum;
                sum_row = q[u].row;
                sum = 0.0f;
            }
            for (int k = 0; k < q[u].count; k++) {
                sum = fmaf(dy[4 * k + u], (float)main[4 * k + u], sum);
                if (!offset_mins) sum = fmaf(-dmy[4 * k + u], (float)mins[4 * k + u], sum);
            }
        }
        nq = 0;
    }
    if (nr > 0) dst[sum_row] = sum;
}

#define DECODE(type, block, offset_mins)                                                                       \
    TARGET static void decode_##type(int64_t n, int64_t nr, const char *w, size_t w_stride, const block_q8_K *act, \
                                     float *dst) {                                                             \
        decode(KQ_##type, sizeof(block), n, nr, w, w_stride, act, dst, offset_mins);                           \
    }

DECODE(Q2_K, block_q2_K, 0)
DECODE(Q3_K, block_q3_K, 1)
DECODE(Q4_K, block_q4_K, 0)
DECODE(Q5_K, block_q5_K, 0)
DECODE(Q6_K, block_q6_K, 1)

const kq_isa hl_kq_avx2 = {layout_avx2, tile_float_mins, tile_offset_mins,
                           {decode_Q2_K, decode_Q3_K, decode_Q4_K, decode_Q5_K, decode_Q6_K}};

#else
typedef int hl_gemm_kquants_avx2_unused; /* ISO C wants a non-empty unit */
#endif /* __x86_64__ && !HL_NO_SIMD */
