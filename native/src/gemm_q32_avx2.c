/*
 * AVX2 tiled kernels of the 32-element weight types (see gemm_q32.h for the contract).
 *
 * One 256-bit register holds one block. Q4_0, Q5_0, Q4_1 and Q5_1 weights are made unsigned bytes u
 * (nibble, or nibble | bit << 4) against the signed activation quants: maddubs then madd with ones give
 * each lane the sum of four products u * a (at most 2 * 31 * 127 per pair: no saturation). Q4_0/Q5_0
 * subtract their offset c (8, 16) exactly by adding -c * (the lane's four activations), so block sums
 * are the references' integer sums. Q8_0 uses the sign trick (|w| against a with w's sign). Then per
 * block and (row, token) one convert, one multiply d_w * d_a and one FMA. Q4_1/Q5_1 add m_w * s_a once
 * per 8 blocks: one FMA of the 8 mins (collected while unpacking) with the 8 s of the packed activations.
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

#ifndef HL_Q32_AVX2_MR /* build-time switches to measure other tile shapes */
#define HL_Q32_AVX2_MR 2
#endif
#ifndef HL_Q32_AVX2_MT
#define HL_Q32_AVX2_MT 6
#endif
#ifndef HL_Q32_AVX2_R1
#define HL_Q32_AVX2_R1 4
#endif
#define MR HL_Q32_AVX2_MR /* weight rows per tile */
#define MT HL_Q32_AVX2_MT /* tokens per tile (a partial tile runs a narrower kernel) */
#define R1 HL_Q32_AVX2_R1 /* weight rows per tile when a call has one token */
#define MRX (MR > R1 ? MR : R1)
_Static_assert(MT <= 8, "tile_any has a case for each narrower tile up to 7 tokens");
_Static_assert(MRX <= 4, "the one-token tile spreads 4 rows' scales from one register");
#define KC 32             /* blocks per slice when packing into the stack buffer */

/* A token's packed activations: per block the 32 signed quants and d; for Q8_0 the correction -c * (sum
 * of each lane's 4 quants), for Q8_1 s, zero-padded to a multiple of 8 blocks. */
typedef struct {
    const __m256i *q, *c;
    const float *d, *s;
} tok;

#define MCH 8 /* Q4_1/Q5_1: blocks whose mins are added at once (KC is a multiple) */

static AI int64_t pad8(int64_t n) { return (n + 7) / 8 * 8; }

/* Bytes of a token's packing of nb blocks. */
static AI size_t tok_bytes(const int k, int64_t nb) {
    return (size_t)nb * 32 * (IS_Q1(k) ? 1 : 2) + (size_t)pad8(nb) * sizeof(float) * (IS_Q1(k) ? 2 : 1);
}

static AI tok tok_at(const int k, void *base, int64_t nb) {
    __m256i *v = base;
    const float *f = (const float *)(v + nb * (IS_Q1(k) ? 1 : 2));
    tok t = {v, v + nb, f, f + pad8(nb)};
    return t;
}

static AI size_t blk_bytes(int k) {
    return k == Q4_0 ? sizeof(block_q4_0) : k == Q4_1 ? sizeof(block_q4_1) : k == Q5_0 ? sizeof(block_q5_0)
         : k == Q5_1 ? sizeof(block_q5_1) : sizeof(block_q8_0);
}

static AI uint16_t ld16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* 32 bits -> 32 bytes, byte e = 0xFF if bit e is set else 0. */
TGT static AI __m256i bits_32(const uint8_t *p) {
    uint32_t x;
    memcpy(&x, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
}

/* The weights of the block at b: wq unsigned quants (Q8_0: |q|), ws (Q8_0 only) the signed quants, *wd the
 * scale (half); Q4_1/Q5_1 store the min (half) at mh. */
TGT static AI void unpack_w(const int k, const uint8_t *b, __m256i *wq, __m256i *ws, uint16_t *wd, uint16_t *mh) {
    *wd = ld16(b);
    if (IS_Q1(k)) *mh = ld16(b + 2);
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

/* Packs blocks [b0, b1) of an activation row into t (indexed from 0). */
TGT static AI void pack_act(const int k, const void *row, int64_t b0, int64_t b1, tok t) {
    __m256i *q = (__m256i *)t.q, *c = (__m256i *)t.c;
    float *d = (float *)t.d, *s = (float *)t.s;
    for (int64_t i = b0; i < b1; i++) {
        const int64_t j = i - b0;
        if (IS_Q1(k)) {
            const block_q8_1 *a = (const block_q8_1 *)row + i;
            q[j] = _mm256_loadu_si256((const __m256i *)a->qs);
            d[j] = _cvtsh_ss(a->d);
            s[j] = a->s;
        } else {
            const block_q8_0 *a = (const block_q8_0 *)row + i;
            const __m256i v = _mm256_loadu_si256((const __m256i *)a->qs);
            const int cq = k == Q4_0 ? 8 : 16;
            q[j] = v;
            d[j] = _cvtsh_ss(a->d);
            const __m256i sum = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8((char)cq), v),
                                                  _mm256_set1_epi16(1));
            c[j] = _mm256_sub_epi32(_mm256_setzero_si256(), sum); /* unused by Q8_0 */
        }
    }
    if (IS_Q1(k)) /* zeros up to the next multiple of 8 blocks */
        for (int64_t j = b1 - b0; j % 8; j++) s[j] = 0.0f;
}

#ifndef HL_Q32_DD
#define HL_Q32_DD 1 /* build-time switch: 0 or 2 to measure the other ways of forming d_w * d_a */
#endif

/* Block i for a tile of R rows (block 0 at w[r]) and T tokens a[t]; mh[r] receives Q4_1/Q5_1's mins.
 * d_w * d_a is exact in float (two halves), so how it is formed does not change a bit of the result:
 * a one-token tile multiplies its rows' 4 scales at once and spreads each product by a permute; wider
 * tiles multiply the broadcast d_w by the broadcast d_a per (row, token). */
TGT static AI void tile_step(const int k, const int R, const int T, const uint8_t *const *w, const tok *a, int64_t i,
                             __m256 acc[MRX][MT], uint16_t mh[MRX][MCH]) {
    __m256i wq[MRX], ws[MRX];
    uint16_t wh[4] = {0, 0, 0, 0};
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) unpack_w(k, w[r] + (size_t)i * blk_bytes(k), &wq[r], &ws[r], &wh[r], &mh[r][i % MCH]);
    const int compact = HL_Q32_DD == 2 || (HL_Q32_DD == 1 && T == 1);
    __m256 wd[MRX];
    __m128 dw4 = _mm_setzero_ps();
    if (compact) {
        dw4 = _mm_cvtph_ps(_mm_cvtsi64_si128((long long)(wh[0] | (uint64_t)wh[1] << 16 | (uint64_t)wh[2] << 32 |
                                                         (uint64_t)wh[3] << 48)));
    } else {
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) wd[r] = _mm256_cvtph_ps(_mm_set1_epi16((short)wh[r]));
    }
    const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        const __m256i aq = a[t].q[i];
        const __m256 ad = _mm256_broadcast_ss(&a[t].d[i]);
        __m256 dd4 = _mm256_setzero_ps();
        if (compact) dd4 = _mm256_castps128_ps256(_mm_mul_ps(dw4, _mm256_castps256_ps128(ad)));
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m256i dot;
            if (k == Q8_0) {
                dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wq[r], _mm256_sign_epi8(aq, ws[r])), ones);
            } else {
                dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wq[r], aq), ones);
                if (!IS_Q1(k)) dot = _mm256_add_epi32(dot, a[t].c[i]);
            }
            const __m256 dd = compact ? _mm256_permutevar8x32_ps(dd4, _mm256_set1_epi32(r)) : _mm256_mul_ps(wd[r], ad);
            acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), dd, acc[r][t]);
        }
    }
}

/* Q4_1/Q5_1: the mins times s of the MCH blocks from i0 (blocks past the row's end are zero on both sides). */
TGT static AI void tile_mins(const int R, const int T, const tok *a, int64_t i0, __m256 acc[MRX][MT], uint16_t mh[MRX][MCH]) {
    __m256 m[MRX];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) m[r] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)mh[r]));
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        const __m256 s = _mm256_loadu_ps(a[t].s + i0);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) acc[r][t] = _mm256_fmadd_ps(m[r], s, acc[r][t]);
    }
}

/* nb blocks on accumulators io[r * MT + t]. */
TGT static AI void tile(const int k, const int R, const int T, int64_t nb, const uint8_t *const *w, const tok *a, __m256 *io) {
    __m256 acc[MRX][MT];
    uint16_t mh[MRX][MCH];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = io[r * MT + t];
    if (!IS_Q1(k)) {
        for (int64_t i = 0; i < nb; i++) tile_step(k, R, T, w, a, i, acc, mh);
    } else {
        for (int64_t i0 = 0; i0 < nb; i0 += MCH) {
            if (i0 + MCH <= nb) {
                for (int64_t i = i0; i < i0 + MCH; i++) tile_step(k, R, T, w, a, i, acc, mh);
            } else {
                memset(mh, 0, sizeof(mh));
                for (int64_t i = i0; i < nb; i++) tile_step(k, R, T, w, a, i, acc, mh);
            }
            tile_mins(R, T, a, i0, acc, mh);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) io[r * MT + t] = acc[r][t];
}

TGT static AI void tile_any(const int k, int R, int T, int64_t nb, const uint8_t *const *w, const tok *a, __m256 *io) {
    if (T == 1 && R == R1) {
        tile(k, R1, 1, nb, w, a, io);
        return;
    }
    switch (T) {
    case 1: tile(k, MR, 1, nb, w, a, io); break;
#if MT > 2
    case 2: tile(k, MR, 2, nb, w, a, io); break;
#endif
#if MT > 3
    case 3: tile(k, MR, 3, nb, w, a, io); break;
#endif
#if MT > 4
    case 4: tile(k, MR, 4, nb, w, a, io); break;
#endif
#if MT > 5
    case 5: tile(k, MR, 5, nb, w, a, io); break;
#endif
#if MT > 6
    case 6: tile(k, MR, 6, nb, w, a, io); break;
#endif
#if MT > 7
    case 7: tile(k, MR, 7, nb, w, a, io); break;
#endif
    default: tile(k, MR, MT, nb, w, a, io); break;
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
static AI void tile_rows(int R, const uint8_t *w, size_t ws, int64_t r0, int64_t nr, const uint8_t **wr) {
    for (int r = 0; r < R; r++) wr[r] = w + (size_t)(r0 + r < nr ? r0 + r : nr - 1) * ws;
}

/* Without a packing buffer: each tile packs its tokens KC blocks at a time into the stack. */
TGT static AI void gemm_stack(const int k, const int R, int64_t nb, int64_t nr, int64_t nt, const uint8_t *w, size_t ws,
                              const char *a, size_t as, float *dst, size_t ds) {
    _Alignas(64) uint8_t buf[MT][KC * 72];
    for (int64_t r0 = 0; r0 < nr; r0 += R) {
        const uint8_t *wr[MRX];
        tile_rows(R, w, ws, r0, nr, wr);
        for (int64_t t0 = 0; t0 < nt; t0 += MT) {
            const int T = nt - t0 < MT ? (int)(nt - t0) : MT;
            __m256 io[MRX * MT];
            for (int i = 0; i < MRX * MT; i++) io[i] = _mm256_setzero_ps();
            for (int64_t b0 = 0; b0 < nb; b0 += KC) {
                const int64_t b1 = b0 + KC < nb ? b0 + KC : nb;
                tok ap[MT];
                for (int t = 0; t < T; t++) {
                    ap[t] = tok_at(k, buf[t], KC);
                    pack_act(k, a + (size_t)(t0 + t) * as, b0, b1, ap[t]);
                }
                const uint8_t *wp[MRX];
                for (int r = 0; r < R; r++) wp[r] = wr[r] + (size_t)b0 * blk_bytes(k);
                tile_any(k, R, T, b1 - b0, wp, ap, io);
            }
            store_tile(io, nr - r0 < R ? (int)(nr - r0) : R, T, dst + (size_t)t0 * ds + r0, ds);
        }
    }
}

TGT static AI void gemm(const int k, int64_t n, int64_t nr, int64_t nt, const void *vw, size_t ws, const void *va,
                        size_t as, float *dst, size_t ds) {
    if (nr <= 0 || nt <= 0) return;
    const int R = nt == 1 ? R1 : MR; /* rows per tile: a lone token shares its activations with more rows */
    const uint8_t *w = vw;
    const char *a = va;
    const int64_t nb = n / QK;
    const size_t tb = (tok_bytes(k, nb) + 63) / 64 * 64;
    int64_t tc = tb ? (int64_t)(HL_Q32_PACK_BUDGET / tb) : nt;
    tc = tc < MT ? MT : tc - tc % MT; /* whole tiles */
    if (tc > nt) tc = nt;
    uint8_t *buf = aligned_alloc(64, (size_t)tc * tb + 64);
#ifdef HL_Q32_TEST_STACK /* build-time switch to test the fallback */
    free(buf);
    buf = NULL;
#endif
    if (!buf) {
        gemm_stack(k, R, nb, nr, nt, w, ws, a, as, dst, ds);
        return;
    }
    for (int64_t c0 = 0; c0 < nt; c0 += tc) {
        const int64_t m = nt - c0 < tc ? nt - c0 : tc;
        for (int64_t t = 0; t < m; t++) pack_act(k, a + (size_t)(c0 + t) * as, 0, nb, tok_at(k, buf + t * tb, nb));
        for (int64_t r0 = 0; r0 < nr; r0 += R) {
            const uint8_t *wr[MRX];
            tile_rows(R, w, ws, r0, nr, wr);
            for (int64_t t0 = 0; t0 < m; t0 += MT) {
                const int T = m - t0 < MT ? (int)(m - t0) : MT;
                tok ap[MT];
                for (int t = 0; t < T; t++) ap[t] = tok_at(k, buf + (t0 + t) * tb, nb);
                __m256 io[MRX * MT];
                for (int i = 0; i < MRX * MT; i++) io[i] = _mm256_setzero_ps();
                tile_any(k, R, T, nb, wr, ap, io);
                store_tile(io, nr - r0 < R ? (int)(nr - r0) : R, T, dst + (size_t)(c0 + t0) * ds + r0, ds);
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
