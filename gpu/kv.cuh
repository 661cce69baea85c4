// The KV cache on the device, in any format of kv.h: a row written by one warp (the same bytes as the
// reference's kv_encode_row: extremes found with shuffles, the encoding shared), and a wide channel
// read back. The attention kernels read chunks through kv.h's kv_fetch8 / kv_unpack8 with the codecs
// as template arguments.
#ifndef NANO_GPU_KV_CUH
#define NANO_GPU_KV_CUH

// The codecs of a GPU format, at compile time (kv.c's table says the same at run time).
template <int FMT> struct Codecs;
template <> struct Codecs<KV_BF16> { static constexpr KVCodec k = KVC_BF16, v = KVC_BF16; };
template <> struct Codecs<KV_F16> { static constexpr KVCodec k = KVC_F16, v = KVC_F16; };
template <> struct Codecs<KV_INT8> { static constexpr KVCodec k = KVC_Q8, v = KVC_Q8; };
template <> struct Codecs<KV_K8V4> { static constexpr KVCodec k = KVC_Q8, v = KVC_Q4; };
template <> struct Codecs<KV_KV4H> { static constexpr KVCodec k = KVC_Q4H, v = KVC_Q4H; };

// kv_hadamard by one warp over x[0..D) in shared memory: the same butterflies in the same stages, so
// the same bits.
__device__ void warp_hadamard(float *x, int D) {
    const int lane = threadIdx.x & 31;
    for (int h = 1; h < D; h *= 2) {
        for (int i = lane; i < D / 2; i += 32) kv_hadamard_step(x, h, i);
        __syncwarp();
    }
    for (int i = lane; i < D; i += 32) x[i] *= kv_hadamard_norm(D);
    __syncwarp();
}

// Row src[0..D) of shared memory into the cache at (layer, head, pos) of part (0: K, 1: V), by one
// warp, in codec C (the cache's codec of that part). The wide channels are zeroed in src (after
// being stored exactly), and a KVC_Q4H row is rotated in place.
template <KVCodec C>
__device__ void kv_store_row_c(const KVCache &kv, int part, int layer, int head, int pos, float *src) {
    const int D = kv.head_dim, lane = threadIdx.x & 31, n_wide = kv_part_wide(&kv, part);
    uint8_t *data = kv_data_at(&kv, part, layer, head, pos), *aux = kv_aux_at(&kv, part, layer, head, pos);
    if (n_wide) {
        int ch = lane < n_wide ? kv_wide_at(&kv, part, layer, head)[lane] : -1;
        if (lane < n_wide) ((float *)(aux + kv_wide_offset(C, D)))[lane] = ch >= 0 ? src[ch] : 0.0f;
        __syncwarp();
        if (ch >= 0) src[ch] = 0;
        __syncwarp();
    }
    if (C == KVC_Q4H) warp_hadamard(src, D);
    const int li = lane;  // chunk li: elements 8 li .. 8 li + 7 (D / 8 <= 32 chunks)
    float x[8], lo = INFINITY, hi = -INFINITY;
    if (li < D / 8)
        for (int e = 0; e < 8; e++) x[e] = src[8 * li + e], lo = fminf(lo, x[e]), hi = fmaxf(hi, x[e]);
    if (C == KVC_Q8 || C == KVC_Q4 || C == KVC_Q4H) {  // the parameters' extremes over the row (Q8) or the group
        const int span = C == KVC_Q8 ? 32 : KV_GROUP / 8;
        for (int o = 1; o < span; o <<= 1) {
            lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
            hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
        }
    }
    if (li < D / 8) kv_encode8(C, x, kv_params(C, lo, hi), data, aux, li);
    __syncwarp();
}

// The same with the codec of the cache's part known at run time (FMT < 0), or from a GPU format.
template <int FMT>
__device__ void kv_store_row(const KVCache &kv, int part, int layer, int head, int pos, float *src) {
    if constexpr (FMT >= 0) {
        if (part) kv_store_row_c<Codecs<FMT>::v>(kv, part, layer, head, pos, src);
        else kv_store_row_c<Codecs<FMT>::k>(kv, part, layer, head, pos, src);
        return;
    } else {
        switch (kv.codec[part]) {
        case KVC_F16: kv_store_row_c<KVC_F16>(kv, part, layer, head, pos, src); break;
        case KVC_Q8: kv_store_row_c<KVC_Q8>(kv, part, layer, head, pos, src); break;
        case KVC_Q4: kv_store_row_c<KVC_Q4>(kv, part, layer, head, pos, src); break;
        case KVC_Q4H: kv_store_row_c<KVC_Q4H>(kv, part, layer, head, pos, src); break;
        default: kv_store_row_c<KVC_BF16>(kv, part, layer, head, pos, src); break;
        }
    }
}

// The wide channel slot s's stored value in a K row.
__device__ __forceinline__ float kv_wide_value(const KVCache &kv, int layer, int head, int pos, int s) {
    return __ldcg((const float *)(kv_aux_at(&kv, 0, layer, head, pos) + kv_wide_offset(kv.codec[0], kv.head_dim)) + s);
}

#endif
