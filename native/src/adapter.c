/*
 * LoRA adapters: hl_adapter_create checks each pair against the model and
 * keeps 2-D views of the caller's memory (nothing is copied), indexed by
 * layer and target so that the graph builder finds a projection's pair at once.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "core.h"
#include "quants.h"

/* Keys of adapters created without a content key: unique, and apart from content keys by the top bit. */
static atomic_uint_fast64_t next_serial = 1;
#define UNIQUE_KEY_BIT (1ull << 63)

static const char *TARGET_NAMES[HL_LORA_LAYER_TARGETS] = {
    "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};

/* The base weight a layer target adapts. */
static const hl_tensor *layer_weight(const hl_model *m, int32_t il, int32_t target) {
    const hl_layer *L = &m->layers[il];
    const hl_tensor *w[HL_LORA_LAYER_TARGETS] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    return w[target];
}

static hl_status take(const char *name, const char *half, const hl_tensor_view *v, hl_tensor *out) {
    const hl_type_traits *tt = hl_get_type_traits(v->type);
    if (!v->data) return hl_fail(HL_ERR_INVALID, "LoRA tensor '%s': %s is missing", name, half);
    if (!tt || !tt->to_float || !tt->vec_dot)
        return hl_fail(HL_ERR_UNSUPPORTED, "LoRA tensor '%s': %s has unsupported type %d", name, half, v->type);
    if (v->ne[0] < 1 || v->ne[1] < 1 || v->ne[2] != 1 || v->ne[3] != 1)
        return hl_fail(HL_ERR_INVALID, "LoRA tensor '%s': %s must be 2-D", name, half);
    if (v->ne[0] % tt->block_size)
        return hl_fail(HL_ERR_INVALID, "LoRA tensor '%s': %s row length %lld is not a multiple of the %s block size",
                       name, half, (long long)v->ne[0], tt->name);
    *out = (hl_tensor){v->type, {v->ne[0], v->ne[1]}, hl_row_size(v->type, v->ne[0]), (void *)v->data};
    return HL_OK;
}

/* Shapes: a [n_in, r] and b [r, n_out] (token_embd: a [r, n_vocab], b [r, n_embd]). */
static hl_status check_pair(const char *name, const hl_lora *p, int64_t n_in, int64_t n_out, int embd) {
    const int64_t a_in = embd ? p->a.ne[1] : p->a.ne[0], a_rank = embd ? p->a.ne[0] : p->a.ne[1];
    if (a_rank != p->b.ne[0])
        return hl_fail(HL_ERR_INVALID, "LoRA tensor '%s': lora_a rank %lld ([%lld, %lld]) does not match lora_b rank "
                       "%lld ([%lld, %lld])", name, (long long)a_rank, (long long)p->a.ne[0], (long long)p->a.ne[1],
                       (long long)p->b.ne[0], (long long)p->b.ne[0], (long long)p->b.ne[1]);
    const int64_t base0 = embd ? n_out : n_in, base1 = embd ? n_in : n_out; /* the base tensor's ne */
    if (a_in != n_in || p->b.ne[1] != n_out)
        return hl_fail(HL_ERR_INVALID, "tensor '%s' has incorrect shape for this LoRA: base is [%lld, %lld], "
                       "lora_a is [%lld, %lld], lora_b is [%lld, %lld] (hint: maybe wrong base model?)", name,
                       (long long)base0, (long long)base1, (long long)p->a.ne[0], (long long)p->a.ne[1],
                       (long long)p->b.ne[0], (long long)p->b.ne[1]);
    return HL_OK;
}

/* B [r, n_out] of a float type transposed in panels (core.h, hl_lora.bt): y += s * sum_k t_k * Bt[k] then
 * runs over contiguous rows, where B's rows of r elements would need one tiny dot each. */
static void *transpose(const hl_tensor *b) {
    const size_t elem = hl_get_type_traits(b->type)->type_size;
    const int64_t r = b->ne[0], n_out = b->ne[1], n_panels = (n_out + HL_BT_PANEL - 1) / HL_BT_PANEL;
    char *bt = calloc((size_t)(n_panels * r * HL_BT_PANEL), elem);
    if (!bt) return NULL;
    for (int64_t j = 0; j < n_out; j++)
        for (int64_t k = 0; k < r; k++)
            memcpy(bt + (size_t)hl_bt_index(r, k, j) * elem, (const char *)b->data + j * b->row_bytes + k * elem, elem);
    return bt;
}

static hl_status add_pair(hl_adapter *ad, const hl_model *m, const hl_lora_pair *d) {
    char name[64];
    hl_lora *slot;
    int64_t n_in, n_out;
    if (d->target >= 0 && d->target < HL_LORA_LAYER_TARGETS) {
        if (d->layer < 0 || d->layer >= m->hp.n_layer)
            return hl_fail(HL_ERR_INVALID, "LoRA tensor 'blk.%d.%s.weight' does not exist in base model (%d layers)",
                           d->layer, TARGET_NAMES[d->target], m->hp.n_layer);
        snprintf(name, sizeof name, "blk.%d.%s.weight", d->layer, TARGET_NAMES[d->target]);
        const hl_tensor *w = layer_weight(m, d->layer, d->target);
        slot = &ad->layers[d->layer * HL_LORA_LAYER_TARGETS + d->target];
        n_in = w->ne[0], n_out = w->ne[1];
    } else if (d->target == HL_LORA_TOKEN_EMBD || d->target == HL_LORA_OUTPUT) {
        const int embd = d->target == HL_LORA_TOKEN_EMBD;
        snprintf(name, sizeof name, "%s", embd ? "token_embd.weight" : "output.weight");
        slot = embd ? &ad->token_embd : &ad->output;
        n_in = embd ? m->hp.n_vocab : m->hp.n_embd;
        n_out = embd ? m->hp.n_embd : m->hp.n_vocab;
    } else {
        return hl_fail(HL_ERR_INVALID, "unknown LoRA target %d", d->target);
    }
    if (slot->a.data) return hl_fail(HL_ERR_INVALID, "LoRA tensor '%s' appears twice", name);
    hl_lora p = {.scale = d->scale};
    hl_status st = take(name, "lora_a", &d->a, &p.a);
    if (st == HL_OK) st = take(name, "lora_b", &d->b, &p.b);
    if (st == HL_OK) st = check_pair(name, &p, n_in, n_out, d->target == HL_LORA_TOKEN_EMBD);
    if (st != HL_OK) return st;
    if (!isfinite(p.scale)) return hl_fail(HL_ERR_INVALID, "LoRA tensor '%s': scale is not finite", name);
    p.rank = (int32_t)p.b.ne[0];
    if (d->target != HL_LORA_TOKEN_EMBD && hl_get_type_traits(p.b.type)->axpy) {
        p.bt = transpose(&p.b);
        if (!p.bt) return hl_fail(HL_ERR_NOMEM, "out of memory for LoRA tensor '%s'", name);
    }
    *slot = p;
    return HL_OK;
}

hl_status hl_adapter_create(const hl_model *model, const hl_adapter_desc *desc, hl_adapter **out) {
    if (!model || !desc || !out || (desc->n_pairs > 0 && !desc->pairs))
        return hl_fail(HL_ERR_INVALID, "hl_adapter_create: NULL argument");
    *out = NULL;
    hl_adapter *ad = calloc(1, sizeof *ad);
    if (ad) ad->layers = calloc((size_t)model->hp.n_layer * HL_LORA_LAYER_TARGETS, sizeof *ad->layers);
    if (!ad || !ad->layers) {
        hl_adapter_free(ad);
        return hl_fail(HL_ERR_NOMEM, "out of memory for an adapter");
    }
    ad->model = model;
    ad->cache_key = desc->content_key ? desc->content_key & ~UNIQUE_KEY_BIT
                                      : UNIQUE_KEY_BIT | (uint64_t)atomic_fetch_add(&next_serial, 1);
    for (int32_t i = 0; i < desc->n_pairs; i++) {
        hl_status st = add_pair(ad, model, &desc->pairs[i]);
        if (st != HL_OK) {
            hl_adapter_free(ad);
            return st;
        }
    }
    *out = ad;
    return HL_OK;
}

hl_status hl_adapter_free(hl_adapter *adapter) {
    if (!adapter) return HL_OK;
    const int users = atomic_load(&adapter->users);
    if (users > 0)
        return hl_fail(HL_ERR_INVALID, "hl_adapter_free: the adapter is still active in %d sequence adapter set%s",
                       users, users == 1 ? "" : "s");
    if (adapter->layers)
        for (int64_t i = 0; i < (int64_t)adapter->model->hp.n_layer * HL_LORA_LAYER_TARGETS; i++)
            free(adapter->layers[i].bt);
    free(adapter->output.bt);
    free(adapter->layers);
    free(adapter);
    return HL_OK;
}
