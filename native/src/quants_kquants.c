/*
 * Per-type kernels, part 2: K-quants (256-element super-blocks; layouts in
 * quants.h and quants.md §1-2) and the Q8_K activation quantizer.
 *
 * Every K-quant is dotted against Q8_K. The reference dot products compute,
 * per super-block, the exact integer sum over sub-blocks of
 * scale_s * sum(q_w * q_a), then multiply once by d_w * d_a; the "-dmin * min"
 * term of Q2_K/Q4_K/Q5_K uses Q8_K's bsums (sums of 16 activation quants).
 * Dequantisation follows gguf's float32 evaluation order: (d*scale)*q - dmin*min.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "common.h"
#include "quants.h"

#define H2F(h) hl_fp16_to_fp32(h)

/* --------------------------------------------------------------- Q8_K quantizer */

/* Round to nearest, ties to even (valid for |f| < 2^22), as ggml's nearest_int. */
static inline int nearest_int(float f) {
    float v = f + 12582912.0f;
    int32_t i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

/* quants.md §3: m = value of largest |x| (first wins); iscale = -127/m;
 * q = min(127, rne(iscale*x)); d = 1/iscale (negative when m > 0). A block holding a NaN or an infinity gets
 * d = NaN and q = 0 (its dot products are NaN, never silently finite). */
void hl_quantize_row_q8_K_ref(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float amax = 0.0f, m = 0.0f;
        int finite = 1;
        for (int e = 0; e < QK_K; e++) {
            float ax = x[e] < 0 ? -x[e] : x[e];
            finite &= ax <= FLT_MAX;
            if (ax > amax) { amax = ax; m = x[e]; }
        }
        if (amax == 0.0f || !finite) {
            memset(&y[i], 0, sizeof y[i]);
            y[i].d = finite ? 0.0f : NAN;
            continue;
        }
        const float iscale = -127.0f / m;
        for (int e = 0; e < QK_K; e++) {
            int v = nearest_int(iscale * x[e]);
            y[i].qs[e] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y[i].qs[16 * j + l];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1.0f / iscale;
    }
}

void hl_dequantize_row_q8_K(const void *vx, float *y, int64_t n) {
    const block_q8_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K)
        for (int e = 0; e < QK_K; e++) y[e] = x[i].d * (float)x[i].qs[e];
}

/* ------------------------------------------------------------------------ Q2_K */
/* e = 128h + 32j + 16k + l: q = (qs[32h+16k+l] >> 2j) & 3, sub-block 8h+2j+k = e/16. */

static inline int q2_k_quant(const block_q2_K *b, int e) {
    int h = e / 128, j = (e / 32) % 4, kl = e % 32;
    return (b->qs[32 * h + kl] >> (2 * j)) & 3;
}

void hl_dequantize_row_q2_K(const void *vx, float *y, int64_t n) {
    const block_q2_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = H2F(x[i].d), dmin = H2F(x[i].dmin);
        for (int e = 0; e < QK_K; e++) {
            const uint8_t sc = x[i].scales[e / 16];
            const float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
            y[e] = dl * (float)q2_k_quant(&x[i], e) - ml;
        }
    }
}

void hl_vec_dot_q2_K_q8_K_ref(int64_t n, float *s, const void *w, const void *a) {
    const block_q2_K *x = w;
    const block_q8_K *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int sumi = 0, summ = 0;
        for (int sb = 0; sb < 16; sb++) {
            int dot = 0;
            for (int l = 0; l < 16; l++) dot += q2_k_quant(&x[i], 16 * sb + l) * y[i].qs[16 * sb + l];
            sumi += (x[i].scales[sb] & 0xF) * dot;
            summ += (x[i].scales[sb] >> 4) * y[i].bsums[sb];
        }
        sum += (double)(H2F(x[i].d) * y[i].d) * sumi - (double)(H2F(x[i].dmin) * y[i].d) * summ;
    }
    *s = (float)sum;
}

/* ------------------------------------------------------------------------ Q3_K */
/* Same split as Q2_K; high bit (hmask[16k+l] >> (4h+j)) & 1, q = q2 - (bit ? 0 : 4). */

static inline int q3_k_quant(const block_q3_K *b, int e) {
    int h = e / 128, j = (e / 32) % 4, kl = e % 32;
    int q2 = (b->qs[32 * h + kl] >> (2 * j)) & 3;
    int hb = (b->hmask[kl] >> (4 * h + j)) & 1;
    return q2 - (hb ? 0 : 4);
}

void hl_dequantize_row_q3_K(const void *vx, float *y, int64_t n) {
    const block_q3_K *x = vx;
    int16_t sc[16];
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = H2F(x[i].d);
        hl_unpack_q3_k_scales(x[i].scales, sc);
        for (int e = 0; e < QK_K; e++) {
            const float dl = d * (float)sc[e / 16];
            y[e] = dl * (float)q3_k_quant(&x[i], e);
        }
    }
}

void hl_vec_dot_q3_K_q8_K_ref(int64_t n, float *s, const void *w, const void *a) {
    const block_q3_K *x = w;
    const block_q8_K *y = a;
    int16_t sc[16];
    double sum = 0.0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        hl_unpack_q3_k_scales(x[i].scales, sc);
        int sumi = 0;
        for (int sb = 0; sb < 16; sb++) {
            int dot = 0;
            for (int l = 0; l < 16; l++) dot += q3_k_quant(&x[i], 16 * sb + l) * y[i].qs[16 * sb + l];
            sumi += sc[sb] * dot;
        }
        sum += (double)(H2F(x[i].d) * y[i].d) * sumi;
    }
    *s = (float)sum;
}

/* ---------------------------------------------------------------- Q4_K and Q5_K */
/* e = 64g + 32k + l: q = k ? hi(qs[32g+l]) : lo(qs[32g+l]) (+16 * bit (2g+k) of qh[l]
 * for Q5_K); sub-block 2g+k has 6-bit scale sc and min mn (hl_get_scale_min_k4). */

static inline int q4_k_quant(const uint8_t *qs, int e) {
    int g = e / 64, k = (e / 32) % 2, l = e % 32;
    return k ? qs[32 * g + l] >> 4 : qs[32 * g + l] & 0xF;
}

static inline int q5_k_quant(const block_q5_K *b, int e) {
    return q4_k_quant(b->qs, e) | (((b->qh[e % 32] >> (e / 32)) & 1) << 4);
}

/* One sub-block of 32 at a time (its scale and min hoisted), so the loop vectorizes. */
void hl_dequantize_row_q4_K(const void *vx, float *y, int64_t n) {
    const block_q4_K *x = vx;
    uint8_t sc, mn;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = H2F(x[i].d), dmin = H2F(x[i].dmin);
        for (int sb = 0; sb < 8; sb++) {
            hl_get_scale_min_k4(sb, x[i].scales, &sc, &mn);
            const float dl = d * (float)sc, ml = dmin * (float)mn;
            const uint8_t *q = x[i].qs + 32 * (sb / 2);
            const int shift = 4 * (sb % 2);
            for (int l = 0; l < 32; l++) y[32 * sb + l] = dl * (float)((q[l] >> shift) & 0xF) - ml;
        }
    }
}

void hl_dequantize_row_q5_K(const void *vx, float *y, int64_t n) {
    const block_q5_K *x = vx;
    uint8_t sc, mn;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = H2F(x[i].d), dmin = H2F(x[i].dmin);
        for (int sb = 0; sb < 8; sb++) {
            hl_get_scale_min_k4(sb, x[i].scales, &sc, &mn);
            const float dl = d * (float)sc, ml = dmin * (float)mn;
            const uint8_t *q = x[i].qs + 32 * (sb / 2);
            const int shift = 4 * (sb % 2);
            for (int l = 0; l < 32; l++) {
                const int v = ((q[l] >> shift) & 0xF) | (((x[i].qh[l] >> sb) & 1) << 4);
                y[32 * sb + l] = dl * (float)v - ml;
            }
        }
    }
}

/* Sum over the 8 sub-blocks of mn_s * (activation sum of sub-block s). */
static inline int k4_min_sum(const uint8_t *scales, const int16_t *bsums) {
    int summ = 0;
    uint8_t sc, mn;
    for (int sb = 0; sb < 8; sb++) {
        hl_get_scale_min_k4(sb, scales, &sc, &mn);
        summ += mn * (bsums[2 * sb] + bsums[2 * sb + 1]);
    }
    return summ;
}

void hl_vec_dot_q4_K_q8_K_ref(int64_t n, float *s, const void *w, const void *a) {
    const block_q4_K *x = w;
    const block_q8_K *y = a;
    double sum = 0.0;
    uint8_t sc, mn;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int sumi = 0;
        for (int sb = 0; sb < 8; sb++) {
            hl_get_scale_min_k4(sb, x[i].scales, &sc, &mn);
            int dot = 0;
            for (int l = 0; l < 32; l++) dot += q4_k_quant(x[i].qs, 32 * sb + l) * y[i].qs[32 * sb + l];
            sumi += sc * dot;
        }
        const int summ = k4_min_sum(x[i].scales, y[i].bsums);
        sum += (double)(H2F(x[i].d) * y[i].d) * sumi - (double)(H2F(x[i].dmin) * y[i].d) * summ;
    }
    *s = (float)sum;
}

void hl_vec_dot_q5_K_q8_K_ref(int64_t n, float *s, const void *w, const void *a) {
    const block_q5_K *x = w;
    const block_q8_K *y = a;
    double sum = 0.0;
    uint8_t sc, mn;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int sumi = 0;
        for (int sb = 0; sb < 8; sb++) {
            hl_get_scale_min_k4(sb, x[i].scales, &sc, &mn);
            int dot = 0;
            for (int l = 0; l < 32; l++) dot += q5_k_quant(&x[i], 32 * sb + l) * y[i].qs[32 * sb + l];
            sumi += sc * dot;
        }
        const int summ = k4_min_sum(x[i].scales, y[i].bsums);
        sum += (double)(H2F(x[i].d) * y[i].d) * sumi - (double)(H2F(x[i].dmin) * y[i].d) * summ;
    }
    *s = (float)sum;
}

/* ------------------------------------------------------------------------ Q6_K */
/* One run of 32 (h, c) at a time, so the loop vectorizes. */
void hl_q6_k_quants(const block_q6_K *b, int8_t q[QK_K]) {
    for (int h = 0; h < 2; h++)
        for (int c = 0; c < 4; c++) {
            const uint8_t *L = b->ql + 64 * h + 32 * (c & 1), *H = b->qh + 32 * h;
            const int shift = (c & 2) ? 4 : 0;
            int8_t *out = q + 128 * h + 32 * c;
            for (int l = 0; l < 32; l++)
                out[l] = (int8_t)((((L[l] >> shift) & 0xF) | (((H[l] >> (2 * c)) & 3) << 4)) - 32);
        }
}

void hl_dequantize_row_q6_K(const void *vx, float *y, int64_t n) {
    const block_q6_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = H2F(x[i].d);
        int8_t q[QK_K];
        hl_q6_k_quants(&x[i], q);
        for (int e = 0; e < QK_K; e++) y[e] = (d * (float)x[i].scales[e / 16]) * (float)q[e];
    }
}

void hl_vec_dot_q6_K_q8_K_ref(int64_t n, float *s, const void *w, const void *a) {
    const block_q6_K *x = w;
    const block_q8_K *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int sumi = 0;
        int8_t q[QK_K];
        hl_q6_k_quants(&x[i], q);
        for (int sb = 0; sb < 16; sb++) {
            int dot = 0;
            for (int l = 0; l < 16; l++) dot += q[16 * sb + l] * y[i].qs[16 * sb + l];
            sumi += x[i].scales[sb] * dot;
        }
        sum += (double)(H2F(x[i].d) * y[i].d) * sumi;
    }
    *s = (float)sum;
}
