/*
 * The graph's operations: the row lookup and RMS norm here, the mat-mul node in mul_mat.c (with its
 * epilogues in epilogue.c and its LoRA terms in ops_lora.c), attention in attention.c. Each op splits its
 * work among nth threads; hl_graph_compute places a barrier after every phase of every node.
 */
#include <math.h>

#include "core.h"
#include "ops_internal.h"
#include "quants.h"

#define ROW(t, i) ((char *)(t)->data + (size_t)(i) * (t)->row_bytes)

static void op_get_rows(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth) {
    const hl_type_traits *tt = hl_get_type_traits(nd->src0.type);
    int64_t t0, t1;
    hl_split(nd->dst.ne[1], ith, nth, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        tt->to_float(ROW(&nd->src0, ctx->tokens[t]), (float *)ROW(&nd->dst, t), nd->dst.ne[0]);
        if (nd->n_terms) hl_lora_embd_add(ctx, nd, t, (float *)ROW(&nd->dst, t), ith);
    }
}

/* y = x / sqrt(mean(x^2) + eps) * w; the sum of squares in double, as llama.cpp. */
static void op_rms_norm(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth) {
    const int64_t n = nd->src0.ne[0];
    const float *w = nd->src1.data;
    const float eps = ctx->model->hp.rms_eps;
    int64_t t0, t1;
    hl_split(nd->dst.ne[1], ith, nth, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        const float *x = (const float *)ROW(&nd->src0, t);
        float *y = (float *)ROW(&nd->dst, t);
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
        const float scale = 1.0f / sqrtf((float)(sum / n) + eps);
        for (int64_t i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
    }
}

/* dst[:, k] = src0[:, out_rows[k]] (the last layer's wanted rows, packed). */
static void op_gather(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth) {
    int64_t t0, t1;
    hl_split(nd->dst.ne[1], ith, nth, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) memcpy(ROW(&nd->dst, t), ROW(&nd->src0, ctx->out_rows[t]), nd->dst.row_bytes);
}

typedef void (*op_fn)(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth);

static const op_fn OPS[OP_COUNT] = {
    [OP_GET_ROWS] = op_get_rows, [OP_RMS_NORM] = op_rms_norm, [OP_MUL_MAT] = hl_op_mul_mat,
    [OP_ATTENTION] = hl_op_attention, [OP_GATHER] = op_gather,
};

int hl_op_phases(const hl_node *node) { return node->op == OP_MUL_MAT ? hl_mul_mat_phases(node) : 1; }

void hl_op_run(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth) {
    OPS[nd->op](ctx, nd, phase, ith, nth);
}

size_t hl_node_work_size(const hl_node *nd, int nth) {
    switch (nd->op) {
    case OP_MUL_MAT: return hl_mul_mat_work_size(nd, nth);
    case OP_GET_ROWS: return nd->n_terms ? hl_lora_embd_work_size(nd, nth) : 0;
    case OP_ATTENTION: return hl_attention_work_size(nd, nth);
    default: return 0;
    }
}
