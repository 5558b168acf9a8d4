/*
 * AVX-512 VNNI tiled kernels of the 32-element weight types (see gemm_q32.h for the contract).
 *
 * One 512-bit register holds a pair of 32-element blocks in their natural element order. The weights
 * are made unsigned bytes u (Q4: nibble, Q5: nibble | bit << 4, Q8_0: q + 128) and the activations stay
 * signed, so one vpdpbusd gives each lane the sum of four products u * a. Q4_0/Q5_0/Q8_0 subtract their
 * offset c (8, 16, 128) exactly by starting that dot at -c * (the lane's four activations): the block
 * sums are the references' integer sums. Per pair and (row, token) that is one vpdpbusd, one convert,
 * one multiply (d_w * d_a for each block's 8 lanes) and one FMA, plus for Q4_1/Q5_1 one FMA of the mins
 * (m_w in lanes 0 and 8) with the activation's s.
 *
 * Activations are packed once per chunk of tokens (quants, correction or s, and scales as ready
 * vectors) and reused by every row tile; a row tile's weights are unpacked once per pair in registers
 * and reused by the tile's tokens. If the packing buffer cannot be allocated, the same tiles run on
 * activations packed into a stack buffer a few pairs at a time (the accumulators carried over exactly).
 */
#if defined(__x86_64__) && !defined(HL_NO_SIMD)

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "gemm_q32.h"

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define AI __attribute__((always_inline)) inline

enum { Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 };
#define IS_Q1(k) ((k) == Q4_1 || (k) == Q5_1)

#define MR 4  /* weight rows per tile */
#define MT 4  /* tokens per tile (a partial tile runs a narrower kernel) */
#define KC 16 /* pairs per slice when packing into the stack buffer */

/* One pair of activation blocks, packed. */
typedef struct {
    __m512i q; /* 64 signed quants */
    __m512i c; /* Q8_0: -c * (sum of each lane's 4 quants); Q8_1: s of the two blocks in float lanes 0, 8 */
    __m512 d;  /* d of block 0 in lanes 0..7, of block 1 in lanes 8..15 */
} apk;

static AI size_t blk_bytes(int k) {
    return k == Q4_0 ? sizeof(block_q4_0) : k == Q4_1 ? sizeof(block_q4_1) : k == Q5_0 ? sizeof(block_q5_0)
         : k == Q5_1 ? sizeof(block_q5_1) : sizeof(block_q8_0);
}

static AI uint16_t ld16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static AI uint32_t ld32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Halves lo, hi -> [lo x8, hi x8] as floats (exact). */
TGT static AI __m512 d16(uint16_t lo, uint16_t hi) {
    return _mm512_cvtph_ps(_mm256_set_m128i(_mm_set1_epi16((short)hi), _mm_set1_epi16((short)lo)));
}

/* Halves lo, hi -> [lo, 0 x7, hi, 0 x7] as floats. */
TGT static AI __m512 m16(uint16_t lo, uint16_t hi) {
    return _mm512_cvtph_ps(_mm256_set_m128i(_mm_cvtsi32_si128(hi), _mm_cvtsi32_si128(lo)));
}

/* The weights of the pair at b (two = 0: only the first block, the second reads as zeros). */
TGT static AI void unpack_w(const int k, const uint8_t *b, const int two, __m512i *wq, __m512 *wd, __m512 *wm) {
    const uint8_t *b1 = b + blk_bytes(k);
    *wd = d16(ld16(b), two ? ld16(b1) : 0);
    if (IS_Q1(k)) *wm = m16(ld16(b + 2), two ? ld16(b1 + 2) : 0);
    if (k == Q8_0) {
        const __m256i lo = _mm256_loadu_si256((const __m256i *)(b + 2));
        const __m256i hi = two ? _mm256_loadu_si256((const __m256i *)(b1 + 2)) : _mm256_setzero_si256();
        *wq = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), _mm512_set1_epi8((char)0x80));
        return;
    }
    const int qo = k == Q4_0 ? 2 : k == Q4_1 ? 4 : k == Q5_0 ? 6 : 8; /* offset of qs */
    const __m128i x0 = _mm_loadu_si128((const __m128i *)(b + qo));
    const __m128i x1 = two ? _mm_loadu_si128((const __m128i *)(b1 + qo)) : _mm_setzero_si128();
    /* [x0, x0 >> 4, x1, x1 >> 4] & 0xF: block 0's elements 0..31, then block 1's */
    __m512i z = _mm512_permutexvar_epi64(_mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0),
                                         _mm512_castsi256_si512(_mm256_set_m128i(x1, x0)));
    z = _mm512_and_si512(_mm512_srlv_epi64(z, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0)), _mm512_set1_epi8(0x0F));
    if (k == Q5_0 || k == Q5_1) {
        const int ho = k == Q5_0 ? 2 : 4; /* offset of qh: bit e is bit 4 of element e */
        const uint64_t h = (uint64_t)ld32(b + ho) | (two ? (uint64_t)ld32(b1 + ho) << 32 : 0);
        z = _mm512_mask_add_epi8(z, _cvtu64_mask64(h), z, _mm512_set1_epi8(16));
    }
    *wq = z;
}

/* Packs pairs [p0, p1) of an activation row of nb blocks (pair nb / 2 is the odd last block, if any). */
TGT static AI void pack_act(const int k, const void *row, int64_t nb, int64_t p0, int64_t p1, apk *out) {
    const int64_t np = nb / 2;
    for (int64_t p = p0; p < p1; p++, out++) {
        const int two = p < np;
        __m512i q;
        uint16_t d0, d1;
        float s0 = 0.0f, s1 = 0.0f;
        if (IS_Q1(k)) {
            const block_q8_1 *a = (const block_q8_1 *)row + 2 * p;
            const __m256i hi = two ? _mm256_loadu_si256((const __m256i *)a[1].qs) : _mm256_setzero_si256();
            q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a[0].qs)), hi, 1);
            d0 = a[0].d, d1 = two ? a[1].d : 0;
            s0 = a[0].s, s1 = two ? a[1].s : 0.0f;
        } else {
            const block_q8_0 *a = (const block_q8_0 *)row + 2 * p;
            const __m256i hi = two ? _mm256_loadu_si256((const __m256i *)a[1].qs) : _mm256_setzero_si256();
            q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a[0].qs)), hi, 1);
            d0 = a[0].d, d1 = two ? a[1].d : 0;
        }
        out->q = q;
        out->d = d16(d0, d1);
        if (IS_Q1(k)) {
            out->c = _mm512_castps_si512(_mm512_set_ps(0, 0, 0, 0, 0, 0, 0, s1, 0, 0, 0, 0, 0, 0, 0, s0));
        } else {
            const int c = k == Q4_0 ? 8 : k == Q5_0 ? 16 : 128;
            const __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)c), q);
            out->c = _mm512_sub_epi32(_mm512_setzero_si512(), sum);
        }
    }
}

/* One pair for a tile of MR rows (weights at w[r]) and T tokens (packed at a[t]). */
TGT static AI void tile_step(const int k, const int T, const uint8_t *const *w, const apk *const *a, const int two,
                             __m512 acc[MR][MT]) {
    __m512i wq[MR];
    __m512 wd[MR], wm[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) unpack_w(k, w[r], two, &wq[r], &wd[r], &wm[r]);
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        const __m512i aq = a[t]->q, ac = a[t]->c;
        const __m512 ad = a[t]->d;
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            const __m512i dot = _mm512_dpbusd_epi32(IS_Q1(k) ? _mm512_setzero_si512() : ac, wq[r], aq);
            acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(wd[r], ad), acc[r][t]);
            if (IS_Q1(k)) acc[r][t] = _mm512_fmadd_ps(wm[r], _mm512_castsi512_ps(ac), acc[r][t]);
        }
    }
}

/* np whole pairs, then the odd block if tail, on accumulators io[r * MT + t]. */
TGT static AI void tile(const int k, const int T, int64_t np, int tail, const uint8_t *const *w, const apk *const *a,
                        __m512 *io) {
    __m512 acc[MR][MT];
    for (int r = 0; r < MR; r++)
        for (int t = 0; t < T; t++) acc[r][t] = io[r * MT + t];
    const size_t pb = 2 * blk_bytes(k);
    for (int64_t p = 0; p < np; p++) {
        const uint8_t *wp[MR];
        const apk *ap[MT];
        for (int r = 0; r < MR; r++) wp[r] = w[r] + (size_t)p * pb;
        for (int t = 0; t < T; t++) ap[t] = a[t] + p;
        tile_step(k, T, wp, ap, 1, acc);
    }
    if (tail) {
        const uint8_t *wp[MR];
        const apk *ap[MT];
        for (int r = 0; r < MR; r++) wp[r] = w[r] + (size_t)np * pb;
        for (int t = 0; t < T; t++) ap[t] = a[t] + np;
        tile_step(k, T, wp, ap, 0, acc);
    }
    for (int r = 0; r < MR; r++)
        for (int t = 0; t < T; t++) io[r * MT + t] = acc[r][t];
}

TGT static AI void tile_any(const int k, int T, int64_t np, int tail, const uint8_t *const *w, const apk *const *a,
                            __m512 *io) {
    switch (T) {
    case 1: tile(k, 1, np, tail, w, a, io); break;
    case 2: tile(k, 2, np, tail, w, a, io); break;
    case 3: tile(k, 3, np, tail, w, a, io); break;
    default: tile(k, MT, np, tail, w, a, io); break;
    }
}

TGT static inline float hsum(__m512 v) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

/* dst[t][r] for the tile's nr_t rows and T tokens. */
TGT static AI void store_tile(const __m512 *io, int nr_t, int T, float *dst, size_t ds) {
    for (int t = 0; t < T; t++)
        for (int r = 0; r < nr_t; r++) dst[(size_t)t * ds + r] = hsum(io[r * MT + t]);
}

/* Row pointers of the tile at r0, the last row repeated past nr. */
static AI void tile_rows(const uint8_t *w, size_t ws, int64_t r0, int64_t nr, const uint8_t **wr) {
    for (int r = 0; r < MR; r++) wr[r] = w + (size_t)(r0 + r < nr ? r0 + r : nr - 1) * ws;
}

/* Without a packing buffer: each tile packs its tokens KC pairs at a time into the stack. */
TGT static AI void gemm_stack(const int k, int64_t nb, int64_t nr, int64_t nt, const uint8_t *w, size_t ws,
                              const char *a, size_t as, float *dst, size_t ds) {
    const int64_t np = nb / 2, npk = np + (nb & 1);
    apk buf[MT][KC];
    for (int64_t r0 = 0; r0 < nr; r0 += MR) {
        const uint8_t *wr[MR];
        tile_rows(w, ws, r0, nr, wr);
        for (int64_t t0 = 0; t0 < nt; t0 += MT) {
            const int T = nt - t0 < MT ? (int)(nt - t0) : MT;
            __m512 io[MR * MT];
            for (int i = 0; i < MR * MT; i++) io[i] = _mm512_setzero_ps();
            for (int64_t p0 = 0; p0 < npk; p0 += KC) {
                const int64_t p1 = p0 + KC < npk ? p0 + KC : npk;
                const apk *ap[MT];
                for (int t = 0; t < T; t++) {
                    pack_act(k, a + (size_t)(t0 + t) * as, nb, p0, p1, buf[t]);
                    ap[t] = buf[t];
                }
                const uint8_t *wp[MR];
                for (int r = 0; r < MR; r++) wp[r] = wr[r] + (size_t)p0 * 2 * blk_bytes(k);
                const int64_t whole = (p1 < np ? p1 : np) - p0;
                tile_any(k, T, whole, p1 > np, wp, ap, io);
            }
            store_tile(io, nr - r0 < MR ? (int)(nr - r0) : MR, T, dst + (size_t)t0 * ds + r0, ds);
        }
    }
}

TGT static AI void gemm(const int k, int64_t n, int64_t nr, int64_t nt, const void *vw, size_t ws, const void *va,
                        size_t as, float *dst, size_t ds) {
    if (nr <= 0 || nt <= 0) return;
    const uint8_t *w = vw;
    const char *a = va;
    const int64_t nb = n / QK, np = nb / 2, npk = np + (nb & 1);
    int64_t tc = npk ? HL_Q32_PACK_BUDGET / (npk * (int64_t)sizeof(apk)) : nt;
    if (tc < MT) tc = MT;
    if (tc > nt) tc = nt;
    apk *buf = aligned_alloc(64, (size_t)(tc * (npk ? npk : 1)) * sizeof(apk));
    if (!buf) {
        gemm_stack(k, nb, nr, nt, w, ws, a, as, dst, ds);
        return;
    }
    for (int64_t c0 = 0; c0 < nt; c0 += tc) {
        const int64_t m = nt - c0 < tc ? nt - c0 : tc;
        for (int64_t t = 0; t < m; t++) pack_act(k, a + (size_t)(c0 + t) * as, nb, 0, npk, buf + t * npk);
        for (int64_t r0 = 0; r0 < nr; r0 += MR) {
            const uint8_t *wr[MR];
            tile_rows(w, ws, r0, nr, wr);
            for (int64_t t0 = 0; t0 < m; t0 += MT) {
                const int T = m - t0 < MT ? (int)(m - t0) : MT;
                const apk *ap[MT];
                for (int t = 0; t < T; t++) ap[t] = buf + (t0 + t) * npk;
                __m512 io[MR * MT];
                for (int i = 0; i < MR * MT; i++) io[i] = _mm512_setzero_ps();
                tile_any(k, T, np, (int)(nb & 1), wr, ap, io);
                store_tile(io, nr - r0 < MR ? (int)(nr - r0) : MR, T, dst + (size_t)(c0 + t0) * ds + r0, ds);
            }
        }
    }
    free(buf);
}

#define GEMM_FN(name, kind)                                                                                     \
    TGT static void name(int64_t n, int64_t nr, int64_t nt, const void *w, size_t ws, const void *a, size_t as, \
                         float *dst, size_t ds) {                                                               \
        gemm(kind, n, nr, nt, w, ws, a, as, dst, ds);                                                           \
    }
GEMM_FN(gemm_q4_0, Q4_0)
GEMM_FN(gemm_q4_1, Q4_1)
GEMM_FN(gemm_q5_0, Q5_0)
GEMM_FN(gemm_q5_1, Q5_1)
GEMM_FN(gemm_q8_0, Q8_0)

void hl_gemm_q32_install_avx512(void) {
    hl_traits_for_install(HL_TYPE_Q4_0)->gemm = gemm_q4_0;
    hl_traits_for_install(HL_TYPE_Q4_1)->gemm = gemm_q4_1;
    hl_traits_for_install(HL_TYPE_Q5_0)->gemm = gemm_q5_0;
    hl_traits_for_install(HL_TYPE_Q5_1)->gemm = gemm_q5_1;
    hl_traits_for_install(HL_TYPE_Q8_0)->gemm = gemm_q8_0;
}

#else
typedef int hl_gemm_q32_avx512_unused; /* ISO C wants a non-empty unit */
#endif
