/*
 * Public kernel entry points (hotlora.h, "Kernels, exposed for tests and
 * tools"): row sizes, dequantisation of one row, and a single-threaded
 * multi-token mat-mul through the per-type traits of quants.h.
 */
#include <stdlib.h>

#include "common.h"
#include "gemm.h"
#include "quants.h"

const char *hl_simd_name(void) { return hl_quants_simd_name(); }

#ifndef HL_BUILD_FLAGS
#define HL_BUILD_FLAGS "unknown (not built by build.py)"
#endif
const char *hl_build_flags(void) { return HL_BUILD_FLAGS; }

size_t hl_row_size(int32_t type, int64_t n) {
    const hl_type_traits *t = hl_get_type_traits(type);
    if (!t || n < 0 || n % t->block_size != 0) return 0;
    return (size_t)(n / t->block_size) * t->type_size;
}

/* Checks that n elements of type t form whole blocks. */
static hl_status check_length(const char *fn, const hl_type_traits *t, int64_t n) {
    if (n < 0) return hl_fail(HL_ERR_INVALID, "%s: negative length %lld", fn, (long long)n);
    if (n % t->block_size != 0)
        return hl_fail(HL_ERR_INVALID, "%s: length %lld is not a multiple of %s's block size %lld", fn,
                       (long long)n, t->name, (long long)t->block_size);
    return HL_OK;
}

hl_status hl_dequantize_row(int32_t type, const void *src, float *dst, int64_t n) {
    hl_quants_init();
    const hl_type_traits *t = hl_get_type_traits(type);
    if (!t) return hl_fail(HL_ERR_UNSUPPORTED, "hl_dequantize_row: unknown type %d", (int)type);
    if (!t->to_float)
        return hl_fail(HL_ERR_UNSUPPORTED, "hl_dequantize_row: type %s has no dequantiser", t->name);
    hl_status st = check_length("hl_dequantize_row", t, n);
    if (st != HL_OK) return st;
    if (!src || !dst) return hl_fail(HL_ERR_INVALID, "hl_dequantize_row: %s is NULL", src ? "dst" : "src");
    t->to_float(src, dst, n);
    return HL_OK;
}

hl_status hl_mat_mul(int32_t type, const void *w, int64_t n_cols, int64_t n_rows,
                     const float *x, int64_t n_tokens, float *y, int32_t kernel) {
    hl_quants_init();
    const hl_type_traits *t = hl_get_type_traits(type);
    if (!t) return hl_fail(HL_ERR_UNSUPPORTED, "hl_mat_mul: unknown weight type %d", (int)type);
    if (!t->vec_dot && !t->panel_rows)
        return hl_fail(HL_ERR_UNSUPPORTED, "hl_mat_mul: %s is an activation-only type, not a weight type",
                       t->name);
    if (t->panel_rows && n_rows % t->panel_rows)
        return hl_fail(HL_ERR_INVALID, "hl_mat_mul: %s holds whole panels of %lld rows, not %lld rows", t->name,
                       (long long)t->panel_rows, (long long)n_rows);
    if (kernel != HL_KERNEL_AUTO && kernel != HL_KERNEL_REFERENCE)
        return hl_fail(HL_ERR_INVALID, "hl_mat_mul: unknown kernel choice %d", (int)kernel);
    hl_status st = check_length("hl_mat_mul", t, n_cols);
    if (st != HL_OK) return st;
    if (n_rows < 0) return hl_fail(HL_ERR_INVALID, "hl_mat_mul: negative row count %lld", (long long)n_rows);
    if (n_tokens < 0)
        return hl_fail(HL_ERR_INVALID, "hl_mat_mul: negative token count %lld", (long long)n_tokens);
    if (!w || !x || !y)
        return hl_fail(HL_ERR_INVALID, "hl_mat_mul: %s is NULL", !w ? "w" : !x ? "x" : "y");

    const int ref = kernel == HL_KERNEL_REFERENCE;
    /* Convert x once to the activation type (float weights use x as is). */
    const void *act = x;
    size_t act_stride = (size_t)n_cols * sizeof(float);
    void *buf = NULL;
    if (t->vec_dot_type != HL_TYPE_F32) {
        const hl_type_traits *at = hl_get_type_traits(t->vec_dot_type);
        act_stride = hl_row_size(t->vec_dot_type, n_cols);
        const size_t act_bytes = act_stride * (size_t)n_tokens;
        buf = malloc(act_bytes ? act_bytes : 1);
        if (!buf)
            return hl_fail(HL_ERR_NOMEM, "hl_mat_mul: cannot allocate %zu bytes for %s activations",
                           act_bytes, at->name);
        for (int64_t i = 0; i < n_tokens; i++)
            (ref ? at->from_float_ref : at->from_float)(x + i * n_cols, (char *)buf + i * act_stride, n_cols);
        act = buf;
    }
    hl_gemm(t, ref, n_cols, n_rows, n_tokens, w, hl_row_size(type, n_cols), act, act_stride, y, (size_t)n_rows);
    free(buf);
    return HL_OK;
}

hl_status hl_swiglu(float *gate, const float *up, int64_t n, int32_t kernel) {
    hl_quants_init();
    if (kernel != HL_KERNEL_AUTO && kernel != HL_KERNEL_REFERENCE)
        return hl_fail(HL_ERR_INVALID, "hl_swiglu: unknown kernel choice %d", (int)kernel);
    if (n < 0) return hl_fail(HL_ERR_INVALID, "hl_swiglu: negative length %lld", (long long)n);
    if (!gate || !up) return hl_fail(HL_ERR_INVALID, "hl_swiglu: %s is NULL", gate ? "up" : "gate");
    hl_swiglu_row(gate, up, n, kernel == HL_KERNEL_REFERENCE);
    return HL_OK;
}
