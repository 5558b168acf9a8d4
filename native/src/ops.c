/*
 * The graph's operations. Each op splits its rows among nth threads; ops with
 * two phases (a mat-mul converting its activations first) are separated by a
 * barrier that hl_graph_compute places between phases.
 */
#include <math.h>

#include "core.h"
#include "ops_internal.h"
#include "gemm.h"
#include "quants.h"

/* Weight rows per thread are cut at multiples of this (a multiple of every kernel's row tile). */
#define HL_ROW_ALIGN 16

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

size_t hl_mul_mat_work_size(const hl_tensor *w, int64_t n_tokens) {
    int32_t vdt = hl_get_type_traits(w->type)->vec_dot_type;
    return vdt == HL_TYPE_F32 ? 0 : hl_row_size(vdt, w->ne[0]) * (size_t)n_tokens;
}

/* Phase 0: activations -> vec_dot_type (rows split by token). */
static void mul_mat_convert(hl_context *ctx, const hl_node *nd, int ith, int nth) {
    const int32_t vdt = hl_get_type_traits(nd->src0.type)->vec_dot_type;
    const hl_type_traits *vt = hl_get_type_traits(vdt);
    const int64_t n_in = nd->src0.ne[0];
    const size_t stride = hl_row_size(vdt, n_in);
    int64_t t0, t1;
    hl_split(nd->src1.ne[1], ith, nth, &t0, &t1);
    for (int64_t t = t0; t < t1; t++)
        vt->from_float((const float *)ROW(&nd->src1, t), (char *)ctx->work + t * stride, n_in);
}

/* Rows [r0, r1) of n rows for thread ith of nth, cut at multiples of align so kernel tiles stay whole. */
static void split_rows(int64_t n, int64_t align, int ith, int nth, int64_t *r0, int64_t *r1) {
    const int64_t tiles = (n + align - 1) / align;
    int64_t t0, t1;
    hl_split(tiles, ith, nth, &t0, &t1);
    *r0 = t0 * align < n ? t0 * align : n;
    *r1 = t1 * align < n ? t1 * align : n;
}

/* Phase 1: dst[t][r] = W[r] . x[t] (+ LoRA terms) (+ bias[r]), weight rows split among threads,
 * every token of the batch through the multi-token kernel. */
static void mul_mat_dot(hl_context *ctx, const hl_node *nd, int ith, int nth) {
    const hl_type_traits *tt = hl_get_type_traits(nd->src0.type);
    const int64_t n_in = nd->src0.ne[0], n_tok = nd->src1.ne[1];
    const int is_f32 = tt->vec_dot_type == HL_TYPE_F32;
    const char *act = is_f32 ? nd->src1.data : ctx->work;
    const size_t act_stride = is_f32 ? nd->src1.row_bytes : hl_row_size(tt->vec_dot_type, n_in);
    const size_t dst_stride = nd->dst.row_bytes / sizeof(float);
    const float *bias = nd->src2.data;
    int64_t r0, r1;
    split_rows(nd->src0.ne[1], HL_ROW_ALIGN, ith, nth, &r0, &r1);
    if (r1 > r0)
        hl_gemm(tt, 0, n_in, r1 - r0, n_tok, ROW(&nd->src0, r0), nd->src0.row_bytes, act, act_stride,
                (float *)nd->dst.data + r0, dst_stride);
    if (nd->n_terms) hl_lora_b_rows(ctx, nd, r0, r1); /* y = (W.x + LoRA) + bias */
    for (int64_t t = 0; bias && t < n_tok; t++) {
        float *y = (float *)ROW(&nd->dst, t);
        for (int64_t r = r0; r < r1; r++) y[r] += bias[r];
    }
}

/* Rotates each head of each token with the (cos, sin) table of hl_rope_table;
 * NORM pairs (2i, 2i+1), NEOX pairs (i, i + head_dim/2). */
static void op_rope(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth) {
    const int hd = ctx->model->hp.head_dim, half = hd / 2;
    const int neox = ctx->model->hp.rope_mode == HL_ROPE_NEOX;
    const int64_t n_heads = nd->src0.ne[0] / hd;
    int64_t t0, t1;
    hl_split(nd->src0.ne[1], ith, nth, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        const float *cs = ctx->rope_cs + (size_t)(nd->pos0 - ctx->rope_pos0 + t) * hd; /* [half][cos, sin] */
        float *row = (float *)ROW(&nd->src0, t);
        for (int64_t h = 0; h < n_heads; h++) {
            float *v = row + h * hd;
            for (int i = 0; i < half; i++) {
                const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
                const float x0 = v[i0], x1 = v[i1], c = cs[2 * i], s = cs[2 * i + 1];
                v[i0] = x0 * c - x1 * s;
                v[i1] = x0 * s + x1 * c;
            }
        }
    }
}

void hl_rope_table(hl_context *ctx, int32_t pos0, int32_t n_tokens) {
    const hl_model *m = ctx->model;
    const int hd = m->hp.head_dim;
    const float *freqs = m->rope_freqs.data;
    ctx->rope_pos0 = pos0;
    for (int32_t t = 0; t < n_tokens; t++) {
        float *cs = ctx->rope_cs + (size_t)t * hd;
        for (int i = 0; i < hd / 2; i++) {
            /* theta_i = p * base^(-2i/hd) / rope_freqs[i] * freq_scale, in double */
            double theta = (double)(pos0 + t) * pow((double)m->hp.rope_freq_base, -2.0 * i / hd);
            if (freqs) theta /= freqs[i];
            theta *= m->hp.rope_freq_scale;
            cs[2 * i] = (float)(cos(theta) * m->hp.rope_attn_factor);
            cs[2 * i + 1] = (float)(sin(theta) * m->hp.rope_attn_factor);
        }
    }
}

static void store_value(int32_t type, void *dst, size_t i, float x) {
    if (type == HL_TYPE_F32) ((float *)dst)[i] = x;
    else ((uint16_t *)dst)[i] = hl_fp32_to_fp16(x);
}

/* Cells pos0.. of layer il: k rows as they come, v transposed (feature i of cell c at [i][c]). */
static void op_store_kv(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth) {
    const int32_t type = ctx->params.cache_type;
    const int64_t n = ctx->model->n_embd_kv, n_ctx = ctx->params.n_ctx;
    const size_t cell_bytes = hl_row_size(type, n);
    int64_t t0, t1;
    hl_split(nd->src0.ne[1], ith, nth, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        const size_t cell = (size_t)(nd->pos0 + t);
        const float *k = (const float *)ROW(&nd->src0, t), *v = (const float *)ROW(&nd->src1, t);
        char *k_cell = (char *)ctx->k_cache[nd->il] + cell * cell_bytes;
        for (int64_t i = 0; i < n; i++) store_value(type, k_cell, (size_t)i, k[i]);
        for (int64_t i = 0; i < n; i++) store_value(type, ctx->v_cache[nd->il], (size_t)(i * n_ctx) + cell, v[i]);
    }
}

static void op_swiglu(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth) {
    int64_t t0, t1;
    hl_split(nd->dst.ne[1], ith, nth, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        const float *g = (const float *)ROW(&nd->src0, t), *u = (const float *)ROW(&nd->src1, t);
        float *y = (float *)ROW(&nd->dst, t);
        for (int64_t i = 0; i < nd->dst.ne[0]; i++) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

static void op_add(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth) {
    int64_t t0, t1;
    hl_split(nd->dst.ne[1], ith, nth, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        const float *a = (const float *)ROW(&nd->src0, t), *b = (const float *)ROW(&nd->src1, t);
        float *y = (float *)ROW(&nd->dst, t);
        for (int64_t i = 0; i < nd->dst.ne[0]; i++) y[i] = a[i] + b[i];
    }
}

static int mul_mat_phases(const hl_node *nd) {
    const int convert_x = hl_get_type_traits(nd->src0.type)->vec_dot_type != HL_TYPE_F32;
    return convert_x || hl_lora_b_needs_conversion(nd) ? 2 : 1;
}

static void op_mul_mat(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth) {
    if (phase == 1 || mul_mat_phases(nd) == 1) {
        mul_mat_dot(ctx, nd, ith, nth);
        return;
    }
    if (hl_get_type_traits(nd->src0.type)->vec_dot_type != HL_TYPE_F32) mul_mat_convert(ctx, nd, ith, nth);
    if (nd->n_terms) hl_lora_b_convert(ctx, nd, ith, nth);
}

typedef void (*op_fn)(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth);

static const op_fn OPS[OP_COUNT] = {
    [OP_GET_ROWS] = op_get_rows, [OP_RMS_NORM] = op_rms_norm, [OP_MUL_MAT] = op_mul_mat,
    [OP_ROPE] = op_rope,         [OP_STORE_KV] = op_store_kv, [OP_ATTENTION] = hl_op_attention,
    [OP_SWIGLU] = op_swiglu,     [OP_ADD] = op_add,           [OP_LORA_A] = hl_op_lora_a,
};

int hl_op_phases(const hl_node *node) {
    if (node->op == OP_MUL_MAT) return mul_mat_phases(node);
    if (node->op == OP_LORA_A) return hl_lora_a_phases(node);
    return 1;
}

void hl_op_run(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth) {
    OPS[nd->op](ctx, nd, phase, ith, nth);
}

size_t hl_node_work_size(const hl_node *nd, int nth) {
    switch (nd->op) {
    case OP_MUL_MAT: return nd->n_terms ? hl_lora_b_work_size(nd) : hl_mul_mat_work_size(&nd->src0, nd->src1.ne[1]);
    case OP_LORA_A: return hl_lora_a_work_size(nd);
    case OP_GET_ROWS: return nd->n_terms ? hl_lora_embd_work_size(nd, nth) : 0;
    case OP_ATTENTION: return hl_attention_work_size(nd, nth);
    default: return 0;
    }
}
