/*
 * hl_quantize: argument checks, row splitting over threads, and the quantizers
 * of the float types and the 32-element block types. K-quants are in
 * quantize_kquants.c.
 *
 * The 32-element quantizers reproduce the `gguf` Python package's
 * gguf.quants.quantize byte for byte (quants.md §3). gguf computes them in
 * float32, one rounding per numpy operation, so each expression below is one
 * float32 operation in the same order, never fused into an FMA (GCC does not
 * contract under -std=c11, as build.py compiles; clang obeys the pragma below):
 *   Q8_0  d = amax/127, id = 1/d (0 if d = 0), q = round_half_away(x*id)
 *   Q4_0  m = signed x of largest |x| (first wins), d = m/-8,  q = min(15, trunc(x*id + 8.5))
 *   Q5_0  as Q4_0 with d = m/-16,                              q = min(31, trunc(x*id + 16.5))
 *   Q4_1  d = (max-min)/15, q = min(15, trunc((x-min)*id + 0.5)), stores min
 *   Q5_1  d = (max-min)/31, q = min(31, trunc((x-min)*id + 0.5)), stores min
 * d (and min) are stored as IEEE halves, rounded to nearest even. Inputs that
 * gguf turns into NaN quants (non-finite x, or 1/d overflowing) get defined
 * clamped quants here instead of numpy's platform-dependent casts.
 *
 * F16 equals numpy's astype(float16) (NaN payloads included), BF16 equals
 * gguf's BF16 quantizer (quants.md §2), F32 is a copy.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common.h"
#include "quantize.h"
#include "quants.h"
#include "threadpool.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define MAX_THREADS 512

/* ----------------------------------------------------------------- float types */

static void quantize_row_f32(const float *x, void *y, int64_t n) {
    memcpy(y, x, (size_t)n * sizeof(float));
}

/* numpy's float -> half: round to nearest even; a NaN keeps its sign and top
 * mantissa bits (0x7c00 + (mantissa >> 13), or 0x7c01 if that would be inf). */
static inline uint16_t fp32_to_fp16_numpy(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        uint16_t h = (uint16_t)(0x7c00u | ((bits & 0x7fffffu) >> 13));
        if (h == 0x7c00u) h++;
        return (uint16_t)(((bits >> 16) & 0x8000u) | h);
    }
    return hl_fp32_to_fp16(f);
}

static void quantize_row_f16(const float *x, void *vy, int64_t n) {
    uint16_t *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = fp32_to_fp16_numpy(x[i]);
}

static void quantize_row_bf16(const float *x, void *vy, int64_t n) {
    uint16_t *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = hl_fp32_to_bf16(x[i]);
}

/* ------------------------------------------------------- 32-element block types */

/* trunc(v) clamped to [0, qmax]; NaN gives 0 (gguf: float -> uint8 cast, then clip). */
static inline uint8_t trunc_clamp(float v, int qmax) {
    if (!(v > 0.0f)) return 0;
    if (v >= (float)qmax) return (uint8_t)qmax;
    return (uint8_t)v;
}

static inline float inverse_or_zero(float d) { return d != 0.0f ? 1.0f / d : 0.0f; }

/* The signed element of largest magnitude (the first one on ties, as numpy's argmax). */
static float signed_absmax(const float *x) {
    float m = x[0], amax = fabsf(x[0]);
    for (int e = 1; e < QK; e++) {
        if (fabsf(x[e]) > amax) {
            amax = fabsf(x[e]);
            m = x[e];
        }
    }
    return m;
}

static void min_max(const float *x, float *mn, float *mx) {
    *mn = *mx = x[0];
    for (int e = 1; e < QK; e++) {
        if (x[e] < *mn) *mn = x[e];
        if (x[e] > *mx) *mx = x[e];
    }
}

/* Nibbles of a 32-element block: element e < 16 in the low nibble of qs[e], e >= 16 in the high nibble of qs[e-16]. */
static void pack_nibbles(const uint8_t q[QK], uint8_t qs[QK / 2]) {
    for (int e = 0; e < QK / 2; e++) qs[e] = (uint8_t)((q[e] & 0xF) | (q[e + QK / 2] << 4));
}

/* Bit 4 of q[e] goes to bit e of the little-endian u32 qh. */
static void pack_high_bits(const uint8_t q[QK], uint8_t qh[4]) {
    memset(qh, 0, 4);
    for (int e = 0; e < QK; e++) qh[e / 8] |= (uint8_t)(((q[e] >> 4) & 1) << (e % 8));
}

/* Q4_0 (qmax 15) / Q5_0 (qmax 31) block with h = (qmax+1)/2: d = m/-h, q = min(qmax, trunc(x*id + h + 0.5)). */
static uint16_t quantize_block_sym(const float *x, int qmax, uint8_t q[QK]) {
    const float half_range = (float)((qmax + 1) / 2);
    const float d = signed_absmax(x) / -half_range;
    const float id = inverse_or_zero(d);
    const float offset = half_range + 0.5f;
    for (int e = 0; e < QK; e++) q[e] = trunc_clamp(x[e] * id + offset, qmax);
    return hl_fp32_to_fp16(d);
}

/* Q4_1 (qmax 15) / Q5_1 (qmax 31) block: d = (max-min)/qmax; returns half(d), stores half(min) in *m. */
static uint16_t quantize_block_affine(const float *x, int qmax, uint8_t q[QK], uint16_t *m) {
    float mn, mx;
    min_max(x, &mn, &mx);
    const float d = (mx - mn) / (float)qmax;
    const float id = inverse_or_zero(d);
    for (int e = 0; e < QK; e++) q[e] = trunc_clamp((x[e] - mn) * id + 0.5f, qmax);
    *m = hl_fp32_to_fp16(mn);
    return hl_fp32_to_fp16(d);
}

/* block_q4_0 (18 B): d half; qs[16] nibbles. */
static void quantize_row_q4_0(const float *x, void *vy, int64_t n) {
    block_q4_0 *y = vy;
    uint8_t q[QK];
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        y[i].d = quantize_block_sym(x, 15, q);
        pack_nibbles(q, y[i].qs);
    }
}

/* block_q4_1 (20 B): d half; m half; qs[16] nibbles. */
static void quantize_row_q4_1(const float *x, void *vy, int64_t n) {
    block_q4_1 *y = vy;
    uint8_t q[QK];
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        y[i].d = quantize_block_affine(x, 15, q, &y[i].m);
        pack_nibbles(q, y[i].qs);
    }
}

/* block_q5_0 (22 B): d half; qh[4] (bit 4 of each quant); qs[16] low nibbles. */
static void quantize_row_q5_0(const float *x, void *vy, int64_t n) {
    block_q5_0 *y = vy;
    uint8_t q[QK];
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        y[i].d = quantize_block_sym(x, 31, q);
        pack_high_bits(q, y[i].qh);
        pack_nibbles(q, y[i].qs);
    }
}

/* block_q5_1 (24 B): d half; m half; qh[4]; qs[16]. */
static void quantize_row_q5_1(const float *x, void *vy, int64_t n) {
    block_q5_1 *y = vy;
    uint8_t q[QK];
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        y[i].d = quantize_block_affine(x, 31, q, &y[i].m);
        pack_high_bits(q, y[i].qh);
        pack_nibbles(q, y[i].qs);
    }
}

/* round(v) half away from zero, clamped to [-127, 127]; NaN gives 0. */
static inline int8_t round_q8(float v) {
    if (!(fabsf(v) <= 127.0f)) return (int8_t)(v > 0.0f ? 127 : v < 0.0f ? -127 : 0);
    return (int8_t)roundf(v);
}

/* block_q8_0 (34 B): d half; qs[32] int8. */
static void quantize_row_q8_0(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        float amax = 0.0f;
        for (int e = 0; e < QK; e++) amax = fmaxf(amax, fabsf(x[e]));
        const float d = amax / 127.0f;
        const float id = inverse_or_zero(d);
        for (int e = 0; e < QK; e++) y[i].qs[e] = round_q8(x[e] * id);
        y[i].d = hl_fp32_to_fp16(d);
    }
}

/* ------------------------------------------------------------------ dispatch */

/* NULL for a type hl_quantize does not produce. */
static hl_quantize_row_fn row_quantizer(int32_t type) {
    switch (type) {
    case HL_TYPE_F32: return quantize_row_f32;
    case HL_TYPE_F16: return quantize_row_f16;
    case HL_TYPE_BF16: return quantize_row_bf16;
    case HL_TYPE_Q4_0: return quantize_row_q4_0;
    case HL_TYPE_Q4_1: return quantize_row_q4_1;
    case HL_TYPE_Q5_0: return quantize_row_q5_0;
    case HL_TYPE_Q5_1: return quantize_row_q5_1;
    case HL_TYPE_Q8_0: return quantize_row_q8_0;
    case HL_TYPE_Q2_K: return hl_quantize_row_q2_K;
    case HL_TYPE_Q3_K: return hl_quantize_row_q3_K;
    case HL_TYPE_Q4_K: return hl_quantize_row_q4_K;
    case HL_TYPE_Q5_K: return hl_quantize_row_q5_K;
    case HL_TYPE_Q6_K: return hl_quantize_row_q6_K;
    default: return NULL;
    }
}

typedef struct {
    hl_quantize_row_fn fn;
    const float *src;
    uint8_t *dst;
    int64_t n_rows, n_cols;
    size_t row_bytes;
} quantize_job;

/* Thread ith of nth quantizes rows [n_rows*ith/nth, n_rows*(ith+1)/nth). */
static void quantize_rows(void *arg, int ith, int nth) {
    const quantize_job *job = arg;
    const int64_t r0 = job->n_rows * ith / nth, r1 = job->n_rows * (ith + 1) / nth;
    for (int64_t r = r0; r < r1; r++)
        job->fn(job->src + r * job->n_cols, job->dst + (size_t)r * job->row_bytes, job->n_cols);
}

static hl_status check_args(int32_t type, const float *src, void *dst, int64_t n_rows, int64_t n_cols,
                            int32_t n_threads) {
    const hl_type_traits *t = hl_get_type_traits(type);
    if (!t) return hl_fail(HL_ERR_UNSUPPORTED, "hl_quantize: unknown type %d", (int)type);
    if (!row_quantizer(type))
        return hl_fail(HL_ERR_UNSUPPORTED, "hl_quantize: cannot quantize to %s (an activation-only type)", t->name);
    if (n_rows < 0 || n_cols < 0)
        return hl_fail(HL_ERR_INVALID, "hl_quantize: negative %s %lld", n_rows < 0 ? "row count" : "row length",
                       (long long)(n_rows < 0 ? n_rows : n_cols));
    if (n_cols % t->block_size != 0)
        return hl_fail(HL_ERR_INVALID, "hl_quantize: row length %lld is not a multiple of %s's block size %lld",
                       (long long)n_cols, t->name, (long long)t->block_size);
    if (!src || !dst) return hl_fail(HL_ERR_INVALID, "hl_quantize: %s is NULL", src ? "dst" : "src");
    if (n_threads < 1 || n_threads > MAX_THREADS)
        return hl_fail(HL_ERR_INVALID, "hl_quantize: n_threads %d is outside 1..%d", (int)n_threads, MAX_THREADS);
    const size_t row_bytes = hl_row_size(type, n_cols);
    if (n_cols > 0 && (uint64_t)n_rows > SIZE_MAX / row_bytes)
        return hl_fail(HL_ERR_INVALID, "hl_quantize: %lld rows of %zu bytes overflow the address space",
                       (long long)n_rows, row_bytes);
    return HL_OK;
}

hl_status hl_quantize(int32_t type, const float *src, void *dst, int64_t n_rows, int64_t n_cols, int32_t n_threads) {
    const hl_status st = check_args(type, src, dst, n_rows, n_cols, n_threads);
    if (st != HL_OK) return st;
    quantize_job job = {row_quantizer(type), src, dst, n_rows, n_cols, hl_row_size(type, n_cols)};
    const int nth = n_rows < n_threads ? (int)n_rows : (int)n_threads;
    if (nth <= 1) {
        quantize_rows(&job, 0, 1);
        return HL_OK;
    }
    hl_pool *pool = hl_pool_create(nth);
    if (!pool) return hl_fail(HL_ERR_NOMEM, "hl_quantize: cannot start %d threads", nth);
    hl_pool_run(pool, quantize_rows, &job);
    hl_pool_free(pool);
    return HL_OK;
}
