/* Internal structures of the model, the context and the compute graph. */
#ifndef HL_CORE_H
#define HL_CORE_H

#include <stdatomic.h>
#include <stdint.h>

#include "common.h"
#include "threadpool.h"

/* A 2-D view: ne[1] rows of ne[0] elements, row_bytes apart. */
typedef struct {
    int32_t type;
    int64_t ne[2];
    size_t row_bytes;
    void *data; /* NULL = absent */
} hl_tensor;

typedef struct {
    hl_tensor attn_norm, wq, wk, wv, bq, bk, bv, wo, bo;
    hl_tensor ffn_norm, w_gate, w_up, w_down, b_gate, b_up, b_down;
} hl_layer;

/* Outputs per panel of a float B transposed: a run of outputs reads one contiguous stretch of bt, not rank
 * short streams (the B half's share of an 8-adapter decode step fell from 9-10 % to 6.7 % of the samples). */
#define HL_BT_PANEL 64

/* Index in bt of B's element k (of rank r) for output j: panel j / P, row k of it, column j % P. */
static inline int64_t hl_bt_index(int64_t r, int64_t k, int64_t j) {
    return (j / HL_BT_PANEL * r + k) * HL_BT_PANEL + j % HL_BT_PANEL;
}

/* One LoRA pair as the graph uses it; a.data == NULL means absent. */
typedef struct {
    hl_tensor a;  /* [n_in, r]; token_embd: [r, n_vocab] */
    hl_tensor b;  /* [r, n_out]; token_embd: [r, n_embd] */
    void *bt;     /* float B only: B transposed in panels of HL_BT_PANEL outputs, [ceil(n_out / P)][r][P] in b's
                   * type (the last panel zero-padded), owned by the adapter */
    int32_t rank;
    float scale;  /* alpha / r (or 1) */
} hl_lora;

struct hl_adapter {
    uint64_t cache_key;   /* identifies its content in the KV cells' signatures (hl_adapter_desc.content_key) */
    atomic_int users;     /* entries of sequences' active sets naming it; hl_adapter_free refuses while > 0 */
    const hl_model *model;
    hl_lora *layers;      /* [n_layer][HL_LORA_LAYER_TARGETS] */
    hl_lora token_embd, output;
};

typedef struct {
    hl_adapter *adapter;  /* counted in its users */
    float scale;          /* user scale, never 0 */
} hl_active_adapter;

/* One adapter's term at one node over the node's tokens t0 .. t0+n_tok-1 (the segments using it at this
 * scale): t = A.x, then y += scale * B.t for those tokens only. */
typedef struct {
    const hl_lora *lora;
    float scale;          /* user scale * lora->scale */
    float *t;             /* [rank, n_tok] */
    int32_t t0, n_tok;    /* token range, in the node's rows */
} hl_lora_term;

/* A sequence: its KV cache and adapter set (see hotlora.h). */
struct hl_sequence {
    hl_context *ctx;           /* the context it belongs to */
    hl_sequence *next;         /* the context's list of sequences */
    int32_t n_ctx;             /* KV cells */
    int32_t n_used;            /* cells in use = next position */
    uint64_t *cell_sig;        /* [n_ctx] adapter-set signature each cell was computed under */
    hl_active_adapter *active; /* the adapter set, in application order */
    int32_t n_active;
    uint64_t set_sig;          /* signature of the active set; 0 = no adapter */
    int32_t set_terms;         /* LoRA pairs of the set (an upper bound of its terms at one node kind) */
    size_t set_ranks;          /* sum of the ranks of those pairs */
    void **k_cache;            /* [n_layer] -> [n_ctx][n_embd_kv] of cache_type: a row per cell */
    void **v_cache;            /* [n_layer] -> [n_embd_kv][n_ctx] of cache_type: transposed, a row per feature */
};

/* One segment of the batch being computed: tokens t0 .. t0+n-1 of the batch, appended to seq at pos0..;
 * its n_out wanted rows (its last token, or all) are rows out0 .. out0+n_out-1 of the last layer's outputs. */
typedef struct {
    hl_sequence *seq;
    float *logits;
    int32_t t0, n, pos0, n_out, out0;
} hl_batch_seg;

struct hl_model {
    hl_model_desc hp;      /* hyper-parameters; its tensor views are not used after create */
    int32_t n_embd_kv;     /* head_dim * n_head_kv */
    int32_t n_q;           /* head_dim * n_head */
    hl_tensor token_embd;  /* [n_embd, n_vocab] */
    hl_tensor output_norm; /* [n_embd] */
    hl_tensor output;      /* [n_embd, n_vocab]; token_embd when tied */
    hl_tensor rope_freqs;  /* [head_dim/2] or absent */
    hl_layer *layers;      /* [n_layer] */
};

typedef enum {
    OP_GET_ROWS,  /* dst[:, t] = dequant(src0 row tokens[t]) (+ token_embd LoRA terms) */
    OP_RMS_NORM,  /* dst = src0 / rms(src0) * src1 */
    OP_MUL_MAT,   /* for each projection: dst = w . src1 (+ LoRA terms) (+ bias), then the epilogue */
    OP_ATTENTION, /* dst = softmax(q K^T * scale) V over cells 0..pos of seq's cache, q = src0 */
    OP_GATHER,    /* dst[:, k] = src0[:, ctx->out_rows[k]]: the wanted rows of several segments, packed */
    OP_COUNT
} hl_op;

/* What a mat-mul node does to the rows each thread just wrote, before the node's last barrier. */
typedef enum {
    EPI_NONE,
    EPI_ROPE_STORE_KV, /* projections q, k, v: q and k rotated (threads own whole heads), k and v cached at pos0.. */
    EPI_SWIGLU,        /* projections gate, up: gate = silu(gate) * up */
    EPI_ADD            /* one projection: residual += dst */
} hl_epilogue;

/* One projection of a mat-mul node; every projection of a node reads the node's input x. */
typedef struct {
    hl_tensor w;           /* [n_in, n_out] */
    hl_tensor bias;        /* [n_out] F32 or absent */
    hl_tensor dst;         /* [n_out, T] F32 */
    hl_lora_term *terms;   /* B terms to add, a span of the node's terms */
    int32_t n_terms;
    char name[24];         /* e.g. "attn_q" */
} hl_proj;

#define HL_MAX_PROJ 3

typedef struct {
    hl_op op;
    int32_t il;    /* layer index, -1 outside the layers */
    int32_t pos0;  /* attention: position of the first row */
    const hl_sequence *seq; /* attention: the cache it reads */
    hl_tensor dst, src0, src1;
    hl_proj proj[HL_MAX_PROJ]; /* mul-mat: the projections sharing src1 */
    int32_t n_proj;
    hl_epilogue epi;
    hl_tensor residual;  /* EPI_ADD: the rows the projection is added to */
    hl_lora_term *terms; /* get-rows: B terms to add; mul-mat: every projection's terms (t = A.x computed here) */
    int32_t n_terms;
    char name[48];       /* e.g. "blk.0.attn_qkv" */
} hl_node;

struct hl_context {
    const hl_model *model;
    hl_context_params params;
    hl_pool *pool;
    volatile int32_t *abort_flag;
    atomic_int abort_at; /* index of the node after which compute stops */

    hl_sequence *seq0;   /* the default sequence (hl_context_sequence; the graph tools' sequence) */
    hl_sequence *seqs;   /* every sequence of this context, seq0 included */

    hl_lora_term *terms; /* storage for the graph's terms */
    int32_t n_terms, max_terms;
    float *lora_t;       /* storage for the terms' t */
    size_t lora_t_used, lora_t_floats;

    /* the batch being computed */
    hl_batch_seg *segs;  /* [n_batch] */
    int32_t n_segs, n_tokens, n_out;
    int32_t *out_rows;   /* [n_batch] the wanted rows of the last layer (OP_GATHER) */
    hl_sequence **tok_seq; /* [n_batch] each token's sequence (KV store) */
    int32_t *tok_pos;    /* [n_batch] each token's position = its cache cell */
    float *logits;       /* [n_out][n_vocab] of a batch of several segments, copied out after compute */
    size_t logits_floats;

    /* activations for up to n_batch tokens, F32 [features, n_batch] */
    float *x, *xn, *xg, *q, *k, *v, *attn, *proj, *gate, *up;
    int32_t *tokens;   /* [n_batch] */
    float *rope_cs;    /* [n_batch][head_dim/2][cos, sin]: row t for token t's position */
    void *work;        /* quantized activations / attention scratch */
    size_t work_size;

    hl_node *nodes;
    int32_t n_nodes, max_nodes;
};

/* graph.c: the graph of the batch in ctx->segs (hl_batch_layout first); logits: where the output rows go */
hl_status hl_graph_build(hl_context *ctx, float *logits);
/* Grows ctx->work to the largest need of any node of the built graph. */
hl_status hl_graph_plan(hl_context *ctx);
hl_status hl_graph_compute(hl_context *ctx);
/* Runs node i of the built graph alone, as hl_graph_compute runs it (the non-finite node finder). */
void hl_graph_compute_node(hl_context *ctx, int32_t i);
/* Builds (computes nothing) the graph of n_tokens for hl_graph_dot / hl_graph_stats, checking the request. */
hl_status hl_graph_build_for_tools(hl_context *ctx, const char *fn, int32_t n_tokens, int32_t layer);
int32_t hl_graph_max_nodes(const hl_model *model, int32_t n_segs);

/* context.c: the checks, graph build and plan of a batch of one segment of seq (the non-finite node finder);
 * nothing computed, the cache unchanged. */
hl_status hl_decode_prepare(hl_sequence *seq, const int32_t *tokens, int32_t n_tokens, float *logits,
                            int32_t all_logits);
/* context.c: fills the layout of segs (t0, pos0, out0, tok_seq, tok_pos) from their seq, n and n_out. */
void hl_batch_layout(hl_context *ctx);

/* sequence.c */
hl_status hl_sequence_alloc(hl_context *ctx, int32_t n_ctx, hl_sequence **out);
void hl_sequence_free_all(hl_context *ctx);
/* adapter_set.c: drops a sequence's set (its adapters' users counts) */
void hl_sequence_clear_set(hl_sequence *seq);

/* ops.c: runs one phase of a node on thread ith of nth; a barrier follows every phase. */
int hl_op_phases(const hl_node *node);
void hl_op_run(hl_context *ctx, const hl_node *node, int phase, int ith, int nth);
/* Work bytes a node needs with nth threads. */
size_t hl_node_work_size(const hl_node *node, int nth);
/* Fills rows row0 .. row0 + n_tokens - 1 of ctx->rope_cs for positions pos0 .. pos0 + n_tokens - 1. */
void hl_rope_table(hl_context *ctx, int32_t row0, int32_t pos0, int32_t n_tokens);
/* epilogue.c: cs [head_dim/2][cos, sin] of position pos (rope_freqs, freq_scale and attn_factor applied). */
void hl_rope_cs(const hl_model *model, int32_t pos, float *cs);

#endif
