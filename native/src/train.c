/* hl_train (hotlora.h, train.h): creation, its buffers and their size, and the thread helpers. */
#include <stdlib.h>

#include "ops_internal.h"
#include "quants.h"
#include "train.h"

/* Rows of a weight dequantized at a time in the backward: 64, 16 per thread past 4 threads (a block's
 * products then take long enough for its barrier not to matter). */
static int32_t block_rows(int n_threads) { return n_threads > 4 ? 16 * n_threads : 64; }

static size_t wd_floats(const hl_train *tr) { return 2 * (size_t)tr->block_rows * (size_t)tr->m_feat; }

void tr_run(hl_train *tr, hl_job_fn job, void *arg) { hl_pool_run(tr->pool, job, arg); }

float *tr_scratch(hl_train *tr, int ith) { return tr->scratch + (size_t)ith * tr->scratch_floats; }

typedef struct {
    hl_train *tr;
    tr_token_fn fn;
    void *arg;
} token_job;

static void token_job_run(void *arg, int ith, int nth) {
    const token_job *j = arg;
    int64_t t0, t1;
    hl_split(j->tr->T, ith, nth, &t0, &t1);
    if (t1 > t0) j->fn(j->tr, j->arg, t0, t1);
}

void tr_for_tokens(hl_train *tr, tr_token_fn fn, void *arg) {
    token_job j = {tr, fn, arg};
    hl_pool_run(tr->pool, token_job_run, &j);
}

/* Floats per token of one layer's forward intermediates, and of the backward's gradients (train.h). */
static size_t fw_floats(const hl_model *m) {
    return 3 * (size_t)m->hp.n_embd + 2 * (size_t)m->n_q + 2 * (size_t)m->n_embd_kv + 3 * (size_t)m->hp.n_ff;
}

static size_t bw_floats(const hl_model *m) {
    return 2 * (size_t)m->hp.n_embd + 4 * (size_t)m->n_q + 2 * (size_t)m->n_embd_kv + 3 * (size_t)m->hp.n_ff;
}

/* Points the gradients into p (bw_floats per token). */
static void place_grads(tr_acts *a, const hl_model *m, size_t T, float *p) {
    const size_t E = T * m->hp.n_embd, Q = T * m->n_q, K = T * m->n_embd_kv, F = T * m->hp.n_ff;
    float **slots[] = {&a->dx, &a->dxn, &a->dq, &a->datt, &a->dkh, &a->dvh, &a->dk, &a->dv, &a->dg, &a->du, &a->dh};
    const size_t sizes[] = {E, E, Q, Q, Q, Q, K, K, F, F, F};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) *slots[i] = p, p += sizes[i];
}

void tr_select_layer(hl_train *tr, int32_t il) {
    const hl_model *m = tr->model;
    const size_t T = (size_t)tr->n_max, E = T * m->hp.n_embd, Q = T * m->n_q, K = T * m->n_embd_kv,
                 F = T * m->hp.n_ff;
    float *p = tr->fw + (tr->keep ? (size_t)il * T * fw_floats(m) : 0);
    tr_acts *a = &tr->a;
    float **slots[] = {&a->xn, &a->r, &a->rn, &a->q, &a->att, &a->k, &a->v, &a->gate, &a->up, &a->h};
    const size_t sizes[] = {E, E, E, Q, Q, K, K, F, F, F};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) *slots[i] = p, p += sizes[i];
}

static int32_t max3(int32_t a, int32_t b, int32_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

static hl_status alloc_buffers(hl_train *tr) {
    const hl_model *m = tr->model;
    const size_t T = (size_t)tr->n_max, E = (size_t)m->hp.n_embd, hd = (size_t)m->hp.head_dim;
    const size_t att = 2 * T * T + hd * T;
    tr->m_feat = max3(m->hp.n_embd, m->n_q, m->hp.n_ff);
    tr->scratch_floats = att + 16; /* + 64 bytes between threads */
    tr->xq_bytes = T * (size_t)tr->m_feat * 2;
    tr->x_saved = malloc(((size_t)m->hp.n_layer + 1) * T * E * sizeof(float));
    tr->logits = malloc(T * (size_t)m->hp.n_vocab * sizeof(float));
    tr->tokens = malloc(T * sizeof(int32_t));
    tr->targets = malloc(T * sizeof(int32_t));
    tr->tok_loss = malloc(T * sizeof(double));
    tr->fw = malloc((tr->keep ? (size_t)m->hp.n_layer : 1) * T * fw_floats(m) * sizeof(float));
    tr->bw = malloc(T * bw_floats(m) * sizeof(float));
    tr->hn = malloc(T * E * sizeof(float));
    tr->rope_cs = malloc(T * hd * sizeof(float));
    tr->lora = calloc((size_t)m->hp.n_layer * HL_LORA_LAYER_TARGETS, sizeof(tr_lora));
    tr->xq = malloc(tr->xq_bytes);
    tr->block_rows = block_rows(hl_pool_size(tr->pool));
    tr->wd = malloc(wd_floats(tr) * sizeof(float));
    tr->scratch = malloc((size_t)hl_pool_size(tr->pool) * tr->scratch_floats * sizeof(float));
    if (tr->bw) place_grads(&tr->a, m, T, tr->bw);
    if (!tr->x_saved || !tr->logits || !tr->tokens || !tr->targets || !tr->tok_loss || !tr->fw || !tr->bw || !tr->hn ||
        !tr->rope_cs ||
        !tr->lora || !tr->xq || !tr->wd || !tr->scratch)
        return hl_fail(HL_ERR_NOMEM, "hl_train_create: out of memory for %d tokens", tr->n_max);
    return HL_OK;
}

size_t hl_train_bytes(const hl_train *tr) {
    if (!tr) return 0;
    const hl_model *m = tr->model;
    const size_t T = (size_t)tr->n_max;
    const size_t floats = ((size_t)m->hp.n_layer + 1) * T * m->hp.n_embd + T * m->hp.n_vocab +
                          T * ((tr->keep ? (size_t)m->hp.n_layer : 1) * fw_floats(m) + bw_floats(m) + m->hp.n_embd) +
                          T * m->hp.head_dim + tr->lora_floats + wd_floats(tr) +
                          (size_t)hl_pool_size(tr->pool) * tr->scratch_floats;
    return floats * sizeof(float) + tr->xq_bytes + T * (2 * sizeof(int32_t) + sizeof(double)) +
           (size_t)m->hp.n_layer * HL_LORA_LAYER_TARGETS * sizeof(tr_lora);
}

/* The backward reads weight rows one by one (W^T.dy over dequantized rows): a repacked panel layout has none. */
static hl_status check_row_weights(const hl_model *m) {
    const hl_tensor *global[] = {&m->token_embd, &m->output};
    for (int i = 0; i < 2; i++)
        if (!hl_get_type_traits(global[i]->type)->to_float)
            return hl_fail(HL_ERR_UNSUPPORTED, "hl_train_create: the output head is repacked (%s); load the model "
                           "without repacking to train", hl_get_type_traits(global[i]->type)->name);
    for (int32_t il = 0; il < m->hp.n_layer; il++) {
        const hl_layer *L = &m->layers[il];
        const hl_tensor *w[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++)
            if (!hl_get_type_traits(w[i]->type)->to_float)
                return hl_fail(HL_ERR_UNSUPPORTED, "hl_train_create: block %d's weights are repacked (%s); load the "
                               "model without repacking to train", (int)il, hl_get_type_traits(w[i]->type)->name);
    }
    return HL_OK;
}

hl_status hl_train_create(const hl_model *model, int32_t n_tokens_max, int32_t n_threads, int32_t keep_activations,
                          hl_train **out) {
    if (!model || !out) return hl_fail(HL_ERR_INVALID, "hl_train_create: NULL argument");
    *out = NULL;
    hl_status rows = check_row_weights(model);
    if (rows != HL_OK) return rows;
    if (n_tokens_max < 1) return hl_fail(HL_ERR_INVALID, "hl_train_create: n_tokens_max %d < 1", n_tokens_max);
    if (n_threads < 1) return hl_fail(HL_ERR_INVALID, "hl_train_create: n_threads %d < 1", n_threads);
    hl_train *tr = calloc(1, sizeof *tr);
    if (!tr) return hl_fail(HL_ERR_NOMEM, "hl_train_create: out of memory");
    tr->model = model;
    tr->n_max = n_tokens_max;
    tr->keep = keep_activations != 0;
    tr->pool = hl_pool_create(n_threads);
    hl_status st = tr->pool ? alloc_buffers(tr) : hl_fail(HL_ERR_NOMEM, "hl_train_create: no %d threads", n_threads);
    if (st != HL_OK) {
        hl_train_free(tr);
        return st;
    }
    *out = tr;
    return HL_OK;
}

void hl_train_free(hl_train *tr) {
    if (!tr) return;
    if (tr->pool) hl_pool_free(tr->pool);
    free(tr->x_saved), free(tr->logits), free(tr->tokens), free(tr->targets), free(tr->tok_loss);
    free(tr->fw), free(tr->bw), free(tr->hn);
    free(tr->rope_cs), free(tr->lora), free(tr->lora_ts), free(tr->xq), free(tr->wd), free(tr->scratch);
    free(tr);
}
