/*
 * The compute graph: hl_graph_build writes a flat node list for one batch of
 * T tokens; hl_graph_compute runs it on the thread pool with a barrier after
 * every node phase, checking the abort flag between nodes.
 */
#include <stdio.h>

#include "core.h"

/* An F32 activation buffer of n features for T tokens. */
static hl_tensor act(float *data, int64_t n, int64_t n_tokens) {
    return (hl_tensor){HL_TYPE_F32, {n, n_tokens}, (size_t)n * sizeof(float), data};
}

/* Rows [first, first + n) of an activation tensor. */
static hl_tensor rows(hl_tensor t, int64_t first, int64_t n) {
    t.data = (char *)t.data + (size_t)first * t.row_bytes;
    t.ne[1] = n;
    return t;
}

static hl_node *add_node(hl_context *ctx, hl_op op, int32_t il, const char *name, hl_tensor dst,
                         hl_tensor src0, hl_tensor src1) {
    hl_node *nd = &ctx->nodes[ctx->n_nodes++];
    *nd = (hl_node){.op = op, .il = il, .dst = dst, .src0 = src0, .src1 = src1};
    if (il >= 0) snprintf(nd->name, sizeof nd->name, "blk.%d.%s", il, name);
    else snprintf(nd->name, sizeof nd->name, "%s", name);
    return nd;
}

static void add_mul_mat(hl_context *ctx, int32_t il, const char *name, hl_tensor dst, hl_tensor w,
                        hl_tensor x, hl_tensor bias) {
    add_node(ctx, OP_MUL_MAT, il, name, dst, w, x)->src2 = bias;
}

int32_t hl_graph_max_nodes(const hl_model *model) { return 16 * model->hp.n_layer + 4; }

/*
 * One LLaMA block for T tokens at positions pos0..; x [n_embd, T] in place.
 * In the last layer only the last n_out tokens continue past the KV store.
 */
static void build_layer(hl_context *ctx, int32_t il, int32_t T, int32_t pos0, int32_t n_out) {
    const hl_model *m = ctx->model;
    const hl_layer *L = &m->layers[il];
    const int64_t n_embd = m->hp.n_embd, n_ff = m->hp.n_ff;
    hl_tensor x = act(ctx->x, n_embd, T), xn = act(ctx->xn, n_embd, T);
    hl_tensor q = act(ctx->q, m->n_q, T);            /* [head_dim*n_head, T] */
    hl_tensor k = act(ctx->k, m->n_embd_kv, T);      /* [head_dim*n_head_kv, T] */
    hl_tensor v = act(ctx->v, m->n_embd_kv, T);

    add_node(ctx, OP_RMS_NORM, il, "attn_norm", xn, x, L->attn_norm);
    add_mul_mat(ctx, il, "attn_q", q, L->wq, xn, L->bq);
    add_mul_mat(ctx, il, "attn_k", k, L->wk, xn, L->bk);
    add_mul_mat(ctx, il, "attn_v", v, L->wv, xn, L->bv);
    add_node(ctx, OP_ROPE, il, "rope_q", q, q, (hl_tensor){0})->pos0 = pos0;
    add_node(ctx, OP_ROPE, il, "rope_k", k, k, (hl_tensor){0})->pos0 = pos0;
    add_node(ctx, OP_STORE_KV, il, "kv_store", (hl_tensor){0}, k, v)->pos0 = pos0;

    const int32_t first = T - n_out; /* tokens before it need no more work here */
    hl_tensor attn = act(ctx->attn, m->n_q, n_out), proj = act(ctx->proj, n_embd, n_out);
    hl_tensor xo = rows(x, first, n_out), xno = act(ctx->xn, n_embd, n_out);
    hl_tensor gate = act(ctx->gate, n_ff, n_out), up = act(ctx->up, n_ff, n_out);

    add_node(ctx, OP_ATTENTION, il, "attention", attn, rows(q, first, n_out), (hl_tensor){0})->pos0 = pos0 + first;
    add_mul_mat(ctx, il, "attn_output", proj, L->wo, attn, L->bo);
    add_node(ctx, OP_ADD, il, "attn_residual", xo, xo, proj);
    add_node(ctx, OP_RMS_NORM, il, "ffn_norm", xno, xo, L->ffn_norm);
    add_mul_mat(ctx, il, "ffn_gate", gate, L->w_gate, xno, L->b_gate);
    add_mul_mat(ctx, il, "ffn_up", up, L->w_up, xno, L->b_up);
    add_node(ctx, OP_SWIGLU, il, "swiglu", gate, gate, up);
    add_mul_mat(ctx, il, "ffn_down", proj, L->w_down, gate, L->b_down);
    add_node(ctx, OP_ADD, il, "ffn_residual", xo, xo, proj);
}

hl_status hl_graph_build(hl_context *ctx, int32_t T, float *logits, int32_t all_logits) {
    const hl_model *m = ctx->model;
    const int32_t pos0 = ctx->n_used, n_out = all_logits ? T : 1;
    const int64_t n_embd = m->hp.n_embd;
    ctx->n_nodes = 0;
    hl_rope_table(ctx, pos0, T);

    add_node(ctx, OP_GET_ROWS, -1, "token_embd", act(ctx->x, n_embd, T), m->token_embd, (hl_tensor){0});
    for (int32_t il = 0; il < m->hp.n_layer; il++)
        build_layer(ctx, il, T, pos0, il == m->hp.n_layer - 1 ? n_out : T);

    hl_tensor xo = rows(act(ctx->x, n_embd, T), T - n_out, n_out), xno = act(ctx->xn, n_embd, n_out);
    add_node(ctx, OP_RMS_NORM, -1, "output_norm", xno, xo, m->output_norm);
    add_mul_mat(ctx, -1, "output", act(logits, m->hp.n_vocab, n_out), m->output, xno, (hl_tensor){0});
    return ctx->n_nodes <= ctx->max_nodes ? HL_OK : hl_fail(HL_ERR_INVALID, "graph overflow");
}

/* abort_at only ever falls from INT32_MAX to one node index, written by thread 0
 * before that node's last barrier, so every thread stops after the same node. */
static void compute_job(void *arg, int ith, int nth) {
    hl_context *ctx = arg;
    for (int32_t i = 0; i < ctx->n_nodes; i++) {
        const hl_node *nd = &ctx->nodes[i];
        const int n_phases = hl_op_phases(nd);
        for (int phase = 0; phase < n_phases; phase++) {
            hl_op_run(ctx, nd, phase, ith, nth);
            if (ith == 0 && phase == n_phases - 1 && ctx->abort_flag && *ctx->abort_flag)
                atomic_store(&ctx->abort_at, i);
            hl_pool_barrier(ctx->pool);
        }
        if (atomic_load(&ctx->abort_at) <= i) return;
    }
}

hl_status hl_graph_compute(hl_context *ctx) {
    atomic_store(&ctx->abort_at, INT32_MAX);
    hl_pool_run(ctx->pool, compute_job, ctx);
    return atomic_load(&ctx->abort_at) == INT32_MAX ? HL_OK : hl_fail(HL_ERR_ABORTED, "compute aborted");
}
