/*
 * The K-quant R16 layouts (quants.h): Q4_K and Q6_K rows repacked at load into panels of 16, and the layouts'
 * scalar kernels. Per super-block and (row, token) every kernel of a layout computes exact integers, then two
 * (Q4_K) or one (Q6_K) float operations, super-block after super-block from 0: the operations of the Q4_K and
 * Q6_K kernels (gemm_kquants_*.c), so the layouts' results equal the plain types' bit for bit.
 *
 *   HL_TYPE_Q4_K_R16: main = sum_j sc_j * (sum of sub-block j's quants times the activation's),
 *                     mins = sum_j mn_j * bsum_j (the activation's sum over sub-block j);
 *                     acc = fmaf(float(main), d * d_a, acc), acc = fmaf(-(dmin * d_a), float(mins), acc)
 *   HL_TYPE_Q6_K_R16: total = sum_g sc_g * (sum of group g's unsigned quants u = q + 32 times the
 *                     activation's - 32 * bsum_g) over the 16 groups of 16; acc = fmaf(float(total), d * d_a, acc)
 */
#include <math.h>

#include "common.h"
#include "gemm.h"
#include "quants.h"

/* ---- Q4_K ---------------------------------------------------------------------------------------- */

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
static int q4_k_quant(const block_q4_K_r16 *blk, int r, int i) {
    const int byte = 32 * (i / 64) + i % 32;
    const int q = (int)(blk->qs[byte / 4][r] >> (8 * (byte % 4))) & 0xFF;
    return i % 64 < 32 ? q & 0x0F : q >> 4;
}

/* acc after one super-block of row r against activation block y. */
static float q4_k_step(const void *panel_block, int r, const block_q8_K *y, float acc) {
    const block_q4_K_r16 *blk = panel_block;
    int32_t main = 0, mins = 0;
    for (int j = 0; j < 8; j++) {
        int32_t dot = 0;
        for (int i = 32 * j; i < 32 * j + 32; i++) dot += q4_k_quant(blk, r, i) * y->qs[i];
        main += blk->sc[j][r] * dot;
        mins += blk->mn[j][r] * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
    }
    acc = fmaf((float)main, hl_fp16_to_fp32(blk->d[r]) * y->d, acc);
    return fmaf(-(hl_fp16_to_fp32(blk->dmin[r]) * y->d), (float)mins, acc);
}

/* ---- Q6_K ---------------------------------------------------------------------------------------- */

/* Group g (elements 16g + 4i + j) of a block's quants q, as unsigned quants u = q + 32: byte j of ql dword
 * 2g + (i & 1) holds quarter i's u in its low (i < 2) or high (i >= 2) nibble, and byte j of qh dword g its two
 * high bits at bits 2i..2i+1. */
static void q6_k_pack_group(const int8_t *q, int g, uint8_t a[4], uint8_t b[4], uint8_t h[4]) {
    for (int j = 0; j < 4; j++) {
        uint8_t u[4]; /* quarter i's element */
        for (int i = 0; i < 4; i++) u[i] = (uint8_t)(q[16 * g + 4 * i + j] + 32);
        a[j] = (uint8_t)((u[0] & 15) | (u[2] & 15) << 4);
        b[j] = (uint8_t)((u[1] & 15) | (u[3] & 15) << 4);
        h[j] = (uint8_t)(u[0] >> 4 | (u[1] >> 4) << 2 | (u[2] >> 4) << 4 | (u[3] >> 4) << 6);
    }
}

void hl_repack_q6_k_panel(const char *src, size_t row_bytes, int64_t nb, char *dst) {
    block_q6_K_r16 *out = (block_q6_K_r16 *)dst;
    for (int64_t b = 0; b < nb; b++)
        for (int r = 0; r < HL_R16_ROWS; r++) {
            const block_q6_K *blk = (const block_q6_K *)(src + (size_t)r * row_bytes) + b;
            int8_t q[QK_K];
            hl_q6_k_quants(blk, q);
            out[b].d[r] = blk->d;
            for (int g = 0; g < QK_K / 16; g++) {
                uint8_t lo[4], hi[4], h[4];
                out[b].sc[g][r] = blk->scales[g];
                q6_k_pack_group(q, g, lo, hi, h);
                memcpy(&out[b].ql[2 * g][r], lo, 4);
                memcpy(&out[b].ql[2 * g + 1][r], hi, 4);
                memcpy(&out[b].qh[g][r], h, 4);
            }
        }
}

/* Byte `byte` of row r's dwords `dw` (a [k][16] array). */
#define ROW_BYTE(dw, r, byte) ((int)((dw)[(byte) / 4][r] >> (8 * ((byte) % 4))) & 0xFF)

/* Unsigned quant of element e = 16g + 4i + j of row r (q6_k_pack_group's layout). */
static int q6_k_quant(const block_q6_K_r16 *blk, int r, int e) {
    const int g = e / 16, i = (e / 4) % 4, j = e % 4;
    const int low = ROW_BYTE(blk->ql, r, 4 * (2 * g + (i & 1)) + j);
    return ((i & 2 ? low >> 4 : low) & 0x0F) | ((ROW_BYTE(blk->qh, r, 4 * g + j) >> (2 * i)) & 3) << 4;
}

/* acc after one super-block of row r against activation block y. */
static float q6_k_step(const void *panel_block, int r, const block_q8_K *y, float acc) {
    const block_q6_K_r16 *blk = panel_block;
    int32_t total = 0;
    for (int g = 0; g < QK_K / 16; g++) {
        int32_t dot = 0;
        for (int e = 16 * g; e < 16 * g + 16; e++) dot += q6_k_quant(blk, r, e) * y->qs[e];
        total += blk->sc[g][r] * (dot - 32 * y->bsums[g]);
    }
    return fmaf((float)total, hl_fp16_to_fp32(blk->d[r]) * y->d, acc);
}

/* ---- the scalar kernels ----------------------------------------------------------------------------- */

typedef float (*super_block_fn)(const void *panel_block, int r, const block_q8_K *y, float acc);

static void reference(super_block_fn step, size_t block_bytes, int64_t n, int64_t nr, int64_t nt, const void *w,
                      size_t w_stride, const void *a, size_t a_stride, float *dst, size_t dst_stride) {
    const int64_t nb = n / QK_K;
    for (int64_t p = 0; p < nr / HL_R16_ROWS; p++) {
        const char *panel = (const char *)w + (size_t)p * HL_R16_ROWS * w_stride;
        for (int64_t t = 0; t < nt; t++) {
            const block_q8_K *y = (const block_q8_K *)((const char *)a + (size_t)t * a_stride);
            for (int r = 0; r < HL_R16_ROWS; r++) {
                float acc = 0.0f;
                for (int64_t b = 0; b < nb; b++) acc = step(panel + (size_t)b * block_bytes, r, &y[b], acc);
                dst[(size_t)t * dst_stride + (size_t)(p * HL_R16_ROWS + r)] = acc;
            }
        }
    }
}

void hl_gemm_q4_k_r16_ref(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                          size_t a_stride, float *dst, size_t dst_stride) {
    reference(q4_k_step, sizeof(block_q4_K_r16), n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
}

void hl_gemm_q6_k_r16_ref(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                          size_t a_stride, float *dst, size_t dst_stride) {
    reference(q6_k_step, sizeof(block_q6_K_r16), n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
}
