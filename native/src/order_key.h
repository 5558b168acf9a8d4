/* The samplers' total order on float values (cli/sampling.py's descending_order): a 64-bit key, larger =
 * earlier, from the float's bits made monotonic (-0.0 ties +0.0, NaN above +inf) and the position (ties: the
 * earlier position first). Sorting keys descending is a stable descending sort of the values. */
#ifndef HL_ORDER_KEY_H
#define HL_ORDER_KEY_H

#include <stdint.h>
#include <string.h>

static inline uint64_t hl_order_key(float v, int32_t position) {
    uint32_t bits;
    v += 0.0f; /* -0.0 -> +0.0 */
    memcpy(&bits, &v, sizeof bits);
    const uint32_t monotonic = bits >> 31 ? ~bits : bits | 0x80000000u;
    return (uint64_t)monotonic << 32 | (uint32_t)~(uint32_t)position;
}

/* The position a key was made with. */
static inline int32_t hl_order_key_position(uint64_t key) { return (int32_t)~(uint32_t)key; }

/* The value a key was made from (+0.0 for either zero). */
static inline float hl_order_key_value(uint64_t key) {
    const uint32_t monotonic = (uint32_t)(key >> 32);
    const uint32_t bits = monotonic & 0x80000000u ? monotonic & 0x7FFFFFFFu : ~monotonic;
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* qsort comparator: keys descending. */
static inline int hl_order_key_descending(const void *a, const void *b) {
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* heap[0..k) = the keys of the k largest of n logits, sorted descending (top_k.c); 1 <= k <= n. */
void hl_select_top_k(const float *logits, int32_t n, int32_t k, uint64_t *heap);

#endif
