/*
 * The per-token operations of training (train.h), each split over the window's tokens, and their
 * backwards:
 *
 *   RMS norm   y = x s w, s = 1/sqrt(mean(x^2) + eps)   dx += s (w dy) - x s^3 / n sum(w dy x)
 *   RoPE       pairs (x0, x1) -> (x0 c - x1 s, x0 s + x1 c)   backward: the transposed rotation
 *   SwiGLU     h = silu(g) u                            dg = dh u sig (1 + g (1 - sig)), du = dh silu(g)
 *   loss       -log softmax(logits)[target]             d logits = softmax - onehot(target)
 *
 * Sums run in double, as the inference RMS norm does.
 */
#include <math.h>

#include "ops_internal.h"
#include "quants.h"
#include "train.h"

typedef struct {
    const float *x, *dy;
    const hl_tensor *w;
    float *y;
    int64_t n;
    int inverse;
} pw_args;

static void embed_rows(hl_train *tr, void *arg, int64_t t0, int64_t t1) {
    const hl_tensor *e = &tr->model->token_embd;
    const hl_type_traits *tt = hl_get_type_traits(e->type);
    float *x = arg;
    for (int64_t t = t0; t < t1; t++)
        tt->to_float((const char *)e->data + (size_t)tr->tokens[t] * e->row_bytes, x + t * e->ne[0], e->ne[0]);
}

void tr_embed(hl_train *tr, float *x) { tr_for_tokens(tr, embed_rows, x); }

static float rms_scale(const float *x, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
    return 1.0f / sqrtf((float)(sum / n) + eps);
}

static void rms_rows(hl_train *tr, void *arg, int64_t t0, int64_t t1) {
    const pw_args *a = arg;
    const int64_t n = a->w->ne[0];
    const float *w = a->w->data;
    for (int64_t t = t0; t < t1; t++) {
        const float *x = a->x + t * n;
        const float s = rms_scale(x, n, tr->model->hp.rms_eps);
        for (int64_t i = 0; i < n; i++) a->y[t * n + i] = (x[i] * s) * w[i];
    }
}

void tr_rms_norm(hl_train *tr, const float *x, const hl_tensor *w, float *y) {
    pw_args a = {.x = x, .w = w, .y = y};
    tr_for_tokens(tr, rms_rows, &a);
}

static void rms_backward_rows(hl_train *tr, void *arg, int64_t t0, int64_t t1) {
    const pw_args *a = arg;
    const int64_t n = a->w->ne[0];
    const float *w = a->w->data;
    for (int64_t t = t0; t < t1; t++) {
        const float *x = a->x + t * n, *dy = a->dy + t * n;
        const float s = rms_scale(x, n, tr->model->hp.rms_eps);
        double dot = 0.0;
        for (int64_t i = 0; i < n; i++) dot += (double)w[i] * dy[i] * x[i];
        const float c = (float)(dot * s * s * s / n);
        for (int64_t i = 0; i < n; i++) a->y[t * n + i] += s * w[i] * dy[i] - x[i] * c;
    }
}

void tr_rms_norm_backward(hl_train *tr, const float *x, const hl_tensor *w, const float *dy, float *dx) {
    pw_args a = {.x = x, .dy = dy, .w = w, .y = dx};
    tr_for_tokens(tr, rms_backward_rows, &a);
}

void tr_rope_table(hl_train *tr) {
    const int hd = tr->model->hp.head_dim;
    for (int32_t t = 0; t < tr->T; t++) hl_rope_cs(tr->model, t, tr->rope_cs + (size_t)t * hd);
}

static void rope_rows(hl_train *tr, void *arg, int64_t t0, int64_t t1) {
    const pw_args *a = arg;
    const int hd = tr->model->hp.head_dim, half = hd / 2;
    const int neox = tr->model->hp.rope_mode == HL_ROPE_NEOX;
    const float sign = a->inverse ? -1.0f : 1.0f;
    for (int64_t t = t0; t < t1; t++) {
        const float *cs = tr->rope_cs + (size_t)t * hd;
        for (int64_t h0 = 0; h0 < a->n; h0 += hd) {
            float *v = a->y + t * a->n + h0;
            for (int i = 0; i < half; i++) {
                const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
                const float x0 = v[i0], x1 = v[i1], c = cs[2 * i], s = sign * cs[2 * i + 1];
                v[i0] = x0 * c - x1 * s;
                v[i1] = x0 * s + x1 * c;
            }
        }
    }
}

void tr_rope(hl_train *tr, float *x, int64_t n, int inverse) {
    pw_args a = {.y = x, .n = n, .inverse = inverse};
    tr_for_tokens(tr, rope_rows, &a);
}

static void swiglu_rows(hl_train *tr, void *arg, int64_t t0, int64_t t1) {
    const int64_t n = tr->model->hp.n_ff;
    for (int64_t i = t0 * n; i < t1 * n; i++) {
        const float g = tr->a.gate[i];
        tr->a.h[i] = g / (1.0f + expf(-g)) * tr->a.up[i];
    }
}

void tr_swiglu(hl_train *tr) { tr_for_tokens(tr, swiglu_rows, NULL); }

static void swiglu_backward_rows(hl_train *tr, void *arg, int64_t t0, int64_t t1) {
    const int64_t n = tr->model->hp.n_ff;
    for (int64_t i = t0 * n; i < t1 * n; i++) {
        const float g = tr->a.gate[i], sig = 1.0f / (1.0f + expf(-g)), dh = tr->a.dh[i];
        tr->a.dg[i] = dh * tr->a.up[i] * sig * (1.0f + g * (1.0f - sig));
        tr->a.du[i] = dh * g * sig;
    }
}

void tr_swiglu_backward(hl_train *tr) { tr_for_tokens(tr, swiglu_backward_rows, NULL); }

static void add_rows(hl_train *tr, void *arg, int64_t t0, int64_t t1) {
    const pw_args *a = arg;
    for (int64_t i = t0 * a->n; i < t1 * a->n; i++) a->y[i] += a->x[i];
}

void tr_add(hl_train *tr, float *y, const float *x, int64_t n) {
    pw_args a = {.x = x, .y = y, .n = n};
    tr_for_tokens(tr, add_rows, &a);
}

/* Row of the logits with its target: returns its loss and turns the row into its gradient. */
static double loss_row(float *row, int64_t n, int32_t target) {
    if (target < 0) {
        memset(row, 0, (size_t)n * sizeof(float));
        return 0.0;
    }
    float max = row[0];
    for (int64_t i = 1; i < n; i++) max = row[i] > max ? row[i] : max;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += exp((double)row[i] - max);
    const double loss = log(sum) + max - row[target];
    for (int64_t i = 0; i < n; i++) row[i] = (float)(exp((double)row[i] - max) / sum);
    row[target] -= 1.0f;
    return loss;
}

static void loss_rows(hl_train *tr, void *arg, int64_t t0, int64_t t1) {
    const int64_t V = tr->model->hp.n_vocab;
    for (int64_t t = t0; t < t1; t++) tr->tok_loss[t] = loss_row(tr->logits + t * V, V, tr->targets[t]);
}

void tr_loss(hl_train *tr) {
    tr_for_tokens(tr, loss_rows, NULL);
    tr->loss_sum = 0.0, tr->n_loss = 0;
    for (int32_t t = 0; t < tr->T; t++) {
        tr->loss_sum += tr->tok_loss[t];
        tr->n_loss += tr->targets[t] >= 0;
    }
}
