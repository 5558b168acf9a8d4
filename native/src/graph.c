/*
 * The compute graph: hl_graph_build writes a flat node list for one batch of
 * T tokens; hl_graph_plan sizes the work buffer; hl_graph_compute runs the
 * nodes on the thread pool with a barrier after every node phase, checking
 * the abort flag between nodes.
 *
 * A block is attn_norm, attn_qkv (q, k and v from one conversion of their input, then RoPE and the KV
 * store), attention (one node per segment), attn_output (+ the residual), ffn_norm, ffn_gate_up (+ SwiGLU) and
 * ffn_down (+ the residual); see mul_mat.c for the phases of a mat-mul node.
 *
 * A batch holds segments of several sequences (ctx->segs): mat-muls, norms and the rest run over all T
 * tokens; RoPE uses each token's position and the KV store each token's sequence; attention is one node per
 * segment on that segment's cache. The last layer works on the wanted rows only (each segment's last token,
 * or all its tokens), packed: in place when they are one run of x (always so for one segment), else first
 * gathered into xg.
 *
 * LoRA: a projection with active adapter terms becomes mul_mat_lora: its node gains a lora_a phase
 * computing every term's t = A.x (one for all projections of the node), and each thread adds s * B.t to
 * the rows of W.x it writes. Each term covers the token range of the segments whose set holds that
 * adapter at that scale (adjacent segments share one term), so segments under different sets share the
 * batch, and a batch whose segments share one set has one term per adapter as one sequence has. A
 * projection without terms is the plain mat-mul, so no adapter, or only adapters at scale 0, gives
 * exactly the base graph.
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

static const hl_lora *lora_at(const hl_adapter *ad, int32_t il, int32_t target) {
    return target == HL_LORA_TOKEN_EMBD ? &ad->token_embd
           : target == HL_LORA_OUTPUT   ? &ad->output
                                        : &ad->layers[il * HL_LORA_LAYER_TARGETS + target];
}

/* Rows of segment s in a node over all tokens (out_rows 0) or over the last layer's wanted rows (1). */
static void seg_rows(const hl_batch_seg *sg, int out_rows, int32_t *row0, int32_t *n) {
    *row0 = out_rows ? sg->out0 : sg->t0;
    *n = out_rows ? sg->n_out : sg->n;
}

/* Terms of adapter ad (pair lora) over the rows of every segment whose set holds it: adjacent segments at
 * the same scale extend the last term (its t is the last one allocated), others start a new one. */
static void add_adapter_terms(hl_context *ctx, term_span *span, const hl_adapter *ad, const hl_lora *lora,
                              int out_rows) {
    hl_lora_term *last = NULL;
    for (int32_t s = 0; s < ctx->n_segs; s++) {
        const hl_sequence *seq = ctx->segs[s].seq;
        int32_t row0, n;
        seg_rows(&ctx->segs[s], out_rows, &row0, &n);
        for (int32_t e = 0; e < seq->n_active; e++) {
            if (seq->active[e].adapter != ad) continue;
            const float scale = seq->active[e].scale * lora->scale;
            if (last && last->scale == scale && last->t0 + last->n_tok == row0) {
                last->n_tok += n;
            } else {
                last = &ctx->terms[ctx->n_terms++];
                *last = (hl_lora_term){lora, scale, ctx->lora_t + ctx->lora_t_used, row0, n};
                span->n++;
            }
            ctx->lora_t_used += (size_t)lora->rank * (size_t)n;
        }
    }
}

/* Whether adapter ad is in a set before entry e of segment s (its terms are then made already). */
static int seen_before(const hl_context *ctx, int32_t s, int32_t e, const hl_adapter *ad) {
    for (int32_t j = 0; j <= s; j++) {
        const hl_sequence *seq = ctx->segs[j].seq;
        for (int32_t k = 0; k < (j < s ? seq->n_active : e); k++)
            if (seq->active[k].adapter == ad) return 1;
    }
    return 0;
}

/* The batch's adapter terms for one projection, adapter by adapter in order of first use, each with its
 * t [rank, n_tok]. out_rows: the node runs over the last layer's wanted rows (see seg_rows). */
static term_span collect_terms(hl_context *ctx, int32_t il, int32_t target, int out_rows) {
    term_span span = {ctx->terms + ctx->n_terms, 0};
    for (int32_t s = 0; s < ctx->n_segs; s++) {
        const hl_sequence *seq = ctx->segs[s].seq;
        for (int32_t e = 0; e < seq->n_active; e++) {
            const hl_adapter *ad = seq->active[e].adapter;
            const hl_lora *lora = lora_at(ad, il, target);
            if (lora->a.data && !seen_before(ctx, s, e, ad)) add_adapter_terms(ctx, &span, ad, lora, out_rows);
        }
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
    /* a node over fewer rows than the batch runs over the wanted rows; over as many, both layouts agree */
    const int out_rows = nd->src1.ne[1] != ctx->n_tokens;
    hl_proj *p = &nd->proj[nd->n_proj++];
    const term_span terms = collect_terms(ctx, nd->il, target, out_rows);
    *p = (hl_proj){.w = w, .bias = bias, .dst = dst, .terms = terms.first, .n_terms = terms.n};
    snprintf(p->name, sizeof p->name, "%s", name);
    nd->n_terms += terms.n;
}

int32_t hl_graph_max_nodes(const hl_model *model, int32_t n_segs) { return (20 + n_segs) * model->hp.n_layer + 6; }

/* The last layer's residual rows [n_embd, n_out]: the wanted rows of x in place when they are one run, else
 * gathered into xg by a node. */
static hl_tensor wanted_rows(hl_context *ctx, int32_t il) {
    const int64_t n_embd = ctx->model->hp.n_embd;
    const hl_tensor x = act(ctx->x, n_embd, ctx->n_tokens);
    const int32_t first = ctx->out_rows[0], n_out = ctx->n_out;
    if (ctx->out_rows[n_out - 1] - first == n_out - 1) return rows(x, first, n_out);
    return add_node(ctx, OP_GATHER, il, "gather", act(ctx->xg, n_embd, n_out), x, (hl_tensor){0})->dst;
}

/* Self-attention half of a block: x [n_embd, T] += attn(...), one attention node per segment on its cache;
 * the last layer past the KV store only for the wanted rows. Returns the rows the block goes on with. */
static hl_tensor build_attention(hl_context *ctx, int32_t il, int last) {
    const hl_model *m = ctx->model;
    const hl_layer *L = &m->layers[il];
    const int32_t T = ctx->n_tokens, n_rows = last ? ctx->n_out : T;
    hl_tensor x = act(ctx->x, m->hp.n_embd, T), xn = act(ctx->xn, m->hp.n_embd, T), q = act(ctx->q, m->n_q, T);

    add_node(ctx, OP_RMS_NORM, il, "attn_norm", xn, x, L->attn_norm);
    hl_node *qkv = add_mul_mat(ctx, il, "attn_qkv", xn, EPI_ROPE_STORE_KV); /* + rope, KV store */
    add_proj(ctx, qkv, "attn_q", q, L->wq, L->bq, HL_LORA_ATTN_Q);                            /* [n_q, T] */
    add_proj(ctx, qkv, "attn_k", act(ctx->k, m->n_embd_kv, T), L->wk, L->bk, HL_LORA_ATTN_K); /* [n_embd_kv, T] */
    add_proj(ctx, qkv, "attn_v", act(ctx->v, m->n_embd_kv, T), L->wv, L->bv, HL_LORA_ATTN_V);

    hl_tensor attn = act(ctx->attn, m->n_q, n_rows);
    for (int32_t s = 0; s < ctx->n_segs; s++) {
        const hl_batch_seg *sg = &ctx->segs[s];
        int32_t row0, n;
        seg_rows(sg, last, &row0, &n);
        const int32_t first = sg->t0 + sg->n - n; /* the segment's rows of q that go on */
        hl_node *at = add_node(ctx, OP_ATTENTION, il, "attention", rows(attn, row0, n), rows(q, first, n),
                               (hl_tensor){0});
        at->pos0 = sg->pos0 + first - sg->t0;
        at->seq = sg->seq;
    }
    const hl_tensor residual = last ? wanted_rows(ctx, il) : x;
    hl_node *o = add_mul_mat(ctx, il, "attn_output", attn, EPI_ADD); /* x += W_o . attn */
    o->residual = residual;
    add_proj(ctx, o, "attn_output", act(ctx->proj, m->hp.n_embd, n_rows), L->wo, L->bo, HL_LORA_ATTN_OUTPUT);
    return residual;
}

/* SwiGLU feed-forward half of a block on the rows xo [n_embd, n]: xo += down(silu(gate) * up). */
static void build_ffn(hl_context *ctx, int32_t il, hl_tensor xo) {
    const hl_model *m = ctx->model;
    const hl_layer *L = &m->layers[il];
    const int64_t n = xo.ne[1];
    hl_tensor xno = act(ctx->xn, m->hp.n_embd, n), gate = act(ctx->gate, m->hp.n_ff, n); /* [n_ff, n] */

    add_node(ctx, OP_RMS_NORM, il, "ffn_norm", xno, xo, L->ffn_norm);
    hl_node *gu = add_mul_mat(ctx, il, "ffn_gate_up", xno, EPI_SWIGLU); /* gate = silu(gate) * up */
    add_proj(ctx, gu, "ffn_gate", gate, L->w_gate, L->b_gate, HL_LORA_FFN_GATE);
    add_proj(ctx, gu, "ffn_up", act(ctx->up, m->hp.n_ff, n), L->w_up, L->b_up, HL_LORA_FFN_UP);
    hl_node *down = add_mul_mat(ctx, il, "ffn_down", gate, EPI_ADD); /* x += W_down . gate */
    down->residual = xo;
    add_proj(ctx, down, "ffn_down", act(ctx->proj, m->hp.n_embd, n), L->w_down, L->b_down, HL_LORA_FFN_DOWN);
}

/* Grows n to at least need elements of size elem (never shrinks). */
static int grow(void **buf, size_t *n, size_t need, size_t elem) {
    if (need <= *n) return 1;
    void *p = realloc(*buf, need * elem);
    if (!p) return 0;
    *buf = p, *n = need;
    return 1;
}

/* Node, term and t storage for the batch: each segment's set adds at most its pairs' terms, rank x n floats. */
static hl_status reserve(hl_context *ctx) {
    size_t terms = 0, floats = 0, nodes = (size_t)ctx->max_nodes, max_terms = (size_t)ctx->max_terms;
    for (int32_t s = 0; s < ctx->n_segs; s++) {
        terms += (size_t)ctx->segs[s].seq->set_terms;
        floats += ctx->segs[s].seq->set_ranks * (size_t)ctx->segs[s].n;
    }
    int ok = grow((void **)&ctx->nodes, &nodes, (size_t)hl_graph_max_nodes(ctx->model, ctx->n_segs), sizeof(hl_node));
    ok = ok && grow((void **)&ctx->terms, &max_terms, terms, sizeof(hl_lora_term));
    ok = ok && grow((void **)&ctx->lora_t, &ctx->lora_t_floats, floats, sizeof(float));
    ctx->max_nodes = (int32_t)nodes, ctx->max_terms = (int32_t)max_terms;
    return ok ? HL_OK : hl_fail(HL_ERR_NOMEM, "out of memory for the graph of %d segments", ctx->n_segs);
}

hl_status hl_graph_build(hl_context *ctx, float *logits) {
    const hl_model *m = ctx->model;
    const int32_t T = ctx->n_tokens, n_out = ctx->n_out;
    const int64_t n_embd = m->hp.n_embd;
    hl_status st = reserve(ctx);
    if (st != HL_OK) return st;
    ctx->n_nodes = ctx->n_terms = 0;
    ctx->lora_t_used = 0;
    for (int32_t s = 0; s < ctx->n_segs; s++) hl_rope_table(ctx, ctx->segs[s].t0, ctx->segs[s].pos0, ctx->segs[s].n);

    hl_node *embd = add_node(ctx, OP_GET_ROWS, -1, "token_embd", act(ctx->x, n_embd, T), m->token_embd, (hl_tensor){0});
    term_span e = collect_terms(ctx, -1, HL_LORA_TOKEN_EMBD, 0);
    embd->terms = e.n ? e.first : NULL;
    embd->n_terms = e.n;
    hl_tensor xo = act(ctx->x, n_embd, T);
    for (int32_t il = 0; il < m->hp.n_layer; il++) {
        xo = build_attention(ctx, il, il == m->hp.n_layer - 1); /* last layer: wanted rows only */
        build_ffn(ctx, il, xo);
    }
    hl_tensor xno = act(ctx->xn, n_embd, n_out);
    add_node(ctx, OP_RMS_NORM, -1, "output_norm", xno, xo, m->output_norm);
    hl_node *out = add_mul_mat(ctx, -1, "output", xno, EPI_NONE);
    add_proj(ctx, out, "output", act(logits, m->hp.n_vocab, n_out), m->output, (hl_tensor){0}, HL_LORA_OUTPUT);
    if (ctx->n_nodes > ctx->max_nodes || ctx->n_terms > ctx->max_terms || ctx->lora_t_used > ctx->lora_t_floats)
        return hl_fail(HL_ERR_INVALID, "graph exceeds its planned size");
    return HL_OK;
}

/* The graph of n_tokens of the default sequence (nothing computed: its tokens are not read). */
static hl_status build_default(hl_context *ctx, int32_t n_tokens) {
    float unused_logits;
    ctx->segs[0] = (hl_batch_seg){.seq = ctx->seq0, .logits = &unused_logits, .n = n_tokens, .n_out = 1};
    ctx->n_segs = 1;
    hl_batch_layout(ctx);
    return hl_graph_build(ctx, &unused_logits);
}

hl_status hl_graph_build_for_tools(hl_context *ctx, const char *fn, int32_t n_tokens, int32_t layer) {
    if (n_tokens < 1 || n_tokens > ctx->params.n_batch)
        return hl_fail(HL_ERR_INVALID, "%s: %d tokens, expected 1 to n_batch = %d", fn, n_tokens, ctx->params.n_batch);
    if (layer < -1 || layer >= ctx->model->hp.n_layer)
        return hl_fail(HL_ERR_INVALID, "%s: layer %d, expected -1 or 0 to %d", fn, layer, ctx->model->hp.n_layer - 1);
    return build_default(ctx, n_tokens);
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
