/*
 * hl_train_step and hl_train_logits (hotlora.h): the checks of a call's tokens and pairs, the pairs'
 * buffers, and the passes (train.h):
 *
 *   forward   x_saved[0] = embedding; block by block x_saved[il + 1] from x_saved[il]; the logits of the
 *             final norm; the loss, turning the logits into d loss / d logits
 *   backward  through the output head and the final norm, then for il = n_layer-1 .. 0: block il recomputed
 *             from x_saved[il] (its intermediates; kept from the forward with keep_activations, and still
 *             there from the forward for the last block), and the backward through it
 */
#include <math.h>
#include <stdlib.h>

#include "train.h"

static const hl_tensor *weight_of(const hl_layer *L, int32_t target) {
    const hl_tensor *w[HL_LORA_LAYER_TARGETS] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    return w[target];
}

static hl_status check_pair(const hl_train *tr, const hl_train_pair *p, int32_t i, int need_grads) {
    if (p->target < 0 || p->target >= HL_LORA_LAYER_TARGETS)
        return hl_fail(HL_ERR_INVALID, "train pair %d: target %d is not a layer projection", i, p->target);
    if (p->layer < 0 || p->layer >= tr->model->hp.n_layer)
        return hl_fail(HL_ERR_INVALID, "train pair %d: layer %d of %d", i, p->layer, tr->model->hp.n_layer);
    if (p->rank < 1) return hl_fail(HL_ERR_INVALID, "train pair %d: rank %d < 1", i, p->rank);
    if (!p->a || !p->b || (need_grads && (!p->grad_a || !p->grad_b)))
        return hl_fail(HL_ERR_INVALID, "train pair %d: NULL matrix", i);
    if (!isfinite(p->scale)) return hl_fail(HL_ERR_INVALID, "train pair %d: scale is not finite", i);
    if (tr->lora[p->layer * HL_LORA_LAYER_TARGETS + p->target].pair)
        return hl_fail(HL_ERR_INVALID, "train pair %d: layer %d target %d given twice", i, p->layer, p->target);
    return HL_OK;
}

static void clear_pairs(hl_train *tr) {
    for (int32_t i = 0; i < tr->model->hp.n_layer * HL_LORA_LAYER_TARGETS; i++) tr->lora[i].pair = NULL;
}

/* Floats of the pairs' ts and B^T, and of dt, dt^T, ts^T and dB^T at the largest rank. */
static size_t pair_floats(const hl_train *tr, const hl_train_pair *pairs, int32_t n, int32_t *max_rank) {
    size_t floats = 0;
    *max_rank = 0;
    for (int32_t i = 0; i < n; i++) {
        const int64_t n_out = weight_of(&tr->model->layers[pairs[i].layer], pairs[i].target)->ne[1];
        floats += (size_t)pairs[i].rank * ((size_t)tr->n_max + (size_t)n_out);
        if (pairs[i].rank > *max_rank) *max_rank = pairs[i].rank;
    }
    return floats + (size_t)*max_rank * (3 * (size_t)tr->n_max + (size_t)tr->m_feat);
}

/* Places every pair at its (layer, target) with its buffers, B transposed. */
static void place_pairs(hl_train *tr, const hl_train_pair *pairs, int32_t n) {
    float *p = tr->lora_ts;
    for (int32_t i = 0; i < n; i++) {
        const int64_t n_out = weight_of(&tr->model->layers[pairs[i].layer], pairs[i].target)->ne[1], r = pairs[i].rank;
        tr_lora *l = &tr->lora[pairs[i].layer * HL_LORA_LAYER_TARGETS + pairs[i].target];
        l->pair = &pairs[i], l->ts = p, l->bt = p + (size_t)tr->n_max * r;
        p = l->bt + n_out * r;
        for (int64_t o = 0; o < n_out; o++)
            for (int64_t k = 0; k < r; k++) l->bt[k * n_out + o] = pairs[i].b[o * r + k];
    }
    const size_t rt = (size_t)tr->n_max * tr->max_rank;
    tr->dt = p, tr->dtt = p + rt, tr->tst = p + 2 * rt, tr->dbt = p + 3 * rt;
}

static hl_status set_pairs(hl_train *tr, const hl_train_pair *pairs, int32_t n, int need_grads) {
    if (n < 0 || (n > 0 && !pairs)) return hl_fail(HL_ERR_INVALID, "train: %d pairs at %p", n, (const void *)pairs);
    clear_pairs(tr);
    for (int32_t i = 0; i < n; i++) {
        hl_status st = check_pair(tr, &pairs[i], i, need_grads);
        if (st != HL_OK) return clear_pairs(tr), st;
        tr->lora[pairs[i].layer * HL_LORA_LAYER_TARGETS + pairs[i].target].pair = &pairs[i];
    }
    const size_t floats = pair_floats(tr, pairs, n, &tr->max_rank);
    if (floats > tr->lora_floats) {
        float *p = realloc(tr->lora_ts, floats * sizeof(float));
        if (!p) return clear_pairs(tr), hl_fail(HL_ERR_NOMEM, "train: out of memory for %d LoRA pairs", n);
        tr->lora_ts = p, tr->lora_floats = floats;
    }
    place_pairs(tr, pairs, n);
    return HL_OK;
}

static hl_status set_tokens(hl_train *tr, const int32_t *tokens, const int32_t *targets, int32_t n) {
    const int32_t V = tr->model->hp.n_vocab;
    if (!tokens) return hl_fail(HL_ERR_INVALID, "train: NULL tokens");
    if (n < 1 || n > tr->n_max) return hl_fail(HL_ERR_INVALID, "train: %d tokens, expected 1 to %d", n, tr->n_max);
    for (int32_t t = 0; t < n; t++) {
        if (tokens[t] < 0 || tokens[t] >= V)
            return hl_fail(HL_ERR_INVALID, "train: token %d at %d is not in 0..%d", tokens[t], t, V - 1);
        if (targets && (targets[t] < -1 || targets[t] >= V))
            return hl_fail(HL_ERR_INVALID, "train: target %d at %d is not -1 or in 0..%d", targets[t], t, V - 1);
        tr->tokens[t] = tokens[t];
        tr->targets[t] = targets ? targets[t] : -1;
    }
    tr->T = n;
    return HL_OK;
}

void hl_train_set_abort(hl_train *tr, volatile int32_t *flag) {
    if (tr) tr->abort_flag = flag;
}

static hl_status aborted(const hl_train *tr) {
    return tr->abort_flag && *tr->abort_flag ? hl_fail(HL_ERR_ABORTED, "training step aborted") : HL_OK;
}

static hl_status forward(hl_train *tr) {
    const hl_model *m = tr->model;
    const int32_t L = m->hp.n_layer;
    tr_rope_table(tr);
    tr_embed(tr, tr->x_saved);
    for (int32_t il = 0; il < L; il++) {
        if (aborted(tr) != HL_OK) return HL_ERR_ABORTED;
        tr_select_layer(tr, il);
        tr_layer_forward(tr, il);
    }
    tr_rms_norm(tr, tr->x_saved + (size_t)L * tr->n_max * m->hp.n_embd, &m->output_norm, tr->hn);
    tr_linear_forward(tr, &m->output, NULL, NULL, tr->hn, tr->logits);
    return HL_OK;
}

static hl_status backward(hl_train *tr) {
    const hl_model *m = tr->model;
    const int32_t L = m->hp.n_layer;
    const int64_t E = m->hp.n_embd, T = tr->T;
    memset(tr->a.dxn, 0, (size_t)(T * E) * sizeof(float));
    memset(tr->a.dx, 0, (size_t)(T * E) * sizeof(float));
    tr_linear_backward(tr, &m->output, NULL, tr->hn, tr->logits, tr->a.dxn);
    tr_rms_norm_backward(tr, tr->x_saved + (size_t)L * tr->n_max * E, &m->output_norm, tr->a.dxn, tr->a.dx);
    for (int32_t il = L - 1; il >= 0; il--) {
        if (aborted(tr) != HL_OK) return HL_ERR_ABORTED;
        tr_select_layer(tr, il);
        if (!tr->keep && il != L - 1) tr_layer_forward(tr, il); /* the last block's are still there */
        tr_layer_backward(tr, il);
    }
    return HL_OK;
}

hl_status hl_train_step(hl_train *tr, const hl_train_pair *pairs, int32_t n_pairs, const int32_t *tokens,
                        const int32_t *targets, int32_t n_tokens, double *loss_sum, int32_t *n_loss) {
    if (!tr || !targets || !loss_sum || !n_loss) return hl_fail(HL_ERR_INVALID, "hl_train_step: NULL argument");
    hl_status st = set_tokens(tr, tokens, targets, n_tokens);
    if (st == HL_OK) st = set_pairs(tr, pairs, n_pairs, 1);
    if (st != HL_OK) return st;
    st = forward(tr);
    if (st == HL_OK) tr_loss(tr);
    if (st == HL_OK) st = backward(tr);
    clear_pairs(tr);
    if (st != HL_OK) return st;
    *loss_sum = tr->loss_sum;
    *n_loss = tr->n_loss;
    return HL_OK;
}

hl_status hl_train_logits(hl_train *tr, const hl_train_pair *pairs, int32_t n_pairs, const int32_t *tokens,
                          int32_t n_tokens, float *logits) {
    if (!tr || !logits) return hl_fail(HL_ERR_INVALID, "hl_train_logits: NULL argument");
    hl_status st = set_tokens(tr, tokens, NULL, n_tokens);
    if (st == HL_OK) st = set_pairs(tr, pairs, n_pairs, 0);
    if (st != HL_OK) return st;
    st = forward(tr);
    clear_pairs(tr);
    if (st != HL_OK) return st;
    memcpy(logits, tr->logits, (size_t)n_tokens * (size_t)tr->model->hp.n_vocab * sizeof(float));
    return HL_OK;
}
