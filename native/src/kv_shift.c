/*
 * Context shift (gguf-llama.md §6): drops cells [n_keep, n_keep + n_discard) of a sequence's KV cache, moves the
 * later cells down by n_discard and re-rotates their cached K by -n_discard positions, so that cell index
 * = position still holds afterwards, as llama.cpp's seq_rm + seq_add leave the positions.
 *
 * RoPE composes additively: K stored rotated at position p, rotated again by the angles of -n_discard
 * (same base, rope_freqs and freq scale as the forward pass, from hl_rope_table), is K rotated at
 * p - n_discard. The shift is a pure rotation: the attn factor, which the stored K already carries, is
 * divided out of the table. V moves unchanged. Layers are split over the threads of the sequence's context.
 */
#include "core.h"

typedef struct {
    const hl_sequence *seq;
    int32_t n_keep, n_discard;
    const float *cs; /* [head_dim/2][cos, sin] of the rotation by -n_discard */
} shift_job;

static float load_value(int32_t type, const void *base, size_t i) {
    return type == HL_TYPE_F32 ? ((const float *)base)[i] : hl_fp16_to_fp32(((const uint16_t *)base)[i]);
}

static void store_value(int32_t type, void *base, size_t i, float x) {
    if (type == HL_TYPE_F32) ((float *)base)[i] = x;
    else ((uint16_t *)base)[i] = hl_fp32_to_fp16(x);
}

/* Rotates every head of one K row [n_embd_kv]: NORM pairs (2i, 2i+1), NEOX pairs (i, i + head_dim/2). */
static void rotate_k_row(const hl_context *c, void *row, const float *cs) {
    const hl_model *m = c->model;
    const int32_t type = c->params.cache_type, hd = m->hp.head_dim, half = hd / 2;
    const int neox = m->hp.rope_mode == HL_ROPE_NEOX;
    for (size_t h0 = 0; h0 < (size_t)m->n_embd_kv; h0 += (size_t)hd) {
        for (int i = 0; i < half; i++) {
            const size_t i0 = h0 + (size_t)(neox ? i : 2 * i), i1 = h0 + (size_t)(neox ? i + half : 2 * i + 1);
            const float x0 = load_value(type, row, i0), x1 = load_value(type, row, i1);
            const float co = cs[2 * i], si = cs[2 * i + 1];
            store_value(type, row, i0, x0 * co - x1 * si);
            store_value(type, row, i1, x0 * si + x1 * co);
        }
    }
}

/* Layer il: K rows [n_ctx][n_embd_kv] and transposed V rows [n_embd_kv][n_ctx], cells moved down. */
static void shift_layer(const shift_job *job, int il) {
    const hl_sequence *s = job->seq;
    const hl_context *c = s->ctx;
    const size_t es = c->params.cache_type == HL_TYPE_F32 ? 4 : 2;
    const size_t n_kv = (size_t)c->model->n_embd_kv, n_ctx = (size_t)s->n_ctx;
    const size_t keep = (size_t)job->n_keep, from = keep + (size_t)job->n_discard;
    const size_t n_move = (size_t)s->n_used - from;
    char *k = s->k_cache[il], *v = s->v_cache[il];
    memmove(k + keep * n_kv * es, k + from * n_kv * es, n_move * n_kv * es);
    for (size_t cell = keep; cell < keep + n_move; cell++) rotate_k_row(c, k + cell * n_kv * es, job->cs);
    for (size_t i = 0; i < n_kv; i++) memmove(v + (i * n_ctx + keep) * es, v + (i * n_ctx + from) * es, n_move * es);
}

static void shift_job_run(void *arg, int ith, int nth) {
    const shift_job *job = arg;
    for (int il = ith; il < job->seq->ctx->model->hp.n_layer; il += nth) shift_layer(job, il);
}

hl_status hl_sequence_shift(hl_sequence *s, int32_t n_keep, int32_t n_discard) {
    if (!s) return hl_fail(HL_ERR_INVALID, "hl_sequence_shift: NULL sequence");
    hl_context *c = s->ctx;
    if (n_keep < 0 || n_discard < 1 || n_discard > s->n_used - n_keep)
        return hl_fail(HL_ERR_INVALID, "hl_sequence_shift: cannot keep %d cells and drop %d of %d in use", n_keep,
                       n_discard, s->n_used);
    hl_rope_table(c, 0, -n_discard, 1);
    const float af = c->model->hp.rope_attn_factor;
    const int half = c->model->hp.head_dim / 2;
    if (af != 0.0f && af != 1.0f)
        for (int i = 0; i < 2 * half; i++) c->rope_cs[i] /= af;
    shift_job job = {s, n_keep, n_discard, c->rope_cs};
    hl_pool_run(c->pool, shift_job_run, &job);
    const int32_t from = n_keep + n_discard;
    memmove(s->cell_sig + n_keep, s->cell_sig + from, (size_t)(s->n_used - from) * sizeof *s->cell_sig);
    s->n_used -= n_discard;
    return HL_OK;
}
