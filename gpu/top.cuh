// The ranking of one logits row for the host's sampler (TopLogits in nano.h), so that a token costs
// the host a few hundred bytes instead of the whole vocabulary: the TOP_KEEP highest ranked ids of
// [0, n_ids) and the first non-finite logit of the row.
//
// The ranking is nano.h's rank_key(), the host's too: sorting keys in descending order ranks the
// ids; key 0 stands for "none". Each block finds the best TOP_KEEP keys of a slice of TOP_SLICE ids
// (a radix select, then a bitonic sort of those few); one block then does the same with what the
// slices kept. Keys are unique but for 0, so the result does not depend on the order of the atomics.
#ifndef NANO_GPU_TOP_CUH
#define NANO_GPU_TOP_CUH

#define TOP_SLICE 4096      // ids a block ranks (a power of two)
#define TOP_KEEP TOP_LOGITS_RANKED
#define TOP_THREADS 1024

struct TopResult {
    unsigned long long key[TOP_KEEP];  // rank_key()s, descending
    int bad_id;                        // INT_MAX when every logit is finite
    float bad_logit;
};

// Sorts k[0..n) (n a power of two) in descending order with the whole block; ends with a barrier.
__device__ void block_sort_desc(unsigned long long *k, int n) {
    for (int size = 2; size <= n; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            __syncthreads();
            for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
                int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;  // a pair stride apart
                unsigned long long a = k[lo], b = k[hi];
                if ((a < b) == ((lo & size) == 0)) k[lo] = b, k[hi] = a;  // descending runs, then ascending ones
            }
        }
    __syncthreads();
}

#define TOP_SELECT 128  // a power of two >= TOP_KEEP: what the radix select hands the sort

// The best TOP_KEEP of the keys k[0..TOP_SLICE) into k[0..TOP_KEEP), in descending order. The threshold
// is found a byte at a time from the top (a histogram of the keys that share the bytes chosen so far),
// until the keys above it and those equal to it up to there are TOP_KEEP; the rest of k is left as is.
__device__ void block_top(unsigned long long *k) {
    __shared__ unsigned hist[256];
    __shared__ unsigned long long sel[TOP_SELECT], prefix_s, mask_s;
    __shared__ int need_s, done_s, n_sel;
    unsigned long long prefix = 0, mask = 0;
    int need = TOP_KEEP, done = 0;
    const int lane = threadIdx.x & 31;
    for (int shift = 56; shift >= 0 && !done; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < TOP_SLICE; i += blockDim.x) {  // every lane of a warp iterates alike
            unsigned long long x = k[i];
            int digit = (x & mask) == prefix ? (int)(x >> shift) & 255 : -1;
            unsigned peers = __match_any_sync(0xffffffffu, digit);
            if (digit >= 0 && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], (unsigned)__popc(peers));
        }
        __syncthreads();
        if (threadIdx.x < 32) {  // the largest digit d with at least need keys at d or above: lane L holds 255 - 8L ..
            unsigned c[8], sum = 0;
            for (int j = 0; j < 8; j++) c[j] = hist[255 - 8 * lane - j], sum += c[j];
            unsigned incl = sum;
            for (int o = 1; o < 32; o <<= 1) {
                unsigned t = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += t;
            }
            unsigned at = __ffs(__ballot_sync(0xffffffffu, incl >= (unsigned)need)) - 1;
            if (lane == (int)at) {
                unsigned cum = incl - sum;
                int j = 0;
                while (cum + c[j] < (unsigned)need) cum += c[j++];
                int d = 255 - 8 * lane - j, rest = need - (int)cum;  // keys still to take among those at d
                prefix_s = prefix | (unsigned long long)d << shift;
                mask_s = mask | 255ull << shift;
                need_s = rest;
                done_s = c[j] == (unsigned)rest;
            }
        }
        __syncthreads();
        prefix = prefix_s, mask = mask_s, need = need_s, done = done_s;
    }
    // The keys above the threshold, and those at it when all of them are taken (otherwise the keys at it
    // are the repeated key 0: the zeros of sel stand for them).
    if (threadIdx.x == 0) n_sel = 0;
    for (int i = threadIdx.x; i < TOP_SELECT; i += blockDim.x) sel[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < TOP_SLICE; i += blockDim.x) {
        unsigned long long x = k[i], top = x & mask;
        if (top > prefix || (done && top == prefix)) sel[atomicAdd(&n_sel, 1)] = x;
    }
    block_sort_desc(sel, TOP_SELECT);
    for (int i = threadIdx.x; i < TOP_KEEP; i += blockDim.x) k[i] = sel[i];
    __syncthreads();
}

// Several rows at once: blockIdx.y ranks row rows[blockIdx.y] of logits ([row][vocab]; rows NULL: row
// 0), with its own part of kept, bad and out.

// Block b ranks ids [b TOP_SLICE, (b + 1) TOP_SLICE): its best TOP_KEEP keys into kept[b][], the first
// id of its slice with a non-finite logit (or INT_MAX) into bad[b].
__global__ void __launch_bounds__(TOP_THREADS) kernel_top_slices(const float *logits, const int *rows, int vocab, int n_ids,
                                                                 unsigned long long *kept, int *bad) {
    __shared__ unsigned long long k[TOP_SLICE];
    __shared__ int first_bad;
    logits += (size_t)(rows ? rows[blockIdx.y] : 0) * vocab;
    kept += (size_t)blockIdx.y * gridDim.x * TOP_KEEP;
    bad += (size_t)blockIdx.y * gridDim.x;
    if (threadIdx.x == 0) first_bad = INT_MAX;
    __syncthreads();
    int base = blockIdx.x * TOP_SLICE;
    for (int i = threadIdx.x; i < TOP_SLICE; i += blockDim.x) {
        int id = base + i;
        unsigned long long key = 0;
        if (id < vocab) {
            float v = logits[id];
            if (!isfinite(v)) atomicMin(&first_bad, id);  // the smallest, whatever the order
            else if (id < n_ids) key = rank_key(v, id);
        }
        k[i] = key;
    }
    block_top(k);
    for (int i = threadIdx.x; i < TOP_KEEP; i += blockDim.x) kept[(size_t)blockIdx.x * TOP_KEEP + i] = k[i];
    if (threadIdx.x == 0) bad[blockIdx.x] = first_bad;
}

// One block: the best TOP_KEEP of the slices' n_slices x TOP_KEEP keys, TOP_SLICE at a time (the best
// so far stay at the front), and the first non-finite logit.
__global__ void __launch_bounds__(TOP_THREADS) kernel_top_merge(const float *logits, const int *rows, int vocab,
                                                                const unsigned long long *kept, const int *bad, int n_slices, TopResult *out) {
    __shared__ unsigned long long k[TOP_SLICE];
    logits += (size_t)(rows ? rows[blockIdx.y] : 0) * vocab;
    kept += (size_t)blockIdx.y * n_slices * TOP_KEEP;
    bad += (size_t)blockIdx.y * n_slices;
    out += blockIdx.y;
    int total = n_slices * TOP_KEEP;
    for (int done = 0, front = 0; done < total; front = TOP_KEEP) {
        int take = min(total - done, TOP_SLICE - front);
        for (int i = threadIdx.x; i < TOP_SLICE - front; i += blockDim.x) k[front + i] = i < take ? kept[done + i] : 0;
        done += take;
        block_top(k);
    }
    for (int i = threadIdx.x; i < TOP_KEEP; i += blockDim.x) out->key[i] = k[i];
    if (threadIdx.x == 0) {
        int first = INT_MAX;
        for (int s = 0; s < n_slices; s++) first = min(first, bad[s]);
        out->bad_id = first;
        out->bad_logit = first == INT_MAX ? 0.0f : logits[first];
    }
}

#endif
