/*
 * The non-finite node finder: recomputes one sequence's segment of a decode batch alone, node by node, exactly
 * as hl_decode_batch computes it, and checks after each node what it wrote (its outputs, the residual it added
 * to, the KV cache rows it stored) for NaN or infinity. Only called after a decode returned non-finite logits;
 * hl_decode_batch itself is untouched.
 */
#include <stdio.h>

#include "check_tensors.h"
#include "core.h"

/* The first token (0-based in the batch of n_tokens) of an F32 [n, rows] output with a non-finite value. */
static int64_t bad_token_f32(const hl_tensor *t, int32_t n_tokens) {
    if (!t->data) return -1;
    const int64_t row = hl_first_bad_row(HL_TYPE_F32, t->data, t->row_bytes, t->ne[0], t->ne[1]);
    return row < 0 ? -1 : n_tokens - t->ne[1] + row; /* outputs hold the batch's last ne[1] tokens */
}

/* The first batch token whose K or V cache cells of layer il are non-finite; *which gets "k" or "v". */
static int64_t bad_token_cache(const hl_sequence *s, int32_t il, int32_t pos0, int32_t n_tokens, const char **which) {
    const hl_context *ctx = s->ctx;
    const int32_t type = ctx->params.cache_type, n_kv = ctx->model->n_embd_kv, n_ctx = s->n_ctx;
    const size_t k_row = hl_row_size(type, n_kv), elem = hl_row_size(type, 1);
    for (int32_t t = 0; t < n_tokens; t++) {
        const char *k = (const char *)s->k_cache[il] + k_row * (size_t)(pos0 + t);
        const char *v = (const char *)s->v_cache[il] + elem * (size_t)(pos0 + t); /* [n_kv][n_ctx]: a column */
        *which = "k cache";
        if (hl_first_bad_row(type, k, k_row, n_kv, 1) >= 0) return t;
        *which = "v cache";
        if (hl_first_bad_row(type, v, elem * (size_t)n_ctx, 1, n_kv) >= 0) return t;
    }
    return -1;
}

/* The first batch token node nd wrote a non-finite value for (-1: none); *what names where. */
static int64_t bad_token_of_node(const hl_sequence *s, const hl_node *nd, int32_t pos0, int32_t n_tokens,
                                 const char **what) {
    int64_t t;
    *what = "";
    if (nd->op != OP_MUL_MAT) return bad_token_f32(&nd->dst, n_tokens);
    for (int32_t p = 0; p < nd->n_proj; p++) {
        *what = nd->proj[p].name;
        if ((t = bad_token_f32(&nd->proj[p].dst, n_tokens)) >= 0) return t;
    }
    *what = "residual";
    if (nd->epi == EPI_ADD && (t = bad_token_f32(&nd->residual, n_tokens)) >= 0) return t;
    if (nd->epi == EPI_ROPE_STORE_KV) return bad_token_cache(s, nd->il, pos0, n_tokens, what);
    return -1;
}

hl_status hl_find_nonfinite(hl_sequence *seq, const int32_t *tokens, int32_t n_tokens, float *logits,
                            int32_t all_logits, int32_t *position, char *name, size_t cap) {
    if (!position || !name || cap == 0) return hl_fail(HL_ERR_INVALID, "hl_find_nonfinite: NULL argument");
    if (seq && !hl_check_supported(seq->ctx->params.cache_type))
        return hl_fail(HL_ERR_UNSUPPORTED, "hl_find_nonfinite: cache type %d", (int)seq->ctx->params.cache_type);
    hl_status st = hl_decode_prepare(seq, tokens, n_tokens, logits, all_logits);
    if (st != HL_OK) return st;
    hl_context *ctx = seq->ctx;
    *position = -1;
    name[0] = '\0';
    for (int32_t i = 0; i < ctx->n_nodes; i++) {
        if (ctx->abort_flag && *ctx->abort_flag) return hl_fail(HL_ERR_ABORTED, "compute aborted");
        hl_graph_compute_node(ctx, i);
        const char *what;
        const int64_t t = bad_token_of_node(seq, &ctx->nodes[i], seq->n_used, n_tokens, &what);
        if (t >= 0) {
            *position = seq->n_used + (int32_t)t;
            snprintf(name, cap, what[0] ? "%s (%s)" : "%s%s", ctx->nodes[i].name, what);
            return HL_OK;
        }
    }
    return HL_OK;
}
