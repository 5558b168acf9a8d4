/*
 * VNNI dot products whose activation operand is one dword broadcast from memory to all 16 lanes, written as
 * the instruction's embedded-broadcast form ({1to16}). GCC's intrinsics, given _mm512_set1_epi32 of a loaded
 * dword, issue a separate vpbroadcastd for every product; the kernels issue one such product per weight
 * register and token, so the extra instruction was a large share of their work.
 */
#ifndef HL_VNNI_BCST_H
#define HL_VNNI_BCST_H

#if defined(__x86_64__) && !defined(HL_NO_SIMD)
#include <immintrin.h>
#include <stdint.h>

/* A dword read through this type may alias the int8 quants and int16 sums it is read from. */
typedef int32_t hl_dword_alias __attribute__((may_alias));

#define HL_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"), always_inline))

/* acc + per lane the dot of w's four unsigned bytes with the four signed bytes at q (vpdpbusd). */
HL_VNNI_TARGET static inline __m512i hl_dpbusd_bcst(__m512i acc, __m512i w, const int8_t *q) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const hl_dword_alias *)q));
    return acc;
}

/* acc + per lane the dot of w's two signed 16-bit values with the two at p (vpdpwssd). */
HL_VNNI_TARGET static inline __m512i hl_dpwssd_bcst(__m512i acc, __m512i w, const int16_t *p) {
    __asm__("vpdpwssd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const hl_dword_alias *)p));
    return acc;
}
#endif

#endif
