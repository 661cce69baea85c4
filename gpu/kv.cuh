// The KV cache on the device, in any format of kv.h: a row written by one warp (the same bytes as the
// reference's kv_encode_row: extremes found with shuffles, the encoding shared), and a chunk of a row
// read with its codec known at run time (the prefill attention's tile loads). The decode attention
// reads chunks with codecs fixed at compile time (attention.cuh).
#ifndef NANO_GPU_KV_CUH
#define NANO_GPU_KV_CUH

// Row src[0..D) of shared memory into the cache at (layer, head, pos) of part (0: K, 1: V), by one
// warp. The wide channels are zeroed in src (after being stored exactly), and a KVC_Q4H row is
// rotated in place.
__device__ void kv_store_row(const KVCache &kv, int part, int layer, int head, int pos, float *src) {
    const int D = kv.head_dim, lane = threadIdx.x & 31, n_wide = kv_part_wide(&kv, part);
    const KVCodec c = kv_codec(&kv, part);
    uint8_t *data = kv_data_at(&kv, part, layer, head, pos), *aux = kv_aux_at(&kv, part, layer, head, pos);
    if (n_wide) {
        int ch = lane < n_wide ? kv_wide_at(&kv, part, layer, head)[lane] : -1;
        if (lane < n_wide) ((float *)(aux + kv_wide_offset(c, D)))[lane] = ch >= 0 ? src[ch] : 0.0f;
        __syncwarp();
        if (ch >= 0) src[ch] = 0;
        __syncwarp();
    }
    if (c == KVC_Q4H) {
        for (int h = 1; h < D; h *= 2) {
            for (int i = lane; i < D / 2; i += 32) kv_hadamard_step(src, h, i);
            __syncwarp();
        }
        for (int i = lane; i < D; i += 32) src[i] *= kv_hadamard_norm(D);
        __syncwarp();
    }
    const int li = lane;  // chunk li: elements 8 li .. 8 li + 7 (D / 8 <= 32 chunks)
    float x[8], lo = INFINITY, hi = -INFINITY;
    if (li < D / 8)
        for (int e = 0; e < 8; e++) x[e] = src[8 * li + e], lo = fminf(lo, x[e]), hi = fmaxf(hi, x[e]);
    const int span = c == KVC_Q8 ? 32 : KV_GROUP / 8;  // lanes sharing the parameters: the row, or a group
    for (int o = 1; o < span; o <<= 1) {
        lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
        hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    }
    if (li < D / 8) kv_encode8(c, x, kv_params(c, lo, hi), data, aux, li);
    __syncwarp();
}

// Chunk li of the row at (layer, head, pos) as 8 floats (without the wide channels' values).
__device__ __forceinline__ void kv_read8(const KVCache &kv, int part, int layer, int head, int pos, int li, float *f) {
    const KVCodec c = kv_codec(&kv, part);
    kv_unpack8(c, kv_fetch8(c, kv_data_at(&kv, part, layer, head, pos), kv_aux_at(&kv, part, layer, head, pos), li), f);
}

// The wide channel slot s's stored value in a K row.
__device__ __forceinline__ float kv_wide_value(const KVCache &kv, int layer, int head, int pos, int s) {
    return __ldcg((const float *)(kv_aux_at(&kv, 0, layer, head, pos) + kv_wide_offset(kv.codec[0], kv.head_dim)) + s);
}

#endif
