/*
 * The LoRA half of mul_mat_lora. For one adapted projection with input x [n_in, T]:
 *
 *   t_i = A_i . x          [r_i, T]   OP_LORA_A, all terms sharing x in one node
 *   y   = W . x + sum_i s_i * B_i . t_i   OP_MUL_MAT with terms: each thread adds the terms to the rows
 *                                         of W.x it just wrote (float B: t_i holds s_i * A_i.x and
 *                                         B_i^T's rows are axpy'd; quantized B: s_i * dot(B_i[j], t_i))
 *
 * A and B stay in their stored type; t is converted to B's vec_dot_type like
 * any activation, and every sum is in f32. Never (B.A).x, never a merge.
 */
#include "core.h"
#include "gemm.h"
#include "ops_internal.h"
#include "quants.h"

static int needs_conversion(const hl_tensor *w) { return hl_get_type_traits(w->type)->vec_dot_type != HL_TYPE_F32; }

static size_t converted_size(const hl_tensor *w, int64_t n, int64_t n_tokens) {
    return needs_conversion(w) ? hl_row_size(hl_get_type_traits(w->type)->vec_dot_type, n) * (size_t)n_tokens : 0;
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* ---- OP_LORA_A: t_i = A_i . x ---------------------------------------------------------------- */

size_t hl_lora_a_work_size(const hl_node *nd) {
    size_t size = 0;
    for (int32_t i = 0; i < nd->n_terms; i++)
        size += align64(converted_size(&nd->terms[i].lora->a, nd->src1.ne[0], nd->src1.ne[1]));
    return size;
}

int hl_lora_a_phases(const hl_node *nd) {
    for (int32_t i = 0; i < nd->n_terms; i++)
        if (needs_conversion(&nd->terms[i].lora->a)) return 2;
    return 1;
}

/* Where term i's converted x starts in work (or x itself for an F32-dotted A). */
static const char *lora_a_input(hl_context *ctx, const hl_node *nd, int32_t i, size_t *stride) {
    size_t offset = 0;
    for (int32_t k = 0; k < i; k++) offset += align64(converted_size(&nd->terms[k].lora->a, nd->src1.ne[0], nd->src1.ne[1]));
    const hl_tensor *a = &nd->terms[i].lora->a;
    if (!needs_conversion(a)) {
        *stride = nd->src1.row_bytes;
        return nd->src1.data;
    }
    *stride = hl_row_size(hl_get_type_traits(a->type)->vec_dot_type, nd->src1.ne[0]);
    return (const char *)ctx->work + offset;
}

void hl_op_lora_a(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth) {
    const int64_t n_tok = nd->src1.ne[1], n_in = nd->src1.ne[0];
    if (phase == 0 && hl_lora_a_phases(nd) == 2) {
        for (int32_t i = 0; i < nd->n_terms; i++) {
            const hl_tensor *a = &nd->terms[i].lora->a;
            if (!needs_conversion(a)) continue;
            size_t stride;
            char *dst = (char *)lora_a_input(ctx, nd, i, &stride);
            const hl_type_traits *vt = hl_get_type_traits(hl_get_type_traits(a->type)->vec_dot_type);
            int64_t t0, t1;
            hl_split(n_tok, ith, nth, &t0, &t1);
            for (int64_t t = t0; t < t1; t++) vt->from_float(hl_row_f32(&nd->src1, t), dst + t * stride, n_in);
        }
        return;
    }
    for (int32_t i = 0; i < nd->n_terms; i++) { /* t_i [T][rank] = A_i . x, rank rows split among threads */
        const hl_lora_term *term = &nd->terms[i];
        const hl_tensor *a = &term->lora->a;
        size_t stride;
        const char *x = lora_a_input(ctx, nd, i, &stride);
        int64_t k0, k1;
        hl_split(term->lora->rank, ith, nth, &k0, &k1);
        if (k1 <= k0) continue;
        hl_gemm(hl_get_type_traits(a->type), 0, n_in, k1 - k0, n_tok, (const char *)a->data + k0 * a->row_bytes,
                a->row_bytes, x, stride, term->t + k0, (size_t)term->lora->rank);
        if (!term->lora->bt) continue;
        for (int64_t t = 0; t < n_tok; t++) /* float B: t scaled here, the axpy coefficients of the B half */
            for (int64_t k = k0; k < k1; k++) term->t[t * term->lora->rank + k] *= term->scale;
    }
}

/* ---- OP_MUL_MAT with terms: the B half ------------------------------------------------------- */

/* The converted t's follow the mat-mul's converted x in work. */
static size_t lora_b_offset(const hl_node *nd) { return align64(hl_mul_mat_work_size(&nd->src0, nd->src1.ne[1])); }

/* Work of a mat-mul with terms: its converted x, then each converted t. */
size_t hl_lora_b_work_size(const hl_node *nd) {
    size_t size = lora_b_offset(nd);
    for (int32_t i = 0; i < nd->n_terms; i++)
        size += align64(converted_size(&nd->terms[i].lora->b, nd->terms[i].lora->rank, nd->src1.ne[1]));
    return size;
}

int hl_lora_b_needs_conversion(const hl_node *nd) {
    for (int32_t i = 0; i < nd->n_terms; i++)
        if (needs_conversion(&nd->terms[i].lora->b)) return 1;
    return 0;
}

/* Phase 0 of a mat-mul with terms: each t_i row (one token) to B_i's vec_dot_type. */
void hl_lora_b_convert(hl_context *ctx, const hl_node *nd, int ith, int nth) {
    char *dst = (char *)ctx->work + lora_b_offset(nd);
    const int64_t n_tok = nd->src1.ne[1];
    for (int32_t i = 0; i < nd->n_terms; i++) {
        const hl_lora *lora = nd->terms[i].lora;
        if (!needs_conversion(&lora->b)) continue;
        const int32_t vdt = hl_get_type_traits(lora->b.type)->vec_dot_type;
        const size_t stride = hl_row_size(vdt, lora->rank);
        int64_t t0, t1;
        hl_split(n_tok, ith, nth, &t0, &t1);
        for (int64_t t = t0; t < t1; t++)
            hl_get_type_traits(vdt)->from_float(nd->terms[i].t + t * lora->rank, dst + t * stride, lora->rank);
        dst += align64(stride * (size_t)n_tok);
    }
}

/* y[t][r0..r1) += sum_i s_i * B_i[r0..r1) . t_i[t] for every token t. Float B: axpys over the rows of B
 * transposed, all tokens at once (t_i already holds s_i * A_i.x); quantized B: one dot per row against t
 * converted to B's vec_dot_type. */
void hl_lora_b_rows(hl_context *ctx, const hl_node *nd, int64_t r0, int64_t r1) {
    const char *conv = (const char *)ctx->work + lora_b_offset(nd);
    const int64_t n_tok = nd->src1.ne[1];
    const size_t y_stride = nd->dst.row_bytes / sizeof(float);
    for (int32_t i = 0; i < nd->n_terms; i++) {
        const hl_lora *lora = nd->terms[i].lora;
        const hl_type_traits *bt = hl_get_type_traits(lora->b.type);
        if (lora->bt) {
            const size_t bt_stride = (size_t)lora->b.ne[1] * bt->type_size;
            hl_axpy_rows(bt, r1 - r0, lora->rank, n_tok, (const char *)lora->bt + (size_t)r0 * bt->type_size,
                         bt_stride, nd->terms[i].t, (size_t)lora->rank, (float *)nd->dst.data + r0, y_stride);
            continue;
        }
        const size_t stride = hl_row_size(bt->vec_dot_type, lora->rank);
        for (int64_t t = 0; t < n_tok; t++) {
            float *y = hl_row_f32(&nd->dst, t);
            for (int64_t r = r0; r < r1; r++) {
                float d;
                bt->vec_dot(lora->rank, &d, (const char *)lora->b.data + r * lora->b.row_bytes, conv + t * stride);
                y[r] += nd->terms[i].scale * d;
            }
        }
        conv += align64(stride * (size_t)n_tok);
    }
}

/* ---- OP_GET_ROWS with terms: x[t] += s * B . a[id] ------------------------------------------ */

static size_t embd_scratch(const hl_lora *lora) {
    return align64((size_t)lora->rank * sizeof(float)) + align64(converted_size(&lora->b, lora->rank, 1));
}

size_t hl_lora_embd_work_size(const hl_node *nd, int nth) {
    size_t per_thread = 0;
    for (int32_t i = 0; i < nd->n_terms; i++)
        if (embd_scratch(nd->terms[i].lora) > per_thread) per_thread = embd_scratch(nd->terms[i].lora);
    return per_thread * (size_t)nth;
}

void hl_lora_embd_add(hl_context *ctx, const hl_node *nd, int64_t t, float *x, int ith) {
    const size_t per_thread = hl_lora_embd_work_size(nd, 1);
    float *a_row = (float *)((char *)ctx->work + per_thread * (size_t)ith);
    for (int32_t i = 0; i < nd->n_terms; i++) {
        const hl_lora *lora = nd->terms[i].lora;
        const hl_type_traits *bt = hl_get_type_traits(lora->b.type);
        hl_get_type_traits(lora->a.type)->to_float((const char *)lora->a.data + ctx->tokens[t] * lora->a.row_bytes,
                                                   a_row, lora->rank);
        const void *t_row = a_row;
        if (needs_conversion(&lora->b)) {
            void *conv = (char *)a_row + align64((size_t)lora->rank * sizeof(float));
            hl_get_type_traits(bt->vec_dot_type)->from_float(a_row, conv, lora->rank);
            t_row = conv;
        }
        for (int64_t j = 0; j < lora->b.ne[1]; j++) {
            float d;
            bt->vec_dot(lora->rank, &d, (const char *)lora->b.data + j * lora->b.row_bytes, t_row);
            x[j] += nd->terms[i].scale * d;
        }
    }
}
