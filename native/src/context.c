/*
 * A context: the KV cache, activation and work buffers for n_batch tokens,
 * the thread pool, and the decode entry point.
 */
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
    const size_t cache_bytes = hl_row_size(c->params.cache_type, m->n_embd_kv) * (size_t)c->params.n_ctx;
    c->k_cache = calloc((size_t)m->hp.n_layer, sizeof(void *));
    c->v_cache = calloc((size_t)m->hp.n_layer, sizeof(void *));
    if (!c->k_cache || !c->v_cache) return HL_ERR_NOMEM;
    for (int il = 0; il < m->hp.n_layer; il++) {
        c->k_cache[il] = calloc(1, cache_bytes);
        c->v_cache[il] = calloc(1, cache_bytes);
        if (!c->k_cache[il] || !c->v_cache[il]) return HL_ERR_NOMEM;
    }
    c->x = alloc_floats(m->hp.n_embd, B);
    c->xn = alloc_floats(m->hp.n_embd, B);
    c->proj = alloc_floats(m->hp.n_embd, B);
    c->q = alloc_floats(m->n_q, B);
    c->attn = alloc_floats(m->n_q, B);
    c->k = alloc_floats(m->n_embd_kv, B);
    c->v = alloc_floats(m->n_embd_kv, B);
    c->gate = alloc_floats(m->hp.n_ff, B);
    c->up = alloc_floats(m->hp.n_ff, B);
    c->rope_cs = alloc_floats(m->hp.head_dim, B);
    c->tokens = malloc((size_t)B * sizeof(int32_t));
    c->cell_sig = calloc((size_t)c->params.n_ctx, sizeof(uint64_t));
    c->max_nodes = hl_graph_max_nodes(m);
    c->nodes = calloc((size_t)c->max_nodes, sizeof(hl_node));
    if (!c->x || !c->xn || !c->proj || !c->q || !c->attn || !c->k || !c->v || !c->gate || !c->up ||
        !c->rope_cs || !c->tokens || !c->cell_sig || !c->nodes)
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
    if (alloc_buffers(c) != HL_OK) {
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
    for (int il = 0; il < c->model->hp.n_layer; il++) {
        if (c->k_cache) free(c->k_cache[il]);
        if (c->v_cache) free(c->v_cache[il]);
    }
    free(c->k_cache);
    free(c->v_cache);
    void *bufs[] = {c->x,      c->xn,     c->proj,     c->q,     c->attn,   c->k,      c->v,     c->gate,
                    c->up,     c->rope_cs, c->tokens,  c->work,  c->nodes,  c->cell_sig, c->active, c->terms,
                    c->lora_t};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    free(c);
}

hl_status hl_decode_prepare(hl_context *c, const int32_t *tokens, int32_t n_tokens, float *logits,
                            int32_t all_logits) {
    if (!c || !tokens || !logits) return hl_fail(HL_ERR_INVALID, "hl_decode: NULL argument");
    if (n_tokens < 1 || n_tokens > c->params.n_batch)
        return hl_fail(HL_ERR_INVALID, "hl_decode: %d tokens, expected 1 to n_batch = %d", n_tokens,
                       c->params.n_batch);
    if (n_tokens > c->params.n_ctx - c->n_used)
        return hl_fail(HL_ERR_CONTEXT_FULL, "context full: %d cells used of %d, %d more requested", c->n_used,
                       c->params.n_ctx, n_tokens);
    for (int32_t i = 0; i < n_tokens; i++) {
        if (tokens[i] < 0 || tokens[i] >= c->model->hp.n_vocab)
            return hl_fail(HL_ERR_INVALID, "token id %d at index %d is outside the vocabulary [0, %d)", tokens[i],
                           i, c->model->hp.n_vocab);
        c->tokens[i] = tokens[i];
    }
    hl_status st = hl_graph_build(c, n_tokens, logits, all_logits);
    return st == HL_OK ? hl_graph_plan(c) : st;
}

hl_status hl_decode(hl_context *c, const int32_t *tokens, int32_t n_tokens, float *logits, int32_t all_logits) {
    hl_status st = hl_decode_prepare(c, tokens, n_tokens, logits, all_logits);
    if (st == HL_OK) st = hl_graph_compute(c);
    if (st != HL_OK) return st;
    for (int32_t i = 0; i < n_tokens; i++) c->cell_sig[c->n_used + i] = c->set_sig;
    c->n_used += n_tokens;
    return HL_OK;
}

int32_t hl_kv_used(const hl_context *c) { return c ? c->n_used : 0; }

int32_t hl_kv_first_stale(const hl_context *c) {
    if (!c) return 0;
    int32_t i = 0;
    while (i < c->n_used && c->cell_sig[i] == c->set_sig) i++;
    return i;
}

hl_status hl_kv_keep(hl_context *c, int32_t n) {
    if (!c) return hl_fail(HL_ERR_INVALID, "hl_kv_keep: NULL context");
    if (n < 0 || n > c->n_used)
        return hl_fail(HL_ERR_INVALID, "hl_kv_keep: %d cells requested, %d in use", n, c->n_used);
    c->n_used = n;
    return HL_OK;
}

void hl_set_abort(hl_context *c, volatile int32_t *flag) {
    if (c) c->abort_flag = flag;
}
