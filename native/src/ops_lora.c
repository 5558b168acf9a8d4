/*
 * The LoRA half of mul_mat_lora, inside the mat-mul node (mul_mat.c) of an adapted projection, input x [n_in, T]:
 *
 *   t_i = A_i . x          [r_i, T]   the node's lora_a phase: every term of every projection sharing x;
 *                                     batch-sized terms split by tokens, the rest by rows, their A rows one
 *                                     after the other (whole A's per thread when there are several)
 *   y   = W . x + sum_i s_i * B_i . t_i   the dot phase: each thread adds the terms to the rows of W.x it
 *                                         just wrote (float B: t_i holds s_i * A_i.x and B_i^T's rows are
 *                                         axpy'd; quantized B: s_i * dot(B_i[j], t_i))
 *
 * Each term covers its token range t0 .. t0+n_tok-1 of the node (the segments whose adapter set holds
 * it): A.x is computed and B.t added for those tokens only (the CPU analogue of Punica's SGMV).
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

/* Whether the B half dots B's rows against t converted (quantized B; float B is axpy'd from bt instead). */
static int b_dots_converted_t(const hl_lora *lora) { return !lora->bt && needs_conversion(&lora->b); }

/* ---- the lora_a phase of a mat-mul node: t_i = A_i . x --------------------------------------- */

/* Whether a term's A . x is split among threads by tokens (all rank rows each: a batch kernel's row tile is
 * wider than a LoRA rank's share) rather than by rows: when every thread's tokens (hl_split) still make a batch,
 * so that each (row, token) gets the bits it gets in one call (hl_gemm_fn's contract). */
static int a_splits_tokens(const hl_lora_term *term, int nth) {
    int64_t t0, t1; /* the last thread's, the fewest */
    hl_split(term->n_tok, nth - 1, nth, &t0, &t1);
    return t1 - t0 >= HL_GEMM_BATCH_MIN;
}

/* t [n_tok][rank] rows k0 .. k1 - 1 for tokens t0 .. t1 - 1 = A . x (float B: times the term's scale). */
static void a_block(const char *converted, const hl_node *nd, const hl_lora_term *term, int64_t k0, int64_t k1,
                    int64_t t0, int64_t t1) {
    const hl_tensor *a = &term->lora->a;
    const int64_t rank = term->lora->rank;
    size_t stride;
    const char *x = hl_mul_mat_input(converted, nd, a->type, &stride);
    float *t = term->t + t0 * rank;
    hl_gemm(hl_get_type_traits(a->type), 0, nd->src1.ne[0], k1 - k0, t1 - t0,
            (const char *)a->data + k0 * a->row_bytes, a->row_bytes, x + (size_t)(term->t0 + t0) * stride, stride,
            t + k0, (size_t)rank);
    if (!term->lora->bt) return;
    for (int64_t i = 0; i < t1 - t0; i++) /* float B: t scaled here, the axpy coefficients of the B half */
        for (int64_t k = k0; k < k1; k++) t[i * rank + k] *= term->scale;
}

void hl_lora_a_rows(const char *converted, const hl_node *nd, int ith, int nth) {
    int64_t n_rows = 0; /* the row-split terms' A rows, one after the other */
    for (int32_t i = 0; i < nd->n_terms; i++)
        if (!a_splits_tokens(&nd->terms[i], nth)) n_rows += nd->terms[i].lora->rank;
    int64_t mine0, mine1; /* this thread's stretch of them */
    hl_split(n_rows, ith, nth, &mine0, &mine1);
    for (int64_t i = 0, first = 0; i < nd->n_terms; i++) {
        const hl_lora_term *term = &nd->terms[i];
        const int64_t rank = term->lora->rank;
        if (a_splits_tokens(term, nth)) {
            int64_t t0, t1;
            hl_split(term->n_tok, ith, nth, &t0, &t1);
            if (t1 > t0) a_block(converted, nd, term, 0, rank, t0, t1);
            continue;
        }
        const int64_t k0 = mine0 > first ? mine0 - first : 0, k1 = mine1 - first < rank ? mine1 - first : rank;
        if (k1 > k0) a_block(converted, nd, term, k0, k1, 0, term->n_tok);
        first += rank;
    }
}

/* ---- the dot phase: the B half ----------------------------------------------------------------- */

/* Bytes of term's t converted to its quantized B's vec_dot_type (0 for float B). */
static size_t b_conv_bytes(const hl_lora_term *term) {
    return b_dots_converted_t(term->lora) ? align64(converted_size(&term->lora->b, term->lora->rank, term->n_tok)) : 0;
}

/* Quantized B goes through the multi-token kernel in tiles of this many tokens x rows, into a scratch tile. */
#define B_TILE_TOKENS 16
#define B_TILE_ROWS 1024

static size_t b_tile_bytes(const hl_node *nd) {
    for (int32_t i = 0; i < nd->n_terms; i++)
        if (b_dots_converted_t(nd->terms[i].lora)) return align64(B_TILE_TOKENS * B_TILE_ROWS * sizeof(float));
    return 0;
}

/* Per thread: each quantized-B term's converted t, then the tile that B . t is computed into. */
size_t hl_lora_b_scratch_size(const hl_node *nd) {
    size_t size = b_tile_bytes(nd);
    for (int32_t i = 0; i < nd->n_terms; i++) size += b_conv_bytes(&nd->terms[i]);
    return size;
}

/* y[t][r0..r1) += s * B[r0..r1) . t_conv[t] for every token of the term, quantized B, through the
 * multi-token kernel. */
static void add_quantized_b(const hl_lora_term *term, const char *t_conv, int64_t r0, int64_t r1,
                            const hl_tensor *dst, float *tile) {
    const hl_lora *lora = term->lora;
    const int64_t n_tok = term->n_tok;
    const hl_type_traits *bt = hl_get_type_traits(lora->b.type);
    const size_t stride = hl_row_size(bt->vec_dot_type, lora->rank);
    for (int64_t t0 = 0; t0 < n_tok; t0 += B_TILE_TOKENS) {
        const int64_t nt = n_tok - t0 < B_TILE_TOKENS ? n_tok - t0 : B_TILE_TOKENS;
        for (int64_t j0 = r0; j0 < r1; j0 += B_TILE_ROWS) {
            const int64_t nr = r1 - j0 < B_TILE_ROWS ? r1 - j0 : B_TILE_ROWS;
            hl_gemm(bt, 0, lora->rank, nr, nt, (const char *)lora->b.data + j0 * lora->b.row_bytes, lora->b.row_bytes,
                    t_conv + t0 * stride, stride, tile, (size_t)nr);
            for (int64_t t = 0; t < nt; t++) {
                float *y = hl_row_f32(dst, term->t0 + t0 + t) + j0;
                for (int64_t r = 0; r < nr; r++) y[r] += term->scale * tile[t * nr + r];
            }
        }
    }
}

/* Each thread converts every quantized-B term's t (all its tokens) into its own scratch, in term order. */
void hl_lora_b_convert(const hl_node *nd, char *scratch) {
    scratch += b_tile_bytes(nd);
    for (int32_t i = 0; i < nd->n_terms; i++) {
        const hl_lora *lora = nd->terms[i].lora;
        if (!b_dots_converted_t(lora)) continue;
        const int32_t vdt = hl_get_type_traits(lora->b.type)->vec_dot_type;
        const size_t stride = hl_row_size(vdt, lora->rank);
        for (int64_t t = 0; t < nd->terms[i].n_tok; t++)
            hl_get_type_traits(vdt)->from_float(nd->terms[i].t + t * lora->rank, scratch + t * stride, lora->rank);
        scratch += b_conv_bytes(&nd->terms[i]);
    }
}

/* y[t][r0..r1) += B[r0..r1) . t[t] for every token of the term, float B: axpys over the rows of B transposed
 * (t already holds s * A.x), one panel of bt at a time (hl_lora.bt). */
static void add_float_b(const hl_lora_term *term, int64_t r0, int64_t r1, float *y, size_t y_stride) {
    const hl_lora *lora = term->lora;
    const hl_type_traits *traits = hl_get_type_traits(lora->b.type);
    const size_t elem = traits->type_size;
    for (int64_t c0 = r0; c0 < r1;) {
        const int64_t panel = c0 / HL_BT_PANEL, c1 = r1 < (panel + 1) * HL_BT_PANEL ? r1 : (panel + 1) * HL_BT_PANEL;
        const char *rows = (const char *)lora->bt + (size_t)hl_bt_index(lora->rank, 0, c0) * elem;
        hl_axpy_rows(traits, c1 - c0, lora->rank, term->n_tok, rows, HL_BT_PANEL * elem, term->t, (size_t)lora->rank,
                     y + c0, y_stride);
        c0 = c1;
    }
}

/* y[t][r0..r1) += sum_i s_i * B_i[r0..r1) . t_i[t] for every term of projection p and every token t of it.
 * Float B: axpys over the rows of B transposed, all tokens at once (t_i already holds s_i * A_i.x);
 * quantized B: the multi-token kernel against t converted to B's vec_dot_type (in scratch). */
void hl_lora_b_rows(const hl_node *nd, const hl_proj *p, int64_t r0, int64_t r1, char *scratch) {
    const size_t y_stride = p->dst.row_bytes / sizeof(float);
    float *tile = (float *)scratch;
    const char *t_conv = scratch + b_tile_bytes(nd);
    for (const hl_lora_term *term = nd->terms; term < p->terms; term++) t_conv += b_conv_bytes(term);
    for (int32_t i = 0; i < p->n_terms; i++) {
        const hl_lora_term *term = &p->terms[i];
        if (term->lora->bt) {
            add_float_b(term, r0, r1, hl_row_f32(&p->dst, term->t0), y_stride);
            continue;
        }
        add_quantized_b(term, t_conv, r0, r1, &p->dst, tile);
        t_conv += b_conv_bytes(term);
    }
}

/* ---- OP_GET_ROWS with terms: x[t] += s * B . a[id] for the terms covering token t ------------- */

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
        if (t < nd->terms[i].t0 || t >= nd->terms[i].t0 + nd->terms[i].n_tok) continue;
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
