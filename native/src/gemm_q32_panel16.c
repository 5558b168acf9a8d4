/*
 * AVX-512 VNNI kernels for Q4_0 and Q8_0 weights with 16 weight rows interleaved on the fly
 * (replacing the gemm_q32_avx512.c kernels of these two types when the CPU has AVX-512 VNNI), and the
 * decode path of every 32-element type on such CPUs.
 *
 * vpdpbusd multiplies 4 unsigned weight bytes by 4 signed activation bytes in every int32 lane. Here lane r
 * of each register belongs to weight row r of a 16-row panel: the panel's block b is transposed once into
 * 8 registers W[g] (lane r = row r's quants 4g..4g+3 as unsigned bytes: Q4_0's nibbles, Q8_0's q + 128),
 * and a token's 4 activation quants 4g..4g+3 are broadcast to every lane, so 8 vpdpbusd give the block's
 * exact integer dot for 16 rows at once, with no horizontal sums. The unsigned offset c (8, 128) is taken
 * off by starting the chain at -c * (sum of the block's activation quants), a per-token table.
 *
 * Per (panel, token, block): 8 vpdpbusd, one convert, one multiply (d_w of the 16 rows times d_a) and one
 * FMA into the token's 16-row accumulator; the transposition serves up to 16 tokens, GROUP of whose dpbusd
 * chains run side by side (one chain is 8 dependent vpdpbusd). Each (row, token)
 * sees, block after block, acc = fma(float(exact block dot), d_w * d_a, acc) from 0; partial sums may be
 * stored in dst and read back between block chunks (exact), so the value depends only on the row and the
 * token, for any nr, nt >= HL_GEMM_BATCH_MIN and split (the hl_gemm_fn contract).
 *
 * Q4_0 and Q8_0 repacked at load (HL_TYPE_Q4_0_R16, HL_TYPE_Q8_0_R16; gemm_r16.c) skip the transposition
 * and take this path at every token count. Decode-sized calls of plain Q4_0 go to gemm_q4_0_decode.c, those of the other four 32-element types row by
 * row through the type's vec_dot here (it streams memory best); batches of Q4_1, Q5_0 and Q5_1 keep
 * gemm_q32_avx512.c's tiles.
 */
#include "common.h"
#include "gemm_q32.h"
#include "vnni_bcst.h"

#if defined(__x86_64__) && !defined(HL_NO_SIMD)
#include <immintrin.h>

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")))
#define AI __attribute__((always_inline)) inline

#define PANEL 16 /* weight rows per panel: one per int32 lane */
#define TOK 16   /* most tokens per pass: one float accumulator each */
#define KB 128   /* blocks per chunk of the per-token tables */
#define GROUP 4  /* tokens whose dpbusd chains run side by side */

typedef enum { K_Q4_0, K_Q8_0, K_Q4_0_R16, K_Q8_0_R16 } kind; /* _R16: the panels come repacked (gemm_r16.c) */

/* What a pass over the panels needs of its tokens, for blocks b0 .. b0 + KB - 1. */
typedef struct {
    int32_t corr[TOK][KB]; /* -c * sum of the block's activation quants */
    float d[TOK][KB];      /* the block's activation scale */
} act_table;

static AI size_t block_bytes(kind k) { return k == K_Q8_0 ? sizeof(block_q8_0) : sizeof(block_q4_0); } /* plain kinds */

TGT static void fill_table(kind k, const char *a, size_t a_stride, int nt, int64_t b0, int64_t bn, act_table *tab) {
    const int32_t c = k == K_Q8_0 || k == K_Q8_0_R16 ? 128 : 8;
    for (int t = 0; t < nt; t++) {
        const block_q8_0 *blk = (const block_q8_0 *)(a + (size_t)t * a_stride) + b0;
        for (int64_t b = 0; b < bn; b++) {
            const __m256i q = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)blk[b].qs), _mm256_set1_epi8((char)0x80));
            const __m256i s = _mm256_sad_epu8(q, _mm256_setzero_si256()); /* 4 sums of (q + 128) */
            const int64_t total = _mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1) +
                                  _mm256_extract_epi64(s, 2) + _mm256_extract_epi64(s, 3) - 32 * 128;
            tab->corr[t][b] = -c * (int32_t)total;
            tab->d[t][b] = _cvtsh_ss(blk[b].d);
        }
    }
}

/* Dword j of every 128-bit lane group: [Z0 rows 0-3 | Z1 rows 4-7], 4 dwords per row -> two registers
 * holding dwords 0, 1 (resp. 2, 3) of rows 0..7 as [r0..r7 of dword j, r0..r7 of dword j+1]. */
TGT static AI void gather_pairs(__m512i z0, __m512i z1, __m512i *lo, __m512i *hi) {
    const __m512i i_lo = _mm512_set_epi32(29, 25, 21, 17, 13, 9, 5, 1, 28, 24, 20, 16, 12, 8, 4, 0);
    const __m512i i_hi = _mm512_set_epi32(31, 27, 23, 19, 15, 11, 7, 3, 30, 26, 22, 18, 14, 10, 6, 2);
    *lo = _mm512_permutex2var_epi32(z0, i_lo, z1);
    *hi = _mm512_permutex2var_epi32(z0, i_hi, z1);
}

/* 16 rows x 4 dwords (four registers of 4 rows each) -> x[j]: lane r = dword j of row r. */
TGT static AI void transpose_16x4(const __m512i z[4], __m512i x[4]) {
    const __m512i first = _mm512_set_epi32(23, 22, 21, 20, 19, 18, 17, 16, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i second = _mm512_set_epi32(31, 30, 29, 28, 27, 26, 25, 24, 15, 14, 13, 12, 11, 10, 9, 8);
    __m512i a_lo, a_hi, b_lo, b_hi;
    gather_pairs(z[0], z[1], &a_lo, &a_hi); /* rows 0..7 */
    gather_pairs(z[2], z[3], &b_lo, &b_hi); /* rows 8..15 */
    x[0] = _mm512_permutex2var_epi32(a_lo, first, b_lo);
    x[1] = _mm512_permutex2var_epi32(a_lo, second, b_lo);
    x[2] = _mm512_permutex2var_epi32(a_hi, first, b_hi);
    x[3] = _mm512_permutex2var_epi32(a_hi, second, b_hi);
}

/* Four rows' 16 bytes at p[0..3] + offset as one register, a row per 128-bit lane. */
TGT static AI __m512i load_4x16(const char *const *p, size_t offset) {
    __m512i z = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(p[0] + offset)));
    z = _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)(p[1] + offset)), 1);
    z = _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)(p[2] + offset)), 2);
    return _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)(p[3] + offset)), 3);
}

/* Q4_0 quants x[j] (lane r: dword j of row r's qs) as W[j] (low nibbles) and W[j + 4] (high nibbles). */
TGT static AI void split_nibbles(const __m512i x[4], __m512i w[8]) {
    for (int j = 0; j < 4; j++) {
        w[j] = _mm512_and_si512(x[j], _mm512_set1_epi8(0x0F));
        w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(x[j], 4), _mm512_set1_epi8(0x0F));
    }
}

/* Block b of the panel's 16 rows (row pointers p; for the _R16 kinds p[0] is the repacked panel): W[g] (lane r:
 * row r's unsigned quants 4g..4g+3) and the rows' scales d_w. */
TGT static AI void unpack_panel(kind k, const char *const *p, __m512i vindex, int64_t b, __m512i w[8], __m512 *dw) {
    if (k == K_Q4_0_R16) { /* already transposed: 4 loads */
        const block_q4_0_r16 *blk = (const block_q4_0_r16 *)p[0] + b;
        *dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk->d));
        __m512i x[4];
        for (int j = 0; j < 4; j++) x[j] = _mm512_loadu_si512(blk->qs[j]);
        split_nibbles(x, w);
        return;
    }
    if (k == K_Q8_0_R16) { /* 8 loads; q + 128 as unsigned */
        const block_q8_0_r16 *blk = (const block_q8_0_r16 *)p[0] + b;
        *dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk->d));
        for (int j = 0; j < 8; j++) w[j] = _mm512_xor_si512(_mm512_loadu_si512(blk->qs[j]), _mm512_set1_epi8((char)0x80));
        return;
    }
    const size_t at = (size_t)b * block_bytes(k);
    const __m512i d = _mm512_i32gather_epi32(vindex, p[0] + at, 1); /* low half: the block's d */
    *dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(d));
    __m512i z[4], x[4];
    if (k == K_Q4_0) { /* qs[i]: element i (low nibble) and i + 16 (high nibble) */
        for (int q = 0; q < 4; q++) z[q] = load_4x16(p + 4 * q, at + 2);
        transpose_16x4(z, x);
        split_nibbles(x, w);
        return;
    }
    for (int half = 0; half < 2; half++) { /* Q8_0: bytes 16 * half .. of qs; q + 128 as unsigned */
        for (int q = 0; q < 4; q++) z[q] = load_4x16(p + 4 * q, at + 2 + 16 * (size_t)half);
        transpose_16x4(z, x);
        for (int j = 0; j < 4; j++) w[4 * half + j] = _mm512_xor_si512(x[j], _mm512_set1_epi8((char)0x80));
    }
}

/* acc[t] (16 rows) += block b's dot for G tokens (G <= GROUP, a constant): G independent dpbusd chains per weight
 * register; q: the first token's activation quants of the block, a_stride bytes between tokens. */
TGT static AI void tokens_group(const int G, const __m512i w[8], __m512 dw, const int8_t *q, size_t a_stride,
                                const act_table *tab, int t0, int64_t b, __m512 *acc) {
    __m512i sum[GROUP];
    for (int t = 0; t < G; t++) sum[t] = _mm512_set1_epi32(tab->corr[t0 + t][b]);
    for (int g = 0; g < 8; g++)
        for (int t = 0; t < G; t++) sum[t] = hl_dpbusd_bcst(sum[t], w[g], q + (size_t)t * a_stride + 4 * g);
    for (int t = 0; t < G; t++)
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[t]), _mm512_mul_ps(dw, _mm512_set1_ps(tab->d[t0 + t][b])), acc[t]);
}

/* One panel x N tokens over blocks b0 .. b0 + bn - 1: acc (16 rows) per token, kept in dst between chunks. */
TGT static AI void panel_pass(kind k, const int N, const char *const *p, __m512i vindex, __mmask16 rows,
                              const char *a, size_t a_stride, int64_t b0, int64_t bn, const act_table *tab,
                              float *dst, size_t dst_stride) {
    __m512 acc[TOK];
    for (int t = 0; t < N; t++)
        acc[t] = b0 == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(rows, dst + (size_t)t * dst_stride);
    for (int64_t b = 0; b < bn; b++) {
        __m512i w[8];
        __m512 dw;
        unpack_panel(k, p, vindex, b0 + b, w, &dw);
        const int8_t *q = ((const block_q8_0 *)a + b0 + b)->qs;
        const int full = N / GROUP * GROUP; /* whole groups, then the rest (constants) */
        for (int t0 = 0; t0 < full; t0 += GROUP) tokens_group(GROUP, w, dw, q + (size_t)t0 * a_stride, a_stride, tab, t0, b, acc + t0);
        if (N > full) tokens_group(N - full, w, dw, q + (size_t)full * a_stride, a_stride, tab, full, b, acc + full);
    }
    for (int t = 0; t < N; t++) _mm512_mask_storeu_ps(dst + (size_t)t * dst_stride, rows, acc[t]);
}

/* N tokens (a constant at every call) against all nr rows. */
TGT static AI void tokens_pass(kind k, const int N, int64_t n, int64_t nr, const char *w, size_t w_stride,
                               const char *a, size_t a_stride, float *dst, size_t dst_stride, act_table *tab) {
    const int64_t nb = n / QK;
    for (int64_t b0 = 0; b0 < nb; b0 += KB) {
        const int64_t bn = nb - b0 < KB ? nb - b0 : KB;
        fill_table(k, a, a_stride, N, b0, bn, tab);
        for (int64_t r0 = 0; r0 < nr; r0 += PANEL) {
            const int rn = nr - r0 < PANEL ? (int)(nr - r0) : PANEL;
            const char *p[PANEL]; /* rows past the end repeat the last row; their lanes are not stored */
            for (int r = 0; r < PANEL; r++) p[r] = w + (size_t)(r0 + (r < rn ? r : rn - 1)) * w_stride;
            const __m512i vindex = _mm512_mullo_epi32(_mm512_min_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                                                       _mm512_set1_epi32(rn - 1)),
                                                      _mm512_set1_epi32((int32_t)w_stride));
            panel_pass(k, N, p, vindex, (__mmask16)((1u << rn) - 1), a, a_stride, b0, bn, tab, dst + r0, dst_stride);
        }
    }
}

TGT static void gemm_panel16(kind k, int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride,
                             const void *a, size_t a_stride, float *dst, size_t dst_stride) {
    act_table tab;
    for (int64_t t0 = 0; t0 < nt;) { /* passes of 16, 8 or every count below (3 to 7 tokens: one read of W) */
        const int64_t left = nt - t0;
        const char *at = (const char *)a + (size_t)t0 * a_stride;
        float *dt = dst + (size_t)t0 * dst_stride;
        const int N = left >= 16 ? 16 : left >= 8 ? 8 : (int)left;
        switch (N) {
        case 16: tokens_pass(k, 16, n, nr, w, w_stride, at, a_stride, dt, dst_stride, &tab); break;
        case 8: tokens_pass(k, 8, n, nr, w, w_stride, at, a_stride, dt, dst_stride, &tab); break;
        case 7: tokens_pass(k, 7, n, nr, w, w_stride, at, a_stride, dt, dst_stride, &tab); break;
        case 6: tokens_pass(k, 6, n, nr, w, w_stride, at, a_stride, dt, dst_stride, &tab); break;
        case 5: tokens_pass(k, 5, n, nr, w, w_stride, at, a_stride, dt, dst_stride, &tab); break;
        case 4: tokens_pass(k, 4, n, nr, w, w_stride, at, a_stride, dt, dst_stride, &tab); break;
        case 3: tokens_pass(k, 3, n, nr, w, w_stride, at, a_stride, dt, dst_stride, &tab); break;
        case 2: tokens_pass(k, 2, n, nr, w, w_stride, at, a_stride, dt, dst_stride, &tab); break;
        default: tokens_pass(k, 1, n, nr, w, w_stride, at, a_stride, dt, dst_stride, &tab); break;
        }
        t0 += N;
    }
}

/* Decode-sized calls (fewer than HL_GEMM_BATCH_MIN tokens) are memory-bound: the type's vec_dot reads each
 * weight row once, front to back, which streams best; a transposition would cost more than the few tokens'
 * dot products. */
static void decode_rows(int32_t type, int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride,
                        const void *a, size_t a_stride, float *dst, size_t dst_stride) {
    hl_gemm_by_vec_dot(hl_traits_for_install(type)->vec_dot, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
}

/* The batch kernels of Q4_1, Q5_0 and Q5_1: gemm_q32_avx512.c's tiles, installed before this file's. */
static hl_gemm_fn q4_1_tiles, q5_0_tiles, q5_1_tiles;

#define GEMM_FN(name, type, batch)                                                                             \
    static void name(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,         \
                     size_t a_stride, float *dst, size_t dst_stride) {                                         \
        if (nt < HL_GEMM_BATCH_MIN || n == 0) decode_rows(type, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride); \
        else batch;                                                                                            \
    }
static void gemm_q4_0(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                      size_t a_stride, float *dst, size_t dst_stride) {
    if (n == 0) decode_rows(HL_TYPE_Q4_0, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
    else if (nt < HL_GEMM_BATCH_MIN) hl_gemm_q4_0_decode_avx512(n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
    else gemm_panel16(K_Q4_0, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
}
/* Repacked Q4_0 and Q8_0: the panel path at every token count (a decode reads each block once for 16 rows). */
#define R16_GEMM_FN(name, k, ref)                                                                              \
    static void name(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,         \
                     size_t a_stride, float *dst, size_t dst_stride) {                                         \
        if (n == 0) ref(n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);                                 \
        else gemm_panel16(k, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);                            \
    }
R16_GEMM_FN(gemm_q4_0_r16, K_Q4_0_R16, hl_gemm_q4_0_r16_ref)
R16_GEMM_FN(gemm_q8_0_r16, K_Q8_0_R16, hl_gemm_q8_0_r16_ref)
GEMM_FN(gemm_q8_0, HL_TYPE_Q8_0, gemm_panel16(K_Q8_0, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride))
GEMM_FN(gemm_q4_1, HL_TYPE_Q4_1, q4_1_tiles(n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride))
GEMM_FN(gemm_q5_0, HL_TYPE_Q5_0, q5_0_tiles(n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride))
GEMM_FN(gemm_q5_1, HL_TYPE_Q5_1, q5_1_tiles(n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride))
#endif

void hl_gemm_install_q32_panel16(const hl_cpu_features *cpu) {
#if defined(__x86_64__) && !defined(HL_NO_SIMD)
    hl_type_traits *q4_1 = hl_traits_for_install(HL_TYPE_Q4_1), *q5_0 = hl_traits_for_install(HL_TYPE_Q5_0),
                   *q5_1 = hl_traits_for_install(HL_TYPE_Q5_1);
    if (!cpu->avx512 || !q4_1->gemm || !q5_0->gemm || !q5_1->gemm) return;
    q4_1_tiles = q4_1->gemm, q5_0_tiles = q5_0->gemm, q5_1_tiles = q5_1->gemm;
    hl_traits_for_install(HL_TYPE_Q4_0)->gemm = gemm_q4_0;
    hl_traits_for_install(HL_TYPE_Q8_0)->gemm = gemm_q8_0;
    hl_traits_for_install(HL_TYPE_Q4_0_R16)->gemm = gemm_q4_0_r16;
    hl_traits_for_install(HL_TYPE_Q8_0_R16)->gemm = gemm_q8_0_r16;
    q4_1->gemm = gemm_q4_1, q5_0->gemm = gemm_q5_0, q5_1->gemm = gemm_q5_1;
#else
    (void)cpu;
#endif
}
