/*
 * Per-type kernels: block layouts, dequantisation, activation quantisation and
 * dot products. Each weight type is dotted against activations converted once
 * to its vec_dot_type (F32 for float weights, Q8_0/Q8_1/Q8_K for quantized
 * ones), as llama.cpp's CPU backend does. Each kernel has a plain scalar
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
} hl_type_traits;

/* NULL for a type the core does not know. */
const hl_type_traits *hl_get_type_traits(int32_t type);
/* Chooses SIMD kernels once (thread-safe, idempotent). */
void hl_quants_init(void);
/* "avx2" or "scalar". */
const char *hl_quants_simd_name(void);

#endif
