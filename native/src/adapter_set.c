/*
 * The active adapter set of a context: hl_context_set_adapters copies the
 * list (skipping scale 0), sizes the graph's term storage for it, and gives
 * the set a signature. Each KV cell records the signature it was computed
 * under, so the library can find cells a swap made stale (hl_kv_first_stale).
 */
#include <math.h>
#include <stdlib.h>

#include "core.h"

/* FNV-1a over (adapter serial, scale bits) in order; 0 for the empty set. */
static uint64_t set_signature(const hl_active_adapter *set, int32_t n) {
    if (n == 0) return 0;
    uint64_t h = 1469598103934665603ull;
    for (int32_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &set[i].scale, sizeof bits);
        const uint64_t words[2] = {set[i].adapter->serial, bits};
        for (int w = 0; w < 2; w++)
            for (int b = 0; b < 8; b++) h = (h ^ ((words[w] >> (8 * b)) & 0xff)) * 1099511628211ull;
    }
    return h ? h : 1;
}

/* Terms and t floats a graph can need with this set: every pair of every adapter, for n_batch tokens. */
static void count_terms(const hl_model *m, const hl_active_adapter *set, int32_t n, int32_t *terms, size_t *ranks) {
    *terms = 0;
    *ranks = 0;
    for (int32_t i = 0; i < n; i++) {
        const hl_adapter *ad = set[i].adapter;
        for (int32_t k = 0; k < m->hp.n_layer * HL_LORA_LAYER_TARGETS + 2; k++) {
            const hl_lora *l = k < m->hp.n_layer * HL_LORA_LAYER_TARGETS ? &ad->layers[k]
                               : k == m->hp.n_layer * HL_LORA_LAYER_TARGETS ? &ad->token_embd : &ad->output;
            if (!l->a.data) continue;
            (*terms)++;
            *ranks += (size_t)l->rank;
        }
    }
}

static hl_status check_list(const hl_context *c, hl_adapter *const *adapters, const float *scales, int32_t n) {
    if (n < 0 || (n > 0 && (!adapters || !scales)))
        return hl_fail(HL_ERR_INVALID, "hl_context_set_adapters: bad list (n = %d)", n);
    for (int32_t i = 0; i < n; i++) {
        if (!adapters[i]) return hl_fail(HL_ERR_INVALID, "hl_context_set_adapters: adapter %d is NULL", i);
        if (adapters[i]->model != c->model)
            return hl_fail(HL_ERR_INVALID, "hl_context_set_adapters: adapter %d was made for another model", i);
        if (!isfinite(scales[i])) return hl_fail(HL_ERR_INVALID, "adapter %d: scale is not finite", i);
    }
    return HL_OK;
}

hl_status hl_context_set_adapters(hl_context *c, hl_adapter *const *adapters, const float *scales, int32_t n) {
    if (!c) return hl_fail(HL_ERR_INVALID, "hl_context_set_adapters: NULL context");
    hl_status st = check_list(c, adapters, scales, n);
    if (st != HL_OK) return st;
    hl_active_adapter *set = calloc((size_t)(n > 0 ? n : 1), sizeof *set);
    if (!set) return hl_fail(HL_ERR_NOMEM, "out of memory for an adapter set");
    int32_t n_set = 0;
    for (int32_t i = 0; i < n; i++)
        if (scales[i] != 0.0f) set[n_set++] = (hl_active_adapter){adapters[i], scales[i]};
    int32_t n_terms;
    size_t ranks;
    count_terms(c->model, set, n_set, &n_terms, &ranks);
    hl_lora_term *terms = calloc((size_t)(n_terms > 0 ? n_terms : 1), sizeof *terms);
    float *t = malloc((ranks > 0 ? ranks : 1) * (size_t)c->params.n_batch * sizeof(float));
    if (!terms || !t) {
        free(set), free(terms), free(t);
        return hl_fail(HL_ERR_NOMEM, "out of memory for %d LoRA terms", n_terms);
    }
    free(c->active), free(c->terms), free(c->lora_t);
    c->active = set, c->n_active = n_set;
    c->terms = terms, c->max_terms = n_terms;
    c->lora_t = t, c->lora_t_floats = ranks * (size_t)c->params.n_batch;
    c->set_sig = set_signature(set, n_set);
    return HL_OK;
}
