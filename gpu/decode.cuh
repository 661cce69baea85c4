// The decode kernel: one cooperative launch per token through every layer, its stages separated by
// grid barriers (kernels.cu's head comment walks through them).
#ifndef NANO_GPU_DECODE_CUH
#define NANO_GPU_DECODE_CUH

// Shared memory of kernel_decode, in floats, computed once here for the host (the launch's size) and
// the device (where each part starts): the GEMV input, the attention scratch and the chunk merge's
// weights share the first region; then finish_head's scratch [NW][D], the block reduction [NW] and
// the finished heads [MAX_FIN] (ints).
struct SmemLayout {
    int fscratch, red, fin, total;
    __host__ __device__ size_t bytes() const { return sizeof(float) * (size_t)total; }
};

__host__ __device__ inline SmemLayout decode_smem(const Dims &d, int hp, int att_S) {
    int xs = max(max(d.H, d.QD), d.I), att = NW * hp * d.D + NW * hp * 2, merge = 2 * att_S * d.gs + d.gs;
    SmemLayout s;
    s.fscratch = max(max(xs, att), merge);
    s.red = s.fscratch + NW * d.D;
    s.fin = s.red + NW;
    s.total = s.fin + MAX_FIN;
    return s;
}

// ---------------------------------------------------------------------------------------------
// Decode stages

// RMSNorm and the QKV projections into p.qkv; then, when finish (the attention stage does not follow
// in this launch: stage tests), each head finished by the block that completes its rows.
template <int FMT>
__device__ __forceinline__ void stage_qkv(const DecodeParams &p, const DevLayer &w, int layer, int pos, float *xs, float *red, int *fin,
                          float *fscratch, bool finish) {
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
    if (!finish) return;
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
        finish_head<FMT>(d, w, p.inv_freq, p.kv, p.qkv, NULL, fin[k], layer, pos, p.q, fscratch + warp * d.D);
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
template <int HP, int FMT>
struct Step {
    const DecodeParams &p;
    const Dims &d;
    float *sm, *xs, *fscratch, *red;
    int *fin;
    int pos, cur, npend, ts;  // x[cur] holds the residual, plus npend pending slots at pend
    const float *pend, *pend_bias;
    const uint16_t *emb;      // the token's embedding row until the first stage has read it

    __device__ __forceinline__ Step(const DecodeParams &p_, float *sm_) : p(p_), d(p_.d), sm(sm_), xs(sm_) {
        const SmemLayout s = decode_smem(d, HP, p.att_S);
        fscratch = sm + s.fscratch;
        red = sm + s.red;
        fin = (int *)(sm + s.fin);
        ts = 0;
        stamp();
        int token = p.token;
        pos = p.pos;
        if (p.flags & F_CHAIN) token = p.state[STATE_TOKEN], pos = p.state[STATE_POS];
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

    // With the attention stage in the same launch, the heads are finished there (fused): the blocks
    // of a kv head finish its q heads, the one with the last chunk also its K and V.
    __device__ __forceinline__ void qkv(int l, bool fused) {
        gather(p.dbg && l > 0 && pend ? p.dbg + ((size_t)(l - 1) * 2 + 1) * d.H : NULL);
        stage_qkv<FMT>(p, p.layers[l], l, pos, xs, red, fin, fscratch, !fused);
    }
    __device__ __forceinline__ void attention(int l, bool fused) { stage_attention<HP, FMT>(p, l, pos, sm, fused ? fscratch : NULL); }
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
    // Final norm + lm_head with each block's best logit of ids [0, n_ids) and first non-finite one,
    // then (F_ARGMAX) the pick over the blocks, ties to the lowest id, and the first non-finite logit.
    __device__ __forceinline__ void head() {
        __shared__ float best_v[NW];
        __shared__ int best_i[NW], bad_i[NW];
        gather(p.dbg && pend == p.dslot ? p.dbg + ((size_t)(p.l1 - 1) * 2 + 1) * d.H : NULL);
        rmsnorm_block(xs, p.final_norm, d.H, d.eps, red);
        float bv = -INFINITY, *logits = p.logits;
        int bi = 0x7fffffff, bad = 0x7fffffff, V = d.V, n_ids = p.n_ids;
        auto take = [&](int r, float v) {
            logits[r] = v;
            if (r < n_ids && v > bv) bv = v, bi = r;
            if (!isfinite(v)) bad = min(bad, r);
        };
        gemv_items(map_head(), [&](int it, float ra, float rb) {
            take(2 * it, ra);
            if (2 * it + 1 < V) take(2 * it + 1, rb);
        });
        if (!(p.flags & F_ARGMAX)) return;
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        if (lane == 0) best_v[warp] = bv, best_i[warp] = bi, bad_i[warp] = bad;
        __syncthreads();
        if (threadIdx.x == 0) {
            float v = best_v[0];
            int i = best_i[0], b = bad_i[0];
            for (int k = 1; k < NW; k++) {
                if (best_v[k] > v || (best_v[k] == v && best_i[k] < i)) v = best_v[k], i = best_i[k];
                b = min(b, bad_i[k]);
            }
            p.best_val[blockIdx.x] = v;
            p.best_idx[blockIdx.x] = i;
            p.first_bad[blockIdx.x] = b;
        }
        grid_sync(p.bar);
        if (blockIdx.x == 0 && threadIdx.x == 0) {
            float v = __ldcg(p.best_val);
            int i = __ldcg(p.best_idx), b = __ldcg(p.first_bad);
            for (int k = 1; k < (int)gridDim.x; k++) {
                float vk = __ldcg(p.best_val + k);
                int ik = __ldcg(p.best_idx + k);
                if (vk > v || (vk == v && ik < i)) v = vk, i = ik;
                b = min(b, __ldcg(p.first_bad + k));
            }
            if (i == 0x7fffffff) i = 0;  // every logit NaN: STATE_BAD_ID reports it
            int out[STATE_WORDS];
            out[STATE_TOKEN] = i;
            out[STATE_POS] = (p.flags & F_CHAIN) ? pos + 1 : p.state[STATE_POS];
            out[STATE_LOGIT] = __float_as_int(v);
            out[STATE_BAD_ID] = b;
            out[STATE_BAD_LOGIT] = b == 0x7fffffff ? 0 : __float_as_int(__ldcg(logits + b));
            for (int k = 0; k < STATE_WORDS; k++) p.state[k] = out[k];
            if (p.picks)
                for (int k = 0; k < STATE_WORDS; k++) p.picks[(pos & 1) * STATE_WORDS + k] = out[k];
            if (p.trace) p.trace[pos] = i;
        }
    }
    // The residual with its pending slots into x[0] (tests read it there).
    __device__ __forceinline__ void flush() {
        grid_sync(p.bar);
        for (int i = blockIdx.x * NT + threadIdx.x; i < d.H; i += gridDim.x * NT) {
            float v = emb ? bf16_to_f32(emb[i]) : __ldcg(p.x + cur * d.H + i);
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
template <int HP, int FMT>
__global__ void __launch_bounds__(NT, 1) kernel_decode(const __grid_constant__ DecodeParams p) {
    extern __shared__ float4 smem4[];
    Step<HP, FMT> st(p, (float *)smem4);
    const bool whole = p.stages == ST_ALL && p.l0 == 0 && p.l1 == p.d.L && (p.flags & F_PREFETCH);
    if (whole) prefetch_first(st.map_qkv(0));
    const bool fused = (p.stages & ST_QKV) && (p.stages & ST_ATT);
    for (int l = p.l0; l < p.l1; l++) {
        if (p.stages & ST_QKV) st.qkv(l, fused), st.sync();
        if (p.stages & ST_ATT) st.attention(l, fused), st.sync();  // a prefetch here would queue ahead of K and V
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

#endif
