/*
 * Tiled multi-token mat-mul kernels (hl_gemm_fn) for Q2_K .. Q6_K weights against Q8_K activations:
 * the driver shared by the AVX-512 VNNI and AVX2 kernel sets, and their installer.
 *
 * Blocking (gemm_kquants.h has the unpacked form and the tile contract): tokens are taken a block at
 * a time (tokens_per_block), so their activations stay in L2 while every row passes over them; rows
 * KQ_ROWS at a time; along n, a panel of KQ_BLOCKS super-blocks of those rows is unpacked once into
 * L1 (quants, scales in the kernel set's layout) and reused by register tiles over all the block's
 * tokens. Each tile carries its (row, token) float sums on from dst, so a value is the super-blocks'
 * terms added in order along n, the same float operations as the decode kernel's (one token, no
 * panel): it depends on W[row] and A[token] alone, never on nr, nt or the tiling. Rows past nr in
 * the last row tile are zero blocks whose results are not stored.
 */
#include "common.h"
#include "gemm.h"

#if defined(__x86_64__) && !defined(HL_NO_SIMD)

#include <string.h>

#include "gemm_kquants.h"

static const kq_type q2_K = {KQ_Q2_K, sizeof(block_q2_K), 0};
static const kq_type q3_K = {KQ_Q3_K, sizeof(block_q3_K), 1};
static const kq_type q4_K = {KQ_Q4_K, sizeof(block_q4_K), 0};
static const kq_type q5_K = {KQ_Q5_K, sizeof(block_q5_K), 0};
static const kq_type q6_K = {KQ_Q6_K, sizeof(block_q6_K), 1};

/* panel[i * KQ_ROWS + r] = super-block i of row r (zeros for r >= rows), unpacked for the kernel set. */
__attribute__((target("avx2,fma,f16c"))) static void unpack_panel(const kq_type *ty, const kq_isa *isa,
                                                                  const char *w, size_t w_stride, int rows, int kc,
                                                                  kq_block *panel) {
    for (int i = 0; i < kc; i++)
        for (int r = 0; r < KQ_ROWS; r++) {
            kq_block *b = &panel[i * KQ_ROWS + r];
            if (r < rows) {
                const kq_regs k = kq_unpack(ty->id, w + (size_t)r * w_stride + (size_t)i * ty->block_bytes);
                kq_store(&k, b);
                isa->layout(b);
            } else {
                memset(b, 0, sizeof *b);
            }
        }
}

static inline int64_t min64(int64_t x, int64_t y) { return x < y ? x : y; }

/* dst[t][r] = W[r] . A[t] for the rows and tokens of one token block (see the file header). */
static void token_block(const kq_type *ty, const kq_isa *isa, int64_t n, int64_t nr, int64_t nt, const char *w,
                        size_t w_stride, const char *a, size_t a_stride, float *dst, size_t dst_stride) {
    _Alignas(64) kq_block panel[KQ_BLOCKS * KQ_ROWS];
    const kq_tile_fn tile = ty->offset_mins ? isa->tile_offset_mins : isa->tile_float_mins;
    const int64_t nb = n / QK_K;
    for (int64_t r0 = 0; r0 < nr; r0 += KQ_ROWS) {
        const int rows = (int)min64(KQ_ROWS, nr - r0);
        for (int64_t b0 = 0; b0 < nb; b0 += KQ_BLOCKS) {
            const int kc = (int)min64(KQ_BLOCKS, nb - b0);
            unpack_panel(ty, isa, w + (size_t)r0 * w_stride + (size_t)b0 * ty->block_bytes, w_stride, rows, kc, panel);
            for (int64_t t0 = 0; t0 < nt; t0 += KQ_TOKENS) {
                const block_q8_K *act = (const block_q8_K *)(a + (size_t)t0 * a_stride) + b0;
                tile(panel, kc, act, a_stride, (int)min64(KQ_TOKENS, nt - t0), dst + (size_t)t0 * dst_stride + r0,
                     dst_stride, rows, b0 > 0);
            }
        }
    }
}

/* Tokens per block: their activation rows fill KQ_ACT_BYTES, 16 to 256 of them, a whole number of tiles. */
static int64_t tokens_per_block(int64_t n) {
    int64_t t = KQ_ACT_BYTES / ((n / QK_K) * (int64_t)sizeof(block_q8_K));
    t = t < 16 ? 16 : t > 256 ? 256 : t;
    return t - t % KQ_TOKENS;
}

static void kq_gemm(const kq_type *ty, const kq_isa *isa, int64_t n, int64_t nr, int64_t nt, const void *w,
                    size_t w_stride, const void *a, size_t a_stride, float *dst, size_t dst_stride) {
    if (n < QK_K) { /* empty dots: no panel would store them */
        for (int64_t t = 0; t < nt; t++) memset(dst + (size_t)t * dst_stride, 0, (size_t)nr * sizeof *dst);
        return;
    }
    if (nt < HL_GEMM_BATCH_MIN) { /* decode-sized, so memory-bound: W streamed once per token beats unpacking panels */
        for (int64_t t = 0; t < nt; t++)
            isa->decode[ty->id](n, nr, w, w_stride, (const char *)a + (size_t)t * a_stride, dst + (size_t)t * dst_stride);
        return;
    }
    const int64_t tb = tokens_per_block(n);
    for (int64_t t0 = 0; t0 < nt; t0 += tb)
        token_block(ty, isa, n, nr, min64(tb, nt - t0), w, w_stride,
                    (const char *)a + (size_t)t0 * a_stride, a_stride, dst + (size_t)t0 * dst_stride, dst_stride);
}

#define KQ_GEMM(name, type, isa)                                                                              \
    static void name(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,         \
                     size_t a_stride, float *dst, size_t dst_stride) {                                         \
        kq_gemm(&type, &isa, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);                           \
    }

KQ_GEMM(gemm_q2_K_avx512, q2_K, hl_kq_avx512)
KQ_GEMM(gemm_q3_K_avx512, q3_K, hl_kq_avx512)
KQ_GEMM(gemm_q4_K_avx512, q4_K, hl_kq_avx512)
KQ_GEMM(gemm_q5_K_avx512, q5_K, hl_kq_avx512)
KQ_GEMM(gemm_q6_K_avx512, q6_K, hl_kq_avx512)
KQ_GEMM(gemm_q2_K_avx2, q2_K, hl_kq_avx2)
KQ_GEMM(gemm_q3_K_avx2, q3_K, hl_kq_avx2)
KQ_GEMM(gemm_q4_K_avx2, q4_K, hl_kq_avx2)
KQ_GEMM(gemm_q5_K_avx2, q5_K, hl_kq_avx2)
KQ_GEMM(gemm_q6_K_avx2, q6_K, hl_kq_avx2)

void hl_gemm_install_kquants(const hl_cpu_features *cpu) {
    if (cpu->avx512) {
        hl_traits_for_install(HL_TYPE_Q2_K)->gemm = gemm_q2_K_avx512;
        hl_traits_for_install(HL_TYPE_Q3_K)->gemm = gemm_q3_K_avx512;
        hl_traits_for_install(HL_TYPE_Q4_K)->gemm = gemm_q4_K_avx512;
        hl_traits_for_install(HL_TYPE_Q5_K)->gemm = gemm_q5_K_avx512;
        hl_traits_for_install(HL_TYPE_Q6_K)->gemm = gemm_q6_K_avx512;
    } else if (cpu->avx2) {
        hl_traits_for_install(HL_TYPE_Q2_K)->gemm = gemm_q2_K_avx2;
        hl_traits_for_install(HL_TYPE_Q3_K)->gemm = gemm_q3_K_avx2;
        hl_traits_for_install(HL_TYPE_Q4_K)->gemm = gemm_q4_K_avx2;
        hl_traits_for_install(HL_TYPE_Q5_K)->gemm = gemm_q5_K_avx2;
        hl_traits_for_install(HL_TYPE_Q6_K)->gemm = gemm_q6_K_avx2;
    }
}

#else
void hl_gemm_install_kquants(const hl_cpu_features *cpu) { (void)cpu; }
#endif /* __x86_64__ && !HL_NO_SIMD */
