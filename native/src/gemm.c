/* The multi-token mat-mul dispatcher and the installer of every kernel family (gemm.h). */
#include "gemm.h"

void hl_gemm(const hl_type_traits *tt, int ref, int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride,
             const void *a, size_t a_stride, float *dst, size_t dst_stride) {
    if (!ref && tt->gemm) {
        tt->gemm(n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
        return;
    }
    if (tt->gemm_ref) { /* a panel type: no row kernel */
        tt->gemm_ref(n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
        return;
    }
    hl_gemm_by_vec_dot(ref ? tt->vec_dot_ref : tt->vec_dot, n, nr, nt, w, w_stride, a, a_stride, dst, dst_stride);
}

void hl_gemm_by_vec_dot(hl_vec_dot_fn dot, int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride,
                        const void *a, size_t a_stride, float *dst, size_t dst_stride) {
    for (int64_t t = 0; t < nt; t++) {
        const char *a_row = (const char *)a + (size_t)t * a_stride;
        for (int64_t r = 0; r < nr; r++) dot(n, &dst[(size_t)t * dst_stride + r], (const char *)w + (size_t)r * w_stride, a_row);
    }
}

void hl_axpy_rows(const hl_type_traits *tt, int64_t n, int64_t nk, int64_t nt, const void *x, size_t x_stride,
                  const float *alpha, size_t alpha_stride, float *y, size_t y_stride) {
    if (tt->axpy_rows) {
        tt->axpy_rows(n, nk, nt, x, x_stride, alpha, alpha_stride, y, y_stride);
        return;
    }
    for (int64_t t = 0; t < nt; t++)
        for (int64_t k = 0; k < nk; k++)
            tt->axpy(n, alpha[(size_t)t * alpha_stride + k], (const char *)x + (size_t)k * x_stride, y + (size_t)t * y_stride);
}

void hl_gemm_install(const hl_cpu_features *cpu) {
    hl_gemm_install_q32(cpu);
    hl_gemm_install_q32_panel16(cpu);
    hl_gemm_install_kquants(cpu);
    hl_gemm_install_kquants_r16(cpu);
    hl_gemm_install_float(cpu);
    hl_axpy_rows_install(cpu);
    hl_softmax_install(cpu);
    hl_swiglu_install(cpu);
}
