/*
 * The AVX-512 VNNI kernels of the K-quant R16 layouts (gemm_kquants_r16.c states their arithmetic): lane r of
 * every register is row r of the 16-row panel.
 *
 *   Q4_K_R16: a super-block's 32 quant dwords give 64 nibble registers; per token, 64 vpdpbusd against the
 *             token's broadcast activation quads, each sub-block's dot times its scale (vpmulld), the mins by
 *             4 vpdpwssd of (mn_2m, mn_2m+1) against the token's bsums summed in pairs, then two float
 *             operations.
 *   Q6_K_R16: group g's ql dwords A (2g) and B (2g + 1) and its qh dword H give the unsigned quants of the
 *             group's four element quads:
 *                 u0 = A & 15 | (H & 3) << 4,  u1 = B & 15 | (H & 12) << 2,
 *                 u2 = A >> 4 & 15 | H & 48,   u3 = B >> 4 & 15 | (H & 192) >> 2
 *             (bytewise; the 16-bit shifts move no bit across a byte after the masks); per token, 4 vpdpbusd
 *             and the group's scale (vpmulld); the -32 offset of the quants is taken off once, 32 * (8
 *             vpdpwssd of the groups' scale pairs against the bsums' pairs).
 *
 * Up to GROUP tokens (one register tile) dot the quants as they are made from the panel, prefetching two
 * super-blocks ahead (the steps are short, and Q6_K_R16's three interleaved streams are not followed by the
 * hardware prefetchers). The prefetches are spread over a block's steps, a few lines per step: issued as one
 * burst of 53 lines per Q6_K_R16 block, they held a single-token pass at 8 GB/s from memory, against 24 GB/s
 * spread (one thread). More tokens reuse them from a per-panel buffer (passes of 32 and 16), GROUP tokens at a
 * time, so one quant register feeds GROUP vpdpbusd. Every (row, token) value is the same exact integer sum
 * followed by the same float operations in any pass.
 */
#include "common.h"
#include "gemm.h"
#include "quants.h"
#include "vnni_bcst.h"

#if defined(__x86_64__) && !defined(HL_NO_SIMD)
#include <immintrin.h>

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")))
#define AI __attribute__((always_inline)) inline
#define GROUP 8 /* tokens per register tile: each unpacked quant register feeds GROUP vpdpbusd */

typedef enum { R16_Q4_K, R16_Q6_K } kind;

static AI size_t block_bytes(kind k) { return k == R16_Q4_K ? sizeof(block_q4_K_r16) : sizeof(block_q6_K_r16); }

#define PREFETCH_BLOCKS 2
/* Step `step` of a block's `steps` prefetches its share of the lines of the block PREFETCH_BLOCKS ahead. A
 * prefetch never faults, so the last blocks of a panel prefetch the next panel's, or nothing useful. */
TGT static AI void prefetch_share(kind k, const void *blk, int step, int steps) {
    const int lines = (int)((block_bytes(k) + 63) / 64), per_step = (lines + steps - 1) / steps;
    const char *ahead = (const char *)blk + PREFETCH_BLOCKS * block_bytes(k);
    for (int l = step * per_step; l < (step + 1) * per_step && l < lines; l++) _mm_prefetch(ahead + 64 * l, _MM_HINT_T0);
}

/* ---- Q4_K_R16 ------------------------------------------------------------------------------------ */

typedef struct {
    __m512i q[4][2][8]; /* chunk c (64 elements), low/high nibbles, dword k: 4 quants of sub-block 2c + half */
    __m512i sc[8];      /* sub-block j's scale of row r in lane r */
    __m512i mnp[4];     /* sub-blocks 2m and 2m + 1's mins of row r as the 16-bit halves of lane r */
    __m512 d, dmin;
} q4_unpacked;

/* Lane r: sub-blocks 2m and 2m + 1's mins of row r as its low and high 16-bit halves. */
TGT static AI __m512i q4_min_pair(const block_q4_K_r16 *blk, int m) {
    const __m512i lo = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk->mn[2 * m]));
    const __m512i hi = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk->mn[2 * m + 1]));
    return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
}

/* sum_j mn_j * (bsums[2j] + bsums[2j + 1]) over the 8 sub-blocks: the bsums summed in pairs (s_j, |s_j| <=
 * 2 * 16 * 127 fits 16 bits) and one vpdpwssd per pair of sub-blocks, (mn_2m, mn_2m+1) . (s_2m, s_2m+1). */
TGT static AI __m512i q4_mins(const __m512i mnp[4], const block_q8_K *y) {
    const __m256i b = _mm256_loadu_si256((const __m256i *)y->bsums);
    int16_t s[16]; /* dwords 0, 1, 4, 5: (s_0, s_1), (s_2, s_3), (s_4, s_5), (s_6, s_7) */
    _mm256_storeu_si256((__m256i *)s, _mm256_hadd_epi16(b, b));
    __m512i mins = _mm512_setzero_si512();
    for (int m = 0; m < 4; m++) mins = hl_dpwssd_bcst(mins, mnp[m], s + 2 * (m < 2 ? m : m + 2));
    return mins;
}

TGT static AI void q4_unpack(const block_q4_K_r16 *blk, q4_unpacked *u) {
    for (int k = 0; k < QK_K / 8; k++) {
        prefetch_share(R16_Q4_K, blk, k, QK_K / 8);
        const __m512i x = _mm512_loadu_si512(blk->qs[k]);
        u->q[k / 8][0][k % 8] = _mm512_and_si512(x, _mm512_set1_epi8(0x0F));
        u->q[k / 8][1][k % 8] = _mm512_and_si512(_mm512_srli_epi16(x, 4), _mm512_set1_epi8(0x0F));
    }
    for (int j = 0; j < 8; j++) u->sc[j] = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk->sc[j]));
    for (int m = 0; m < 4; m++) u->mnp[m] = q4_min_pair(blk, m);
    u->d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk->d));
    u->dmin = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk->dmin));
}

/* Sub-block (2c + half)'s quant dword k of the 16 rows: from the unpacked buffer u, or made from the panel's
 * block when u is NULL (a constant at every call). */
TGT static AI __m512i q4_quants(const block_q4_K_r16 *blk, const q4_unpacked *u, int c, int half, int k) {
    if (u) return u->q[c][half][k];
    const __m512i x = _mm512_loadu_si512(blk->qs[8 * c + k]);
    return _mm512_and_si512(half ? _mm512_srli_epi16(x, 4) : x, _mm512_set1_epi8(0x0F));
}

/* acc[t] (16 rows) after the super-block against G tokens' activation blocks y[t] (G <= GROUP): each quant
 * register is made or loaded once for the G tokens. Quants, scales and mins from u, or from blk if u is NULL. */
TGT static AI void q4_tokens_step(const block_q4_K_r16 *blk, const q4_unpacked *u, const int G,
                                  const block_q8_K *const *y, __m512 *acc) {
    __m512i main[GROUP], mins[GROUP];
    for (int t = 0; t < G; t++) main[t] = _mm512_setzero_si512();
    for (int c = 0; c < 4; c++)
        for (int half = 0; half < 2; half++) {
            if (!u) prefetch_share(R16_Q4_K, blk, 2 * c + half, 8);
            __m512i dot[GROUP];
            for (int t = 0; t < G; t++) dot[t] = _mm512_setzero_si512();
            for (int k = 0; k < 8; k++) {
                const __m512i w = q4_quants(blk, u, c, half, k);
                for (int t = 0; t < G; t++)
                    dot[t] = hl_dpbusd_bcst(dot[t], w, y[t]->qs + 64 * c + 32 * half + 4 * k);
            }
            const int j = 2 * c + half;
            const __m512i sc = u ? u->sc[j] : _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk->sc[j]));
            for (int t = 0; t < G; t++) main[t] = _mm512_add_epi32(main[t], _mm512_mullo_epi32(dot[t], sc));
        }
    __m512i made[4];
    if (!u)
        for (int m = 0; m < 4; m++) made[m] = q4_min_pair(blk, m);
    for (int t = 0; t < G; t++) mins[t] = q4_mins(u ? u->mnp : made, y[t]);
    const __m512 d = u ? u->d : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk->d));
    const __m512 dmin = u ? u->dmin : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk->dmin));
    for (int t = 0; t < G; t++) {
        const __m512 yd = _mm512_set1_ps(y[t]->d);
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(main[t]), _mm512_mul_ps(d, yd), acc[t]);
        acc[t] = _mm512_fnmadd_ps(_mm512_mul_ps(dmin, yd), _mm512_cvtepi32_ps(mins[t]), acc[t]);
    }
}

/* ---- Q6_K_R16 ------------------------------------------------------------------------------------ */

typedef struct {
    __m512i u[QK_K / 16][4]; /* group g's dwords 0..3 (elements 16g + 4i ..) */
    __m512i sc[QK_K / 16];   /* group g's scale of row r in lane r */
    __m512i sc2[QK_K / 32];  /* groups 2p and 2p + 1's scales of row r as the 16-bit halves of lane r */
    __m512 d;
} q6_unpacked;

/* Group g's four quant dwords (elements 16g + 4i .., i = 0..3) of the 16 rows, from ql dwords 2g, 2g + 1 and
 * qh dword g. */
TGT static AI void q6_make_quants(const block_q6_K_r16 *blk, int g, __m512i u[4]) {
    const __m512i A = _mm512_loadu_si512(blk->ql[2 * g]), B = _mm512_loadu_si512(blk->ql[2 * g + 1]);
    const __m512i H = _mm512_loadu_si512(blk->qh[g]), lo4 = _mm512_set1_epi8(0x0F);
    u[0] = _mm512_or_si512(_mm512_and_si512(A, lo4), _mm512_slli_epi16(_mm512_and_si512(H, _mm512_set1_epi8(0x03)), 4));
    u[1] = _mm512_or_si512(_mm512_and_si512(B, lo4), _mm512_slli_epi16(_mm512_and_si512(H, _mm512_set1_epi8(0x0C)), 2));
    u[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(A, 4), lo4), _mm512_and_si512(H, _mm512_set1_epi8(0x30)));
    u[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(B, 4), lo4),
                           _mm512_srli_epi16(_mm512_and_si512(H, _mm512_set1_epi8((char)0xC0)), 2));
}

TGT static AI __m512i q6_scales(const block_q6_K_r16 *blk, int g) {
    return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)blk->sc[g]));
}

TGT static AI __m512i q6_scale_pair(const block_q6_K_r16 *blk, int p) {
    return _mm512_or_si512(_mm512_and_si512(q6_scales(blk, 2 * p), _mm512_set1_epi32(0xFFFF)),
                           _mm512_slli_epi32(q6_scales(blk, 2 * p + 1), 16));
}

/* sum_g sc_g * dot_g - 32 * sum_g sc_g * bsum_g, the second sum by one vpdpwssd per pair of groups. */
TGT static AI __m512i q6_offset_total(__m512i scaled, const __m512i sc2[QK_K / 32], const block_q8_K *y) {
    __m512i offset = _mm512_setzero_si512();
    for (int p = 0; p < QK_K / 32; p++) offset = hl_dpwssd_bcst(offset, sc2[p], y->bsums + 2 * p);
    return _mm512_sub_epi32(scaled, _mm512_slli_epi32(offset, 5));
}

TGT static AI void q6_unpack(const block_q6_K_r16 *blk, q6_unpacked *w) {
    for (int g = 0; g < QK_K / 16; g++) {
        prefetch_share(R16_Q6_K, blk, g, QK_K / 16);
        q6_make_quants(blk, g, w->u[g]);
        w->sc[g] = q6_scales(blk, g);
    }
    for (int p = 0; p < QK_K / 32; p++) w->sc2[p] = q6_scale_pair(blk, p);
    w->d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk->d));
}

/* acc[t] (16 rows) after the super-block against G tokens' activation blocks y[t] (G <= GROUP): each group's
 * quant registers are made or loaded once for the G tokens. Quants and scales from w, or from blk if w is NULL. */
TGT static AI void q6_tokens_step(const block_q6_K_r16 *blk, const q6_unpacked *w, const int G,
                                  const block_q8_K *const *y, __m512 *acc) {
    __m512i scaled[GROUP];
    for (int t = 0; t < G; t++) scaled[t] = _mm512_setzero_si512();
    for (int g = 0; g < QK_K / 16; g++) {
        __m512i made[4];
        if (!w) {
            prefetch_share(R16_Q6_K, blk, g, QK_K / 16);
            q6_make_quants(blk, g, made);
        }
        const __m512i *u = w ? w->u[g] : made, sc = w ? w->sc[g] : q6_scales(blk, g);
        for (int t = 0; t < G; t++) {
            __m512i dot = _mm512_setzero_si512();
            for (int i = 0; i < 4; i++) dot = hl_dpbusd_bcst(dot, u[i], y[t]->qs + 16 * g + 4 * i);
            scaled[t] = _mm512_add_epi32(scaled[t], _mm512_mullo_epi32(sc, dot));
        }
    }
    __m512i sc2[QK_K / 32];
    for (int p = 0; p < QK_K / 32; p++) sc2[p] = w ? w->sc2[p] : q6_scale_pair(blk, p);
    const __m512 d = w ? w->d : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk->d));
    for (int t = 0; t < G; t++)
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q6_offset_total(scaled[t], sc2, y[t])),
                                 _mm512_mul_ps(d, _mm512_set1_ps(y[t]->d)), acc[t]);
}

/* ---- the passes, shared ------------------------------------------------------------------------- */

typedef union {
    q4_unpacked q4;
    q6_unpacked q6;
} unpacked;

/* acc[t] after block blk against N <= GROUP tokens without a buffer: each quant register is made once for the
 * N tokens. */
TGT static AI void direct_step(kind k, const char *blk, const int N, const block_q8_K *const *y, __m512 *acc) {
    if (k == R16_Q4_K) q4_tokens_step((const block_q4_K_r16 *)blk, NULL, N, y, acc);
    else q6_tokens_step((const block_q6_K_r16 *)blk, NULL, N, y, acc);
}

TGT static AI void unpack(kind k, const char *blk, unpacked *u) {
    if (k == R16_Q4_K) q4_unpack((const block_q4_K_r16 *)blk, &u->q4);
    else q6_unpack((const block_q6_K_r16 *)blk, &u->q6);
}

TGT static AI void tokens_step(kind k, const unpacked *u, const int G, const block_q8_K *const *y, __m512 *acc) {
    if (k == R16_Q4_K) q4_tokens_step(NULL, &u->q4, G, y, acc);
    else q6_tokens_step(NULL, &u->q6, G, y, acc);
}

/* N tokens (a constant at every call) against every panel of the nr rows. */
TGT static AI void tokens_pass(kind k, const int N, int64_t n, int64_t nr, const char *w, size_t w_stride,
                               const char *a, size_t a_stride, float *dst, size_t dst_stride) {
    const int64_t nb = n / QK_K;
    unpacked u;
    for (int64_t p = 0; p < nr / HL_R16_ROWS; p++) {
        const char *panel = w + (size_t)p * HL_R16_ROWS * w_stride;
        __m512 acc[32];
        for (int t = 0; t < N; t++) acc[t] = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const char *blk = panel + (size_t)b * block_bytes(k);
            const block_q8_K *y[GROUP];
            if (N <= GROUP) { /* one register tile: nothing to reuse, the quants are not kept */
                for (int t = 0; t < N; t++) y[t] = (const block_q8_K *)(a + (size_t)t * a_stride) + b;
                direct_step(k, blk, N, y, acc);
                continue;
            }
            unpack(k, blk, &u);
            for (int t0 = 0; t0 < N; t0 += GROUP) {
                for (int t = 0; t < GROUP; t++) y[t] = (const block_q8_K *)(a + (size_t)(t0 + t) * a_stride) + b;
                tokens_step(k, &u, GROUP, y, acc + t0);
            }
        }
        for (int t = 0; t < N; t++) _mm512_storeu_ps(dst + (size_t)t * dst_stride + (size_t)p * HL_R16_ROWS, acc[t]);
    }
}

TGT static AI void gemm_r16(kind k, int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride,
                            const void *a, size_t a_stride, float *dst, size_t dst_stride) {
    for (int64_t t0 = 0; t0 < nt;) {
        const int64_t left = nt - t0;
        const char *at = (const char *)a + (size_t)t0 * a_stride;
        float *dt = dst + (size_t)t0 * dst_stride;
        const int N = left >= 32 ? 32 : left >= 16 ? 16 : left >= GROUP ? GROUP : (int)left;
        _Static_assert(GROUP == 8, "a case for every pass size up to GROUP");
        switch (N) { /* a pass of every count up to GROUP: a decode of 3 to 7 tokens reads the weights once */
        case 32: tokens_pass(k, 32, n, nr, w, w_stride, at, a_stride, dt, dst_stride); break;
        case 16: tokens_pass(k, 16, n, nr, w, w_stride, at, a_stride, dt, dst_stride); break;
        case 8: tokens_pass(k, 8, n, nr, w, w_stride, at, a_stride, dt, dst_stride); break;
        case 7: tokens_pass(k, 7, n, nr, w, w_stride, at, a_stride, dt, dst_stride); break;
        case 6: tokens_pass(k, 6, n, nr, w, w_stride, at, a_stride, dt, dst_stride); break;
        case 5: tokens_pass(k, 5, n, nr, w, w_stride, at, a_stride, dt, dst_stride); break;
        case 4: tokens_pass(k, 4, n, nr, w, w_stride, at, a_stride, dt, dst_stride); break;
        case 3: tokens_pass(k, 3, n, nr, w, w_stride, at, a_stride, dt, dst_stride); break;
        case 2: tokens_pass(k, 2, n, nr, w, w_stride, at, a_stride, dt, dst_stride); break;
        default: tokens_pass(k, 1, n, nr, w, w_stride, at, a_stride, dt, dst_stride); break;
        }
        t0 += N;
    }
}

TGT static void gemm_q4_k_r16(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                              size_t a_stride, float *dst, size_t dst_stride) {
    gemm_r16(R16_Q4_K, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
}

TGT static void gemm_q6_k_r16(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                              size_t a_stride, float *dst, size_t dst_stride) {
    gemm_r16(R16_Q6_K, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
}
#endif

void hl_gemm_install_kquants_r16(const hl_cpu_features *cpu) {
#if defined(__x86_64__) && !defined(HL_NO_SIMD)
    if (!cpu->avx512) return;
    hl_traits_for_install(HL_TYPE_Q4_K_R16)->gemm = gemm_q4_k_r16;
    hl_traits_for_install(HL_TYPE_Q6_K_R16)->gemm = gemm_q6_k_r16;
#else
    (void)cpu;
#endif
}
