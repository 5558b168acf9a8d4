/*
 * Private to gemm_q32*.c: the tiled kernels of the 32-element weight types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
 *
 * Both kernel sets work on a tile of R weight rows x T tokens and give every (row, token) its own float
 * accumulator, which sees the same operations in the same order whatever the tile, the call or the
 * chunking: per 32-element block the exact integer dot of the weight quants with the activation quants
 * (as the references in quants.c), converted to float, times the float product d_w * d_a, added by one
 * FMA per lane; for Q4_1/Q5_1, after every 16 (AVX2: 8) blocks, m_w * s_a of those blocks by one FMA
 * (lanes past the row's last block are zero on both sides); one fixed horizontal sum at the end.
 * Ragged edges run the same per-(row, token) arithmetic (a partial token tile is a narrower kernel; a
 * partial row tile repeats its last row and drops the copies), so the hl_gemm_fn contract holds.
 */
#ifndef HL_GEMM_Q32_H
#define HL_GEMM_Q32_H

#include "gemm.h"

#if defined(__x86_64__) && !defined(HL_NO_SIMD)
/* Each sets the gemm of the five types to its kernel set. */
void hl_gemm_q32_install_avx512(void); /* gemm_q32_avx512.c: AVX-512 F/BW/VL/DQ + VNNI */
void hl_gemm_q32_install_avx2(void);   /* gemm_q32_avx2.c: AVX2 + FMA + F16C */
/* gemm_q4_0_decode.c: Q4_0 calls of 1 to HL_GEMM_BATCH_MIN - 1 tokens on AVX-512 VNNI (an hl_gemm_fn). */
void hl_gemm_q4_0_decode_avx512(int64_t n, int64_t nr, int64_t nt, const void *w, size_t w_stride, const void *a,
                                size_t a_stride, float *dst, size_t dst_stride);
#endif

/* Bytes of packed activations a call may allocate per token chunk (the chunk is cut to fit). */
#ifndef HL_Q32_PACK_BUDGET
#define HL_Q32_PACK_BUDGET (128 * 1024)
#endif

#endif
