// The decode attention stage: split-KV GQA attention over the cache, each kv head's K and V read
// once for all its query heads, unpacked in registers from the cache's format, fp32 online softmax,
// chunks merged by log-sum-exp in a fixed order.
#ifndef NANO_GPU_ATTENTION_CUH
#define NANO_GPU_ATTENTION_CUH

// One (kv head g, chunk c) unit of attention over positions [c*CL, min(n, (c+1)*CL)).
// HP: q heads per lane (1, 2 or 4); the group's heads are spread over ceil(gs / HP) sets of warps.
// A single chunk writes the output itself; otherwise the last chunk of the kv head to finish merges.
// KC, VC: the cache's codecs, so each lane unpacks its 8 elements of K and V in registers. A K row's
// wide channels (kv.h), when WIDE, are added to the score by the first n_wide lanes of its lane group.
// WARPS: the block's (the decode kernel's NW; shared memory [WARPS][HP][D + 2] floats). Returns whether
// this block wrote the kv head's output (its only chunk, or the merge of all).
template <int HP, KVCodec KC, KVCodec VC, bool WIDE, int WARPS = NW>
__device__ bool attention_unit(const DecodeParams &p, int layer, int g, int c, int CL, int n, int n_chunks, float *sm) {
    constexpr int THREADS = WARPS * 32;
    constexpr int UA = HP >= 4 ? 2 : HP == 2 ? 4 : 8;  // positions in flight per lane group (registers permitting)
    const Dims &d = p.d;
    const int D = d.D, LG = D >> 3, GPW = 32 / LG;
    const int nhs = (d.gs + HP - 1) / HP, wps = WARPS / nhs;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int set = warp / wps, wis = warp % wps, li = lane % LG, lg = lane / LG;
    const bool act = set < nhs;
    const int c0 = c * CL, c1 = min(n, c0 + CL);
    const KVCache &kv = p.kv;
    const uint8_t *K = kv_data_at(&kv, 0, layer, g, 0), *Ka = kv_aux_at(&kv, 0, layer, g, 0);
    const uint8_t *V = kv_data_at(&kv, 1, layer, g, 0), *Va = kv_aux_at(&kv, 1, layer, g, 0);
    const size_t kdb = kv_data_bytes(KC, D), kab = kv_aux_bytes(KC, D, kv.n_wide);
    const size_t vdb = kv_data_bytes(VC, D), vab = kv_aux_bytes(VC, D, 0);
    const float qscale = rsqrtf((float)D) * 1.4426950408889634f;  // scores in log2 units
    const int wide_ch = WIDE && li < kv.n_wide ? kv_wide_at(&kv, 0, layer, g)[li] : -1;  // -1: none (n_wide may be 0)
    const float *wide = (const float *)(Ka + kv_wide_offset(KC, D)) + li;  // + j * kab / 4 for position j

    float qr[HP][8], qw[HP], acc[HP][8], m[HP], l[HP];
#pragma unroll
    for (int h = 0; h < HP; h++) {
        int gh = set * HP + h;
        bool ok = act && gh < d.gs;
        const float *qh = p.q + (size_t)(g * d.gs + gh) * D;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            qr[h][e] = ok ? __ldcg(qh + li * 8 + e) * qscale : 0.0f;
            acc[h][e] = 0;
        }
        qw[h] = WIDE && ok && wide_ch >= 0 ? __ldcg(qh + wide_ch) * qscale : 0.0f;
        m[h] = -INFINITY;
        l[h] = 0;
    }
    __syncthreads();  // smem of the previous unit is free
    if (act) {
        const int step = wps * GPW;
        for (int jb = c0 + wis * GPW; jb < c1; jb += step * UA) {
            KVChunk kr[UA], vr[UA];
            float wv[UA];
#pragma unroll
            for (int a = 0; a < UA; a++) {
                int j = jb + a * step + lg;
                if (j < c1) {
                    kr[a] = kv_fetch8(KC, K + j * kdb, Ka + j * kab, li);
                    vr[a] = kv_fetch8(VC, V + j * vdb, Va + j * vab, li);
                    wv[a] = WIDE && wide_ch >= 0 ? __ldcg(wide + j * (kab / 4)) : 0.0f;
                } else {
                    kr[a] = vr[a] = KVChunk{{0, 0, 0, 0}, 0};
                    wv[a] = 0;
                }
            }
            // The pass's scores first, independent of one another (a lane group's dot product summed
            // over its lanes), then one online-softmax update per head for all UA positions, so that
            // only the update waits on the one before it.
            float sc[UA][HP];
#pragma unroll
            for (int a = 0; a < UA; a++) {
                float kf[8];
                kv_unpack8(KC, kr[a], kf);
#pragma unroll
                for (int h = 0; h < HP; h++) {
                    float t = WIDE ? qw[h] * wv[a] : 0.0f;
#pragma unroll
                    for (int e = 0; e < 8; e++) t = fmaf(qr[h][e], kf[e], t);
                    sc[a][h] = t;
                }
            }
            for (int o = LG >> 1; o; o >>= 1)
#pragma unroll
                for (int a = 0; a < UA; a++)
#pragma unroll
                    for (int h = 0; h < HP; h++) sc[a][h] += __shfl_xor_sync(0xffffffffu, sc[a][h], o);
#pragma unroll
            for (int h = 0; h < HP; h++) {
                float mx = -INFINITY;
#pragma unroll
                for (int a = 0; a < UA; a++)
                    if (jb + a * step + lg < c1) mx = fmaxf(mx, sc[a][h]);
                if (mx == -INFINITY) {  // no position of this lane group in the pass: nothing to add
#pragma unroll
                    for (int a = 0; a < UA; a++) sc[a][h] = 0;
                    continue;
                }
                const float mn = fmaxf(m[h], mx), cf = exp2f(m[h] - mn);
                float ps = 0;
#pragma unroll
                for (int a = 0; a < UA; a++) {
                    sc[a][h] = jb + a * step + lg < c1 ? exp2f(sc[a][h] - mn) : 0.0f;  // the weight p
                    ps += sc[a][h];
                }
                l[h] = l[h] * cf + ps;
#pragma unroll
                for (int e = 0; e < 8; e++) acc[h][e] *= cf;
                m[h] = mn;
            }
#pragma unroll
            for (int a = 0; a < UA; a++) {
                if (jb + a * step >= c1) break;  // warp-uniform: no lane group of the warp has a position left
                float vf[8];
                kv_unpack8(VC, vr[a], vf);
#pragma unroll
                for (int h = 0; h < HP; h++)
#pragma unroll
                    for (int e = 0; e < 8; e++) acc[h][e] = fmaf(sc[a][h], vf[e], acc[h][e]);
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
        float *wacc = sm + (size_t)warp * HP * D, *wml = sm + (size_t)WARPS * HP * D + warp * HP * 2;
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
    const float *sml = sm + (size_t)WARPS * HP * D;
    for (int t = threadIdx.x; t < nhs * HP * D; t += THREADS) {
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
    if (n_chunks == 1) return true;
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
    if (!last) return false;
    // Chunk weights w_c = exp2(m_c - M) per head into shared memory (all loads in flight at once),
    // then each output element sums its chunks in order, eight loads at a time.
    float *wsm = sm, *lsm = sm + (size_t)n_chunks * d.gs;  // [n_chunks][gs] weights, [gs] total weights
    for (int t = threadIdx.x; t < n_chunks * d.gs; t += THREADS) {
        size_t pi = ((size_t)g * p.att_S + t / d.gs) * p.gq + t % d.gs;
        wsm[t] = __ldcg(p.part_ml + pi * 2);
        wsm[n_chunks * d.gs + d.gs + t] = __ldcg(p.part_ml + pi * 2 + 1);
    }
    __syncthreads();
    for (int h = threadIdx.x; h < d.gs; h += THREADS) {
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
    for (int t = threadIdx.x; t < d.gs * D; t += THREADS) {
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
    return true;
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

// The heads a block attending for kv head g needs, finished from the QKV projections (finish_head's
// raw and raw_lo), a warp a head: the group's q heads into q (every block of the kv head computes the
// same bits) and, with_kv (the block that reads position pos), K and V into the cache before it reads
// them. scratch: [WARPS][D] floats of shared memory. Ends with a CTA barrier.
template <int FMT, int WARPS>
__device__ void finish_unit_heads(const DecodeParams &p, const KVCache &kv, const float *raw, const float *raw_lo, int g, bool with_kv,
                                  int layer, int pos, float *q, float *scratch) {
    const Dims &d = p.d;
    const int warp = threadIdx.x >> 5, n_heads = d.gs + (with_kv ? 2 : 0);
    for (int k = warp; k < n_heads; k += WARPS) {  // q heads, then k and v
        const int h = k < d.gs ? g * d.gs + k : k == d.gs ? d.Hq + g : d.Hq + d.Hkv + g;
        finish_head<FMT>(d, p.layers[layer], p.inv_freq, kv, raw, raw_lo, h, layer, pos, q, scratch + warp * d.D);
    }
    __syncthreads();  // q, K and V are written
}

// Every unit of this block, in the format FMT (a kernel_decode instance of its own). bf16 has no
// wide channels (kv.c), nor has kv4h on the GPU (the engine refuses such models); the other formats
// add theirs when the model has some. kv4h's rows are rotated: so is q (finish_head), and the
// output, whose rotation o_proj's weights undo (folded in at upload).
// fscratch ([NW][D] floats of shared memory, or NULL): first finish the unit's heads from the QKV
// projections in p.qkv (finish_unit_heads; the last chunk's unit also K and V).
template <int HP, int FMT>
__device__ void stage_attention(const DecodeParams &p, int layer, int pos, float *sm, float *fscratch) {
    const Dims &d = p.d;
    int CL, nc;
    att_chunks(pos + 1, p.att_S, &CL, &nc);
    int units = d.Hkv * nc;
    for (int u = blockIdx.x; u < units; u += gridDim.x) {
        const int g = u / nc, c = u % nc;
        if (fscratch) finish_unit_heads<FMT, NW>(p, p.kv, p.qkv, NULL, g, c == nc - 1, layer, pos, p.q, fscratch);
        attention_unit<HP, Codecs<FMT>::k, Codecs<FMT>::v, FMT != KV_BF16 && FMT != KV_KV4H>(p, layer, g, c, CL, pos + 1, nc, sm);
    }
}

// Batched decode: row blockIdx.y of the batch attends over positions 0..pos of its own sequence
// (state: [n_seqs] ids, [n_seqs] positions (-1: none), [n_seqs] extent bases), each kv head's context
// split into up to ROWS_CHUNKS chunks of ROWS_MIN_CHUNK or more positions: the decode stage's units,
// with q, o, the chunks' partial results and tickets at the row's place (part
// [n_seqs][Hkv][ROWS_CHUNKS][gq][D], tickets [n_seqs][NH + Hkv]). A kv head has per_head blocks
// (blockIdx.x = kv head x per_head + b); block b takes chunks b, b + per_head, ... The chunking depends
// on the row's context alone and a chunk's sums on nothing else, so a row's bits depend neither on the
// batch nor on per_head. Each block first finishes the heads it needs from the QKV GEMM's output (p.qkv:
// hi products [n_seqs][NQKV], then lo): the group's q heads (every block of the kv head alike: the same
// bits), and in the block with the last chunk the new K and V, written into the cache at pos before
// that chunk reads them. The block that writes a kv head's output also writes it as the o_proj GEMM's
// operands (hi [n_seqs][QD], then lo).
// A unit's positions go one memory wait after another, so the waits of many warps must overlap.
// Measured on the H200, rows of 128-256 positions, f16 (attention's ms a step at 8 / 32 / 64 rows):
// Qwen3-0.6B, 4 warps 0.42 / 0.51 / 0.70, 8 warps 0.30 / 0.44 / 0.84; Qwen3-8B, 4 warps 0.92 / 1.07 /
// 1.42, 8 warps 0.62 / 0.90 / 1.72 (64 rows of 8-warp blocks take two waves); 32-position chunks and
// their merge, or a block per possible chunk, most of them idle, were slower. So blocks of
// ROWS_WARPS(M) warps: 8 up to 32 rows, 4 above (fixed for an engine: its row count is).
#define ROWS_CHUNKS 8
#define ROWS_MIN_CHUNK 256
#define ROWS_WARPS(M) ((M) > 32 ? 4 : 8)
template <int HP, int FMT, int WARPS>
__global__ void __launch_bounds__(WARPS * 32, NW / WARPS) kernel_attn_rows(const __grid_constant__ DecodeParams p,
                                                                                    const int *state, int layer, int per_head,
                                                                                    uint16_t *hi) {
    extern __shared__ float4 smem_rows[];
    const Dims &d = p.d;
    const int r = blockIdx.y, M = gridDim.y, pos = state[M + r], QD = d.QD;
    if (pos < 0) return;
    const int g = blockIdx.x / per_head, n = pos + 1;
    const int CL = max((n + ROWS_CHUNKS - 1) / ROWS_CHUNKS, ROWS_MIN_CHUNK), nc = (n + CL - 1) / CL;
    const size_t units = (size_t)d.Hkv * ROWS_CHUNKS * p.gq;
    DecodeParams pr = p;
    pr.kv = kv_view(&p.kv, state[2 * M + r]);
    pr.q = p.q + (size_t)r * QD;
    pr.o = p.o + (size_t)r * QD;
    pr.part = p.part + (size_t)r * units * d.D;
    pr.part_ml = p.part_ml + (size_t)r * units * 2;
    pr.tick = p.tick + (size_t)r * (d.NH + d.Hkv);
    pr.att_S = ROWS_CHUNKS;
    const int b = blockIdx.x % per_head;
    if (b >= nc) return;
    finish_unit_heads<FMT, WARPS>(p, pr.kv, p.qkv + (size_t)r * d.NQKV, p.qkv + (size_t)(M + r) * d.NQKV, g, b == (nc - 1) % per_head, layer,
                                  pos, pr.q, (float *)smem_rows);
    for (int ci = b; ci < nc; ci += per_head) {
        if (!attention_unit<HP, Codecs<FMT>::k, Codecs<FMT>::v, FMT != KV_BF16 && FMT != KV_KV4H, WARPS>(pr, layer, g, ci, CL, n, nc,
                                                                                                    (float *)smem_rows))
            continue;
        __syncthreads();  // the block's stores of o are visible to the whole block
        const int w = d.gs * d.D;
        for (int i = threadIdx.x; i < w; i += WARPS * 32) {
            size_t k = (size_t)r * QD + (size_t)g * w + i;
            bf16_split(pr.o[(size_t)g * w + i], hi + k, hi + (size_t)M * QD + k);
        }
    }
}

template <int HP, int FMT> struct AttnRows4Kernel {
    static const void *fn() { return (const void *)kernel_attn_rows<HP, FMT, 4>; }
};
template <int HP, int FMT> struct AttnRows8Kernel {
    static const void *fn() { return (const void *)kernel_attn_rows<HP, FMT, 8>; }
};

#endif
