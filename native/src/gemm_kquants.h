/*
 * Private to gemm_kquants*.c: the unpacked super-block every K-quant kernel works on, and the pieces
 * the shared driver (gemm_kquants.c) is assembled from.
 *
 * Every K-quant super-block (256 weights) is unpacked once per row into one canonical form, whatever
 * its type: 256 unsigned quants u in element order, one int16 scale per 16 elements, one int16 "min"
 * coefficient per 16 elements, and two floats d, dmin. Its dot with a Q8_K block (quants a, sums of
 * 16 quants bsums, scale yd) is
 *     main = sum_s scale_s * sum_{e in s} u_e * a_e          (exact, int32)
 *     mins = sum_s min_s * bsums_s                          (exact, int32)
 *     float types (Q2_K, Q4_K, Q5_K):  d*yd * main - dmin*yd * mins
 *     offset types (Q3_K, Q6_K):       d*yd * (main + mins)  (min_s = -offset * scale_s)
 * the same integers as the reference vec_dot. Each kernel set lays the sixteen scales out as the
 * vectors its micro-kernel multiplies with (kq_isa.layout) and runs register tiles of KQ_ROWS rows x
 * up to KQ_TOKENS tokens over a panel of KQ_BLOCKS unpacked super-blocks per row (kq_isa.tile).
 */
#ifndef HL_GEMM_KQUANTS_H
#define HL_GEMM_KQUANTS_H

#if defined(__x86_64__) && !defined(HL_NO_SIMD)

#include <stddef.h>
#include <stdint.h>

#include "quants.h"

#define KQ_ROWS 4     /* rows of a register tile (and of a panel) */
#define KQ_TOKENS 4   /* most tokens of a register tile */
#define KQ_BLOCKS 8   /* super-blocks per panel row: the float partial sums are cut every KQ_BLOCKS */
#define KQ_TOKEN_BLOCK 64 /* tokens whose activations one pass over the rows keeps in L2 */

typedef struct {
    uint8_t q[QK_K];   /* unsigned quants (Q2_K 0..3, Q3_K 0..7, Q4_K 0..15, Q5_K 0..31, Q6_K 0..63) */
    int16_t sc[128];   /* sc[0..16): scale per 16 elements; then rewritten into the kernel set's layout */
    int16_t mn[32];    /* min coefficient per 16 elements; mn[16..32) = 0 */
    float d, dmin;     /* super-block scales (dmin unused by the offset types) */
    uint8_t pad[56];
} kq_block;            /* 640 B, 64-byte aligned in a panel */

/* Unpacks one super-block of the weight type into its canonical form (sc, mn, q, d, dmin). */
typedef void (*kq_unpack_fn)(const void *block, kq_block *out);

typedef struct {
    kq_unpack_fn unpack;
    size_t block_bytes;
    int offset_mins;   /* 1: mins fold into the integer sum (Q3_K, Q6_K); 0: they scale by dmin */
} kq_type;

/* Rewrites b->sc[0..16) into the layout the kernel set's tile multiplies with. */
typedef void (*kq_layout_fn)(kq_block *b);
/*
 * One register tile: dst[t * dst_stride + r] (= if !accumulate, += if accumulate) the dot over the kc
 * panel super-blocks panel[i * KQ_ROWS + r] (r < rows) with the activation blocks act[t] + i
 * (act[t] = a + t * a_stride), t < tokens <= KQ_TOKENS. Each (r, t) is computed by the same
 * instructions in the same order whatever rows, tokens and the tile's place.
 */
typedef void (*kq_tile_fn)(const kq_block *panel, int kc, const block_q8_K *act, size_t a_stride, int tokens,
                           float *dst, size_t dst_stride, int rows, int accumulate);

typedef struct {
    kq_layout_fn layout;
    kq_tile_fn tile_float_mins;  /* for offset_mins == 0 */
    kq_tile_fn tile_offset_mins; /* for offset_mins == 1 */
} kq_isa;

/* gemm_kquants_unpack.c (AVX2 code, callable from both kernel sets). */
extern const kq_type hl_kq_q2_K, hl_kq_q3_K, hl_kq_q4_K, hl_kq_q5_K, hl_kq_q6_K;
/* gemm_kquants_avx512.c, gemm_kquants_avx2.c */
extern const kq_isa hl_kq_avx512, hl_kq_avx2;

#endif /* __x86_64__ && !HL_NO_SIMD */
#endif
