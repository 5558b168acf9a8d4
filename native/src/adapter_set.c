/*
 * The active adapter set of a sequence: hl_sequence_set_adapters copies the list (skipping scale 0),
 * counts its pairs and ranks (what the graph's term storage needs per token), counts each entry as a
 * user of its adapter (hl_adapter_free refuses an adapter in use), and gives the set a signature. Each
 * KV cell records the signature it was computed under, so the library can find cells a swap made stale
 * (hl_sequence_first_stale).
 */
#include <math.h>
#include <stdlib.h>

#include "core.h"

/* FNV-1a over (adapter cache key, scale bits) in order; 0 for the empty set. */
static uint64_t set_signature(const hl_active_adapter *set, int32_t n) {
    if (n == 0) return 0;
    uint64_t h = 1469598103934665603ull;
    for (int32_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &set[i].scale, sizeof bits);
        const uint64_t words[2] = {set[i].adapter->cache_key, bits};
        for (int w = 0; w < 2; w++)
            for (int b = 0; b < 8; b++) h = (h ^ ((words[w] >> (8 * b)) & 0xff)) * 1099511628211ull;
    }
    return h ? h : 1;
}

/* Terms and t floats per token a graph can need with this set: every pair of every adapter. */
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
        return hl_fail(HL_ERR_INVALID, "hl_sequence_set_adapters: bad list (n = %d)", n);
    for (int32_t i = 0; i < n; i++) {
        if (!adapters[i]) return hl_fail(HL_ERR_INVALID, "hl_sequence_set_adapters: adapter %d is NULL", i);
        if (adapters[i]->model != c->model)
            return hl_fail(HL_ERR_INVALID, "hl_sequence_set_adapters: adapter %d was made for another model", i);
        if (!isfinite(scales[i])) return hl_fail(HL_ERR_INVALID, "adapter %d: scale is not finite", i);
    }
    return HL_OK;
}

void hl_sequence_clear_set(hl_sequence *seq) {
    for (int32_t i = 0; i < seq->n_active; i++) atomic_fetch_sub(&seq->active[i].adapter->users, 1);
    free(seq->active);
    seq->active = NULL;
    seq->n_active = seq->set_terms = 0;
    seq->set_ranks = 0;
    seq->set_sig = 0;
}

hl_status hl_sequence_set_adapters(hl_sequence *seq, hl_adapter *const *adapters, const float *scales, int32_t n) {
    if (!seq) return hl_fail(HL_ERR_INVALID, "hl_sequence_set_adapters: NULL sequence");
    hl_status st = check_list(seq->ctx, adapters, scales, n);
    if (st != HL_OK) return st;
    hl_active_adapter *set = calloc((size_t)(n > 0 ? n : 1), sizeof *set);
    if (!set) return hl_fail(HL_ERR_NOMEM, "out of memory for an adapter set");
    int32_t n_set = 0;
    for (int32_t i = 0; i < n; i++)
        if (scales[i] != 0.0f) set[n_set++] = (hl_active_adapter){adapters[i], scales[i]};
    for (int32_t i = 0; i < n_set; i++) atomic_fetch_add(&set[i].adapter->users, 1);
    hl_sequence_clear_set(seq);
    seq->active = set, seq->n_active = n_set;
    count_terms(seq->ctx->model, set, n_set, &seq->set_terms, &seq->set_ranks);
    seq->set_sig = set_signature(set, n_set);
    return HL_OK;
}
