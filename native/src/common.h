/* Internal helpers shared by every source file of the core. */
#ifndef HL_COMMON_H
#define HL_COMMON_H

#include <stdint.h>
#include <string.h>
#include "../include/hotlora.h"

/* The mask of the first min(left, 16) lanes of a 16-lane vector (an __mmask16 for a row's last, short step). */
static inline uint16_t hl_lanes16(int64_t left) { return left >= 16 ? 0xFFFF : (uint16_t)((1u << left) - 1); }

/* Records a printf-style message as this thread's last error and returns status. */
hl_status hl_fail(hl_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static inline float hl_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do { mant <<= 1; e++; } while (!(mant & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* IEEE round-to-nearest-even float -> half. */
static inline uint16_t hl_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffff;
    if (absx > 0x7f800000u) return (uint16_t)(sign | 0x7e00); /* NaN */
    if (absx >= 0x47800000u) {                                 /* overflow or inf */
        return (uint16_t)(sign | 0x7c00);
    }
    if (absx < 0x38800000u) { /* result is subnormal or zero */
        if (absx < 0x33000000u) return (uint16_t)sign;
        uint32_t mant = (absx & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(absx >> 23); /* 14..24 */
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = ((absx >> 13) - (112u << 10));
    uint32_t rem = absx & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* may carry into inf: correct */
    return (uint16_t)(sign | h);
}

static inline float hl_bf16_to_fp32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* float -> bf16 as gguf and llama.cpp round it (quants.md §2): NaN -> (bits >> 16) | 64 (quiet), else
 * round to nearest even. */
static inline uint16_t hl_fp32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 64);
    return (uint16_t)(((uint64_t)bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

#endif
