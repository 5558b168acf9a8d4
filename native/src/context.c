/*
 * A context: activation and work buffers for n_batch tokens, the thread pool, its sequences (a default
 * one made with it, hl_context_sequence), and the decode entry point.
 */
#include <stdio.h>
#include <stdlib.h>

#include "core.h"
#include "quants.h"

static hl_status check_params(const hl_context_params *p) {
    if (p->n_ctx < 1 || p->n_batch < 1 || p->n_threads < 1)
        return hl_fail(HL_ERR_INVALID, "n_ctx (%d), n_batch (%d) and n_threads (%d) must be positive",
                       p->n_ctx, p->n_batch, p->n_threads);
    if (p->n_threads > 512) return hl_fail(HL_ERR_INVALID, "n_threads %d is more than 512", p->n_threads);
    if (p->cache_type != HL_TYPE_F16 && p->cache_type != HL_TYPE_F32)
        return hl_fail(HL_ERR_UNSUPPORTED, "KV cache type %d is not supported (use F16 or F32)", p->cache_type);
    return HL_OK;
}

static void *alloc_floats(int64_t n, int64_t n_tokens) { return malloc((size_t)n * (size_t)n_tokens * sizeof(float)); }

static hl_status alloc_buffers(hl_context *c) {
    const hl_model *m = c->model;
    const int64_t B = c->params.n_batch;
    c->x = alloc_floats(m->hp.n_embd, B);
    c->xn = alloc_floats(m->hp.n_embd, B);
    c->xg = alloc_floats(m->hp.n_embd, B);
    c->proj = alloc_floats(m->hp.n_embd, B);
    c->q = alloc_floats(m->n_q, B);
    c->attn = alloc_floats(m->n_q, B);
    c->k = alloc_floats(m->n_embd_kv, B);
    c->v = alloc_floats(m->n_embd_kv, B);
    c->gate = alloc_floats(m->hp.n_ff, B);
    c->up = alloc_floats(m->hp.n_ff, B);
    c->rope_cs = alloc_floats(m->hp.head_dim, B);
    c->tokens = malloc((size_t)B * sizeof(int32_t));
    c->segs = calloc((size_t)B, sizeof *c->segs);
    c->out_rows = malloc((size_t)B * sizeof(int32_t));
    c->tok_seq = calloc((size_t)B, sizeof *c->tok_seq);
    c->tok_pos = malloc((size_t)B * sizeof(int32_t));
    if (!c->x || !c->xn || !c->xg || !c->proj || !c->q || !c->attn || !c->k || !c->v || !c->gate || !c->up ||
        !c->rope_cs || !c->tokens || !c->segs || !c->out_rows || !c->tok_seq || !c->tok_pos)
        return HL_ERR_NOMEM;
    return HL_OK;
}

hl_status hl_context_create(hl_model *model, const hl_context_params *params, hl_context **out) {
    if (!model || !params || !out) return hl_fail(HL_ERR_INVALID, "hl_context_create: NULL argument");
    *out = NULL;
    hl_status st = check_params(params);
    if (st != HL_OK) return st;
    hl_context *c = calloc(1, sizeof *c);
    if (!c) return hl_fail(HL_ERR_NOMEM, "out of memory for a context");
    c->model = model;
    c->params = *params;
    if (alloc_buffers(c) != HL_OK || hl_sequence_alloc(c, params->n_ctx, &c->seq0) != HL_OK) {
        hl_context_free(c);
        return hl_fail(HL_ERR_NOMEM, "out of memory for a context of %d cells and batch %d", params->n_ctx,
                       params->n_batch);
    }
    c->pool = hl_pool_create(params->n_threads);
    if (!c->pool) {
        hl_context_free(c);
        return hl_fail(HL_ERR_NOMEM, "could not start %d threads", params->n_threads);
    }
    *out = c;
    return HL_OK;
}

void hl_context_free(hl_context *c) {
    if (!c) return;
    hl_pool_free(c->pool);
    hl_sequence_free_all(c);
    void *bufs[] = {c->x,      c->xn,     c->xg,       c->proj,    c->q,       c->attn,   c->k,
                    c->v,      c->gate,   c->up,       c->rope_cs, c->tokens,  c->work,   c->nodes,
                    c->terms,  c->lora_t, c->segs,     c->out_rows, c->tok_seq, c->tok_pos, c->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    free(c);
}

void hl_batch_layout(hl_context *c) {
    int32_t t = 0, out = 0;
    for (int32_t s = 0; s < c->n_segs; s++) {
        hl_batch_seg *sg = &c->segs[s];
        sg->t0 = t, sg->out0 = out, sg->pos0 = sg->seq->n_used;
        for (int32_t i = 0; i < sg->n; i++) {
            c->tok_seq[t + i] = sg->seq;
            c->tok_pos[t + i] = sg->pos0 + i;
        }
        for (int32_t i = 0; i < sg->n_out; i++) c->out_rows[out + i] = t + sg->n - sg->n_out + i;
        t += sg->n, out += sg->n_out;
    }
    c->n_tokens = t, c->n_out = out;
}

/* Segment i's checks; where: "" (one segment) or "fn: segment i: " (several). Copies its tokens to c->tokens. */
static hl_status check_segment(hl_context *c, const hl_segment *sg, int32_t i, int32_t t0, const char *where) {
    hl_sequence *seq = sg->seq;
    if (!seq || !sg->tokens || !sg->logits) return hl_fail(HL_ERR_INVALID, "%sNULL sequence, tokens or logits", where);
    if (seq->ctx != c) return hl_fail(HL_ERR_INVALID, "%sthe sequence belongs to another context", where);
    for (int32_t j = 0; j < i; j++)
        if (c->segs[j].seq == seq) return hl_fail(HL_ERR_INVALID, "%sthe sequence is also in segment %d", where, j);
    if (sg->n_tokens > seq->n_ctx - seq->n_used)
        return hl_fail(HL_ERR_CONTEXT_FULL, "%scontext full: %d cells used of %d, %d more requested", where,
                       seq->n_used, seq->n_ctx, sg->n_tokens);
    for (int32_t k = 0; k < sg->n_tokens; k++) {
        if (sg->tokens[k] < 0 || sg->tokens[k] >= c->model->hp.n_vocab)
            return hl_fail(HL_ERR_INVALID, "%stoken id %d at index %d is outside the vocabulary [0, %d)", where,
                           sg->tokens[k], k, c->model->hp.n_vocab);
        c->tokens[t0 + k] = sg->tokens[k];
    }
    c->segs[i] = (hl_batch_seg){.seq = seq, .logits = sg->logits, .n = sg->n_tokens,
                                .n_out = sg->all_logits ? sg->n_tokens : 1};
    return HL_OK;
}

/* The logits buffer of a batch of several segments: n_out rows of n_vocab. */
static hl_status grow_logits(hl_context *c) {
    const size_t need = (size_t)c->n_out * (size_t)c->model->hp.n_vocab;
    if (need <= c->logits_floats) return HL_OK;
    float *l = realloc(c->logits, need * sizeof(float));
    if (!l) return hl_fail(HL_ERR_NOMEM, "out of memory for the logits of %d rows", c->n_out);
    c->logits = l, c->logits_floats = need;
    return HL_OK;
}

/* Checks, layout, graph build and plan of a batch (fn names the caller in messages). */
static hl_status prepare_batch(hl_context *c, const hl_segment *segments, int32_t n_segments, const char *fn) {
    if (!c || !segments || n_segments < 1) return hl_fail(HL_ERR_INVALID, "%s: NULL argument or no segment", fn);
    int64_t total = 0;
    for (int32_t i = 0; i < n_segments; i++) {
        if (segments[i].n_tokens < 1 && n_segments > 1)
            return hl_fail(HL_ERR_INVALID, "%s: segment %d: %d tokens, expected 1 or more", fn, i, segments[i].n_tokens);
        total += segments[i].n_tokens;
    }
    if (total < 1 || total > c->params.n_batch)
        return hl_fail(HL_ERR_INVALID, n_segments == 1 ? "%s: %lld tokens, expected 1 to n_batch = %d"
                                                       : "%s: %lld tokens in all, expected 1 to n_batch = %d",
                       fn, (long long)total, c->params.n_batch);
    char where[48] = "";
    for (int32_t i = 0, t0 = 0; i < n_segments; t0 += segments[i++].n_tokens) {
        if (n_segments > 1) snprintf(where, sizeof where, "%s: segment %d: ", fn, i);
        hl_status st = check_segment(c, &segments[i], i, t0, where);
        if (st != HL_OK) return st;
    }
    c->n_segs = n_segments;
    hl_batch_layout(c);
    hl_status st = n_segments > 1 ? grow_logits(c) : HL_OK;
    if (st == HL_OK) st = hl_graph_build(c, n_segments > 1 ? c->logits : c->segs[0].logits);
    return st == HL_OK ? hl_graph_plan(c) : st;
}

hl_status hl_decode_prepare(hl_sequence *seq, const int32_t *tokens, int32_t n_tokens, float *logits,
                            int32_t all_logits) {
    if (!seq || !tokens || !logits) return hl_fail(HL_ERR_INVALID, "hl_find_nonfinite: NULL argument");
    const hl_segment seg = {seq, tokens, n_tokens, logits, all_logits};
    return prepare_batch(seq->ctx, &seg, 1, "hl_find_nonfinite");
}

/* After compute: the segments' logits out of the batch buffer (several segments), their cells taken. */
static void finish_batch(hl_context *c) {
    const size_t n_vocab = (size_t)c->model->hp.n_vocab;
    for (int32_t s = 0; s < c->n_segs; s++) {
        const hl_batch_seg *sg = &c->segs[s];
        if (c->n_segs > 1)
            memcpy(sg->logits, c->logits + (size_t)sg->out0 * n_vocab, (size_t)sg->n_out * n_vocab * sizeof(float));
        for (int32_t i = 0; i < sg->n; i++) sg->seq->cell_sig[sg->pos0 + i] = sg->seq->set_sig;
        sg->seq->n_used += sg->n;
    }
}

hl_status hl_decode_batch(hl_context *c, const hl_segment *segments, int32_t n_segments) {
    hl_status st = prepare_batch(c, segments, n_segments, "hl_decode_batch");
    if (st == HL_OK) st = hl_graph_compute(c);
    if (st == HL_OK) finish_batch(c);
    return st;
}

hl_sequence *hl_context_sequence(hl_context *c) { return c ? c->seq0 : NULL; }

void hl_set_abort(hl_context *c, volatile int32_t *flag) {
    if (c) c->abort_flag = flag;
}
