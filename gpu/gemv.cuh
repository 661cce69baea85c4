// GEMV over bf16 weight rows, the decode kernel's matrix stages: a warp per item of two rows, weights
// streamed once, x in shared memory; and the residual gathered from the slots of a split reduction.
#ifndef NANO_GPU_GEMV_CUH
#define NANO_GPU_GEMV_CUH

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
        float v = emb_row ? bf16_to_f32(emb_row[i]) : __ldcg(x_in + i);
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

#endif
