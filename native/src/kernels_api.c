/*
 * Public kernel entry points (hotlora.h, "Kernels, exposed for tests and
 * tools"): row sizes, dequantisation of one row, and a single-threaded
 * matrix-vector product through the per-type traits of quants.h.
 */
#include <stdlib.h>

#include "common.h"
#include "quants.h"

const char *hl_simd_name(void) { return hl_quants_simd_name(); }

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

hl_status hl_mat_vec(int32_t type, const void *w, int64_t n_cols, int64_t n_rows,
                     const float *x, float *y, int32_t kernel) {
    hl_quants_init();
    const hl_type_traits *t = hl_get_type_traits(type);
    if (!t) return hl_fail(HL_ERR_UNSUPPORTED, "hl_mat_vec: unknown weight type %d", (int)type);
    if (!t->vec_dot)
        return hl_fail(HL_ERR_UNSUPPORTED, "hl_mat_vec: %s is an activation-only type, not a weight type",
                       t->name);
    if (kernel != HL_KERNEL_AUTO && kernel != HL_KERNEL_REFERENCE)
        return hl_fail(HL_ERR_INVALID, "hl_mat_vec: unknown kernel choice %d", (int)kernel);
    hl_status st = check_length("hl_mat_vec", t, n_cols);
    if (st != HL_OK) return st;
    if (n_rows < 0) return hl_fail(HL_ERR_INVALID, "hl_mat_vec: negative row count %lld", (long long)n_rows);
    if (!w || !x || !y)
        return hl_fail(HL_ERR_INVALID, "hl_mat_vec: %s is NULL", !w ? "w" : !x ? "x" : "y");

    const int ref = kernel == HL_KERNEL_REFERENCE;
    const hl_vec_dot_fn dot = ref ? t->vec_dot_ref : t->vec_dot;
    const size_t row_bytes = hl_row_size(type, n_cols);

    /* Convert x once to the activation type (float weights use x as is). */
    const void *act = x;
    void *buf = NULL;
    if (t->vec_dot_type != HL_TYPE_F32) {
        const hl_type_traits *at = hl_get_type_traits(t->vec_dot_type);
        const size_t act_bytes = hl_row_size(t->vec_dot_type, n_cols);
        buf = malloc(act_bytes ? act_bytes : 1);
        if (!buf)
            return hl_fail(HL_ERR_NOMEM, "hl_mat_vec: cannot allocate %zu bytes for %s activations",
                           act_bytes, at->name);
        (ref ? at->from_float_ref : at->from_float)(x, buf, n_cols);
        act = buf;
    }
    for (int64_t r = 0; r < n_rows; r++) dot(n_cols, &y[r], (const char *)w + (size_t)r * row_bytes, act);
    free(buf);
    return HL_OK;
}
