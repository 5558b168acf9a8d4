/*
 * K-quant weight quantizers (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) behind hl_quantize.
 * Layouts: quants.h and quants.md §1-2; the dequantizers of quants_kquants.c
 * define what the bytes mean.
 *
 * Algorithm, per 256-element super-block (after llama.cpp's reference
 * quantizers, but with unit weights: it minimises the plain squared error):
 *
 * 1. Fit every sub-block (16 elements; 32 for Q4_K/Q5_K) on its own.
 *    Affine formats (Q2_K q∈[0,3], Q4_K q∈[0,15], Q5_K q∈[0,31]), x ≈ s·q − m
 *    with m ≥ 0: lo = min(0, min x), hi = max x. The first candidate is plain
 *    min/max rounding (s = (hi−lo)/nmax, m = −lo). Then for each inverse scale
 *    iscale = (nmax + rmin + k·rdelta)/(hi − lo), k = 0..nstep, round
 *    q = round(iscale·(x − lo)) and solve the 2×2 least-squares problem for
 *    (s, m) given those q (if it wants m < 0, m = 0 and s = Σxq/Σq²). The
 *    candidate with the least squared error wins (errors come from the sums
 *    Σq, Σq², Σxq, Σx, Σx², one pass per candidate).
 *    Symmetric formats (Q3_K q∈[−4,3], Q6_K q∈[−32,31]), x ≈ s·q: with xmax
 *    the signed element of largest |x|, candidates iscale = −(nmax + 0.1k)/xmax,
 *    k = −9..9 (k = 0 maps xmax onto −nmax, the longer side of the range);
 *    q = round(iscale·x), s = Σxq/Σq², error Σx² − (Σxq)²/Σq². The best q
 *    are then refined by coordinate descent: each q_i moves to its optimum
 *    x_i·Σ'q²/Σ'xq given the others (Σ' leaves i out) while that lowers the
 *    error, for at most 5 sweeps.
 * 2. Quantize the sub-block scales against one f16 super-block scale:
 *    unsigned (Q2_K: 4-bit scales and mins, Q4_K/Q5_K: 6-bit): d = half(max s/smax),
 *    sc = round(s/d) (likewise dmin and the mins); signed (Q3_K: 6-bit −32..31,
 *    Q6_K: int8): d = half(sbig/−32 resp. sbig/−128), sbig the signed scale of
 *    largest |s|, sc = round(s/d) clamped. Halves saturate at ±65504 instead
 *    of overflowing to inf.
 * 3. Requantize every element against its final sub-block scale d·sc (and
 *    min dmin·mn) exactly as the dequantizers evaluate them: q = round((x+M)/D)
 *    or round(x/D), clamped to the format's range.
 * 4. Pack into the block layout.
 *
 * Rounding is to nearest even; NaN inputs give defined (meaningless) blocks.
 */
#include <math.h>
#include <string.h>

#include "common.h"
#include "quantize.h"
#include "quants.h"

#define H2F(h) hl_fp16_to_fp32(h)
#define HALF_MAX 65504.0f
#define SYM_SUB 16 /* elements per sub-block of Q3_K and Q6_K */

/* ------------------------------------------------------------------- helpers */

/* v rounded to nearest even and clamped to [lo, hi]; NaN gives lo. */
static inline int round_clamp(float v, int lo, int hi) {
    if (!(v > (float)lo)) return lo;
    if (v >= (float)hi) return hi;
    return (int)lrintf(v);
}

/* f as a half, saturating at the largest finite half. */
static inline uint16_t half_sat(float f) {
    return hl_fp32_to_fp16(f > HALF_MAX ? HALF_MAX : f < -HALF_MAX ? -HALF_MAX : f);
}

static inline float inverse_or_zero(float d) { return d != 0.0f ? 1.0f / d : 0.0f; }

/* ------------------------------------------------------- 1. sub-block fits */

/* Σq, Σq², Σxq of one candidate quantization of a sub-block. */
typedef struct {
    double l, l2, xl;
} cand_sums;

/* Σ(s·q + off − x)² from the sums (n elements, Σx = sx, Σx² = sx2). */
static double affine_error(const cand_sums *c, int n, double sx, double sx2, double s, double off) {
    return s * s * c->l2 + 2 * s * off * c->l + n * off * off - 2 * s * c->xl - 2 * off * sx + sx2;
}

/* Sums for q = round(iscale·(x − lo)) clamped to [0, nmax]. */
static cand_sums affine_candidate(const float *x, int n, int nmax, float iscale, float lo) {
    cand_sums c = {0, 0, 0};
    for (int i = 0; i < n; i++) {
        const int q = round_clamp(iscale * (x[i] - lo), 0, nmax);
        c.l += q;
        c.l2 += q * q;
        c.xl += (double)x[i] * q;
    }
    return c;
}

/* Least-squares (s, off) with off ≤ 0 for a candidate's quants; 0 if degenerate. */
static int affine_solve(const cand_sums *c, int n, double sx, double *s, double *off) {
    const double det = n * c->l2 - c->l * c->l;
    if (det <= 0) return 0;
    *s = (n * c->xl - sx * c->l) / det;
    *off = (c->l2 * sx - c->l * c->xl) / det;
    if (*off > 0) {
        *off = 0;
        *s = c->xl / c->l2;
    }
    return 1;
}

typedef struct {
    int sub;      /* elements per sub-block */
    int nmax;     /* largest quant */
    int smax;     /* largest sub-block scale / min integer */
    float rmin, rdelta;
    int nstep;    /* candidates: iscale numerator nmax + rmin + k*rdelta, k = 0..nstep */
} affine_format;

/* Fits x ≈ s·q − m (m ≥ 0) to one sub-block; returns s, stores m. */
static float fit_affine(const float *x, const affine_format *f, float *m) {
    const int n = f->sub;
    float lo = x[0], hi = x[0];
    double sx = 0, sx2 = 0;
    for (int i = 0; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
        sx += x[i];
        sx2 += (double)x[i] * x[i];
    }
    if (lo > 0) lo = 0;
    if (!(hi > lo)) { /* constant non-positive sub-block (or NaN) */
        *m = -lo;
        return 0.0f;
    }
    double best_s = (hi - lo) / f->nmax, best_off = lo;
    const cand_sums c0 = affine_candidate(x, n, f->nmax, f->nmax / (hi - lo), lo);
    double best_err = affine_error(&c0, n, sx, sx2, best_s, best_off);
    for (int k = 0; k <= f->nstep; k++) {
        const float iscale = (f->nmax + f->rmin + k * f->rdelta) / (hi - lo);
        const cand_sums c = affine_candidate(x, n, f->nmax, iscale, lo);
        double s, off;
        if (!affine_solve(&c, n, sx, &s, &off)) continue;
        const double err = affine_error(&c, n, sx, sx2, s, off);
        if (err < best_err) {
            best_err = err;
            best_s = s;
            best_off = off;
        }
    }
    *m = (float)-best_off;
    return (float)best_s;
}

/* The signed element of largest magnitude. */
static float signed_absmax(const float *x, int n) {
    float m = 0.0f, amax = 0.0f;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            m = x[i];
        }
    }
    return m;
}

/* Coordinate descent on the quants q (range [-nmax, nmax-1]) maximising (Σxq)²/Σq². */
static void refine_symmetric(const float *x, int n, int nmax, int *q, double *lx, double *l2) {
    for (int sweep = 0; sweep < 5; sweep++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const double slx = *lx - (double)x[i] * q[i], sl2 = *l2 - q[i] * q[i];
            if (slx == 0) continue;
            const int nq = round_clamp((float)(x[i] * sl2 / slx), -nmax, nmax - 1);
            const double nlx = slx + (double)x[i] * nq, nl2 = sl2 + nq * nq;
            if (nq == q[i] || nl2 <= 0 || nlx * nlx * *l2 <= *lx * *lx * nl2) continue;
            q[i] = nq;
            *lx = nlx;
            *l2 = nl2;
            changed = 1;
        }
        if (!changed) break;
    }
}

/* Fits x ≈ s·q, q ∈ [-nmax, nmax-1], to one sub-block of SYM_SUB elements; returns s. */
static float fit_symmetric(const float *x, int nmax) {
    const int n = SYM_SUB;
    const float xmax = signed_absmax(x, n);
    if (xmax == 0.0f) return 0.0f;
    int q[SYM_SUB], best_q[SYM_SUB];
    double best_lx = 0, best_l2 = 1;
    for (int k = -9; k <= 9; k++) {
        const float iscale = -(nmax + 0.1f * k) / xmax;
        double lx = 0, l2 = 0;
        for (int i = 0; i < n; i++) {
            q[i] = round_clamp(iscale * x[i], -nmax, nmax - 1);
            lx += (double)x[i] * q[i];
            l2 += q[i] * q[i];
        }
        if (l2 > 0 && lx * lx * best_l2 > best_lx * best_lx * l2) {
            memcpy(best_q, q, sizeof q);
            best_lx = lx;
            best_l2 = l2;
        }
    }
    if (best_lx == 0) return 0.0f;
    refine_symmetric(x, n, nmax, best_q, &best_lx, &best_l2);
    return (float)(best_lx / best_l2);
}

/* ------------------------------------------------ 2. super-block scales */

/* v[j] ≥ 0 -> q[j] = round(v[j]/d) in [0, qmax] with d = half(max v / qmax); returns half(d). */
static uint16_t quantize_unsigned_scales(const float *v, int n, int qmax, uint8_t *q) {
    float vmax = 0.0f;
    for (int j = 0; j < n; j++) vmax = fmaxf(vmax, v[j]);
    const uint16_t d = half_sat(vmax / qmax);
    const float id = inverse_or_zero(H2F(d));
    for (int j = 0; j < n; j++) q[j] = (uint8_t)round_clamp(v[j] * id, 0, qmax);
    return d;
}

/* v[j] -> q[j] = round(v[j]/d) in [-qneg, qneg-1] with d = half(vbig/-qneg); returns half(d). */
static uint16_t quantize_signed_scales(const float *v, int n, int qneg, int8_t *q) {
    const uint16_t d = half_sat(signed_absmax(v, n) / -qneg);
    const float id = inverse_or_zero(H2F(d));
    for (int j = 0; j < n; j++) q[j] = (int8_t)round_clamp(v[j] * id, -qneg, qneg - 1);
    return d;
}

/* ---------------------------------------------- 1-3 for a whole super-block */

/* Affine super-block: halves d, dmin; per sub-block sc, mn; quants q[256] in [0, nmax]. */
typedef struct {
    uint16_t d, dmin;
    uint8_t sc[QK_K / 16], mn[QK_K / 16];
    uint8_t q[QK_K];
} affine_block;

static void quantize_affine(const float *x, const affine_format *f, affine_block *b) {
    const int nsub = QK_K / f->sub;
    float s[QK_K / 16], m[QK_K / 16];
    for (int j = 0; j < nsub; j++) s[j] = fit_affine(x + j * f->sub, f, &m[j]);
    b->d = quantize_unsigned_scales(s, nsub, f->smax, b->sc);
    b->dmin = quantize_unsigned_scales(m, nsub, f->smax, b->mn);
    const float d = H2F(b->d), dmin = H2F(b->dmin);
    for (int j = 0; j < nsub; j++) {
        const float scale = d * (float)b->sc[j], min = dmin * (float)b->mn[j];
        const float id = inverse_or_zero(scale);
        for (int i = j * f->sub; i < (j + 1) * f->sub; i++)
            b->q[i] = (uint8_t)round_clamp((x[i] + min) * id, 0, f->nmax);
    }
}

/* Symmetric super-block of 16 sub-blocks of 16: half d; scales sc; quants q[256] in [-nmax, nmax-1]. */
typedef struct {
    uint16_t d;
    int8_t sc[QK_K / SYM_SUB];
    int8_t q[QK_K];
} symmetric_block;

static void quantize_symmetric(const float *x, int nmax, int qneg, symmetric_block *b) {
    float s[QK_K / SYM_SUB];
    for (int j = 0; j < QK_K / SYM_SUB; j++) s[j] = fit_symmetric(x + SYM_SUB * j, nmax);
    b->d = quantize_signed_scales(s, QK_K / SYM_SUB, qneg, b->sc);
    const float d = H2F(b->d);
    for (int j = 0; j < QK_K / SYM_SUB; j++) {
        const float id = inverse_or_zero(d * (float)b->sc[j]);
        for (int i = SYM_SUB * j; i < SYM_SUB * (j + 1); i++)
            b->q[i] = (int8_t)round_clamp(x[i] * id, -nmax, nmax - 1);
    }
}

/* --------------------------------------------------------------- 4. packing */

/* Q2_K/Q3_K low bits: element 128h + 32j + m (m < 32) in bits 2j..2j+1 of qs[32h + m]. */
static void pack_2bit(const uint8_t *u, uint8_t qs[QK_K / 4]) {
    for (int h = 0; h < 2; h++)
        for (int m = 0; m < 32; m++) {
            const uint8_t *e = u + 128 * h + m;
            qs[32 * h + m] = (uint8_t)((e[0] & 3) | (e[32] & 3) << 2 | (e[64] & 3) << 4 | (e[96] & 3) << 6);
        }
}

/* Q4_K/Q5_K low nibbles: element 64g + l in lo(qs[32g + l]), 64g + 32 + l in hi(qs[32g + l]). */
static void pack_4bit_k(const uint8_t *u, uint8_t qs[QK_K / 2]) {
    for (int g = 0; g < 4; g++)
        for (int l = 0; l < 32; l++) qs[32 * g + l] = (uint8_t)((u[64 * g + l] & 0xF) | (u[64 * g + 32 + l] & 0xF) << 4);
}

/* Q4_K/Q5_K 12 scale bytes (inverse of hl_get_scale_min_k4), sc and mn 6-bit:
 * j < 4: S[j] = sc_j | hi2(sc_{j+4}) << 6, S[j+4] = mn_j | hi2(mn_{j+4}) << 6;
 * S[j+8] = lo4(sc_{j+4}) | lo4(mn_{j+4}) << 4. */
static void pack_scales_k4(const uint8_t sc[8], const uint8_t mn[8], uint8_t S[12]) {
    for (int j = 0; j < 4; j++) {
        S[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
        S[j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
        S[j + 8] = (uint8_t)((sc[j + 4] & 0xF) | (mn[j + 4] & 0xF) << 4);
    }
}

/* Q3_K: v_s = sc_s + 32 (6 bits); low 4 bits in lo(S[s]) (s < 8) or hi(S[s-8]);
 * high 2 bits at bits 2(s/4) of S[8 + s%4]. */
static void pack_scales_q3_k(const int8_t sc[16], uint8_t S[12]) {
    memset(S, 0, 12);
    for (int s = 0; s < 16; s++) {
        const int v = sc[s] + 32;
        S[s % 8] |= (uint8_t)((v & 0xF) << (s < 8 ? 0 : 4));
        S[8 + s % 4] |= (uint8_t)((v >> 4) << (2 * (s / 4)));
    }
}

/* ------------------------------------------------------------ row quantizers */

static const affine_format FORMAT_Q2_K = {16, 3, 15, -0.5f, 0.1f, 15};
static const affine_format FORMAT_Q4_K = {32, 15, 63, -1.0f, 0.1f, 20};
static const affine_format FORMAT_Q5_K = {32, 31, 63, -0.5f, 0.1f, 15};

/* block_q2_K (84 B): scales[16] (lo nibble scale, hi nibble min, per 16 elements);
 * qs[64] 2-bit quants (pack_2bit); d, dmin halves. y = d·sc·q − dmin·mn. */
void hl_quantize_row_q2_K(const float *x, void *vy, int64_t n) {
    block_q2_K *y = vy;
    affine_block b;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        quantize_affine(x, &FORMAT_Q2_K, &b);
        for (int j = 0; j < 16; j++) y[i].scales[j] = (uint8_t)(b.sc[j] | b.mn[j] << 4);
        pack_2bit(b.q, y[i].qs);
        y[i].d = b.d;
        y[i].dmin = b.dmin;
    }
}

/* block_q3_K (110 B): hmask[32] (bit 4h+j of hmask[m]: bit 2 of the offset quant u = q+4 of
 * element 128h + 32j + m); qs[64] low 2 bits of u (pack_2bit); scales[12] (pack_scales_q3_k); d half.
 * y = d·sc·q, q ∈ [-4, 3]. */
void hl_quantize_row_q3_K(const float *x, void *vy, int64_t n) {
    block_q3_K *y = vy;
    symmetric_block b;
    uint8_t u[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        quantize_symmetric(x, 4, 32, &b);
        memset(y[i].hmask, 0, sizeof y[i].hmask);
        for (int e = 0; e < QK_K; e++) {
            u[e] = (uint8_t)(b.q[e] + 4);
            y[i].hmask[e % 32] |= (uint8_t)((u[e] >> 2) << (e / 32));
        }
        pack_2bit(u, y[i].qs);
        pack_scales_q3_k(b.sc, y[i].scales);
        y[i].d = b.d;
    }
}

/* block_q4_K (144 B): d, dmin halves; scales[12] (pack_scales_k4); qs[128] nibbles (pack_4bit_k).
 * y = d·sc·q − dmin·mn per 32-element sub-block. */
void hl_quantize_row_q4_K(const float *x, void *vy, int64_t n) {
    block_q4_K *y = vy;
    affine_block b;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        quantize_affine(x, &FORMAT_Q4_K, &b);
        y[i].d = b.d;
        y[i].dmin = b.dmin;
        pack_scales_k4(b.sc, b.mn, y[i].scales);
        pack_4bit_k(b.q, y[i].qs);
    }
}

/* block_q5_K (176 B): as Q4_K plus qh[32]: bit 4 of the quant of element 32b + l at bit b of qh[l]. */
void hl_quantize_row_q5_K(const float *x, void *vy, int64_t n) {
    block_q5_K *y = vy;
    affine_block b;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        quantize_affine(x, &FORMAT_Q5_K, &b);
        y[i].d = b.d;
        y[i].dmin = b.dmin;
        pack_scales_k4(b.sc, b.mn, y[i].scales);
        pack_4bit_k(b.q, y[i].qs);
        memset(y[i].qh, 0, sizeof y[i].qh);
        for (int e = 0; e < QK_K; e++) y[i].qh[e % 32] |= (uint8_t)((b.q[e] >> 4) << (e / 32));
    }
}

/* block_q6_K (210 B): ql[128], qh[64], scales[16] int8, d half. With u = q + 32 (6 bits) and
 * e = 128h + 32c + l: low 4 bits in ql[64h + l + 32(c&1)] (lo nibble for c < 2, hi for c ≥ 2),
 * high 2 bits at bits 2c..2c+1 of qh[32h + l]. y = d·sc·q, q ∈ [-32, 31]. */
void hl_quantize_row_q6_K(const float *x, void *vy, int64_t n) {
    block_q6_K *y = vy;
    symmetric_block b;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        quantize_symmetric(x, 32, 128, &b);
        memset(y[i].ql, 0, sizeof y[i].ql);
        memset(y[i].qh, 0, sizeof y[i].qh);
        for (int e = 0; e < QK_K; e++) {
            const int h = e / 128, c = (e / 32) % 4, l = e % 32, u = b.q[e] + 32;
            y[i].ql[64 * h + l + 32 * (c & 1)] |= (uint8_t)((u & 0xF) << (c < 2 ? 0 : 4));
            y[i].qh[32 * h + l] |= (uint8_t)((u >> 4) << (2 * c));
        }
        memcpy(y[i].scales, b.sc, sizeof y[i].scales);
        y[i].d = b.d;
    }
}
