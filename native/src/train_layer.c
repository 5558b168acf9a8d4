/*
 * One transformer block for training (train.h), as the inference graph computes it:
 *
 *   xn = rms(x) w_attn;  q, k, v = projections of xn (+ bias, + LoRA); q, k rotated
 *   r  = x + W_o . attention(q, k, v)
 *   rn = rms(r) w_ffn;   h = silu(W_gate . rn) * (W_up . rn);  out = r + W_down . h
 *
 * and its backward, in the reverse order, from d loss / d out in tr->a.dx to d loss / d x in place.
 */
#include "train.h"

static tr_lora *lora_at(hl_train *tr, int32_t il, int32_t target) {
    return &tr->lora[il * HL_LORA_LAYER_TARGETS + target];
}

static const float *bias_of(const hl_tensor *b) { return b->data; }

void tr_layer_forward(hl_train *tr, int32_t il) {
    const hl_model *m = tr->model;
    const hl_layer *L = &m->layers[il];
    const int64_t E = m->hp.n_embd;
    const float *x = tr->x_saved + (size_t)il * tr->n_max * E;
    float *out = tr->x_saved + (size_t)(il + 1) * tr->n_max * E;
    tr_acts *a = &tr->a;

    tr_rms_norm(tr, x, &L->attn_norm, a->xn);
    tr_linear_forward(tr, &L->wq, bias_of(&L->bq), lora_at(tr, il, HL_LORA_ATTN_Q), a->xn, a->q);
    tr_linear_forward(tr, &L->wk, bias_of(&L->bk), lora_at(tr, il, HL_LORA_ATTN_K), a->xn, a->k);
    tr_linear_forward(tr, &L->wv, bias_of(&L->bv), lora_at(tr, il, HL_LORA_ATTN_V), a->xn, a->v);
    tr_rope(tr, a->q, m->n_q, 0);
    tr_rope(tr, a->k, m->n_embd_kv, 0);
    tr_attention_forward(tr);
    tr_linear_forward(tr, &L->wo, bias_of(&L->bo), lora_at(tr, il, HL_LORA_ATTN_OUTPUT), a->att, a->r);
    tr_add(tr, a->r, x, E);

    tr_rms_norm(tr, a->r, &L->ffn_norm, a->rn);
    tr_linear_forward(tr, &L->w_gate, bias_of(&L->b_gate), lora_at(tr, il, HL_LORA_FFN_GATE), a->rn, a->gate);
    tr_linear_forward(tr, &L->w_up, bias_of(&L->b_up), lora_at(tr, il, HL_LORA_FFN_UP), a->rn, a->up);
    tr_swiglu(tr);
    tr_linear_forward(tr, &L->w_down, bias_of(&L->b_down), lora_at(tr, il, HL_LORA_FFN_DOWN), a->h, out);
    tr_add(tr, out, a->r, E);
}

static void zero(float *p, int64_t n) { memset(p, 0, (size_t)n * sizeof(float)); }

void tr_layer_backward(hl_train *tr, int32_t il) {
    const hl_model *m = tr->model;
    const hl_layer *L = &m->layers[il];
    const int64_t E = m->hp.n_embd, T = tr->T;
    const float *x = tr->x_saved + (size_t)il * tr->n_max * E;
    tr_acts *a = &tr->a;

    zero(a->dh, T * m->hp.n_ff);
    tr_linear_backward(tr, &L->w_down, lora_at(tr, il, HL_LORA_FFN_DOWN), a->h, a->dx, a->dh);
    tr_swiglu_backward(tr);
    zero(a->dxn, T * E);
    tr_linear_backward(tr, &L->w_gate, lora_at(tr, il, HL_LORA_FFN_GATE), a->rn, a->dg, a->dxn);
    tr_linear_backward(tr, &L->w_up, lora_at(tr, il, HL_LORA_FFN_UP), a->rn, a->du, a->dxn);
    tr_rms_norm_backward(tr, a->r, &L->ffn_norm, a->dxn, a->dx); /* dx = d loss / d r */

    zero(a->datt, T * m->n_q);
    tr_linear_backward(tr, &L->wo, lora_at(tr, il, HL_LORA_ATTN_OUTPUT), a->att, a->dx, a->datt);
    tr_attention_backward(tr);
    tr_rope(tr, a->dq, m->n_q, 1);
    tr_rope(tr, a->dk, m->n_embd_kv, 1);
    zero(a->dxn, T * E);
    tr_linear_backward(tr, &L->wq, lora_at(tr, il, HL_LORA_ATTN_Q), a->xn, a->dq, a->dxn);
    tr_linear_backward(tr, &L->wk, lora_at(tr, il, HL_LORA_ATTN_K), a->xn, a->dk, a->dxn);
    tr_linear_backward(tr, &L->wv, lora_at(tr, il, HL_LORA_ATTN_V), a->xn, a->dv, a->dxn);
    tr_rms_norm_backward(tr, x, &L->attn_norm, a->dxn, a->dx); /* dx = d loss / d x */
}
