/*
 * AVX-512 kernels for hl_axpy_rows_fn (quants.h): y[t][j] += alpha[t][k] * x[k][j] for k in order, the LoRA
 * B half of a float adapter over a batch (x = a panel of B transposed, [rank][HL_BT_PANEL] (core.h), one
 * contiguous stretch the hardware prefetchers follow; alpha[t][k] = s * (A.x_t)[k]).
 *
 * A tile of 16 outputs j (one zmm) x up to 8 tokens (64 outputs x 1 or 2 tokens) keeps the partial sums in
 * registers across all k and converts each x[k][j..j+15] once for the tile's tokens; every element still sees fmaf(alpha, x, y) for
 * k = 0, 1, ... in order, so the result equals nk plain axpys bit for bit, whatever the tile. Without
 * AVX-512 the dispatcher (gemm.c) runs the type's axpy per (t, k).
 */
#include "common.h"
#include "gemm.h"

#if defined(__x86_64__) && !defined(HL_NO_SIMD)
#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define TILE_T 8
#define ALWAYS_INLINE static inline __attribute__((always_inline))

typedef enum { X_F32, X_F16, X_BF16 } x_kind;

/* 16 elements (mask: the valid ones) of row x at column j, widened to f32. */
TARGET ALWAYS_INLINE __m512 load_x(x_kind kind, const void *x, int64_t j, __mmask16 mask) {
    switch (kind) {
    case X_F32: return _mm512_maskz_loadu_ps(mask, (const float *)x + j);
    case X_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, (const uint16_t *)x + j));
    default: {
        const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, (const uint16_t *)x + j));
        return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
    }
    }
}

/* Columns j..j+16*NV-1 (mask: the last vector's valid columns) of NT <= TILE_T / NV token rows: NV * NT
 * independent FMA chains, so that a decode (NT = 1) is not one chain of nk dependent FMAs. NV and NT are
 * constants at every call (tile_rows), so the chains' accumulators stay in registers. */
TARGET ALWAYS_INLINE void tile(x_kind kind, const int NV, const int NT, int64_t j, __mmask16 mask, int64_t nk,
                               const char *x, size_t x_stride, const float *alpha, size_t alpha_stride, float *y,
                               size_t y_stride) {
    __m512 acc[TILE_T];
    for (int t = 0; t < NT; t++)
        for (int v = 0; v < NV; v++)
            acc[NV * t + v] = _mm512_maskz_loadu_ps(v == NV - 1 ? mask : 0xFFFF, y + (size_t)t * y_stride + j + 16 * v);
    for (int64_t k = 0; k < nk; k++) {
        const char *row = x + (size_t)k * x_stride;
        for (int v = 0; v < NV; v++) {
            const __m512 xv = load_x(kind, row, j + 16 * v, v == NV - 1 ? mask : 0xFFFF);
            for (int t = 0; t < NT; t++)
                acc[NV * t + v] =
                    _mm512_fmadd_ps(_mm512_set1_ps(alpha[(size_t)t * alpha_stride + k]), xv, acc[NV * t + v]);
        }
    }
    for (int t = 0; t < NT; t++)
        for (int v = 0; v < NV; v++)
            _mm512_mask_storeu_ps(y + (size_t)t * y_stride + j + 16 * v, v == NV - 1 ? mask : 0xFFFF, acc[NV * t + v]);
}

#define DECODE_VECTORS 4 /* column vectors per tile for 1 or 2 tokens */

/* Columns [j, j + 16 * NV) (mask as in tile) of nt <= TILE_T / NV token rows: tile at nt's constant. */
TARGET ALWAYS_INLINE void tile_rows(x_kind kind, const int NV, int64_t nt, int64_t j, __mmask16 mask, int64_t nk,
                                    const char *x, size_t x_stride, const float *al, size_t alpha_stride, float *yt,
                                    size_t y_stride) {
#define TILE_CASE(NT)                                                                                 \
    case NT:                                                                                          \
        tile(kind, NV, (NT) <= TILE_T / NV ? (NT) : 1, /* no instance wider than the tile holds */    \
             j, mask, nk, x, x_stride, al, alpha_stride, yt, y_stride);                                \
        break;
    switch (nt) {
        TILE_CASE(1) TILE_CASE(2) TILE_CASE(3) TILE_CASE(4) TILE_CASE(5) TILE_CASE(6) TILE_CASE(7) TILE_CASE(8)
    }
#undef TILE_CASE
}

TARGET ALWAYS_INLINE void axpy_rows_avx512(x_kind kind, int64_t n, int64_t nk, int64_t nt, const void *x,
                                           size_t x_stride, const float *alpha, size_t alpha_stride, float *y,
                                           size_t y_stride) {
    for (int64_t t0 = 0; t0 < nt; t0 += TILE_T) {
        const int64_t tn = nt - t0 < TILE_T ? nt - t0 : TILE_T;
        const float *al = alpha + (size_t)t0 * alpha_stride;
        float *yt = y + (size_t)t0 * y_stride;
        int64_t j = 0;
        for (; tn <= TILE_T / DECODE_VECTORS && j + 16 * DECODE_VECTORS <= n; j += 16 * DECODE_VECTORS)
            tile_rows(kind, DECODE_VECTORS, tn, j, 0xFFFF, nk, x, x_stride, al, alpha_stride, yt, y_stride);
        for (; j < n; j += 16) {
            const __mmask16 mask = hl_lanes16(n - j);
            tile_rows(kind, 1, tn, j, mask, nk, x, x_stride, al, alpha_stride, yt, y_stride);
        }
    }
}

#define KIND_WRAPPER(name, kind)                                                                          \
    TARGET static void name(int64_t n, int64_t nk, int64_t nt, const void *x, size_t x_stride, const float *alpha, \
                     size_t alpha_stride, float *y, size_t y_stride) {                                     \
        axpy_rows_avx512(kind, n, nk, nt, x, x_stride, alpha, alpha_stride, y, y_stride);                  \
    }
KIND_WRAPPER(axpy_rows_f32_avx512, X_F32)
KIND_WRAPPER(axpy_rows_f16_avx512, X_F16)
KIND_WRAPPER(axpy_rows_bf16_avx512, X_BF16)
#endif

void hl_axpy_rows_install(const hl_cpu_features *cpu) {
#if defined(__x86_64__) && !defined(HL_NO_SIMD)
    if (!cpu->avx512) return;
    hl_traits_for_install(HL_TYPE_F32)->axpy_rows = axpy_rows_f32_avx512;
    hl_traits_for_install(HL_TYPE_F16)->axpy_rows = axpy_rows_f16_avx512;
    hl_traits_for_install(HL_TYPE_BF16)->axpy_rows = axpy_rows_bf16_avx512;
#else
    (void)cpu;
#endif
}
