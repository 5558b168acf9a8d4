/*
 * hotlora.h — the whole public API of the hotlora C core.
 *
 * The core is compute only: it parses no files, never prints, never exits or
 * aborts. Python validates every tensor against its file and hands the core
 * read-only views into the memory map. Every fallible call returns an
 * hl_status; hl_last_error() then holds a specific message (per thread).
 * Buffers passed in (logits, outputs) belong to the caller.
 *
 * Threading: one thread at a time drives a context and its sequences (decode, shift, state, keep and
 * adapter-set calls: a sequence uses its context's scratch buffers and thread pool); the context's own thread
 * pool does the compute. Different contexts may run on different threads, and may share a model and adapters
 * (read only; an adapter's users count is atomic).
 *
 * Ownership: a context owns its sequences, its default one (hl_context_sequence) included; hl_context_free
 * frees those left. A sequence's active set holds its adapters, so hl_adapter_free refuses an adapter still
 * active in any sequence.
 *
 * Shapes use ggml order: ne[0] is the contiguous row length, ne[1] the number
 * of rows. A weight W with ne = [n_in, n_out] maps n_in inputs to n_out outputs.
 */
#ifndef HOTLORA_H
#define HOTLORA_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    HL_OK = 0,
    HL_ERR_INVALID = 1,      /* a bad argument or descriptor */
    HL_ERR_NOMEM = 2,        /* an allocation failed */
    HL_ERR_UNSUPPORTED = 3,  /* a weight type or feature the core lacks */
    HL_ERR_CONTEXT_FULL = 4, /* the KV cache has no room for the batch */
    HL_ERR_ABORTED = 5       /* the abort flag was raised during compute */
} hl_status;

/* Storage types, numbered as ggml numbers them. */
typedef enum {
    HL_TYPE_F32 = 0,
    HL_TYPE_F16 = 1,
    HL_TYPE_Q4_0 = 2,
    HL_TYPE_Q4_1 = 3,
    HL_TYPE_Q5_0 = 6,
    HL_TYPE_Q5_1 = 7,
    HL_TYPE_Q8_0 = 8,
    HL_TYPE_Q8_1 = 9,  /* activations only */
    HL_TYPE_Q2_K = 10,
    HL_TYPE_Q3_K = 11,
    HL_TYPE_Q4_K = 12,
    HL_TYPE_Q5_K = 13,
    HL_TYPE_Q6_K = 14,
    HL_TYPE_Q8_K = 15, /* activations only */
    HL_TYPE_BF16 = 30,
    /* In memory only, never in a file: Q4_0, Q8_0, Q4_K and Q6_K weights repacked by hl_repack into panels
     * of 16 rows (per block: the 16 rows' scales, then their quants transposed so that a 32-bit lane holds a
     * row). */
    HL_TYPE_Q4_0_R16 = 1000,
    HL_TYPE_Q8_0_R16 = 1001,
    HL_TYPE_Q4_K_R16 = 1002, /* 148 bytes per row and super-block (Q4_K: 144): the scales unpacked */
    HL_TYPE_Q6_K_R16 = 1003
} hl_type;

typedef enum { HL_ARCH_LLAMA = 0, HL_ARCH_QWEN2 = 1 } hl_arch;
typedef enum { HL_ROPE_NORM = 0, HL_ROPE_NEOX = 2 } hl_rope_mode;
typedef enum { HL_KERNEL_AUTO = 0, HL_KERNEL_REFERENCE = 1 } hl_kernel;

/* A read-only view of a tensor: rows are contiguous, dims unused are 1. */
typedef struct {
    const void *data; /* NULL = absent (optional tensors only) */
    int32_t type;     /* hl_type */
    int64_t ne[4];
} hl_tensor_view;

typedef struct {
    hl_tensor_view attn_norm;               /* [n_embd] F32 */
    hl_tensor_view wq, wk, wv;              /* [n_embd, head_dim*n_head], [n_embd, head_dim*n_head_kv] x2 */
    hl_tensor_view bq, bk, bv;              /* biases [n_out] F32, optional (qwen2: required) */
    hl_tensor_view wo, bo;                  /* [head_dim*n_head, n_embd], bias optional */
    hl_tensor_view ffn_norm;                /* [n_embd] F32 */
    hl_tensor_view w_gate, w_up, w_down;    /* [n_embd, n_ff] x2, [n_ff, n_embd] */
    hl_tensor_view b_gate, b_up, b_down;    /* optional */
} hl_layer_desc;

typedef struct {
    int32_t arch;        /* hl_arch */
    int32_t n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
    int32_t rope_mode;   /* hl_rope_mode */
    float rms_eps;
    float rope_freq_base;
    float rope_freq_scale;   /* 1/scaling factor (linear); 1 = none */
    float rope_attn_factor;  /* multiplies cos/sin; 1 = none */
    hl_tensor_view token_embd;   /* [n_embd, n_vocab] */
    hl_tensor_view output_norm;  /* [n_embd] F32 */
    hl_tensor_view output;       /* [n_embd, n_vocab]; data NULL = tied to token_embd */
    hl_tensor_view rope_freqs;   /* [head_dim/2] F32, optional (llama3 scaling) */
    const hl_layer_desc *layers; /* n_layer entries; copied by hl_model_create */
} hl_model_desc;

typedef struct {
    int32_t n_ctx;      /* KV cells of the default sequence */
    int32_t n_batch;    /* most tokens one hl_decode_batch call may take, all segments together */
    int32_t n_threads;  /* >= 1 */
    int32_t cache_type; /* HL_TYPE_F16 or HL_TYPE_F32 */
} hl_context_params;

/* Where a LoRA pair applies. Layer targets are per block; the others are global. */
typedef enum {
    HL_LORA_ATTN_Q = 0,
    HL_LORA_ATTN_K = 1,
    HL_LORA_ATTN_V = 2,
    HL_LORA_ATTN_OUTPUT = 3,
    HL_LORA_FFN_GATE = 4,
    HL_LORA_FFN_UP = 5,
    HL_LORA_FFN_DOWN = 6,
    HL_LORA_LAYER_TARGETS = 7,
    HL_LORA_TOKEN_EMBD = 100, /* row lookup: x += s * B . a[id] */
    HL_LORA_OUTPUT = 101      /* output head (token_embd's weights on a tied model) */
} hl_lora_target;

/* One adapted projection: y = W.x + user_scale * scale * B.(A.x). */
typedef struct {
    int32_t target;   /* hl_lora_target */
    int32_t layer;    /* block index for layer targets, else ignored */
    hl_tensor_view a; /* [n_in, r]; token_embd: [r, n_vocab] */
    hl_tensor_view b; /* [r, n_out]; token_embd: [r, n_embd] */
    float scale;      /* alpha / r, or 1 without alpha */
} hl_lora_pair;

typedef struct {
    int32_t n_pairs;
    const hl_lora_pair *pairs; /* copied by hl_adapter_create; tensor data is not */
    /* The caller's hash of the pairs' content (targets, types, shapes, scales, tensor bytes), or 0. KV cells
     * record the adapter set they were computed under by these keys: adapters created with the same nonzero
     * key count as the same adapter there (a cell made under one is not stale under the other); 0 gives the
     * adapter a key of its own. */
    uint64_t content_key;
} hl_adapter_desc;

typedef struct hl_model hl_model;
typedef struct hl_context hl_context;
typedef struct hl_adapter hl_adapter;
/* A sequence: a KV cache (K [n_ctx][n_embd_kv] and V transposed [n_embd_kv][n_ctx] per layer), the cells in
 * use, the adapter set each cell was computed under, and its own active adapter set. */
typedef struct hl_sequence hl_sequence;

/* A run of tokens from one sequence in a batch (hl_decode_batch), appended to that sequence. */
typedef struct {
    hl_sequence *seq;
    const int32_t *tokens;
    int32_t n_tokens;   /* >= 1 */
    float *logits;      /* caller buffer: n_vocab floats (last token), or n_tokens*n_vocab when all_logits */
    int32_t all_logits;
} hl_segment;

/* Message of the last failed call on this thread ("" if none). */
const char *hl_last_error(void);
/* Name of the kernel set chosen at run time: "avx512", "avx2" or "scalar". */
const char *hl_simd_name(void);
/* The compiler flags this core was built with (as build.py passed them). */
const char *hl_build_flags(void);

hl_status hl_model_create(const hl_model_desc *desc, hl_model **out);
void hl_model_free(hl_model *model);

hl_status hl_context_create(hl_model *model, const hl_context_params *params, hl_context **out);
void hl_context_free(hl_context *ctx);

/* Checks every pair against the model (target, layer, shapes, types). */
hl_status hl_adapter_create(const hl_model *model, const hl_adapter_desc *desc, hl_adapter **out);
/* Frees an adapter; HL_ERR_INVALID (nothing freed) while any sequence's active set holds it. NULL: HL_OK. */
hl_status hl_adapter_free(hl_adapter *adapter);
/*
 * Makes these adapters active in the sequence from its next decode, applied in this order;
 * entries with scale 0 are skipped (they cost nothing). n = 0 means none.
 */
hl_status hl_sequence_set_adapters(hl_sequence *seq, hl_adapter *const *adapters, const float *scales, int32_t n);

/* A new empty sequence of n_ctx cells (cache type of ctx), owned by ctx. */
hl_status hl_sequence_create(hl_context *ctx, int32_t n_ctx, hl_sequence **out);
/* The context's default sequence (params.n_ctx cells), made and owned by the context: valid until
 * hl_context_free, which frees it; hl_sequence_free ignores it. NULL for a NULL context. */
hl_sequence *hl_context_sequence(hl_context *ctx);
/* Frees a sequence (not the default one) and drops its adapter set. NULL is ignored. */
void hl_sequence_free(hl_sequence *seq);
/* Number of cells of seq in use (= position of its next token). */
int32_t hl_sequence_used(const hl_sequence *seq);
/* First cell of seq computed under another adapter set than its active one (hl_sequence_used() if none). */
int32_t hl_sequence_first_stale(const hl_sequence *seq);
/* Keeps the first n cells of seq and drops the rest. */
hl_status hl_sequence_keep(hl_sequence *seq, int32_t n);

/*
 * Computes a batch of segments in one pass: each segment's tokens are appended to its sequence (positions
 * continue from its cells in use) under that sequence's adapter set. Mat-muls run over the concatenated
 * tokens (1..n_batch in all); RoPE, the KV store and attention run per segment on its own cache. Every
 * segment needs its own sequence of this context, at most once per batch. Nothing is appended on error.
 */
hl_status hl_decode_batch(hl_context *ctx, const hl_segment *segments, int32_t n_segments);

/*
 * Context shift: drops cells n_keep .. n_keep+n_discard-1 of seq (n_discard >= 1), moves the later cells down
 * and re-rotates their K by -n_discard positions (V unchanged); hl_sequence_used() drops by n_discard. Runs on
 * the threads of the sequence's context.
 */
hl_status hl_sequence_shift(hl_sequence *seq, int32_t n_keep, int32_t n_discard);
/* Bytes of the state of n_cells cells of seq (per layer: K [n_cells][n_embd_kv], V [n_embd_kv][n_cells]);
 * 0 if n_cells is not 0..its n_ctx. */
size_t hl_sequence_state_size(const hl_sequence *seq, int32_t n_cells);
/* Copies the state of the cells of seq in use into buf (cap >= hl_sequence_state_size(seq, hl_sequence_used(seq))). */
hl_status hl_sequence_state_read(const hl_sequence *seq, void *buf, size_t cap);
/* Replaces the cells of seq with n_cells cells read back (size must be hl_sequence_state_size(seq, n_cells)),
 * marked as computed under its active adapter set. */
hl_status hl_sequence_state_write(hl_sequence *seq, const void *buf, size_t size, int32_t n_cells);
/* While *flag != 0, compute stops between graph nodes with HL_ERR_ABORTED. */
void hl_set_abort(hl_context *ctx, volatile int32_t *flag);

/*
 * Writes the graph of one decode of n_tokens (default sequence; layer >= 0: that block only; -1: all)
 * as Graphviz DOT into buf (cap bytes, NUL-terminated); *needed gets the full
 * length + 1 (cap = 0 asks only for that). LoRA nodes carry lora=1. Nothing is computed.
 */
hl_status hl_graph_dot(hl_context *ctx, int32_t n_tokens, int32_t layer, char *buf, size_t cap, size_t *needed);

/*
 * Counts of the graph of one decode of n_tokens (default sequence; layer >= 0: that block only; -1: all):
 * its nodes and its barriers (one after every phase of every node). Nothing is computed.
 */
hl_status hl_graph_stats(hl_context *ctx, int32_t n_tokens, int32_t layer, int32_t *n_nodes, int32_t *n_barriers);

/* Kernels, exposed for tests and tools. */
/* Bytes of one row of n elements of type (0 if type unknown or n not a multiple of the block). */
size_t hl_row_size(int32_t type, int64_t n);
hl_status hl_dequantize_row(int32_t type, const void *src, float *dst, int64_t n);
/*
 * y[t * n_rows + r] = W[r] . x[t] for r < n_rows, t < n_tokens: W holds n_rows rows of n_cols elements
 * of type, x n_tokens rows of n_cols floats. Runs the engine's own path on one thread: x converted once
 * to the type's activation type, then the multi-token kernel (HL_KERNEL_REFERENCE: the scalar
 * reference for both).
 */
hl_status hl_mat_mul(int32_t type, const void *w, int64_t n_cols, int64_t n_rows,
                     const float *x, int64_t n_tokens, float *y, int32_t kernel);
/* gate[i] = silu(gate[i]) * up[i] for i < n: the feed-forward's SwiGLU kernel (HL_KERNEL_REFERENCE: expf). */
hl_status hl_swiglu(float *gate, const float *up, int64_t n, int32_t kernel);
/*
 * Load-time repacking. hl_repack_type: the layout a matrix of n_rows rows of type gets on this CPU, or type
 * itself when no layout's kernels are faster here (Q4_0, Q8_0, Q4_K and Q6_K -> their _R16 layouts on AVX-512
 * VNNI, for n_rows a multiple of 16). hl_repack: dst (n_rows * hl_row_size(that layout, n_cols) bytes: as
 * many as src, or for Q4_K_R16 148/144 as many) gets the rows rearranged into that layout, whose kernels
 * read each weight block once for 16 rows; HL_ERR_UNSUPPORTED (nothing written) where hl_repack_type names
 * no other layout. A repacked matrix serves as a layer projection or the output head (hl_model_create
 * checks where) and in hl_mat_mul; its rows cannot be read one by one.
 */
int32_t hl_repack_type(int32_t type, int64_t n_rows);
hl_status hl_repack(int32_t type, const void *src, void *dst, int64_t n_cols, int64_t n_rows,
                    int32_t *repacked_type);
/*
 * Quantizes n_rows rows of n_cols floats (src, row-major) into type (dst holds
 * n_rows * hl_row_size(type, n_cols) bytes), splitting rows over n_threads threads.
 * Types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
 */
hl_status hl_quantize(int32_t type, const float *src, void *dst, int64_t n_rows, int64_t n_cols, int32_t n_threads);

/*
 * Checks a tensor as llama.cpp's --check-tensors does: *bad_row gets the first of n_rows rows (n_cols
 * elements of type each, contiguous) holding a NaN or infinity, or a block whose F16 scale (d, m, dmin) is
 * one; -1 if none. Rows are split over n_threads threads. Types: F32, F16, BF16 and the quantized weight types.
 */
hl_status hl_check_tensor(int32_t type, const void *data, int64_t n_cols, int64_t n_rows, int32_t n_threads,
                          int64_t *bad_row);
/*
 * After hl_decode_batch returned non-finite logits in the segment of seq and hl_sequence_keep restored the
 * cells seq had before that batch: recomputes that segment alone (the same tokens, under the same adapter
 * set) node by node, stopping at the first node that wrote a NaN or infinity (its outputs, the residual it
 * adds to, the KV cache rows it stores). *position gets that token's position (-1 if no node did), name its
 * node, e.g. "blk.0.attn_qkv (attn_k)" (cap bytes, NUL-terminated). seq keeps only the cells it had;
 * hl_decode_batch's graph is not changed by this check.
 */
hl_status hl_find_nonfinite(hl_sequence *seq, const int32_t *tokens, int32_t n_tokens, float *logits,
                            int32_t all_logits, int32_t *position, char *name, size_t cap);

/*
 * llama-cli's default sampler chain (sampling.md §1-§6; cli/sampling.py holds its numpy reference):
 * logit-bias -> penalties -> top-k -> typical -> top-p -> min-p -> xtc -> temp-ext -> dist. A sampler owns
 * its candidate buffers (n_vocab each) and the two std::mt19937 streams (dist, xtc); one thread at a time.
 */
typedef struct {
    float temp;               /* >= 0; 0 = greedy */
    int32_t top_k;            /* <= 0: all */
    float top_p, min_p, typical_p;
    float repeat_penalty, frequency_penalty, presence_penalty;
    float xtc_probability, xtc_threshold;
    float dynatemp_range, dynatemp_exponent;
} hl_sampler_params;
typedef struct hl_sampler hl_sampler;
hl_status hl_sampler_create(const hl_sampler_params *params, int32_t n_vocab, hl_sampler **out);
void hl_sampler_free(hl_sampler *s);
/* Restarts both streams (std::mt19937's 32-bit seeding). */
void hl_sampler_seed(hl_sampler *s, uint32_t dist_seed, uint32_t xtc_seed);
/*
 * *token = the chain's draw from logits [n_vocab] (not modified). bias: n_bias (id, value) pairs added in
 * order; penalty_counts: [n_vocab] occurrences in the penalty window, or NULL when the window is off.
 */
hl_status hl_sampler_sample(hl_sampler *s, const float *logits, const int32_t *bias_ids, const float *bias_values,
                            int32_t n_bias, const int32_t *penalty_counts, int32_t *token);

/*
 * Streaming-read probe: the median over `repeats` of the GB/s that n_threads threads reach reading
 * disjoint slices of a fresh `bytes`-byte buffer (allocated and freed here). The ceiling decode is
 * measured against.
 */
hl_status hl_read_bandwidth(size_t bytes, int32_t n_threads, int32_t repeats, double *gb_per_s);

/* ---- Training: gradients of LoRA A and B (train*.c) ----------------------------------------------------
 *
 * hl_train computes, for one window of T tokens at positions 0..T-1 (causal attention within the window, no
 * KV cache), the summed next-token cross-entropy and its gradients with respect to the A and B matrices of
 * the LoRA pairs passed in; the base weights stay frozen read-only views of any supported type. The layer
 * inputs are kept from the forward pass and each layer is recomputed during the backward (checkpointing),
 * or, with keep_activations, every layer's intermediates are kept instead (no recompute, n_layer times the
 * activation memory of one layer); hl_train_bytes tells the memory it holds (formula: src/train.h). It owns
 * a thread pool of n_threads (threadpool.c, as a context does) and runs the inference mat-mul kernels for
 * W.x. One thread at a time drives a hl_train; the model must outlive it.
 */
typedef struct hl_train hl_train;

/* One trainable LoRA pair on a layer projection: y = W.x + scale * B.(A.x) (+ bias). All float32, row-major,
 * owned by the caller, read (a, b) or added to (grad_a, grad_b) during the call only. */
typedef struct {
    int32_t target;  /* HL_LORA_ATTN_Q .. HL_LORA_FFN_DOWN (token_embd and output heads are not trainable) */
    int32_t layer;   /* 0 .. n_layer-1 */
    int32_t rank;    /* >= 1 */
    float scale;     /* alpha / rank (times a user scale, if any) */
    const float *a;  /* [n_in, rank]: rank rows of n_in (PEFT lora_A.weight) */
    const float *b;  /* [rank, n_out]: n_out rows of rank (PEFT lora_B.weight) */
    float *grad_a;   /* [n_in, rank], d loss / d a added in (NULL in hl_train_logits) */
    float *grad_b;   /* [rank, n_out], d loss / d b added in (NULL in hl_train_logits) */
} hl_train_pair;

/* A trainer for windows of up to n_tokens_max tokens, computing on n_threads threads; keep_activations != 0
 * keeps every layer's intermediates instead of recomputing them. The backward reads weight rows one by one:
 * a model with repacked weights (HL_TYPE_*_R16) is refused (HL_ERR_UNSUPPORTED). */
hl_status hl_train_create(const hl_model *model, int32_t n_tokens_max, int32_t n_threads, int32_t keep_activations,
                          hl_train **out);
void hl_train_free(hl_train *train);
/* Bytes of activations and scratch the trainer holds. */
size_t hl_train_bytes(const hl_train *train);
/*
 * One forward and backward pass over tokens[0..n_tokens) (1..n_tokens_max) with the n_pairs pairs (each
 * (layer, target) at most once; 0 pairs is allowed): targets[t] is the token expected after position t, -1
 * for no loss there. Adds d(sum of the losses)/d a and /d b into every pair's grad_a and grad_b, and writes
 * the sum of -log softmax(logits_t)[targets[t]] in nats to *loss_sum and the number of loss positions to
 * *n_loss. Gradients are unchanged on any error but HL_ERR_ABORTED (hl_train_set_abort).
 */
hl_status hl_train_step(hl_train *train, const hl_train_pair *pairs, int32_t n_pairs, const int32_t *tokens,
                        const int32_t *targets, int32_t n_tokens, double *loss_sum, int32_t *n_loss);
/* While *flag != 0, hl_train_step and hl_train_logits stop between blocks with HL_ERR_ABORTED; the gradients
 * then hold part of that step's contribution (discard them). flag NULL: never. */
void hl_train_set_abort(hl_train *train, volatile int32_t *flag);
/* The training forward alone: logits [n_tokens][n_vocab] (caller buffer) of every position. */
hl_status hl_train_logits(hl_train *train, const hl_train_pair *pairs, int32_t n_pairs, const int32_t *tokens,
                          int32_t n_tokens, float *logits);

#endif
