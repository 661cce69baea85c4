// KV cache formats: one definition of each, shared by the reference path (ref.c, kv.c) and the GPU
// engine (kernels.cu), so that both write the same bytes and read them the same way.
//
// A format gives K and V each a codec. A cache holds, per (layer, kv head, position), a K row and a V
// row of head_dim elements, in two planes per part:
//   data [layer][kv_head][capacity][data bytes]   the elements, 8 at a time (a "chunk": 4..32 bytes)
//   aux  [layer][kv_head][capacity][aux bytes]    scales, then (K) the wide channels
// Wide channels: Qwen2-family k_proj biases put a few key channels at hundreds (the rest stay near
// 1-5), so one scale per row would lose every other channel. Those channels are known from the
// checkpoint (kv.c chooses them); K keeps them in fp32 in its aux row, and stores 0 in their place in
// the data row. A score is then q . decoded(data) + sum over wide channels of q[ch] * K[ch]: exact
// for every codec but kv4h's, whose rotation spreads the data row's noise over the zeroed places.
#ifndef NANO_KV_H
#define NANO_KV_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "half.h"

typedef enum {
    KVC_F32,   // fp32
    KVC_BF16,  // bf16
    KVC_F16,   // f16: 3 more mantissa bits than bf16, same size
    KVC_Q8,    // int8, one fp32 scale per row (amax / 127)
    KVC_Q4,    // 4-bit, per group of 32: f16 scale and minimum (asymmetric)
    KVC_Q4H,   // 4-bit after a normalized Walsh-Hadamard rotation of the row, per group of 32: f16 scale (symmetric)
} KVCodec;

typedef enum { KV_F32, KV_BF16, KV_F16, KV_INT8, KV_K8V4, KV_KV4H, KV_N_FORMATS } KVFormat;

typedef struct {
    const char *name;
    KVCodec k, v;
    int wide;  // keeps the checkpoint's wide key channels (below)
    int gpu;   // the GPU engine reads and writes it
} KVFormatInfo;

// The table of formats (kv.c): name, K and V codecs.
extern const KVFormatInfo kv_formats[KV_N_FORMATS];

#define KV_GROUP 32     // elements per scale group of the 4-bit codecs
#define KV_MAX_HEAD_DIM 4096  // config.json's limit (model.c)
#define KV_MAX_WIDE 8   // most wide key channels per row, and at most head_dim / 8 (the GPU adds one per lane of a
                        // row's lane group of head_dim / 8 lanes)

// A cache. The pointers are host memory for the reference path and device memory in the GPU engine.
typedef struct {
    KVFormat format;
    KVCodec codec[2];       // K's and V's (the format's, here for device code)
    int n_layers, n_kv_heads, head_dim, capacity;
    int n_wide;             // wide key channels per row, 0..KV_MAX_WIDE
    const int16_t *wide;    // [layer][kv_head][n_wide] channel indices, -1 for an unused slot
    uint8_t *k, *k_aux;     // K data and aux planes
    uint8_t *v, *v_aux;     // V data and aux planes
} KVCache;

// ---------------------------------------------------------------------------------------------
// Sizes

HOST_DEVICE static inline size_t kv_data_bytes(KVCodec c, int D) {
    switch (c) {
    case KVC_F32: return 4 * (size_t)D;
    case KVC_BF16:
    case KVC_F16: return 2 * (size_t)D;
    case KVC_Q8: return (size_t)D;
    default: return (size_t)D / 2;
    }
}

// The codec's scales per row (before K's wide channels).
HOST_DEVICE static inline size_t kv_scale_bytes(KVCodec c, int D) {
    switch (c) {
    case KVC_Q8: return 4;
    case KVC_Q4: return (size_t)D / KV_GROUP * 4;
    case KVC_Q4H: return (size_t)D / KV_GROUP * 2;
    default: return 0;
    }
}

HOST_DEVICE static inline size_t kv_aux_bytes(KVCodec c, int D, int n_wide) {
    size_t s = kv_scale_bytes(c, D);
    if (n_wide) s = (s + 3) / 4 * 4 + 4 * (size_t)n_wide;
    return s;
}

HOST_DEVICE static inline size_t kv_wide_offset(KVCodec c, int D) { return (kv_scale_bytes(c, D) + 3) / 4 * 4; }

HOST_DEVICE static inline KVCodec kv_codec(const KVCache *kv, int part) { return kv->codec[part]; }  // part 0: K, 1: V

// Row index of (layer, head, pos) in either plane.
HOST_DEVICE static inline size_t kv_row(const KVCache *kv, int layer, int head, int pos) {
    return ((size_t)layer * kv->n_kv_heads + head) * kv->capacity + pos;
}

HOST_DEVICE static inline int kv_part_wide(const KVCache *kv, int part) { return part ? 0 : kv->n_wide; }

// Bytes of one row of part (0: K, 1: V) in its data (aux 0) or aux plane (aux 1).
HOST_DEVICE static inline size_t kv_row_bytes(const KVCache *kv, int part, int aux) {
    return aux ? kv_aux_bytes(kv->codec[part], kv->head_dim, kv_part_wide(kv, part)) : kv_data_bytes(kv->codec[part], kv->head_dim);
}

// Rows Hadamard-rotated in the cache (kv4h): the GPU rotates q to match, and o_proj undoes the output's.
HOST_DEVICE static inline int kv_rotated(const KVCache *kv) { return kv->codec[0] == KVC_Q4H; }
// Whether the GPU engine holds format f for a model with n_wide wide key channels: not the reference's
// f32, nor kv4h with wide channels (their exact values sit outside the rotation, on the host only).
static inline int kv_gpu_holds(KVFormat f, int n_wide) { return kv_formats[f].gpu && !(kv_formats[f].k == KVC_Q4H && n_wide); }

// Where the row of part (0: K, 1: V) at (layer, head, pos) lives: its data and aux bytes; and its
// wide channels' indices (NULL when it has none).
HOST_DEVICE static inline uint8_t *kv_data_at(const KVCache *kv, int part, int layer, int head, int pos) {
    return (part ? kv->v : kv->k) + kv_row(kv, layer, head, pos) * kv_row_bytes(kv, part, 0);
}
HOST_DEVICE static inline uint8_t *kv_aux_at(const KVCache *kv, int part, int layer, int head, int pos) {
    return (part ? kv->v_aux : kv->k_aux) + kv_row(kv, layer, head, pos) * kv_row_bytes(kv, part, 1);
}
// A sequence's cache inside a bigger one (a pool, nano.h's KVPool): positions base, base + 1, ... of
// every (layer, kv head) plane, addressed from 0. The view shares the planes (capacity stays their
// stride); its owner keeps within the positions it was given.
HOST_DEVICE static inline KVCache kv_view(const KVCache *kv, int base) {
    KVCache v = *kv;
    v.k += (size_t)base * kv_row_bytes(kv, 0, 0), v.k_aux += (size_t)base * kv_row_bytes(kv, 0, 1);
    v.v += (size_t)base * kv_row_bytes(kv, 1, 0), v.v_aux += (size_t)base * kv_row_bytes(kv, 1, 1);
    return v;
}
HOST_DEVICE static inline const int16_t *kv_wide_at(const KVCache *kv, int part, int layer, int head) {
    int n = kv_part_wide(kv, part);
    return n ? kv->wide + ((size_t)layer * kv->n_kv_heads + head) * n : NULL;
}

// ---------------------------------------------------------------------------------------------
// Encoding: a row's parameters from its extremes, then 8 elements at a time (chunk li = elements
// 8 li .. 8 li + 7). The GPU finds the extremes with warp shuffles, the host with a loop: min and max
// do not depend on the order, so both store the same bytes.

typedef struct {
    float scale, inv, zero;  // x ~ zero + q * scale; q = round((x - zero) * inv)
} KVParams;

// lo, hi: the smallest and largest element of the row (Q8) or of the group (Q4, Q4H).
HOST_DEVICE static inline KVParams kv_params(KVCodec c, float lo, float hi) {
    KVParams p = {0, 0, 0};
    lo += 0.0f, hi += 0.0f;  // -0 -> +0, whatever order found them
    float amax = fmaxf(-lo, hi) + 0.0f;  // fmaxf(-0, +0) may be either
    if (c == KVC_Q8) {
        p.scale = amax / 127.0f;
        p.inv = amax > 0 ? 127.0f / amax : 0.0f;
    } else if (c == KVC_Q4) {
        p.scale = f16_to_f32(f32_to_f16((hi - lo) / 15.0f));
        p.zero = f16_to_f32(f32_to_f16(lo));
        p.inv = p.scale > 0 ? 1.0f / p.scale : 0.0f;
    } else if (c == KVC_Q4H) {
        p.scale = f16_to_f32(f32_to_f16(amax / 7.0f));
        p.inv = p.scale > 0 ? 1.0f / p.scale : 0.0f;
    }
    return p;
}

// q (already an integer) within [lo, hi]; NaN (a NaN or Inf in the row) goes to lo on host and GPU alike.
HOST_DEVICE static inline int kv_clamp(float q, int lo, int hi) { return q >= (float)lo ? (q <= (float)hi ? (int)q : hi) : lo; }

// Elements x[0..8) of chunk li into the data row; the parameters into the aux row (once per row or
// group: the first chunk of each writes them).
HOST_DEVICE static inline void kv_encode8(KVCodec c, const float *x, KVParams p, uint8_t *data, uint8_t *aux, int li) {
    switch (c) {
    case KVC_F32: memcpy(data + 32 * (size_t)li, x, 32); break;
    case KVC_BF16:
    case KVC_F16:
        for (int e = 0; e < 8; e++) {
            uint16_t h = c == KVC_BF16 ? f32_to_bf16(x[e]) : f32_to_f16(x[e]);
            memcpy(data + 16 * (size_t)li + 2 * e, &h, 2);
        }
        break;
    case KVC_Q8:
        for (int e = 0; e < 8; e++) data[8 * li + e] = (uint8_t)(int8_t)kv_clamp(rintf(x[e] * p.inv), -127, 127);
        if (li == 0) memcpy(aux, &p.scale, 4);
        break;
    case KVC_Q4:
    case KVC_Q4H: {
        uint32_t w = 0;
        for (int e = 0; e < 8; e++) {
            int q = c == KVC_Q4 ? kv_clamp(rintf((x[e] - p.zero) * p.inv), 0, 15) : kv_clamp(rintf(x[e] * p.inv), -8, 7) + 8;
            w |= (uint32_t)q << (4 * e);
        }
        memcpy(data + 4 * (size_t)li, &w, 4);
        if (li % (KV_GROUP / 8) == 0) {
            int g = li / (KV_GROUP / 8);
            uint16_t s = f32_to_f16(p.scale), z = f32_to_f16(p.zero);
            if (c == KVC_Q4) memcpy(aux + 4 * g, &s, 2), memcpy(aux + 4 * g + 2, &z, 2);
            else memcpy(aux + 2 * g, &s, 2);
        }
        break;
    }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding: fetch a chunk's bytes and its scale word (all loads of several rows can be in flight),
// then unpack them to 8 floats in registers.

typedef struct {
    uint32_t w[4];  // the chunk's bytes (never F32: the reference decodes it element by element, the GPU has none)
    uint32_t s;     // Q8: the fp32 scale; Q4: f16 scale | f16 minimum << 16; Q4H: f16 scale
} KVChunk;

HOST_DEVICE static inline int kv_chunk_words(KVCodec c) { return c == KVC_Q8 ? 2 : c == KVC_Q4 || c == KVC_Q4H ? 1 : 4; }

HOST_DEVICE static inline KVChunk kv_fetch8(KVCodec c, const uint8_t *data, const uint8_t *aux, int li) {
    KVChunk r = {{0, 0, 0, 0}, 0};
    const int nw = kv_chunk_words(c);
    const uint8_t *p = data + (size_t)li * nw * 4;
#ifdef __CUDA_ARCH__
    // Written earlier in the same launch by other blocks: through L2 (coherent), not L1.
    if (nw == 4) {
        uint4 u = __ldcg((const uint4 *)p);
        r.w[0] = u.x, r.w[1] = u.y, r.w[2] = u.z, r.w[3] = u.w;
    } else if (nw == 2) {
        uint2 u = __ldcg((const uint2 *)p);
        r.w[0] = u.x, r.w[1] = u.y;
    } else {
        r.w[0] = __ldcg((const unsigned *)p);
    }
    if (c == KVC_Q8) r.s = __ldcg((const unsigned *)aux);
    else if (c == KVC_Q4) r.s = __ldcg((const unsigned *)aux + li / (KV_GROUP / 8));
    else if (c == KVC_Q4H) r.s = __ldcg((const unsigned short *)aux + li / (KV_GROUP / 8));
#else
    memcpy(r.w, p, (size_t)nw * 4);
    if (c == KVC_Q8) memcpy(&r.s, aux, 4);
    else if (c == KVC_Q4) memcpy(&r.s, aux + 4 * (li / (KV_GROUP / 8)), 4);
    else if (c == KVC_Q4H) {
        uint16_t h;
        memcpy(&h, aux + 2 * (li / (KV_GROUP / 8)), 2);
        r.s = h;
    }
#endif
    return r;
}

HOST_DEVICE static inline void kv_unpack8(KVCodec c, KVChunk r, float *f) {
    switch (c) {
    case KVC_BF16:
        for (int e = 0; e < 4; e++) f[2 * e] = bits_f32(r.w[e] << 16), f[2 * e + 1] = bits_f32(r.w[e] & 0xffff0000u);
        break;
    case KVC_F16:
        for (int e = 0; e < 4; e++) f[2 * e] = f16_to_f32((uint16_t)r.w[e]), f[2 * e + 1] = f16_to_f32((uint16_t)(r.w[e] >> 16));
        break;
    case KVC_Q8: {
        float s = bits_f32(r.s);
        for (int e = 0; e < 8; e++) f[e] = (float)(int8_t)(r.w[e / 4] >> (8 * (e % 4))) * s;
        break;
    }
    case KVC_Q4: {
        float s = f16_to_f32((uint16_t)r.s), z = f16_to_f32((uint16_t)(r.s >> 16));
        for (int e = 0; e < 8; e++) f[e] = fmaf((float)((r.w[0] >> (4 * e)) & 15u), s, z);
        break;
    }
    case KVC_Q4H: {
        float s = f16_to_f32((uint16_t)r.s);
        for (int e = 0; e < 8; e++) f[e] = (float)((int)((r.w[0] >> (4 * e)) & 15u) - 8) * s;
        break;
    }
    default:  // KVC_F32: the reference's own format, decoded by kv_decode_row directly
        for (int e = 0; e < 8; e++) f[e] = 0;
        break;
    }
}

// ---------------------------------------------------------------------------------------------
// The Walsh-Hadamard rotation of KVC_Q4H: x <- H x / sqrt(D), in place; its own inverse. Butterflies
// in a fixed order, so a warp doing one stage per step computes the same bits.

HOST_DEVICE static inline void kv_hadamard_step(float *x, int h, int i) {  // butterfly i (of D/2) of stage h
    int j = (i / h) * 2 * h + i % h;
    float a = x[j], b = x[j + h];
    x[j] = a + b, x[j + h] = a - b;
}

HOST_DEVICE static inline float kv_hadamard_norm(int D) { return 1.0f / sqrtf((float)D); }

#endif
