/*
 * The mat-mul node: up to three projections sharing one input x [n_in, T] (q/k/v, gate/up, or one alone),
 * in at most three phases, each followed by the pool's barrier:
 *
 *   convert  x to every activation type that the weights and the LoRA A's dot against, once for all of them
 *            (threads split the tokens)
 *   lora_a   t_i = A_i . x for every adapter term of every projection (ops_lora.c; only with adapters). When
 *            every A dots against x itself (F32 and F16 A's), it needs no conversion and runs in the convert phase;
 *            so it does for a decode-sized x (fewer than HL_GEMM_BATCH_MIN tokens): a thread that did not convert
 *            all of x itself converts it whole to the A's types for its own A rows (a few rows' conversion costs
 *            less than a barrier).
 *   dot      each projection's rows split among threads: dst = W.x through the multi-token kernel, plus
 *            the LoRA B terms, plus the bias; then the epilogue on the rows the thread just wrote: RoPE and
 *            the KV store (threads own whole heads), SwiGLU, or the residual add
 *
 * A phase with nothing to do is left out, so a float model's projections take one barrier per node.
 */
#include <math.h>

#include "core.h"
#include "gemm.h"
#include "ops_internal.h"
#include "quants.h"

/* Weight rows per thread are cut at multiples of this (a multiple of every kernel's row tile). */
#define HL_ROW_ALIGN 16
#define MAX_ACT_TYPES (2 * HL_MAX_PROJ + 2)

typedef enum { PH_CONVERT, PH_LORA_A, PH_CONVERT_AND_LORA_A, PH_DOT } mm_phase;

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* The distinct activation types other than F32 that the node's weights and A's need, in first-use order. */
static int act_types(const hl_node *nd, int32_t types[MAX_ACT_TYPES]) {
    int n = 0;
    for (int32_t i = 0; i < nd->n_proj + nd->n_terms; i++) {
        const hl_tensor *w = i < nd->n_proj ? &nd->proj[i].w : &nd->terms[i - nd->n_proj].lora->a;
        const int32_t vdt = hl_get_type_traits(w->type)->vec_dot_type;
        int seen = vdt == HL_TYPE_F32;
        for (int k = 0; k < n && !seen; k++) seen = types[k] == vdt;
        if (!seen && n < MAX_ACT_TYPES) types[n++] = vdt;
    }
    return n;
}

/* Bytes of x converted to every activation type (the start of the node's work buffer). */
static size_t converted_bytes(const hl_node *nd) {
    int32_t types[MAX_ACT_TYPES];
    size_t size = 0;
    for (int k = act_types(nd, types) - 1; k >= 0; k--)
        size += align64(hl_row_size(types[k], nd->src1.ne[0]) * (size_t)nd->src1.ne[1]);
    return size;
}

const char *hl_mul_mat_input(const char *converted, const hl_node *nd, int32_t weight_type, size_t *stride) {
    const int32_t vdt = hl_get_type_traits(weight_type)->vec_dot_type;
    if (vdt == HL_TYPE_F32) {
        *stride = nd->src1.row_bytes;
        return nd->src1.data;
    }
    int32_t types[MAX_ACT_TYPES];
    const int n = act_types(nd, types);
    size_t offset = 0;
    for (int k = 0; k < n && types[k] != vdt; k++)
        offset += align64(hl_row_size(types[k], nd->src1.ne[0]) * (size_t)nd->src1.ne[1]);
    *stride = hl_row_size(vdt, nd->src1.ne[0]);
    return converted + offset;
}

/* Whether every LoRA A of the node dots against x as it is (F32 activations: nothing to wait for). */
static int lora_a_reads_x(const hl_node *nd) {
    for (int32_t i = 0; i < nd->n_terms; i++)
        if (hl_get_type_traits(nd->terms[i].lora->a.type)->vec_dot_type != HL_TYPE_F32) return 0;
    return 1;
}

/* Whether each thread converts the whole (decode-sized) x for its own A rows, in a buffer of its own. */
static int lora_a_converts_privately(const hl_node *nd) {
    return nd->n_terms > 0 && !lora_a_reads_x(nd) && nd->src1.ne[1] < HL_GEMM_BATCH_MIN;
}

/* The work buffer: x converted (shared), then one slice per thread: its B scratch, then (when the A half
 * converts privately) its own converted x. */
static size_t thread_slice_bytes(const hl_node *nd) {
    return hl_lora_b_scratch_size(nd) + (lora_a_converts_privately(nd) ? align64(converted_bytes(nd)) : 0);
}

size_t hl_mul_mat_work_size(const hl_node *nd, int nth) {
    return align64(converted_bytes(nd)) + (size_t)nth * thread_slice_bytes(nd);
}

static char *thread_slice(hl_context *ctx, const hl_node *nd, int ith) {
    return (char *)ctx->work + align64(converted_bytes(nd)) + (size_t)ith * thread_slice_bytes(nd);
}

static int phase_list(const hl_node *nd, mm_phase out[3]) {
    int32_t types[MAX_ACT_TYPES];
    int n = 0;
    const int convert = act_types(nd, types) > 0, lora_a = nd->n_terms > 0;
    if (convert && lora_a && (lora_a_reads_x(nd) || lora_a_converts_privately(nd))) out[n++] = PH_CONVERT_AND_LORA_A;
    else {
        if (convert) out[n++] = PH_CONVERT;
        if (lora_a) out[n++] = PH_LORA_A;
    }
    out[n++] = PH_DOT;
    return n;
}

int hl_mul_mat_phases(const hl_node *nd) {
    mm_phase list[3];
    return phase_list(nd, list);
}

/* Whether a LoRA A of the node dots against activations of this type. */
static int lora_a_dots(const hl_node *nd, int32_t act_type) {
    for (int32_t i = 0; i < nd->n_terms; i++)
        if (hl_get_type_traits(nd->terms[i].lora->a.type)->vec_dot_type == act_type) return 1;
    return 0;
}

/* Tokens [t0, t1) of x converted to every activation type (or only those a LoRA A dots against), into the
 * converted layout at dst. */
static void convert_input(const hl_node *nd, char *dst, int64_t t0, int64_t t1, int lora_a_types_only) {
    int32_t types[MAX_ACT_TYPES];
    const int n = act_types(nd, types);
    for (int k = 0; k < n; k++) {
        const size_t stride = hl_row_size(types[k], nd->src1.ne[0]);
        if (!lora_a_types_only || lora_a_dots(nd, types[k]))
            for (int64_t t = t0; t < t1; t++)
                hl_get_type_traits(types[k])->from_float(hl_row_f32(&nd->src1, t), dst + t * stride, nd->src1.ne[0]);
        dst += align64(stride * (size_t)nd->src1.ne[1]);
    }
}

/* Rows [r0, r1) of n for thread ith of nth, cut at multiples of align. */
static void split_rows(int64_t n, int64_t align, int ith, int nth, int64_t *r0, int64_t *r1) {
    const int64_t tiles = (n + align - 1) / align;
    int64_t t0, t1;
    hl_split(tiles, ith, nth, &t0, &t1);
    *r0 = t0 * align < n ? t0 * align : n;
    *r1 = t1 * align < n ? t1 * align : n;
}

/* Rows of an adapted projection's output per chunk: its W.x of every token (rows x tokens floats) stays in L2
 * for the LoRA B half that adds to it right after. */
#define LORA_CHUNK_BYTES (256 * 1024)

/* Rows per chunk of dst rows (a multiple of align): all of them without adapter terms (one kernel call, as
 * the base graph has always run), else what keeps a chunk's outputs of n_tok tokens within LORA_CHUNK_BYTES. */
static int64_t chunk_rows(const hl_proj *p, int64_t n_tok, int64_t align, int64_t rows) {
    if (!p->n_terms) return rows;
    const int64_t fit = LORA_CHUNK_BYTES / ((int64_t)sizeof(float) * n_tok) / align * align;
    return fit > align ? fit : align;
}

/* dst rows [r0, r1) of every token = W.x + LoRA + bias; with adapter terms, in chunks of rows (each (row,
 * token) value is the same whatever the chunk: hl_gemm_fn's contract, and the B half's fixed order). */
static void project_rows(hl_context *ctx, const hl_node *nd, const hl_proj *p, int64_t r0, int64_t r1,
                         int64_t align, char *b_scratch) {
    const int64_t n_tok = nd->src1.ne[1], chunk = chunk_rows(p, n_tok, align, r1 - r0);
    size_t stride;
    const char *x = hl_mul_mat_input(ctx->work, nd, p->w.type, &stride);
    for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
        const int64_t c1 = c0 + chunk < r1 ? c0 + chunk : r1;
        hl_gemm(hl_get_type_traits(p->w.type), 0, p->w.ne[0], c1 - c0, n_tok,
                (const char *)p->w.data + (size_t)c0 * p->w.row_bytes, p->w.row_bytes, x, stride,
                (float *)p->dst.data + c0, p->dst.row_bytes / sizeof(float));
        if (p->n_terms) hl_lora_b_rows(nd, p, c0, c1, b_scratch); /* y = (W.x + LoRA) + bias */
    }
    const float *bias = p->bias.data;
    for (int64_t t = 0; bias && t < n_tok; t++) {
        float *y = hl_row_f32(&p->dst, t);
        for (int64_t r = r0; r < r1; r++) y[r] += bias[r];
    }
}

/* Where threads' rows may be cut: whole heads for RoPE + KV store, whole panels of repacked weights. */
static int64_t row_align(const hl_context *ctx, const hl_node *nd) {
    int64_t align = nd->epi == EPI_ROPE_STORE_KV ? ctx->model->hp.head_dim : HL_ROW_ALIGN;
    for (int32_t i = 0; i < nd->n_proj; i++) {
        const int64_t panel = hl_get_type_traits(nd->proj[i].w.type)->panel_rows;
        if (panel > 1) /* align = lcm(align, panel) */
            for (int64_t a = align; align % panel; align += a) {}
    }
    return align;
}

static void dot_phase(hl_context *ctx, const hl_node *nd, int ith, int nth) {
    const int64_t align = row_align(ctx, nd);
    char *b_scratch = thread_slice(ctx, nd, ith);
    if (nd->n_terms) hl_lora_b_convert(nd, b_scratch);
    int64_t r0[HL_MAX_PROJ], r1[HL_MAX_PROJ];
    for (int32_t i = 0; i < nd->n_proj; i++) {
        split_rows(nd->proj[i].w.ne[1], align, ith, nth, &r0[i], &r1[i]);
        if (r1[i] > r0[i]) project_rows(ctx, nd, &nd->proj[i], r0[i], r1[i], align, b_scratch);
    }
    hl_epilogue_rows(ctx, nd, r0, r1);
}

void hl_op_mul_mat(hl_context *ctx, const hl_node *nd, int phase, int ith, int nth) {
    mm_phase list[3];
    phase_list(nd, list);
    int64_t t0, t1;
    hl_split(nd->src1.ne[1], ith, nth, &t0, &t1);
    switch (list[phase]) {
    case PH_CONVERT: convert_input(nd, ctx->work, t0, t1, 0); break;
    case PH_LORA_A: hl_lora_a_rows(ctx->work, nd, ith, nth); break;
    case PH_CONVERT_AND_LORA_A:
        convert_input(nd, ctx->work, t0, t1, 0);
        if (lora_a_converts_privately(nd) && t1 - t0 < nd->src1.ne[1]) { /* x not all converted by this thread */
            char *own = thread_slice(ctx, nd, ith) + hl_lora_b_scratch_size(nd);
            convert_input(nd, own, 0, nd->src1.ne[1], 1);
            hl_lora_a_rows(own, nd, ith, nth);
        } else {
            hl_lora_a_rows(ctx->work, nd, ith, nth);
        }
        break;
    case PH_DOT: dot_phase(ctx, nd, ith, nth); break;
    }
}
