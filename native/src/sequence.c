/*
 * Sequences: a KV cache of n_ctx cells per layer (K [n_ctx][n_embd_kv], V transposed [n_embd_kv][n_ctx]),
 * the cells in use with the adapter-set signature each was computed under, and the active adapter set.
 * A context owns its sequences in a list (its default sequence first) and frees those left with itself.
 */
#include <stdlib.h>

#include "core.h"
#include "quants.h"

static hl_status alloc_cache(hl_sequence *s) {
    const hl_model *m = s->ctx->model;
    const size_t cache_bytes = hl_row_size(s->ctx->params.cache_type, m->n_embd_kv) * (size_t)s->n_ctx;
    s->k_cache = calloc((size_t)m->hp.n_layer, sizeof(void *));
    s->v_cache = calloc((size_t)m->hp.n_layer, sizeof(void *));
    s->cell_sig = calloc((size_t)s->n_ctx, sizeof(uint64_t));
    if (!s->k_cache || !s->v_cache || !s->cell_sig) return HL_ERR_NOMEM;
    for (int il = 0; il < m->hp.n_layer; il++) {
        s->k_cache[il] = calloc(1, cache_bytes);
        s->v_cache[il] = calloc(1, cache_bytes);
        if (!s->k_cache[il] || !s->v_cache[il]) return HL_ERR_NOMEM;
    }
    return HL_OK;
}

static void release(hl_sequence *s) {
    hl_sequence_clear_set(s);
    for (int il = 0; il < s->ctx->model->hp.n_layer; il++) {
        if (s->k_cache) free(s->k_cache[il]);
        if (s->v_cache) free(s->v_cache[il]);
    }
    free(s->k_cache), free(s->v_cache), free(s->cell_sig);
    free(s);
}

hl_status hl_sequence_alloc(hl_context *ctx, int32_t n_ctx, hl_sequence **out) {
    *out = NULL;
    if (n_ctx < 1) return hl_fail(HL_ERR_INVALID, "sequence of %d cells: n_ctx must be positive", n_ctx);
    hl_sequence *s = calloc(1, sizeof *s);
    if (!s) return hl_fail(HL_ERR_NOMEM, "out of memory for a sequence");
    s->ctx = ctx;
    s->n_ctx = n_ctx;
    if (alloc_cache(s) != HL_OK) {
        release(s);
        return hl_fail(HL_ERR_NOMEM, "out of memory for a KV cache of %d cells", n_ctx);
    }
    s->next = ctx->seqs;
    ctx->seqs = s;
    *out = s;
    return HL_OK;
}

hl_status hl_sequence_create(hl_context *ctx, int32_t n_ctx, hl_sequence **out) {
    if (!ctx || !out) return hl_fail(HL_ERR_INVALID, "hl_sequence_create: NULL argument");
    return hl_sequence_alloc(ctx, n_ctx, out);
}

/* Unlinks s from its context's list and frees it. */
static void unlink_and_release(hl_sequence *s) {
    hl_sequence **link = &s->ctx->seqs;
    while (*link && *link != s) link = &(*link)->next;
    if (*link) *link = s->next;
    release(s);
}

void hl_sequence_free(hl_sequence *seq) {
    if (seq && seq != seq->ctx->seq0) unlink_and_release(seq);
}

/* Frees every sequence of ctx (hl_context_free). */
void hl_sequence_free_all(hl_context *ctx) {
    while (ctx->seqs) unlink_and_release(ctx->seqs);
    ctx->seq0 = NULL;
}

int32_t hl_sequence_used(const hl_sequence *seq) { return seq ? seq->n_used : 0; }

int32_t hl_sequence_first_stale(const hl_sequence *seq) {
    if (!seq) return 0;
    int32_t i = 0;
    while (i < seq->n_used && seq->cell_sig[i] == seq->set_sig) i++;
    return i;
}

hl_status hl_sequence_keep(hl_sequence *seq, int32_t n) {
    if (!seq) return hl_fail(HL_ERR_INVALID, "hl_sequence_keep: NULL sequence");
    if (n < 0 || n > seq->n_used)
        return hl_fail(HL_ERR_INVALID, "hl_sequence_keep: %d cells requested, %d in use", n, seq->n_used);
    seq->n_used = n;
    return HL_OK;
}
