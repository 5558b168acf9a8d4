/*
 * K-quant super-blocks -> the canonical unpacked form of gemm_kquants.h (AVX2 code, which the AVX-512
 * kernel set calls too): unsigned quants in element order, a scale and a min coefficient per 16
 * elements, d and dmin as floats. The quants follow the element maps of quants_kquants.c; the signed
 * types' offsets (Q3_K -4, Q6_K -32) become min coefficients -offset * scale, so every (row, token)
 * dot is built from the same integers as the reference vec_dot.
 */
#if defined(__x86_64__) && !defined(HL_NO_SIMD)

#include <immintrin.h>
#include <string.h>

#include "gemm_kquants.h"

#define TARGET __attribute__((target("avx2,fma,f16c")))

TARGET static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

TARGET static inline __m256i load32(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

TARGET static inline void store32(uint8_t *p, __m256i v) { _mm256_storeu_si256((__m256i *)p, v); }

/* Bytes of v shifted right by `bits` (within each byte), masked to `mask`. */
TARGET static inline __m256i byte_field(__m256i v, int bits, uint8_t mask) {
    return _mm256_and_si256(_mm256_srli_epi16(v, bits), _mm256_set1_epi8((char)mask));
}

/* Byte e = `value` where bit `bit` of byte e of m is set, else 0. */
TARGET static inline __m256i bit_as(__m256i m, int bit, uint8_t value) {
    const __m256i b = _mm256_set1_epi8((char)(1 << bit));
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(m, b), b), _mm256_set1_epi8((char)value));
}

/* Scales and mins of the 8 sub-blocks of 32 (Q4_K, Q5_K) as 16 per-16 coefficients each. */
static void k4_scales(const uint8_t *packed, kq_block *o) {
    uint8_t sc, mn;
    for (int j = 0; j < 8; j++) {
        hl_get_scale_min_k4(j, packed, &sc, &mn);
        o->sc[2 * j] = o->sc[2 * j + 1] = sc;
        o->mn[2 * j] = o->mn[2 * j + 1] = mn;
    }
    memset(o->mn + 16, 0, 16 * sizeof o->mn[0]);
}

/* Q2_K: element 128h + 32j + l is bits 2j..2j+1 of qs[32h + l]; scales lo nibble, mins hi nibble. */
TARGET static void unpack_q2_K(const void *block, kq_block *o) {
    const block_q2_K *b = block;
    for (int h = 0; h < 2; h++) {
        const __m256i qb = load32(b->qs + 32 * h);
        for (int j = 0; j < 4; j++) store32(o->q + 128 * h + 32 * j, byte_field(qb, 2 * j, 3));
    }
    for (int s = 0; s < 16; s++) {
        o->sc[s] = b->scales[s] & 0xF;
        o->mn[s] = b->scales[s] >> 4;
    }
    memset(o->mn + 16, 0, 16 * sizeof o->mn[0]);
    o->d = h2f(b->d);
    o->dmin = h2f(b->dmin);
}

/* Q3_K: u = low 2 bits + 4 * hmask bit (0..7), q = u - 4. */
TARGET static void unpack_q3_K(const void *block, kq_block *o) {
    const block_q3_K *b = block;
    const __m256i hm = load32(b->hmask);
    for (int h = 0; h < 2; h++) {
        const __m256i qb = load32(b->qs + 32 * h);
        for (int j = 0; j < 4; j++)
            store32(o->q + 128 * h + 32 * j, _mm256_or_si256(byte_field(qb, 2 * j, 3), bit_as(hm, 4 * h + j, 4)));
    }
    hl_unpack_q3_k_scales(b->scales, o->sc);
    for (int s = 0; s < 16; s++) o->mn[s] = (int16_t)(-4 * o->sc[s]);
    memset(o->mn + 16, 0, 16 * sizeof o->mn[0]);
    o->d = h2f(b->d);
    o->dmin = 0.0f;
}

/* Q4_K: element 64g + l is the low nibble of qs[32g + l], 64g + 32 + l its high nibble. */
TARGET static void unpack_q4_K(const void *block, kq_block *o) {
    const block_q4_K *b = block;
    for (int g = 0; g < 4; g++) {
        const __m256i qb = load32(b->qs + 32 * g);
        store32(o->q + 64 * g, byte_field(qb, 0, 0xF));
        store32(o->q + 64 * g + 32, byte_field(qb, 4, 0xF));
    }
    k4_scales(b->scales, o);
    o->d = h2f(b->d);
    o->dmin = h2f(b->dmin);
}

/* Q5_K: Q4_K plus bit (e / 32) of qh[e % 32] as 16. */
TARGET static void unpack_q5_K(const void *block, kq_block *o) {
    const block_q5_K *b = block;
    const __m256i qh = load32(b->qh);
    for (int g = 0; g < 4; g++) {
        const __m256i qb = load32(b->qs + 32 * g);
        store32(o->q + 64 * g, _mm256_or_si256(byte_field(qb, 0, 0xF), bit_as(qh, 2 * g, 16)));
        store32(o->q + 64 * g + 32, _mm256_or_si256(byte_field(qb, 4, 0xF), bit_as(qh, 2 * g + 1, 16)));
    }
    k4_scales(b->scales, o);
    o->d = h2f(b->d);
    o->dmin = h2f(b->dmin);
}

/* Q6_K: element 128h + 32c + l is a nibble of ql[64h + l (+32 for odd c)] (high for c >= 2) plus
 * bits 2c..2c+1 of qh[32h + l] as 16 * value; u = q + 32 (0..63). */
TARGET static void unpack_q6_K(const void *block, kq_block *o) {
    const block_q6_K *b = block;
    for (int h = 0; h < 2; h++) {
        const __m256i l0 = load32(b->ql + 64 * h), l1 = load32(b->ql + 64 * h + 32);
        const __m256i hb = load32(b->qh + 32 * h);
        const __m256i low[4] = {byte_field(l0, 0, 0xF), byte_field(l1, 0, 0xF), byte_field(l0, 4, 0xF),
                                byte_field(l1, 4, 0xF)};
        for (int c = 0; c < 4; c++) {
            const __m256i high = _mm256_slli_epi16(byte_field(hb, 2 * c, 3), 4);
            store32(o->q + 128 * h + 32 * c, _mm256_or_si256(low[c], high));
        }
    }
    for (int s = 0; s < 16; s++) {
        o->sc[s] = b->scales[s];
        o->mn[s] = (int16_t)(-32 * b->scales[s]);
    }
    memset(o->mn + 16, 0, 16 * sizeof o->mn[0]);
    o->d = h2f(b->d);
    o->dmin = 0.0f;
}

const kq_type hl_kq_q2_K = {unpack_q2_K, sizeof(block_q2_K), 0};
const kq_type hl_kq_q3_K = {unpack_q3_K, sizeof(block_q3_K), 1};
const kq_type hl_kq_q4_K = {unpack_q4_K, sizeof(block_q4_K), 0};
const kq_type hl_kq_q5_K = {unpack_q5_K, sizeof(block_q5_K), 0};
const kq_type hl_kq_q6_K = {unpack_q6_K, sizeof(block_q6_K), 1};

#else
typedef int hl_gemm_kquants_unpack_unused; /* ISO C wants a non-empty unit */
#endif /* __x86_64__ && !HL_NO_SIMD */
