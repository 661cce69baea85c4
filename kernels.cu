// GPU engine: bf16 weights and a bf16 KV cache on one CUDA device, fp32 activations and sums.
//
// Decode (one token) is kernel_decode: one cooperative launch per token that runs every layer, its
// stages separated by a grid barrier (grid = SMs x occupancy, 512 threads a block):
//   QKV   residual (+ pending slot sums) -> RMSNorm -> GEMV over the rows of [Wq;Wk;Wv] (+ bias); the
//         last block to finish a head applies q_norm/k_norm and RoPE and writes q, or K/V into the cache
//   ATT   units of (kv head, KV chunk), each serving every q head of its GQA group, so K and V are read
//         once; fp32 online softmax; the last unit of a kv head merges the chunks by log-sum-exp in
//         chunk order
//   WO    o_proj with its reduction split into wo_split slices, one slot each
//   MLP   residual += slots in slot order (+ o bias); RMSNorm; gate/up GEMV; SiLU(gate) * up
//   DOWN  down_proj into slots; the next stage adds them in slot order
// then final RMSNorm + lm_head with a per-block argmax, and (greedy) a last barrier for the pick.
// Prefill (a chunk of tokens) runs cuBLAS bf16 GEMMs on activations split into bf16 hi + lo parts (so
// the products keep ~16 mantissa bits) and kernel_attn_prefill, a tiled causal attention in fp32.
// Nothing is summed with atomics: a run repeats bit for bit for a given grid size and wo_split.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>

#include <algorithm>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "nano.h"
}

// ---------------------------------------------------------------------------------------------
// Checks: every CUDA call and launch; a failure is one line naming the call or kernel, exit status 1.

static void cuda_ok(cudaError_t e, const char *what, const char *file, int line) {
    if (e != cudaSuccess) fatal("CUDA error in %s (%s:%d): %s", what, file, line, cudaGetErrorString(e));
}
#define CUDA_CHECK(call, what) cuda_ok((call), (what), __FILE__, __LINE__)
#define LAUNCH_CHECK(kernel) cuda_ok(cudaGetLastError(), "launch of " kernel, __FILE__, __LINE__)

static void blas_ok(cublasStatus_t s, const char *what, const char *file, int line) {
    if (s != CUBLAS_STATUS_SUCCESS) fatal("cuBLAS error in %s (%s:%d): status %d", what, file, line, (int)s);
}
#define BLAS_CHECK(call, what) blas_ok((call), (what), __FILE__, __LINE__)

extern "C" int cuda_device_count(char *why, size_t whylen) {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        snprintf(why, whylen, "%s", cudaGetErrorString(err));
        return 0;
    }
    if (n == 0) snprintf(why, whylen, "no CUDA device found");
    return n;
}

// ---------------------------------------------------------------------------------------------
// Shapes, per-layer weights on the device, and the decode kernel's parameters

#define NT 512          // threads of a decode block
#define NW (NT / 32)    // warps of a decode block
#define MAX_SPLIT 8     // most slots of a split reduction
#define MAX_FIN 64      // most heads one block can finish in the QKV stage
#define GU 4            // 16-byte weight loads in flight per row and lane in the GEMV

struct Dims {
    int H, I, L, Hq, Hkv, D, V, QD, KVD, NQKV, NH, gs, cap;  // NH = Hq + 2 Hkv heads in [Wq;Wk;Wv]
    float eps, rope_scale;
};

struct DevLayer {
    const uint16_t *wqkv;           // [NQKV, H]   q rows, then k, then v
    const uint16_t *wo;             // [H, QD]
    const uint16_t *wgu;            // [2I, H]     gate rows, then up
    const uint16_t *wd;             // [H, I]
    const float *in_norm, *post_norm;  // [H]
    const float *bqkv;              // [NQKV] or NULL
    const float *bo;                // [H] or NULL
    const float *q_norm, *k_norm;   // [D] or NULL
};

enum { ST_QKV = 1, ST_ATT = 2, ST_WO = 4, ST_MLP = 8, ST_DOWN = 16, ST_ALL = 31 };
enum {
    F_EMBED = 1,    // start from the token's embedding row (else from the residual buffer x[0])
    F_FINAL = 2,    // final norm + lm_head into logits
    F_ARGMAX = 4,   // greedy pick into state[0] (and trace[pos])
    F_CHAIN = 8,    // token and position come from state[0], state[1]; the pick advances them
    F_FLUSH = 16,   // at the end, store the residual (pending slots added) into x[0]
    F_PREFETCH = 32,  // before each barrier of a whole step, prefetch the next stage's first weights
};

struct DecodeParams {
    Dims d;
    const DevLayer *layers;
    const uint16_t *embed, *lm_head;
    const float *final_norm, *inv_freq;
    uint16_t *kc, *vc;      // KV cache [L][Hkv][cap][D]
    float *x;               // [2][H] residual, two buffers
    float *qkv;             // [NQKV] raw projections (no bias)
    float *q;               // [QD] query after q_norm and RoPE
    float *part;            // [Hkv][att_S][gq][D] unnormalized chunk outputs
    float *part_ml;         // [Hkv][att_S][gq][2] chunk max (log2 units) and sum
    float *o;               // [QD] attention output
    float *oslot;           // [wo_split][H]
    float *hbuf;            // [I] SiLU(gate) * up
    float *dslot;           // [down_split][H]
    float *logits;          // [V]
    float *best_val;        // [grid]
    int *best_idx;          // [grid]
    unsigned *bar;          // grid barrier word
    unsigned *tick;         // [NH] head tickets of QKV, then [Hkv] chunk tickets of ATT
    int *state;             // [0] token, [1] position (F_CHAIN)
    int *trace;             // [cap + 1] greedy picks by position, or NULL
    float *dbg;             // [L][2][H] residual after attention / after MLP, or NULL
    unsigned long long *timing;  // %globaltimer at the start and after each stage (block 0), or NULL
    int wo_split, down_split, att_S, gq;
    int token, pos, l0, l1, stages, flags;
};

// ---------------------------------------------------------------------------------------------
// Device helpers

__device__ __forceinline__ float bf16f(uint16_t h) { return __uint_as_float((unsigned)h << 16); }
__device__ __forceinline__ float bf_lo(unsigned u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf_hi(unsigned u) { return __uint_as_float(u & 0xffff0000u); }
__device__ __forceinline__ uint16_t f2bf(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Weights are read once per token: 16 bytes, read-only path, no L1 allocation.
__device__ __forceinline__ uint4 ld_stream(const uint16_t *p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}
// Data written earlier in the same launch by other blocks: L2 only (coherent).
__device__ __forceinline__ uint4 ld_l2(const uint16_t *p) { return __ldcg((const uint4 *)p); }

__device__ __forceinline__ float dot8(uint4 w, const float *x) {
    float4 a = *(const float4 *)x, b = *(const float4 *)(x + 4);
    float s = bf_lo(w.x) * a.x;
    s = fmaf(bf_hi(w.x), a.y, s);
    s = fmaf(bf_lo(w.y), a.z, s);
    s = fmaf(bf_hi(w.y), a.w, s);
    s = fmaf(bf_lo(w.z), b.x, s);
    s = fmaf(bf_hi(w.z), b.y, s);
    s = fmaf(bf_lo(w.w), b.z, s);
    s = fmaf(bf_hi(w.w), b.w, s);
    return s;
}

__device__ __forceinline__ void unpack8(uint4 u, float *f) {
    f[0] = bf_lo(u.x), f[1] = bf_hi(u.x), f[2] = bf_lo(u.y), f[3] = bf_hi(u.y);
    f[4] = bf_lo(u.z), f[5] = bf_hi(u.z), f[6] = bf_lo(u.w), f[7] = bf_hi(u.w);
}

__device__ __forceinline__ size_t kv_off(const Dims &d, int layer, int head, int pos) {
    return (((size_t)layer * d.Hkv + head) * d.cap + pos) * d.D;
}

// Grid barrier (the scheme of cooperative_groups' grid sync): block 0 adds 2^31 - (n - 1), the others
// 1, so the top bit of the word flips once all n blocks have arrived. The CTA barrier first orders
// every thread's stores before thread 0's release.
__device__ __forceinline__ void grid_sync(unsigned *bar) {
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned add = blockIdx.x == 0 ? 0x80000000u - (gridDim.x - 1) : 1u;
        __threadfence();
        unsigned old = atomicAdd(bar, add), now;
        do {
            asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(now) : "l"(bar) : "memory");
        } while (((old ^ now) & 0x80000000u) == 0);
        __threadfence();
    }
    __syncthreads();
}

// Sum over the block in a fixed order; red holds NW floats. Every thread gets the total.
__device__ float block_sum(float v, float *red) {
    v = warp_sum(v);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = 0;
    for (int w = 0; w < NW; w++) t += red[w];
    __syncthreads();
    return t;
}

// In place over xs[0..n): w * (x / sqrt(mean(x^2) + eps)), as the reference's rmsnorm.
__device__ void rmsnorm_block(float *xs, const float *w, int n, float eps, float *red) {
    float ss = 0;
    for (int i = threadIdx.x; i < n; i += NT) ss += xs[i] * xs[i];
    ss = block_sum(ss, red);
    float inv = 1.0f / sqrtf(ss / n + eps);
    for (int i = threadIdx.x; i < n; i += NT) xs[i] = w[i] * (xs[i] * inv);
    __syncthreads();
}

// One head of the QKV output, by one warp: bias, then for q and k the per-head RMSNorm (Qwen3) and
// RoPE; q goes to q_out (fp32), k and v into the cache at pos. raw: the token's [NQKV] projections.
// Shared by the decode kernel and the prefill path.
__device__ void finish_head(const Dims &d, const DevLayer &w, const float *inv_freq, const float *raw, int h, int layer,
                            int pos, float *q_out, uint16_t *kc, uint16_t *vc, float *scratch) {
    const int D = d.D, lane = threadIdx.x & 31;
    const float *b = w.bqkv ? w.bqkv + (size_t)h * D : NULL;
    for (int i = lane; i < D; i += 32) scratch[i] = __ldcg(raw + (size_t)h * D + i) + (b ? b[i] : 0.0f);
    __syncwarp();
    int kind = h < d.Hq ? 0 : h < d.Hq + d.Hkv ? 1 : 2;
    if (kind == 2) {
        uint16_t *dst = vc + kv_off(d, layer, h - d.Hq - d.Hkv, pos);
        for (int i = lane; i < D; i += 32) dst[i] = f2bf(scratch[i]);
        __syncwarp();
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
        if (kind == 0) {
            q_out[(size_t)h * D + i] = y0;
            q_out[(size_t)h * D + i + half] = y1;
        } else {
            uint16_t *dst = kc + kv_off(d, layer, h - d.Hq, pos);
            dst[i] = f2bf(y0);
            dst[i + half] = f2bf(y1);
        }
    }
    __syncwarp();
}

// ---------------------------------------------------------------------------------------------
// GEMV: a warp per item of two rows (so 2 x GU 16-byte loads per lane are in flight), lanes striding
// the reduction 8 elements at a time, x in shared memory (fp32). Items are split into contiguous
// ranges per block; the warps of a block take every NW-th item. Weights do not depend on the grid
// barrier before a stage, so each warp issues its first item's first loads before it (a Pre).

struct Row {
    const uint16_t *w;  // weights of this row (slice)
    const float *x;     // matching x in shared memory
    int n;              // length, a multiple of 8; 0 for none
};

__device__ __forceinline__ void load_rows(const Row &a, const Row &b, int j, uint4 *wa, uint4 *wb) {
#pragma unroll
    for (int i = 0; i < GU; i++) {
        int k = j + i * 256;
        wa[i] = k < a.n ? ld_stream(a.w + k) : make_uint4(0, 0, 0, 0);
        wb[i] = k < b.n ? ld_stream(b.w + k) : make_uint4(0, 0, 0, 0);
    }
}

__device__ __forceinline__ void acc_rows(const Row &a, const Row &b, int j, const uint4 *wa, const uint4 *wb, float &sa, float &sb) {
#pragma unroll
    for (int i = 0; i < GU; i++) {
        int k = j + i * 256;
        if (k < a.n) sa += dot8(wa[i], a.x + k);
        if (k < b.n) sb += dot8(wb[i], b.x + k);
    }
}

// Both rows' dot products, reduced over the warp (every lane gets them).
__device__ __forceinline__ void dot_rows(const Row &a, const Row &b, float &ra, float &rb) {
    const int lane = threadIdx.x & 31, n = max(a.n, b.n);
    float sa = 0, sb = 0;
    for (int j = lane * 8; j < n; j += 256 * GU) {
        uint4 wa[GU], wb[GU];
        load_rows(a, b, j, wa, wb);
        acc_rows(a, b, j, wa, wb, sa, sb);
    }
    ra = warp_sum(sa);
    rb = warp_sum(sb);
}

// This block's share [range_begin(n), range_end(n)) of n items.
__device__ __forceinline__ int range_begin(int n) { return (int)((long long)n * blockIdx.x / gridDim.x); }
__device__ __forceinline__ int range_end(int n) { return (int)((long long)n * (blockIdx.x + 1) / gridDim.x); }

// Items of a matrix: map(item, a, b) gives an item's two rows.
// Rows 2 it and 2 it + 1 of an [N, K] matrix ([Wq;Wk;Wv], lm_head).
struct MapPairs {
    const uint16_t *w;
    const float *x;
    int N, K;
    __device__ int items() const { return (N + 1) / 2; }
    __device__ void operator()(int it, Row &a, Row &b) const {
        int r = 2 * it;
        a = Row{w + (size_t)r * K, x, K};
        b = Row{w + (size_t)(r + 1) * K, x, r + 1 < N ? K : 0};
    }
};
// Units u = row * split + slice of an [rows, K] matrix whose reduction is split into slices of ks
// (a multiple of 8); two units an item.
struct MapSplit {
    const uint16_t *w;
    const float *x;
    int rows, K, split, ks;
    __device__ MapSplit(const uint16_t *w_, const float *x_, int rows_, int K_, int split_)
        : w(w_), x(x_), rows(rows_), K(K_), split(split_), ks(((K_ + split_ - 1) / split_ + 7) / 8 * 8) {}
    __device__ int items() const { return (rows * split + 1) / 2; }
    __device__ Row unit(int u) const {
        int r = u / split, s = u % split, k0 = s * ks, k1 = min(K, k0 + ks);
        return Row{w + (size_t)r * K + k0, x + k0, k1 > k0 ? k1 - k0 : 0};
    }
    __device__ void operator()(int it, Row &a, Row &b) const {
        a = unit(2 * it);
        b = 2 * it + 1 < rows * split ? unit(2 * it + 1) : Row{a.w, a.x, 0};
    }
};
// Gate row i and up row i of [Wgate; Wup].
struct MapGateUp {
    const uint16_t *w;
    const float *x;
    int I, H;
    __device__ int items() const { return I; }
    __device__ void operator()(int i, Row &a, Row &b) const {
        a = Row{w + (size_t)i * H, x, H};
        b = Row{w + (size_t)(I + i) * H, x, H};
    }
};

// Before the barrier that precedes a stage: each warp asks L2 for the first 256 columns of its first
// item's rows, so that its first loads after the barrier need not wait for DRAM. (Holding them in
// registers across the barrier instead pushes the kernel past its 128 registers.)
__device__ __forceinline__ void prefetch_l2(const uint16_t *p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

template <class Map>
__device__ __forceinline__ void prefetch_first(const Map &map) {
    const int it = range_begin(map.items()) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (it >= range_end(map.items())) return;
    Row a, b;
    map(it, a, b);
    int k = lane * 8;
    if (k < a.n && lane % 8 == 0) prefetch_l2(a.w + k);  // one request per 128-byte line
    if (k < b.n && lane % 8 == 0) prefetch_l2(b.w + k);
}

// This block's items of map; emit(item, ra, rb) stores an item's results (lane 0 only).
template <class Map, class Emit>
__device__ __forceinline__ void gemv_items(const Map &map, Emit emit) {
    const int lane = threadIdx.x & 31, end = range_end(map.items());
    for (int it = range_begin(map.items()) + (threadIdx.x >> 5); it < end; it += NW) {
        Row a, b;
        map(it, a, b);
        float ra, rb;
        dot_rows(a, b, ra, rb);
        if (lane == 0) emit(it, ra, rb);
    }
}

// The residual into xs[0..H): the embedding row or x_in, plus slot sums (in slot order) plus bias;
// block 0 also stores it to x_out and dbg. Ends with a CTA barrier.
__device__ void gather_residual(const Dims &d, float *xs, const uint16_t *emb_row, const float *x_in, const float *slots,
                                int nslots, const float *bias, float *x_out, float *dbg) {
    for (int i = threadIdx.x; i < d.H; i += NT) {
        float v = emb_row ? bf16f(emb_row[i]) : __ldcg(x_in + i);
        if (slots) {
            float p = __ldcg(slots + i);
            for (int s = 1; s < nslots; s++) p += __ldcg(slots + (size_t)s * d.H + i);
            if (bias) p += bias[i];
            v += p;
        }
        xs[i] = v;
        if (blockIdx.x == 0) {
            x_out[i] = v;
            if (dbg) dbg[i] = v;
        }
    }
    __syncthreads();
}

// ---------------------------------------------------------------------------------------------
// Decode stages

__device__ __forceinline__ void stage_qkv(const DecodeParams &p, const DevLayer &w, int layer, int pos, float *xs, float *red, int *fin,
                          float *fscratch) {
    const Dims &d = p.d;
    rmsnorm_block(xs, w.in_norm, d.H, d.eps, red);
    MapPairs map{w.wqkv, xs, d.NQKV, d.H};
    float *qkv = p.qkv;
    const int N = d.NQKV;
    gemv_items(
        map,
        [&](int it, float ra, float rb) {
            qkv[2 * it] = ra;
            if (2 * it + 1 < N) qkv[2 * it + 1] = rb;
        });
    // Tickets: the block that completes a head's D rows finishes that head. The CTA barrier orders
    // every warp's stores before thread 0's fence and atomic.
    const int r0 = 2 * range_begin(map.items()), r1 = min(2 * range_end(map.items()), d.NQKV);
    __syncthreads();
    __shared__ int n_fin;
    if (threadIdx.x == 0) n_fin = 0;
    __syncthreads();
    // One thread per head this block touched, so the atomics are in flight together.
    const int h0 = r0 / d.D, nh = r1 > r0 ? (r1 - 1) / d.D - h0 + 1 : 0;
    if ((int)threadIdx.x < nh) {
        int h = h0 + threadIdx.x, lo = max(r0, h * d.D), hi = min(r1, (h + 1) * d.D);
        __threadfence();
        unsigned prev = atomicAdd(p.tick + h, (unsigned)(hi - lo));
        if (prev + (unsigned)(hi - lo) == (unsigned)d.D) {
            int k = atomicAdd(&n_fin, 1);
            if (k < MAX_FIN) fin[k] = h;
            p.tick[h] = 0;
            __threadfence();
        }
    }
    __syncthreads();
    const int warp = threadIdx.x >> 5;
    for (int k = warp; k < min(n_fin, MAX_FIN); k += NW)
        finish_head(d, w, p.inv_freq, p.qkv, fin[k], layer, pos, p.q, p.kc, p.vc, fscratch + warp * d.D);
}

// One (kv head g, chunk c) unit of attention over positions [c*CL, min(n, (c+1)*CL)).
// HP: q heads per lane (1, 2 or 4); the group's heads are spread over ceil(gs / HP) sets of warps.
// A single chunk writes the output itself; otherwise the last chunk of the kv head to finish merges.
template <int HP>
__device__ void attention_unit(const DecodeParams &p, int layer, int g, int c, int CL, int n, int n_chunks, float *sm) {
    constexpr int UA = HP >= 4 ? 2 : HP == 2 ? 4 : 8;  // positions in flight per lane group (registers permitting)
    const Dims &d = p.d;
    const int D = d.D, LG = D >> 3, GPW = 32 / LG;
    const int nhs = (d.gs + HP - 1) / HP, wps = NW / nhs;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int set = warp / wps, wis = warp % wps, li = lane % LG, lg = lane / LG;
    const bool act = set < nhs;
    const int c0 = c * CL, c1 = min(n, c0 + CL);
    const size_t base = kv_off(d, layer, g, 0);
    const uint16_t *K = p.kc + base, *V = p.vc + base;
    const float qscale = rsqrtf((float)D) * 1.4426950408889634f;  // scores in log2 units

    float qr[HP][8], acc[HP][8], m[HP], l[HP];
#pragma unroll
    for (int h = 0; h < HP; h++) {
        int gh = set * HP + h;
        bool ok = act && gh < d.gs;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            qr[h][e] = ok ? __ldcg(p.q + (size_t)(g * d.gs + gh) * D + li * 8 + e) * qscale : 0.0f;
            acc[h][e] = 0;
        }
        m[h] = -INFINITY;
        l[h] = 0;
    }
    __syncthreads();  // smem of the previous unit is free
    if (act) {
        const int step = wps * GPW;
        for (int jb = c0 + wis * GPW; jb < c1; jb += step * UA) {
            uint4 kr[UA], vr[UA];
#pragma unroll
            for (int a = 0; a < UA; a++) {
                int j = jb + a * step + lg;
                if (j < c1) {
                    kr[a] = ld_l2(K + (size_t)j * D + li * 8);
                    vr[a] = ld_l2(V + (size_t)j * D + li * 8);
                } else {
                    kr[a] = vr[a] = make_uint4(0, 0, 0, 0);
                }
            }
#pragma unroll
            for (int a = 0; a < UA; a++) {
                if (jb + a * step >= c1) break;  // warp-uniform: no lane group of the warp has a position left
                const bool valid = jb + a * step + lg < c1;
                float kf[8], vf[8];
                unpack8(kr[a], kf);
                unpack8(vr[a], vf);
#pragma unroll
                for (int h = 0; h < HP; h++) {
                    float s = 0;
#pragma unroll
                    for (int e = 0; e < 8; e++) s = fmaf(qr[h][e], kf[e], s);
                    for (int o = LG >> 1; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                    if (valid) {
                        float mn = fmaxf(m[h], s);
                        float cf = exp2f(m[h] - mn), pf = exp2f(s - mn);
                        l[h] = l[h] * cf + pf;
#pragma unroll
                        for (int e = 0; e < 8; e++) acc[h][e] = acc[h][e] * cf + pf * vf[e];
                        m[h] = mn;
                    }
                }
            }
        }
        // Merge the lane groups of the warp (butterfly; every group ends with the merged state).
        for (int o = LG; o < 32; o <<= 1) {
#pragma unroll
            for (int h = 0; h < HP; h++) {
                float mo = __shfl_xor_sync(0xffffffffu, m[h], o), lo = __shfl_xor_sync(0xffffffffu, l[h], o);
                float mn = fmaxf(m[h], mo);
                float fa = m[h] == -INFINITY ? 0.0f : exp2f(m[h] - mn), fb = mo == -INFINITY ? 0.0f : exp2f(mo - mn);
                l[h] = l[h] * fa + lo * fb;
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    float ao = __shfl_xor_sync(0xffffffffu, acc[h][e], o);
                    acc[h][e] = acc[h][e] * fa + ao * fb;
                }
                m[h] = mn;
            }
        }
        float *wacc = sm + (size_t)warp * HP * D, *wml = sm + (size_t)NW * HP * D + warp * HP * 2;
        if (lg == 0) {
#pragma unroll
            for (int h = 0; h < HP; h++) {
#pragma unroll
                for (int e = 0; e < 8; e++) wacc[h * D + li * 8 + e] = acc[h][e];
                if (li == 0) wml[h * 2] = m[h], wml[h * 2 + 1] = l[h];
            }
        }
    }
    __syncthreads();
    // Merge the warps of each set in warp order: the output (one chunk) or this chunk's partial state.
    const float *sml = sm + (size_t)NW * HP * D;
    for (int t = threadIdx.x; t < nhs * HP * D; t += NT) {
        int hh = t / D, dd = t % D, s = hh / HP, h = hh % HP;
        if (hh >= d.gs) continue;
        float M = -INFINITY;
        for (int w = 0; w < wps; w++) M = fmaxf(M, sml[((s * wps + w) * HP + h) * 2]);
        float L = 0, A = 0;
        for (int w = 0; w < wps; w++) {
            int ww = s * wps + w;
            float mw = sml[(ww * HP + h) * 2];
            if (mw == -INFINITY) continue;
            float f = exp2f(mw - M);
            L += f * sml[(ww * HP + h) * 2 + 1];
            A += f * sm[((size_t)ww * HP + h) * D + dd];
        }
        if (n_chunks == 1) {
            p.o[(size_t)(g * d.gs + hh) * D + dd] = A / L;
            continue;
        }
        size_t pi = ((size_t)g * p.att_S + c) * p.gq + hh;
        p.part[pi * D + dd] = A;
        if (dd == 0) p.part_ml[pi * 2] = M, p.part_ml[pi * 2 + 1] = L;
    }
    if (n_chunks == 1) return;
    // The last chunk of this kv head to finish merges all chunks in chunk order.
    __syncthreads();
    __shared__ int last;
    if (threadIdx.x == 0) {
        __threadfence();
        unsigned prev = atomicAdd(p.tick + d.NH + g, 1u);
        last = prev == (unsigned)(n_chunks - 1);
        if (last) p.tick[d.NH + g] = 0;
        __threadfence();
    }
    __syncthreads();
    if (!last) return;
    // Chunk weights w_c = exp2(m_c - M) per head into shared memory (all loads in flight at once),
    // then each output element sums its chunks in order, eight loads at a time.
    float *wsm = sm, *lsm = sm + (size_t)n_chunks * d.gs;  // [n_chunks][gs] weights, [gs] total weights
    for (int t = threadIdx.x; t < n_chunks * d.gs; t += NT) {
        size_t pi = ((size_t)g * p.att_S + t / d.gs) * p.gq + t % d.gs;
        wsm[t] = __ldcg(p.part_ml + pi * 2);
        wsm[n_chunks * d.gs + d.gs + t] = __ldcg(p.part_ml + pi * 2 + 1);
    }
    __syncthreads();
    for (int h = threadIdx.x; h < d.gs; h += NT) {
        float M = -INFINITY, L = 0;
        for (int cc = 0; cc < n_chunks; cc++) M = fmaxf(M, wsm[cc * d.gs + h]);
        for (int cc = 0; cc < n_chunks; cc++) {
            float mc = wsm[cc * d.gs + h], f = mc == -INFINITY ? 0.0f : exp2f(mc - M);
            wsm[cc * d.gs + h] = f;
            L += f * wsm[n_chunks * d.gs + d.gs + cc * d.gs + h];
        }
        lsm[h] = L;
    }
    __syncthreads();
    for (int t = threadIdx.x; t < d.gs * D; t += NT) {
        int h = t / D, dd = t % D;
        float A = 0;
        for (int c8 = 0; c8 < n_chunks; c8 += 8) {
            float v[8];
#pragma unroll
            for (int k = 0; k < 8; k++)
                v[k] = c8 + k < n_chunks ? __ldcg(p.part + (((size_t)g * p.att_S + c8 + k) * p.gq + h) * D + dd) : 0.0f;
#pragma unroll
            for (int k = 0; k < 8; k++)
                if (c8 + k < n_chunks) A += wsm[(c8 + k) * d.gs + h] * v[k];
        }
        p.o[(size_t)(g * d.gs + h) * D + dd] = A / lsm[h];
    }
}

// Chunking of a context of n positions over at most att_S chunks per kv head, >= ATT_MIN_CHUNK
// positions each (depends only on n and att_S, so the merge order is fixed). Below that length one
// block reading the whole context beats a split and its merge.
#define ATT_MIN_CHUNK 256
__device__ __host__ inline void att_chunks(int n, int att_S, int *CL, int *n_chunks) {
    int cl = (n + att_S - 1) / att_S;
    if (cl < ATT_MIN_CHUNK) cl = ATT_MIN_CHUNK;
    *CL = cl;
    *n_chunks = (n + cl - 1) / cl;
}

template <int HP>
__device__ void stage_attention(const DecodeParams &p, int layer, int pos, float *sm) {
    int CL, nc;
    att_chunks(pos + 1, p.att_S, &CL, &nc);
    int units = p.d.Hkv * nc;
    for (int u = blockIdx.x; u < units; u += gridDim.x) attention_unit<HP>(p, layer, u / nc, u % nc, CL, pos + 1, nc, sm);
}

__device__ __forceinline__ void stage_split(const MapSplit &map, float *slots, int H) {
    gemv_items(
        map,
        [&](int it, float ra, float rb) {
            int u = 2 * it;
            slots[(size_t)(u % map.split) * H + u / map.split] = ra;
            if (u + 1 < map.rows * map.split) slots[(size_t)((u + 1) % map.split) * H + (u + 1) / map.split] = rb;
        });
}

__device__ __forceinline__ float silu(float z) { return z / (1.0f + expf(-z)); }

// The state of one decode launch, and its stages. All blocks run the same control flow, so every
// block meets every barrier.
template <int HP>
struct Step {
    const DecodeParams &p;
    const Dims &d;
    float *sm, *xs, *fscratch, *red;
    int *fin;
    int pos, cur, npend, ts;  // x[cur] holds the residual, plus npend pending slots at pend
    const float *pend, *pend_bias;
    const uint16_t *emb;      // the token's embedding row until the first stage has read it

    __device__ __forceinline__ Step(const DecodeParams &p_, float *sm_) : p(p_), d(p_.d), sm(sm_), xs(sm_) {
        const int xs_len = max(max(d.H, d.QD), d.I);
        fscratch = sm + max(max(xs_len, NW * HP * d.D + NW * HP * 2), 2 * p.att_S * d.gs + d.gs);  // [NW][D] finish_head scratch
        red = fscratch + NW * d.D;                                  // [NW]
        fin = (int *)(red + NW);                                    // [MAX_FIN]
        ts = 0;
        stamp();
        int token = p.token;
        pos = p.pos;
        if (p.flags & F_CHAIN) token = p.state[0], pos = p.state[1];
        cur = 0, npend = 0, pend = NULL, pend_bias = NULL;
        emb = (p.flags & F_EMBED) ? p.embed + (size_t)token * d.H : NULL;
    }
    // Stage timing: block 0's %globaltimer at the start and after each stage.
    __device__ __forceinline__ void stamp() {
        if (p.timing && blockIdx.x == 0 && threadIdx.x == 0) {
            unsigned long long t;
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
            p.timing[ts] = t;
        }
        ts++;
    }
    __device__ __forceinline__ void sync() {
        grid_sync(p.bar);
        stamp();
    }
    // The residual into xs (dbg: where block 0 also stores it), pending slots added.
    __device__ __forceinline__ void gather(float *dbg) {
        gather_residual(d, xs, emb, p.x + cur * d.H, pend, npend, pend_bias, p.x + (cur ^ 1) * d.H, dbg);
        cur ^= 1, emb = NULL, pend = NULL;
    }
    __device__ __forceinline__ MapPairs map_qkv(int l) const { return MapPairs{p.layers[l].wqkv, xs, d.NQKV, d.H}; }
    __device__ __forceinline__ MapSplit map_wo(int l) const { return MapSplit(p.layers[l].wo, xs, d.H, d.QD, p.wo_split); }
    __device__ __forceinline__ MapGateUp map_gu(int l) const { return MapGateUp{p.layers[l].wgu, xs, d.I, d.H}; }
    __device__ __forceinline__ MapSplit map_down(int l) const { return MapSplit(p.layers[l].wd, xs, d.H, d.I, p.down_split); }
    __device__ __forceinline__ MapPairs map_head() const { return MapPairs{p.lm_head, xs, d.V, d.H}; }

    __device__ __forceinline__ void qkv(int l) {
        gather(p.dbg && l > 0 && pend ? p.dbg + ((size_t)(l - 1) * 2 + 1) * d.H : NULL);
        stage_qkv(p, p.layers[l], l, pos, xs, red, fin, fscratch);
    }
    __device__ __forceinline__ void attention(int l) { stage_attention<HP>(p, l, pos, sm); }
    __device__ __forceinline__ void wo(int l) {
        for (int i = threadIdx.x; i < d.QD; i += NT) xs[i] = __ldcg(p.o + i);
        __syncthreads();
        stage_split(map_wo(l), p.oslot, d.H);
        pend = p.oslot, npend = p.wo_split, pend_bias = p.layers[l].bo;
    }
    __device__ __forceinline__ void mlp(int l) {
        gather(p.dbg && pend ? p.dbg + (size_t)l * 2 * d.H : NULL);
        rmsnorm_block(xs, p.layers[l].post_norm, d.H, d.eps, red);
        float *hbuf = p.hbuf;
        gemv_items(map_gu(l), [&](int i, float g, float u) { hbuf[i] = silu(g) * u; });
    }
    __device__ __forceinline__ void down(int l) {
        for (int i = threadIdx.x; i < d.I; i += NT) xs[i] = __ldcg(p.hbuf + i);
        __syncthreads();
        stage_split(map_down(l), p.dslot, d.H);
        pend = p.dslot, npend = p.down_split, pend_bias = NULL;
    }
    // Final norm + lm_head with each block's best logit, then (F_ARGMAX) the pick over the blocks,
    // ties to the lowest id.
    __device__ __forceinline__ void head() {
        __shared__ float best_v[NW];
        __shared__ int best_i[NW];
        gather(p.dbg && pend == p.dslot ? p.dbg + ((size_t)(p.l1 - 1) * 2 + 1) * d.H : NULL);
        rmsnorm_block(xs, p.final_norm, d.H, d.eps, red);
        float bv = -INFINITY, *logits = p.logits;
        int bi = 0x7fffffff, V = d.V;
        gemv_items(
            map_head(),
            [&](int it, float ra, float rb) {
                int r = 2 * it;
                logits[r] = ra;
                if (ra > bv) bv = ra, bi = r;
                if (r + 1 < V) {
                    logits[r + 1] = rb;
                    if (rb > bv) bv = rb, bi = r + 1;
                }
            });
        if (!(p.flags & F_ARGMAX)) return;
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        if (lane == 0) best_v[warp] = bv, best_i[warp] = bi;
        __syncthreads();
        if (threadIdx.x == 0) {
            float v = best_v[0];
            int i = best_i[0];
            for (int k = 1; k < NW; k++)
                if (best_v[k] > v || (best_v[k] == v && best_i[k] < i)) v = best_v[k], i = best_i[k];
            p.best_val[blockIdx.x] = v;
            p.best_idx[blockIdx.x] = i;
        }
        grid_sync(p.bar);
        if (blockIdx.x == 0 && threadIdx.x == 0) {
            float v = __ldcg(p.best_val);
            int i = __ldcg(p.best_idx);
            for (int k = 1; k < (int)gridDim.x; k++) {
                float vk = __ldcg(p.best_val + k);
                int ik = __ldcg(p.best_idx + k);
                if (vk > v || (vk == v && ik < i)) v = vk, i = ik;
            }
            if (i == 0x7fffffff) i = 0;  // every logit NaN: the host's check reports it
            p.state[0] = i;
            if (p.flags & F_CHAIN) p.state[1] = pos + 1;
            if (p.trace) p.trace[pos] = i;
        }
    }
    // The residual with its pending slots into x[0] (tests read it there).
    __device__ __forceinline__ void flush() {
        grid_sync(p.bar);
        for (int i = blockIdx.x * NT + threadIdx.x; i < d.H; i += gridDim.x * NT) {
            float v = emb ? bf16f(emb[i]) : __ldcg(p.x + cur * d.H + i);
            if (pend) {
                float s = __ldcg(pend + i);
                for (int k = 1; k < npend; k++) s += __ldcg(pend + (size_t)k * d.H + i);
                if (pend_bias) s += pend_bias[i];
                v += s;
            }
            p.x[i] = v;
        }
    }
};

// A decode step, or (tests) some stages of some layers. Before each barrier of a whole step, every
// warp prefetches into L2 the first weights it will read after it.
template <int HP>
__global__ void __launch_bounds__(NT, 1) kernel_decode(const __grid_constant__ DecodeParams p) {
    extern __shared__ float4 smem4[];
    Step<HP> st(p, (float *)smem4);
    const bool whole = p.stages == ST_ALL && p.l0 == 0 && p.l1 == p.d.L && (p.flags & F_PREFETCH);
    if (whole) prefetch_first(st.map_qkv(0));
    for (int l = p.l0; l < p.l1; l++) {
        if (p.stages & ST_QKV) st.qkv(l), st.sync();
        if (p.stages & ST_ATT) st.attention(l), st.sync();  // a prefetch here would queue ahead of K and V
        if (p.stages & ST_WO) {
            if (whole) prefetch_first(st.map_wo(l));  // before the o reload
            st.wo(l);
            if (whole) prefetch_first(st.map_gu(l));
            st.sync();
        }
        if (p.stages & ST_MLP) {
            st.mlp(l);
            if (whole) prefetch_first(st.map_down(l));
            st.sync();
        }
        if (p.stages & ST_DOWN) {
            st.down(l);
            if (whole && l + 1 < p.l1) prefetch_first(st.map_qkv(l + 1));
            else if (whole && (p.flags & F_FINAL)) prefetch_first(st.map_head());
            st.sync();
        }
    }
    if (p.flags & F_FINAL) {
        st.head();
        st.stamp();
    }
    if (p.flags & F_FLUSH) st.flush();
}

// ---------------------------------------------------------------------------------------------
// Prefill kernels (T tokens of a chunk; activations row-major [T][...])

__global__ void kernel_embed(const uint16_t *embed, const int *ids, int H, float *x) {
    const uint16_t *row = embed + (size_t)ids[blockIdx.x] * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x) x[(size_t)blockIdx.x * H + i] = bf16f(row[i]);
}

__device__ __forceinline__ void split_bf16(float v, uint16_t *hi, uint16_t *lo) {
    uint16_t h = f2bf(v);
    *hi = h;
    *lo = f2bf(v - bf16f(h));
}

// Row t (one block of 256): x += proj (+ bias) when proj is given, then RMSNorm into bf16 hi/lo.
__global__ void kernel_add_norm(float *x, const float *proj, const float *bias, const float *w, int H, float eps,
                                uint16_t *hi, uint16_t *lo) {
    __shared__ float red[8];
    float *xr = x + (size_t)blockIdx.x * H;
    float ss = 0;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        float v = xr[i];
        if (proj) {
            float pv = proj[(size_t)blockIdx.x * H + i];
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
        split_bf16(w[i] * (xr[i] * inv), hi + o, lo + o);
    }
}

// One warp per (token, head) of [Wq;Wk;Wv]'s output.
__global__ void kernel_qkv_finish(Dims d, const DevLayer *layers, int layer, const float *inv_freq, const float *raw,
                                  int pos, int T, float *q, uint16_t *kc, uint16_t *vc) {
    extern __shared__ float fs[];
    int warp = threadIdx.x >> 5, h = blockIdx.y * (blockDim.x >> 5) + warp, t = blockIdx.x;
    if (h >= d.NH || t >= T) return;
    finish_head(d, layers[layer], inv_freq, raw + (size_t)t * d.NQKV, h, layer, pos + t, q + (size_t)t * d.QD, kc, vc,
                fs + warp * d.D);
}

// gate/up [T][2I] -> SiLU(gate) * up [T][I] as bf16 hi/lo.
__global__ void kernel_silu(const float *gu, int I, int T, uint16_t *hi, uint16_t *lo) {
    size_t n = (size_t)T * I;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        size_t t = k / I, i = k % I;
        float v = silu(gu[t * 2 * I + i]) * gu[t * 2 * I + I + i];
        split_bf16(v, hi + k, lo + k);
    }
}

// Causal attention for a chunk: block (q head, tile of 64 queries), 256 threads as 16 x 16; key tiles
// of 64 from the cache; scores and output in fp32 with an online softmax. Thread (ty, tx) owns query
// rows ty + 16a and key columns tx + 16b. Output: bf16 hi/lo [T][Hq*D] for the o_proj GEMM.
#define PQ 64
#define PK 64
template <int D>
__global__ void __launch_bounds__(256) kernel_attn_prefill(Dims d, const float *q, const uint16_t *kc,
                                                           const uint16_t *vc, int layer, int pos, int T,
                                                           uint16_t *out_hi, uint16_t *out_lo) {
    constexpr int DP = D + 1, DC = D / 16;
    extern __shared__ float sa[];
    float *Qs = sa, *KV = Qs + PQ * DP, *Ps = KV + PK * DP;  // [PQ][DP] [PK][DP] [PQ][PK+1]
    const int h = blockIdx.x, t0 = blockIdx.y * PQ, g = h / d.gs;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const float qscale = rsqrtf((float)D) * 1.4426950408889634f;
    const uint16_t *K = kc + kv_off(d, layer, g, 0), *V = vc + kv_off(d, layer, g, 0);

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
        for (int i = tid; i < PK * (D / 8); i += 256) {
            int r = i / (D / 8), c = (i % (D / 8)) * 8, j = k0 + r;
            float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (j < n_keys) unpack8(*(const uint4 *)(K + (size_t)j * D + c), f);
#pragma unroll
            for (int e = 0; e < 8; e++) KV[r * DP + c + e] = f[e];
        }
        __syncthreads();
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
        for (int i = tid; i < PK * (D / 8); i += 256) {
            int r = i / (D / 8), c = (i % (D / 8)) * 8, j = k0 + r;
            float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (j < n_keys) unpack8(*(const uint4 *)(V + (size_t)j * D + c), f);
#pragma unroll
            for (int e = 0; e < 8; e++) KV[r * DP + c + e] = f[e];
        }
        __syncthreads();
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
            split_bf16(acc[a][c] * inv, out_hi + o, out_lo + o);
        }
    }
}

static size_t attn_prefill_smem(int D) { return sizeof(float) * ((size_t)PQ * (D + 1) + (size_t)PK * (D + 1) + PQ * (PK + 1)); }

// Final-norm rows for lm_head; and a device-side copy used by the bandwidth measurement.
__global__ void kernel_copy(const uint4 *src, uint4 *dst, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) dst[i] = src[i];
}

// ---------------------------------------------------------------------------------------------
// Host side: the engine

typedef struct {
    Engine base;
    const Model *m;
    Dims d;
    int grid, hp, att_S, gq, wo_split, down_split, max_batch;
    size_t smem;
    const void *kfn;
    DevLayer *h_layers, *d_layers;
    uint16_t *embed, *lm_head, *kc, *vc;
    float *final_norm, *inv_freq;
    // decode
    float *x, *qkv, *q, *part, *part_ml, *o, *oslot, *hbuf, *dslot, *logits, *best_val, *dbg;
    int *best_idx, *state, *trace;
    unsigned long long *timing;
    unsigned *bar, *tick;
    cudaGraphExec_t gexec;
    int use_graph, graph_failed, prefetch;
    int *h_state;  // pinned
    // prefill
    float *px, *praw, *pq, *pproj, *plogits;
    uint16_t *pa_hi, *pa_lo;
    int *pids;
    cublasHandle_t blas;
    cudaStream_t st;
    float *h_logits, *h_dbg, *h_x;  // pinned
    LayerHook hook;
    void *hook_ctx;
    size_t weight_bytes, kv_bytes, scratch_bytes;
    void **allocs;  // every cudaMalloc, for cu_free
    int n_allocs, cap_allocs;
} CudaEngine;

static void *dev_alloc(CudaEngine *c, size_t bytes, size_t *counter, const char *what) {
    void *p = NULL;
    if (bytes == 0) bytes = 16;
    CUDA_CHECK(cudaMalloc(&p, bytes), what);
    if (c->n_allocs == c->cap_allocs) {
        c->cap_allocs = c->cap_allocs ? 2 * c->cap_allocs : 64;
        c->allocs = (void **)realloc(c->allocs, (size_t)c->cap_allocs * sizeof(void *));
        if (!c->allocs) fatal("out of memory");
    }
    c->allocs[c->n_allocs++] = p;
    *counter += bytes;
    return p;
}

// A weight matrix (or rows of one) as bf16 on the device; other dtypes are rounded to bf16 here.
static void upload_matrix(uint16_t *dst, const Tensor *t, uint16_t *stage, size_t stage_elems) {
    size_t n = (size_t)t->rows * t->cols;
    if (t->dtype == DT_BF16) {
        CUDA_CHECK(cudaMemcpy(dst, t->data, n * 2, cudaMemcpyHostToDevice), "weight upload");
        return;
    }
    for (size_t done = 0; done < n; done += stage_elems) {
        size_t k = n - done < stage_elems ? n - done : stage_elems;
        for (size_t i = 0; i < k; i++) stage[i] = f32_to_bf16(tensor_get(t, done + i));
        CUDA_CHECK(cudaMemcpy(dst + done, stage, k * 2, cudaMemcpyHostToDevice), "weight upload");
    }
}

// A vector (norm weight, bias) as fp32 on the device; NULL for an absent tensor.
static float *upload_vector(CudaEngine *c, const Tensor *t) {
    if (!t->data) return NULL;
    size_t n = (size_t)t->rows * t->cols;
    float *h = (float *)xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = tensor_get(t, i);
    float *dv = (float *)dev_alloc(c, n * sizeof(float), &c->weight_bytes, "cudaMalloc (weights)");
    CUDA_CHECK(cudaMemcpy(dv, h, n * sizeof(float), cudaMemcpyHostToDevice), "weight upload");
    free(h);
    return dv;
}

// Shared memory of kernel_decode: the GEMV input, the attention scratch and the chunk merge's
// weights share one region; then finish_head's scratch, the block reduction and the finished heads.
static size_t decode_smem(const Dims &d, int hp, int att_S) {
    size_t xs = (size_t)std::max(std::max(d.H, d.QD), d.I);
    size_t att = (size_t)NW * hp * d.D + (size_t)NW * hp * 2, merge = 2 * (size_t)att_S * d.gs + d.gs;
    return sizeof(float) * (std::max(std::max(xs, att), merge) + (size_t)NW * d.D + NW) + sizeof(int) * MAX_FIN;
}

static const void *decode_kernel(int hp) {
    return hp == 1 ? (const void *)kernel_decode<1> : hp == 2 ? (const void *)kernel_decode<2> : (const void *)kernel_decode<4>;
}

static void launch_decode(CudaEngine *c, DecodeParams *p) {
    void *args[] = {p};
    CUDA_CHECK(cudaLaunchCooperativeKernel(c->kfn, dim3(c->grid), dim3(NT), args, c->smem, c->st), "launch of kernel_decode");
}

static void sync_checked(CudaEngine *c, const char *what) { CUDA_CHECK(cudaStreamSynchronize(c->st), what); }

static DecodeParams decode_params(CudaEngine *c) {
    DecodeParams p;
    memset(&p, 0, sizeof p);
    p.d = c->d;
    p.layers = c->d_layers;
    p.embed = c->embed, p.lm_head = c->lm_head, p.final_norm = c->final_norm, p.inv_freq = c->inv_freq;
    p.kc = c->kc, p.vc = c->vc;
    p.x = c->x, p.qkv = c->qkv, p.q = c->q, p.part = c->part, p.part_ml = c->part_ml, p.o = c->o;
    p.oslot = c->oslot, p.hbuf = c->hbuf, p.dslot = c->dslot, p.logits = c->logits;
    p.best_val = c->best_val, p.best_idx = c->best_idx, p.bar = c->bar, p.tick = c->tick, p.state = c->state;
    p.wo_split = c->wo_split, p.down_split = c->down_split, p.att_S = c->att_S, p.gq = c->gq;
    p.l0 = 0, p.l1 = c->d.L, p.stages = ST_ALL;
    p.flags = c->prefetch ? F_PREFETCH : 0;
    return p;
}

// One token through every layer; logits (host, V floats) when out is given.
// A CUDA graph of one decode launch that takes its token and position from state[] (F_CHAIN without
// the pick): replaying it costs the host less than a cooperative launch. Built lazily, again after
// wo_split changes; when the driver cannot capture a cooperative launch, steps launch directly.
static void graph_drop(CudaEngine *c) {
    if (c->gexec) cudaGraphExecDestroy(c->gexec);
    c->gexec = NULL;
}

static int graph_build(CudaEngine *c) {
    if (c->gexec) return 1;
    if (c->graph_failed || !c->use_graph) return 0;
    DecodeParams p = decode_params(c);
    p.flags |= F_EMBED | F_FINAL | F_CHAIN;
    void *args[] = {&p};
    cudaLaunchAttribute attr = {};
    attr.id = cudaLaunchAttributeCooperative;
    attr.val.cooperative = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(c->grid), cfg.blockDim = dim3(NT), cfg.dynamicSmemBytes = c->smem, cfg.stream = c->st;
    cfg.attrs = &attr, cfg.numAttrs = 1;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamBeginCapture(c->st, cudaStreamCaptureModeThreadLocal);
    if (e == cudaSuccess) {
        cudaError_t el = cudaLaunchKernelExC(&cfg, c->kfn, args);
        e = cudaStreamEndCapture(c->st, &g);
        if (el != cudaSuccess) e = el;
    }
    if (e == cudaSuccess) e = cudaGraphInstantiate(&c->gexec, g, 0);
    if (g) cudaGraphDestroy(g);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();  // the failure is not sticky; fall back to direct launches
        c->gexec = NULL;
        c->graph_failed = 1;
        return 0;
    }
    return 1;
}

static void decode_step(CudaEngine *c, int id, int pos, float *out) {
    if (out && !c->hook && graph_build(c)) {
        c->h_state[0] = id, c->h_state[1] = pos;
        CUDA_CHECK(cudaMemcpyAsync(c->state, c->h_state, 2 * sizeof(int), cudaMemcpyHostToDevice, c->st), "state copy");
        CUDA_CHECK(cudaGraphLaunch(c->gexec, c->st), "cudaGraphLaunch (kernel_decode)");
        CUDA_CHECK(cudaMemcpyAsync(c->h_logits, c->logits, (size_t)c->d.V * 4, cudaMemcpyDeviceToHost, c->st), "logits copy");
        sync_checked(c, "kernel_decode (decode step)");
        memcpy(out, c->h_logits, (size_t)c->d.V * 4);
        return;
    }
    DecodeParams p = decode_params(c);
    p.token = id, p.pos = pos;
    p.flags |= F_EMBED | (out || c->hook ? F_FINAL : 0);
    p.dbg = c->hook ? c->dbg : NULL;
    launch_decode(c, &p);
    if (out) CUDA_CHECK(cudaMemcpyAsync(c->h_logits, c->logits, (size_t)c->d.V * 4, cudaMemcpyDeviceToHost, c->st), "logits copy");
    if (c->hook) CUDA_CHECK(cudaMemcpyAsync(c->h_dbg, c->dbg, (size_t)c->d.L * 2 * c->d.H * 4, cudaMemcpyDeviceToHost, c->st), "residual copy");
    sync_checked(c, "kernel_decode (decode step)");
    if (out) memcpy(out, c->h_logits, (size_t)c->d.V * 4);
    if (c->hook)
        for (int l = 0; l < c->d.L; l++)
            for (int s = 0; s < 2; s++) c->hook(c->hook_ctx, l, s, c->h_dbg + ((size_t)l * 2 + s) * c->d.H, 1);
}

// C[T][N] = A[T][K] W[N][K]^T with A given as bf16 hi + lo parts: two tensor-core GEMMs into fp32.
static void gemm(CudaEngine *c, const uint16_t *W, int N, int K, const uint16_t *hi, const uint16_t *lo, int T, float *C,
                 const char *what) {
    const float one = 1.0f, zero = 0.0f;
    BLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &one, W, CUDA_R_16BF, K, hi, CUDA_R_16BF, K, &zero, C,
                            CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               what);
    BLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &one, W, CUDA_R_16BF, K, lo, CUDA_R_16BF, K, &one, C,
                            CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               what);
}

static void launch_add_norm(CudaEngine *c, float *x, const float *proj, const float *bias, const float *w, int T) {
    kernel_add_norm<<<T, 256, 0, c->st>>>(x, proj, bias, w, c->d.H, c->d.eps, c->pa_hi, c->pa_lo);
    LAUNCH_CHECK("kernel_add_norm");
}

static void launch_qkv_finish(CudaEngine *c, int layer, int pos, int T) {
    dim3 grid(T, (c->d.NH + 3) / 4);
    kernel_qkv_finish<<<grid, 128, 4 * c->d.D * sizeof(float), c->st>>>(c->d, c->d_layers, layer, c->inv_freq, c->praw, pos, T,
                                                                        c->pq, c->kc, c->vc);
    LAUNCH_CHECK("kernel_qkv_finish");
}

static void launch_attn_prefill(CudaEngine *c, int layer, int pos, int T) {
    dim3 grid(c->d.Hq, (T + PQ - 1) / PQ);
    size_t sm = attn_prefill_smem(c->d.D);
    switch (c->d.D) {
    case 32: kernel_attn_prefill<32><<<grid, 256, sm, c->st>>>(c->d, c->pq, c->kc, c->vc, layer, pos, T, c->pa_hi, c->pa_lo); break;
    case 64: kernel_attn_prefill<64><<<grid, 256, sm, c->st>>>(c->d, c->pq, c->kc, c->vc, layer, pos, T, c->pa_hi, c->pa_lo); break;
    case 128: kernel_attn_prefill<128><<<grid, 256, sm, c->st>>>(c->d, c->pq, c->kc, c->vc, layer, pos, T, c->pa_hi, c->pa_lo); break;
    default: kernel_attn_prefill<256><<<grid, 256, sm, c->st>>>(c->d, c->pq, c->kc, c->vc, layer, pos, T, c->pa_hi, c->pa_lo); break;
    }
    LAUNCH_CHECK("kernel_attn_prefill");
}

static void launch_silu(CudaEngine *c, int T) {
    size_t n = (size_t)T * c->d.I;
    int blocks = (int)std::min<size_t>((n + 255) / 256, 65535);
    kernel_silu<<<blocks, 256, 0, c->st>>>(c->praw, c->d.I, T, c->pa_hi, c->pa_lo);
    LAUNCH_CHECK("kernel_silu");
}

static void call_hook(CudaEngine *c, int layer, int stage, int T) {
    CUDA_CHECK(cudaMemcpyAsync(c->h_x, c->px, (size_t)T * c->d.H * 4, cudaMemcpyDeviceToHost, c->st), "residual copy");
    sync_checked(c, "prefill (residual for --check)");
    c->hook(c->hook_ctx, layer, stage, c->h_x, T);
}

// T tokens at positions pos.. through cuBLAS and the prefill kernels. out: T x V logits (all) or the
// last row's V, or NULL.
static void prefill_chunk(CudaEngine *c, const int *ids, int T, int pos, float *out, int all) {
    const Dims &d = c->d;
    CUDA_CHECK(cudaMemcpyAsync(c->pids, ids, (size_t)T * sizeof(int), cudaMemcpyHostToDevice, c->st), "prompt ids copy");
    kernel_embed<<<T, 256, 0, c->st>>>(c->embed, c->pids, d.H, c->px);
    LAUNCH_CHECK("kernel_embed");
    launch_add_norm(c, c->px, NULL, NULL, c->h_layers[0].in_norm, T);
    for (int l = 0; l < d.L; l++) {
        const DevLayer &w = c->h_layers[l];
        gemm(c, w.wqkv, d.NQKV, d.H, c->pa_hi, c->pa_lo, T, c->praw, "cublasGemmEx (qkv_proj)");
        launch_qkv_finish(c, l, pos, T);
        launch_attn_prefill(c, l, pos, T);
        gemm(c, w.wo, d.H, d.QD, c->pa_hi, c->pa_lo, T, c->pproj, "cublasGemmEx (o_proj)");
        launch_add_norm(c, c->px, c->pproj, w.bo, w.post_norm, T);
        if (c->hook) call_hook(c, l, 0, T);
        gemm(c, w.wgu, 2 * d.I, d.H, c->pa_hi, c->pa_lo, T, c->praw, "cublasGemmEx (gate_up_proj)");
        launch_silu(c, T);
        gemm(c, w.wd, d.H, d.I, c->pa_hi, c->pa_lo, T, c->pproj, "cublasGemmEx (down_proj)");
        launch_add_norm(c, c->px, c->pproj, NULL, l + 1 < d.L ? c->h_layers[l + 1].in_norm : c->final_norm, T);
        if (c->hook) call_hook(c, l, 1, T);
    }
    if (out) {
        int first = all ? 0 : T - 1, rows = T - first;
        gemm(c, c->lm_head, d.V, d.H, c->pa_hi + (size_t)first * d.H, c->pa_lo + (size_t)first * d.H, rows, c->plogits,
             "cublasGemmEx (lm_head)");
        CUDA_CHECK(cudaMemcpyAsync(out, c->plogits, (size_t)rows * d.V * 4, cudaMemcpyDeviceToHost, c->st), "logits copy");
    }
    sync_checked(c, "prefill");
}

static void cu_forward(Engine *e, const int *ids, int n, int pos, float *logits, int all_logits) {
    CudaEngine *c = (CudaEngine *)e;
    size_t V = (size_t)c->d.V;
    if (pos < 0 || n < 0 || pos + n > c->d.cap) fatal("GPU engine: positions %d..%d beyond the KV cache of %d", pos, pos + n - 1, c->d.cap);
    for (int done = 0; done < n;) {
        int T = n - done < c->max_batch ? n - done : c->max_batch;
        float *out = all_logits ? logits + done * V : done + T == n ? logits : NULL;
        if (T == 1) decode_step(c, ids[done], pos + done, out);
        else prefill_chunk(c, ids + done, T, pos + done, out, all_logits);
        done += T;
    }
}

static void cu_free(Engine *e) {
    CudaEngine *c = (CudaEngine *)e;
    if (!c) return;
    for (int i = 0; i < c->n_allocs; i++) cudaFree(c->allocs[i]);
    free(c->allocs);
    graph_drop(c);
    if (c->h_state) cudaFreeHost(c->h_state);
    if (c->h_logits) cudaFreeHost(c->h_logits);
    if (c->h_dbg) cudaFreeHost(c->h_dbg);
    if (c->h_x) cudaFreeHost(c->h_x);
    if (c->blas) cublasDestroy(c->blas);
    if (c->st) cudaStreamDestroy(c->st);
    free(c->h_layers);
    free(c);
}

// Slices of a K-split reduction: the fewest (up to MAX_SPLIT) that give about one item of two units to
// every other warp of the grid. Measured on Qwen3-0.6B (1024 rows): 2 beats 1, 4 and 8 (README).
static int pick_split(int rows, int total_warps) {
    int s = 1;
    while (s < MAX_SPLIT && (long long)rows * s / 2 < (long long)total_warps * 45 / 100) s *= 2;
    return s;
}

static int why_null(char *why, size_t whylen, const char *fmt, ...) NANO_PRINTF(3, 4);
static int why_null(char *why, size_t whylen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
    return 0;
}

extern "C" Engine *cuda_engine_create(const Model *m, int capacity, KVFormat kv, int max_batch, int wo_split, char *why,
                                      size_t whylen) {
    if (!cuda_device_count(why, whylen)) return NULL;
    const Config *cf = &m->cfg;
    if (kv != KV_BF16) return why_null(why, whylen, "the GPU engine keeps its KV cache in bf16 (--kv %s needs --ref)", kv_format_name(kv)), (Engine *)NULL;
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    if (prop.major < 8) return why_null(why, whylen, "%s has compute capability %d.%d; the GPU engine needs 8.0 or newer", prop.name, prop.major, prop.minor), (Engine *)NULL;
    if (!prop.cooperativeLaunch) return why_null(why, whylen, "%s does not support cooperative launches", prop.name), (Engine *)NULL;
    int D = cf->head_dim;
    if (D != 32 && D != 64 && D != 128 && D != 256) return why_null(why, whylen, "head_dim %d is not one of 32, 64, 128, 256", D), (Engine *)NULL;
    if (cf->hidden % 8 || cf->intermediate % 8) return why_null(why, whylen, "hidden_size and intermediate_size must be multiples of 8"), (Engine *)NULL;
    int gs = cf->n_heads / cf->n_kv_heads;
    if (gs > 16) return why_null(why, whylen, "%d query heads per kv head (at most 16)", gs), (Engine *)NULL;
    if (wo_split && wo_split != 1 && wo_split != 2 && wo_split != 4 && wo_split != 8) return why_null(why, whylen, "--wo-split %d is not 1, 2, 4 or 8", wo_split), (Engine *)NULL;
    if (max_batch < 1) max_batch = 1;
    CUDA_CHECK(cudaSetDevice(0), "cudaSetDevice");

    CudaEngine *c = (CudaEngine *)xcalloc(1, sizeof *c);
    c->base.name = "cuda";
    c->base.forward = cu_forward;
    c->base.free = cu_free;
    c->m = m;
    Dims &d = c->d;
    d.H = cf->hidden, d.I = cf->intermediate, d.L = cf->n_layers, d.Hq = cf->n_heads, d.Hkv = cf->n_kv_heads, d.D = D;
    d.V = cf->vocab, d.QD = d.Hq * D, d.KVD = d.Hkv * D, d.NH = d.Hq + 2 * d.Hkv, d.NQKV = d.NH * D, d.gs = gs;
    d.cap = capacity, d.eps = cf->rms_eps;
    c->hp = gs <= 1 ? 1 : gs == 2 ? 2 : 4;
    c->gq = (gs + c->hp - 1) / c->hp * c->hp;
    c->max_batch = max_batch;

    // Grid: one block of NT threads per SM (occupancy permitting), all co-resident for the barriers.
    c->kfn = decode_kernel(c->hp);
    c->att_S = std::max(1, prop.multiProcessorCount / d.Hkv);
    c->smem = decode_smem(d, c->hp, c->att_S);
    if (c->smem > (size_t)prop.sharedMemPerBlockOptin) {
        cu_free(&c->base);
        return why_null(why, whylen, "the decode kernel needs %zu bytes of shared memory, %s has %zu", c->smem, prop.name,
                        (size_t)prop.sharedMemPerBlockOptin), (Engine *)NULL;
    }
    CUDA_CHECK(cudaFuncSetAttribute(c->kfn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)c->smem), "cudaFuncSetAttribute (kernel_decode)");
    int per_sm = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, c->kfn, NT, c->smem), "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    if (per_sm < 1) {
        cu_free(&c->base);
        return why_null(why, whylen, "kernel_decode cannot be resident on %s", prop.name), (Engine *)NULL;
    }
    c->grid = prop.multiProcessorCount;
    if ((long long)(d.NQKV + 1) / 2 * 2 / c->grid / D + 2 > MAX_FIN) {
        cu_free(&c->base);
        return why_null(why, whylen, "too many heads per block for the QKV stage"), (Engine *)NULL;
    }
    c->wo_split = wo_split ? wo_split : pick_split(d.H, c->grid * NW);
    c->down_split = pick_split(d.H, c->grid * NW * 2);  // longer rows: more slices pay (measured)
    size_t asm_ = attn_prefill_smem(D);
    if (asm_ > (size_t)prop.sharedMemPerBlockOptin) {
        cu_free(&c->base);
        return why_null(why, whylen, "head_dim %d needs more shared memory than %s has", D, prop.name), (Engine *)NULL;
    }
    CUDA_CHECK(cudaFuncSetAttribute(kernel_attn_prefill<32>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)attn_prefill_smem(32)), "cudaFuncSetAttribute");
    CUDA_CHECK(cudaFuncSetAttribute(kernel_attn_prefill<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)attn_prefill_smem(64)), "cudaFuncSetAttribute");
    CUDA_CHECK(cudaFuncSetAttribute(kernel_attn_prefill<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)attn_prefill_smem(128)), "cudaFuncSetAttribute");
    if (asm_ >= attn_prefill_smem(256))
        CUDA_CHECK(cudaFuncSetAttribute(kernel_attn_prefill<256>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)asm_), "cudaFuncSetAttribute");

    // Enough memory? Weights + cache + the prefill scratch, against what is free.
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    size_t B = (size_t)max_batch, wide = (size_t)std::max(std::max(d.H, d.QD), d.I);
    size_t need_w = 2 * ((size_t)d.L * ((size_t)d.NQKV * d.H + (size_t)d.H * d.QD + 3 * (size_t)d.I * d.H) +
                         (size_t)d.V * d.H * (cf->tied ? 1 : 2));
    size_t need_kv = 2 * 2 * (size_t)d.L * d.Hkv * capacity * D;
    size_t need_p = B > 1 ? B * (4 * (size_t)d.H * 2 + 4 * std::max((size_t)d.NQKV, 2 * (size_t)d.I) + 4 * (size_t)d.QD +
                                 2 * 2 * wide + 4 * (size_t)d.V)
                          : 0;
    if (need_w + need_kv + need_p + (256u << 20) > free_b) {
        cu_free(&c->base);
        return why_null(why, whylen, "%s has %.2f GiB free; the model needs %.2f GiB (weights %.2f, KV cache %.2f, prefill %.2f)",
                        prop.name, free_b / 1073741824.0, (need_w + need_kv + need_p) / 1073741824.0, need_w / 1073741824.0,
                        need_kv / 1073741824.0, need_p / 1073741824.0), (Engine *)NULL;
    }
    CUDA_CHECK(cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking), "cudaStreamCreate");
    BLAS_CHECK(cublasCreate(&c->blas), "cublasCreate");
    BLAS_CHECK(cublasSetStream(c->blas, c->st), "cublasSetStream");

    // Weights
    size_t stage_elems = 1 << 22;
    uint16_t *stage = (uint16_t *)xmalloc(stage_elems * 2);
    c->h_layers = (DevLayer *)xcalloc((size_t)d.L, sizeof(DevLayer));
    for (int l = 0; l < d.L; l++) {
        const LayerWeights *lw = &m->layers[l];
        DevLayer &w = c->h_layers[l];
        uint16_t *qkv = (uint16_t *)dev_alloc(c, (size_t)d.NQKV * d.H * 2, &c->weight_bytes, "cudaMalloc (weights)");
        upload_matrix(qkv, &lw->wq, stage, stage_elems);
        upload_matrix(qkv + (size_t)d.QD * d.H, &lw->wk, stage, stage_elems);
        upload_matrix(qkv + (size_t)(d.QD + d.KVD) * d.H, &lw->wv, stage, stage_elems);
        w.wqkv = qkv;
        uint16_t *wo = (uint16_t *)dev_alloc(c, (size_t)d.H * d.QD * 2, &c->weight_bytes, "cudaMalloc (weights)");
        upload_matrix(wo, &lw->wo, stage, stage_elems);
        w.wo = wo;
        uint16_t *gu = (uint16_t *)dev_alloc(c, (size_t)2 * d.I * d.H * 2, &c->weight_bytes, "cudaMalloc (weights)");
        upload_matrix(gu, &lw->w_gate, stage, stage_elems);
        upload_matrix(gu + (size_t)d.I * d.H, &lw->w_up, stage, stage_elems);
        w.wgu = gu;
        uint16_t *wd = (uint16_t *)dev_alloc(c, (size_t)d.H * d.I * 2, &c->weight_bytes, "cudaMalloc (weights)");
        upload_matrix(wd, &lw->w_down, stage, stage_elems);
        w.wd = wd;
        w.in_norm = upload_vector(c, &lw->input_norm);
        w.post_norm = upload_vector(c, &lw->post_norm);
        w.q_norm = cf->qk_norm ? upload_vector(c, &lw->q_norm) : NULL;
        w.k_norm = cf->qk_norm ? upload_vector(c, &lw->k_norm) : NULL;
        w.bo = cf->o_bias ? upload_vector(c, &lw->bo) : NULL;
        if (cf->qkv_bias) {
            float *b = (float *)dev_alloc(c, (size_t)d.NQKV * 4, &c->weight_bytes, "cudaMalloc (weights)");
            float *h = (float *)xmalloc((size_t)d.NQKV * 4);
            for (int i = 0; i < d.QD; i++) h[i] = tensor_get(&lw->bq, (size_t)i);
            for (int i = 0; i < d.KVD; i++) h[d.QD + i] = tensor_get(&lw->bk, (size_t)i);
            for (int i = 0; i < d.KVD; i++) h[d.QD + d.KVD + i] = tensor_get(&lw->bv, (size_t)i);
            CUDA_CHECK(cudaMemcpy(b, h, (size_t)d.NQKV * 4, cudaMemcpyHostToDevice), "weight upload");
            free(h);
            w.bqkv = b;
        }
    }
    c->embed = (uint16_t *)dev_alloc(c, (size_t)d.V * d.H * 2, &c->weight_bytes, "cudaMalloc (weights)");
    upload_matrix(c->embed, &m->embed, stage, stage_elems);
    if (cf->tied) c->lm_head = c->embed;
    else {
        c->lm_head = (uint16_t *)dev_alloc(c, (size_t)d.V * d.H * 2, &c->weight_bytes, "cudaMalloc (weights)");
        upload_matrix(c->lm_head, &m->lm_head, stage, stage_elems);
    }
    free(stage);
    c->final_norm = upload_vector(c, &m->final_norm);
    c->d_layers = (DevLayer *)dev_alloc(c, (size_t)d.L * sizeof(DevLayer), &c->weight_bytes, "cudaMalloc (weights)");
    CUDA_CHECK(cudaMemcpy(c->d_layers, c->h_layers, (size_t)d.L * sizeof(DevLayer), cudaMemcpyHostToDevice), "layer table upload");
    float *inv = (float *)xmalloc((size_t)D / 2 * sizeof(float));
    d.rope_scale = rope_frequencies(cf, inv);
    c->inv_freq = (float *)dev_alloc(c, (size_t)D / 2 * 4, &c->weight_bytes, "cudaMalloc (rope)");
    CUDA_CHECK(cudaMemcpy(c->inv_freq, inv, (size_t)D / 2 * 4, cudaMemcpyHostToDevice), "rope upload");
    free(inv);

    // KV cache
    size_t kv_elems = (size_t)d.L * d.Hkv * capacity * D;
    c->kc = (uint16_t *)dev_alloc(c, kv_elems * 2, &c->kv_bytes, "cudaMalloc (KV cache)");
    c->vc = (uint16_t *)dev_alloc(c, kv_elems * 2, &c->kv_bytes, "cudaMalloc (KV cache)");
    CUDA_CHECK(cudaMemset(c->kc, 0, kv_elems * 2), "cudaMemset (KV cache)");
    CUDA_CHECK(cudaMemset(c->vc, 0, kv_elems * 2), "cudaMemset (KV cache)");

    // Decode scratch
    size_t *sb = &c->scratch_bytes;
    const char *sw = "cudaMalloc (scratch)";
    c->x = (float *)dev_alloc(c, 2 * (size_t)d.H * 4, sb, sw);
    c->qkv = (float *)dev_alloc(c, (size_t)d.NQKV * 4, sb, sw);
    c->q = (float *)dev_alloc(c, (size_t)d.QD * 4, sb, sw);
    c->part = (float *)dev_alloc(c, (size_t)d.Hkv * c->att_S * c->gq * D * 4, sb, sw);
    c->part_ml = (float *)dev_alloc(c, (size_t)d.Hkv * c->att_S * c->gq * 2 * 4, sb, sw);
    c->o = (float *)dev_alloc(c, (size_t)d.QD * 4, sb, sw);
    c->oslot = (float *)dev_alloc(c, (size_t)MAX_SPLIT * d.H * 4, sb, sw);
    c->hbuf = (float *)dev_alloc(c, (size_t)d.I * 4, sb, sw);
    c->dslot = (float *)dev_alloc(c, (size_t)MAX_SPLIT * d.H * 4, sb, sw);
    c->logits = (float *)dev_alloc(c, (size_t)d.V * 4, sb, sw);
    c->best_val = (float *)dev_alloc(c, (size_t)c->grid * 4, sb, sw);
    c->best_idx = (int *)dev_alloc(c, (size_t)c->grid * 4, sb, sw);
    c->dbg = (float *)dev_alloc(c, (size_t)d.L * 2 * d.H * 4, sb, sw);
    c->bar = (unsigned *)dev_alloc(c, 4, sb, sw);
    c->tick = (unsigned *)dev_alloc(c, (size_t)(d.NH + d.Hkv) * 4, sb, sw);
    c->state = (int *)dev_alloc(c, 4 * 4, sb, sw);
    c->trace = (int *)dev_alloc(c, ((size_t)capacity + 1) * 4, sb, sw);
    c->timing = (unsigned long long *)dev_alloc(c, ((size_t)d.L * 5 + 4) * 8, sb, sw);
    CUDA_CHECK(cudaMemset(c->bar, 0, 4), "cudaMemset (barrier)");
    CUDA_CHECK(cudaMemset(c->tick, 0, (size_t)(d.NH + d.Hkv) * 4), "cudaMemset (tickets)");
    CUDA_CHECK(cudaMemset(c->x, 0, 2 * (size_t)d.H * 4), "cudaMemset (residual)");

    // Prefill scratch (none when every token goes through decode)
    if (max_batch > 1) {
        c->px = (float *)dev_alloc(c, B * d.H * 4, sb, sw);
        c->praw = (float *)dev_alloc(c, B * std::max((size_t)d.NQKV, 2 * (size_t)d.I) * 4, sb, sw);
        c->pq = (float *)dev_alloc(c, B * d.QD * 4, sb, sw);
        c->pproj = (float *)dev_alloc(c, B * d.H * 4, sb, sw);
        c->plogits = (float *)dev_alloc(c, B * d.V * 4, sb, sw);
        c->pa_hi = (uint16_t *)dev_alloc(c, B * wide * 2, sb, sw);
        c->pa_lo = (uint16_t *)dev_alloc(c, B * wide * 2, sb, sw);
        c->pids = (int *)dev_alloc(c, B * 4, sb, sw);
    }
    CUDA_CHECK(cudaMallocHost((void **)&c->h_logits, (size_t)d.V * 4), "cudaMallocHost");
    CUDA_CHECK(cudaMallocHost((void **)&c->h_state, 4 * sizeof(int)), "cudaMallocHost");
    c->use_graph = 1;
    c->prefetch = 0;  // measured: 3.5% slower on Qwen3-0.6B, no change on 1.7B and 8B (README)
    CUDA_CHECK(cudaMallocHost((void **)&c->h_dbg, (size_t)d.L * 2 * d.H * 4), "cudaMallocHost");
    CUDA_CHECK(cudaMallocHost((void **)&c->h_x, B * d.H * 4), "cudaMallocHost");
    CUDA_CHECK(cudaDeviceSynchronize(), "upload");
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    fprintf(stderr,
            "nano: GPU %s: weights %.2f GiB (bf16), KV cache %.2f GiB, scratch %.2f GiB; %.2f of %.2f GiB in use; decode grid %d x %d, wo_split %d\n",
            prop.name, c->weight_bytes / 1073741824.0, c->kv_bytes / 1073741824.0, c->scratch_bytes / 1073741824.0,
            (total_b - free_b) / 1073741824.0, total_b / 1073741824.0, c->grid, NT, c->wo_split);
    return &c->base;
}

extern "C" void cuda_engine_set_hook(Engine *e, LayerHook hook, void *ctx) {
    CudaEngine *c = (CudaEngine *)e;
    c->hook = hook;
    c->hook_ctx = ctx;
}

extern "C" void cuda_engine_set_wo_split(Engine *e, int wo_split) {
    CudaEngine *c = (CudaEngine *)e;
    if (wo_split != 1 && wo_split != 2 && wo_split != 4 && wo_split != 8) fatal("wo_split %d is not 1, 2, 4 or 8", wo_split);
    c->wo_split = wo_split;
    graph_drop(c);
}

extern "C" void cuda_engine_set_prefetch(Engine *e, int on) {
    CudaEngine *c = (CudaEngine *)e;
    c->prefetch = on;
    graph_drop(c);
}

extern "C" void cuda_engine_use_graph(Engine *e, int on) {
    CudaEngine *c = (CudaEngine *)e;
    c->use_graph = on;
    graph_drop(c);
}

// ---------------------------------------------------------------------------------------------
// Stage access for the tests, KV cache copies, measurements

static void to_dev(void *dst, const void *src, size_t bytes) { CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "test input copy"); }
static void to_host(void *dst, const void *src, size_t bytes) { CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "test output copy"); }

// Host fp32 -> bf16 hi/lo parts on the device (the prefill path's GEMM operand).
static void upload_split(uint16_t *hi, uint16_t *lo, const float *x, size_t n) {
    uint16_t *h = (uint16_t *)xmalloc(n * 2), *l = (uint16_t *)xmalloc(n * 2);
    for (size_t i = 0; i < n; i++) {
        h[i] = f32_to_bf16(x[i]);
        l[i] = f32_to_bf16(x[i] - bf16_to_f32(h[i]));
    }
    to_dev(hi, h, n * 2);
    to_dev(lo, l, n * 2);
    free(h);
    free(l);
}

static void run_stage_decode(CudaEngine *c, CudaStage *s) {
    const Dims &d = c->d;
    DecodeParams p = decode_params(c);
    p.pos = s->pos, p.l0 = s->layer, p.l1 = s->layer + 1, p.stages = 0, p.flags = 0;
    if (s->x) to_dev(c->x, s->x, (size_t)d.H * 4);
    switch (s->stage) {
    case CUDA_ST_QKV: p.stages = ST_QKV; break;
    case CUDA_ST_ATT: to_dev(c->q, s->q, (size_t)d.QD * 4), p.stages = ST_ATT; break;
    case CUDA_ST_WO: to_dev(c->o, s->o, (size_t)d.QD * 4), p.stages = ST_WO, p.flags = F_FLUSH; break;
    case CUDA_ST_MLP: p.stages = ST_MLP | ST_DOWN, p.flags = F_FLUSH; break;
    case CUDA_ST_FINAL: p.l1 = p.l0, p.flags = F_FINAL | F_ARGMAX; break;
    default: fatal("cuda_engine_run_stage: unknown stage %d", s->stage);
    }
    launch_decode(c, &p);
    sync_checked(c, "kernel_decode (stage test)");
    switch (s->stage) {
    case CUDA_ST_QKV: to_host(s->out, c->q, (size_t)d.QD * 4); break;
    case CUDA_ST_ATT: to_host(s->out, c->o, (size_t)d.QD * 4); break;
    case CUDA_ST_WO:
    case CUDA_ST_MLP: to_host(s->out, c->x, (size_t)d.H * 4); break;
    case CUDA_ST_FINAL:
        to_host(s->out, c->logits, (size_t)d.V * 4);
        to_host(&s->argmax, c->state, 4);
        break;
    }
}

static void run_stage_prefill(CudaEngine *c, CudaStage *s) {
    const Dims &d = c->d;
    const DevLayer &w = c->h_layers[s->layer];
    int T = s->T;
    if (T > c->max_batch) fatal("cuda_engine_run_stage: %d tokens exceed max_batch %d", T, c->max_batch);
    if (s->x) to_dev(c->px, s->x, (size_t)T * d.H * 4);
    switch (s->stage) {
    case CUDA_ST_QKV:
        launch_add_norm(c, c->px, NULL, NULL, w.in_norm, T);
        gemm(c, w.wqkv, d.NQKV, d.H, c->pa_hi, c->pa_lo, T, c->praw, "cublasGemmEx (qkv_proj)");
        launch_qkv_finish(c, s->layer, s->pos, T);
        sync_checked(c, "prefill QKV (stage test)");
        to_host(s->out, c->pq, (size_t)T * d.QD * 4);
        break;
    case CUDA_ST_ATT: {
        to_dev(c->pq, s->q, (size_t)T * d.QD * 4);
        launch_attn_prefill(c, s->layer, s->pos, T);
        sync_checked(c, "kernel_attn_prefill (stage test)");
        size_t n = (size_t)T * d.QD;
        uint16_t *h = (uint16_t *)xmalloc(n * 2), *l = (uint16_t *)xmalloc(n * 2);
        to_host(h, c->pa_hi, n * 2);
        to_host(l, c->pa_lo, n * 2);
        for (size_t i = 0; i < n; i++) s->out[i] = bf16_to_f32(h[i]) + bf16_to_f32(l[i]);
        free(h);
        free(l);
        break;
    }
    case CUDA_ST_WO:
        upload_split(c->pa_hi, c->pa_lo, s->o, (size_t)T * d.QD);
        gemm(c, w.wo, d.H, d.QD, c->pa_hi, c->pa_lo, T, c->pproj, "cublasGemmEx (o_proj)");
        launch_add_norm(c, c->px, c->pproj, w.bo, w.post_norm, T);
        sync_checked(c, "prefill o_proj (stage test)");
        to_host(s->out, c->px, (size_t)T * d.H * 4);
        break;
    case CUDA_ST_MLP:
        launch_add_norm(c, c->px, NULL, NULL, w.post_norm, T);
        gemm(c, w.wgu, 2 * d.I, d.H, c->pa_hi, c->pa_lo, T, c->praw, "cublasGemmEx (gate_up_proj)");
        launch_silu(c, T);
        gemm(c, w.wd, d.H, d.I, c->pa_hi, c->pa_lo, T, c->pproj, "cublasGemmEx (down_proj)");
        launch_add_norm(c, c->px, c->pproj, NULL, c->final_norm, T);
        sync_checked(c, "prefill MLP (stage test)");
        to_host(s->out, c->px, (size_t)T * d.H * 4);
        break;
    case CUDA_ST_FINAL:
        launch_add_norm(c, c->px, NULL, NULL, c->final_norm, T);
        gemm(c, c->lm_head, d.V, d.H, c->pa_hi, c->pa_lo, T, c->plogits, "cublasGemmEx (lm_head)");
        sync_checked(c, "prefill lm_head (stage test)");
        to_host(s->out, c->plogits, (size_t)T * d.V * 4);
        break;
    default: fatal("cuda_engine_run_stage: unknown stage %d", s->stage);
    }
}

extern "C" void cuda_engine_run_stage(Engine *e, CudaStage *s) {
    CudaEngine *c = (CudaEngine *)e;
    if (s->T <= 1) run_stage_decode(c, s);
    else run_stage_prefill(c, s);
}

extern "C" void cuda_engine_kv_copy(Engine *e, KVCache *kv, int n, int to_gpu) {
    CudaEngine *c = (CudaEngine *)e;
    const Dims &d = c->d;
    if (kv->format != KV_BF16 || kv->n_layers != d.L || kv->n_kv_heads != d.Hkv || kv->head_dim != d.D || n > kv->capacity ||
        n > d.cap)
        fatal("cuda_engine_kv_copy: the caches differ in format or shape");
    size_t gp = (size_t)d.cap * d.D * 2, hp = (size_t)kv->capacity * d.D * 2, w = (size_t)n * d.D * 2;
    size_t rows = (size_t)d.L * d.Hkv;
    if (!w) return;
    if (to_gpu) {
        CUDA_CHECK(cudaMemcpy2D(c->kc, gp, kv->k, hp, w, rows, cudaMemcpyHostToDevice), "KV cache copy");
        CUDA_CHECK(cudaMemcpy2D(c->vc, gp, kv->v, hp, w, rows, cudaMemcpyHostToDevice), "KV cache copy");
    } else {
        CUDA_CHECK(cudaMemcpy2D(kv->k, hp, c->kc, gp, w, rows, cudaMemcpyDeviceToHost), "KV cache copy");
        CUDA_CHECK(cudaMemcpy2D(kv->v, hp, c->vc, gp, w, rows, cudaMemcpyDeviceToHost), "KV cache copy");
    }
}

extern "C" double cuda_engine_bench_decode(Engine *e, int id, int pos, int steps, int *ids) {
    CudaEngine *c = (CudaEngine *)e;
    if (pos + steps > c->d.cap) fatal("cuda_engine_bench_decode: %d steps from position %d exceed the cache", steps, pos);
    int st[2] = {id, pos};
    CUDA_CHECK(cudaMemcpyAsync(c->state, st, sizeof st, cudaMemcpyHostToDevice, c->st), "state copy");
    sync_checked(c, "state copy");
    DecodeParams p = decode_params(c);
    p.flags |= F_EMBED | F_FINAL | F_ARGMAX | F_CHAIN;
    p.trace = c->trace;
    cudaEvent_t t0, t1;
    CUDA_CHECK(cudaEventCreate(&t0), "cudaEventCreate");
    CUDA_CHECK(cudaEventCreate(&t1), "cudaEventCreate");
    CUDA_CHECK(cudaEventRecord(t0, c->st), "cudaEventRecord");
    for (int s = 0; s < steps; s++) launch_decode(c, &p);
    CUDA_CHECK(cudaEventRecord(t1, c->st), "cudaEventRecord");
    sync_checked(c, "kernel_decode (chained greedy steps)");
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, t0, t1), "cudaEventElapsedTime");
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    if (ids) to_host(ids, c->trace + pos, (size_t)steps * 4);
    return ms / 1e3 / steps;
}

extern "C" void cuda_engine_stage_times(Engine *e, int id, int pos, int reps, double us[6]) {
    CudaEngine *c = (CudaEngine *)e;
    const int L = c->d.L, n = 5 * L + 2;
    unsigned long long t[5 * 256 + 4];
    if (L > 256) fatal("cuda_engine_stage_times: too many layers");
    DecodeParams p = decode_params(c);
    p.flags |= F_EMBED | F_FINAL | F_ARGMAX | F_CHAIN;
    p.timing = c->timing;
    for (int k = 0; k < 6; k++) us[k] = 0;
    for (int r = 0; r < reps; r++) {
        int st[2] = {id, pos};
        CUDA_CHECK(cudaMemcpyAsync(c->state, st, sizeof st, cudaMemcpyHostToDevice, c->st), "state copy");
        launch_decode(c, &p);
        CUDA_CHECK(cudaMemcpyAsync(t, c->timing, (size_t)n * 8, cudaMemcpyDeviceToHost, c->st), "timing copy");
        sync_checked(c, "kernel_decode (stage timing)");
        for (int l = 0; l < L; l++)
            for (int k = 0; k < 5; k++) us[k] += (double)(t[1 + l * 5 + k] - t[l * 5 + k]) / 1e3 / L / reps;
        us[5] += (double)(t[5 * L + 1] - t[5 * L]) / 1e3 / reps;
    }
}

extern "C" void cuda_engine_bytes(Engine *e, double *weights, double *kv_per_pos) {
    CudaEngine *c = (CudaEngine *)e;
    const Dims &d = c->d;
    *weights = 2.0 * ((double)d.L * ((double)d.NQKV * d.H + (double)d.H * d.QD + 3.0 * d.I * d.H) + (double)d.V * d.H);
    *kv_per_pos = 2.0 * 2.0 * d.L * d.Hkv * d.D;
}

extern "C" double cuda_copy_bandwidth(size_t bytes) {
    void *a, *b;
    CUDA_CHECK(cudaMalloc(&a, bytes), "cudaMalloc (copy bandwidth)");
    CUDA_CHECK(cudaMalloc(&b, bytes), "cudaMalloc (copy bandwidth)");
    CUDA_CHECK(cudaMemset(a, 1, bytes), "cudaMemset");
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    cudaEvent_t t0, t1;
    CUDA_CHECK(cudaEventCreate(&t0), "cudaEventCreate");
    CUDA_CHECK(cudaEventCreate(&t1), "cudaEventCreate");
    size_t n = bytes / 16;
    double best = 0;
    for (int r = 0; r < 6; r++) {
        CUDA_CHECK(cudaEventRecord(t0, 0), "cudaEventRecord");
        kernel_copy<<<prop.multiProcessorCount * 4, 512>>>((const uint4 *)a, (uint4 *)b, n);
        LAUNCH_CHECK("kernel_copy");
        CUDA_CHECK(cudaEventRecord(t1, 0), "cudaEventRecord");
        CUDA_CHECK(cudaEventSynchronize(t1), "kernel_copy");
        float ms;
        CUDA_CHECK(cudaEventElapsedTime(&ms, t0, t1), "cudaEventElapsedTime");
        double bw = 2.0 * n * 16 / (ms / 1e3);
        if (r > 0 && bw > best) best = bw;  // the first run warms up
    }
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    cudaFree(a);
    cudaFree(b);
    return best;
}

// ---------------------------------------------------------------------------------------------
// The weights as the engine sees them, and --check

typedef struct {
    Model m;          // first, so a Model * is this struct
    void **bufs;
    int n_bufs;
} RoundedModel;

static void round_tensor(RoundedModel *r, Tensor *t, const Tensor *src) {
    *t = *src;
    if (!src->data || src->dtype == DT_BF16) return;
    size_t n = (size_t)src->rows * src->cols;
    uint16_t *b = (uint16_t *)xmalloc(n * 2);
    for (size_t i = 0; i < n; i++) b[i] = f32_to_bf16(tensor_get(src, i));
    r->bufs[r->n_bufs++] = b;
    t->data = b;
    t->dtype = DT_BF16;
}

extern "C" Model *cuda_rounded_model(const Model *m) {
    RoundedModel *r = (RoundedModel *)xcalloc(1, sizeof *r);
    int L = m->cfg.n_layers;
    r->m = *m;
    r->m.shards = NULL, r->m.n_shards = 0;
    r->bufs = (void **)xcalloc((size_t)L * 7 + 2, sizeof(void *));
    r->m.layers = (LayerWeights *)xcalloc((size_t)L, sizeof(LayerWeights));
    for (int l = 0; l < L; l++) {
        const LayerWeights *s = &m->layers[l];
        LayerWeights *t = &r->m.layers[l];
        *t = *s;
        round_tensor(r, &t->wq, &s->wq);
        round_tensor(r, &t->wk, &s->wk);
        round_tensor(r, &t->wv, &s->wv);
        round_tensor(r, &t->wo, &s->wo);
        round_tensor(r, &t->w_gate, &s->w_gate);
        round_tensor(r, &t->w_up, &s->w_up);
        round_tensor(r, &t->w_down, &s->w_down);
    }
    round_tensor(r, &r->m.embed, &m->embed);
    if (m->lm_head.data == m->embed.data) r->m.lm_head = r->m.embed;
    else round_tensor(r, &r->m.lm_head, &m->lm_head);
    return &r->m;
}

extern "C" void cuda_rounded_model_free(Model *model) {
    RoundedModel *r = (RoundedModel *)model;
    if (!r) return;
    for (int i = 0; i < r->n_bufs; i++) free(r->bufs[i]);
    free(r->bufs);
    free(r->m.layers);
    free(r);
}

typedef struct {
    int L, H;
    float *ref[2];       // per layer and stage: the reference's residual rows of the current call
    size_t cap;          // floats per entry of ref
    double *diff, *mag;  // [L][2] largest |gpu - ref| and largest |ref|
} CheckState;

static void check_ref_hook(void *ctx, int layer, int stage, const float *x, int T) {
    CheckState *s = (CheckState *)ctx;
    size_t n = (size_t)T * s->H;
    float *dst = s->ref[stage] + (size_t)layer * s->cap;
    if (n > s->cap) fatal("--check: %d tokens beyond the check buffers", T);
    memcpy(dst, x, n * sizeof(float));
}

static void check_gpu_hook(void *ctx, int layer, int stage, const float *x, int T) {
    CheckState *s = (CheckState *)ctx;
    const float *r = s->ref[stage] + (size_t)layer * s->cap;
    double *diff = s->diff + layer * 2 + stage, *mag = s->mag + layer * 2 + stage;
    for (size_t i = 0; i < (size_t)T * s->H; i++) {
        double dd = fabs((double)x[i] - r[i]);
        if (!(dd <= *diff)) *diff = dd;  // NaN sticks
        if (fabs(r[i]) > *mag) *mag = fabs(r[i]);
    }
}

#define CHECK_TOL 1e-2  // max |gpu - ref| over max |ref| of a layer's residual; the fixtures measure <= 6e-4 (README)

extern "C" int cuda_check(const Model *m, const int *ids, int n, int n_decode, int capacity, int batch, int wo_split) {
    const Config *cf = &m->cfg;
    char why[256];
    if (batch < 1) batch = 1;
    if (n + n_decode > capacity) n_decode = capacity - n;
    Model *rm = cuda_rounded_model(m);
    Engine *gpu = cuda_engine_create(m, capacity, KV_BF16, batch, wo_split, why, sizeof why);
    if (!gpu) fatal("--check: no GPU engine: %s", why);
    Engine *ref = ref_engine_create(rm, capacity, KV_BF16, batch);
    CheckState s;
    memset(&s, 0, sizeof s);
    s.L = cf->n_layers, s.H = cf->hidden, s.cap = (size_t)batch * cf->hidden;
    for (int k = 0; k < 2; k++) s.ref[k] = (float *)xmalloc((size_t)s.L * s.cap * sizeof(float));
    s.diff = (double *)xcalloc((size_t)s.L * 2, sizeof(double));
    s.mag = (double *)xcalloc((size_t)s.L * 2, sizeof(double));
    ref_engine_set_hook(ref, check_ref_hook, &s);
    cuda_engine_set_hook(gpu, check_gpu_hook, &s);
    size_t V = (size_t)cf->vocab;
    float *lr = (float *)xmalloc((size_t)batch * V * 4), *lg = (float *)xmalloc((size_t)batch * V * 4);
    double max_logit_diff = 0, kld = 0;
    int rows = 0, top1 = 0, tok = 0;
    for (int done = 0; done < n + n_decode;) {
        int T = done < n ? std::min(batch, n - done) : 1;
        const int *in = done < n ? ids + done : &tok;
        ref->forward(ref, in, T, done, lr, 1);
        gpu->forward(gpu, in, T, done, lg, 1);
        for (int t = 0; t < T; t++) {
            const float *a = lr + t * V, *b = lg + t * V;
            int ar = 0, ag = 0;
            double mr = a[0], mg = b[0];
            for (size_t i = 0; i < V; i++) {
                double dd = fabs((double)a[i] - b[i]);
                if (!(dd <= max_logit_diff)) max_logit_diff = dd;
                if (a[i] > a[ar]) ar = (int)i;
                if (b[i] > b[ag]) ag = (int)i;
            }
            mr = a[ar], mg = b[ag];
            double zr = 0, zg = 0, kl = 0;
            for (size_t i = 0; i < V; i++) zr += exp(a[i] - mr), zg += exp(b[i] - mg);
            for (size_t i = 0; i < V; i++) {
                double pr = exp(a[i] - mr) / zr;
                if (pr > 0) kl += pr * ((a[i] - mr - log(zr)) - (b[i] - mg - log(zg)));
            }
            kld += kl;
            top1 += ar == ag;
            rows++;
            tok = ar;
        }
        done += T;
    }
    printf("--check: %d prompt tokens (chunks of %d) + %d decode steps, GPU vs reference (bf16 weights, bf16 KV)\n", n, batch,
           n_decode);
    printf("layer   after attention: max|diff|  relative    after MLP: max|diff|  relative\n");
    int first = -1, first_stage = 0;
    for (int l = 0; l < s.L; l++) {
        double r0 = s.diff[l * 2] / (s.mag[l * 2] > 0 ? s.mag[l * 2] : 1), r1 = s.diff[l * 2 + 1] / (s.mag[l * 2 + 1] > 0 ? s.mag[l * 2 + 1] : 1);
        printf("%5d   %26.3e  %9.2e  %20.3e  %9.2e\n", l, s.diff[l * 2], r0, s.diff[l * 2 + 1], r1);
        if (first < 0 && !(r0 <= CHECK_TOL)) first = l, first_stage = 0;
        if (first < 0 && !(r1 <= CHECK_TOL)) first = l, first_stage = 1;
    }
    printf("logits: max|diff| %.3e, mean KLD %.3e, top-1 agreement %d/%d\n", max_logit_diff, kld / rows, top1, rows);
    if (first >= 0) printf("first layer beyond %.0e: %d (after %s)\n", CHECK_TOL, first, first_stage ? "the MLP" : "attention");
    else printf("every layer within %.0e\n", CHECK_TOL);
    free(lr);
    free(lg);
    free(s.ref[0]);
    free(s.ref[1]);
    free(s.diff);
    free(s.mag);
    ref->free(ref);
    gpu->free(gpu);
    cuda_rounded_model_free(rm);
    return first >= 0;
}
