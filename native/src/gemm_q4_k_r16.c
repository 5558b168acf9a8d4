/*
 * HL_TYPE_Q4_K_R16 (quants.h, block_q4_K_r16): Q4_K rows repacked at load into panels of 16, and the layout's
 * scalar kernel. Per super-block and (row, token) every kernel of the layout computes the exact integers
 *
 *   main = sum_j sc_j * (sum of sub-block j's quants times the activation's),  mins = sum_j mn_j * bsum_j
 *
 * (bsum_j: the activation's sum over sub-block j) and then acc = fmaf(float(main), d * d_a, acc),
 * acc = fmaf(-(dmin * d_a), float(mins), acc), super-block after super-block from 0: the operations of the Q4_K
 * kernels (gemm_kquants_*.c), so the layout's results equal Q4_K's bit for bit.
 */
#include <math.h>

#include "common.h"
#include "gemm.h"
#include "quants.h"

void hl_repack_q4_k_panel(const char *src, size_t row_bytes, int64_t nb, char *dst) {
    block_q4_K_r16 *out = (block_q4_K_r16 *)dst;
    for (int64_t b = 0; b < nb; b++)
        for (int r = 0; r < HL_R16_ROWS; r++) {
            const block_q4_K *blk = (const block_q4_K *)(src + (size_t)r * row_bytes) + b;
            out[b].d[r] = blk->d, out[b].dmin[r] = blk->dmin;
            for (int j = 0; j < 8; j++) hl_get_scale_min_k4(j, blk->scales, &out[b].sc[j][r], &out[b].mn[j][r]);
            for (int k = 0; k < QK_K / 8; k++) memcpy(&out[b].qs[k][r], blk->qs + 4 * k, 4);
        }
}

/* Quant i (0..255) of row r: qs byte 32c + e holds element 64c + e (low nibble) and 64c + 32 + e (high). */
static int quant(const block_q4_K_r16 *blk, int r, int i) {
    const int byte = 32 * (i / 64) + i % 32;
    const int q = (int)(blk->qs[byte / 4][r] >> (8 * (byte % 4))) & 0xFF;
    return i % 64 < 32 ? q & 0x0F : q >> 4;
}

/* acc after one super-block of row r against activation block y. */
static float super_block(const block_q4_K_r16 *blk, int r, const block_q8_K *y, float acc) {
    int32_t main = 0, mins = 0;
    for (int j = 0; j < 8; j++) {
        int32_t dot = 0;
        for (int i = 32 * j; i < 32 * j + 32; i++) dot += quant(blk, r, i) * y->qs[i];
        main += blk->sc[j][r] * dot;
        mins += blk->mn[j][r] * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
    }
    acc = fmaf((float)main, hl_fp16_to_fp32(blk->d[r]) * y->d, acc);
    return fmaf(-(hl_fp16_to_fp32(blk->dmin[r]) * y->d), (float)mins, acc);
}

void hl_gemm_q4_k_r16_ref(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                          size_t a_stride, float *dst, size_t dst_stride) {
    const int64_t nb = n / QK_K;
    for (int64_t p = 0; p < nr / HL_R16_ROWS; p++) {
        const block_q4_K_r16 *panel = (const block_q4_K_r16 *)((const char *)w + (size_t)p * HL_R16_ROWS * w_stride);
        for (int64_t t = 0; t < nt; t++) {
            const block_q8_K *y = (const block_q8_K *)((const char *)a + (size_t)t * a_stride);
            for (int r = 0; r < HL_R16_ROWS; r++) {
                float acc = 0.0f;
                for (int64_t b = 0; b < nb; b++) acc = super_block(&panel[b], r, &y[b], acc);
                dst[(size_t)t * dst_stride + (size_t)(p * HL_R16_ROWS + r)] = acc;
            }
        }
    }
}
