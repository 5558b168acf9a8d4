/*
 * hl_model_create: checks the hyper-parameters and every tensor view of a
 * descriptor (Python already validated them against the file; the core checks
 * again so that no descriptor can make it read out of bounds), then keeps
 * 2-D views of the caller's memory. Nothing is copied.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "core.h"
#include "quants.h"

/* MATRIX: any row type; PROJECTION (layer matrices, the output head): also a repacked panel type. */
typedef enum { MATRIX, PROJECTION, VECTOR_F32 } tensor_kind;

static hl_status take_view(const char *name, const hl_tensor_view *v, int64_t ne0, int64_t ne1,
                           tensor_kind kind, int optional, hl_tensor *out) {
    *out = (hl_tensor){0};
    if (!v->data) return optional ? HL_OK : hl_fail(HL_ERR_INVALID, "tensor '%s' is missing", name);
    const hl_type_traits *tt = hl_get_type_traits(v->type);
    if (kind == VECTOR_F32 && v->type != HL_TYPE_F32)
        return hl_fail(HL_ERR_UNSUPPORTED, "tensor '%s' must be F32, got type %d", name, v->type);
    const int panels = tt && tt->panel_rows && tt->gemm;
    if (!tt || (!panels && (!tt->to_float || !tt->vec_dot)))
        return hl_fail(HL_ERR_UNSUPPORTED, "tensor '%s' has unsupported type %d", name, v->type);
    if (panels && (kind != PROJECTION || ne1 % tt->panel_rows))
        return hl_fail(HL_ERR_INVALID, "tensor '%s': %s rows (%lld) serve only a projection of whole panels of %lld",
                       name, tt->name, (long long)ne1, (long long)tt->panel_rows);
    if (v->ne[0] != ne0 || v->ne[1] != ne1 || v->ne[2] != 1 || v->ne[3] != 1)
        return hl_fail(HL_ERR_INVALID,
                       "tensor '%s' has wrong shape; expected [%lld, %lld], got [%lld, %lld, %lld, %lld]", name,
                       (long long)ne0, (long long)ne1, (long long)v->ne[0], (long long)v->ne[1],
                       (long long)v->ne[2], (long long)v->ne[3]);
    if (ne0 % tt->block_size != 0)
        return hl_fail(HL_ERR_INVALID, "tensor '%s': row length %lld is not a multiple of the %s block size %lld",
                       name, (long long)ne0, tt->name, (long long)tt->block_size);
    *out = (hl_tensor){v->type, {ne0, ne1}, hl_row_size(v->type, ne0), (void *)v->data};
    return HL_OK;
}

static hl_status check_hparams(const hl_model_desc *d) {
    if (d->arch != HL_ARCH_LLAMA && d->arch != HL_ARCH_QWEN2)
        return hl_fail(HL_ERR_UNSUPPORTED, "unknown architecture id %d", d->arch);
    if (d->n_vocab < 1 || d->n_embd < 1 || d->n_layer < 1 || d->n_head < 1 || d->n_head_kv < 1 ||
        d->head_dim < 2 || d->n_ff < 1)
        return hl_fail(HL_ERR_INVALID, "hyper-parameters must be positive (n_vocab %d, n_embd %d, n_layer %d, "
                       "n_head %d, n_head_kv %d, head_dim %d, n_ff %d)", d->n_vocab, d->n_embd, d->n_layer,
                       d->n_head, d->n_head_kv, d->head_dim, d->n_ff);
    if (d->head_dim % 2 || d->n_head % d->n_head_kv)
        return hl_fail(HL_ERR_INVALID, "head_dim %d must be even and n_head %d a multiple of n_head_kv %d",
                       d->head_dim, d->n_head, d->n_head_kv);
    if ((int64_t)d->head_dim * d->n_head > (1 << 24) || d->n_embd > (1 << 24) || d->n_ff > (1 << 26))
        return hl_fail(HL_ERR_INVALID, "hyper-parameters are implausibly large");
    if (d->rope_mode != HL_ROPE_NORM && d->rope_mode != HL_ROPE_NEOX)
        return hl_fail(HL_ERR_INVALID, "unknown rope mode %d", d->rope_mode);
    if (!(d->rms_eps > 0.0f) || !isfinite(d->rms_eps) || !(d->rope_freq_base > 0.0f) ||
        !isfinite(d->rope_freq_base) || !isfinite(d->rope_freq_scale) || !isfinite(d->rope_attn_factor))
        return hl_fail(HL_ERR_INVALID, "rms epsilon and rope parameters must be finite and positive");
    if (!d->layers) return hl_fail(HL_ERR_INVALID, "layer table is missing");
    return HL_OK;
}

#define TAKE(name, view, ne0, ne1, kind, opt, out)                          \
    do {                                                                    \
        hl_status st_ = take_view(name, view, ne0, ne1, kind, opt, out);    \
        if (st_ != HL_OK) return st_;                                       \
    } while (0)

static hl_status take_layer(const hl_model *m, int il, const hl_layer_desc *d, hl_layer *L) {
    const int64_t e = m->hp.n_embd, q = m->n_q, kv = m->n_embd_kv, ff = m->hp.n_ff;
    const int need_bias = m->hp.arch == HL_ARCH_QWEN2;
    char name[64];
#define N(s) (snprintf(name, sizeof name, "blk.%d." s, il), name)
    TAKE(N("attn_norm.weight"), &d->attn_norm, e, 1, VECTOR_F32, 0, &L->attn_norm);
    TAKE(N("attn_q.weight"), &d->wq, e, q, PROJECTION, 0, &L->wq);
    TAKE(N("attn_k.weight"), &d->wk, e, kv, PROJECTION, 0, &L->wk);
    TAKE(N("attn_v.weight"), &d->wv, e, kv, PROJECTION, 0, &L->wv);
    TAKE(N("attn_q.bias"), &d->bq, q, 1, VECTOR_F32, !need_bias, &L->bq);
    TAKE(N("attn_k.bias"), &d->bk, kv, 1, VECTOR_F32, !need_bias, &L->bk);
    TAKE(N("attn_v.bias"), &d->bv, kv, 1, VECTOR_F32, !need_bias, &L->bv);
    TAKE(N("attn_output.weight"), &d->wo, q, e, PROJECTION, 0, &L->wo);
    TAKE(N("attn_output.bias"), &d->bo, e, 1, VECTOR_F32, 1, &L->bo);
    TAKE(N("ffn_norm.weight"), &d->ffn_norm, e, 1, VECTOR_F32, 0, &L->ffn_norm);
    TAKE(N("ffn_gate.weight"), &d->w_gate, e, ff, PROJECTION, 0, &L->w_gate);
    TAKE(N("ffn_up.weight"), &d->w_up, e, ff, PROJECTION, 0, &L->w_up);
    TAKE(N("ffn_down.weight"), &d->w_down, ff, e, PROJECTION, 0, &L->w_down);
    TAKE(N("ffn_gate.bias"), &d->b_gate, ff, 1, VECTOR_F32, 1, &L->b_gate);
    TAKE(N("ffn_up.bias"), &d->b_up, ff, 1, VECTOR_F32, 1, &L->b_up);
    TAKE(N("ffn_down.bias"), &d->b_down, e, 1, VECTOR_F32, 1, &L->b_down);
#undef N
    return HL_OK;
}

static hl_status take_tensors(hl_model *m, const hl_model_desc *d) {
    const int64_t e = d->n_embd, V = d->n_vocab;
    TAKE("token_embd.weight", &d->token_embd, e, V, MATRIX, 0, &m->token_embd);
    TAKE("output_norm.weight", &d->output_norm, e, 1, VECTOR_F32, 0, &m->output_norm);
    TAKE("output.weight", &d->output, e, V, PROJECTION, 1, &m->output);
    if (!m->output.data) m->output = m->token_embd; /* tied output head */
    TAKE("rope_freqs.weight", &d->rope_freqs, d->head_dim / 2, 1, VECTOR_F32, 1, &m->rope_freqs);
    for (int il = 0; il < d->n_layer; il++) {
        hl_status st = take_layer(m, il, &d->layers[il], &m->layers[il]);
        if (st != HL_OK) return st;
    }
    return HL_OK;
}

hl_status hl_model_create(const hl_model_desc *desc, hl_model **out) {
    if (!desc || !out) return hl_fail(HL_ERR_INVALID, "hl_model_create: NULL argument");
    *out = NULL;
    hl_quants_init();
    hl_status st = check_hparams(desc);
    if (st != HL_OK) return st;
    hl_model *m = calloc(1, sizeof *m);
    if (m) m->layers = calloc((size_t)desc->n_layer, sizeof *m->layers);
    if (!m || !m->layers) {
        hl_model_free(m);
        return hl_fail(HL_ERR_NOMEM, "out of memory for %d layers", desc->n_layer);
    }
    m->hp = *desc;
    m->hp.layers = NULL;
    m->n_q = desc->head_dim * desc->n_head;
    m->n_embd_kv = desc->head_dim * desc->n_head_kv;
    st = take_tensors(m, desc);
    if (st != HL_OK) {
        hl_model_free(m);
        return st;
    }
    *out = m;
    return HL_OK;
}

void hl_model_free(hl_model *model) {
    if (!model) return;
    free(model->layers);
    free(model);
}
