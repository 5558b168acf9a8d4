/* Tiled multi-token mat-mul kernels (hl_gemm_fn) for Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 weights against
 * Q8_0/Q8_1 activations: the installer; the kernels are in gemm_q32_avx512.c and gemm_q32_avx2.c. */
#include "gemm_q32.h"

void hl_gemm_install_q32(const hl_cpu_features *cpu) {
#if defined(__x86_64__) && !defined(HL_NO_SIMD)
#ifndef HL_Q32_FORCE_AVX2 /* build-time switch to test the AVX2 set on an AVX-512 machine */
    if (cpu->avx512) {
        hl_gemm_q32_install_avx512();
        return;
    }
#endif
    if (cpu->avx2) hl_gemm_q32_install_avx2();
#else
    (void)cpu;
#endif
}
