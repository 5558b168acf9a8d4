/*
 * Tiled multi-token mat-mul kernels (hl_gemm_fn) for F32 and F16 weights against F32 activations and BF16
 * weights against BF16 activations (their vec_dot_type, as in llama.cpp).
 *
 * Technique (register tiling, as in llamafile's tinyBLAS): a micro-kernel computes a tile of R weight
 * rows x T tokens at once, holding one f32 vector accumulator per (row, token) pair in registers
 * (AVX-512: 4 x 6 zmm; AVX2: 3 x 4 ymm, 6 x 1 for a single token). Each step along the row loads and
 * widens one vector of every weight row once (F16 by vcvtph2ps, BF16 by a 16-bit shift: both exact)
 * and uses it for every token of the tile; each activation vector is loaded (BF16: widened) once and used
 * for every row of the tile. Where the CPU has AVX-512 BF16, BF16 tiles skip the widening: vdpbf16ps
 * multiplies 32 pairs of BF16 values exactly and adds them into 16 f32 lanes, two products per lane.
 *
 * Bit-identical results whatever the tile: every (row, token) pair has its own accumulator, which
 * runs over the row in the same vector steps (a zero-filled tail step for n not a multiple of the
 * vector width) and is reduced by the same fixed tree. Nothing depends on which tile, which slot of
 * it, or which call the pair sits in, nor on whether the activations were packed (a copy). Ragged
 * edges: a short row tile repeats a row (computing and storing the same value twice), a short token
 * tile runs a narrower instantiation of the same kernel.
 *
 * Caches and memory (gemm_tiled and below): tokens go in groups that fit a share of L3, rows in
 * blocks that fit a quarter of L2; each block's weights come from memory once a group and serve
 * every token tile of it, and the next block's weights are prefetched meanwhile. A tile's rows are
 * one from each of R equal stripes of the block, so each weight stream runs on sequentially from
 * tile to tile. Decode (a single token tile) reads every weight once, in R long streams at memory
 * speed. F32 weights against many rows read the activations packed into one stream per token tile.
 */
#include "common.h"
#include "gemm.h"

#if defined(__x86_64__) && !defined(HL_NO_SIMD)

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define MAX_TILE_ROWS 6
#define MAX_TILE_TOKENS 6
#define ROW_BLOCK_BYTES (256 * 1024)         /* a row block's weights: a quarter of Zen 4's L2 */
#define TOKEN_GROUP_BYTES (4 * 1024 * 1024) /* a token group's activations: a share of L3 */
#define PACK_MIN_ROWS 512                   /* fewer rows reuse a packed tile too little to repay the copy */

/* One register tile: d[i][t * dst_stride] = w[i] . a[t] for t < n_tokens (<= the kernel's tokens) and
 * i < the kernel's rows (single_rows when n_tokens = 1), where the vector of a[t] at element k (a
 * multiple of the vector width) starts at element k * a_step of a[t] (a_step > 1: packed F32). A row may
 * repeat (then it is stored twice, with the same value). */
typedef void (*tile_fn)(int n_tokens, int64_t n, const char *const w[], const void *const a[], int64_t a_step,
                        float *const d[], size_t dst_stride);

typedef struct {
    tile_fn tile;
    int rows, tokens;   /* tile shape */
    int single_rows;    /* tile rows when a tile has a single token (enough accumulator chains to stream) */
    int width;          /* elements of a row per step */
    size_t weight_size; /* bytes per weight element (F32 weights alone read packed F32 activations) */
} tiled_kernel;

static int64_t min64(int64_t x, int64_t y) { return x < y ? x : y; }

/* Items of item_bytes each that fill budget bytes, rounded down to a multiple of tile (at least one tile). */
static int64_t items_per_block(int64_t budget, int64_t item_bytes, int tile) {
    const int64_t tiles = item_bytes > 0 ? budget / (item_bytes * tile) : 1;
    return (tiles > 0 ? tiles : 1) * tile;
}

/*
 * Packs the T activation rows at a (a_stride bytes apart, n floats each) of a token tile: vector c
 * (width floats) of token t goes to pack[(c * T + t) * width], zero-filled past n, so token t's vector
 * at element k starts at pack + t * width + k * T and the tile reads one stream (rows a multiple of
 * 4 KiB apart, read side by side, fight over the same L1 sets).
 */
static void pack_tile(const char *a, size_t a_stride, int T, int64_t n, int width, float *pack) {
    for (int t = 0; t < T; t++) {
        const float *row = (const float *)(a + (size_t)t * a_stride);
        float *v = pack + (int64_t)t * width;
        int64_t k = 0;
        for (; k + width <= n; k += width)
            for (int j = 0; j < width; j++) v[k * T + j] = row[k + j];
        for (int j = 0; k < n && j < width; j++) v[k * T + j] = k + j < n ? row[k + j] : 0.0f;
    }
}

/* Asks for the bytes [next, next + len) to be brought towards L2, a cache line at a time. */
static void prefetch_bytes(const char *next, int64_t len) {
    for (int64_t i = 0; i < len; i += 64) __builtin_prefetch(next + i, 0, 2);
}

/* A token group's activations: nt rows at a, a_stride bytes apart, or (packed != NULL) the same
 * packed tile by tile, token tile tt (its first token) at packed + tt * padded_n. */
typedef struct {
    int64_t nt, padded_n;
    const char *a;
    size_t a_stride;
    const float *packed;
} token_group;

/* The activation pointers and step of token tile tt (n_tokens tokens) for the tile kernel. */
static int64_t tile_tokens(const tiled_kernel *k, const token_group *g, int64_t tt, int n_tokens,
                           const void *a_rows[]) {
    for (int t = 0; t < n_tokens; t++)
        a_rows[t] = g->packed ? (const void *)(g->packed + tt * g->padded_n + (int64_t)t * k->width)
                              : (const void *)(g->a + (size_t)(tt + t) * g->a_stride);
    return g->packed ? n_tokens : 1;
}

/*
 * Rows [r0, r1) of W against the group's tokens, tile by tile (dst at the group's first token). The
 * rows are cut into as many stripes as the tile has rows and tile j takes row j of each stripe (the
 * last row where a stripe is short), so the tile's rows are far apart in memory and each of its weight
 * streams runs on sequentially from tile to tile (rows a page or so long, read side by side, stall the
 * memory streams). Each tile also prefetches its share of the next block's weights [next, next +
 * next_len), so the first token tile of that block does not wait on memory alone.
 */
static void gemm_block(const tiled_kernel *k, int64_t n, int64_t r0, int64_t r1, const token_group *g, const char *w,
                       size_t w_stride, float *dst, size_t dst_stride, const char *next, int64_t next_len) {
    const int64_t tiles = (r1 - r0 + k->rows - 1) / k->rows * ((g->nt + k->tokens - 1) / k->tokens);
    const int64_t share = (next_len / tiles + 63) & ~(int64_t)63;
    for (int64_t tt = 0; tt < g->nt; tt += k->tokens) {
        const int n_tokens = (int)min64(k->tokens, g->nt - tt), rows = n_tokens > 1 ? k->rows : k->single_rows;
        const int64_t stripe = (r1 - r0 + rows - 1) / rows;
        const void *a_rows[MAX_TILE_TOKENS];
        const int64_t a_step = tile_tokens(k, g, tt, n_tokens, a_rows);
        for (int64_t j = 0; j < stripe; j++) {
            const char *w_rows[MAX_TILE_ROWS];
            float *d_rows[MAX_TILE_ROWS];
            for (int i = 0; i < rows; i++) {
                const int64_t r = min64(r0 + i * stripe + j, r1 - 1);
                w_rows[i] = w + (size_t)r * w_stride;
                d_rows[i] = dst + (size_t)tt * dst_stride + r;
            }
            k->tile(n_tokens, n, w_rows, a_rows, a_step, d_rows, dst_stride);
            const int64_t len = min64(share, next_len);
            prefetch_bytes(next, len);
            next += len;
            next_len -= len;
        }
    }
}

/* Rows [0, nr) of W against the group, in row blocks (a single block when the group is one tile). */
static void gemm_group(const tiled_kernel *k, int64_t n, int64_t nr, const token_group *g, const char *w,
                       size_t w_stride, float *dst, size_t dst_stride) {
    const int64_t block =
        g->nt <= k->tokens ? nr : items_per_block(ROW_BLOCK_BYTES, n * (int64_t)k->weight_size, k->rows);
    for (int64_t r0 = 0; r0 < nr; r0 += block) {
        const int64_t r1 = min64(nr, r0 + block), r2 = g->nt <= k->tokens ? r1 : min64(nr, r1 + block);
        gemm_block(k, n, r0, r1, g, w, w_stride, dst, dst_stride, w + (size_t)r1 * w_stride,
                   (r2 - r1) * (int64_t)w_stride);
    }
}

/*
 * The hl_gemm_fn body shared by every kernel. Tokens go in groups whose activations stay in L3 while
 * every row block passes over them (so weights come from memory once a group); a row block's weights
 * stay in L2 while the group's token tiles pass over them. A single token tile reuses nothing, so then
 * all rows are one block (long stripes) and nothing is prefetched. F32 weights against many rows
 * read packed activations (a weight line per row and step, plus one per token, overflow the L1 set
 * that rows a multiple of 4 KiB apart share; packing gains about 10% there, and nothing for F16/BF16
 * or a few rows). Without memory for the pack the tiles read the rows in place (same results).
 */
static void gemm_tiled(const tiled_kernel *k, int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride,
                       const void *a, size_t a_stride, float *dst, size_t dst_stride) {
    const int64_t group = items_per_block(TOKEN_GROUP_BYTES, n * (int64_t)sizeof(float), k->tokens);
    const int64_t padded_n = (n + k->width - 1) / k->width * k->width;
    const int64_t pack_tokens = min64(group, (nt + k->tokens - 1) / k->tokens * k->tokens);
    const int packs = nt > 1 && nr >= PACK_MIN_ROWS && k->weight_size == sizeof(float);
    float *pack = packs ? malloc((size_t)(pack_tokens * padded_n) * sizeof(float) + 1) : NULL;
    for (int64_t t0 = 0; t0 < nt; t0 += group) {
        token_group g = {min64(group, nt - t0), padded_n, (const char *)a + (size_t)t0 * a_stride, a_stride, pack};
        for (int64_t tt = 0; pack && tt < g.nt; tt += k->tokens)
            pack_tile(g.a + (size_t)tt * a_stride, a_stride, (int)min64(k->tokens, g.nt - tt), n, k->width,
                      pack + tt * padded_n);
        gemm_group(k, n, nr, &g, w, w_stride, dst + (size_t)t0 * dst_stride, dst_stride);
    }
    free(pack);
}

/* ------------------------------------------------------------------------------------------ AVX-512 */

#define TARGET_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define ROWS_512 4
#define TOKENS_512 6

/* 16 weights or activations from element k of a row, widened to f32; only lanes in m are read (the others
 * are 0). */
typedef __m512 (*widen16_fn)(const void *row, int64_t k, __mmask16 m);

TARGET_512 ALWAYS_INLINE __m512 widen16_f32(const void *row, int64_t k, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, (const float *)row + k);
}

TARGET_512 ALWAYS_INLINE __m512 widen16_f16(const void *row, int64_t k, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + k));
}

TARGET_512 ALWAYS_INLINE __m512 widen16_bf16(const void *row, int64_t k, __mmask16 m) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + k));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

/* acc[i][t] += w[i][k..k+16) * a[t][k..k+16) on the lanes of m, for i < R, t < T. */
TARGET_512 ALWAYS_INLINE void step_512(int R, int T, widen16_fn widen, widen16_fn widen_act, const char *const w[],
                                       const void *const a[], int64_t a_step, int64_t k, __mmask16 m,
                                       __m512 acc[ROWS_512][TOKENS_512]) {
    __m512 wv[ROWS_512];
#pragma GCC unroll 4
    for (int i = 0; i < R; i++) wv[i] = widen(w[i], k, m);
#pragma GCC unroll 6
    for (int t = 0; t < T; t++) {
        const __m512 av = widen_act(a[t], k * a_step, m);
#pragma GCC unroll 4
        for (int i = 0; i < R; i++) acc[i][t] = _mm512_fmadd_ps(wv[i], av, acc[i][t]);
    }
}

TARGET_512 ALWAYS_INLINE void zero_tile_512(int R, int T, __m512 acc[ROWS_512][TOKENS_512]) {
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) acc[i][t] = _mm512_setzero_ps();
}

/* d[i][t * dst_stride] = the sum of acc[i][t]'s lanes (a fixed tree), for i < R, t < T. */
TARGET_512 ALWAYS_INLINE void store_tile_512(int R, int T, __m512 acc[ROWS_512][TOKENS_512], float *const d[],
                                             size_t dst_stride) {
#pragma GCC unroll 6
    for (int t = 0; t < T; t++)
#pragma GCC unroll 4
        for (int i = 0; i < R; i++) d[i][(size_t)t * dst_stride] = _mm512_reduce_add_ps(acc[i][t]);
}

/* The R x T micro-kernel: whole 16-lane steps, one masked step for the tail, then each pair reduced. */
TARGET_512 ALWAYS_INLINE void tile_512(int R, int T, widen16_fn widen, widen16_fn widen_act, int64_t n,
                                       const char *const w[], const void *const a[], int64_t a_step, float *const d[],
                                       size_t dst_stride) {
    __m512 acc[ROWS_512][TOKENS_512];
    zero_tile_512(R, T, acc);
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) step_512(R, T, widen, widen_act, w, a, a_step, k, (__mmask16)0xFFFF, acc);
    if (k < n) step_512(R, T, widen, widen_act, w, a, a_step, k, (__mmask16)((1u << (n - k)) - 1), acc);
    store_tile_512(R, T, acc, d, dst_stride);
}

/* tile_fn for one weight type and its activation type: the 4-row micro-kernel instantiated for 1..6 tokens. */
#define TILE_512(type, act, T) tile_512(ROWS_512, T, widen16_##type, widen16_##act, n, w, a, a_step, d, dst_stride)
#define DEFINE_TILE_512(type, act)                                                                    \
    TARGET_512 static void tile_##type##_512(int n_tokens, int64_t n, const char *const w[],         \
                                             const void *const a[], int64_t a_step, float *const d[], \
                                             size_t dst_stride) {                                    \
        switch (n_tokens) {                                                                           \
        case 1: TILE_512(type, act, 1); break;                                                        \
        case 2: TILE_512(type, act, 2); break;                                                        \
        case 3: TILE_512(type, act, 3); break;                                                        \
        case 4: TILE_512(type, act, 4); break;                                                        \
        case 5: TILE_512(type, act, 5); break;                                                        \
        default: TILE_512(type, act, 6); break;                                                       \
        }                                                                                             \
    }

DEFINE_TILE_512(f32, f32)
DEFINE_TILE_512(f16, f32)
DEFINE_TILE_512(bf16, bf16)

static const tiled_kernel f32_512 = {tile_f32_512, ROWS_512, TOKENS_512, ROWS_512, 16, 4};
static const tiled_kernel f16_512 = {tile_f16_512, ROWS_512, TOKENS_512, ROWS_512, 16, 2};
static const tiled_kernel bf16_512 = {tile_bf16_512, ROWS_512, TOKENS_512, ROWS_512, 16, 2};

static void gemm_f32_512(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                         size_t a_stride, float *dst, size_t dst_stride) {
    gemm_tiled(&f32_512, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
}

static void gemm_f16_512(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                         size_t a_stride, float *dst, size_t dst_stride) {
    gemm_tiled(&f16_512, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
}

static void gemm_bf16_512(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                          size_t a_stride, float *dst, size_t dst_stride) {
    gemm_tiled(&bf16_512, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
}

/* ------------------------------------------------------------------------------- AVX-512 BF16 (vdpbf16ps) */

#define TARGET_DP __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))
#define DP_WIDTH 32 /* BF16 elements per step: 16 f32 lanes, two products each */

/* acc[i][t] += the products of w[i][k..k+32) and a[t][k..k+32) on the elements in m, for i < R, t < T:
 * lane j adds element 2j's product and element 2j+1's (each exact in f32; the CPU rounds the sums as two
 * fused multiply-adds, flushing subnormal inputs and results to zero). */
TARGET_DP ALWAYS_INLINE void step_dp(int R, int T, const char *const w[], const void *const a[], int64_t k,
                                     __mmask32 m, __m512 acc[ROWS_512][TOKENS_512]) {
    __m512i wv[ROWS_512];
#pragma GCC unroll 4
    for (int i = 0; i < R; i++) wv[i] = _mm512_maskz_loadu_epi16(m, (const uint16_t *)w[i] + k);
#pragma GCC unroll 6
    for (int t = 0; t < T; t++) {
        const __m512i av = _mm512_maskz_loadu_epi16(m, (const uint16_t *)a[t] + k);
#pragma GCC unroll 4
        for (int i = 0; i < R; i++) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], (__m512bh)wv[i], (__m512bh)av);
    }
}

/* The R x T micro-kernel on BF16 activations (a_step is 1): whole 32-element steps, one masked tail step. */
TARGET_DP ALWAYS_INLINE void tile_dp(int R, int T, int64_t n, const char *const w[], const void *const a[],
                                     float *const d[], size_t dst_stride) {
    __m512 acc[ROWS_512][TOKENS_512];
    zero_tile_512(R, T, acc);
    int64_t k = 0;
    for (; k + DP_WIDTH <= n; k += DP_WIDTH) step_dp(R, T, w, a, k, (__mmask32)0xFFFFFFFFu, acc);
    if (k < n) step_dp(R, T, w, a, k, (__mmask32)((1ull << (n - k)) - 1), acc);
    store_tile_512(R, T, acc, d, dst_stride);
}

#define TILE_DP(T) tile_dp(ROWS_512, T, n, w, a, d, dst_stride)
TARGET_DP static void tile_bf16_dp(int n_tokens, int64_t n, const char *const w[], const void *const a[],
                                   int64_t a_step, float *const d[], size_t dst_stride) {
    (void)a_step;
    switch (n_tokens) {
    case 1: TILE_DP(1); break;
    case 2: TILE_DP(2); break;
    case 3: TILE_DP(3); break;
    case 4: TILE_DP(4); break;
    case 5: TILE_DP(5); break;
    default: TILE_DP(6); break;
    }
}

static const tiled_kernel bf16_dp = {tile_bf16_dp, ROWS_512, TOKENS_512, ROWS_512, DP_WIDTH, 2};

static void gemm_bf16_dp(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                         size_t a_stride, float *dst, size_t dst_stride) {
    gemm_tiled(&bf16_dp, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
}

/* --------------------------------------------------------------------------------------------- AVX2 */

#define TARGET_256 __attribute__((target("avx2,fma,f16c")))
#define ROWS_256 3
#define TOKENS_256 4
#define SINGLE_ROWS_256 6 /* two FMA pipes of 4 cycles' latency want about 8 chains; 3 rows alone stall */

/* 8 weights or activations from element k of a row as f32; the tail forms read only len < 8 of them
 * and zero the rest, the whole forms ignore len. */
typedef __m256 (*load8_fn)(const void *row, int64_t k, int len);

TARGET_256 ALWAYS_INLINE __m256i first_lanes_256(int len) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(len), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* 8 halves (F16 or BF16 bits) from element k, zero-filled past len. */
TARGET_256 ALWAYS_INLINE __m128i halves8_tail(const void *row, int64_t k, int len) {
    uint16_t buf[8] = {0};
    memcpy(buf, (const uint16_t *)row + k, (size_t)len * sizeof(uint16_t));
    return _mm_loadu_si128((const __m128i *)buf);
}

TARGET_256 ALWAYS_INLINE __m256 bf16x8_to_f32(__m128i h) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

TARGET_256 ALWAYS_INLINE __m256 load8_f32(const void *row, int64_t k, int len) {
    (void)len;
    return _mm256_loadu_ps((const float *)row + k);
}

TARGET_256 ALWAYS_INLINE __m256 load8_f32_tail(const void *row, int64_t k, int len) {
    return _mm256_maskload_ps((const float *)row + k, first_lanes_256(len));
}

TARGET_256 ALWAYS_INLINE __m256 load8_f16(const void *row, int64_t k, int len) {
    (void)len;
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k)));
}

TARGET_256 ALWAYS_INLINE __m256 load8_f16_tail(const void *row, int64_t k, int len) {
    return _mm256_cvtph_ps(halves8_tail(row, k, len));
}

TARGET_256 ALWAYS_INLINE __m256 load8_bf16(const void *row, int64_t k, int len) {
    (void)len;
    return bf16x8_to_f32(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k)));
}

TARGET_256 ALWAYS_INLINE __m256 load8_bf16_tail(const void *row, int64_t k, int len) {
    return bf16x8_to_f32(halves8_tail(row, k, len));
}

/* acc[i][t] += w[i][k..k+8) * a[t][k..k+8) for i < R, t < T (len: elements left, for the tail loaders). */
TARGET_256 ALWAYS_INLINE void step_256(int R, int T, load8_fn widen, load8_fn load_act, const char *const w[],
                                       const void *const a[], int64_t a_step, int64_t k, int len,
                                       __m256 acc[SINGLE_ROWS_256][TOKENS_256]) {
    __m256 wv[SINGLE_ROWS_256];
#pragma GCC unroll 6
    for (int i = 0; i < R; i++) wv[i] = widen(w[i], k, len);
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        const __m256 av = load_act(a[t], k * a_step, len);
#pragma GCC unroll 6
        for (int i = 0; i < R; i++) acc[i][t] = _mm256_fmadd_ps(wv[i], av, acc[i][t]);
    }
}

/* The 8 lanes of v summed by a fixed tree (halves, then quarters, then pairs). */
TARGET_256 ALWAYS_INLINE float reduce_256(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* The R x T micro-kernel: whole 8-lane steps, one zero-filled step for the tail, then each pair reduced. */
TARGET_256 ALWAYS_INLINE void tile_256(int R, int T, load8_fn widen, load8_fn widen_tail, load8_fn load_act,
                                       load8_fn load_act_tail, int64_t n, const char *const w[],
                                       const void *const a[], int64_t a_step, float *const d[], size_t dst_stride) {
    __m256 acc[SINGLE_ROWS_256][TOKENS_256];
#pragma GCC unroll 6
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[i][t] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) step_256(R, T, widen, load_act, w, a, a_step, k, 8, acc);
    if (k < n) step_256(R, T, widen_tail, load_act_tail, w, a, a_step, k, (int)(n - k), acc);
#pragma GCC unroll 4
    for (int t = 0; t < T; t++)
#pragma GCC unroll 6
        for (int i = 0; i < R; i++) d[i][(size_t)t * dst_stride] = reduce_256(acc[i][t]);
}

/* tile_fn for one weight type and its activation type: the 3-row micro-kernel instantiated for 2..4 tokens,
 * 6 rows for 1. */
#define TILE_256(type, act, R, T)                                                                            \
    tile_256(R, T, load8_##type, load8_##type##_tail, load8_##act, load8_##act##_tail, n, w, a, a_step, d, \
             dst_stride)
#define DEFINE_TILE_256(type, act)                                                                    \
    TARGET_256 static void tile_##type##_256(int n_tokens, int64_t n, const char *const w[],         \
                                             const void *const a[], int64_t a_step, float *const d[], \
                                             size_t dst_stride) {                                    \
        switch (n_tokens) {                                                                           \
        case 1: TILE_256(type, act, SINGLE_ROWS_256, 1); break;                                       \
        case 2: TILE_256(type, act, ROWS_256, 2); break;                                              \
        case 3: TILE_256(type, act, ROWS_256, 3); break;                                              \
        default: TILE_256(type, act, ROWS_256, 4); break;                                             \
        }                                                                                             \
    }

DEFINE_TILE_256(f32, f32)
DEFINE_TILE_256(f16, f32)
DEFINE_TILE_256(bf16, bf16)

static const tiled_kernel f32_256 = {tile_f32_256, ROWS_256, TOKENS_256, SINGLE_ROWS_256, 8, 4};
static const tiled_kernel f16_256 = {tile_f16_256, ROWS_256, TOKENS_256, SINGLE_ROWS_256, 8, 2};
static const tiled_kernel bf16_256 = {tile_bf16_256, ROWS_256, TOKENS_256, SINGLE_ROWS_256, 8, 2};

static void gemm_f32_256(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                         size_t a_stride, float *dst, size_t dst_stride) {
    gemm_tiled(&f32_256, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
}

static void gemm_f16_256(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                         size_t a_stride, float *dst, size_t dst_stride) {
    gemm_tiled(&f16_256, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
}

static void gemm_bf16_256(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                          size_t a_stride, float *dst, size_t dst_stride) {
    gemm_tiled(&bf16_256, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
}

#endif /* x86-64 SIMD */

void hl_gemm_install_float(const hl_cpu_features *cpu) {
#if defined(__x86_64__) && !defined(HL_NO_SIMD)
    if (cpu->avx512) {
        hl_traits_for_install(HL_TYPE_F32)->gemm = gemm_f32_512;
        hl_traits_for_install(HL_TYPE_F16)->gemm = gemm_f16_512;
        hl_traits_for_install(HL_TYPE_BF16)->gemm = cpu->bf16 ? gemm_bf16_dp : gemm_bf16_512;
    } else if (cpu->avx2) {
        hl_traits_for_install(HL_TYPE_F32)->gemm = gemm_f32_256;
        hl_traits_for_install(HL_TYPE_F16)->gemm = gemm_f16_256;
        hl_traits_for_install(HL_TYPE_BF16)->gemm = gemm_bf16_256;
    }
#else
    (void)cpu;
#endif
}
