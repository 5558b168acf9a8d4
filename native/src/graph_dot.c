/*
 * hl_graph_dot: the graph of one decode as Graphviz DOT, built but not run.
 * A mat-mul node is drawn as one DOT node per projection; mul_mat_lora
 * projections (and a row lookup with adapter terms) are filled and carry
 * lora=1; a node's lora_a phase, computing t = A.x, is drawn dashed with lora_a=1.
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
    [OP_GET_ROWS] = "get_rows", [OP_RMS_NORM] = "rms_norm", [OP_MUL_MAT] = "mul_mat", [OP_ATTENTION] = "attention",
    [OP_GATHER] = "gather"};
static const char *EPILOGUES[] = {[EPI_NONE] = "", [EPI_ROPE_STORE_KV] = " + rope + kv store",
                                  [EPI_SWIGLU] = " + swiglu", [EPI_ADD] = " + residual"};

static void emit_terms(dot_writer *w, int32_t n_terms) {
    if (n_terms) emit(w, "\\n%d adapter term%s", n_terms, n_terms > 1 ? "s" : "");
}

static void emit_close(dot_writer *w, int lora) {
    emit(w, lora ? "\", lora=1, style=filled, fillcolor=\"#f4b942\"];\n" : "\"];\n");
}

/* A mat-mul node is drawn as one DOT node per projection (n<i>_<k>) plus, with adapters, its lora_a phase. */
static void emit_node(dot_writer *w, int32_t i, const hl_node *nd) {
    if (nd->op != OP_MUL_MAT) {
        const int lora = nd->n_terms > 0;
        emit(w, "  n%d [label=\"%s\\n%s", i, nd->name, lora ? "get_rows_lora" : OP_NAMES[nd->op]);
        if (nd->op == OP_GET_ROWS)
            emit(w, " %s [%lld, %lld]", hl_get_type_traits(nd->src0.type)->name, (long long)nd->src0.ne[0],
                 (long long)nd->src0.ne[1]);
        emit_terms(w, nd->n_terms);
        emit_close(w, lora);
        return;
    }
    if (nd->n_terms) emit(w, "  n%d_a [label=\"%s lora_a\\n%d adapter terms\", lora_a=1, style=dashed];\n", i,
                          nd->name, nd->n_terms);
    for (int32_t k = 0; k < nd->n_proj; k++) {
        const hl_proj *p = &nd->proj[k];
        emit(w, "  n%d_%d [label=\"", i, k);
        if (nd->il >= 0) emit(w, "blk.%d.", nd->il);
        emit(w, "%s\\n%s %s [%lld, %lld]%s", p->name, p->n_terms ? "mul_mat_lora" : "mul_mat",
             hl_get_type_traits(p->w.type)->name, (long long)p->w.ne[0], (long long)p->w.ne[1], EPILOGUES[nd->epi]);
        emit_terms(w, p->n_terms);
        emit_close(w, p->n_terms > 0);
    }
}

static int inside(const hl_tensor *src, const hl_tensor *t) {
    const char *p = src->data, *d = t->data;
    return p && d && p >= d && p < d + (size_t)t->ne[1] * t->row_bytes;
}

/* The DOT id of what node j wrote that src reads ("" if it wrote nothing of it). */
static int written_by(const hl_node *w, int32_t j, const hl_tensor *src, char id[32]) {
    if (w->op != OP_MUL_MAT) {
        snprintf(id, 32, "n%d", j);
        return inside(src, &w->dst);
    }
    for (int32_t k = 0; k < w->n_proj; k++) {
        snprintf(id, 32, "n%d_%d", j, k);
        if (inside(src, &w->proj[k].dst)) return 1;
    }
    snprintf(id, 32, "n%d_0", j);
    return w->epi == EPI_ADD && inside(src, &w->residual);
}

static int shown(const hl_node *nd, int32_t layer) { return layer < 0 || nd->il == layer; }

/* An edge into `to` from the last node before i that wrote what src reads. */
static void emit_input(dot_writer *w, const hl_context *ctx, int32_t i, const hl_tensor *src, const char *to,
                       int32_t layer) {
    char from[32];
    for (int32_t j = i - 1; j >= 0 && src->data; j--) {
        if (!written_by(&ctx->nodes[j], j, src, from)) continue;
        if (shown(&ctx->nodes[j], layer)) emit(w, "  %s -> %s;\n", from, to);
        return;
    }
}

/* Attention reads the cache that its layer's attn_qkv node stored (projections k and v). */
static void emit_cache_edges(dot_writer *w, const hl_context *ctx, int32_t i, int32_t layer) {
    for (int32_t j = i - 1; j >= 0; j--) {
        const hl_node *q = &ctx->nodes[j];
        if (q->op != OP_MUL_MAT || q->epi != EPI_ROPE_STORE_KV || q->il != ctx->nodes[i].il) continue;
        if (shown(q, layer)) emit(w, "  n%d_1 -> n%d;\n  n%d_2 -> n%d;\n", j, i, j, i);
        return;
    }
}

static void emit_edges(dot_writer *w, const hl_context *ctx, int32_t i, int32_t layer) {
    const hl_node *nd = &ctx->nodes[i];
    char to[32];
    if (nd->op != OP_MUL_MAT) {
        snprintf(to, sizeof to, "n%d", i);
        emit_input(w, ctx, i, &nd->src0, to, layer);
        if (nd->op == OP_ATTENTION) emit_cache_edges(w, ctx, i, layer);
        return;
    }
    if (nd->n_terms) {
        snprintf(to, sizeof to, "n%d_a", i);
        emit_input(w, ctx, i, &nd->src1, to, layer);
    }
    for (int32_t k = 0; k < nd->n_proj; k++) {
        snprintf(to, sizeof to, "n%d_%d", i, k);
        emit_input(w, ctx, i, &nd->src1, to, layer);
        if (nd->proj[k].n_terms) emit(w, "  n%d_a -> %s [style=dashed];\n", i, to);
    }
}

hl_status hl_graph_dot(hl_context *ctx, int32_t n_tokens, int32_t layer, char *buf, size_t cap, size_t *needed) {
    if (!ctx || !needed || (cap > 0 && !buf)) return hl_fail(HL_ERR_INVALID, "hl_graph_dot: NULL argument");
    hl_status st = hl_graph_build_for_tools(ctx, "hl_graph_dot", n_tokens, layer);
    if (st != HL_OK) return st;
    dot_writer w = {buf, cap, 0};
    emit(&w, "digraph hotlora {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n");
    emit(&w, "  label=\"decode of %d token%s, %d adapter%s active\";\n", n_tokens, n_tokens > 1 ? "s" : "",
         ctx->seq0->n_active, ctx->seq0->n_active == 1 ? "" : "s");
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
