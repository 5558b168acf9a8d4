/*
 * The R16 layouts: weights repacked once at load into panels of 16 rows (quants.h), so that a kernel reads
 * each block once for 16 rows, row r in 32-bit lane r, with plain loads and no transposition.
 *
 *   HL_TYPE_Q4_0_R16, HL_TYPE_Q8_0_R16: per block, the 16 rows' d, then dword j of every row's quants, the
 *       layout the AVX-512 VNNI panel kernel (gemm_q32_panel16.c) otherwise builds on the fly for every block
 *       and 16 tokens. Every kernel computes, for each (row, token), acc = fmaf(float(exact integer block
 *       dot), d_w * d_a, acc) block after block from 0: SIMD and scalar agree bit for bit, and with the plain
 *       type's panel batch path.
 *   HL_TYPE_Q4_K_R16 (gemm_kquants_r16.c): per super-block, the rows' d and dmin, their 6-bit scales and mins
 *       unpacked to bytes, then dword k of every row's quants (148 bytes per row and super-block, 4 more than
 *       Q4_K's 144).
 *   HL_TYPE_Q6_K_R16 (gemm_kquants_r16.c): per super-block, the rows' d and 16 scales, then every row's quants
 *       regrouped so that three dwords (two of low nibbles, one of high bits) make one group of 16 (210 bytes,
 *       as Q6_K).
 *
 * This file holds the layout table, hl_repack_type / hl_repack and the 32-element layouts' repacking and
 * scalar reference kernels.
 */
#include <math.h>

#include "common.h"
#include "gemm.h"
#include "quants.h"

/* A layout: the plain type, its repacked type, and how 16 rows of nb blocks (row_bytes apart) are repacked. */
typedef struct {
    int32_t type, repacked;
    void (*repack_panel)(const char *src, size_t row_bytes, int64_t nb, char *dst);
} r16_layout;

/* 16 rows of nb blocks of a 32-element type (d, then `dwords` dwords of quants) into one repacked panel. */
static void repack_q32_panel(const char *src, size_t row_bytes, int64_t nb, size_t block_bytes, int dwords,
                             char *dst) {
    for (int64_t b = 0; b < nb; b++, dst += HL_R16_ROWS * block_bytes)
        for (int r = 0; r < HL_R16_ROWS; r++) {
            const char *blk = src + (size_t)r * row_bytes + (size_t)b * block_bytes;
            memcpy(dst + 2 * r, blk, 2);
            for (int j = 0; j < dwords; j++) memcpy(dst + 32 + 64 * j + 4 * r, blk + 2 + 4 * j, 4);
        }
}

static void repack_q4_0(const char *src, size_t row_bytes, int64_t nb, char *dst) {
    repack_q32_panel(src, row_bytes, nb, sizeof(block_q4_0), 4, dst);
}

static void repack_q8_0(const char *src, size_t row_bytes, int64_t nb, char *dst) {
    repack_q32_panel(src, row_bytes, nb, sizeof(block_q8_0), 8, dst);
}

static const r16_layout LAYOUTS[] = {
    {HL_TYPE_Q4_0, HL_TYPE_Q4_0_R16, repack_q4_0},
    {HL_TYPE_Q8_0, HL_TYPE_Q8_0_R16, repack_q8_0},
    {HL_TYPE_Q4_K, HL_TYPE_Q4_K_R16, hl_repack_q4_k_panel},
    {HL_TYPE_Q6_K, HL_TYPE_Q6_K_R16, hl_repack_q6_k_panel},
};

static const r16_layout *layout_of(int32_t type) {
    for (size_t i = 0; i < sizeof LAYOUTS / sizeof LAYOUTS[0]; i++)
        if (LAYOUTS[i].type == type) return &LAYOUTS[i];
    return NULL;
}

int32_t hl_repack_type(int32_t type, int64_t n_rows) {
    const r16_layout *l = layout_of(type);
    if (!l || n_rows <= 0 || n_rows % HL_R16_ROWS) return type;
    const hl_type_traits *t = hl_get_type_traits(l->repacked);
    return t->gemm != t->gemm_ref ? l->repacked : type; /* the SIMD installer chose a kernel for the layout */
}

hl_status hl_repack(int32_t type, const void *src, void *dst, int64_t n_cols, int64_t n_rows,
                    int32_t *repacked_type) {
    if (hl_repack_type(type, n_rows) == type)
        return hl_fail(HL_ERR_UNSUPPORTED, "hl_repack: no faster layout for type %d x %lld rows with kernel set %s",
                       (int)type, (long long)n_rows, hl_quants_simd_name());
    if (!src || !dst || !repacked_type) return hl_fail(HL_ERR_INVALID, "hl_repack: NULL argument");
    const r16_layout *l = layout_of(type);
    const int64_t block = hl_get_type_traits(type)->block_size;
    if (n_cols <= 0 || n_cols % block)
        return hl_fail(HL_ERR_INVALID, "hl_repack: row length %lld is not whole blocks of %lld", (long long)n_cols,
                       (long long)block);
    const size_t row_bytes = hl_row_size(type, n_cols), packed_row_bytes = hl_row_size(l->repacked, n_cols);
    for (int64_t p = 0; p < n_rows / HL_R16_ROWS; p++)
        l->repack_panel((const char *)src + (size_t)p * HL_R16_ROWS * row_bytes, row_bytes, n_cols / block,
                        (char *)dst + (size_t)p * HL_R16_ROWS * packed_row_bytes);
    *repacked_type = l->repacked;
    return HL_OK;
}

/* The exact integer dot of row r of a Q4_0_R16 block with an activation block. */
static int32_t dot_q4_0(const block_q4_0_r16 *blk, int r, const block_q8_0 *x) {
    int32_t sum = 0;
    for (int i = 0; i < QK / 2; i++) { /* qs[i]: element i in the low nibble, i + 16 in the high one */
        const int q = (int)(blk->qs[i / 4][r] >> (8 * (i % 4))) & 0xFF;
        sum += ((q & 0x0F) - 8) * x->qs[i] + ((q >> 4) - 8) * x->qs[i + 16];
    }
    return sum;
}

/* The exact integer dot of row r of a Q8_0_R16 block with an activation block. */
static int32_t dot_q8_0(const block_q8_0_r16 *blk, int r, const block_q8_0 *x) {
    int32_t sum = 0;
    for (int i = 0; i < QK; i++) sum += (int8_t)(blk->qs[i / 4][r] >> (8 * (i % 4))) * x->qs[i];
    return sum;
}

#define R16_REFERENCE(name, block_t, dot)                                                                      \
    void name(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a, size_t a_stride, \
              float *dst, size_t dst_stride) {                                                                 \
        const int64_t nb = n / QK;                                                                             \
        for (int64_t p = 0; p < nr / HL_R16_ROWS; p++) {                                                       \
            const block_t *panel = (const block_t *)((const char *)w + (size_t)p * HL_R16_ROWS * w_stride);    \
            for (int64_t t = 0; t < nt; t++) {                                                                 \
                const block_q8_0 *x = (const block_q8_0 *)((const char *)a + (size_t)t * a_stride);            \
                for (int r = 0; r < HL_R16_ROWS; r++) {                                                        \
                    float acc = 0.0f;                                                                          \
                    for (int64_t b = 0; b < nb; b++)                                                           \
                        acc = fmaf((float)dot(&panel[b], r, &x[b]),                                            \
                                   hl_fp16_to_fp32(panel[b].d[r]) * hl_fp16_to_fp32(x[b].d), acc);             \
                    dst[(size_t)t * dst_stride + (size_t)(p * HL_R16_ROWS + r)] = acc;                         \
                }                                                                                              \
            }                                                                                                  \
        }                                                                                                      \
    }
R16_REFERENCE(hl_gemm_q4_0_r16_ref, block_q4_0_r16, dot_q4_0)
R16_REFERENCE(hl_gemm_q8_0_r16_ref, block_q8_0_r16, dot_q8_0)
