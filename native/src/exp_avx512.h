/*
 * e^x in 16 float lanes (AVX-512): a Cody-Waite range reduction (x = n ln2 + r, |r| <= ln2/2, ln2 split in two
 * parts), a degree-6 polynomial for e^r (Cephes' coefficients, relative error below 2e-7) and scalef for the 2^n.
 * Below -104 the result is 0 (as in float); above 88.7 it is +inf, as expf; NaN gives 0 (the clamp).
 */
#ifndef HL_EXP_AVX512_H
#define HL_EXP_AVX512_H

#if defined(__x86_64__) && !defined(HL_NO_SIMD)
#include <immintrin.h>

__attribute__((target("avx512f,avx512dq"))) static inline __m512 hl_exp_avx512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f)); /* e^-104 is 0 in float; keeps n finite */
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 poly = _mm512_set1_ps(1.9875691500e-4f);
    poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.3981999507e-3f));
    poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(8.3334519073e-3f));
    poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(4.1665795894e-2f));
    poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.6666665459e-1f));
    poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(5.0000001201e-1f));
    poly = _mm512_fmadd_ps(poly, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(poly, n);
}
#endif

#endif
