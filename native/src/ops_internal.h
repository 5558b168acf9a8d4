/* Helpers shared by ops.c and ops_lora.c. */
#ifndef HL_OPS_INTERNAL_H
#define HL_OPS_INTERNAL_H

#include "core.h"

/* [start, end) of n items for thread ith of nth. */
static inline void hl_split(int64_t n, int ith, int nth, int64_t *start, int64_t *end) {
    int64_t chunk = (n + nth - 1) / nth;
    *start = chunk * ith < n ? chunk * ith : n;
    *end = *start + chunk < n ? *start + chunk : n;
}

static inline float *hl_row_f32(const hl_tensor *t, int64_t i) {
    return (float *)((char *)t->data + (size_t)i * t->row_bytes);
}

/* attention.c */
size_t hl_attention_work_size(const hl_node *nd, int nth);
void hl_op_attention(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth);

/* ops_lora.c */
size_t hl_lora_a_work_size(const hl_node *nd);
int hl_lora_a_phases(const hl_node *nd);
void hl_op_lora_a(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth);
size_t hl_lora_b_work_size(const hl_node *nd);
int hl_lora_b_needs_conversion(const hl_node *nd);
void hl_lora_b_convert(hl_context *ctx, const hl_node *nd, int ith, int nth);
void hl_lora_b_rows(hl_context *ctx, const hl_node *nd, int64_t r0, int64_t r1);
size_t hl_lora_embd_work_size(const hl_node *nd, int nth);
void hl_lora_embd_add(hl_context *ctx, const hl_node *nd, int64_t t, float *x, int ith);

#endif
