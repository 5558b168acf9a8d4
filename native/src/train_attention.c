/*
 * Causal self-attention over the window, forward and backward (train.h), one query head h per work item
 * (KV head g = h / (n_head / n_head_kv)), every product a multi-token F32 mat-mul (hl_gemm) over all T:
 *
 *   S  = Q_h K_g^T                 P = causal softmax(S / sqrt(hd)) (row i over keys 0..i, 0 beyond)
 *   O  = P V_g
 *   dP = dO V_g^T                  dS = P * (dP - rowsum(P * dP)) / sqrt(hd)
 *   dQ = dS K_g     dK_h = dS^T Q_h     dV_h = P^T dO
 *
 * dK_h and dV_h go to per-head buffers, summed over each KV head's group in a second phase, so threads
 * never add into the same rows. The scores are computed for all T keys (the future ones are zeroed by the
 * softmax): twice the causal work, in exchange for the tiled kernel.
 */
#include <math.h>

#include "gemm.h"
#include "ops_internal.h"
#include "quants.h"
#include "train.h"

typedef struct {
    int64_t T, hd, n_q, n_kv, group;
    float scale;
} att_dims;

static att_dims dims_of(const hl_train *tr) {
    const hl_model *m = tr->model;
    return (att_dims){tr->T, m->hp.head_dim, m->n_q, m->n_embd_kv, m->hp.n_head / m->hp.n_head_kv,
                      1.0f / sqrtf((float)m->hp.head_dim)};
}

/* dst [cols][rows] = src rows [rows] of cols floats, src_stride floats apart. */
static void transpose(const float *src, int64_t rows, int64_t cols, int64_t src_stride, float *dst) {
    for (int64_t i = 0; i < rows; i++)
        for (int64_t c = 0; c < cols; c++) dst[c * rows + i] = src[i * src_stride + c];
}

/* c = a . b^T for a [n_a][n] and b [n_b][n] (strides in floats): c [n_a][c_stride]. */
static void mat_abt(const float *a, int64_t n_a, int64_t a_stride, const float *b, int64_t n_b, int64_t b_stride,
                    int64_t n, float *c, int64_t c_stride) {
    hl_gemm(hl_get_type_traits(HL_TYPE_F32), 0, n, n_b, n_a, b, (size_t)b_stride * sizeof(float), a,
            (size_t)a_stride * sizeof(float), c, (size_t)c_stride);
}

/* P [T][T] of head h: scores then the causal softmax. */
static void probabilities(const hl_train *tr, const att_dims *d, int64_t h, float *p) {
    const int64_t g = h / d->group;
    mat_abt(tr->a.q + h * d->hd, d->T, d->n_q, tr->a.k + g * d->hd, d->T, d->n_kv, d->hd, p, d->T);
    for (int64_t i = 0; i < d->T; i++) hl_softmax_causal(p + i * d->T, i + 1, d->T, d->scale);
}

static void forward_job(void *arg, int ith, int nth) {
    hl_train *tr = arg;
    const att_dims d = dims_of(tr);
    float *p = tr_scratch(tr, ith), *vt = p + d.T * d.T; /* [T][T], [hd][T] */
    int64_t h0, h1;
    hl_split(tr->model->hp.n_head, ith, nth, &h0, &h1);
    for (int64_t h = h0; h < h1; h++) {
        probabilities(tr, &d, h, p);
        transpose(tr->a.v + (h / d.group) * d.hd, d.T, d.hd, d.n_kv, vt);
        mat_abt(p, d.T, d.T, vt, d.hd, d.T, d.T, tr->a.att + h * d.hd, d.n_q);
    }
}

void tr_attention_forward(hl_train *tr) { tr_run(tr, forward_job, tr); }

/* dS from P and dP (in place in dp): P * (dP - rowsum(P * dP)) * scale. */
static void softmax_backward(const att_dims *d, const float *p, float *dp) {
    for (int64_t i = 0; i < d->T; i++) {
        const float *pi = p + i * d->T;
        float *di = dp + i * d->T;
        double dot = 0.0;
        for (int64_t j = 0; j <= i; j++) dot += (double)pi[j] * di[j];
        for (int64_t j = 0; j < d->T; j++) di[j] = j <= i ? pi[j] * (di[j] - (float)dot) * d->scale : 0.0f;
    }
}

/* Query head h: dq's columns of h, and dK_h, dV_h into the per-head buffers. */
static void head_backward(hl_train *tr, const att_dims *d, int64_t h, float *buf) {
    const int64_t T = d->T, hd = d->hd, g = h / d->group;
    float *p = buf, *ds = p + T * T, *tt = ds + T * T, *col = tt + T * T; /* [T][T] x3, [hd][T] */
    const float *dout = tr->a.datt + h * hd;
    probabilities(tr, d, h, p);
    mat_abt(dout, T, d->n_q, tr->a.v + g * hd, T, d->n_kv, hd, ds, T); /* dP */
    softmax_backward(d, p, ds);
    transpose(tr->a.k + g * hd, T, hd, d->n_kv, col);
    mat_abt(ds, T, T, col, hd, T, T, tr->a.dq + h * hd, d->n_q); /* dQ = dS K */
    transpose(ds, T, T, T, tt);
    transpose(tr->a.q + h * hd, T, hd, d->n_q, col);
    mat_abt(tt, T, T, col, hd, T, T, tr->a.dkh + h * T * hd, hd); /* dK = dS^T Q */
    transpose(p, T, T, T, tt);
    transpose(dout, T, hd, d->n_q, col);
    mat_abt(tt, T, T, col, hd, T, T, tr->a.dvh + h * T * hd, hd); /* dV = P^T dO */
}

/* Rows [t0, t1) of dk and dv: the sums of their group's per-head gradients. */
static void sum_groups(const hl_train *tr, const att_dims *d, int64_t t0, int64_t t1) {
    const int64_t n_head_kv = d->n_kv / d->hd;
    for (int64_t t = t0; t < t1; t++)
        for (int64_t g = 0; g < n_head_kv; g++) {
            float *dk = tr->a.dk + t * d->n_kv + g * d->hd, *dv = tr->a.dv + t * d->n_kv + g * d->hd;
            for (int64_t c = 0; c < d->hd; c++) dk[c] = dv[c] = 0.0f;
            for (int64_t h = g * d->group; h < (g + 1) * d->group; h++) {
                const float *kh = tr->a.dkh + (h * d->T + t) * d->hd, *vh = tr->a.dvh + (h * d->T + t) * d->hd;
                for (int64_t c = 0; c < d->hd; c++) dk[c] += kh[c], dv[c] += vh[c];
            }
        }
}

static void backward_job(void *arg, int ith, int nth) {
    hl_train *tr = arg;
    const att_dims d = dims_of(tr);
    int64_t h0, h1, t0, t1;
    hl_split(tr->model->hp.n_head, ith, nth, &h0, &h1);
    for (int64_t h = h0; h < h1; h++) head_backward(tr, &d, h, tr_scratch(tr, ith));
    hl_pool_barrier(tr->pool);
    hl_split(d.T, ith, nth, &t0, &t1);
    sum_groups(tr, &d, t0, t1);
}

void tr_attention_backward(hl_train *tr) { tr_run(tr, backward_job, tr); }
