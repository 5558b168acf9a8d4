/*
 * The AVX-512 VNNI kernel of HL_TYPE_Q4_K_R16 (gemm_q4_k_r16.c states the arithmetic): lane r of every
 * register is row r of the 16-row panel. A super-block is unpacked once per panel and pass (64 nibble
 * registers, the scales and mins widened to int32) and then serves up to 16 tokens: per token, 64 vpdpbusd
 * against the token's broadcast activation quads, the scales and mins applied in int32 and two float
 * operations per super-block. Passes of 16, 8, 4, 2 and 1 tokens (a single token reads the panel directly);
 * each (row, token) value is the same in any.
 */
#include "common.h"
#include "gemm.h"
#include "quants.h"

#if defined(__x86_64__) && !defined(HL_NO_SIMD)
#include <immintrin.h>

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")))
#define AI __attribute__((always_inline)) inline

typedef struct {
    __m512i q[4][2][8]; /* chunk c (64 elements), low/high nibbles, dword k: 4 quants of sub-block 2c + half */
    __m512i sc[8], mn[8];
    __m512 d, dmin;
} unpacked;

TGT static AI void unpack(const block_q4_K_r16 *blk, unpacked *u) {
    for (int k = 0; k < QK_K / 8; k++) {
        const __m512i x = _mm512_loadu_si512(blk->qs[k]);
        u->q[k / 8][0][k % 8] = _mm512_and_si512(x, _mm512_set1_epi8(0x0F));
        u->q[k / 8][1][k % 8] = _mm512_and_si512(_mm512_srli_epi16(x, 4), _mm512_set1_epi8(0x0F));
    }
    for (int j = 0; j < 8; j++) {
        u->sc[j] = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk->sc[j]));
        u->mn[j] = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk->mn[j]));
    }
    u->d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk->d));
    u->dmin = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk->dmin));
}

/* acc (16 rows) after the unpacked super-block against activation block y. */
TGT static AI __m512 token_step(const unpacked *u, const block_q8_K *y, __m512 acc) {
    __m512i main = _mm512_setzero_si512(), mins = _mm512_setzero_si512();
    for (int c = 0; c < 4; c++)
        for (int half = 0; half < 2; half++) {
            const int8_t *q = y->qs + 64 * c + 32 * half;
            __m512i dot = _mm512_setzero_si512();
            for (int k = 0; k < 8; k++) {
                int32_t quad;
                memcpy(&quad, q + 4 * k, 4);
                dot = _mm512_dpbusd_epi32(dot, u->q[c][half][k], _mm512_set1_epi32(quad));
            }
            main = _mm512_add_epi32(main, _mm512_mullo_epi32(dot, u->sc[2 * c + half]));
        }
    for (int j = 0; j < 8; j++)
        mins = _mm512_add_epi32(mins, _mm512_mullo_epi32(u->mn[j], _mm512_set1_epi32(y->bsums[2 * j] + y->bsums[2 * j + 1])));
    const __m512 yd = _mm512_set1_ps(y->d);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(main), _mm512_mul_ps(u->d, yd), acc);
    return _mm512_fnmadd_ps(_mm512_mul_ps(u->dmin, yd), _mm512_cvtepi32_ps(mins), acc);
}

/* The same super-block step for one token straight from the panel (a decode: nothing to reuse, so the
 * nibbles are not kept). */
TGT static AI __m512 direct_step(const block_q4_K_r16 *blk, const block_q8_K *y, __m512 acc) {
    __m512i main = _mm512_setzero_si512(), mins = _mm512_setzero_si512();
    for (int c = 0; c < 4; c++) {
        __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
        for (int k = 0; k < 8; k++) {
            const __m512i x = _mm512_loadu_si512(blk->qs[8 * c + k]);
            int32_t quad_lo, quad_hi;
            memcpy(&quad_lo, y->qs + 64 * c + 4 * k, 4);
            memcpy(&quad_hi, y->qs + 64 * c + 32 + 4 * k, 4);
            lo = _mm512_dpbusd_epi32(lo, _mm512_and_si512(x, _mm512_set1_epi8(0x0F)), _mm512_set1_epi32(quad_lo));
            hi = _mm512_dpbusd_epi32(hi, _mm512_and_si512(_mm512_srli_epi16(x, 4), _mm512_set1_epi8(0x0F)),
                                     _mm512_set1_epi32(quad_hi));
        }
        main = _mm512_add_epi32(main, _mm512_mullo_epi32(lo, _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk->sc[2 * c]))));
        main = _mm512_add_epi32(main, _mm512_mullo_epi32(hi, _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk->sc[2 * c + 1]))));
    }
    for (int j = 0; j < 8; j++)
        mins = _mm512_add_epi32(mins, _mm512_mullo_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk->mn[j])),
                                                         _mm512_set1_epi32(y->bsums[2 * j] + y->bsums[2 * j + 1])));
    const __m512 yd = _mm512_set1_ps(y->d);
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk->d));
    const __m512 dmin = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk->dmin));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(main), _mm512_mul_ps(d, yd), acc);
    return _mm512_fnmadd_ps(_mm512_mul_ps(dmin, yd), _mm512_cvtepi32_ps(mins), acc);
}

/* A single token's step is short: the block PREFETCH_BLOCKS ahead is fetched by hand to keep memory busy. */
#define PREFETCH_BLOCKS 2
TGT static AI void prefetch_block(const block_q4_K_r16 *blk, const block_q4_K_r16 *end) {
    if (blk >= end) return;
    for (size_t at = 0; at < sizeof *blk; at += 64) _mm_prefetch((const char *)blk + at, _MM_HINT_T0);
}

/* N tokens (a constant at every call) against every panel of the nr rows. */
TGT static AI void tokens_pass(const int N, int64_t n, int64_t nr, const char *w, size_t w_stride, const char *a,
                               size_t a_stride, float *dst, size_t dst_stride) {
    const int64_t nb = n / QK_K;
    unpacked u;
    for (int64_t p = 0; p < nr / HL_R16_ROWS; p++) {
        const block_q4_K_r16 *panel = (const block_q4_K_r16 *)(w + (size_t)p * HL_R16_ROWS * w_stride);
        __m512 acc[16];
        for (int t = 0; t < N; t++) acc[t] = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb && N == 1; b++) {
            prefetch_block(panel + b + PREFETCH_BLOCKS, panel + nb);
            acc[0] = direct_step(&panel[b], (const block_q8_K *)a + b, acc[0]);
        }
        for (int64_t b = 0; b < nb && N > 1; b++) {
            unpack(&panel[b], &u);
            for (int t = 0; t < N; t++)
                acc[t] = token_step(&u, (const block_q8_K *)(a + (size_t)t * a_stride) + b, acc[t]);
        }
        for (int t = 0; t < N; t++) _mm512_storeu_ps(dst + (size_t)t * dst_stride + (size_t)p * HL_R16_ROWS, acc[t]);
    }
}

TGT static void gemm_q4_k_r16(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                              size_t a_stride, float *dst, size_t dst_stride) {
    for (int64_t t0 = 0; t0 < nt;) {
        const int64_t left = nt - t0;
        const char *at = (const char *)a + (size_t)t0 * a_stride;
        float *dt = dst + (size_t)t0 * dst_stride;
        const int N = left >= 16 ? 16 : left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
        switch (N) {
        case 16: tokens_pass(16, n, nr, w, w_stride, at, a_stride, dt, dst_stride); break;
        case 8: tokens_pass(8, n, nr, w, w_stride, at, a_stride, dt, dst_stride); break;
        case 4: tokens_pass(4, n, nr, w, w_stride, at, a_stride, dt, dst_stride); break;
        case 2: tokens_pass(2, n, nr, w, w_stride, at, a_stride, dt, dst_stride); break;
        default: tokens_pass(1, n, nr, w, w_stride, at, a_stride, dt, dst_stride); break;
        }
        t0 += N;
    }
}
#endif

void hl_gemm_install_q4_k_r16(const hl_cpu_features *cpu) {
#if defined(__x86_64__) && !defined(HL_NO_SIMD)
    if (cpu->avx512) hl_traits_for_install(HL_TYPE_Q4_K_R16)->gemm = gemm_q4_k_r16;
#else
    (void)cpu;
#endif
}
