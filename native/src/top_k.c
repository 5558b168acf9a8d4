/*
 * The k largest of n float logits: the sampler's top-k step (sampler.c; sampling.md §3).
 *
 * Order: logit descending, then position ascending (a stable sort), in order_key.h's total order on floats
 * (-0.0 ties +0.0, NaN ranks above +inf, as cli/sampling.py's descending_order). One pass keeps a min-heap
 * of the k best keys so far; a logit that does not beat the heap's weakest is rejected by one compare,
 * CHUNK logits at a time, so the pass costs about n vector compares.
 */
#include <stdlib.h>
#if defined(__x86_64__) && !defined(HL_NO_SIMD)
#include <immintrin.h>
#endif

#include "common.h"
#include "order_key.h"

#define CHUNK 16 /* logits rejected at once */

/* Whether every one of CHUNK logits is strictly below v in float order (so none can enter the heap; a NaN
 * on either side answers no, and the exact key compare decides). SSE2 on x86-64, else the plain loop. */
static int all_below(const float *x, float v) {
#if defined(__x86_64__) && !defined(HL_NO_SIMD)
    const __m128 t = _mm_set1_ps(v);
    __m128 m = _mm_cmplt_ps(_mm_loadu_ps(x), t);
    for (int j = 4; j < CHUNK; j += 4) m = _mm_and_ps(m, _mm_cmplt_ps(_mm_loadu_ps(x + j), t));
    return _mm_movemask_ps(m) == 0xF;
#else
    int below = 1;
    for (int j = 0; j < CHUNK; j++) below &= x[j] < v;
    return below;
#endif
}

/* Restores the min-heap property below slot i of heap[0..k). */
static void sift_down(uint64_t *heap, int32_t k, int32_t i) {
    for (;;) {
        int32_t least = i;
        const int32_t l = 2 * i + 1, r = l + 1;
        if (l < k && heap[l] < heap[least]) least = l;
        if (r < k && heap[r] < heap[least]) least = r;
        if (least == i) return;
        const uint64_t t = heap[i];
        heap[i] = heap[least], heap[least] = t;
        i = least;
    }
}

void hl_select_top_k(const float *logits, int32_t n, int32_t k, uint64_t *heap) {
    for (int32_t i = 0; i < k; i++) heap[i] = hl_order_key(logits[i], i);
    for (int32_t i = k / 2 - 1; i >= 0; i--) sift_down(heap, k, i);
    float weakest = hl_order_key_value(heap[0]);
    for (int32_t i = k; i < n; i++) {
        if (i + CHUNK <= n && all_below(logits + i, weakest)) {
            i += CHUNK - 1;
            continue;
        }
        const uint64_t key = hl_order_key(logits[i], i);
        if (key > heap[0]) heap[0] = key, sift_down(heap, k, 0), weakest = hl_order_key_value(heap[0]);
    }
    qsort(heap, (size_t)k, sizeof *heap, hl_order_key_descending);
}
