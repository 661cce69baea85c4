// Common to every GPU stage: checked CUDA calls, the model's shapes, per-layer device weights, and
// device helpers (warp and block sums, streaming loads, the grid barrier, RMSNorm over a block).
#ifndef NANO_GPU_COMMON_CUH
#define NANO_GPU_COMMON_CUH

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
// Shapes, per-layer weights and the device buffers

#define NT 512          // threads of a decode block
#define NW (NT / 32)    // warps of a decode block
#define MAX_SPLIT 8     // most slots of a split reduction
#define MAX_FIN 64      // most heads one block can finish in the QKV stage
#define GU 4            // 16-byte weight loads in flight per row and lane in the GEMV

struct Dims {
    int H, I, L, Hq, Hkv, D, V, QD, KVD, NQKV, NH, gs;  // NH = Hq + 2 Hkv heads in [Wq;Wk;Wv]
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

// Every device buffer of the engine, in one table: the engine keeps one, each decode launch gets a copy.
struct DevBufs {
    const DevLayer *layers;
    const uint16_t *embed, *lm_head;
    const float *final_norm, *inv_freq;
    KVCache kv;             // device planes (kv.h)
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
    int *first_bad;         // [grid] the block's first non-finite logit (INT_MAX: none)
    unsigned *bar;          // grid barrier word
    unsigned *tick;         // [NH] head tickets of QKV, then [Hkv] chunk tickets of ATT
    int *state;             // [STATE_WORDS]: token, position (F_CHAIN); the pick's logit, first non-finite id and its logit
    int *trace;             // [cap + 1] greedy picks by position, or NULL
    float *dbg;             // [L][2][H] residual after attention / after MLP, or NULL
    unsigned long long *timing;  // %globaltimer at the start and after each stage (block 0), or NULL
};

// One decode launch: the buffers, the shape, and what to run.
struct DecodeParams : DevBufs {
    Dims d;
    int wo_split, down_split, att_S, gq;
    int token, pos, l0, l1, stages, flags;
    int n_ids;  // F_ARGMAX picks among ids [0, n_ids)
    int *picks;  // or NULL: F_ARGMAX also writes state[] to picks[(pos & 1) * STATE_WORDS ..] (mapped host memory)
};

// What a step leaves in state[]; the host reads it back whole after a greedy step.
enum { STATE_TOKEN, STATE_POS, STATE_LOGIT, STATE_BAD_ID, STATE_BAD_LOGIT, STATE_WORDS };

enum {
    F_EMBED = 1,    // start from the token's embedding row (else from the residual buffer x[0])
    F_FINAL = 2,    // final norm + lm_head into logits
    F_ARGMAX = 4,   // greedy pick into state[] (and trace[pos]), with the first non-finite logit
    F_CHAIN = 8,    // token and position come from state[0], state[1]; the pick advances them
    F_FLUSH = 16,   // at the end, store the residual (pending slots added) into x[0]
    F_PREFETCH = 32,  // before each barrier of a whole step, prefetch the next stage's first weights
};

// ---------------------------------------------------------------------------------------------
// Device helpers

// The instance of a kernel template for q heads per lane hp (1, 2 or 4) and a GPU KV format;
// K<HP, FMT>::fn() names it (a line beside each kernel template).
template <template <int, int> class K, int HP>
static const void *kernel_for_format(KVFormat f) {
    switch (f) {
    case KV_F16: return K<HP, KV_F16>::fn();
    case KV_INT8: return K<HP, KV_INT8>::fn();
    case KV_K8V4: return K<HP, KV_K8V4>::fn();
    case KV_KV4H: return K<HP, KV_KV4H>::fn();
    default: return K<HP, KV_BF16>::fn();
    }
}
template <template <int, int> class K>
static const void *kernel_instance(int hp, KVFormat f) {
    return hp == 1 ? kernel_for_format<K, 1>(f) : hp == 2 ? kernel_for_format<K, 2>(f) : kernel_for_format<K, 4>(f);
}

__device__ __forceinline__ float bf_lo(unsigned u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf_hi(unsigned u) { return __uint_as_float(u & 0xffff0000u); }

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

#endif
