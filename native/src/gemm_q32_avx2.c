/*
 * AVX2 tiled kernels of the 32-element weight types (see gemm_q32.h for the contract).
 *
 * One 256-bit register holds one block. Q4_0, Q5_0, Q4_1 and Q5_1 weights are made unsigned bytes u
 * (nibble, or nibble | bit << 4) against the signed activation quants: maddubs then madd with ones give
 * each lane the sum of four products u * a (at most 2 * 31 * 127 per pair: no saturation). Q4_0/Q5_0
 * subtract their offset c (8, 16) exactly by adding -c * (the lane's four activations), so block sums
 * are the references' integer sums. Q8_0 uses the sign trick (|w| against a with w's sign). Then per
 * block and (row, token) one convert, one multiply d_w * d_a and one FMA; for Q4_1/Q5_1 one more FMA of
 * m_w (lane 0) with the activation's s.
 *
 * Activations are packed once per chunk of tokens and reused by every row tile; a row tile's weights
 * are unpacked once per block in registers and reused by the tile's tokens. If the packing buffer
 * cannot be allocated, tiles pack their tokens into a stack buffer a few blocks at a time.
 */
#if defined(__x86_64__) && !defined(HL_NO_SIMD)

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "gemm_q32.h"

#define TGT __attribute__((target("avx2,fma,f16c")))
#define AI __attribute__((always_inline)) inline

enum { Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 };
#define IS_Q1(k) ((k) == Q4_1 || (k) == Q5_1)

#ifndef HL_Q32_AVX2_MR
#define HL_Q32_AVX2_MR 2
#endif
#ifndef HL_Q32_AVX2_MT
#define HL_Q32_AVX2_MT 4
#endif
#define MR HL_Q32_AVX2_MR /* weight rows per tile */
#define MT HL_Q32_AVX2_MT /* tokens per tile (a partial tile runs a narrower kernel) */
#define KC 32             /* blocks per slice when packing into the stack buffer */

/* One activation block, packed. */
typedef struct {
    __m256i q; /* 32 signed quants */
    __m256i c; /* Q8_0: -c * (sum of each lane's 4 quants); Q8_1: s in float lane 0 */
    __m256 d;  /* d in every lane */
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

TGT static AI __m256 bcast_h(uint16_t h) { return _mm256_set1_ps(_cvtsh_ss(h)); }

/* 32 bits -> 32 bytes, byte e = 0xFF if bit e is set else 0. */
TGT static AI __m256i bits_32(const uint8_t *p) {
    uint32_t x;
    memcpy(&x, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
}

/* The weights of the block at b: wq unsigned quants (Q8_0: |q|), ws (Q8_0 only) the signed quants. */
TGT static AI void unpack_w(const int k, const uint8_t *b, __m256i *wq, __m256i *ws, __m256 *wd, __m256 *wm) {
    *wd = bcast_h(ld16(b));
    if (IS_Q1(k)) *wm = _mm256_zextps128_ps256(_mm_cvtph_ps(_mm_cvtsi32_si128(ld16(b + 2)))); /* m, 0 x7 */
    if (k == Q8_0) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(b + 2));
        *ws = q;
        *wq = _mm256_sign_epi8(q, q);
        return;
    }
    const int qo = k == Q4_0 ? 2 : k == Q4_1 ? 4 : k == Q5_0 ? 6 : 8; /* offset of qs */
    const __m128i x = _mm_loadu_si128((const __m128i *)(b + qo));
    __m256i z = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(x, 4), x), _mm256_set1_epi8(0x0F));
    if (k == Q5_0 || k == Q5_1) /* bit e of qh is bit 4 of element e */
        z = _mm256_or_si256(z, _mm256_and_si256(bits_32(b + (k == Q5_0 ? 2 : 4)), _mm256_set1_epi8(0x10)));
    *wq = z;
}

/* Packs blocks [b0, b1) of an activation row. */
TGT static AI void pack_act(const int k, const void *row, int64_t b0, int64_t b1, apk *out) {
    for (int64_t i = b0; i < b1; i++, out++) {
        if (IS_Q1(k)) {
            const block_q8_1 *a = (const block_q8_1 *)row + i;
            out->q = _mm256_loadu_si256((const __m256i *)a->qs);
            out->d = bcast_h(a->d);
            out->c = _mm256_castps_si256(_mm256_setr_ps(a->s, 0, 0, 0, 0, 0, 0, 0));
        } else {
            const block_q8_0 *a = (const block_q8_0 *)row + i;
            const __m256i q = _mm256_loadu_si256((const __m256i *)a->qs);
            const int c = k == Q4_0 ? 8 : 16;
            out->q = q;
            out->d = bcast_h(a->d);
            const __m256i sum = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8((char)c), q),
                                                  _mm256_set1_epi16(1));
            out->c = _mm256_sub_epi32(_mm256_setzero_si256(), sum); /* unused by Q8_0 */
        }
    }
}

/* One block for a tile of MR rows (weights at w[r]) and T tokens (packed at a[t]). */
TGT static AI void tile_step(const int k, const int T, const uint8_t *const *w, const apk *const *a,
                             __m256 acc[MR][MT]) {
    __m256i wq[MR], ws[MR];
    __m256 wd[MR], wm[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) unpack_w(k, w[r], &wq[r], &ws[r], &wd[r], &wm[r]);
    const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        const __m256i aq = a[t]->q;
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m256i dot;
            if (k == Q8_0) {
                dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wq[r], _mm256_sign_epi8(aq, ws[r])), ones);
            } else {
                dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wq[r], aq), ones);
                if (!IS_Q1(k)) dot = _mm256_add_epi32(dot, a[t]->c);
            }
            acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(wd[r], a[t]->d), acc[r][t]);
            if (IS_Q1(k)) acc[r][t] = _mm256_fmadd_ps(wm[r], _mm256_castsi256_ps(a[t]->c), acc[r][t]);
        }
    }
}

/* nb blocks on accumulators io[r * MT + t]. */
TGT static AI void tile(const int k, const int T, int64_t nb, const uint8_t *const *w, const apk *const *a,
                        __m256 *io) {
    __m256 acc[MR][MT];
    for (int r = 0; r < MR; r++)
        for (int t = 0; t < T; t++) acc[r][t] = io[r * MT + t];
    const size_t bb = blk_bytes(k);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *wp[MR];
        const apk *ap[MT];
        for (int r = 0; r < MR; r++) wp[r] = w[r] + (size_t)i * bb;
        for (int t = 0; t < T; t++) ap[t] = a[t] + i;
        tile_step(k, T, wp, ap, acc);
    }
    for (int r = 0; r < MR; r++)
        for (int t = 0; t < T; t++) io[r * MT + t] = acc[r][t];
}

TGT static AI void tile_any(const int k, int T, int64_t nb, const uint8_t *const *w, const apk *const *a, __m256 *io) {
    switch (T) {
    case 1: tile(k, 1, nb, w, a, io); break;
#if MT > 2
    case 2: tile(k, 2, nb, w, a, io); break;
#endif
#if MT > 3
    case 3: tile(k, 3, nb, w, a, io); break;
#endif
    default: tile(k, MT, nb, w, a, io); break;
    }
}

TGT static inline float hsum(__m256 v) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

/* dst[t][r] for the tile's nr_t rows and T tokens. */
TGT static AI void store_tile(const __m256 *io, int nr_t, int T, float *dst, size_t ds) {
    for (int t = 0; t < T; t++)
        for (int r = 0; r < nr_t; r++) dst[(size_t)t * ds + r] = hsum(io[r * MT + t]);
}

/* Row pointers of the tile at r0, the last row repeated past nr. */
static AI void tile_rows(const uint8_t *w, size_t ws, int64_t r0, int64_t nr, const uint8_t **wr) {
    for (int r = 0; r < MR; r++) wr[r] = w + (size_t)(r0 + r < nr ? r0 + r : nr - 1) * ws;
}

/* Without a packing buffer: each tile packs its tokens KC blocks at a time into the stack. */
TGT static AI void gemm_stack(const int k, int64_t nb, int64_t nr, int64_t nt, const uint8_t *w, size_t ws,
                              const char *a, size_t as, float *dst, size_t ds) {
    apk buf[MT][KC];
    for (int64_t r0 = 0; r0 < nr; r0 += MR) {
        const uint8_t *wr[MR];
        tile_rows(w, ws, r0, nr, wr);
        for (int64_t t0 = 0; t0 < nt; t0 += MT) {
            const int T = nt - t0 < MT ? (int)(nt - t0) : MT;
            __m256 io[MR * MT];
            for (int i = 0; i < MR * MT; i++) io[i] = _mm256_setzero_ps();
            for (int64_t b0 = 0; b0 < nb; b0 += KC) {
                const int64_t b1 = b0 + KC < nb ? b0 + KC : nb;
                const apk *ap[MT];
                for (int t = 0; t < T; t++) {
                    pack_act(k, a + (size_t)(t0 + t) * as, b0, b1, buf[t]);
                    ap[t] = buf[t];
                }
                const uint8_t *wp[MR];
                for (int r = 0; r < MR; r++) wp[r] = wr[r] + (size_t)b0 * blk_bytes(k);
                tile_any(k, T, b1 - b0, wp, ap, io);
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
    const int64_t nb = n / QK;
    int64_t tc = nb ? HL_Q32_PACK_BUDGET / (nb * (int64_t)sizeof(apk)) : nt;
    if (tc < MT) tc = MT;
    if (tc > nt) tc = nt;
    apk *buf = aligned_alloc(64, (size_t)(tc * (nb ? nb : 1)) * sizeof(apk) + 32);
    if (!buf) {
        gemm_stack(k, nb, nr, nt, w, ws, a, as, dst, ds);
        return;
    }
    for (int64_t c0 = 0; c0 < nt; c0 += tc) {
        const int64_t m = nt - c0 < tc ? nt - c0 : tc;
        for (int64_t t = 0; t < m; t++) pack_act(k, a + (size_t)(c0 + t) * as, 0, nb, buf + t * nb);
        for (int64_t r0 = 0; r0 < nr; r0 += MR) {
            const uint8_t *wr[MR];
            tile_rows(w, ws, r0, nr, wr);
            for (int64_t t0 = 0; t0 < m; t0 += MT) {
                const int T = m - t0 < MT ? (int)(m - t0) : MT;
                const apk *ap[MT];
                for (int t = 0; t < T; t++) ap[t] = buf + (t0 + t) * nb;
                __m256 io[MR * MT];
                for (int i = 0; i < MR * MT; i++) io[i] = _mm256_setzero_ps();
                tile_any(k, T, nb, wr, ap, io);
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

void hl_gemm_q32_install_avx2(void) {
    hl_traits_for_install(HL_TYPE_Q4_0)->gemm = gemm_q4_0;
    hl_traits_for_install(HL_TYPE_Q4_1)->gemm = gemm_q4_1;
    hl_traits_for_install(HL_TYPE_Q5_0)->gemm = gemm_q5_0;
    hl_traits_for_install(HL_TYPE_Q5_1)->gemm = gemm_q5_1;
    hl_traits_for_install(HL_TYPE_Q8_0)->gemm = gemm_q8_0;
}

#else
typedef int hl_gemm_q32_avx2_unused; /* ISO C wants a non-empty unit */
#endif
