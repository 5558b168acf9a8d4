/*
 * The multi-token mat-mul (hl_gemm_fn in quants.h) and its kernel sets.
 *
 * hl_gemm() is what the graph, the LoRA ops and hl_mat_mul call: the chosen tiled kernel of the
 * weight type, or, for the reference (and for a type without one), vec_dot for every (row, token).
 * Tiled kernels live one family a file (gemm_q32.c, gemm_kquants.c, gemm_float.c); each file's
 * installer puts its kernels into the traits table for the CPU found, once, from hl_quants_init().
 */
#ifndef HL_GEMM_H
#define HL_GEMM_H

#include <stddef.h>
#include <stdint.h>

#include "quants.h"

/* dst[t * dst_stride + r] = W[r] . A[t], r < nr, t < nt (see hl_gemm_fn); ref != 0 forces the reference. */
void hl_gemm(const hl_type_traits *tt, int ref, int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride,
             const void *a, size_t a_stride, float *dst, size_t dst_stride);

/* The same product as one vec_dot per (row, token), rows streamed front to back. */
void hl_gemm_by_vec_dot(hl_vec_dot_fn dot, int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride,
                        const void *a, size_t a_stride, float *dst, size_t dst_stride);

/* y[t][j] += alpha[t][k] * x[k][j] (see hl_axpy_rows_fn) with the chosen kernel or axpy per (t, k). */
void hl_axpy_rows(const hl_type_traits *tt, int64_t n, int64_t nk, int64_t nt, const void *x, size_t x_stride,
                  const float *alpha, size_t alpha_stride, float *y, size_t y_stride);

/* p[0..n_seen) = softmax(p * scale) (sum in double), p[n_seen..n_kv) = 0: attention's causal row (softmax.c). */
typedef void (*hl_softmax_fn)(float *p, int64_t n_seen, int64_t n_kv, float scale);
void hl_softmax_causal(float *p, int64_t n_seen, int64_t n_kv, float scale);

/* g[i] = silu(g[i]) * u[i] for i < n with the chosen kernel, or the scalar reference (swiglu.c). */
typedef void (*hl_swiglu_fn)(float *g, const float *u, int64_t n);
void hl_swiglu_row(float *g, const float *u, int64_t n, int reference);

/* Installs every family's tiled kernels that the CPU can run (called once by hl_quants_init). */
void hl_gemm_install(const hl_cpu_features *cpu);
void hl_gemm_install_q32(const hl_cpu_features *cpu);     /* Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 */
void hl_gemm_install_q32_panel16(const hl_cpu_features *cpu); /* AVX-512 VNNI: Q4_0/Q8_0 batches, q32 decode */
void hl_gemm_install_kquants(const hl_cpu_features *cpu); /* Q2_K .. Q6_K */
void hl_gemm_install_kquants_r16(const hl_cpu_features *cpu); /* AVX-512 VNNI: Q4_K_R16, Q6_K_R16 */
void hl_gemm_install_float(const hl_cpu_features *cpu);   /* F32, F16, BF16 */
void hl_axpy_rows_install(const hl_cpu_features *cpu);    /* F32, F16, BF16 (axpy_rows.c) */
void hl_softmax_install(const hl_cpu_features *cpu);      /* attention's softmax (softmax.c) */
void hl_swiglu_install(const hl_cpu_features *cpu);       /* the feed-forward's silu(gate) * up (swiglu.c) */

#endif
