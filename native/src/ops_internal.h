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

/* mul_mat.c */
int hl_mul_mat_phases(const hl_node *nd);
void hl_op_mul_mat(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth);
size_t hl_mul_mat_work_size(const hl_node *nd, int nth);
/* The node's input x in the activation type of weight_type: x itself for F32, else in the converted layout at
 * `converted` (the shared one at ctx->work, filled by the node's first phase, or a thread's own copy). */
const char *hl_mul_mat_input(const char *converted, const hl_node *nd, int32_t weight_type, size_t *stride);

/* epilogue.c: the node's epilogue on rows [r0[i], r1[i]) of projection i, every token. */
void hl_epilogue_rows(hl_context *ctx, const hl_node *nd, const int64_t *r0, const int64_t *r1);

/* ops_lora.c */
void hl_lora_a_rows(const char *converted, const hl_node *nd, int ith, int nth);
size_t hl_lora_b_scratch_size(const hl_node *nd);
void hl_lora_b_convert(const hl_node *nd, char *scratch);
void hl_lora_b_rows(const hl_node *nd, const hl_proj *p, int64_t r0, int64_t r1, char *scratch);
size_t hl_lora_embd_work_size(const hl_node *nd, int nth);
void hl_lora_embd_add(hl_context *ctx, const hl_node *nd, int64_t t, float *x, int ith);

#endif
