/*
 * A frozen projection y = W.x + s B.(A.x) + bias over the window, and its backward (train.h):
 *
 *   forward   x converted once to W's activation type; W.x by the engine's multi-token kernel (hl_gemm),
 *             threads splitting W's rows; ts = s A.x kept; y += ts.B^T (train_gemm.c)
 *   backward  dt = s dy.B (hl_gemm against B^T); dx += W^T.dy by blocks of W's rows dequantized into a
 *             shared buffer and added by the outer-product GEMM (train_gemm.c), each thread owning items
 *             (columns x tokens) of dx; dx += dt.A; dA += dt^T.x; dB += dy^T.ts
 *
 * W is only read (any type with a to_float); nothing of it is copied beyond two blocks of tr->block_rows rows.
 */
#include <string.h>

#include "gemm.h"
#include "ops_internal.h"
#include "quants.h"
#include "train.h"

#define ROW_ALIGN 16
#define COL_TILE 128          /* columns of dx per work item */
#define MIN_TOKENS_PER_ITEM 32
#define ITEMS_PER_THREAD 4    /* split tokens too until there are this many items per thread */

static const hl_type_traits *f32_traits(void) { return hl_get_type_traits(HL_TYPE_F32); }

/* Rows [r0, r1) of n for thread ith of nth, cut at multiples of align. */
static void split_aligned(int64_t n, int64_t align, int ith, int nth, int64_t *r0, int64_t *r1) {
    int64_t t0, t1;
    hl_split((n + align - 1) / align, ith, nth, &t0, &t1);
    *r0 = t0 * align < n ? t0 * align : n;
    *r1 = t1 * align < n ? t1 * align : n;
}

typedef struct {
    hl_train *tr;
    const hl_tensor *w;   /* [n_in, n_out] */
    const float *bias;    /* [n_out] or NULL */
    const tr_lora *lora;  /* pair NULL: none */
    const float *x;       /* [T][n_in] */
    const float *dy;      /* backward: [T][n_out] */
    float *y;             /* forward: [T][n_out]; backward: dx [T][n_in] */
} lin_job;

static int has_lora(const lin_job *j) { return j->lora && j->lora->pair; }

/* ts rows [t0, t1) = s * A.x (forward, phase 1). */
static void lora_a_rows(hl_train *tr, const lin_job *j, int64_t t0, int64_t t1) {
    const hl_train_pair *p = j->lora->pair;
    const int64_t n_in = j->w->ne[0], r = p->rank;
    float *ts = j->lora->ts + t0 * r;
    hl_gemm(f32_traits(), 0, n_in, r, t1 - t0, p->a, (size_t)n_in * sizeof(float), j->x + t0 * n_in,
            (size_t)n_in * sizeof(float), ts, (size_t)r);
    for (int64_t i = 0; i < (t1 - t0) * r; i++) ts[i] *= p->scale;
}

static void forward_job(void *arg, int ith, int nth) {
    lin_job *j = arg;
    hl_train *tr = j->tr;
    const hl_tensor *w = j->w;
    const int64_t T = tr->T, n_in = w->ne[0], n_out = w->ne[1];
    const hl_type_traits *wt = hl_get_type_traits(w->type), *at = hl_get_type_traits(wt->vec_dot_type);
    const int convert = wt->vec_dot_type != HL_TYPE_F32;
    const size_t a_stride = convert ? hl_row_size(wt->vec_dot_type, n_in) : (size_t)n_in * sizeof(float);
    int64_t t0, t1, r0, r1;
    hl_split(T, ith, nth, &t0, &t1);
    for (int64_t t = t0; convert && t < t1; t++) at->from_float(j->x + t * n_in, tr->xq + t * a_stride, n_in);
    if (has_lora(j) && t1 > t0) lora_a_rows(tr, j, t0, t1);
    hl_pool_barrier(tr->pool);

    split_aligned(n_out, ROW_ALIGN, ith, nth, &r0, &r1);
    if (r1 <= r0) return;
    hl_gemm(wt, 0, n_in, r1 - r0, T, (const char *)w->data + (size_t)r0 * w->row_bytes, w->row_bytes,
            convert ? (const void *)tr->xq : (const void *)j->x, a_stride, j->y + r0, (size_t)n_out);
    if (has_lora(j)) {
        const int64_t r = j->lora->pair->rank;
        tr_gemm_acc(T, r1 - r0, r, j->lora->ts, (size_t)r, j->lora->bt + r0, (size_t)n_out, j->y + r0, (size_t)n_out);
    }
    for (int64_t t = 0; j->bias && t < T; t++)
        for (int64_t i = r0; i < r1; i++) j->y[t * n_out + i] += j->bias[i];
}

void tr_linear_forward(hl_train *tr, const hl_tensor *w, const float *bias, tr_lora *lora, const float *x, float *y) {
    lin_job j = {tr, w, bias, lora, x, NULL, y};
    tr_run(tr, forward_job, &j);
}

/* Backward phase 1, tokens [t0, t1): dt = s dy.B. */
static void lora_dt_rows(hl_train *tr, const lin_job *j, int64_t t0, int64_t t1) {
    const hl_train_pair *p = j->lora->pair;
    const int64_t n_out = j->w->ne[1], r = p->rank;
    float *dt = tr->dt + t0 * r;
    hl_gemm(f32_traits(), 0, n_out, r, t1 - t0, j->lora->bt, (size_t)n_out * sizeof(float), j->dy + t0 * n_out,
            (size_t)n_out * sizeof(float), dt, (size_t)r);
    for (int64_t i = 0; i < (t1 - t0) * r; i++) dt[i] *= p->scale;
}

/* The dx items of this thread: columns [c0, c1) x tokens [t0, t1) of every item i in [i0, i1). */
typedef struct {
    int64_t i0, i1, n_cols, n_tok;
} dx_split;

static dx_split split_items(const hl_train *tr, int64_t n_in, int ith, int nth) {
    dx_split sp = {0, 0, (n_in + COL_TILE - 1) / COL_TILE, 1};
    while (sp.n_cols * sp.n_tok < ITEMS_PER_THREAD * nth && tr->T / (2 * sp.n_tok) >= MIN_TOKENS_PER_ITEM)
        sp.n_tok *= 2;
    hl_split(sp.n_cols * sp.n_tok, ith, nth, &sp.i0, &sp.i1);
    return sp;
}

/* Item i of dx: dx[t0..t1)[c0..c1) += a[t0..t1)[0..nk) . b[0..nk)[c0..c1). */
static void item_gemm(const hl_train *tr, const dx_split *sp, int64_t i, int64_t n_in, int64_t nk, const float *a,
                      size_t a_stride, const float *b, size_t b_stride, float *dx) {
    const int64_t c0 = (i % sp->n_cols) * COL_TILE, c1 = c0 + COL_TILE < n_in ? c0 + COL_TILE : n_in;
    int64_t t0, t1;
    hl_split(tr->T, (int)(i / sp->n_cols), (int)sp->n_tok, &t0, &t1);
    if (t1 > t0) tr_gemm_acc(t1 - t0, c1 - c0, nk, a + t0 * a_stride, a_stride, b + c0, b_stride, dx + t0 * n_in + c0,
                             (size_t)n_in);
}

/*
 * Backward phase 2: dx += W^T.dy, tr->block_rows rows of W at a time: the threads dequantize the block's rows
 * into one of two shared buffers, meet at a barrier, and each adds the block's product into its own items
 * of dx (the same items for every block, so no two threads write the same dx). Two buffers: a block is
 * dequantized while no thread still reads the buffer's previous block (all passed the barrier after it).
 * Then dx += dt.A on the same items.
 */
static void dx_blocks(hl_train *tr, const lin_job *j, int ith, int nth) {
    const hl_tensor *w = j->w;
    const hl_type_traits *wt = hl_get_type_traits(w->type);
    const int64_t n_in = w->ne[0], n_out = w->ne[1];
    const dx_split sp = split_items(tr, n_in, ith, nth);
    const int64_t rows = tr->block_rows;
    for (int64_t o0 = 0, blk = 0; o0 < n_out; o0 += rows, blk++) {
        const int64_t nb = n_out - o0 < rows ? n_out - o0 : rows;
        float *wd = tr->wd + (blk % 2) * (size_t)rows * tr->m_feat; /* [nb][n_in] */
        int64_t r0, r1;
        hl_split(nb, ith, nth, &r0, &r1);
        for (int64_t r = r0; r < r1; r++)
            wt->to_float((const char *)w->data + (size_t)(o0 + r) * w->row_bytes, wd + r * n_in, n_in);
        hl_pool_barrier(tr->pool);
        for (int64_t i = sp.i0; i < sp.i1; i++)
            item_gemm(tr, &sp, i, n_in, nb, j->dy + o0, (size_t)n_out, wd, (size_t)n_in, j->y);
    }
    for (int64_t i = sp.i0; has_lora(j) && i < sp.i1; i++)
        item_gemm(tr, &sp, i, n_in, j->lora->pair->rank, tr->dt, (size_t)j->lora->pair->rank, j->lora->pair->a,
                  (size_t)n_in, j->y);
}

/* Backward phase 3: grad_a columns and grad_b rows of this thread (dB^T = ts^T.dy, added transposed). */
static void lora_grads(hl_train *tr, const lin_job *j, int ith, int nth) {
    const hl_train_pair *p = j->lora->pair;
    const int64_t n_in = j->w->ne[0], n_out = j->w->ne[1], r = p->rank, T = tr->T;
    int64_t c0, c1, o0, o1;
    split_aligned(n_in, ROW_ALIGN, ith, nth, &c0, &c1);
    if (c1 > c0)
        tr_gemm_acc(r, c1 - c0, T, tr->dtt, (size_t)T, j->x + c0, (size_t)n_in, p->grad_a + c0, (size_t)n_in);
    split_aligned(n_out, ROW_ALIGN, ith, nth, &o0, &o1);
    if (o1 <= o0) return;
    for (int64_t k = 0; k < r; k++) memset(tr->dbt + k * n_out + o0, 0, (size_t)(o1 - o0) * sizeof(float));
    tr_gemm_acc(r, o1 - o0, T, tr->tst, (size_t)T, j->dy + o0, (size_t)n_out, tr->dbt + o0, (size_t)n_out);
    for (int64_t o = o0; o < o1; o++)
        for (int64_t k = 0; k < r; k++) p->grad_b[o * r + k] += tr->dbt[k * n_out + o];
}

/* dt^T and ts^T [rank][T] (thread 0). */
static void transpose_dt_ts(hl_train *tr, const tr_lora *l) {
    const int64_t r = l->pair->rank, T = tr->T;
    for (int64_t t = 0; t < T; t++)
        for (int64_t k = 0; k < r; k++) {
            tr->dtt[k * T + t] = tr->dt[t * r + k];
            tr->tst[k * T + t] = l->ts[t * r + k];
        }
}

static void backward_job(void *arg, int ith, int nth) {
    lin_job *j = arg;
    hl_train *tr = j->tr;
    const int lora = has_lora(j);
    if (lora) {
        int64_t t0, t1;
        hl_split(tr->T, ith, nth, &t0, &t1);
        if (t1 > t0) lora_dt_rows(tr, j, t0, t1);
        hl_pool_barrier(tr->pool);
        if (ith == 0) transpose_dt_ts(tr, j->lora);
    }
    dx_blocks(tr, j, ith, nth);
    if (!lora) return;
    hl_pool_barrier(tr->pool);
    lora_grads(tr, j, ith, nth);
}

void tr_linear_backward(hl_train *tr, const hl_tensor *w, const tr_lora *lora, const float *x, const float *dy,
                        float *dx) {
    lin_job j = {tr, w, NULL, lora, x, dy, dx};
    tr_run(tr, backward_job, &j);
}
