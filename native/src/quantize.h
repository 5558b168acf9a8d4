/*
 * Weight quantizers behind hl_quantize (quantize.c: dispatch, threading, float
 * and 32-element types; quantize_kquants.c: K-quants). Block layouts are the
 * structs of quants.h.
 */
#ifndef HL_QUANTIZE_H
#define HL_QUANTIZE_H

#include <stdint.h>

/* Quantizes one row: x holds n elements (a multiple of the block size), y gets the row's blocks. */
typedef void (*hl_quantize_row_fn)(const float *x, void *y, int64_t n);

void hl_quantize_row_q2_K(const float *x, void *y, int64_t n);
void hl_quantize_row_q3_K(const float *x, void *y, int64_t n);
void hl_quantize_row_q4_K(const float *x, void *y, int64_t n);
void hl_quantize_row_q5_K(const float *x, void *y, int64_t n);
void hl_quantize_row_q6_K(const float *x, void *y, int64_t n);

#endif
