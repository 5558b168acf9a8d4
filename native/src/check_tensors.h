/* Finiteness checks of tensor rows (check_tensors.c), shared with the non-finite node finder. */
#ifndef HL_CHECK_TENSORS_H
#define HL_CHECK_TENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

/* 1 if rows of type can be checked (F32, F16, BF16 and the quantized weight types). */
int hl_check_supported(int32_t type);
/*
 * Scalar reference: the first of n_rows rows (n_cols elements of type each, row_stride bytes apart) holding a
 * NaN or infinity, or a block whose F16 scale is one; -1 if none. type must be hl_check_supported.
 */
int64_t hl_first_bad_row(int32_t type, const void *data, size_t row_stride, int64_t n_cols, int64_t n_rows);

#endif
