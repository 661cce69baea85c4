// The end of the fused RMSNorm-QKV stage, per head: bias, Qwen3's q/k norm, RoPE, and K/V into the
// cache. The decode kernel and the prefill path both finish heads with it.
#ifndef NANO_GPU_QKV_CUH
#define NANO_GPU_QKV_CUH

// One head of the QKV output, by one warp: bias, then for q and k the per-head RMSNorm (Qwen3) and
// RoPE; q goes to q_out (fp32), k and v into the cache at pos in its format. raw: the token's [NQKV]
// projections (raw_lo: the prefill GEMM's lo products, added; NULL in decode); scratch: D floats of
// shared memory for this warp. Shared by the decode kernel and the prefill path. FMT: the cache's
// format (a GPU format), or -1 for the one in kv.
template <int FMT>
__device__ void finish_head(const Dims &d, const DevLayer &w, const float *inv_freq, const KVCache &kv, const float *raw,
                            const float *raw_lo, int h, int layer, int pos, float *q_out, float *scratch) {
    const int D = d.D, lane = threadIdx.x & 31;
    bool rotated;  // the cache's keys are Hadamard-rotated
    if constexpr (FMT >= 0) rotated = Codecs<FMT>::k == KVC_Q4H;
    else rotated = kv_rotated(&kv);
    const float *b = w.bqkv ? w.bqkv + (size_t)h * D : NULL;
    for (int i = lane; i < D; i += 32) {
        float v = __ldcg(raw + (size_t)h * D + i);
        if (raw_lo) v += raw_lo[(size_t)h * D + i];
        scratch[i] = v + (b ? b[i] : 0.0f);
    }
    __syncwarp();
    int kind = h < d.Hq ? 0 : h < d.Hq + d.Hkv ? 1 : 2;
    if (kind == 2) {
        kv_store_row<FMT>(kv, 1, layer, h - d.Hq - d.Hkv, pos, scratch);
        return;
    }
    const float *nw = kind == 0 ? w.q_norm : w.k_norm;
    if (nw) {
        float ss = 0;
        for (int i = lane; i < D; i += 32) ss += scratch[i] * scratch[i];
        ss = warp_sum(ss);
        float inv = 1.0f / sqrtf(ss / D + d.eps);
        __syncwarp();
        for (int i = lane; i < D; i += 32) scratch[i] = nw[i] * (scratch[i] * inv);
        __syncwarp();
    }
    int half = D / 2;
    for (int i = lane; i < half; i += 32) {
        float f = (float)pos * inv_freq[i];
        float c = cosf(f) * d.rope_scale, s = sinf(f) * d.rope_scale;
        float a = scratch[i], bb = scratch[i + half];
        float y0 = a * c - bb * s, y1 = bb * c + a * s;
        if (kind == 0 && !rotated) {
            q_out[(size_t)h * D + i] = y0;
            q_out[(size_t)h * D + i + half] = y1;
        } else {
            scratch[i] = y0;  // each lane reads and writes only its own pair
            scratch[i + half] = y1;
        }
    }
    __syncwarp();
    if (kind == 1) kv_store_row<FMT>(kv, 0, layer, h - d.Hq, pos, scratch);
    if (kind == 0 && rotated) {  // keys rotated in the cache: q . K = (H q) . (H k)
        warp_hadamard(scratch, D);
        for (int i = lane; i < D; i += 32) q_out[(size_t)h * D + i] = scratch[i];
        __syncwarp();
    }
}

#endif
