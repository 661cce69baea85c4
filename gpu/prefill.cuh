// Prefill kernels (T tokens of a chunk; activations row-major [T][...]): embedding rows, residual add
// + RMSNorm into the bf16 hi/lo GEMM operands, the QKV finish, SiLU * up, and a tiled causal attention
// that reads the cache in its format. The GEMMs themselves are cuBLAS (kernels.cu).
#ifndef NANO_GPU_PREFILL_CUH
#define NANO_GPU_PREFILL_CUH

__global__ void kernel_embed(const uint16_t *embed, const int *ids, int H, float *x) {
    const uint16_t *row = embed + (size_t)ids[blockIdx.x] * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x) x[(size_t)blockIdx.x * H + i] = bf16_to_f32(row[i]);
}

// Row t (one block of up to 1024 threads): x += proj (its hi products + lo products, + bias) when proj
// is given, then RMSNorm into bf16 hi/lo.
__global__ void kernel_add_norm(float *x, const float *proj, const float *proj_lo, const float *bias, const float *w, int H, float eps,
                                uint16_t *hi, uint16_t *lo) {
    __shared__ float red[32];
    float *xr = x + (size_t)blockIdx.x * H;
    float ss = 0;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        float v = xr[i];
        if (proj) {
            float pv = proj[(size_t)blockIdx.x * H + i] + proj_lo[(size_t)blockIdx.x * H + i];
            if (bias) pv += bias[i];
            v += pv;
            xr[i] = v;
        }
        ss += v * v;
    }
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    float t = 0;
    for (int k = 0; k < (int)(blockDim.x >> 5); k++) t += red[k];
    float inv = 1.0f / sqrtf(t / H + eps);
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        size_t o = (size_t)blockIdx.x * H + i;
        bf16_split(w[i] * (xr[i] * inv), hi + o, lo + o);
    }
}

// One warp per (token, head) of [Wq;Wk;Wv]'s output: token t at position pos + t of kv.
__global__ void kernel_qkv_finish(Dims d, const DevLayer *layers, int layer, const float *inv_freq, const KVCache kv,
                                  const float *raw, const float *raw_lo, int pos, int T, float *q) {
    extern __shared__ float fs[];
    int warp = threadIdx.x >> 5, h = blockIdx.y * (blockDim.x >> 5) + warp, t = blockIdx.x;
    if (h >= d.NH || t >= T) return;
    finish_head<-1>(d, layers[layer], inv_freq, kv, raw + (size_t)t * d.NQKV, raw_lo + (size_t)t * d.NQKV, h, layer, pos + t,
                    q + (size_t)t * d.QD, fs + warp * d.D);
}

// x[0..n) += x[n..2n): a GEMM's hi products and lo products summed.
__global__ void kernel_add_halves(float *x, size_t n) {
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) x[k] += x[n + k];
}


// gate/up [T][2I] (hi products + lo products) -> SiLU(gate) * up [T][I] as bf16 hi/lo.
__global__ void kernel_silu(const float *gu, const float *gu_lo, int I, int T, uint16_t *hi, uint16_t *lo) {
    size_t n = (size_t)T * I;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        size_t t = k / I, i = k % I, g = t * 2 * I + i;
        float v = silu(gu[g] + gu_lo[g]) * (gu[g + I] + gu_lo[g + I]);
        bf16_split(v, hi + k, lo + k);
    }
}

// Causal attention for a chunk: block (q head, tile of 64 queries), 256 threads as 16 x 16; key tiles
// of 64 from the cache; scores and output in fp32 with an online softmax. Thread (ty, tx) owns query
// rows ty + 16a and key columns tx + 16b. Output: bf16 hi/lo [T][Hq*D] for the o_proj GEMM.
#define PQ 64
#define PK 64

// Rows k0 .. k0 + PK - 1 of part (0: K, 1: V) of kv head g as fp32 into KV[PK][D + 1] (0 past
// n_keys), wide channels included; ends with a CTA barrier. C: the part's codec.
template <int D, KVCodec C>
__device__ void load_tile_c(const KVCache &kv, int part, int layer, int g, int k0, int n_keys, float *KV) {
    constexpr int DP = D + 1;
    const uint8_t *data = kv_data_at(&kv, part, layer, g, 0), *aux = kv_aux_at(&kv, part, layer, g, 0);
    const size_t db = kv_data_bytes(C, D), ab = kv_aux_bytes(C, D, kv_part_wide(&kv, part));
    for (int i = threadIdx.x; i < PK * (D / 8); i += 256) {
        int r = i / (D / 8), li = i % (D / 8), j = k0 + r;
        float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (j < n_keys) kv_unpack8(C, kv_fetch8(C, data + j * db, aux + j * ab, li), f);
#pragma unroll
        for (int e = 0; e < 8; e++) KV[r * DP + li * 8 + e] = f[e];
    }
    __syncthreads();
    const int n_wide = kv_part_wide(&kv, part);
    if (!n_wide) return;
    const int16_t *wide = kv_wide_at(&kv, part, layer, g);
    for (int i = threadIdx.x; i < PK * n_wide; i += 256) {
        int r = i / n_wide, s = i % n_wide, j = k0 + r;
        if (j < n_keys && wide[s] >= 0) KV[r * DP + wide[s]] += kv_wide_value(kv, layer, g, j, s);
    }
    __syncthreads();
}

template <int D>
__device__ void load_tile(const KVCache &kv, int part, int layer, int g, int k0, int n_keys, float *KV) {
    switch (kv.codec[part]) {
    case KVC_F16: load_tile_c<D, KVC_F16>(kv, part, layer, g, k0, n_keys, KV); break;
    case KVC_Q8: load_tile_c<D, KVC_Q8>(kv, part, layer, g, k0, n_keys, KV); break;
    case KVC_Q4: load_tile_c<D, KVC_Q4>(kv, part, layer, g, k0, n_keys, KV); break;
    case KVC_Q4H: load_tile_c<D, KVC_Q4H>(kv, part, layer, g, k0, n_keys, KV); break;  // rotated, as q is
    default: load_tile_c<D, KVC_BF16>(kv, part, layer, g, k0, n_keys, KV); break;
    }
}

template <int D>
__global__ void __launch_bounds__(256) kernel_attn_prefill(Dims d, const float *q, const KVCache kv, int layer, int pos, int T,
                                                           uint16_t *out_hi, uint16_t *out_lo) {
    constexpr int DP = D + 1, DC = D / 16;
    extern __shared__ float sa[];
    float *Qs = sa, *KV = Qs + PQ * DP, *Ps = KV + PK * DP;  // [PQ][DP] [PK][DP] [PQ][PK+1]
    const int h = blockIdx.x, t0 = blockIdx.y * PQ, g = h / d.gs;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const float qscale = rsqrtf((float)D) * 1.4426950408889634f;

    for (int i = tid; i < PQ * D; i += 256) {
        int r = i / D, c = i % D, t = t0 + r;
        Qs[r * DP + c] = t < T ? q[((size_t)t * d.Hq + h) * D + c] * qscale : 0.0f;
    }
    float m[4], l[4], acc[4][DC];
#pragma unroll
    for (int a = 0; a < 4; a++) {
        m[a] = -INFINITY, l[a] = 0;
#pragma unroll
        for (int c = 0; c < DC; c++) acc[a][c] = 0;
    }
    const int n_keys = pos + min(T, t0 + PQ);  // keys 0 .. last query position of the tile
    for (int k0 = 0; k0 < n_keys; k0 += PK) {
        __syncthreads();
        load_tile<D>(kv, 0, layer, g, k0, n_keys, KV);
        float s[4][4];
#pragma unroll
        for (int a = 0; a < 4; a++)
#pragma unroll
            for (int b = 0; b < 4; b++) s[a][b] = 0;
        for (int c = 0; c < D; c++) {
            float qv[4], kv[4];
#pragma unroll
            for (int a = 0; a < 4; a++) qv[a] = Qs[(ty + 16 * a) * DP + c];
#pragma unroll
            for (int b = 0; b < 4; b++) kv[b] = KV[(tx + 16 * b) * DP + c];
#pragma unroll
            for (int a = 0; a < 4; a++)
#pragma unroll
                for (int b = 0; b < 4; b++) s[a][b] = fmaf(qv[a], kv[b], s[a][b]);
        }
#pragma unroll
        for (int a = 0; a < 4; a++) {
            int qpos = pos + t0 + ty + 16 * a;
            float mx = -INFINITY;
#pragma unroll
            for (int b = 0; b < 4; b++) {
                if (k0 + tx + 16 * b > qpos) s[a][b] = -INFINITY;
                mx = fmaxf(mx, s[a][b]);
            }
            for (int o = 8; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            float mn = fmaxf(m[a], mx);
            float cf = m[a] == -INFINITY ? 0.0f : exp2f(m[a] - mn), rs = 0;
#pragma unroll
            for (int b = 0; b < 4; b++) {
                float pv = s[a][b] == -INFINITY ? 0.0f : exp2f(s[a][b] - mn);
                rs += pv;
                Ps[(ty + 16 * a) * (PK + 1) + tx + 16 * b] = pv;
            }
            for (int o = 8; o; o >>= 1) rs += __shfl_xor_sync(0xffffffffu, rs, o);
            l[a] = l[a] * cf + rs;
            m[a] = mn;
#pragma unroll
            for (int c = 0; c < DC; c++) acc[a][c] *= cf;
        }
        __syncthreads();
        load_tile<D>(kv, 1, layer, g, k0, n_keys, KV);
        for (int j = 0; j < PK; j++) {
            float pa[4];
#pragma unroll
            for (int a = 0; a < 4; a++) pa[a] = Ps[(ty + 16 * a) * (PK + 1) + j];
#pragma unroll
            for (int c = 0; c < DC; c++) {
                float v = KV[j * DP + tx + 16 * c];
#pragma unroll
                for (int a = 0; a < 4; a++) acc[a][c] = fmaf(pa[a], v, acc[a][c]);
            }
        }
    }
#pragma unroll
    for (int a = 0; a < 4; a++) {
        int t = t0 + ty + 16 * a;
        if (t >= T) continue;
        float inv = 1.0f / l[a];
#pragma unroll
        for (int c = 0; c < DC; c++) {
            size_t o = ((size_t)t * d.Hq + h) * D + tx + 16 * c;
            bf16_split(acc[a][c] * inv, out_hi + o, out_lo + o);
        }
    }
}

static size_t attn_prefill_smem(int D) { return sizeof(float) * ((size_t)PQ * (D + 1) + (size_t)PK * (D + 1) + PQ * (PK + 1)); }

#endif
