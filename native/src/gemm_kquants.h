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
 * up to KQ_TOKENS tokens over a panel of KQ_BLOCKS unpacked super-blocks per row (kq_isa.tile); a
 * single token goes to kq_isa.decode, which unpacks each super-block in registers as it streams W.
 */
#ifndef HL_GEMM_KQUANTS_H
#define HL_GEMM_KQUANTS_H

#if defined(__x86_64__) && !defined(HL_NO_SIMD)

#include <stddef.h>
#include <stdint.h>

#include <immintrin.h>
#include <string.h>

#include "quants.h"

#define KQ_ROWS 4     /* rows of a register tile (and of a panel) */
#define KQ_TOKENS 4   /* most tokens of a register tile */
#define KQ_BLOCKS 8   /* super-blocks per panel row (a 4-row panel: 18 KB, in L1) */
#define KQ_ACT_BYTES (512 * 1024) /* activations one pass over the rows keeps in L2 (16..256 tokens) */

typedef struct {
    uint8_t q[QK_K];   /* unsigned quants (Q2_K 0..3, Q3_K 0..7, Q4_K 0..15, Q5_K 0..31, Q6_K 0..63) */
    int16_t sc[128];   /* sc[0..16): scale per 16 elements; then rewritten into the kernel set's layout */
    int16_t mn[16];    /* min coefficient per 16 elements */
    float d, dmin;     /* super-block scales (dmin unused by the offset types) */
    uint8_t pad[24];
} kq_block;            /* 576 B, 64-byte aligned in a panel */
_Static_assert(sizeof(kq_block) == 576, "panel blocks stay 64-byte aligned");

/* The canonical form in AVX2 registers: q[c] = quants of elements 32c..32c+31, sc and mn = the 16
 * per-16-element scales and min coefficients as int16. */
typedef struct {
    __m256i q[8];
    __m256i sc, mn;
    float d, dmin;
} kq_regs;

enum { KQ_Q2_K, KQ_Q3_K, KQ_Q4_K, KQ_Q5_K, KQ_Q6_K, KQ_TYPES };

typedef struct {
    int id;            /* KQ_Q2_K .. KQ_Q6_K */
    size_t block_bytes;
    int offset_mins;   /* 1: mins fold into the integer sum (Q3_K, Q6_K); 0: they scale by dmin */
} kq_type;

/* Rewrites b->sc[0..16) into the layout the kernel set's tile multiplies with. */
typedef void (*kq_layout_fn)(kq_block *b);
/*
 * One register tile over kc panel super-blocks panel[i * KQ_ROWS + r] (r < rows) and the activation
 * blocks act[t] + i (act[t] = a + t * a_stride), t < tokens <= KQ_TOKENS: for each (r, t) the float
 * sum s = dst[t * dst_stride + r] (if accumulate, else 0) takes the kc super-blocks' terms in order
 * and goes back to dst. Each (r, t) gets the exact integer totals of the reference and then the same
 * float operations as every other (r, t) and as the decode kernel, whatever rows, tokens and the
 * tile's place.
 */
typedef void (*kq_tile_fn)(const kq_block *panel, int kc, const block_q8_K *act, size_t a_stride, int tokens,
                           float *dst, size_t dst_stride, int rows, int accumulate);
/* One token: dst[r] = W[r] . act for r < nr (rows w_stride bytes apart), unpacking in registers. */
typedef void (*kq_decode_fn)(int64_t n, int64_t nr, const char *w, size_t w_stride, const block_q8_K *act,
                             float *dst);

typedef struct {
    kq_layout_fn layout;
    kq_tile_fn tile_float_mins;  /* for offset_mins == 0 */
    kq_tile_fn tile_offset_mins; /* for offset_mins == 1 */
    kq_decode_fn decode[KQ_TYPES];
} kq_isa;

/* gemm_kquants_avx512.c, gemm_kquants_avx2.c */
extern const kq_isa hl_kq_avx512, hl_kq_avx2;

/* ------------------------------------------------------------ unpacking (AVX2 code, inlined by both sets) */

#define KQ_UNPACK static inline __attribute__((always_inline, target("avx2,fma,f16c")))

/* Bytes of v shifted right by `bits` (within each byte), masked to `mask`. */
KQ_UNPACK __m256i kq_byte_field(__m256i v, int bits, uint8_t mask) {
    return _mm256_and_si256(_mm256_srli_epi16(v, bits), _mm256_set1_epi8((char)mask));
}

/* Byte e = `value` where bit `bit` of byte e of m is set, else 0. */
KQ_UNPACK __m256i kq_bit_as(__m256i m, int bit, uint8_t value) {
    const __m256i b = _mm256_set1_epi8((char)(1 << bit));
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(m, b), b), _mm256_set1_epi8((char)value));
}

KQ_UNPACK __m256i kq_load32(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* Q4_K/Q5_K: the 12 packed bytes -> 8 scales then 8 mins (bytes; hl_get_scale_min_k4 for all j),
 * each doubled into the per-16 int16 sc and mn. */
KQ_UNPACK void kq_k4_scales(const uint8_t *packed, kq_regs *k) {
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    uint32_t u[4];
    memcpy(u, packed, 12);
    u[3] = ((u[2] >> 4) & m4) | (((u[1] >> 6) & m2) << 4); /* mins 4..7 */
    const uint32_t mins_lo = u[1] & m6;                     /* mins 0..3 */
    u[1] = (u[2] & m4) | (((u[0] >> 6) & m2) << 4);         /* scales 4..7 */
    u[2] = mins_lo;
    u[0] &= m6;                                             /* scales 0..3 */
    const __m128i v = _mm_loadu_si128((const __m128i *)u);
    const __m128i twice_sc = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    k->sc = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(v, twice_sc));
    k->mn = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(v, _mm_add_epi8(twice_sc, _mm_set1_epi8(8))));
}

/* Q2_K: element 128h + 32j + l is bits 2j..2j+1 of qs[32h + l]; scales lo nibble, mins hi nibble. */
KQ_UNPACK kq_regs kq_unpack_q2_K(const void *block) {
    const block_q2_K *b = block;
    kq_regs k;
    for (int h = 0; h < 2; h++) {
        const __m256i qb = kq_load32(b->qs + 32 * h);
        for (int j = 0; j < 4; j++) k.q[4 * h + j] = kq_byte_field(qb, 2 * j, 3);
    }
    const __m128i s = _mm_loadu_si128((const __m128i *)b->scales), m4 = _mm_set1_epi8(0xF);
    k.sc = _mm256_cvtepu8_epi16(_mm_and_si128(s, m4));
    k.mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s, 4), m4));
    k.d = _cvtsh_ss(b->d);
    k.dmin = _cvtsh_ss(b->dmin);
    return k;
}

/* Q3_K: u = low 2 bits + 4 * hmask bit (0..7), q = u - 4: mins -4 * scale. The scales are
 * hl_unpack_q3_k_scales' for all 16 sub-blocks at once. */
KQ_UNPACK kq_regs kq_unpack_q3_K(const void *block) {
    const block_q3_K *b = block;
    kq_regs k;
    const __m256i hm = kq_load32(b->hmask);
    for (int h = 0; h < 2; h++) {
        const __m256i qb = kq_load32(b->qs + 32 * h);
        for (int j = 0; j < 4; j++)
            k.q[4 * h + j] = _mm256_or_si256(kq_byte_field(qb, 2 * j, 3), kq_bit_as(hm, 4 * h + j, 4));
    }
    const uint32_t m4 = 0x0f0f0f0f, m2 = 0x03030303;
    uint32_t a[3], u[4];
    memcpy(a, b->scales, 12);
    u[0] = (a[0] & m4) | ((a[2] & m2) << 4);
    u[1] = (a[1] & m4) | (((a[2] >> 2) & m2) << 4);
    u[2] = ((a[0] >> 4) & m4) | (((a[2] >> 4) & m2) << 4);
    u[3] = ((a[1] >> 4) & m4) | (((a[2] >> 6) & m2) << 4);
    const __m128i s6 = _mm_sub_epi8(_mm_loadu_si128((const __m128i *)u), _mm_set1_epi8(32));
    k.sc = _mm256_cvtepi8_epi16(s6);
    k.mn = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(k.sc, 2));
    k.d = _cvtsh_ss(b->d);
    k.dmin = 0.0f;
    return k;
}

/* Q4_K: element 64g + l is the low nibble of qs[32g + l], 64g + 32 + l its high nibble. */
KQ_UNPACK kq_regs kq_unpack_q4_K(const void *block) {
    const block_q4_K *b = block;
    kq_regs k;
    for (int g = 0; g < 4; g++) {
        const __m256i qb = kq_load32(b->qs + 32 * g);
        k.q[2 * g] = kq_byte_field(qb, 0, 0xF);
        k.q[2 * g + 1] = kq_byte_field(qb, 4, 0xF);
    }
    kq_k4_scales(b->scales, &k);
    k.d = _cvtsh_ss(b->d);
    k.dmin = _cvtsh_ss(b->dmin);
    return k;
}

/* Q5_K: Q4_K plus bit (e / 32) of qh[e % 32] as 16. */
KQ_UNPACK kq_regs kq_unpack_q5_K(const void *block) {
    const block_q5_K *b = block;
    kq_regs k;
    const __m256i qh = kq_load32(b->qh);
    for (int g = 0; g < 4; g++) {
        const __m256i qb = kq_load32(b->qs + 32 * g);
        k.q[2 * g] = _mm256_or_si256(kq_byte_field(qb, 0, 0xF), kq_bit_as(qh, 2 * g, 16));
        k.q[2 * g + 1] = _mm256_or_si256(kq_byte_field(qb, 4, 0xF), kq_bit_as(qh, 2 * g + 1, 16));
    }
    kq_k4_scales(b->scales, &k);
    k.d = _cvtsh_ss(b->d);
    k.dmin = _cvtsh_ss(b->dmin);
    return k;
}

/* Q6_K: element 128h + 32c + l is a nibble of ql[64h + l (+32 for odd c)] (high for c >= 2) plus
 * bits 2c..2c+1 of qh[32h + l] as 16 * value; u = q + 32 (0..63): mins -32 * scale. */
KQ_UNPACK kq_regs kq_unpack_q6_K(const void *block) {
    const block_q6_K *b = block;
    kq_regs k;
    for (int h = 0; h < 2; h++) {
        const __m256i l0 = kq_load32(b->ql + 64 * h), l1 = kq_load32(b->ql + 64 * h + 32);
        const __m256i hb = kq_load32(b->qh + 32 * h);
        const __m256i low[4] = {kq_byte_field(l0, 0, 0xF), kq_byte_field(l1, 0, 0xF), kq_byte_field(l0, 4, 0xF),
                                kq_byte_field(l1, 4, 0xF)};
        for (int c = 0; c < 4; c++)
            k.q[4 * h + c] = _mm256_or_si256(low[c], _mm256_slli_epi16(kq_byte_field(hb, 2 * c, 3), 4));
    }
    k.sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
    k.mn = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(k.sc, 5));
    k.d = _cvtsh_ss(b->d);
    k.dmin = 0.0f;
    return k;
}

/* The registers into a panel block (sc in the canonical order; the kernel set lays it out). */
KQ_UNPACK void kq_store(const kq_regs *k, kq_block *o) {
    for (int c = 0; c < 8; c++) _mm256_store_si256((__m256i *)(o->q + 32 * c), k->q[c]);
    _mm256_store_si256((__m256i *)o->sc, k->sc);
    _mm256_store_si256((__m256i *)o->mn, k->mn);
    o->d = k->d;
    o->dmin = k->dmin;
}

/* One super-block of type id (KQ_Q2_K..) unpacked; a constant id leaves no switch. */
KQ_UNPACK kq_regs kq_unpack(int id, const void *block) {
    switch (id) {
    case KQ_Q2_K: return kq_unpack_q2_K(block);
    case KQ_Q3_K: return kq_unpack_q3_K(block);
    case KQ_Q4_K: return kq_unpack_q4_K(block);
    case KQ_Q5_K: return kq_unpack_q5_K(block);
    default: return kq_unpack_q6_K(block);
    }
}

#endif /* __x86_64__ && !HL_NO_SIMD */
#endif
