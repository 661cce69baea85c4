// bf16 and f16 <-> fp32: one definition for the host (weights, the reference's KV cache) and the GPU
// (kernels.cu includes this too), so both round the same way, bit for bit.
#ifndef NANO_HALF_H
#define NANO_HALF_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define HOST_DEVICE __host__ __device__
#else
#define HOST_DEVICE
#endif

HOST_DEVICE static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

HOST_DEVICE static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

HOST_DEVICE static inline float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }  // the top half of an fp32

// Round to nearest, ties to even; NaN stays NaN.
HOST_DEVICE static inline uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
    u += 0x7FFFu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

// x as a bf16 high part and the bf16 of the remainder: together ~16 mantissa bits of x (the prefill
// GEMMs' operands, two bf16 products summed in fp32).
HOST_DEVICE static inline void bf16_split(float x, uint16_t *hi, uint16_t *lo) {
    uint16_t h = f32_to_bf16(x);
    *hi = h;
    *lo = f32_to_bf16(x - bf16_to_f32(h));
}

HOST_DEVICE static inline float f16_to_f32(uint16_t h) {
#ifdef __CUDA_ARCH__
    return __half2float(__ushort_as_half(h));  // exact, as below
#endif
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    if (exp == 0x1F) return bits_f32(sign | 0x7F800000u | (man << 13));  // inf / NaN
    if (exp) return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
    float sub = (float)man * 5.9604644775390625e-8f;  // subnormal: man * 2^-24, exact in fp32
    return sign ? -sub : sub;
}

// Round to nearest, ties to even, as IEEE (and __float2half_rn, but for NaN payloads): |f| >= 65520 is
// Inf, subnormals kept.
HOST_DEVICE static inline uint16_t f32_to_f16(float f) {
    uint32_t u = f32_bits(f), sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu));  // quiet NaN
    if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);                        // 65520 and up: Inf
    if (a >= 0x38800000u) {                                                          // normal f16 (>= 2^-14)
        uint32_t r = a + 0xFFFu + ((a >> 13) & 1);
        return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
    }
    int shift = 126 - (int)(a >> 23);  // subnormal f16: the value in units of 2^-24
    if (shift > 24) return (uint16_t)sign;
    uint32_t man = (a & 0x7FFFFFu) | 0x800000u, q = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return (uint16_t)(sign | q);
}

#endif
