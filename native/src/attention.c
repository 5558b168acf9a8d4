/*
 * Causal self-attention over the KV cache for a batch of T query tokens, tiled so that the cache is read
 * by the multi-token kernel (hl_gemm) of the cache type rather than by one dot product per (token, cell).
 *
 * The node's segment's cache (nd->seq). For query head h (KV head g = h / (n_head / n_head_kv)) and a block of up to ATTN_BLOCK tokens t0..:
 *
 *   S = Q_h . K_g^T    [block, n_kv]      K cached as rows per cell:  k_cache [n_ctx][n_embd_kv]
 *   P = softmax(S * 1/sqrt(head_dim)), row t over its causal cells 0..pos0+t only, zero beyond
 *   O_h = P . V_g      [block, head_dim]  V cached transposed:         v_cache [n_embd_kv][n_ctx]
 *
 * n_kv = pos0 + t0 + block is what the block's last token sees. Each score depends only on one query
 * row and one cell, and work items (head, token block) are whole, so results do not depend on the
 * thread count.
 */
#include <math.h>

#include "core.h"
#include "gemm.h"
#include "ops_internal.h"
#include "quants.h"

#define ATTN_BLOCK 32 /* query tokens per work item */

size_t hl_attention_work_size(const hl_node *nd, int nth) {
    return (size_t)nth * ATTN_BLOCK * (size_t)(nd->pos0 + nd->src0.ne[1]) * sizeof(float);
}

/* One query head over tokens t0 .. t0+nt-1 of the node; scores: scratch of nt * n_kv floats. */
static void attend_block(hl_context *ctx, const hl_node *nd, int h, int64_t t0, int64_t nt, float *scores) {
    const hl_model *m = ctx->model;
    const int hd = m->hp.head_dim, g = h / (m->hp.n_head / m->hp.n_head_kv);
    const int32_t type = ctx->params.cache_type;
    const hl_type_traits *ct = hl_get_type_traits(type);
    const int64_t n_ctx = nd->seq->n_ctx, n_kv = nd->pos0 + t0 + nt;
    const char *k = (const char *)nd->seq->k_cache[nd->il] + hl_row_size(type, (int64_t)g * hd);
    const char *vt = (const char *)nd->seq->v_cache[nd->il] + hl_row_size(type, (int64_t)g * hd * n_ctx);
    const float *q = hl_row_f32(&nd->src0, t0) + (size_t)h * hd;  /* [nt] rows of head_dim */
    float *out = hl_row_f32(&nd->dst, t0) + (size_t)h * hd;       /* [nt] rows of head_dim */

    hl_gemm(ct, 0, hd, n_kv, nt, k, hl_row_size(type, m->n_embd_kv), q, nd->src0.row_bytes, scores, (size_t)n_kv);
    for (int64_t t = 0; t < nt; t++)
        hl_softmax_causal(scores + t * n_kv, nd->pos0 + t0 + t + 1, n_kv, 1.0f / sqrtf((float)hd));
    hl_gemm(ct, 0, n_kv, hd, nt, vt, hl_row_size(type, n_ctx), scores, (size_t)n_kv * sizeof(float), out,
            nd->dst.row_bytes / sizeof(float));
}

/* Work items in head-major order (w = head * n_blocks + block), split in contiguous ranges: a later block sees
 * more cells, and every head has the same blocks, so the threads' shares cost about the same. */
void hl_op_attention(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth) {
    const int n_head = ctx->model->hp.n_head;
    const int64_t T = nd->src0.ne[1], n_blocks = (T + ATTN_BLOCK - 1) / ATTN_BLOCK;
    float *scores = (float *)((char *)ctx->work + (size_t)ith * hl_attention_work_size(nd, 1));
    int64_t w0, w1;
    hl_split(n_head * n_blocks, ith, nth, &w0, &w1);
    for (int64_t w = w0; w < w1; w++) {
        const int64_t t0 = (w % n_blocks) * ATTN_BLOCK;
        attend_block(ctx, nd, (int)(w / n_blocks), t0, T - t0 < ATTN_BLOCK ? T - t0 : ATTN_BLOCK, scores);
    }
}
