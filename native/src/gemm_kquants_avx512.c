/*
 * The AVX-512 VNNI K-quant kernel set: register tiles of KQ_ROWS rows x up to KQ_TOKENS tokens over a
 * panel of unpacked super-blocks (gemm_kquants.h).
 *
 * Per (row, token) and super-block, four vpdpbusd (unsigned weight bytes x signed activation bytes)
 * give 4-element sums for the four 64-element chunks; each fits int16 (at most 4 * 63 * 127), so two
 * vpackssdw pack them losslessly and two vpdpwssd multiply them by the 16-element scales (laid out to
 * match the pack's interleave) into sixteen int32 lanes. The min term is one vpmaddwd of the min
 * coefficients with the activation's bsums. The offset types (Q3_K, Q6_K) add it to the lanes and sum
 * them to one exact integer, which lane 0 accumulates as d * yd * total (the offset cancels most of
 * the lane sums, so converting them separately would lose the result's low bits); the others
 * convert the lanes, accumulate them with d * yd and the mins with dmin * yd. The float lanes are
 * summed horizontally once per panel: every (row, token) runs the same instructions in the same order
 * wherever it sits in the tile.
 */
#if defined(__x86_64__) && !defined(HL_NO_SIMD)

#include <immintrin.h>

#include "gemm_kquants.h"

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

/*
 * vpackssdw(p_c, p_c+1) puts, in 128-bit lane k, the sums of 16-element sub-block 4c + k (4 int16)
 * then of 4(c+1) + k; vpdpwssd pairs neighbours. So scale vector v (0, 1) holds at int16 8k + i
 * the scale of sub-block 8v + k (i < 4) or 8v + 4 + k (i >= 4).
 */
TARGET static void layout_avx512(kq_block *b) {
    static const int16_t idx[64] = {
        0, 0, 0, 0, 4, 4, 4, 4, 1, 1, 1, 1, 5, 5, 5, 5, 2, 2, 2, 2, 6, 6, 6, 6, 3, 3, 3, 3, 7, 7, 7, 7,
        8, 8, 8, 8, 12, 12, 12, 12, 9, 9, 9, 9, 13, 13, 13, 13, 10, 10, 10, 10, 14, 14, 14, 14, 11, 11, 11, 11, 15, 15, 15, 15};
    const __m512i s = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)b->sc));
    const __m512i v0 = _mm512_permutexvar_epi16(_mm512_loadu_si512(idx), s);
    const __m512i v1 = _mm512_permutexvar_epi16(_mm512_loadu_si512(idx + 32), s);
    _mm512_store_si512(b->sc, v0);
    _mm512_store_si512(b->sc + 32, v1);
}

/* The activation block a super-block is dotted with: 4 x 64 quants, bsums (16 int16, zero-extended). */
typedef struct {
    __m512i q[4];
    __m512i bsums;
} act512;

TARGET INLINE act512 load_act(const block_q8_K *y) {
    act512 a;
    for (int c = 0; c < 4; c++) a.q[c] = _mm512_loadu_si512(y->qs + 64 * c);
    a.bsums = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)y->bsums));
    return a;
}

/* Sixteen int32 lanes summing to sum_s scale_s * sum_{e in s} u_e * a_e. */
TARGET INLINE __m512i scaled_dot(const kq_block *b, const act512 *a) {
    const __m512i z = _mm512_setzero_si512();
    __m512i p[4];
    for (int c = 0; c < 4; c++) p[c] = _mm512_dpbusd_epi32(z, _mm512_load_si512(b->q + 64 * c), a->q[c]);
    const __m512i s = _mm512_dpwssd_epi32(z, _mm512_load_si512(b->sc), _mm512_packs_epi32(p[0], p[1]));
    return _mm512_dpwssd_epi32(s, _mm512_load_si512(b->sc + 32), _mm512_packs_epi32(p[2], p[3]));
}

/* acc += this super-block's (row, token) dot, as the file header describes. */
TARGET INLINE __m512 accumulate_block(__m512 acc, const kq_block *b, const act512 *a, float yd, int offset_mins) {
    __m512i s = scaled_dot(b, a);
    const __m512i mn = _mm512_load_si512(b->mn);
    if (offset_mins) { /* the offset cancels most of the lanes: the exact integer total first */
        const int total = _mm512_reduce_add_epi32(_mm512_dpwssd_epi32(s, mn, a->bsums));
        return _mm512_mask_add_ps(acc, 1, acc, _mm512_set1_ps(b->d * yd * (float)total));
    }
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(b->d * yd), acc);
    const __m512 mins = _mm512_cvtepi32_ps(_mm512_madd_epi16(mn, a->bsums));
    return _mm512_fnmadd_ps(mins, _mm512_set1_ps(b->dmin * yd), acc);
}

/* A tile of KQ_ROWS rows x T tokens (kq_tile_fn). */
TARGET INLINE void tile(const kq_block *panel, int kc, const block_q8_K *act, size_t a_stride, const int T,
                        float *dst, size_t dst_stride, int rows, int accumulate, const int offset_mins) {
    __m512 acc[KQ_ROWS][KQ_TOKENS];
    for (int r = 0; r < KQ_ROWS; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    for (int i = 0; i < kc; i++) {
        const kq_block *blocks = panel + i * KQ_ROWS;
        for (int t = 0; t < T; t++) {
            const block_q8_K *y = (const block_q8_K *)((const char *)act + (size_t)t * a_stride) + i;
            const act512 a = load_act(y);
            for (int r = 0; r < KQ_ROWS; r++) acc[r][t] = accumulate_block(acc[r][t], &blocks[r], &a, y->d, offset_mins);
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < rows; r++) {
            const float v = _mm512_reduce_add_ps(acc[r][t]);
            float *out = dst + (size_t)t * dst_stride + r;
            *out = accumulate ? *out + v : v;
        }
}

#define TILE_FOR_TOKENS(offset_mins)                                                                    \
    switch (tokens) {                                                                                   \
    case 1: tile(panel, kc, act, a_stride, 1, dst, dst_stride, rows, accumulate, offset_mins); break;   \
    case 2: tile(panel, kc, act, a_stride, 2, dst, dst_stride, rows, accumulate, offset_mins); break;   \
    case 3: tile(panel, kc, act, a_stride, 3, dst, dst_stride, rows, accumulate, offset_mins); break;   \
    default: tile(panel, kc, act, a_stride, 4, dst, dst_stride, rows, accumulate, offset_mins); break;  \
    }

_Static_assert(KQ_TOKENS == 4, "the tile switches cover 1..4 tokens");

TARGET static void tile_float_mins(const kq_block *panel, int kc, const block_q8_K *act, size_t a_stride,
                                   int tokens, float *dst, size_t dst_stride, int rows, int accumulate) {
    TILE_FOR_TOKENS(0)
}

TARGET static void tile_offset_mins(const kq_block *panel, int kc, const block_q8_K *act, size_t a_stride,
                                    int tokens, float *dst, size_t dst_stride, int rows, int accumulate) {
    TILE_FOR_TOKENS(1)
}

const kq_isa hl_kq_avx512 = {layout_avx512, tile_float_mins, tile_offset_mins};

#else
typedef int hl_gemm_kquants_avx512_unused; /* ISO C wants a non-empty unit */
#endif /* __x86_64__ && !HL_NO_SIMD */
