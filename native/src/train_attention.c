/*
 * Causal self-attention over the window, forward and backward (train.h), one query head h per work item
 * (KV head g = h / (n_head / n_head_kv)), every product a multi-token F32 mat-mul (hl_gemm) over all T:
 *
 *   S  = Q_h K_g^T                 P = causal softmax(S / sqrt(hd)) (row i over keys 0..i, 0 beyond)
 *   O  = P V_g
 *   dP = dO V_g^T                  dS = P * (dP - rowsum(P * dP)) / sqrt(hd)
 *   dQ = dS K_g     dK_h^T = Q_h^T dS     dV_h^T = dO^T P
 *
 * Products against K, V or rows of P and dS take them as stored: the dot-product kernel (hl_gemm) for
 * Q K^T and dO V^T, the outer-product GEMM (train_gemm.c) for the rest; dK and dV are computed transposed
 * so that only head_dim x T slices are ever transposed. dK_h^T and dV_h^T go to per-head buffers, summed
 * over each KV head's group in a second phase, so threads never add into the same rows. Every product runs
 * by blocks of CAUSAL_BLOCK queries (or keys) over the keys (queries) that block can see, so about half of
 * the T x T work is skipped; within a block the future entries are computed and then zeroed (P, dS).
 */
#include <math.h>
#include <string.h>

#include "gemm.h"
#include "ops_internal.h"
#include "quants.h"
#include "train.h"

#define CAUSAL_BLOCK 32

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

/* c [T][T] = a . b^T (a, b: T rows of n) for keys up to the last row of each query's block of CAUSAL_BLOCK
 * rows; entries past that are not written (S = Q K^T, dP = dO V^T: only j <= i is read). */
static void causal_abt(const float *a, int64_t a_stride, const float *b, int64_t b_stride, int64_t n, int64_t T,
                       float *c) {
    for (int64_t i0 = 0; i0 < T; i0 += CAUSAL_BLOCK) {
        const int64_t i1 = i0 + CAUSAL_BLOCK < T ? i0 + CAUSAL_BLOCK : T;
        mat_abt(a + i0 * a_stride, i1 - i0, a_stride, b, i1, b_stride, n, c + i0 * T, T);
    }
}

/* c [T][n] += m . b for m [T][T] zero past the diagonal (O = P V, dQ = dS K): keys past a block skipped. */
static void causal_mb(const float *m, int64_t T, const float *b, int64_t b_stride, int64_t n, float *c,
                      int64_t c_stride) {
    for (int64_t i0 = 0; i0 < T; i0 += CAUSAL_BLOCK) {
        const int64_t i1 = i0 + CAUSAL_BLOCK < T ? i0 + CAUSAL_BLOCK : T;
        tr_gemm_acc(i1 - i0, n, i1, m + i0 * T, (size_t)T, b, (size_t)b_stride, c + i0 * c_stride, (size_t)c_stride);
    }
}

/* c [n][T] += at . m for at [n][T] and m [T][T] zero past the diagonal (dK^T = Q^T dS, dV^T = dO^T P):
 * the rows of m above a column block skipped. */
static void causal_am(const float *at, int64_t n, const float *m, int64_t T, float *c) {
    for (int64_t j0 = 0; j0 < T; j0 += CAUSAL_BLOCK) {
        const int64_t j1 = j0 + CAUSAL_BLOCK < T ? j0 + CAUSAL_BLOCK : T;
        tr_gemm_acc(n, j1 - j0, T - j0, at + j0, (size_t)T, m + j0 * T + j0, (size_t)T, c + j0, (size_t)T);
    }
}

/* P [T][T] of head h: scores then the causal softmax (zero past the diagonal). */
static void probabilities(const hl_train *tr, const att_dims *d, int64_t h, float *p) {
    const int64_t g = h / d->group;
    causal_abt(tr->a.q + h * d->hd, d->n_q, tr->a.k + g * d->hd, d->n_kv, d->hd, d->T, p);
    for (int64_t i = 0; i < d->T; i++) hl_softmax_causal(p + i * d->T, i + 1, d->T, d->scale);
}

static void forward_job(void *arg, int ith, int nth) {
    hl_train *tr = arg;
    const att_dims d = dims_of(tr);
    float *p = tr_scratch(tr, ith); /* [T][T] */
    int64_t h0, h1;
    hl_split(tr->model->hp.n_head, ith, nth, &h0, &h1);
    for (int64_t h = h0; h < h1; h++) {
        probabilities(tr, &d, h, p);
        for (int64_t i = 0; i < d.T; i++) memset(tr->a.att + i * d.n_q + h * d.hd, 0, (size_t)d.hd * sizeof(float));
        causal_mb(p, d.T, tr->a.v + (h / d.group) * d.hd, d.n_kv, d.hd, tr->a.att + h * d.hd, d.n_q); /* O = P V */
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

/* Query head h: dq's columns of h, and dK_h^T, dV_h^T [hd][T] into the per-head buffers. */
static void head_backward(hl_train *tr, const att_dims *d, int64_t h, float *buf) {
    const int64_t T = d->T, hd = d->hd, g = h / d->group;
    float *p = buf, *ds = p + T * T, *col = ds + T * T; /* [T][T] x2, [hd][T] */
    const float *dout = tr->a.datt + h * hd;
    float *dkt = tr->a.dkh + h * T * hd, *dvt = tr->a.dvh + h * T * hd;
    probabilities(tr, d, h, p);
    causal_abt(dout, d->n_q, tr->a.v + g * hd, d->n_kv, hd, T, ds); /* dP */
    softmax_backward(d, p, ds);
    for (int64_t i = 0; i < T; i++) memset(tr->a.dq + i * d->n_q + h * hd, 0, (size_t)hd * sizeof(float));
    causal_mb(ds, T, tr->a.k + g * hd, d->n_kv, hd, tr->a.dq + h * hd, d->n_q); /* dQ = dS K */
    memset(dkt, 0, (size_t)(hd * T) * sizeof(float));
    transpose(tr->a.q + h * hd, T, hd, d->n_q, col);
    causal_am(col, hd, ds, T, dkt); /* dK^T = Q^T dS */
    memset(dvt, 0, (size_t)(hd * T) * sizeof(float));
    transpose(dout, T, hd, d->n_q, col);
    causal_am(col, hd, p, T, dvt); /* dV^T = dO^T P */
}

/* Rows [t0, t1) of dk and dv: the sums of their group's per-head gradients (stored transposed). */
static void sum_groups(const hl_train *tr, const att_dims *d, int64_t t0, int64_t t1) {
    const int64_t n_head_kv = d->n_kv / d->hd;
    for (int64_t t = t0; t < t1; t++)
        for (int64_t g = 0; g < n_head_kv; g++) {
            float *dk = tr->a.dk + t * d->n_kv + g * d->hd, *dv = tr->a.dv + t * d->n_kv + g * d->hd;
            for (int64_t c = 0; c < d->hd; c++) dk[c] = dv[c] = 0.0f;
            for (int64_t h = g * d->group; h < (g + 1) * d->group; h++) {
                const float *kt = tr->a.dkh + h * d->T * d->hd + t, *vt = tr->a.dvh + h * d->T * d->hd + t;
                for (int64_t c = 0; c < d->hd; c++) dk[c] += kt[c * d->T], dv[c] += vt[c * d->T];
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
