/*
 * The float outer-product GEMM of the training backward (train.h): c[t][j] += sum_k a[t][k] b[k][j].
 * It adds W^T.dy into dx with b a tile of W dequantized (rows k = output features, columns j = input
 * features) and a = dy, so W is read along its rows, as it is stored.
 *
 * Register tiles of ROWS rows of c by two vectors of columns stay in registers over the whole k loop; each
 * step loads two vectors of b's row k once for every row of the tile and broadcasts one a[t][k] per row.
 * AVX-512: 8 rows x 32 columns, AVX2: 6 rows x 16 columns, chosen as hl_quants_init chose its kernels; the
 * reference (and any column tail of the AVX2 path) is the plain triple loop. Every c[t][j] sums its k in
 * order in every path; the SIMD paths fuse each multiply-add.
 */
#include <string.h>

#include "quants.h"
#include "train.h"

static void gemm_ref(int64_t nt, int64_t n, int64_t nk, const float *a, size_t as, const float *b, size_t bs,
                     float *c, size_t cs) {
    for (int64_t t = 0; t < nt; t++)
        for (int64_t k = 0; k < nk; k++) {
            const float x = a[t * as + k];
            const float *bk = b + k * bs;
            float *ct = c + t * cs;
            for (int64_t j = 0; j < n; j++) ct[j] += x * bk[j];
        }
}

typedef void (*gemm_fn)(int64_t nt, int64_t n, int64_t nk, const float *a, size_t as, const float *b, size_t bs,
                        float *c, size_t cs);

#if defined(__x86_64__) && !defined(HL_NO_SIMD)
#include <immintrin.h>

#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define T512 __attribute__((target("avx512f")))
#define T256 __attribute__((target("avx2,fma")))

/* Rows t < R (a compile-time constant after inlining) of c, columns j .. j+31 (masks m0, m1). */
T512 ALWAYS_INLINE void tile_512(const int R, int64_t nk, const float *a, size_t as, const float *b, size_t bs,
                                 float *c, size_t cs, __mmask16 m0, __mmask16 m1) {
    __m512 acc[8][2];
    for (int r = 0; r < R; r++) {
        acc[r][0] = _mm512_maskz_loadu_ps(m0, c + r * cs);
        acc[r][1] = _mm512_maskz_loadu_ps(m1, c + r * cs + 16);
    }
    for (int64_t k = 0; k < nk; k++) {
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, b + k * bs), b1 = _mm512_maskz_loadu_ps(m1, b + k * bs + 16);
        for (int r = 0; r < R; r++) {
            const __m512 x = _mm512_set1_ps(a[r * as + k]);
            acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < R; r++) {
        _mm512_mask_storeu_ps(c + r * cs, m0, acc[r][0]);
        _mm512_mask_storeu_ps(c + r * cs + 16, m1, acc[r][1]);
    }
}

static __mmask16 lanes(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

T512 static void gemm_512(int64_t nt, int64_t n, int64_t nk, const float *a, size_t as, const float *b, size_t bs,
                          float *c, size_t cs) {
    for (int64_t j = 0; j < n; j += 32) {
        const __mmask16 m0 = lanes(n - j), m1 = lanes(n - j - 16);
        int64_t t = 0;
        for (; t + 8 <= nt; t += 8) tile_512(8, nk, a + t * as, as, b + j, bs, c + t * cs + j, cs, m0, m1);
        for (; t < nt; t++) tile_512(1, nk, a + t * as, as, b + j, bs, c + t * cs + j, cs, m0, m1);
    }
}

/* Rows t < R of c, columns j .. j+15 (whole). */
T256 ALWAYS_INLINE void tile_256(const int R, int64_t nk, const float *a, size_t as, const float *b, size_t bs,
                                 float *c, size_t cs) {
    __m256 acc[6][2];
    for (int r = 0; r < R; r++) {
        acc[r][0] = _mm256_loadu_ps(c + r * cs);
        acc[r][1] = _mm256_loadu_ps(c + r * cs + 8);
    }
    for (int64_t k = 0; k < nk; k++) {
        const __m256 b0 = _mm256_loadu_ps(b + k * bs), b1 = _mm256_loadu_ps(b + k * bs + 8);
        for (int r = 0; r < R; r++) {
            const __m256 x = _mm256_broadcast_ss(a + r * as + k);
            acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < R; r++) {
        _mm256_storeu_ps(c + r * cs, acc[r][0]);
        _mm256_storeu_ps(c + r * cs + 8, acc[r][1]);
    }
}

T256 static void gemm_256(int64_t nt, int64_t n, int64_t nk, const float *a, size_t as, const float *b, size_t bs,
                          float *c, size_t cs) {
    const int64_t whole = n / 16 * 16;
    for (int64_t j = 0; j < whole; j += 16) {
        int64_t t = 0;
        for (; t + 6 <= nt; t += 6) tile_256(6, nk, a + t * as, as, b + j, bs, c + t * cs + j, cs);
        for (; t < nt; t++) tile_256(1, nk, a + t * as, as, b + j, bs, c + t * cs + j, cs);
    }
    if (whole < n) gemm_ref(nt, n - whole, nk, a, as, b + whole, bs, c + whole, cs);
}
#endif

static gemm_fn chosen(void) {
#if defined(__x86_64__) && !defined(HL_NO_SIMD)
    const char *simd = hl_quants_simd_name();
    if (strcmp(simd, "avx512") == 0) return gemm_512;
    if (strcmp(simd, "avx2") == 0) return gemm_256;
#endif
    return gemm_ref;
}

void tr_gemm_acc(int64_t nt, int64_t n, int64_t nk, const float *a, size_t a_stride, const float *b, size_t b_stride,
                 float *c, size_t c_stride) {
    chosen()(nt, n, nk, a, a_stride, b, b_stride, c, c_stride);
}
