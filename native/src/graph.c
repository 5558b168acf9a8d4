/*
 * The compute graph: hl_graph_build writes a flat node list for one batch of
 * T tokens; hl_graph_plan sizes the work buffer; hl_graph_compute runs the
 * nodes on the thread pool with a barrier after every node phase, checking
 * the abort flag between nodes.
 *
 * A block is seven nodes: attn_norm, attn_qkv (q, k and v from one conversion of their input, then RoPE
 * and the KV store), attention, attn_output (+ the residual), ffn_norm, ffn_gate_up (+ SwiGLU) and
 * ffn_down (+ the residual); see mul_mat.c for the phases of a mat-mul node.
 *
 * LoRA: a projection with active adapter terms becomes mul_mat_lora: its node gains a lora_a phase
 * computing every term's t = A.x (one for all projections of the node), and each thread adds s * B.t to
 * the rows of W.x it writes. A projection without terms is the plain mat-mul, so no adapter, or only
 * adapters at scale 0, gives exactly the base graph.
 */
#include <stdio.h>
#include <stdlib.h>

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

/* A group of consecutive terms in ctx->terms. */
typedef struct {
    hl_lora_term *first;
    int32_t n;
} term_span;

/* The active adapters' terms for one projection, in set order, each with its t [rank, T]. */
static term_span collect_terms(hl_context *ctx, int32_t il, int32_t target, int32_t T) {
    term_span span = {ctx->terms + ctx->n_terms, 0};
    for (int32_t i = 0; i < ctx->n_active; i++) {
        const hl_adapter *ad = ctx->active[i].adapter;
        const hl_lora *lora = target == HL_LORA_TOKEN_EMBD ? &ad->token_embd
                              : target == HL_LORA_OUTPUT   ? &ad->output
                                                           : &ad->layers[il * HL_LORA_LAYER_TARGETS + target];
        if (!lora->a.data) continue;
        ctx->terms[ctx->n_terms++] = (hl_lora_term){lora, ctx->active[i].scale * lora->scale,
                                                    ctx->lora_t + ctx->lora_t_used};
        ctx->lora_t_used += (size_t)lora->rank * (size_t)T;
        span.n++;
    }
    return span;
}

/* A mat-mul node over input x; its projections are added with add_proj. */
static hl_node *add_mul_mat(hl_context *ctx, int32_t il, const char *name, hl_tensor x, hl_epilogue epi) {
    hl_node *nd = add_node(ctx, OP_MUL_MAT, il, name, (hl_tensor){0}, (hl_tensor){0}, x);
    nd->epi = epi;
    nd->terms = ctx->terms + ctx->n_terms;
    return nd;
}

/* dst = w . x (+ the active adapters' terms at target) (+ bias), a projection of node nd. */
static void add_proj(hl_context *ctx, hl_node *nd, const char *name, hl_tensor dst, hl_tensor w, hl_tensor bias,
                     int32_t target) {
    const int32_t n_tokens = (int32_t)nd->src1.ne[1];
    hl_proj *p = &nd->proj[nd->n_proj++];
    const term_span terms = collect_terms(ctx, nd->il, target, n_tokens);
    *p = (hl_proj){.w = w, .bias = bias, .dst = dst, .terms = terms.first, .n_terms = terms.n};
    snprintf(p->name, sizeof p->name, "%s", name);
    nd->n_terms += terms.n;
}

int32_t hl_graph_max_nodes(const hl_model *model) { return 20 * model->hp.n_layer + 6; }

/* Self-attention half of a block: x [n_embd, T] += attn(...); later tokens only past the KV store. */
static void build_attention(hl_context *ctx, int32_t il, int32_t T, int32_t pos0, int32_t n_out) {
    const hl_model *m = ctx->model;
    const hl_layer *L = &m->layers[il];
    hl_tensor x = act(ctx->x, m->hp.n_embd, T), xn = act(ctx->xn, m->hp.n_embd, T);

    add_node(ctx, OP_RMS_NORM, il, "attn_norm", xn, x, L->attn_norm);
    hl_node *qkv = add_mul_mat(ctx, il, "attn_qkv", xn, EPI_ROPE_STORE_KV); /* + rope, KV store */
    qkv->pos0 = pos0;
    add_proj(ctx, qkv, "attn_q", act(ctx->q, m->n_q, T), L->wq, L->bq, HL_LORA_ATTN_Q);       /* [n_q, T] */
    add_proj(ctx, qkv, "attn_k", act(ctx->k, m->n_embd_kv, T), L->wk, L->bk, HL_LORA_ATTN_K); /* [n_embd_kv, T] */
    add_proj(ctx, qkv, "attn_v", act(ctx->v, m->n_embd_kv, T), L->wv, L->bv, HL_LORA_ATTN_V);

    const int32_t first = T - n_out;
    hl_tensor attn = act(ctx->attn, m->n_q, n_out);
    add_node(ctx, OP_ATTENTION, il, "attention", attn, rows(act(ctx->q, m->n_q, T), first, n_out), (hl_tensor){0})
        ->pos0 = pos0 + first;
    hl_node *o = add_mul_mat(ctx, il, "attn_output", attn, EPI_ADD); /* x += W_o . attn */
    o->residual = rows(x, first, n_out);
    add_proj(ctx, o, "attn_output", act(ctx->proj, m->hp.n_embd, n_out), L->wo, L->bo, HL_LORA_ATTN_OUTPUT);
}

/* SwiGLU feed-forward half of a block on the last n_out tokens: x += down(silu(gate) * up). */
static void build_ffn(hl_context *ctx, int32_t il, int32_t T, int32_t n_out) {
    const hl_model *m = ctx->model;
    const hl_layer *L = &m->layers[il];
    hl_tensor xo = rows(act(ctx->x, m->hp.n_embd, T), T - n_out, n_out), xno = act(ctx->xn, m->hp.n_embd, n_out);
    hl_tensor gate = act(ctx->gate, m->hp.n_ff, n_out); /* [n_ff, n_out] */

    add_node(ctx, OP_RMS_NORM, il, "ffn_norm", xno, xo, L->ffn_norm);
    hl_node *gu = add_mul_mat(ctx, il, "ffn_gate_up", xno, EPI_SWIGLU); /* gate = silu(gate) * up */
    add_proj(ctx, gu, "ffn_gate", gate, L->w_gate, L->b_gate, HL_LORA_FFN_GATE);
    add_proj(ctx, gu, "ffn_up", act(ctx->up, m->hp.n_ff, n_out), L->w_up, L->b_up, HL_LORA_FFN_UP);
    hl_node *down = add_mul_mat(ctx, il, "ffn_down", gate, EPI_ADD); /* x += W_down . gate */
    down->residual = xo;
    add_proj(ctx, down, "ffn_down", act(ctx->proj, m->hp.n_embd, n_out), L->w_down, L->b_down, HL_LORA_FFN_DOWN);
}

hl_status hl_graph_build(hl_context *ctx, int32_t T, float *logits, int32_t all_logits) {
    const hl_model *m = ctx->model;
    const int32_t pos0 = ctx->n_used, n_out = all_logits ? T : 1;
    const int64_t n_embd = m->hp.n_embd;
    ctx->n_nodes = ctx->n_terms = 0;
    ctx->lora_t_used = 0;
    hl_rope_table(ctx, pos0, T);

    hl_node *embd = add_node(ctx, OP_GET_ROWS, -1, "token_embd", act(ctx->x, n_embd, T), m->token_embd, (hl_tensor){0});
    term_span e = collect_terms(ctx, -1, HL_LORA_TOKEN_EMBD, T);
    embd->terms = e.n ? e.first : NULL;
    embd->n_terms = e.n;
    for (int32_t il = 0; il < m->hp.n_layer; il++) {
        const int32_t layer_out = il == m->hp.n_layer - 1 ? n_out : T; /* last layer: wanted rows only */
        build_attention(ctx, il, T, pos0, layer_out);
        build_ffn(ctx, il, T, layer_out);
    }
    hl_tensor xo = rows(act(ctx->x, n_embd, T), T - n_out, n_out), xno = act(ctx->xn, n_embd, n_out);
    add_node(ctx, OP_RMS_NORM, -1, "output_norm", xno, xo, m->output_norm);
    hl_node *out = add_mul_mat(ctx, -1, "output", xno, EPI_NONE);
    add_proj(ctx, out, "output", act(logits, m->hp.n_vocab, n_out), m->output, (hl_tensor){0}, HL_LORA_OUTPUT);
    if (ctx->n_nodes > ctx->max_nodes || ctx->n_terms > ctx->max_terms || ctx->lora_t_used > ctx->lora_t_floats)
        return hl_fail(HL_ERR_INVALID, "graph exceeds its planned size");
    return HL_OK;
}

hl_status hl_graph_build_for_tools(hl_context *ctx, const char *fn, int32_t n_tokens, int32_t layer) {
    if (n_tokens < 1 || n_tokens > ctx->params.n_batch)
        return hl_fail(HL_ERR_INVALID, "%s: %d tokens, expected 1 to n_batch = %d", fn, n_tokens, ctx->params.n_batch);
    if (layer < -1 || layer >= ctx->model->hp.n_layer)
        return hl_fail(HL_ERR_INVALID, "%s: layer %d, expected -1 or 0 to %d", fn, layer, ctx->model->hp.n_layer - 1);
    float unused_logits;
    return hl_graph_build(ctx, n_tokens, &unused_logits, 0);
}

hl_status hl_graph_stats(hl_context *ctx, int32_t n_tokens, int32_t layer, int32_t *n_nodes, int32_t *n_barriers) {
    if (!ctx || !n_nodes || !n_barriers) return hl_fail(HL_ERR_INVALID, "hl_graph_stats: NULL argument");
    hl_status st = hl_graph_build_for_tools(ctx, "hl_graph_stats", n_tokens, layer);
    if (st != HL_OK) return st;
    *n_nodes = *n_barriers = 0;
    for (int32_t i = 0; i < ctx->n_nodes; i++) {
        if (layer >= 0 && ctx->nodes[i].il != layer) continue;
        (*n_nodes)++;
        *n_barriers += hl_op_phases(&ctx->nodes[i]);
    }
    return HL_OK;
}

hl_status hl_graph_plan(hl_context *ctx) {
    size_t need = 0;
    for (int32_t i = 0; i < ctx->n_nodes; i++) {
        size_t s = hl_node_work_size(&ctx->nodes[i], hl_pool_size(ctx->pool));
        if (s > need) need = s;
    }
    if (need <= ctx->work_size) return HL_OK;
    void *work = realloc(ctx->work, need);
    if (!work) return hl_fail(HL_ERR_NOMEM, "out of memory for a %zu-byte work buffer", need);
    ctx->work = work;
    ctx->work_size = need;
    return HL_OK;
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

typedef struct {
    hl_context *ctx;
    const hl_node *node;
} node_run;

/* compute_job's loop body for one node: the same phases, split and barriers. */
static void node_job(void *arg, int ith, int nth) {
    const node_run *run = arg;
    const int n_phases = hl_op_phases(run->node);
    for (int phase = 0; phase < n_phases; phase++) {
        hl_op_run(run->ctx, run->node, phase, ith, nth);
        hl_pool_barrier(run->ctx->pool);
    }
}

void hl_graph_compute_node(hl_context *ctx, int32_t i) {
    node_run run = {ctx, &ctx->nodes[i]};
    hl_pool_run(ctx->pool, node_job, &run);
}
