/*
 * AVX-512 VNNI tiled kernels of the 32-element weight types (see gemm_q32.h for the contract).
 *
 * One 512-bit register holds a pair of 32-element blocks in their natural element order. The weights
 * are made unsigned bytes u (Q4: nibble, Q5: nibble | bit << 4, Q8_0: q + 128) and the activations stay
 * signed, so one vpdpbusd gives each lane the sum of four products u * a. Q4_0/Q5_0/Q8_0 subtract their
 * offset c (8, 16, 128) exactly by starting that dot at -c * (the lane's four activations): the block
 * sums are the references' integer sums. Per pair and (row, token) that is one vpdpbusd, one convert,
 * one multiply (d_w * d_a for each block's 8 lanes) and one FMA. Q4_1/Q5_1 add m_w * s_a once per 16
 * blocks: one FMA of the 16 mins (collected while unpacking) with the 16 s of the packed activations.
 *
 * Activations are packed once per chunk of tokens (quants, correction or s, and scales as ready
 * vectors) and reused by every row tile; a row tile's weights are unpacked once per pair in registers
 * and reused by the tile's tokens. If the packing buffer cannot be allocated, the same tiles run on
 * activations packed into a stack buffer a few pairs at a time (the accumulators carried over exactly).
 *
 * Measured alternatives that were no faster on Zen 4 (within this machine's noise): blocks interleaved per lane with the d_w * d_a
 * products made once per tile (8 per multiply) and broadcast from memory; one 256-bit dot per block with
 * the product as an embedded-broadcast FMA operand; 4 x 3, 3 x 4, 5 x 3, 3 x 6, 2 x 8 and 6 x 2 tiles.
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

#ifndef HL_Q32_AVX512_MR /* build-time switches to measure other tile shapes */
#define HL_Q32_AVX512_MR 4
#endif
#ifndef HL_Q32_AVX512_MT
#define HL_Q32_AVX512_MT 4
#endif
#ifndef HL_Q32_AVX512_R1
#define HL_Q32_AVX512_R1 4
#endif
#define MR HL_Q32_AVX512_MR /* weight rows per tile */
#define MT HL_Q32_AVX512_MT /* tokens per tile (a partial tile runs a narrower kernel) */
#define R1 HL_Q32_AVX512_R1 /* weight rows per tile when a call has one token */
#define MRX (MR > R1 ? MR : R1)
_Static_assert(MT <= 8, "tile_any has a case for each narrower tile up to 7 tokens");
_Static_assert(MRX <= 4, "the one-token tile spreads 4 rows' scales from one register");
#define KC 16 /* pairs per slice when packing into the stack buffer */

/* A token's packed activations: per pair of blocks (the odd last block a pair with zeros) the 64 signed
 * quants, d of block 0 in lanes 0..7 and of block 1 in lanes 8..15, for Q8_0 the correction -c * (sum of
 * each lane's 4 quants); for Q8_1 s of every block, zero-padded to a multiple of 16 blocks. */
typedef struct {
    const __m512i *q, *c;
    const __m512 *d;
    const float *s;
} tok;

#define MCH 8 /* Q4_1/Q5_1: pairs whose mins are added at once (KC is a multiple) */

/* Bytes of a token's packing of np pairs (ns: s floats). */
static AI size_t tok_bytes(const int k, int64_t np, int64_t *ns) {
    *ns = IS_Q1(k) ? (2 * np + 15) / 16 * 16 : 0;
    return (size_t)np * 64 * (IS_Q1(k) ? 2 : 3) + (size_t)*ns * sizeof(float);
}

static AI tok tok_at(const int k, void *base, int64_t np) {
    __m512i *v = base;
    tok t = {v, v + 2 * np, (const __m512 *)(v + np), (const float *)(v + 2 * np)};
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

static AI uint32_t ld32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Halves lo, hi -> [lo x8, hi x8] as floats (exact). */
TGT static AI __m512 d16(uint16_t lo, uint16_t hi) {
    return _mm512_cvtph_ps(_mm256_set_m128i(_mm_set1_epi16((short)hi), _mm_set1_epi16((short)lo)));
}

/* The weights of the pair at b (two = 0: only the first block, the second reads as zeros); Q4_1/Q5_1 store
 * the two mins (halves) at mh; *wd = the two scales (halves, block 0's low). */
TGT static AI void unpack_w(const int k, const uint8_t *b, const int two, __m512i *wq, uint32_t *wd, uint16_t *mh) {
    const uint8_t *b1 = b + blk_bytes(k);
    *wd = (uint32_t)ld16(b) | (two ? (uint32_t)ld16(b1) << 16 : 0);
    if (IS_Q1(k)) mh[0] = ld16(b + 2), mh[1] = two ? ld16(b1 + 2) : 0;
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

/* Packs pairs [p0, p1) of an activation row of nb blocks into t (indexed from 0). */
TGT static AI void pack_act(const int k, const void *row, int64_t nb, int64_t p0, int64_t p1, tok t) {
    const int64_t np = nb / 2;
    __m512i *q = (__m512i *)t.q, *c = (__m512i *)t.c;
    __m512 *d = (__m512 *)t.d;
    float *s = (float *)t.s;
    for (int64_t p = p0; p < p1; p++, q++, c++, d++) {
        const int two = p < np;
        const block_q8_0 *a0 = (const block_q8_0 *)row + 2 * p;
        const block_q8_1 *a1 = (const block_q8_1 *)row + 2 * p;
        const int8_t *qs0 = IS_Q1(k) ? a1[0].qs : a0[0].qs, *qs1 = IS_Q1(k) ? a1[1].qs : a0[1].qs;
        const __m256i hi = two ? _mm256_loadu_si256((const __m256i *)qs1) : _mm256_setzero_si256();
        const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)qs0)), hi, 1);
        *q = v;
        *d = IS_Q1(k) ? d16(a1[0].d, two ? a1[1].d : 0) : d16(a0[0].d, two ? a0[1].d : 0);
        if (IS_Q1(k)) {
            s[2 * (p - p0)] = a1[0].s;
            s[2 * (p - p0) + 1] = two ? a1[1].s : 0.0f;
        } else {
            const int cq = k == Q4_0 ? 8 : k == Q5_0 ? 16 : 128;
            const __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)cq), v);
            *c = _mm512_sub_epi32(_mm512_setzero_si512(), sum);
        }
    }
    if (IS_Q1(k)) /* zeros up to the next multiple of 16 blocks */
        for (int64_t i = 2 * (p1 - p0); i % 16; i++) s[i] = 0.0f;
}

#ifndef HL_Q32_DD
#define HL_Q32_DD 1 /* build-time switch: 0 or 2 to measure the other ways of forming d_w * d_a */
#endif

/* Pair p for a tile of R rows (pair 0 at w[r]) and T tokens a[t]; mh[r] receives Q4_1/Q5_1's mins.
 * d_w * d_a is exact in float (two halves), so how it is formed does not change a bit of the result:
 * a one-token tile multiplies its rows' 8 scales at once and spreads each row's two products by a
 * permute; wider tiles multiply [d_w0 x8, d_w1 x8] by [d_a0 x8, d_a1 x8] per (row, token). */
TGT static AI void tile_step(const int k, const int R, const int T, const uint8_t *const *w, const tok *a, int64_t p,
                             const int two, __m512 acc[MRX][MT], uint16_t mh[MRX][2 * MCH]) {
    __m512i wq[MRX];
    uint32_t wd[4] = {0, 0, 0, 0};
    const size_t pb = 2 * blk_bytes(k);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) unpack_w(k, w[r] + (size_t)p * pb, two, &wq[r], &wd[r], &mh[r][2 * (p % MCH)]);
    const int compact = HL_Q32_DD == 2 || (HL_Q32_DD == 1 && T == 1);
    __m512 wdv[MRX];
    __m256 dw8 = _mm256_setzero_ps();
    if (compact) {
        const __m128i h = _mm_unpacklo_epi64(_mm_cvtsi64_si128((long long)(wd[0] | (uint64_t)wd[1] << 32)),
                                             _mm_cvtsi64_si128((long long)(wd[2] | (uint64_t)wd[3] << 32)));
        dw8 = _mm256_cvtph_ps(h); /* d_w of row r, block b in lane 2r + b */
    } else {
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) wdv[r] = d16((uint16_t)wd[r], (uint16_t)(wd[r] >> 16));
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        const __m512i aq = a[t].q[p];
        const __m512 ad = a[t].d[p];
        __m512 dd8 = _mm512_setzero_ps();
        if (compact) {
            const __m512 da = _mm512_permutexvar_ps(_mm512_set_epi32(8, 0, 8, 0, 8, 0, 8, 0, 8, 0, 8, 0, 8, 0, 8, 0), ad);
            dd8 = _mm512_castps256_ps512(_mm256_mul_ps(dw8, _mm512_castps512_ps256(da)));
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const __m512i dot = _mm512_dpbusd_epi32(IS_Q1(k) ? _mm512_setzero_si512() : a[t].c[p], wq[r], aq);
            const __m512 dd = compact ? _mm512_permutexvar_ps(_mm512_set_epi32(2 * r + 1, 2 * r + 1, 2 * r + 1, 2 * r + 1,
                                        2 * r + 1, 2 * r + 1, 2 * r + 1, 2 * r + 1, 2 * r, 2 * r, 2 * r, 2 * r, 2 * r, 2 * r,
                                        2 * r, 2 * r), dd8)
                                      : _mm512_mul_ps(wdv[r], ad);
            acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), dd, acc[r][t]);
        }
    }
}

/* Q4_1/Q5_1: the mins times s of the MCH pairs from p0 (blocks past the row's end are zero on both sides). */
TGT static AI void tile_mins(const int R, const int T, const tok *a, int64_t p0, __m512 acc[MRX][MT], uint16_t mh[MRX][2 * MCH]) {
    __m512 m[MRX];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) m[r] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)mh[r]));
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        const __m512 s = _mm512_loadu_ps(a[t].s + 2 * p0);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(m[r], s, acc[r][t]);
    }
}

/* np whole pairs, then the odd block if tail, on accumulators io[r * MT + t]. */
TGT static AI void tile(const int k, const int R, const int T, int64_t np, int tail, const uint8_t *const *w, const tok *a,
                        __m512 *io) {
    __m512 acc[MRX][MT];
    uint16_t mh[MRX][2 * MCH];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = io[r * MT + t];
    if (!IS_Q1(k)) {
        for (int64_t p = 0; p < np; p++) tile_step(k, R, T, w, a, p, 1, acc, mh);
        if (tail) tile_step(k, R, T, w, a, np, 0, acc, mh);
    } else {
        const int64_t npk = np + tail;
        for (int64_t p0 = 0; p0 < npk; p0 += MCH) {
            if (p0 + MCH <= np) {
                for (int64_t p = p0; p < p0 + MCH; p++) tile_step(k, R, T, w, a, p, 1, acc, mh);
            } else {
                memset(mh, 0, sizeof(mh));
                for (int64_t p = p0; p < np; p++) tile_step(k, R, T, w, a, p, 1, acc, mh);
                if (tail) tile_step(k, R, T, w, a, np, 0, acc, mh);
            }
            tile_mins(R, T, a, p0, acc, mh);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) io[r * MT + t] = acc[r][t];
}

TGT static AI void tile_any(const int k, int R, int T, int64_t np, int tail, const uint8_t *const *w, const tok *a,
                            __m512 *io) {
    if (T == 1 && R == R1) {
        tile(k, R1, 1, np, tail, w, a, io);
        return;
    }
    switch (T) {
    case 1: tile(k, MR, 1, np, tail, w, a, io); break;
#if MT > 2
    case 2: tile(k, MR, 2, np, tail, w, a, io); break;
#endif
#if MT > 3
    case 3: tile(k, MR, 3, np, tail, w, a, io); break;
#endif
#if MT > 4
    case 4: tile(k, MR, 4, np, tail, w, a, io); break;
#endif
#if MT > 5
    case 5: tile(k, MR, 5, np, tail, w, a, io); break;
#endif
#if MT > 6
    case 6: tile(k, MR, 6, np, tail, w, a, io); break;
#endif
#if MT > 7
    case 7: tile(k, MR, 7, np, tail, w, a, io); break;
#endif
    default: tile(k, MR, MT, np, tail, w, a, io); break;
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
static AI void tile_rows(int R, const uint8_t *w, size_t ws, int64_t r0, int64_t nr, const uint8_t **wr) {
    for (int r = 0; r < R; r++) wr[r] = w + (size_t)(r0 + r < nr ? r0 + r : nr - 1) * ws;
}

/* Without a packing buffer: each tile packs its tokens KC pairs at a time into the stack. */
TGT static AI void gemm_stack(const int k, const int R, int64_t nb, int64_t nr, int64_t nt, const uint8_t *w, size_t ws,
                              const char *a, size_t as, float *dst, size_t ds) {
    const int64_t np = nb / 2, npk = np + (nb & 1);
    _Alignas(64) uint8_t buf[MT][KC * 64 * 3];
    for (int64_t r0 = 0; r0 < nr; r0 += R) {
        const uint8_t *wr[MRX];
        tile_rows(R, w, ws, r0, nr, wr);
        for (int64_t t0 = 0; t0 < nt; t0 += MT) {
            const int T = nt - t0 < MT ? (int)(nt - t0) : MT;
            __m512 io[MRX * MT];
            for (int i = 0; i < MRX * MT; i++) io[i] = _mm512_setzero_ps();
            for (int64_t p0 = 0; p0 < npk; p0 += KC) {
                const int64_t p1 = p0 + KC < npk ? p0 + KC : npk;
                tok ap[MT];
                for (int t = 0; t < T; t++) {
                    ap[t] = tok_at(k, buf[t], KC);
                    pack_act(k, a + (size_t)(t0 + t) * as, nb, p0, p1, ap[t]);
                }
                const uint8_t *wp[MRX];
                for (int r = 0; r < R; r++) wp[r] = wr[r] + (size_t)p0 * 2 * blk_bytes(k);
                const int64_t whole = (p1 < np ? p1 : np) - p0;
                tile_any(k, R, T, whole, p1 > np, wp, ap, io);
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
    const int64_t nb = n / QK, np = nb / 2, npk = np + (nb & 1);
    int64_t ns;
    const size_t tb = tok_bytes(k, npk, &ns);
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
        for (int64_t t = 0; t < m; t++) pack_act(k, a + (size_t)(c0 + t) * as, nb, 0, npk, tok_at(k, buf + t * tb, npk));
        for (int64_t r0 = 0; r0 < nr; r0 += R) {
            const uint8_t *wr[MRX];
            tile_rows(R, w, ws, r0, nr, wr);
            for (int64_t t0 = 0; t0 < m; t0 += MT) {
                const int T = m - t0 < MT ? (int)(m - t0) : MT;
                tok ap[MT];
                for (int t = 0; t < T; t++) ap[t] = tok_at(k, buf + (t0 + t) * tb, npk);
                __m512 io[MRX * MT];
                for (int i = 0; i < MRX * MT; i++) io[i] = _mm512_setzero_ps();
                tile_any(k, R, T, np, (int)(nb & 1), wr, ap, io);
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
