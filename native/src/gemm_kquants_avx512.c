/*
 * The AVX-512 VNNI K-quant kernel set (gemm_kquants.h): sixteen (row, token, super-block) pairs at a
 * time: a tile of 4 rows x 4 tokens for prompts, 16 super-blocks in memory order when decoding.
 *
 * Per pair and super-block, four vpdpbusd (unsigned weight bytes x signed activation bytes) give
 * 4-element sums for the four 64-element chunks; each fits int16 (at most 4 * 63 * 127), so two
 * vpackssdw pack them losslessly and two vpdpwssd multiply them by the 16-element scales (laid out to
 * match the pack's interleave) into sixteen int32 lanes. A transposing reduction (fold_*) then turns
 * the sixteen pairs' lane vectors into one vector of their exact integer totals: lane 4k + u for pair
 * k of quad u (a prompt tile's quad is a row and its pairs 4 tokens, a decode quad a row and its
 * pairs 4 super-blocks). The min term, the
 * min coefficients times the activation's bsums (vpmaddwd), joins the integer total for the offset
 * types and goes through the same reduction for the others. Only then does float arithmetic start,
 * lane-wise and identical for every pair: F = fma(d * yd, main, F), F = fnmadd(dmin * yd, mins, F),
 * one super-block after the other, F kept in dst between panels (decoding does the same operations
 * in scalar form). So a (row, token) value depends on W[row] and A[token] alone, and a token decoded alone
 * equals the same token in a prompt.
 */
#if defined(__x86_64__) && !defined(HL_NO_SIMD)

#include <math.h>

#include "gemm_kquants.h"

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

_Static_assert(KQ_ROWS == 4 && KQ_TOKENS == 4, "the tiles are 4 rows x 4 tokens");

/*
 * vpackssdw(p_c, p_c+1) puts, in 128-bit lane k, the sums of 16-element sub-block 4c + k (4 int16)
 * then of 4(c+1) + k; vpdpwssd pairs neighbours. So scale vector v (0, 1) holds at int16 8k + i
 * the scale of sub-block 8v + k (i < 4) or 8v + 4 + k (i >= 4).
 */
TARGET INLINE void scale_vectors(__m256i sc16, __m512i out[2]) {
    const __m512i s = _mm512_zextsi256_si512(sc16);
    const __m512i idx0 = _mm512_set_epi16(7, 7, 7, 7, 3, 3, 3, 3, 6, 6, 6, 6, 2, 2, 2, 2,
                                          5, 5, 5, 5, 1, 1, 1, 1, 4, 4, 4, 4, 0, 0, 0, 0);
    out[0] = _mm512_permutexvar_epi16(idx0, s);
    out[1] = _mm512_permutexvar_epi16(_mm512_add_epi16(idx0, _mm512_set1_epi16(8)), s);
}

TARGET static void layout_avx512(kq_block *b) {
    __m512i v[2];
    scale_vectors(_mm256_load_si256((const __m256i *)b->sc), v);
    _mm512_store_si512(b->sc, v[0]);
    _mm512_store_si512(b->sc + 32, v[1]);
}

/* One row's super-block as the kernel multiplies it: 4 x 64 quants, scale vectors, min coefficients. */
typedef struct {
    __m512i q[4], sc[2];
    __m256i mn;
} w512;

TARGET INLINE w512 panel_weights(const kq_block *b) {
    w512 w;
    for (int c = 0; c < 4; c++) w.q[c] = _mm512_load_si512(b->q + 64 * c);
    w.sc[0] = _mm512_load_si512(b->sc);
    w.sc[1] = _mm512_load_si512(b->sc + 32);
    w.mn = _mm256_load_si256((const __m256i *)b->mn);
    return w;
}

TARGET INLINE w512 register_weights(const kq_regs *k) {
    w512 w;
    for (int c = 0; c < 4; c++) w.q[c] = _mm512_inserti64x4(_mm512_castsi256_si512(k->q[2 * c]), k->q[2 * c + 1], 1);
    scale_vectors(k->sc, w.sc);
    w.mn = k->mn;
    return w;
}

/* An activation block: 4 x 64 quants and the 16 bsums. */
typedef struct {
    __m512i q[4];
    __m256i bsums;
} act512;

TARGET INLINE act512 load_act(const block_q8_K *y) {
    act512 a;
    for (int c = 0; c < 4; c++) a.q[c] = _mm512_loadu_si512(y->qs + 64 * c);
    a.bsums = _mm256_loadu_si256((const __m256i *)y->bsums);
    return a;
}

/* Sixteen int32 lanes summing to sum_s scale_s * sum_{e in s} u_e * a_e (+ the offset types' mins). */
TARGET INLINE __m512i pair_lanes(const w512 *w, const act512 *a, int offset_mins) {
    const __m512i z = _mm512_setzero_si512();
    __m512i p[4];
    for (int c = 0; c < 4; c++) p[c] = _mm512_dpbusd_epi32(z, w->q[c], a->q[c]);
    const __m512i s = offset_mins ? _mm512_zextsi256_si512(_mm256_madd_epi16(w->mn, a->bsums)) : z;
    return _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(s, w->sc[0], _mm512_packs_epi32(p[0], p[1])), w->sc[1],
                               _mm512_packs_epi32(p[2], p[3]));
}

/* The transposing reduction. fold_a(x, y) = [x folded to 8 lanes | y folded to 8]. */
TARGET INLINE __m512i fold_a(__m512i x, __m512i y) {
    return _mm512_add_epi32(_mm512_shuffle_i64x2(x, y, 0x44), _mm512_shuffle_i64x2(x, y, 0xEE));
}
/* x = [x0 | x1], y = [y0 | y1] (8 lanes each) -> 128-bit lanes x0, x1, y0, y1 folded to 4 lanes. */
TARGET INLINE __m512i fold_b(__m512i x, __m512i y) {
    return _mm512_add_epi32(_mm512_shuffle_i64x2(x, y, 0x88), _mm512_shuffle_i64x2(x, y, 0xDD));
}
/* In each 128-bit lane k: [x_k folded to 2 lanes, y_k folded to 2]. */
TARGET INLINE __m512i fold_c(__m512i x, __m512i y) {
    return _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y));
}
/* In each 128-bit lane k: [x_k's two totals, y_k's two totals]. */
TARGET INLINE __m512i fold_d(__m512i x, __m512i y) {
    const __m512 xf = _mm512_castsi512_ps(x), yf = _mm512_castsi512_ps(y);
    return _mm512_add_epi32(_mm512_castps_si512(_mm512_shuffle_ps(xf, yf, 0x88)),
                            _mm512_castps_si512(_mm512_shuffle_ps(xf, yf, 0xDD)));
}

/* Four quads' fold_b outputs -> lane 4k + u = the total of pair k (128-bit lane k) of quad u. */
TARGET INLINE __m512i totals(const __m512i y[4]) { return fold_d(fold_c(y[0], y[1]), fold_c(y[2], y[3])); }

/* F += one super-block's terms of sixteen pairs, from their quads' main and min lanes (lane 4k + u). */
TARGET INLINE __m512 add_terms(__m512 F, const __m512i ym[4], const __m512i yn[4], __m512 d, __m512 dmin, __m512 yd,
                               const int offset_mins) {
    F = _mm512_fmadd_ps(_mm512_mul_ps(d, yd), _mm512_cvtepi32_ps(totals(ym)), F);
    if (!offset_mins) F = _mm512_fnmadd_ps(_mm512_mul_ps(dmin, yd), _mm512_cvtepi32_ps(totals(yn)), F);
    return F;
}

/* Quad of one row's weights with 4 tokens (T of them; the others count as zero) -> 128-bit lane t. */
TARGET INLINE __m512i row_quad(const w512 *w, const act512 a[4], const int T, __m512i *mins, const int offset_mins) {
    __m512i s[4], m[4];
    for (int t = 0; t < 4; t++) {
        s[t] = t < T ? pair_lanes(w, &a[t], offset_mins) : _mm512_setzero_si512();
        m[t] = t < T ? _mm512_zextsi256_si512(_mm256_madd_epi16(w->mn, a[t].bsums)) : _mm512_setzero_si512();
    }
    if (!offset_mins) *mins = fold_b(_mm512_inserti64x4(m[0], _mm512_castsi512_si256(m[1]), 1),
                                     _mm512_inserti64x4(m[2], _mm512_castsi512_si256(m[3]), 1));
    return fold_b(fold_a(s[0], s[1]), fold_a(s[2], s[3]));
}

/* A prompt tile (kq_tile_fn): quad u = row u, so (r, t) sits in lane 4t + r. */
TARGET INLINE void tile(const kq_block *panel, int kc, const block_q8_K *act, size_t a_stride, const int T,
                        float *dst, size_t dst_stride, int rows, int accumulate, const int offset_mins) {
    float out[16] = {0};
    if (accumulate)
        for (int t = 0; t < T; t++)
            for (int r = 0; r < rows; r++) out[4 * t + r] = dst[(size_t)t * dst_stride + r];
    __m512 F = _mm512_loadu_ps(out);
    const block_q8_K *tok[4];
    for (int t = 0; t < 4; t++) tok[t] = (const block_q8_K *)((const char *)act + (size_t)(t < T ? t : 0) * a_stride);
    const __m512i token_of_lane = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    for (int i = 0; i < kc; i++) {
        const kq_block *rows4 = panel + i * KQ_ROWS;
        act512 a[4];
        for (int t = 0; t < T; t++) a[t] = load_act(&tok[t][i]);
        __m512i ym[4], yn[4];
        for (int r = 0; r < 4; r++) {
            const w512 w = panel_weights(&rows4[r]);
            ym[r] = row_quad(&w, a, T, &yn[r], offset_mins);
        }
        const __m512 d = _mm512_broadcast_f32x4(_mm_setr_ps(rows4[0].d, rows4[1].d, rows4[2].d, rows4[3].d));
        const __m512 dmin =
            _mm512_broadcast_f32x4(_mm_setr_ps(rows4[0].dmin, rows4[1].dmin, rows4[2].dmin, rows4[3].dmin));
        const __m128 yd = _mm_setr_ps(tok[0][i].d, tok[1][i].d, tok[2][i].d, tok[3][i].d);
        const __m512 y = _mm512_permutexvar_ps(token_of_lane, _mm512_castps128_ps512(yd));
        F = add_terms(F, ym, yn, d, dmin, y, offset_mins);
    }
    _mm512_storeu_ps(out, F);
    for (int t = 0; t < T; t++)
        for (int r = 0; r < rows; r++) dst[(size_t)t * dst_stride + r] = out[4 * t + r];
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

/* Pair k of a decode quad: one super-block of the row with its activation block; prefetches next. */
TARGET INLINE __m512i decode_pair(const int id, size_t block_bytes, const char *block, const char *next,
                                  const block_q8_K *y, float *dy, float *dmy, __m256i *mins, const int offset_mins) {
    for (size_t line = 0; line < block_bytes; line += 64) _mm_prefetch(next + line, _MM_HINT_T0);
    const kq_regs k = kq_unpack(id, block);
    const w512 w = register_weights(&k);
    const act512 a = load_act(y);
    *dy = k.d * y->d;
    *dmy = k.dmin * y->d;
    *mins = _mm256_madd_epi16(w.mn, a.bsums);
    return pair_lanes(&w, &a, offset_mins);
}

/* Where a decode quad's super-blocks come from: row, first super-block, how many (1..4) count. */
typedef struct {
    int64_t row, i0;
    int count;
} quad_src;

/* The four quads' integer totals, each quad's super-blocks past count repeating its last one. */
TARGET INLINE void decode_totals(const int id, size_t block_bytes, const char *w, size_t w_stride,
                                 const block_q8_K *act, const quad_src q[4], int32_t main[16], int32_t mins[16],
                                 float dy[16], float dmy[16], const int offset_mins) {
    __m512i ym[4], yn[4];
#pragma GCC unroll 4
    for (int u = 0; u < 4; u++) {
        __m512i s[4];
        __m256i m[4];
        const char *row = w + (size_t)q[u].row * w_stride;
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            const int64_t i = q[u].i0 + (k < q[u].count ? k : q[u].count - 1);
            const char *block = row + (size_t)i * block_bytes;
            s[k] = decode_pair(id, block_bytes, block, block + 8 * block_bytes, &act[i], &dy[4 * k + u],
                               &dmy[4 * k + u], &m[k], offset_mins);
        }
        ym[u] = fold_b(fold_a(s[0], s[1]), fold_a(s[2], s[3]));
        yn[u] = fold_b(_mm512_inserti64x4(_mm512_castsi256_si512(m[0]), m[1], 1),
                       _mm512_inserti64x4(_mm512_castsi256_si512(m[2]), m[3], 1));
    }
    _mm512_storeu_si512(main, totals(ym));
    _mm512_storeu_si512(mins, totals(yn));
}

/*
 * One token (kq_decode_fn) for type id, streaming W in memory order like a vec_dot: quads of up to 4
 * consecutive super-blocks of a row, rows one after another, four quads per reduction (the totals'
 * lane 4k + u is super-block k of quad u). Each row's float sum then takes its super-blocks' terms
 * in order with the scalar forms of the tiles' lane operations: s = fmaf(d * yd, main, s) and
 * s = fmaf(-(dmin * yd), mins, s), which round as fma / fnmadd do in the lanes.
 */
TARGET INLINE void decode(const int id, size_t block_bytes, int64_t n, int64_t nr, const char *w, size_t w_stride,
                          const block_q8_K *act, float *dst, const int offset_mins) {
    const int64_t nb = n / QK_K;
    quad_src q[4];
    int nq = 0;
    int64_t row = 0, i0 = 0, sum_row = 0;
    float sum = 0.0f;
    while (nq > 0 || row < nr) {
        if (row < nr) { /* the next quad in memory order */
            q[nq].row = row;
            q[nq].i0 = i0;
            q[nq].count = nb - i0 < 4 ? (int)(nb - i0) : 4;
            nq++;
            i0 += 4;
            if (i0 >= nb) row++, i0 = 0;
        }
        if (nq < 4 && row < nr) continue;
        for (int u = nq; u < 4; u++) q[u] = q[0]; /* the last reduction's spare quads: unused */
        int32_t main[16], mins[16];
        float dy[16], dmy[16];
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

const kq_isa hl_kq_avx512 = {layout_avx512, tile_float_mins, tile_offset_mins,
                             {decode_Q2_K, decode_Q3_K, decode_Q4_K, decode_Q5_K, decode_Q6_K}};

#else
typedef int hl_gemm_kquants_avx512_unused; /* ISO C wants a non-empty unit */
#endif /* __x86_64__ && !HL_NO_SIMD */
