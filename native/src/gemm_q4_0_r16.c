/*
 * HL_TYPE_Q4_0_R16: Q4_0 weights repacked once at load into panels of 16 rows (quants.h, block_q4_0_r16), the
 * layout the AVX-512 VNNI panel kernel (gemm_q32_panel16.c) otherwise builds on the fly for every block and
 * 16 tokens: per block, the 16 rows' d, then dword j of every row's quants with row r in 32-bit lane r. A
 * decode then reads each weight block once for 16 rows with 4 plain loads, no transposition.
 *
 * This file holds the repacking (hl_repack) and the scalar reference kernel. Both kernels compute, for each
 * (row, token), acc = fmaf(float(exact integer block dot), d_w * d_a, acc) block after block from 0, so
 * they agree bit for bit with each other and with the Q4_0 panel kernel's batch path.
 */
#include <math.h>

#include "common.h"
#include "gemm.h"
#include "quants.h"

/* Panel p of 16 rows (src rows p*16 ..) into dst's panel p, block by block. */
static void repack_panel(const char *src, size_t row_bytes, int64_t nb, block_q4_0_r16 *dst) {
    for (int64_t b = 0; b < nb; b++)
        for (int r = 0; r < HL_R16_ROWS; r++) {
            const block_q4_0 *blk = (const block_q4_0 *)(src + (size_t)r * row_bytes) + b;
            dst[b].d[r] = blk->d;
            for (int j = 0; j < 4; j++) memcpy(&dst[b].qs[j][r], blk->qs + 4 * j, 4);
        }
}

int32_t hl_repack_type(int32_t type, int64_t n_rows) {
    const hl_type_traits *r16 = hl_get_type_traits(HL_TYPE_Q4_0_R16);
    const int faster = r16->gemm != r16->gemm_ref; /* the SIMD installer chose a kernel for the layout */
    return type == HL_TYPE_Q4_0 && faster && n_rows > 0 && n_rows % HL_R16_ROWS == 0 ? HL_TYPE_Q4_0_R16 : type;
}

hl_status hl_repack(int32_t type, const void *src, void *dst, int64_t n_cols, int64_t n_rows,
                    int32_t *repacked_type) {
    if (hl_repack_type(type, n_rows) == type)
        return hl_fail(HL_ERR_UNSUPPORTED, "hl_repack: no faster layout for type %d x %lld rows with kernel set %s",
                       (int)type, (long long)n_rows, hl_quants_simd_name());
    if (!src || !dst || !repacked_type) return hl_fail(HL_ERR_INVALID, "hl_repack: NULL argument");
    if (n_cols <= 0 || n_cols % QK)
        return hl_fail(HL_ERR_INVALID, "hl_repack: row length %lld is not whole blocks of %d", (long long)n_cols, QK);
    const size_t row_bytes = hl_row_size(type, n_cols);
    for (int64_t p = 0; p < n_rows / HL_R16_ROWS; p++)
        repack_panel((const char *)src + (size_t)p * HL_R16_ROWS * row_bytes, row_bytes, n_cols / QK,
                     (block_q4_0_r16 *)((char *)dst + (size_t)p * HL_R16_ROWS * row_bytes));
    *repacked_type = HL_TYPE_Q4_0_R16;
    return HL_OK;
}

/* The exact integer dot of row r's block (panel block blk) with an activation block. */
static int32_t block_dot(const block_q4_0_r16 *blk, int r, const block_q8_0 *x) {
    int32_t sum = 0;
    for (int j = 0; j < 4; j++)
        for (int k = 0; k < 4; k++) {
            const int i = 4 * j + k;
            const int q = (int)(blk->qs[j][r] >> (8 * k)) & 0xFF; /* qs[i]: element i low, i + 16 high */
            sum += ((q & 0x0F) - 8) * x->qs[i] + ((q >> 4) - 8) * x->qs[i + 16];
        }
    return sum;
}

void hl_gemm_q4_0_r16_ref(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                          size_t a_stride, float *dst, size_t dst_stride) {
    const int64_t nb = n / QK;
    for (int64_t p = 0; p < nr / HL_R16_ROWS; p++) {
        const block_q4_0_r16 *panel = (const block_q4_0_r16 *)((const char *)w + (size_t)p * HL_R16_ROWS * w_stride);
        for (int64_t t = 0; t < nt; t++) {
            const block_q8_0 *x = (const block_q8_0 *)((const char *)a + (size_t)t * a_stride);
            for (int r = 0; r < HL_R16_ROWS; r++) {
                float acc = 0.0f;
                for (int64_t b = 0; b < nb; b++)
                    acc = fmaf((float)block_dot(&panel[b], r, &x[b]),
                               hl_fp16_to_fp32(panel[b].d[r]) * hl_fp16_to_fp32(x[b].d), acc);
                dst[(size_t)t * dst_stride + (size_t)(p * HL_R16_ROWS + r)] = acc;
            }
        }
    }
}
