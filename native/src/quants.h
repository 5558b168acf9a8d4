/*
 * Per-type kernels: block layouts, dequantisation, activation quantisation and
 * dot products. Each weight type is dotted against activations converted once
 * to its vec_dot_type (F32 for F32 and F16 weights, BF16 for BF16 ones,
 * Q8_0/Q8_1/Q8_K for quantized ones), as llama.cpp's CPU backend does. Each kernel has a plain scalar
 * reference; hl_quants_init() picks SIMD versions from cpuid once.
 */
#ifndef HL_QUANTS_H
#define HL_QUANTS_H

#include <stddef.h>
#include <stdint.h>

#define QK 32   /* elements per block of the 32-element types */
#define QK_K 256 /* elements per K-quant super-block */

/* dst[0..n) = dequantised src (n a multiple of the block size). */
typedef void (*hl_to_float_fn)(const void *src, float *dst, int64_t n);
/* Converts an F32 activation row to the activation type. */
typedef void (*hl_from_float_fn)(const float *src, void *dst, int64_t n);
/* *s = dot of a weight row w (n elements) and an activation row a in vec_dot_type. */
typedef void (*hl_vec_dot_fn)(int64_t n, float *s, const void *w, const void *a);
/* y[i] = fmaf(alpha, x[i], y[i]) for a row x of a float type (rounding independent of the split). */
typedef void (*hl_axpy_fn)(int64_t n, float alpha, const void *x, float *y);
/*
 * Many axpys at once: y[t][j] = fmaf(alpha[t * alpha_stride + k], x[k][j], y[t][j]) for k = 0..nk-1 in
 * that order, j < n, t < nt; x holds nk rows of a float type x_stride bytes apart, y nt rows y_stride floats
 * apart. Every element rounds exactly as nk axpys in order would (the LoRA B half of a float adapter).
 */
typedef void (*hl_axpy_rows_fn)(int64_t n, int64_t nk, int64_t nt, const void *x, size_t x_stride,
                                const float *alpha, size_t alpha_stride, float *y, size_t y_stride);
/*
 * The multi-token mat-mul: dst[t * dst_stride + r] = W[r] . A[t] for r < nr, t < nt, with W nr weight
 * rows of n elements w_stride bytes apart and A nt activation rows (vec_dot_type) a_stride bytes apart.
 * Contract for every implementation: the float value of each (r, t) depends only on W[r], A[t] and
 * whether nt < HL_GEMM_BATCH_MIN, never otherwise on nr, nt or where r and t sit in the call, so a token
 * gets the same result in any batch or split of the same kind: decode-sized calls may take a streaming
 * path whose float rounding differs from the batch path's (within the kernel tolerance).
 */
#define HL_GEMM_BATCH_MIN 4
typedef void (*hl_gemm_fn)(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride,
                           const void *a, size_t a_stride, float *dst, size_t dst_stride);

typedef struct {
    const char *name;
    int64_t block_size;   /* elements per block */
    size_t type_size;     /* bytes per block */
    int32_t vec_dot_type; /* activation type for dot products */
    hl_to_float_fn to_float;           /* NULL for activation-only types */
    hl_from_float_fn from_float;       /* chosen kernel (activation types only) */
    hl_from_float_fn from_float_ref;
    hl_vec_dot_fn vec_dot;             /* chosen kernel (weight types only) */
    hl_vec_dot_fn vec_dot_ref;
    hl_axpy_fn axpy;                   /* chosen kernel (F32, F16, BF16 only) */
    hl_axpy_fn axpy_ref;
    hl_gemm_fn gemm;                   /* chosen tiled kernel (weight types); NULL = vec_dot per pair */
    hl_gemm_fn gemm_ref;               /* panel types: the scalar kernel (row types use vec_dot_ref) */
    int64_t panel_rows;                /* > 1: rows interleaved in panels of this many (no row kernels) */
    hl_axpy_rows_fn axpy_rows;         /* chosen tiled kernel (float types); NULL = axpy per (t, k) */
} hl_type_traits;

/* NULL for a type the core does not know. */
const hl_type_traits *hl_get_type_traits(int32_t type);
/* Chooses SIMD kernels once (thread-safe, idempotent). */
void hl_quants_init(void);
/* The kernel set chosen: "avx512", "avx2" or "scalar". */
const char *hl_quants_simd_name(void);

/* What the CPU offers, as hl_quants_init() found it (all 0 when built with -DHL_NO_SIMD). */
typedef struct {
    int avx2;   /* AVX2 + FMA + F16C */
    int avx512; /* AVX-512 F, BW, VL, DQ and VNNI */
    int bf16;   /* AVX-512 BF16 */
} hl_cpu_features;

/* For the kernel installers only (gemm_*.c), while hl_quants_init() runs: the mutable traits of a type. */
hl_type_traits *hl_traits_for_install(int32_t type);

/* ------------------------------------------------------------------------
 * Internal to quants*.c and kernels_api.c: block layouts (quants.md §1) and
 * the per-file kernel entry points the traits table is built from. Halves
 * are stored as raw uint16_t bits; all structs have the exact file size.
 * ---------------------------------------------------------------------- */
typedef struct { uint16_t d; uint8_t qs[QK / 2]; } block_q4_0;                 /* 18 B */
/* HL_TYPE_Q4_0_R16 and HL_TYPE_Q8_0_R16 (gemm_r16.c): per panel of HL_R16_ROWS rows and block b, the rows'
 * d, then dword j of every row's qs, row r in lane r: as many bytes as the 16 rows' blocks b took. */
#define HL_R16_ROWS 16
typedef struct { uint16_t d[HL_R16_ROWS]; uint32_t qs[4][HL_R16_ROWS]; } block_q4_0_r16; /* 288 B */
typedef struct { uint16_t d[HL_R16_ROWS]; uint32_t qs[8][HL_R16_ROWS]; } block_q8_0_r16; /* 544 B */
/* HL_TYPE_Q4_K_R16 (gemm_kquants_r16.c): per panel and super-block, the rows' d and dmin, sub-block j's 6-bit
 * scale and min of row r as bytes, then dword k of every row's qs: 16 x 148 B. */
typedef struct {
    uint16_t d[HL_R16_ROWS], dmin[HL_R16_ROWS];
    uint8_t sc[8][HL_R16_ROWS], mn[8][HL_R16_ROWS];
    uint32_t qs[QK_K / 8][HL_R16_ROWS];
} block_q4_K_r16;                                                                        /* 2368 B */
#define HL_Q4_K_R16_ROW_BYTES (sizeof(block_q4_K_r16) / HL_R16_ROWS)                   /* 148 B */
/* HL_TYPE_Q6_K_R16 (gemm_kquants_r16.c): per panel and super-block, the rows' d, group g's scale of row r, then
 * every row's 6-bit quants regrouped by group of 16 elements: ql dwords 2g and 2g + 1 hold group g's low
 * nibbles, qh dword g its high bits (q6_k_pack_group): 16 x 210 B, as Q6_K. */
typedef struct {
    uint16_t d[HL_R16_ROWS];
    int8_t sc[QK_K / 16][HL_R16_ROWS];
    uint32_t ql[QK_K / 8][HL_R16_ROWS];
    uint32_t qh[QK_K / 16][HL_R16_ROWS];
} block_q6_K_r16;                                                                        /* 3360 B */
typedef struct { uint16_t d, m; uint8_t qs[QK / 2]; } block_q4_1;              /* 20 B */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_0;  /* 22 B */
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_1; /* 24 B */
typedef struct { uint16_t d; int8_t qs[QK]; } block_q8_0;                      /* 34 B */
/* Ours, not llama.cpp's 36-byte block: s = half(d) * sum(qs) kept exactly in a float, so the
 * Q4_1/Q5_1 dots equal dequant(w) . dequant(a) up to float32 accumulation. */
typedef struct { uint16_t d, unused; float s; int8_t qs[QK]; } block_q8_1;     /* 40 B */
typedef struct {                                                               /* 84 B */
    uint8_t scales[QK_K / 16]; /* lo nibble: scale, hi nibble: min (per 16 elements) */
    uint8_t qs[QK_K / 4];      /* 2-bit quants */
    uint16_t d, dmin;
} block_q2_K;
typedef struct {                                                               /* 110 B */
    uint8_t hmask[QK_K / 8];   /* high bit (set = no -4 offset) */
    uint8_t qs[QK_K / 4];      /* low 2 bits */
    uint8_t scales[12];        /* 16 packed 6-bit signed scales (offset 32) */
    uint16_t d;
} block_q3_K;
typedef struct {                                                               /* 144 B */
    uint16_t d, dmin;
    uint8_t scales[12];        /* 8 packed 6-bit scales + 8 6-bit mins */
    uint8_t qs[QK_K / 2];
} block_q4_K;
typedef struct {                                                               /* 176 B */
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[QK_K / 8];      /* fifth bit */
    uint8_t qs[QK_K / 2];
} block_q5_K;
typedef struct {                                                               /* 210 B */
    uint8_t ql[QK_K / 2];      /* low 4 bits */
    uint8_t qh[QK_K / 4];      /* high 2 bits */
    int8_t scales[QK_K / 16];
    uint16_t d;
} block_q6_K;
typedef struct {                                                               /* 292 B */
    float d;                   /* may be negative */
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];  /* sums of qs over each 16 elements */
} block_q8_K;

/* Q4_K/Q5_K: scale and min of sub-block j (0..7) from the 12 packed bytes. */
static inline void hl_get_scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *mn = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}
/* Q3_K: the sixteen signed scales (-32..31) from the 12 packed bytes. */
static inline void hl_unpack_q3_k_scales(const uint8_t *S, int16_t out[16]) {
    for (int s = 0; s < 16; s++) {
        int low4 = s < 8 ? (S[s] & 0xF) : (S[s - 8] >> 4);
        int high2 = (S[8 + s % 4] >> (2 * (s / 4))) & 3;
        out[s] = (int16_t)((low4 | (high2 << 4)) - 32);
    }
}

/* quants.c: float and 32-element types, Q8_0/Q8_1 quantizers. */
void hl_quantize_row_q8_0_ref(const float *x, void *y, int64_t n);
void hl_quantize_row_q8_1_ref(const float *x, void *y, int64_t n);
/* quants_kquants.c: K-quants and the Q8_K quantizer. */
/* A Q6_K block's quants q (-32..31) in element order: element 128h + 32c + l is a nibble of ql[64h + l (+32 for
 * odd c)] (the high one for c >= 2) with bits 2c..2c+1 of qh[32h + l] above it, less 32. */
void hl_q6_k_quants(const block_q6_K *b, int8_t q[QK_K]);
void hl_quantize_row_q8_K_ref(const float *x, void *y, int64_t n);
void hl_dequantize_row_q8_K(const void *x, float *y, int64_t n);
void hl_dequantize_row_q2_K(const void *x, float *y, int64_t n);
void hl_dequantize_row_q3_K(const void *x, float *y, int64_t n);
void hl_dequantize_row_q4_K(const void *x, float *y, int64_t n);
void hl_dequantize_row_q5_K(const void *x, float *y, int64_t n);
void hl_dequantize_row_q6_K(const void *x, float *y, int64_t n);
void hl_vec_dot_q2_K_q8_K_ref(int64_t n, float *s, const void *w, const void *a);
void hl_vec_dot_q3_K_q8_K_ref(int64_t n, float *s, const void *w, const void *a);
void hl_vec_dot_q4_K_q8_K_ref(int64_t n, float *s, const void *w, const void *a);
void hl_vec_dot_q5_K_q8_K_ref(int64_t n, float *s, const void *w, const void *a);
void hl_vec_dot_q6_K_q8_K_ref(int64_t n, float *s, const void *w, const void *a);

#if defined(__x86_64__) && !defined(HL_NO_SIMD)
/* quants_avx2.c: AVX2+FMA+F16C kernels (call only when the CPU has them;
 * -DHL_NO_SIMD compiles them out and keeps every kernel scalar).
 * The activation quantizers round half to even (vs. half away from zero in
 * the references), so a quant may differ by 1 only at an exact .5 tie. */
void hl_vec_dot_f32_avx2(int64_t n, float *s, const void *w, const void *a);
void hl_vec_dot_f16_avx2(int64_t n, float *s, const void *w, const void *a);
void hl_vec_dot_bf16_avx2(int64_t n, float *s, const void *w, const void *a);
void hl_from_float_bf16_avx2(const float *x, void *y, int64_t n);
void hl_vec_dot_q4_0_q8_0_avx2(int64_t n, float *s, const void *w, const void *a);
void hl_vec_dot_q4_1_q8_1_avx2(int64_t n, float *s, const void *w, const void *a);
void hl_vec_dot_q5_0_q8_0_avx2(int64_t n, float *s, const void *w, const void *a);
void hl_vec_dot_q5_1_q8_1_avx2(int64_t n, float *s, const void *w, const void *a);
void hl_vec_dot_q8_0_q8_0_avx2(int64_t n, float *s, const void *w, const void *a);
void hl_vec_dot_q2_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *a);
void hl_vec_dot_q3_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *a);
void hl_vec_dot_q4_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *a);
void hl_vec_dot_q5_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *a);
void hl_vec_dot_q6_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *a);
void hl_quantize_row_q8_0_avx2(const float *x, void *y, int64_t n);
void hl_quantize_row_q8_1_avx2(const float *x, void *y, int64_t n);
void hl_quantize_row_q8_K_avx2(const float *x, void *y, int64_t n);
void hl_axpy_f32_avx2(int64_t n, float alpha, const void *x, float *y);
void hl_axpy_f16_avx2(int64_t n, float alpha, const void *x, float *y);
void hl_axpy_bf16_avx2(int64_t n, float alpha, const void *x, float *y);
void hl_to_float_f16_avx2(const void *x, float *y, int64_t n);
#endif

/* gemm_r16.c: the scalar kernels of HL_TYPE_Q4_0_R16 and HL_TYPE_Q8_0_R16 (hl_gemm_fn over whole panels: nr a
 * multiple of HL_R16_ROWS, w_stride the bytes of one row); the SIMD ones are gemm_q32_panel16.c's. */
void hl_gemm_q4_0_r16_ref(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                          size_t a_stride, float *dst, size_t dst_stride);
void hl_gemm_q8_0_r16_ref(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                          size_t a_stride, float *dst, size_t dst_stride);

/* gemm_kquants_r16.c: 16 Q4_K (Q6_K) rows of nb super-blocks (row_bytes apart) into one Q4_K_R16 (Q6_K_R16)
 * panel; the layouts' scalar kernels (the SIMD ones are gemm_kquants_r16_avx512.c's). */
void hl_repack_q4_k_panel(const char *src, size_t row_bytes, int64_t nb, char *dst);
void hl_gemm_q4_k_r16_ref(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                          size_t a_stride, float *dst, size_t dst_stride);
void hl_repack_q6_k_panel(const char *src, size_t row_bytes, int64_t nb, char *dst);
void hl_gemm_q6_k_r16_ref(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                          size_t a_stride, float *dst, size_t dst_stride);

#endif
