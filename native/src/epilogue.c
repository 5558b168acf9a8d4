/*
 * Mat-mul epilogues (mul_mat.c): what a thread does to the output rows it just wrote, in the same phase.
 * Each works on rows [r0, r1) of every token, so no other thread's rows are needed:
 *
 *   EPI_ROPE_STORE_KV  RoPE on q and k at each token's position (the split gives threads whole heads),
 *                      then k's rows into the token's sequence's cache cell ([cell][feature]) and v's rows
 *                      into its transposed V cache ([feature][cell])
 *   EPI_SWIGLU         gate = silu(gate) * up
 *   EPI_ADD            residual += dst
 */
#include <math.h>

#include "core.h"
#include "gemm.h"
#include "ops_internal.h"
#include "quants.h"

void hl_rope_cs(const hl_model *m, int32_t pos, float *cs) {
    const int hd = m->hp.head_dim;
    const float *freqs = m->rope_freqs.data;
    for (int i = 0; i < hd / 2; i++) {
        /* theta_i = p * base^(-2i/hd) / rope_freqs[i] * freq_scale, in double */
        double theta = (double)pos * pow((double)m->hp.rope_freq_base, -2.0 * i / hd);
        if (freqs) theta /= freqs[i];
        theta *= m->hp.rope_freq_scale;
        cs[2 * i] = (float)(cos(theta) * m->hp.rope_attn_factor);
        cs[2 * i + 1] = (float)(sin(theta) * m->hp.rope_attn_factor);
    }
}

void hl_rope_table(hl_context *ctx, int32_t row0, int32_t pos0, int32_t n_tokens) {
    const int hd = ctx->model->hp.head_dim;
    for (int32_t t = 0; t < n_tokens; t++) hl_rope_cs(ctx->model, pos0 + t, ctx->rope_cs + (size_t)(row0 + t) * hd);
}

/* Rotates heads r0/hd .. r1/hd of every token t of x (the batch's tokens) by row t of the table of
 * hl_rope_table (token t's position); NORM pairs (2i, 2i+1), NEOX pairs (i, i + head_dim/2). */
static void rope_rows(hl_context *ctx, const hl_tensor *x, int64_t r0, int64_t r1) {
    const int hd = ctx->model->hp.head_dim, half = hd / 2;
    const int neox = ctx->model->hp.rope_mode == HL_ROPE_NEOX;
    for (int64_t t = 0; t < x->ne[1]; t++) {
        const float *cs = ctx->rope_cs + (size_t)t * hd; /* [half][cos, sin] */
        for (int64_t h0 = r0; h0 < r1; h0 += hd) {
            float *v = hl_row_f32(x, t) + h0;
            for (int i = 0; i < half; i++) {
                const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
                const float x0 = v[i0], x1 = v[i1], c = cs[2 * i], s = cs[2 * i + 1];
                v[i0] = x0 * c - x1 * s;
                v[i1] = x0 * s + x1 * c;
            }
        }
    }
}

static void store_value(int32_t type, void *dst, size_t i, float x) {
    if (type == HL_TYPE_F32) ((float *)dst)[i] = x;
    else ((uint16_t *)dst)[i] = hl_fp32_to_fp16(x);
}

/* Features [r0, r1) of k (as cell rows) or v (transposed) of every token into its sequence's cell (= its
 * position) of layer il. */
static void store_kv_rows(hl_context *ctx, const hl_node *nd, const hl_tensor *x, int is_v, int64_t r0, int64_t r1) {
    const int32_t type = ctx->params.cache_type;
    const size_t n_kv = (size_t)ctx->model->n_embd_kv;
    for (int64_t t = 0; t < x->ne[1]; t++) {
        const hl_sequence *seq = ctx->tok_seq[t];
        const size_t cell = (size_t)ctx->tok_pos[t], n_ctx = (size_t)seq->n_ctx;
        void *cache = is_v ? seq->v_cache[nd->il] : seq->k_cache[nd->il];
        const float *row = hl_row_f32(x, t);
        for (int64_t i = r0; i < r1; i++)
            store_value(type, cache, is_v ? (size_t)i * n_ctx + cell : cell * n_kv + (size_t)i, row[i]);
    }
}

static void swiglu_rows(const hl_tensor *gate, const hl_tensor *up, int64_t r0, int64_t r1) {
    for (int64_t t = 0; t < gate->ne[1]; t++)
        hl_swiglu_row(hl_row_f32(gate, t) + r0, hl_row_f32(up, t) + r0, r1 - r0, 0);
}

static void add_rows(const hl_tensor *residual, const hl_tensor *x, int64_t r0, int64_t r1) {
    for (int64_t t = 0; t < x->ne[1]; t++) {
        float *y = hl_row_f32(residual, t);
        const float *d = hl_row_f32(x, t);
        for (int64_t i = r0; i < r1; i++) y[i] = y[i] + d[i];
    }
}

void hl_epilogue_rows(hl_context *ctx, const hl_node *nd, const int64_t *r0, const int64_t *r1) {
    const hl_proj *p = nd->proj;
    switch (nd->epi) {
    case EPI_NONE: break;
    case EPI_ROPE_STORE_KV: /* projections q, k, v */
        rope_rows(ctx, &p[0].dst, r0[0], r1[0]);
        rope_rows(ctx, &p[1].dst, r0[1], r1[1]);
        store_kv_rows(ctx, nd, &p[1].dst, 0, r0[1], r1[1]);
        store_kv_rows(ctx, nd, &p[2].dst, 1, r0[2], r1[2]);
        break;
    case EPI_SWIGLU: swiglu_rows(&p[0].dst, &p[1].dst, r0[0], r1[0]); break; /* gate and up split alike */
    case EPI_ADD: add_rows(&nd->residual, &p[0].dst, r0[0], r1[0]); break;
    }
}
