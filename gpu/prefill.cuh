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

// ---------------------------------------------------------------------------------------------
// The same attention on tensor cores, for f16 and bf16 caches and head_dim 32, 64 or 128: the same
// blocks (a q head and 64 queries, key tiles of 64), the products on mma.sync m16n8k16 with fp32
// accumulation. K and V enter as stored (the cache's own 16-bit type, wide channels added in fp32);
// q and the softmax weights enter as a 16-bit high part and the 16-bit remainder, both multiplied, so
// they keep ~22 (f16) or ~16 (bf16) bits, as the GEMMs' hi/lo operands do. A group of 4 warps takes
// every G-th key tile (G = blockDim.x / 128: 2 when there are no more blocks than SMs, so that each
// SM still has 8 warps to hide the mma latency), its warp w queries 16w .. 16w + 15; the
// groups' results are merged in a fixed order at the end. Each group copies its next K and V tiles
// into shared memory (cp.async) during this one.
#define MQ 64
#define MK 64
#define MMA_GROUP 128     // threads of a group
#define MMA_MAX_GROUPS 2  // (group_sync names one barrier for each)

// Two elements as a 16-bit pair (f16 when F16, else bf16), the lower-indexed one in the low half.
template <bool F16> __device__ __forceinline__ uint32_t pack16(float lo, float hi) {
    uint32_t r;
    if constexpr (F16) asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    else asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <bool F16> __device__ __forceinline__ float unpack16(uint32_t r, int upper) {
    uint16_t h = (uint16_t)(upper ? r >> 16 : r);
    if constexpr (F16) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
        return f;
    } else {
        return bf16_to_f32(h);
    }
}
// (a, b) as the pair hi and the pair of what hi leaves over, lo.
template <bool F16> __device__ __forceinline__ void split16(float a, float b, uint32_t &hi, uint32_t &lo) {
    hi = pack16<F16>(a, b);
    lo = pack16<F16>(a - unpack16<F16>(hi, 0), b - unpack16<F16>(hi, 1));
}
// c += a . b for a 16 x 16 A fragment and a 16 x 8 B fragment (PTX's m16n8k16 layouts).
template <bool F16> __device__ __forceinline__ void mma16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    if constexpr (F16)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Four 8 x 8 matrices of 16-bit elements from shared memory, transposed (lane i gives row i's address).
__device__ __forceinline__ void ldmatrix_x4_trans(const void *row, uint32_t *r) {
    unsigned a = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
// Asynchronous copies into shared memory of n = 16 or 4 bytes, zeros when !valid.
template <int N> __device__ __forceinline__ void cp_async(void *dst, const void *src, bool valid) {
    unsigned a = (unsigned)__cvta_generic_to_shared(dst);
    if constexpr (N == 16) asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(a), "l"(src), "r"(valid ? 16 : 0));
    else asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(a), "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

// Shared memory of one group: two buffers of K, V and K's wide channels.
template <int D> __host__ __device__ constexpr size_t attn_mma_smem() {
    return 2 * (2 * (size_t)MK * (D + 8) * 2) + 2 * (size_t)MK * KV_MAX_WIDE * 4;
}

template <int D, int FMT>
__global__ void __launch_bounds__(MMA_GROUP * MMA_MAX_GROUPS) kernel_attn_prefill_mma(Dims d, const float *q, const KVCache kv, int layer,
                                                                                      int pos, int T, uint16_t *out_hi, uint16_t *out_lo) {
    constexpr bool F16 = FMT == KV_F16;
    constexpr int RS = D + 8;             // a tile row in elements: 16 bytes of padding keep the banks apart
    constexpr int KS = D / 16, NS = D / 8;  // k-steps over head_dim, output column tiles
    extern __shared__ float4 smem_mma[];
    const int G = blockDim.x / MMA_GROUP, grp = threadIdx.x / MMA_GROUP, gt = threadIdx.x % MMA_GROUP;
    uint16_t *Ks = (uint16_t *)((char *)smem_mma + grp * attn_mma_smem<D>()), *Vs = Ks + 2 * MK * RS;  // [2][MK][RS]
    float *Kw = (float *)(Vs + 2 * MK * RS);                                                          // [2][MK][KV_MAX_WIDE]
    const int h = blockIdx.x, g = h / d.gs, t0 = blockIdx.y * MQ, n_wide = kv.n_wide;
    const int warp = gt >> 5, lane = threadIdx.x & 31, r = lane >> 2, c2 = (lane & 3) * 2;
    const float qscale = rsqrtf((float)D) * 1.4426950408889634f;

    // This thread's queries: rows r and r + 8 of its warp's 16 (a and b); as A fragments, hi and lo.
    const int ta = t0 + warp * 16 + r, tb = ta + 8;
    const float *qa = q + ((size_t)ta * d.Hq + h) * D, *qb = q + ((size_t)tb * d.Hq + h) * D;
    uint32_t qh[KS][4], ql[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++)
#pragma unroll
        for (int f = 0; f < 4; f++) {  // f: (row a, cols c2), (b, c2), (a, c2 + 8), (b, c2 + 8)
            const float *row = f & 1 ? qb : qa;
            const bool in = (f & 1 ? tb : ta) < T;
            float2 v = in ? *(const float2 *)(row + 16 * ks + c2 + (f & 2) * 4) : make_float2(0, 0);
            split16<F16>(v.x * qscale, v.y * qscale, qh[ks][f], ql[ks][f]);
        }
    const int16_t *wide = kv_wide_at(&kv, 0, layer, g);
    float qwa[KV_MAX_WIDE], qwb[KV_MAX_WIDE];  // q at the wide channels (0 for an unused slot)
#pragma unroll
    for (int s = 0; s < KV_MAX_WIDE; s++) {
        int ch = s < n_wide ? wide[s] : -1;
        qwa[s] = ch >= 0 && ta < T ? qa[ch] * qscale : 0.0f;
        qwb[s] = ch >= 0 && tb < T ? qb[ch] * qscale : 0.0f;
    }

    const int n_keys = pos + min(T, t0 + MQ), n_tiles = (n_keys + MK - 1) / MK;  // keys 0 .. the last query's position
    const uint8_t *kd = kv_data_at(&kv, 0, layer, g, 0), *vd = kv_data_at(&kv, 1, layer, g, 0);
    const uint8_t *kw = kv_aux_at(&kv, 0, layer, g, 0) + kv_wide_offset(kv.codec[0], D);
    const size_t aux_bytes = kv_row_bytes(&kv, 0, 1);
    auto load = [&](int kt, int buf) {  // tile kt into buffer buf, rows past n_keys zero
        for (int i = gt; i < MK * (D / 8); i += MMA_GROUP) {
            int row = i / (D / 8), ch = i % (D / 8), j = kt * MK + row;
            size_t src = (size_t)(j < n_keys ? j : 0) * D * 2 + ch * 16, dst = (size_t)(buf * MK + row) * RS + ch * 8;
            cp_async<16>(Ks + dst, kd + src, j < n_keys);
            cp_async<16>(Vs + dst, vd + src, j < n_keys);
        }
        for (int i = gt; i < MK * n_wide; i += MMA_GROUP) {
            int row = i / n_wide, s = i % n_wide, j = kt * MK + row;
            cp_async<4>(Kw + (buf * MK + row) * KV_MAX_WIDE + s, kw + (size_t)(j < n_keys ? j : 0) * aux_bytes + 4 * s, j < n_keys);
        }
        cp_async_commit();
    };

    float o[NS][4], ma = -INFINITY, mb = -INFINITY, la = 0, lb = 0;
#pragma unroll
    for (int n = 0; n < NS; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0;
    // The group's own barrier (named barrier 1 + grp): the groups take different numbers of tiles.
    auto group_sync = [&]() {
        if (grp) asm volatile("bar.sync 2, %0;" ::"n"(MMA_GROUP));
        else asm volatile("bar.sync 1, %0;" ::"n"(MMA_GROUP));
    };
    if (grp < n_tiles) load(grp, 0);
    for (int kt = grp, buf = 0; kt < n_tiles; kt += G, buf ^= 1) {
        const int k0 = kt * MK;
        if (kt + G < n_tiles) load(kt + G, buf ^ 1), cp_async_wait<1>();
        else cp_async_wait<0>();
        group_sync();
        const uint16_t *Kt = Ks + (size_t)buf * MK * RS, *Vt = Vs + (size_t)buf * MK * RS;
        const float *Wt = Kw + buf * MK * KV_MAX_WIDE;

        // Scores of 8 key columns at a time: s[n] holds (a, key 8n + c2 + e) at e and (b, ...) at 2 + e.
        float s[MK / 8][4];
#pragma unroll
        for (int n = 0; n < MK / 8; n++) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0;
            const uint16_t *krow = Kt + (8 * n + r) * RS + c2;
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                uint32_t b0 = *(const uint32_t *)(krow + 16 * ks), b1 = *(const uint32_t *)(krow + 16 * ks + 8);
                mma16816<F16>(s[n], qh[ks], b0, b1);
                mma16816<F16>(s[n], ql[ks], b0, b1);
            }
        }
        float mxa = ma, mxb = mb;
#pragma unroll
        for (int n = 0; n < MK / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int key = 8 * n + c2 + e, j = k0 + key;
#pragma unroll
                for (int w = 0; w < KV_MAX_WIDE; w++)
                    if (w < n_wide) {
                        float kv_w = Wt[key * KV_MAX_WIDE + w];
                        s[n][e] = fmaf(qwa[w], kv_w, s[n][e]);
                        s[n][2 + e] = fmaf(qwb[w], kv_w, s[n][2 + e]);
                    }
                if (j > pos + ta) s[n][e] = -INFINITY;
                if (j > pos + tb) s[n][2 + e] = -INFINITY;
                mxa = fmaxf(mxa, s[n][e]), mxb = fmaxf(mxb, s[n][2 + e]);
            }
        for (int x = 1; x < 4; x <<= 1) {
            mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, x));
            mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, x));
        }
        // A row whose keys so far are all in its future (a group's tiles need not start at key 0)
        // keeps max -inf; 0 stands in for it so that its weights come out 0, not NaN.
        const float ra = mxa == -INFINITY ? 0.0f : mxa, rb = mxb == -INFINITY ? 0.0f : mxb;
        const float ca = exp2f(ma - ra), cb = exp2f(mb - rb);
        ma = mxa, mb = mxb, la *= ca, lb *= cb;
#pragma unroll
        for (int n = 0; n < NS; n++) o[n][0] *= ca, o[n][1] *= ca, o[n][2] *= cb, o[n][3] *= cb;
#pragma unroll
        for (int n = 0; n < MK / 8; n++) {
            s[n][0] = exp2f(s[n][0] - ra), s[n][1] = exp2f(s[n][1] - ra);
            s[n][2] = exp2f(s[n][2] - rb), s[n][3] = exp2f(s[n][3] - rb);
            la += s[n][0] + s[n][1], lb += s[n][2] + s[n][3];
        }
        // o += p . V, 16 keys a step: the scores' fragments are the A fragments of p.
#pragma unroll
        for (int kk = 0; kk < MK / 16; kk++) {
            uint32_t ph[4], pl[4];
            split16<F16>(s[2 * kk][0], s[2 * kk][1], ph[0], pl[0]);
            split16<F16>(s[2 * kk][2], s[2 * kk][3], ph[1], pl[1]);
            split16<F16>(s[2 * kk + 1][0], s[2 * kk + 1][1], ph[2], pl[2]);
            split16<F16>(s[2 * kk + 1][2], s[2 * kk + 1][3], ph[3], pl[3]);
#pragma unroll
            for (int n = 0; n < NS; n += 2) {
                uint32_t b[4];
                ldmatrix_x4_trans(Vt + (16 * kk + (lane & 15)) * RS + 8 * (n + (lane >> 4)), b);
                mma16816<F16>(o[n], ph, b[0], b[1]);
                mma16816<F16>(o[n], pl, b[0], b[1]);
                mma16816<F16>(o[n + 1], ph, b[2], b[3]);
                mma16816<F16>(o[n + 1], pl, b[2], b[3]);
            }
        }
        group_sync();  // the buffer is refilled next
    }
    for (int x = 1; x < 4; x <<= 1) la += __shfl_xor_sync(0xffffffffu, la, x), lb += __shfl_xor_sync(0xffffffffu, lb, x);
    // The other groups' (o, max, sum) through their own shared memory (their copies are done), merged
    // into group 0's in group order. Group 0 has key 0, so its maxima are finite.
    if (G > 1) {
        constexpr int W = NS * 4 + 4;  // floats a thread
        float *mine = (float *)Ks;
        if (grp > 0) {
#pragma unroll
            for (int n = 0; n < NS; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) mine[(n * 4 + e) * MMA_GROUP + gt] = o[n][e];
            mine[(W - 4) * MMA_GROUP + gt] = ma, mine[(W - 3) * MMA_GROUP + gt] = mb;
            mine[(W - 2) * MMA_GROUP + gt] = la, mine[(W - 1) * MMA_GROUP + gt] = lb;
        }
        __syncthreads();
        if (grp > 0) return;
        for (int k = 1; k < G; k++) {
            const float *other = (const float *)((const char *)smem_mma + k * attn_mma_smem<D>());
            const float oma = other[(W - 4) * MMA_GROUP + gt], omb = other[(W - 3) * MMA_GROUP + gt];
            const float na = fmaxf(ma, oma), nb = fmaxf(mb, omb);
            const float ca = exp2f(ma - na), cb = exp2f(mb - nb), oa = exp2f(oma - na), ob = exp2f(omb - nb);
#pragma unroll
            for (int n = 0; n < NS; n++) {
                o[n][0] = o[n][0] * ca + other[(n * 4 + 0) * MMA_GROUP + gt] * oa;
                o[n][1] = o[n][1] * ca + other[(n * 4 + 1) * MMA_GROUP + gt] * oa;
                o[n][2] = o[n][2] * cb + other[(n * 4 + 2) * MMA_GROUP + gt] * ob;
                o[n][3] = o[n][3] * cb + other[(n * 4 + 3) * MMA_GROUP + gt] * ob;
            }
            la = la * ca + other[(W - 2) * MMA_GROUP + gt] * oa, lb = lb * cb + other[(W - 1) * MMA_GROUP + gt] * ob;
            ma = na, mb = nb;
        }
    }
    const float ia = 1.0f / la, ib = 1.0f / lb;
#pragma unroll
    for (int n = 0; n < NS; n++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int col = 8 * n + c2 + e;
            if (ta < T) {
                size_t k = ((size_t)ta * d.Hq + h) * D + col;
                bf16_split(o[n][e] * ia, out_hi + k, out_lo + k);
            }
            if (tb < T) {
                size_t k = ((size_t)tb * d.Hq + h) * D + col;
                bf16_split(o[n][2 + e] * ib, out_hi + k, out_lo + k);
            }
        }
}

#endif
