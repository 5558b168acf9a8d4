/*
 * Per-type kernels, part 1: the traits table and run-time dispatch, the float
 * types (F32, F16, BF16), the 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1,
 * Q8_0) and the Q8_0 / Q8_1 activation quantizers.
 *
 * Reference kernels here are plain scalar C written to be read next to
 * quants.md. Quantized dot products follow llama.cpp's CPU backend: the
 * integer sum of a block's weight quants times its activation quants, scaled
 * once by the product of the two block scales. Dequantisation reproduces the
 * float32 evaluation order of the `gguf` Python package, so it matches it
 * bit for bit.
 *
 * K-quants live in quants_kquants.c, SIMD kernels in quants_avx2.c.
 */
#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "common.h"
#include "quants.h"
#include "gemm.h"

_Static_assert(sizeof(block_q4_0) == 18, "q4_0 size");
_Static_assert(sizeof(block_q4_1) == 20, "q4_1 size");
_Static_assert(sizeof(block_q5_0) == 22, "q5_0 size");
_Static_assert(sizeof(block_q5_1) == 24, "q5_1 size");
_Static_assert(sizeof(block_q8_0) == 34, "q8_0 size");
_Static_assert(sizeof(block_q8_1) == 40, "q8_1 size");
_Static_assert(sizeof(block_q2_K) == 84, "q2_K size");
_Static_assert(sizeof(block_q3_K) == 110, "q3_K size");
_Static_assert(sizeof(block_q4_K) == 144, "q4_K size");
_Static_assert(sizeof(block_q5_K) == 176, "q5_K size");
_Static_assert(sizeof(block_q6_K) == 210, "q6_K size");
_Static_assert(sizeof(block_q8_K) == 292, "q8_K size");

#define H2F(h) hl_fp16_to_fp32(h)

/* ---------------------------------------------------------------- float types */

static void to_float_f32(const void *x, float *y, int64_t n) {
    memcpy(y, x, (size_t)n * sizeof(float));
}

static void to_float_f16(const void *x, float *y, int64_t n) {
    const uint16_t *h = x;
    for (int64_t i = 0; i < n; i++) y[i] = hl_fp16_to_fp32(h[i]);
}

static void to_float_bf16(const void *x, float *y, int64_t n) {
    const uint16_t *h = x;
    for (int64_t i = 0; i < n; i++) y[i] = hl_bf16_to_fp32(h[i]);
}

/* F32 and F16 weights are dotted against F32 activations, BF16 weights against BF16 ones (llama.cpp's
 * vec_dot_type, for the CPUs' BF16 dot products); accumulated in double. */
static void vec_dot_f32_ref(int64_t n, float *s, const void *w, const void *a) {
    const float *x = w, *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)x[i] * y[i];
    *s = (float)sum;
}

static void vec_dot_f16_ref(int64_t n, float *s, const void *w, const void *a) {
    const uint16_t *x = w;
    const float *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)hl_fp16_to_fp32(x[i]) * y[i];
    *s = (float)sum;
}

static void vec_dot_bf16_ref(int64_t n, float *s, const void *w, const void *a) {
    const uint16_t *x = w, *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)hl_bf16_to_fp32(x[i]) * hl_bf16_to_fp32(y[i]);
    *s = (float)sum;
}

/* BF16 activations: each value rounded to nearest even (hl_fp32_to_bf16, as gguf writes BF16 weights). */
static void from_float_bf16_ref(const float *x, void *vy, int64_t n) {
    uint16_t *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = hl_fp32_to_bf16(x[i]);
}

/* ------------------------------------------------------ 32-element weight types */

/* Element e of a 32-element block: low nibbles hold 0..15, high nibbles 16..31. */
static inline int nibble(const uint8_t *qs, int e) {
    return e < 16 ? (qs[e] & 0xF) : (qs[e - 16] >> 4);
}

static inline uint32_t load_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void to_float_q4_0(const void *x, float *y, int64_t n) {
    const block_q4_0 *b = x;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = H2F(b[i].d);
        for (int e = 0; e < QK; e++) y[e] = d * (float)(nibble(b[i].qs, e) - 8);
    }
}

static void to_float_q4_1(const void *x, float *y, int64_t n) {
    const block_q4_1 *b = x;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = H2F(b[i].d), m = H2F(b[i].m);
        for (int e = 0; e < QK; e++) y[e] = d * (float)nibble(b[i].qs, e) + m;
    }
}

/* 5-bit quant e of a Q5 block: nibble plus bit e of qh as bit 4. */
static inline int q5(const uint8_t *qs, uint32_t qh, int e) {
    return nibble(qs, e) | (int)(((qh >> e) & 1) << 4);
}

static void to_float_q5_0(const void *x, float *y, int64_t n) {
    const block_q5_0 *b = x;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = H2F(b[i].d);
        const uint32_t qh = load_u32(b[i].qh);
        for (int e = 0; e < QK; e++) y[e] = d * (float)(q5(b[i].qs, qh, e) - 16);
    }
}

static void to_float_q5_1(const void *x, float *y, int64_t n) {
    const block_q5_1 *b = x;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = H2F(b[i].d), m = H2F(b[i].m);
        const uint32_t qh = load_u32(b[i].qh);
        for (int e = 0; e < QK; e++) y[e] = d * (float)q5(b[i].qs, qh, e) + m;
    }
}

static void to_float_q8_0(const void *x, float *y, int64_t n) {
    const block_q8_0 *b = x;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = H2F(b[i].d);
        for (int e = 0; e < QK; e++) y[e] = (float)b[i].qs[e] * d;
    }
}

/* Reference dot products: exact integer block sums, float block scales. */
static void vec_dot_q4_0_q8_0_ref(int64_t n, float *s, const void *w, const void *a) {
    const block_q4_0 *x = w;
    const block_q8_0 *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n / QK; i++) {
        int sumi = 0;
        for (int e = 0; e < QK; e++) sumi += (nibble(x[i].qs, e) - 8) * y[i].qs[e];
        sum += (double)(H2F(x[i].d) * H2F(y[i].d)) * sumi;
    }
    *s = (float)sum;
}

/* Q4_1 . Q8_1 = d_w d_a sum(q_w q_a) + m_w s_a, where s_a = d_a sum(q_a). */
static void vec_dot_q4_1_q8_1_ref(int64_t n, float *s, const void *w, const void *a) {
    const block_q4_1 *x = w;
    const block_q8_1 *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n / QK; i++) {
        int sumi = 0;
        for (int e = 0; e < QK; e++) sumi += nibble(x[i].qs, e) * y[i].qs[e];
        sum += (double)(H2F(x[i].d) * H2F(y[i].d)) * sumi + (double)(H2F(x[i].m) * y[i].s);
    }
    *s = (float)sum;
}

static void vec_dot_q5_0_q8_0_ref(int64_t n, float *s, const void *w, const void *a) {
    const block_q5_0 *x = w;
    const block_q8_0 *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n / QK; i++) {
        const uint32_t qh = load_u32(x[i].qh);
        int sumi = 0;
        for (int e = 0; e < QK; e++) sumi += (q5(x[i].qs, qh, e) - 16) * y[i].qs[e];
        sum += (double)(H2F(x[i].d) * H2F(y[i].d)) * sumi;
    }
    *s = (float)sum;
}

static void vec_dot_q5_1_q8_1_ref(int64_t n, float *s, const void *w, const void *a) {
    const block_q5_1 *x = w;
    const block_q8_1 *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n / QK; i++) {
        const uint32_t qh = load_u32(x[i].qh);
        int sumi = 0;
        for (int e = 0; e < QK; e++) sumi += q5(x[i].qs, qh, e) * y[i].qs[e];
        sum += (double)(H2F(x[i].d) * H2F(y[i].d)) * sumi + (double)(H2F(x[i].m) * y[i].s);
    }
    *s = (float)sum;
}

static void vec_dot_q8_0_q8_0_ref(int64_t n, float *s, const void *w, const void *a) {
    const block_q8_0 *x = w;
    const block_q8_0 *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n / QK; i++) {
        int sumi = 0;
        for (int e = 0; e < QK; e++) sumi += x[i].qs[e] * y[i].qs[e];
        sum += (double)(H2F(x[i].d) * H2F(y[i].d)) * sumi;
    }
    *s = (float)sum;
}

/* ------------------------------------------------ Q8_0 / Q8_1 activation quantizers */

/* One 32-element block, quants.md §3: d = amax/127, q = roundf(x/d)
 * (half away from zero), d stored as half. Returns d and sum(q). A block holding a NaN or an infinity gets
 * d = NaN and q = 0, so that every dot product with it is NaN (never a silently finite value). */
static float quantize_block_q8(const float *x, int8_t *qs, int *qsum) {
    float amax = 0.0f;
    int finite = 1;
    for (int e = 0; e < QK; e++) {
        finite &= fabsf(x[e]) <= FLT_MAX;
        amax = fmaxf(amax, fabsf(x[e]));
    }
    *qsum = 0;
    if (!finite) {
        memset(qs, 0, QK);
        return NAN;
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int e = 0; e < QK; e++) {
        qs[e] = (int8_t)roundf(x[e] * id);
        *qsum += qs[e];
    }
    return d;
}

void hl_quantize_row_q8_0_ref(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    int sum;
    for (int64_t i = 0; i < n / QK; i++) y[i].d = hl_fp32_to_fp16(quantize_block_q8(x + i * QK, y[i].qs, &sum));
}

void hl_quantize_row_q8_1_ref(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    int sum;
    for (int64_t i = 0; i < n / QK; i++) {
        const float d = quantize_block_q8(x + i * QK, y[i].qs, &sum);
        y[i].d = hl_fp32_to_fp16(d);
        y[i].unused = 0;
        y[i].s = hl_fp16_to_fp32(y[i].d) * (float)sum; /* exact: 11 + 12 significant bits */
    }
}

/* ------------------------------------------------------------- traits and dispatch */

#define FLOAT_TYPE(nm, sz, tf, dot, ax) \
    {.name = nm, .block_size = 1, .type_size = sz, .vec_dot_type = HL_TYPE_F32, \
     .to_float = tf, .vec_dot = dot, .vec_dot_ref = dot, .axpy = ax, .axpy_ref = ax}
#define QUANT_TYPE(nm, bs, blk, vdt, tf, dot) \
    {.name = nm, .block_size = bs, .type_size = sizeof(blk), .vec_dot_type = vdt, \
     .to_float = tf, .vec_dot = dot, .vec_dot_ref = dot}
#define ACT_TYPE(nm, bs, blk, tf, ff) \
    {.name = nm, .block_size = bs, .type_size = sizeof(blk), .vec_dot_type = -1, \
     .to_float = tf, .from_float = ff, .from_float_ref = ff}

/* F32 is both a weight type and the activation type of the float weights
 * (from_float = plain copy), so it also carries from_float. */
static void from_float_f32(const float *x, void *y, int64_t n) {
    memcpy(y, x, (size_t)n * sizeof(float));
}

/* y += alpha * x, one fmaf per element, for the float types. */
static void axpy_f32_ref(int64_t n, float alpha, const void *vx, float *y) {
    const float *x = vx;
    for (int64_t i = 0; i < n; i++) y[i] = fmaf(alpha, x[i], y[i]);
}

static void axpy_f16_ref(int64_t n, float alpha, const void *vx, float *y) {
    const uint16_t *x = vx;
    for (int64_t i = 0; i < n; i++) y[i] = fmaf(alpha, hl_fp16_to_fp32(x[i]), y[i]);
}

static void axpy_bf16_ref(int64_t n, float alpha, const void *vx, float *y) {
    const uint16_t *x = vx;
    for (int64_t i = 0; i < n; i++) y[i] = fmaf(alpha, hl_bf16_to_fp32(x[i]), y[i]);
}

static hl_type_traits traits_f32 = {
    .name = "f32", .block_size = 1, .type_size = 4, .vec_dot_type = HL_TYPE_F32,
    .to_float = to_float_f32, .from_float = from_float_f32, .from_float_ref = from_float_f32,
    .vec_dot = vec_dot_f32_ref, .vec_dot_ref = vec_dot_f32_ref, .axpy = axpy_f32_ref, .axpy_ref = axpy_f32_ref};
static hl_type_traits traits_f16 = FLOAT_TYPE("f16", 2, to_float_f16, vec_dot_f16_ref, axpy_f16_ref);
/* BF16 is both a weight type and its own activation type. */
static hl_type_traits traits_bf16 = {
    .name = "bf16", .block_size = 1, .type_size = 2, .vec_dot_type = HL_TYPE_BF16,
    .to_float = to_float_bf16, .from_float = from_float_bf16_ref, .from_float_ref = from_float_bf16_ref,
    .vec_dot = vec_dot_bf16_ref, .vec_dot_ref = vec_dot_bf16_ref, .axpy = axpy_bf16_ref, .axpy_ref = axpy_bf16_ref};
static hl_type_traits traits_q4_0 =
    QUANT_TYPE("q4_0", QK, block_q4_0, HL_TYPE_Q8_0, to_float_q4_0, vec_dot_q4_0_q8_0_ref);
static hl_type_traits traits_q4_1 =
    QUANT_TYPE("q4_1", QK, block_q4_1, HL_TYPE_Q8_1, to_float_q4_1, vec_dot_q4_1_q8_1_ref);
static hl_type_traits traits_q5_0 =
    QUANT_TYPE("q5_0", QK, block_q5_0, HL_TYPE_Q8_0, to_float_q5_0, vec_dot_q5_0_q8_0_ref);
static hl_type_traits traits_q5_1 =
    QUANT_TYPE("q5_1", QK, block_q5_1, HL_TYPE_Q8_1, to_float_q5_1, vec_dot_q5_1_q8_1_ref);
/* Q8_0 is both a weight type and an activation type. */
static hl_type_traits traits_q8_0 = {
    .name = "q8_0", .block_size = QK, .type_size = sizeof(block_q8_0), .vec_dot_type = HL_TYPE_Q8_0,
    .to_float = to_float_q8_0, .from_float = hl_quantize_row_q8_0_ref,
    .from_float_ref = hl_quantize_row_q8_0_ref,
    .vec_dot = vec_dot_q8_0_q8_0_ref, .vec_dot_ref = vec_dot_q8_0_q8_0_ref};
/* Q4_0, Q8_0, Q4_K and Q6_K repacked into 16-row panels (gemm_r16.c): only whole-panel kernels. */
#define R16_TYPE(nm, bs, row_block_bytes, vdt, ref) \
    {.name = nm, .block_size = bs, .type_size = row_block_bytes, .vec_dot_type = vdt, \
     .gemm = ref, .gemm_ref = ref, .panel_rows = HL_R16_ROWS}
static hl_type_traits traits_q4_0_r16 = R16_TYPE("q4_0_r16", QK, sizeof(block_q4_0), HL_TYPE_Q8_0, hl_gemm_q4_0_r16_ref);
static hl_type_traits traits_q8_0_r16 = R16_TYPE("q8_0_r16", QK, sizeof(block_q8_0), HL_TYPE_Q8_0, hl_gemm_q8_0_r16_ref);
static hl_type_traits traits_q4_K_r16 =
    R16_TYPE("q4_K_r16", QK_K, HL_Q4_K_R16_ROW_BYTES, HL_TYPE_Q8_K, hl_gemm_q4_k_r16_ref);
static hl_type_traits traits_q6_K_r16 = R16_TYPE("q6_K_r16", QK_K, sizeof(block_q6_K), HL_TYPE_Q8_K, hl_gemm_q6_k_r16_ref);
static hl_type_traits traits_q8_1 = ACT_TYPE("q8_1", QK, block_q8_1, NULL, hl_quantize_row_q8_1_ref);
static hl_type_traits traits_q2_K =
    QUANT_TYPE("q2_K", QK_K, block_q2_K, HL_TYPE_Q8_K, hl_dequantize_row_q2_K, hl_vec_dot_q2_K_q8_K_ref);
static hl_type_traits traits_q3_K =
    QUANT_TYPE("q3_K", QK_K, block_q3_K, HL_TYPE_Q8_K, hl_dequantize_row_q3_K, hl_vec_dot_q3_K_q8_K_ref);
static hl_type_traits traits_q4_K =
    QUANT_TYPE("q4_K", QK_K, block_q4_K, HL_TYPE_Q8_K, hl_dequantize_row_q4_K, hl_vec_dot_q4_K_q8_K_ref);
static hl_type_traits traits_q5_K =
    QUANT_TYPE("q5_K", QK_K, block_q5_K, HL_TYPE_Q8_K, hl_dequantize_row_q5_K, hl_vec_dot_q5_K_q8_K_ref);
static hl_type_traits traits_q6_K =
    QUANT_TYPE("q6_K", QK_K, block_q6_K, HL_TYPE_Q8_K, hl_dequantize_row_q6_K, hl_vec_dot_q6_K_q8_K_ref);
static hl_type_traits traits_q8_K =
    ACT_TYPE("q8_K", QK_K, block_q8_K, hl_dequantize_row_q8_K, hl_quantize_row_q8_K_ref);

static const char *simd_name = "scalar";
static atomic_int init_state; /* 0 = not started, 1 = running, 2 = done */

#if defined(__x86_64__) && !defined(HL_NO_SIMD)
static void choose_avx2(void) {
    traits_f32.vec_dot = hl_vec_dot_f32_avx2;
    traits_f16.vec_dot = hl_vec_dot_f16_avx2;
    traits_f16.to_float = hl_to_float_f16_avx2;
    traits_bf16.vec_dot = hl_vec_dot_bf16_avx2;
    traits_bf16.from_float = hl_from_float_bf16_avx2;
    traits_f32.axpy = hl_axpy_f32_avx2;
    traits_f16.axpy = hl_axpy_f16_avx2;
    traits_bf16.axpy = hl_axpy_bf16_avx2;
    traits_q4_0.vec_dot = hl_vec_dot_q4_0_q8_0_avx2;
    traits_q4_1.vec_dot = hl_vec_dot_q4_1_q8_1_avx2;
    traits_q5_0.vec_dot = hl_vec_dot_q5_0_q8_0_avx2;
    traits_q5_1.vec_dot = hl_vec_dot_q5_1_q8_1_avx2;
    traits_q8_0.vec_dot = hl_vec_dot_q8_0_q8_0_avx2;
    traits_q8_0.from_float = hl_quantize_row_q8_0_avx2;
    traits_q8_1.from_float = hl_quantize_row_q8_1_avx2;
    traits_q8_K.from_float = hl_quantize_row_q8_K_avx2;
    traits_q2_K.vec_dot = hl_vec_dot_q2_K_q8_K_avx2;
    traits_q3_K.vec_dot = hl_vec_dot_q3_K_q8_K_avx2;
    traits_q4_K.vec_dot = hl_vec_dot_q4_K_q8_K_avx2;
    traits_q5_K.vec_dot = hl_vec_dot_q5_K_q8_K_avx2;
    traits_q6_K.vec_dot = hl_vec_dot_q6_K_q8_K_avx2;
    simd_name = "avx2";
}
#endif

static hl_cpu_features detect_cpu(void) {
    hl_cpu_features f = {0, 0, 0};
#if defined(__x86_64__) && !defined(HL_NO_SIMD)
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    f.avx512 = f.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vnni");
    f.bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16");
#endif
    return f;
}

static void choose_kernels(void) {
    const hl_cpu_features cpu = detect_cpu();
#if defined(__x86_64__) && !defined(HL_NO_SIMD)
    if (cpu.avx2) choose_avx2();
    if (cpu.avx512) simd_name = "avx512";
#endif
    hl_gemm_install(&cpu);
}

void hl_quants_init(void) {
    if (atomic_load_explicit(&init_state, memory_order_acquire) == 2) return;
    int expected = 0;
    if (atomic_compare_exchange_strong(&init_state, &expected, 1)) {
        choose_kernels();
        atomic_store_explicit(&init_state, 2, memory_order_release);
        return;
    }
    while (atomic_load_explicit(&init_state, memory_order_acquire) != 2) {
        /* another thread is choosing; it takes microseconds */
    }
}

const char *hl_quants_simd_name(void) {
    hl_quants_init();
    return simd_name;
}

const hl_type_traits *hl_get_type_traits(int32_t type) {
    hl_quants_init();
    return hl_traits_for_install(type);
}

hl_type_traits *hl_traits_for_install(int32_t type) {
    switch (type) {
    case HL_TYPE_F32: return &traits_f32;
    case HL_TYPE_F16: return &traits_f16;
    case HL_TYPE_BF16: return &traits_bf16;
    case HL_TYPE_Q4_0: return &traits_q4_0;
    case HL_TYPE_Q4_0_R16: return &traits_q4_0_r16;
    case HL_TYPE_Q8_0_R16: return &traits_q8_0_r16;
    case HL_TYPE_Q4_K_R16: return &traits_q4_K_r16;
    case HL_TYPE_Q6_K_R16: return &traits_q6_K_r16;
    case HL_TYPE_Q4_1: return &traits_q4_1;
    case HL_TYPE_Q5_0: return &traits_q5_0;
    case HL_TYPE_Q5_1: return &traits_q5_1;
    case HL_TYPE_Q8_0: return &traits_q8_0;
    case HL_TYPE_Q8_1: return &traits_q8_1;
    case HL_TYPE_Q2_K: return &traits_q2_K;
    case HL_TYPE_Q3_K: return &traits_q3_K;
    case HL_TYPE_Q4_K: return &traits_q4_K;
    case HL_TYPE_Q5_K: return &traits_q5_K;
    case HL_TYPE_Q6_K: return &traits_q6_K;
    case HL_TYPE_Q8_K: return &traits_q8_K;
    default: return NULL;
    }
}
