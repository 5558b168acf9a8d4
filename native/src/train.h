/*
 * Internal state of hl_train (hotlora.h): LoRA gradients by a forward pass that keeps each layer's input,
 * then a backward pass that recomputes one layer at a time (checkpointing) and runs back through it.
 *
 *   train.c            creation, buffers and their size, the thread helpers
 *   train_step.c       the calls: checks of tokens and pairs, the forward and backward passes
 *   train_layer.c      one block forward (keeping its intermediates) and backward
 *   train_linear.c     a frozen projection with its LoRA pair: forward, and dx / dA / dB
 *   train_gemm.c       the float GEMM that adds W^T.dy (W dequantized tile by tile) into dx
 *   train_attention.c  causal attention forward and backward, per query head
 *   train_pointwise.c  embedding, RMS norm, RoPE, SwiGLU, residual add and the loss, split over tokens
 *
 * Memory (floats of 4 bytes; T = n_tokens_max, E = n_embd, Q = head_dim * n_head, K = head_dim * n_head_kv,
 * F = n_ff, V = n_vocab, L = n_layer, N = n_threads, R = the sum of the ranks of a call's pairs,
 * O = the sum of their n_out, M = max(E, Q, F), C = L with keep_activations, else 1):
 *
 *   (L + 1) T E                 the kept layer inputs (the last: the final hidden state)
 *   T V                         logits, overwritten by d loss / d logits
 *   C T (3 E + 2 Q + 2 K + 3 F) forward intermediates of one layer (recomputed in the backward), or of all
 *   T (3 E + 4 Q + 2 K + 3 F)   gradients of one layer, per-head K and V gradients, the final norm's output
 *   T R + O R + r (3 T + M)     LoRA: s A.x and B^T per pair; dt, dt^T, ts^T, dB^T at the largest rank r
 *   N (2 T^2 + hd T)            per-thread attention scratch
 *   2 max(64, 16 N) M           two blocks of rows of a weight, dequantized
 *   < 2 T M bytes               the input converted to a quantized weight's activation type
 *
 * Without keep_activations the memory grows with L only through the (L + 1) T E layer inputs; with it,
 * through the L T (3 E + 2 Q + 2 K + 3 F) intermediates as well, and the backward skips the recompute
 * (one forward pass fewer).
 */
#ifndef HL_TRAIN_H
#define HL_TRAIN_H

#include "core.h"

/* The call's pair at one (layer, target), with its buffers. */
typedef struct {
    const hl_train_pair *pair; /* NULL: no pair there */
    float *ts;                 /* [T][rank] scale * A.x of the last forward of its layer */
    float *bt;                 /* [rank][n_out] B transposed for this call */
} tr_lora;

/* One layer's intermediates (forward; layer il's after tr_select_layer(il)) and gradients, each [T][features]. */
typedef struct {
    float *xn, *q, *k, *v, *att, *r, *rn, *gate, *up, *h;  /* forward */
    float *dx, *dxn, *dq, *dk, *dv, *datt, *dg, *du, *dh; /* backward */
    float *dkh, *dvh;                                     /* [n_head][head_dim][T] per query head, transposed */
} tr_acts;

struct hl_train {
    const hl_model *model;
    int keep;            /* keep every layer's forward intermediates (no recompute in the backward) */
    float *fw;           /* forward intermediates: [keep ? n_layer : 1] layers of tr->a's forward buffers */
    float *bw;           /* the gradients of tr->a */
    float *hn;           /* [n_max][n_embd] the final norm's output */
    hl_pool *pool;
    int32_t n_max;       /* most tokens per window */
    int32_t T;           /* tokens of the current window */
    int32_t m_feat;      /* max(n_embd, n_q, n_ff): the widest projection input or output */
    float *x_saved;      /* [n_layer + 1][n_max][n_embd] */
    float *logits;       /* [n_max][n_vocab] */
    int32_t *tokens;     /* [n_max] */
    int32_t *targets;    /* [n_max] */
    double *tok_loss;    /* [n_max] each position's loss (0 without a target) */
    tr_acts a;
    float *rope_cs;      /* [n_max][head_dim/2][cos, sin] */
    tr_lora *lora;       /* [n_layer][HL_LORA_LAYER_TARGETS] */
    float *lora_ts;      /* storage of every pair's ts and bt (grown per call) */
    size_t lora_floats;
    float *dt, *dtt;     /* [n_max][max_rank] and [max_rank][n_max]: dt of the projection in backward, dt^T */
    float *tst, *dbt;    /* [max_rank][n_max] and [max_rank][m_feat]: its ts^T, and d loss / d B^T */
    int32_t max_rank;
    float *wd;           /* [2][block_rows][m_feat] two blocks of W's rows dequantized (train_linear.c) */
    int32_t block_rows;  /* 64, or 16 per thread past 4 threads */
    char *xq;            /* the input in a quantized weight's activation type */
    size_t xq_bytes;
    float *scratch;      /* [n_threads][scratch_floats] */
    size_t scratch_floats;
    double loss_sum;
    int32_t n_loss;
    volatile int32_t *abort_flag; /* hl_train_set_abort */
};

/* Points tr->a's forward buffers at layer il's (all layers share one set without keep). */
void tr_select_layer(hl_train *tr, int32_t il);
/* Runs fn(tr, arg, t0, t1) on every thread for its share of the window's tokens (one barrier at the end). */
typedef void (*tr_token_fn)(hl_train *tr, void *arg, int64_t t0, int64_t t1);
void tr_for_tokens(hl_train *tr, tr_token_fn fn, void *arg);
/* Runs job(arg, ith, nth) on the pool. */
void tr_run(hl_train *tr, hl_job_fn job, void *arg);
/* This thread's scratch (scratch_floats floats). */
float *tr_scratch(hl_train *tr, int ith);

/* train_linear.c: y [T][n_out] = W.x + lora + bias, x [T][n_in]; ts of the lora filled. */
void tr_linear_forward(hl_train *tr, const hl_tensor *w, const float *bias, tr_lora *lora, const float *x, float *y);
/* dx [T][n_in] += W^T.dy + (its LoRA's A^T.dt), and the LoRA's grad_a / grad_b added into. */
void tr_linear_backward(hl_train *tr, const hl_tensor *w, const tr_lora *lora, const float *x, const float *dy,
                        float *dx);

/* train_gemm.c: c[t][j] += sum_k a[t][k] b[k][j] for t < nt, j < n, k < nk (strides in floats). */
void tr_gemm_acc(int64_t nt, int64_t n, int64_t nk, const float *a, size_t a_stride, const float *b, size_t b_stride,
                 float *c, size_t c_stride);

/* train_attention.c: att [T][Q] = causal softmax(q k^T / sqrt(hd)) v per head (q, k rotated). */
void tr_attention_forward(hl_train *tr);
/* dq, dk, dv from datt (the same q, k, v as the forward). */
void tr_attention_backward(hl_train *tr);

/* train_layer.c: block il from x_saved[il] to x_saved[il + 1], keeping its intermediates in tr->a. */
void tr_layer_forward(hl_train *tr, int32_t il);
/* With tr->a.dx = d loss / d output of block il (after tr_layer_forward(il)): d loss / d its input. */
void tr_layer_backward(hl_train *tr, int32_t il);

/* train_pointwise.c (all over the window's T tokens, [T][n] row-major) */
void tr_embed(hl_train *tr, float *x);                                        /* x [T][E] = token rows */
void tr_rms_norm(hl_train *tr, const float *x, const hl_tensor *w, float *y); /* [T][E] */
void tr_rms_norm_backward(hl_train *tr, const float *x, const hl_tensor *w, const float *dy, float *dx); /* += */
void tr_rope(hl_train *tr, float *x, int64_t n, int inverse);                 /* in place; inverse: transposed */
void tr_swiglu(hl_train *tr);                                                 /* h = silu(gate) * up */
void tr_swiglu_backward(hl_train *tr);                                        /* dg, du from dh */
void tr_add(hl_train *tr, float *y, const float *x, int64_t n);               /* y += x */
void tr_rope_table(hl_train *tr);
/* Loss over the rows with a target, and logits turned into d loss / d logits (0 in rows without). */
void tr_loss(hl_train *tr);

#endif
