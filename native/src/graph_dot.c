/*
 * hl_graph_dot: the graph of one decode as Graphviz DOT, built but not run.
 * mul_mat_lora nodes (a mat-mul or row lookup with adapter terms) are filled
 * and carry lora=1; the nodes computing t = A.x carry lora_a=1.
 */
#include <stdarg.h>
#include <stdio.h>

#include "core.h"
#include "quants.h"

typedef struct {
    char *buf;
    size_t cap, len; /* len counts everything, written or not */
} dot_writer;

__attribute__((format(printf, 2, 3))) static void emit(dot_writer *w, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    char *at = w->len < w->cap ? w->buf + w->len : NULL;
    int n = vsnprintf(at, at ? w->cap - w->len : 0, fmt, args);
    va_end(args);
    if (n > 0) w->len += (size_t)n;
}

static const char *OP_NAMES[OP_COUNT] = {
    [OP_GET_ROWS] = "get_rows", [OP_RMS_NORM] = "rms_norm", [OP_MUL_MAT] = "mul_mat", [OP_ROPE] = "rope",
    [OP_STORE_KV] = "store_kv", [OP_ATTENTION] = "attention", [OP_SWIGLU] = "swiglu", [OP_ADD] = "add",
    [OP_LORA_A] = "lora_a"};

static void emit_node(dot_writer *w, int32_t i, const hl_node *nd) {
    const int lora = nd->n_terms > 0 && (nd->op == OP_MUL_MAT || nd->op == OP_GET_ROWS);
    const char *op = lora ? (nd->op == OP_MUL_MAT ? "mul_mat_lora" : "get_rows_lora") : OP_NAMES[nd->op];
    emit(w, "  n%d [label=\"%s\\n%s", i, nd->name, op);
    if (nd->op == OP_MUL_MAT || nd->op == OP_GET_ROWS)
        emit(w, " %s [%lld, %lld]", hl_get_type_traits(nd->src0.type)->name, (long long)nd->src0.ne[0],
             (long long)nd->src0.ne[1]);
    if (nd->n_terms) emit(w, "\\n%d adapter term%s", nd->n_terms, nd->n_terms > 1 ? "s" : "");
    if (lora) emit(w, "\", lora=1, style=filled, fillcolor=\"#f4b942\"];\n");
    else if (nd->op == OP_LORA_A) emit(w, "\", lora_a=1, style=dashed];\n");
    else emit(w, "\"];\n");
}

static int reads(const hl_tensor *src, const hl_node *writer) {
    const char *p = src->data, *d = writer->dst.data;
    return p && d && p >= d && p < d + (size_t)writer->dst.ne[1] * writer->dst.row_bytes;
}

/* The last node before i that wrote what node i reads (or that stored the KV cache it attends over). */
static int32_t producer(const hl_context *ctx, int32_t i, const hl_tensor *src) {
    for (int32_t j = i - 1; j >= 0; j--) {
        const hl_node *w = &ctx->nodes[j];
        if (ctx->nodes[i].op == OP_ATTENTION && src == NULL && w->op == OP_STORE_KV && w->il == ctx->nodes[i].il)
            return j;
        if (src && reads(src, w)) return j;
    }
    return -1;
}

static int shown(const hl_node *nd, int32_t layer) { return layer < 0 || nd->il == layer; }

/* The OP_LORA_A node that computed the t's of a mat-mul's terms. */
static int32_t lora_a_producer(const hl_context *ctx, int32_t i) {
    const hl_lora_term *t = ctx->nodes[i].terms;
    for (int32_t j = i - 1; j >= 0; j--) {
        const hl_node *w = &ctx->nodes[j];
        if (w->op == OP_LORA_A && t >= w->terms && t < w->terms + w->n_terms) return j;
    }
    return -1;
}

static void emit_edges(dot_writer *w, const hl_context *ctx, int32_t i, int32_t layer) {
    const hl_node *nd = &ctx->nodes[i];
    const hl_tensor *srcs[4] = {&nd->src0, &nd->src1, &nd->src2, NULL};
    const int n_src = nd->op == OP_ATTENTION ? 4 : 3;
    int32_t seen[4] = {-1, -1, -1, -1};
    for (int k = 0; k < n_src; k++) {
        const int32_t j = producer(ctx, i, srcs[k]);
        if (j < 0 || !shown(&ctx->nodes[j], layer) || j == seen[0] || j == seen[1] || j == seen[2]) continue;
        seen[k] = j;
        emit(w, "  n%d -> n%d;\n", j, i);
    }
    if (nd->op == OP_MUL_MAT && nd->n_terms) {
        const int32_t j = lora_a_producer(ctx, i);
        if (j >= 0 && shown(&ctx->nodes[j], layer)) emit(w, "  n%d -> n%d [style=dashed];\n", j, i);
    }
}

hl_status hl_graph_dot(hl_context *ctx, int32_t n_tokens, int32_t layer, char *buf, size_t cap, size_t *needed) {
    if (!ctx || !needed || (cap > 0 && !buf)) return hl_fail(HL_ERR_INVALID, "hl_graph_dot: NULL argument");
    if (n_tokens < 1 || n_tokens > ctx->params.n_batch)
        return hl_fail(HL_ERR_INVALID, "hl_graph_dot: %d tokens, expected 1 to n_batch = %d", n_tokens,
                       ctx->params.n_batch);
    if (layer < -1 || layer >= ctx->model->hp.n_layer)
        return hl_fail(HL_ERR_INVALID, "hl_graph_dot: layer %d, expected -1 or 0 to %d", layer,
                       ctx->model->hp.n_layer - 1);
    float unused_logits;
    hl_status st = hl_graph_build(ctx, n_tokens, &unused_logits, 0);
    if (st != HL_OK) return st;
    dot_writer w = {buf, cap, 0};
    emit(&w, "digraph hotlora {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n");
    emit(&w, "  label=\"decode of %d token%s, %d adapter%s active\";\n", n_tokens, n_tokens > 1 ? "s" : "",
         ctx->n_active, ctx->n_active == 1 ? "" : "s");
    for (int32_t i = 0; i < ctx->n_nodes; i++)
        if (shown(&ctx->nodes[i], layer)) emit_node(&w, i, &ctx->nodes[i]);
    for (int32_t i = 0; i < ctx->n_nodes; i++)
        if (shown(&ctx->nodes[i], layer)) emit_edges(&w, ctx, i, layer);
    emit(&w, "}\n");
    *needed = w.len + 1;
    if (cap == 0) return HL_OK; /* a size query */
    buf[w.len < cap ? w.len : cap - 1] = '\0';
    return w.len < cap ? HL_OK : hl_fail(HL_ERR_INVALID, "hl_graph_dot: buffer of %zu bytes is too small", cap);
}
