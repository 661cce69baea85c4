// GPU engine: bf16 weights and a KV cache in any GPU format of kv.h on one CUDA device, fp32
// activations and sums.
//
// Decode (one token) is kernel_decode: one cooperative launch per token that runs every layer, its
// stages separated by a grid barrier (grid = SMs x occupancy, 512 threads a block):
//   QKV   residual (+ pending slot sums) -> RMSNorm -> GEMV over the rows of [Wq;Wk;Wv]
//   ATT   units of (kv head, KV chunk), each serving every q head of its GQA group, so K and V are read
//         once and unpacked in registers; a unit first finishes its heads (bias, q_norm/k_norm, RoPE;
//         the last chunk's unit writes K/V into the cache in its format); fp32 online softmax; the
//         last unit of a kv head merges the chunks by log-sum-exp in chunk order
//   WO    o_proj with its reduction split into wo_split slices, one slot each
//   MLP   residual += slots in slot order (+ o bias); RMSNorm; gate/up GEMV; SiLU(gate) * up
//   DOWN  down_proj into slots; the next stage adds them in slot order
// then final RMSNorm + lm_head with a per-block argmax, and (greedy) a last barrier for the pick.
// Prefill (a chunk of tokens) runs cuBLAS bf16 GEMMs on activations split into bf16 hi + lo parts (so
// the products keep ~16 mantissa bits) and a tiled causal attention: on tensor cores for f16 and bf16
// caches (q and the softmax weights split the same way), in fp32 otherwise.
// Nothing is summed with atomics: a run repeats bit for bit for a given grid size and wo_split.
//
// The kernels live in gpu/, one concern a header, included here in decode order into this one
// translation unit:
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>

#include <algorithm>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"
extern "C" {
#include "nano.h"
#include "gpu/hooks.h"
}

#include "gpu/common.cuh"     // checks, shapes, device buffers, warp/block helpers, grid barrier
#include "gpu/kv.cuh"         // the cache written by a warp, read by the prefill tiles
#include "gpu/gemv.cuh"       // weight-streaming GEMV maps, the residual gather
#include "gpu/qkv.cuh"        // q/k norm, RoPE, K/V into the cache
#include "gpu/attention.cuh"  // split-KV GQA attention, codecs in registers
#include "gpu/decode.cuh"     // the stages and kernel_decode
#include "gpu/prefill.cuh"    // the prefill kernels around cuBLAS
#include "gpu/top.cuh"        // the logits ranked for the host's sampler

// ---------------------------------------------------------------------------------------------
// Host side: the engine

// The activations of a chunk of rows: T tokens of one sequence (prefill) or one token of each of
// several sequences (batched decode). GEMM operands are bf16 hi + lo parts.
struct Acts {
    float *x, *q, *o;                    // [T][H] residual, [T][QD] queries, [T][QD] attention output (batched decode)
    float *raw, *proj, *logits;          // GEMM outputs [2T][max(NQKV, 2I)], [2T][H], [2T][V]: hi products, lo products
    uint16_t *hi;                        // GEMM operands [2T][max(H, QD, I)]: bf16 hi parts, then lo parts
    int *ids;                            // [T]
};

typedef struct {
    Engine base;
    const Model *m;
    Dims d;
    int grid, hp, att_S, gq, wo_split, down_split, max_batch;
    int mma_groups;  // the most key-tile groups a block of the tensor-core prefill attention can have
    int mma_force;   // tests: groups a block always (0: by the grid)
    size_t smem;
    const void *kfn;
    DevLayer *h_layers;  // the layer table on the host (the prefill path reads it there)
    DevBufs b;           // every device buffer the decode kernel reads or writes
    cudaGraphExec_t gexec[2];  // chained decode steps: [0] keeps the logits, [1] also picks (graph_n_ids ids)
    int use_graph, graph_failed, prefetch, graph_n_ids;
    int *h_state;  // pinned
    // Greedy steps: what the steps at even and odd positions left in state[] (mapped host memory) and
    // when they did, and the step queued ahead (ahead: whether there is one; its position, token, ids)
    int *h_pick, *d_pick;
    cudaEvent_t pick_done[2];
    int ahead, ahead_pos, ahead_id, ahead_n_ids;
    Acts pre;            // prefill: max_batch tokens of one sequence
    // Batched decode (forward_seqs): a row per sequence, n_seqs of them
    Acts rows;
    int n_seqs;
    int *row_state, *h_row_state;   // [4][n_seqs] id, position (-1: no token this step), extent base, and
    int *rank_rows, *h_rank_rows;   // rank_rows: row r of the last forward_seqs is sequence rank_rows[r]; pinned copy
    unsigned long long *row_kept;   // [n_seqs][top_slices][TOP_KEEP]
    int *row_bad;                   // [n_seqs][top_slices]
    TopResult *row_top, *h_row_top; // [n_seqs]
    float *row_part, *row_part_ml;  // kernel_attn_rows' chunk results and tickets, per row
    unsigned *row_tick;
    cudaGraphExec_t rows_gexec;
    int rows_graph_failed;
    cublasHandle_t blas;
    void *ws;  // the GEMMs' workspace
    size_t ws_bytes;
    cudaStream_t st;
    float *h_logits, *h_dbg, *h_x;  // pinned
    const float *last_logits;       // the last forward's last row, on the device
    unsigned long long *top_kept;   // [top_slices][TOP_KEEP] kernel_top_slices' keys
    int *top_bad, top_slices;
    TopResult *top, *h_top;         // the ranking, on the device and pinned
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

// o_proj for a cache whose V rows are Hadamard-rotated (kv4h): the attention output comes out rotated
// per head, so each head's block of columns is rotated too (W H = W H^-1: H is its own inverse),
// in fp32, then rounded to bf16. stage holds at least a row.
static void upload_rotated_columns(uint16_t *dst, const Tensor *t, int D, uint16_t *stage) {
    float *row = (float *)xmalloc((size_t)t->cols * sizeof(float));
    for (int64_t r = 0; r < t->rows; r++) {
        tensor_row(t, r, row);
        for (int64_t h = 0; h < t->cols / D; h++) kv_hadamard(row + h * D, D);
        for (int64_t i = 0; i < t->cols; i++) stage[i] = f32_to_bf16(row[i]);
        CUDA_CHECK(cudaMemcpy(dst + r * t->cols, stage, (size_t)t->cols * 2, cudaMemcpyHostToDevice), "weight upload");
    }
    free(row);
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

template <int HP, int FMT> struct DecodeKernel {
    static const void *fn() { return (const void *)kernel_decode<HP, FMT>; }
};

static void launch_decode(CudaEngine *c, DecodeParams *p) {
    void *args[] = {p};
    CUDA_CHECK(cudaLaunchCooperativeKernel(c->kfn, dim3(c->grid), dim3(NT), args, c->smem, c->st), "launch of kernel_decode");
}

static void sync_checked(CudaEngine *c, const char *what) { CUDA_CHECK(cudaStreamSynchronize(c->st), what); }

// Fatal, naming them, unless positions pos..pos+n-1 are in the engine's KV cache.
static void positions_check(CudaEngine *c, int pos, int n) {
    if (pos < 0 || n < 0 || pos + n > c->b.kv.capacity) fatal("GPU engine: positions %d..%d beyond the KV cache of %d", pos, pos + n - 1, c->b.kv.capacity);
}

// The token and position the next chained step (F_CHAIN) starts from, copied on the stream.
static void state_set(CudaEngine *c, int id, int pos) {
    c->h_state[STATE_TOKEN] = id, c->h_state[STATE_POS] = pos;
    CUDA_CHECK(cudaMemcpyAsync(c->b.state, c->h_state, 2 * sizeof(int), cudaMemcpyHostToDevice, c->st), "state copy");
}

// Every entry point but a greedy step first lets a greedy step queued ahead finish (some copy outside
// the stream) and forgets it, so that it is never taken after them (see greedy_step).
static void ahead_drop(CudaEngine *c) {
    if (c->ahead) sync_checked(c, "kernel_decode (a greedy step queued ahead)");
    c->ahead = 0;
}

static DecodeParams decode_params(CudaEngine *c) {
    DecodeParams p;
    memset(&p, 0, sizeof p);
    (DevBufs &)p = c->b;
    p.trace = NULL, p.dbg = NULL, p.timing = NULL;  // the launches that want them say so
    p.d = c->d;
    p.wo_split = c->wo_split, p.down_split = c->down_split, p.att_S = c->att_S, p.gq = c->gq;
    p.l0 = 0, p.l1 = c->d.L, p.stages = ST_ALL;
    p.flags = c->prefetch ? F_PREFETCH : 0;
    p.n_ids = c->d.V;
    return p;
}

// A step that starts from state[] (F_CHAIN): [0] keeps the logits, [1] also picks the greedy id among
// n_ids (F_ARGMAX) where the next chained step starts.
static DecodeParams chained_params(CudaEngine *c, int pick, int n_ids) {
    DecodeParams p = decode_params(c);
    p.flags |= F_EMBED | F_FINAL | F_CHAIN | (pick ? F_ARGMAX : 0);
    if (pick) p.n_ids = n_ids, p.picks = c->d_pick;
    return p;
}

// The chained steps as CUDA graphs of one decode launch: replaying one costs the host less than a
// cooperative launch. Built lazily, again after wo_split changes; when the driver cannot capture a
// cooperative launch, steps launch directly.
static void graph_drop(CudaEngine *c) {
    ahead_drop(c);  // it ran with the settings before
    for (int i = 0; i < 2; i++) {
        if (c->gexec[i]) cudaGraphExecDestroy(c->gexec[i]);
        c->gexec[i] = NULL;
    }
}

static int graph_build(CudaEngine *c, int pick, int n_ids) {
    if (c->gexec[pick] && (!pick || c->graph_n_ids == n_ids)) return 1;
    if (c->graph_failed || !c->use_graph) return 0;
    if (c->gexec[pick]) cudaGraphExecDestroy(c->gexec[pick]);
    c->gexec[pick] = NULL;
    DecodeParams p = chained_params(c, pick, n_ids);
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
    if (e == cudaSuccess) e = cudaGraphInstantiate(&c->gexec[pick], g, 0);
    if (g) cudaGraphDestroy(g);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();  // the failure is not sticky; fall back to direct launches
        c->gexec[pick] = NULL;
        c->graph_failed = 1;
        return 0;
    }
    if (pick) c->graph_n_ids = n_ids;
    return 1;
}

static void launch_chained(CudaEngine *c, int pick, int n_ids) {
    if (graph_build(c, pick, n_ids)) {
        CUDA_CHECK(cudaGraphLaunch(c->gexec[pick], c->st), "cudaGraphLaunch (kernel_decode)");
        return;
    }
    DecodeParams p = chained_params(c, pick, n_ids);
    launch_decode(c, &p);
}

// V logits from the device through the pinned buffer; returns when they are in out.
static void logits_to_host(CudaEngine *c, const float *dev, float *out, const char *what) {
    CUDA_CHECK(cudaMemcpyAsync(c->h_logits, dev, (size_t)c->d.V * 4, cudaMemcpyDeviceToHost, c->st), "logits copy");
    sync_checked(c, what);
    memcpy(out, c->h_logits, (size_t)c->d.V * 4);
}

// One token through every layer; logits (host, V floats) when out is given; keep: compute the logits and
// leave them on the device (last_logits), the caller syncs.
static void decode_step(CudaEngine *c, int id, int pos, float *out, int keep) {
    if (out || keep) c->last_logits = c->b.logits;
    if ((out || keep) && !c->hook) {
        state_set(c, id, pos);
        launch_chained(c, 0, 0);
        if (out) logits_to_host(c, c->b.logits, out, "kernel_decode (decode step)");
        return;
    }
    DecodeParams p = decode_params(c);
    p.token = id, p.pos = pos;
    p.flags |= F_EMBED | (out || keep || c->hook ? F_FINAL : 0);
    p.dbg = c->hook ? c->b.dbg : NULL;
    launch_decode(c, &p);
    if (c->hook) CUDA_CHECK(cudaMemcpyAsync(c->h_dbg, c->b.dbg, (size_t)c->d.L * 2 * c->d.H * 4, cudaMemcpyDeviceToHost, c->st), "residual copy");
    if (out) logits_to_host(c, c->b.logits, out, "kernel_decode (decode step)");
    else sync_checked(c, "kernel_decode (decode step)");
    if (c->hook)
        for (int l = 0; l < c->d.L; l++)
            for (int s = 0; s < 2; s++) c->hook(c->hook_ctx, l, s, c->h_dbg + ((size_t)l * 2 + s) * c->d.H, 1);
}

// The GEMM operands: T rows of activations as bf16 hi parts, then their T lo parts (hi + T K), so that
// one tensor-core GEMM reads the weights once for both: C[2T][N] = [hi; lo][2T][K] W[N][K]^T in fp32,
// the hi products in rows 0..T-1 and the lo products after them; the next kernel adds the two halves.
// stride: elements from the start of one operand row to the next (K, or T K for one row and its lo part).
static void gemm(CudaEngine *c, const uint16_t *W, int N, int K, const uint16_t *A, int rows, int stride, float *C, const char *what) {
    const float one = 1.0f, zero = 0.0f;
    BLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, rows, K, &one, W, CUDA_R_16BF, K, A, CUDA_R_16BF, stride, &zero, C,
                            CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               what);
}
static void gemm_rows(CudaEngine *c, const uint16_t *W, int N, int K, const uint16_t *hi, int T, float *C, const char *what) {
    gemm(c, W, N, K, hi, 2 * T, K, C, what);
}

// Logits [2 rows][V] (hi products, then lo) summed in place into the first rows.
static void launch_add_halves(CudaEngine *c, float *x, size_t n) {
    kernel_add_halves<<<(int)std::min<size_t>((n + 255) / 256, 65535), 256, 0, c->st>>>(x, n);
    LAUNCH_CHECK("kernel_add_halves");
}

// proj: a GEMM's [2T][H] output (hi products, lo products), or NULL.
static void launch_add_norm(CudaEngine *c, const Acts &a, const float *proj, const float *bias, const float *w, int T) {
    size_t half = (size_t)T * c->d.H;
    // Threads enough for 4 elements each: a row's loads in flight together (measured: 8.7 us a launch with
    // 256 threads on Qwen3-8B's rows of 4096)
    int threads = std::min(1024, std::max(128, (c->d.H / 4 + 31) / 32 * 32));
    kernel_add_norm<<<T, threads, 0, c->st>>>(a.x, proj, proj ? proj + half : NULL, bias, w, c->d.H, c->d.eps, a.hi, a.hi + half);
    LAUNCH_CHECK("kernel_add_norm");
}

// kv: the sequence's cache, positions pos.. for a's T rows.
static void launch_qkv_finish(CudaEngine *c, const Acts &a, const KVCache &kv, int layer, int pos, int T) {
    dim3 grid(T, (c->d.NH + 3) / 4);
    kernel_qkv_finish<<<grid, 128, 4 * c->d.D * sizeof(float), c->st>>>(c->d, c->b.layers, layer, c->b.inv_freq, kv, a.raw,
                                                                        a.raw + (size_t)T * c->d.NQKV, pos, T, a.q);
    LAUNCH_CHECK("kernel_qkv_finish");
}

// The tensor-core attention for a head_dim and a 16-bit cache format (NULL where there is none).
template <int D> static const void *attn_mma_for(KVFormat f) {
    return f == KV_F16 ? (const void *)kernel_attn_prefill_mma<D, KV_F16> : f == KV_BF16 ? (const void *)kernel_attn_prefill_mma<D, KV_BF16> : NULL;
}
static const void *attn_mma_kernel(int D, KVFormat f, size_t *smem) {
    switch (D) {
    case 32: *smem = attn_mma_smem<32>(); return attn_mma_for<32>(f);
    case 64: *smem = attn_mma_smem<64>(); return attn_mma_for<64>(f);
    case 128: *smem = attn_mma_smem<128>(); return attn_mma_for<128>(f);
    default: return NULL;
    }
}

static void launch_attn_prefill(CudaEngine *c, const Acts &a, const KVCache &kv, int layer, int pos, int T) {
    size_t msm;
    if (const void *fn = attn_mma_kernel(c->d.D, kv.format, &msm)) {
        const Dims d = c->d;
        const float *q = a.q;
        uint16_t *hi = a.hi, *lo = a.hi + (size_t)T * d.QD;
        void *args[] = {(void *)&d, (void *)&q, (void *)&kv, &layer, &pos, &T, &hi, &lo};
        dim3 grid(d.Hq, (T + MQ - 1) / MQ);
        // Blocks fewer than the SMs: two groups a block (each SM gets 8 warps); else one, and two blocks an SM.
        int groups = c->mma_force ? std::min(c->mma_force, c->mma_groups) : (int)(grid.x * grid.y) <= c->grid ? c->mma_groups : 1;
        CUDA_CHECK(cudaLaunchKernel(fn, grid, dim3(MMA_GROUP * groups), args, msm * groups, c->st), "launch of kernel_attn_prefill_mma");
        return;
    }
    dim3 grid(c->d.Hq, (T + PQ - 1) / PQ);
    size_t sm = attn_prefill_smem(c->d.D);
    switch (c->d.D) {
    case 32: kernel_attn_prefill<32><<<grid, 256, sm, c->st>>>(c->d, a.q, kv, layer, pos, T, a.hi, a.hi + (size_t)T * c->d.QD); break;
    case 64: kernel_attn_prefill<64><<<grid, 256, sm, c->st>>>(c->d, a.q, kv, layer, pos, T, a.hi, a.hi + (size_t)T * c->d.QD); break;
    case 128: kernel_attn_prefill<128><<<grid, 256, sm, c->st>>>(c->d, a.q, kv, layer, pos, T, a.hi, a.hi + (size_t)T * c->d.QD); break;
    default: kernel_attn_prefill<256><<<grid, 256, sm, c->st>>>(c->d, a.q, kv, layer, pos, T, a.hi, a.hi + (size_t)T * c->d.QD); break;
    }
    LAUNCH_CHECK("kernel_attn_prefill");
}

// Batched decode: each row's attention over its own sequence, then its output as GEMM operands.
static void launch_attn_rows(CudaEngine *c, int layer) {
    const Dims &d = c->d;
    DecodeParams p = decode_params(c);
    p.qkv = c->rows.raw, p.q = c->rows.q, p.o = c->rows.o, p.part = c->row_part, p.part_ml = c->row_part_ml, p.tick = c->row_tick;
    const int *st = c->row_state;
    uint16_t *hi = c->rows.hi;
    const int warps = ROWS_WARPS(c->n_seqs);
    size_t sm = (size_t)(warps * c->hp * d.D + warps * c->hp * 2) * sizeof(float);
    // Blocks enough for every SM (c->grid: one per SM; a long context's chunks spread over them), no
    // more: idle blocks cost.
    int per_head = std::min(ROWS_CHUNKS, std::max(1, (c->grid + d.Hkv * c->n_seqs - 1) / (d.Hkv * c->n_seqs)));
    void *args[] = {&p, &st, &layer, &per_head, &hi};
    const void *fn = warps == 4 ? kernel_instance<AttnRows4Kernel>(c->hp, c->b.kv.format) : kernel_instance<AttnRows8Kernel>(c->hp, c->b.kv.format);
    CUDA_CHECK(cudaLaunchKernel(fn, dim3(d.Hkv * per_head, c->n_seqs), dim3(warps * 32), args, sm, c->st),
               "launch of kernel_attn_rows");
}

static void launch_silu(CudaEngine *c, const Acts &a, int T) {
    size_t n = (size_t)T * c->d.I;
    int blocks = (int)std::min<size_t>((n + 255) / 256, 65535);
    kernel_silu<<<blocks, 256, 0, c->st>>>(a.raw, a.raw + (size_t)T * 2 * c->d.I, c->d.I, T, a.hi, a.hi + n);
    LAUNCH_CHECK("kernel_silu");
}

static void call_hook(CudaEngine *c, int layer, int stage, int T) {
    CUDA_CHECK(cudaMemcpyAsync(c->h_x, c->pre.x, (size_t)T * c->d.H * 4, cudaMemcpyDeviceToHost, c->st), "residual copy");
    sync_checked(c, "prefill (residual for --check)");
    c->hook(c->hook_ctx, layer, stage, c->h_x, T);
}

// The kinds of launches of run_layers: every one for a forward, or one kind alone to time it.
enum { LAUNCH_GEMM = 1, LAUNCH_ATT = 2, LAUNCH_NORM = 4, LAUNCH_SILU = 8, LAUNCH_ALL = 15 };

// Every layer over the T rows of a (their embeddings in a.x), through cuBLAS: the prefill of a chunk
// of one sequence (kv its cache, positions pos..), or (rows) one token of each sequence of the batch.
// Ends with the final norm's output as GEMM operands in a.hi. kinds: which launches (LAUNCH_*).
static void run_layers(CudaEngine *c, const Acts &a, int T, const KVCache &kv, int pos, int rows, int kinds) {
    const Dims &d = c->d;
    const bool mm = kinds & LAUNCH_GEMM, att = kinds & LAUNCH_ATT, norm = kinds & LAUNCH_NORM, silu = kinds & LAUNCH_SILU;
    const bool hook = c->hook && !rows && kinds == LAUNCH_ALL;
    if (norm) launch_add_norm(c, a, NULL, NULL, c->h_layers[0].in_norm, T);
    for (int l = 0; l < d.L; l++) {
        const DevLayer &w = c->h_layers[l];
        if (mm) gemm_rows(c, w.wqkv, d.NQKV, d.H, a.hi, T, a.raw, "cublasGemmEx (qkv_proj)");
        if (att && rows) launch_attn_rows(c, l);  // finishes the heads it reads
        else if (att) launch_qkv_finish(c, a, kv, l, pos, T), launch_attn_prefill(c, a, kv, l, pos, T);
        if (mm) gemm_rows(c, w.wo, d.H, d.QD, a.hi, T, a.proj, "cublasGemmEx (o_proj)");
        if (norm) launch_add_norm(c, a, a.proj, w.bo, w.post_norm, T);
        if (hook) call_hook(c, l, 0, T);
        if (mm) gemm_rows(c, w.wgu, 2 * d.I, d.H, a.hi, T, a.raw, "cublasGemmEx (gate_up_proj)");
        if (silu) launch_silu(c, a, T);
        if (mm) gemm_rows(c, w.wd, d.H, d.I, a.hi, T, a.proj, "cublasGemmEx (down_proj)");
        if (norm) launch_add_norm(c, a, a.proj, NULL, l + 1 < d.L ? c->h_layers[l + 1].in_norm : c->b.final_norm, T);
        if (hook) call_hook(c, l, 1, T);
    }
}

// T tokens at positions pos.. of the cache kv through cuBLAS and the prefill kernels. out: T x V logits
// (all) or the last row's V, or NULL; keep: the last row's logits computed and left on the device
// (last_logits).
static void prefill_chunk(CudaEngine *c, const KVCache &kv, const int *ids, int T, int pos, float *out, int all, int keep) {
    const Dims &d = c->d;
    const Acts &a = c->pre;
    CUDA_CHECK(cudaMemcpyAsync(a.ids, ids, (size_t)T * sizeof(int), cudaMemcpyHostToDevice, c->st), "prompt ids copy");
    kernel_embed<<<T, 256, 0, c->st>>>(c->b.embed, a.ids, d.H, a.x);
    LAUNCH_CHECK("kernel_embed");
    run_layers(c, a, T, kv, pos, 0, LAUNCH_ALL);
    if (out || keep) {
        int rows = all ? T : 1;  // every row, or the last one with its lo part T rows after it
        if (all) gemm_rows(c, c->b.lm_head, d.V, d.H, a.hi, T, a.logits, "cublasGemmEx (lm_head)");
        else gemm(c, c->b.lm_head, d.V, d.H, a.hi + (size_t)(T - 1) * d.H, 2, T * d.H, a.logits, "cublasGemmEx (lm_head)");
        launch_add_halves(c, a.logits, (size_t)rows * d.V);
        if (out) CUDA_CHECK(cudaMemcpyAsync(out, a.logits, (size_t)rows * d.V * 4, cudaMemcpyDeviceToHost, c->st), "logits copy");
        c->last_logits = a.logits + (size_t)(rows - 1) * d.V;
    }
    sync_checked(c, "prefill");
}

// The Engine's forward; keep: the last position's logits stay on the device (last_logits).
static void forward_chunks(CudaEngine *c, const int *ids, int n, int pos, float *logits, int all_logits, int keep) {
    size_t V = (size_t)c->d.V;
    positions_check(c, pos, n);
    c->last_logits = NULL;
    ahead_drop(c);
    for (int done = 0; done < n;) {
        int T = n - done < c->max_batch ? n - done : c->max_batch;
        int last = done + T == n;
        float *out = all_logits ? logits + done * V : last ? logits : NULL;
        if (T == 1) decode_step(c, ids[done], pos + done, out, keep && last);
        else prefill_chunk(c, c->b.kv, ids + done, T, pos + done, out, all_logits, keep && last);
        done += T;
    }
}

static void cu_forward(Engine *e, const int *ids, int n, int pos, float *logits, int all_logits) {
    forward_chunks((CudaEngine *)e, ids, n, pos, logits, all_logits, 0);
}

// The ranking of n logits rows over ids [0, n_ids): row r is logits + rows[r] V (rows NULL: one row),
// into out[0..n); returns when it is in host[0..n).
static void rank_logits(CudaEngine *c, const float *logits, const int *rows, int n, int n_ids, unsigned long long *kept, int *bad,
                        TopResult *out, TopResult *host) {
    kernel_top_slices<<<dim3(c->top_slices, n), TOP_THREADS, 0, c->st>>>(logits, rows, c->d.V, n_ids, kept, bad);
    LAUNCH_CHECK("kernel_top_slices");
    kernel_top_merge<<<dim3(1, n), TOP_THREADS, 0, c->st>>>(logits, rows, c->d.V, kept, bad, c->top_slices, out);
    LAUNCH_CHECK("kernel_top_merge");
    CUDA_CHECK(cudaMemcpyAsync(host, out, (size_t)n * sizeof(TopResult), cudaMemcpyDeviceToHost, c->st), "ranking copy");
    sync_checked(c, "forward and ranking of the logits");
}

static void rank_last_logits(CudaEngine *c, int n_ids) {
    rank_logits(c, c->last_logits, NULL, 1, n_ids, c->top_kept, c->top_bad, c->top, c->h_top);
}

static void top_from_result(const TopResult &r, int n_ids, TopLogits *top) {
    top->n = std::min(n_ids, TOP_LOGITS_MAX);
    for (int i = 0; i < top->n; i++) top->id[i] = rank_key_id(r.key[i]), top->logit[i] = rank_key_logit(r.key[i]);
    top->next = n_ids > TOP_LOGITS_MAX ? rank_key_logit(r.key[TOP_LOGITS_MAX]) : -INFINITY;
    top->bad_id = r.bad_id == INT_MAX ? -1 : r.bad_id;
    top->bad_logit = r.bad_logit;
}

// Greedy steps: the id is picked on the device (F_ARGMAX) and only what the step leaves in state[] comes
// back. Each step also queues the next one, which starts from that pick where it lies (F_CHAIN), so the
// GPU does not wait for the host between tokens: when the caller asks for that token at that position,
// its step is already running. Whatever the engine runs instead comes after it and overwrites what it
// wrote (its cache row, the logits, state[]); every other entry point waits for it and forgets it
// (ahead_drop).
static void greedy_queue(CudaEngine *c, int pos, int n_ids) {
    launch_chained(c, 1, n_ids);
    CUDA_CHECK(cudaEventRecord(c->pick_done[pos & 1], c->st), "cudaEventRecord");
}

static void greedy_step(CudaEngine *c, int id, int pos, int n_ids, TopLogits *top) {
    positions_check(c, pos, 1);
    if (!(c->ahead && c->ahead_pos == pos && c->ahead_id == id && c->ahead_n_ids == n_ids)) {
        state_set(c, id, pos);
        greedy_queue(c, pos, n_ids);
    }
    int next = pos + 1 < c->b.kv.capacity;
    if (next) greedy_queue(c, pos + 1, n_ids);
    CUDA_CHECK(cudaEventSynchronize(c->pick_done[pos & 1]), "kernel_decode (greedy step)");
    const volatile int *r = c->h_pick + (pos & 1) * STATE_WORDS;
    if (r[STATE_POS] != pos + 1) fatal("GPU engine: the greedy step at position %d left position %d", pos, r[STATE_POS] - 1);
    c->ahead = next, c->ahead_pos = pos + 1, c->ahead_id = r[STATE_TOKEN], c->ahead_n_ids = n_ids;
    c->last_logits = NULL;  // the step queued ahead overwrites them
    top->n = 1;
    top->id[0] = r[STATE_TOKEN];
    top->logit[0] = bits_f32((uint32_t)r[STATE_LOGIT]);
    top->next = top->logit[0];  // no id ranks above the pick: a bound, all a greedy caller needs
    top->bad_id = r[STATE_BAD_ID] == INT_MAX ? -1 : r[STATE_BAD_ID];
    top->bad_logit = bits_f32((uint32_t)r[STATE_BAD_LOGIT]);
}

// The logits stay on the device; the host gets their ranking (gpu/top.cuh): 528 bytes, not 600 KB. A
// greedy caller gets the pick alone, from greedy_step.
static void cu_forward_top(Engine *e, const int *ids, int n, int pos, int n_ids, int greedy, TopLogits *top) {
    CudaEngine *c = (CudaEngine *)e;
    if (n < 1) fatal("GPU engine: forward_top of no tokens");
    if (greedy && n == 1 && !c->hook) {
        greedy_step(c, ids[0], pos, n_ids, top);
        return;
    }
    forward_chunks(c, ids, n, pos, NULL, 0, 1);
    rank_last_logits(c, n_ids);
    top_from_result(*c->h_top, n_ids, top);
}

// ---------------------------------------------------------------------------------------------
// Batched generation: one decode step for every sequence at once, a row per sequence (its row never
// changes, and the GEMMs always run all n_seqs rows, so no row's bits depend on the others).

static void rows_step(CudaEngine *c) {
    const Dims &d = c->d;
    kernel_embed<<<c->n_seqs, 256, 0, c->st>>>(c->b.embed, c->row_state, d.H, c->rows.x);
    LAUNCH_CHECK("kernel_embed");
    run_layers(c, c->rows, c->n_seqs, c->b.kv, 0, 1, LAUNCH_ALL);
    gemm_rows(c, c->b.lm_head, d.V, d.H, c->rows.hi, c->n_seqs, c->rows.logits, "cublasGemmEx (lm_head)");
    launch_add_halves(c, c->rows.logits, (size_t)c->n_seqs * d.V);
}

// The step as a CUDA graph (its inputs are in row_state), captured on first use; launched directly
// when the driver cannot capture it. The choice is made once, so every step runs the same kernels.
static void rows_step_run(CudaEngine *c) {
    if (!c->rows_gexec && !c->rows_graph_failed && c->use_graph) {
        cudaGraph_t g = NULL;
        cudaError_t e = cudaStreamBeginCapture(c->st, cudaStreamCaptureModeThreadLocal);
        if (e == cudaSuccess) {
            rows_step(c);
            e = cudaStreamEndCapture(c->st, &g);
        }
        if (e == cudaSuccess) e = cudaGraphInstantiate(&c->rows_gexec, g, 0);
        if (g) cudaGraphDestroy(g);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            c->rows_gexec = NULL;
            c->rows_graph_failed = 1;
            fprintf(stderr, "nano: GPU: the batched decode step runs without a CUDA graph (capture: %s)\n", cudaGetErrorString(e));
        }
    }
    if (c->rows_gexec) CUDA_CHECK(cudaGraphLaunch(c->rows_gexec, c->st), "cudaGraphLaunch (batched decode)");
    else rows_step(c);
}

static int cu_seqs(Engine *e, int n_seqs, char *why, size_t whylen) {
    CudaEngine *c = (CudaEngine *)e;
    ahead_drop(c);
    const Dims &d = c->d;
    if (c->n_seqs) return error_into(why, whylen, "the GPU engine is already set up for %d sequences", c->n_seqs);
    if (c->max_batch < 2) return error_into(why, whylen, "prompts of several sequences need the prefill path (-b 2 or more)");
    if (n_seqs < 1) return error_into(why, whylen, "%d sequences", n_seqs);
    size_t M = (size_t)n_seqs, wide = (size_t)std::max(std::max(d.H, d.QD), d.I), *sb = &c->scratch_bytes;
    const char *sw = "cudaMalloc (batched decode)";
    Acts &a = c->rows;
    a.x = (float *)dev_alloc(c, M * d.H * 4, sb, sw);
    a.raw = (float *)dev_alloc(c, 2 * M * std::max((size_t)d.NQKV, 2 * (size_t)d.I) * 4, sb, sw);
    a.q = (float *)dev_alloc(c, M * d.QD * 4, sb, sw);
    a.o = (float *)dev_alloc(c, M * d.QD * 4, sb, sw);
    a.proj = (float *)dev_alloc(c, 2 * M * d.H * 4, sb, sw);
    a.logits = (float *)dev_alloc(c, 2 * M * d.V * 4, sb, sw);
    a.hi = (uint16_t *)dev_alloc(c, 2 * M * wide * 2, sb, sw);
    // In the engine's stream (non-blocking: it would not wait for the default stream's memsets).
    CUDA_CHECK(cudaMemsetAsync(a.o, 0, M * d.QD * 4, c->st), "cudaMemset (batched decode)");
    CUDA_CHECK(cudaMemsetAsync(a.hi, 0, 2 * M * wide * 2, c->st), "cudaMemset (batched decode)");  // rows without a token read zeros
    c->row_state = (int *)dev_alloc(c, 4 * M * 4, sb, sw);
    a.ids = c->row_state;
    c->rank_rows = c->row_state + 3 * M;
    c->row_kept = (unsigned long long *)dev_alloc(c, M * c->top_slices * TOP_KEEP * 8, sb, sw);
    c->row_bad = (int *)dev_alloc(c, M * c->top_slices * 4, sb, sw);
    c->row_top = (TopResult *)dev_alloc(c, M * sizeof(TopResult), sb, sw);
    CUDA_CHECK(cudaMallocHost((void **)&c->h_row_state, 4 * M * 4), "cudaMallocHost");
    c->h_rank_rows = c->h_row_state + 3 * M;
    CUDA_CHECK(cudaMallocHost((void **)&c->h_row_top, M * sizeof(TopResult)), "cudaMallocHost");
    size_t units = M * d.Hkv * ROWS_CHUNKS * c->gq;
    c->row_part = (float *)dev_alloc(c, units * d.D * 4, sb, sw);
    c->row_part_ml = (float *)dev_alloc(c, units * 2 * 4, sb, sw);
    c->row_tick = (unsigned *)dev_alloc(c, M * (d.NH + d.Hkv) * 4, sb, sw);
    CUDA_CHECK(cudaMemsetAsync(c->row_tick, 0, M * (d.NH + d.Hkv) * 4, c->st), "cudaMemset (tickets)");
    c->n_seqs = n_seqs;
    return 0;
}

// The rows of one token go through rows_step together; a row of a prompt goes through the prefill
// path alone (so it too is the same whoever shares the step), its last logits into its sequence's row.
static void cu_forward_seqs(Engine *e, const SeqRow *rows, int n_rows, int n_ids, TopLogits *tops) {
    CudaEngine *c = (CudaEngine *)e;
    ahead_drop(c);
    const int M = c->n_seqs;
    seq_rows_check("GPU", rows, n_rows, M, c->b.kv.capacity);
    int *ids = c->h_row_state, *pos = ids + M, *base = pos + M, n_one = 0;
    for (int k = 0; k < M; k++) ids[k] = 0, pos[k] = -1, base[k] = 0;
    for (int i = 0; i < n_rows; i++) {
        const SeqRow &w = rows[i];
        if (w.n == 1) ids[w.seq] = w.ids[0], pos[w.seq] = w.pos, base[w.seq] = w.base, n_one++;
        c->h_rank_rows[i] = w.seq;
    }
    CUDA_CHECK(cudaMemcpyAsync(c->row_state, c->h_row_state, 4 * (size_t)M * 4, cudaMemcpyHostToDevice, c->st), "row state copy");
    if (n_one) rows_step_run(c);
    for (int i = 0; i < n_rows; i++) {
        const SeqRow &w = rows[i];
        if (w.n == 1) continue;
        KVCache kv = kv_view(&c->b.kv, w.base);
        for (int done = 0; done < w.n;) {
            int T = std::min(w.n - done, c->max_batch);
            prefill_chunk(c, kv, w.ids + done, T, w.pos + done, NULL, 0, done + T == w.n);
            done += T;
        }
        CUDA_CHECK(cudaMemcpyAsync(c->rows.logits + (size_t)w.seq * c->d.V, c->last_logits, (size_t)c->d.V * 4, cudaMemcpyDeviceToDevice, c->st),
                   "logits copy");
    }
    rank_logits(c, c->rows.logits, c->rank_rows, n_rows, n_ids, c->row_kept, c->row_bad, c->row_top, c->h_row_top);
    for (int i = 0; i < n_rows; i++) top_from_result(c->h_row_top[i], n_ids, &tops[i]);
}

static void cu_row_logits(Engine *e, int row, float *logits) {
    CudaEngine *c = (CudaEngine *)e;
    logits_to_host(c, c->rows.logits + (size_t)c->h_rank_rows[row] * c->d.V, logits, "logits copy");
}

static void cu_last_logits(Engine *e, float *logits) {
    CudaEngine *c = (CudaEngine *)e;
    if (!c->last_logits) fatal("GPU engine: no logits kept by the last forward");
    logits_to_host(c, c->last_logits, logits, "logits copy");
}

static void cu_free(Engine *e) {
    CudaEngine *c = (CudaEngine *)e;
    if (!c) return;
    if (c->st) cudaStreamSynchronize(c->st);  // a greedy step queued ahead may still run
    c->ahead = 0;
    if (c->blas) cublasDestroy(c->blas);  // before its workspace goes
    c->blas = NULL;
    for (int i = 0; i < c->n_allocs; i++) cudaFree(c->allocs[i]);
    free(c->allocs);
    graph_drop(c);
    if (c->h_state) cudaFreeHost(c->h_state);
    if (c->h_pick) cudaFreeHost(c->h_pick);
    for (int i = 0; i < 2; i++)
        if (c->pick_done[i]) cudaEventDestroy(c->pick_done[i]);
    if (c->h_logits) cudaFreeHost(c->h_logits);
    if (c->h_top) cudaFreeHost(c->h_top);
    if (c->rows_gexec) cudaGraphExecDestroy(c->rows_gexec);
    if (c->h_row_state) cudaFreeHost(c->h_row_state);
    if (c->h_row_top) cudaFreeHost(c->h_row_top);
    if (c->h_dbg) cudaFreeHost(c->h_dbg);
    if (c->h_x) cudaFreeHost(c->h_x);
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

// Sizes of what the engine allocates on the device (also the benchmark's bytes per token).
static size_t weight_bytes(const Dims &d, int tied) {
    return 2 * ((size_t)d.L * ((size_t)d.NQKV * d.H + (size_t)d.H * d.QD + 3 * (size_t)d.I * d.H) + (size_t)d.V * d.H * (tied ? 1 : 2));
}

// The GPU cache in kv's format and shape: planes on the device, zeroed; the wide channel table copied.
static void kv_alloc(CudaEngine *c, KVCache *kv, const KVCache *shape) {
    *kv = *shape;
    size_t rows = (size_t)kv->n_layers * kv->n_kv_heads * kv->capacity;
    uint8_t **planes[4] = {&kv->k, &kv->k_aux, &kv->v, &kv->v_aux};  // plane i: part i / 2, aux i % 2
    for (int i = 0; i < 4; i++) {
        size_t n = std::max<size_t>(rows * kv_row_bytes(kv, i / 2, i % 2), 16);  // a format without scales still gets a valid pointer
        *planes[i] = (uint8_t *)dev_alloc(c, n, &c->kv_bytes, "cudaMalloc (KV cache)");
        CUDA_CHECK(cudaMemset(*planes[i], 0, n), "cudaMemset (KV cache)");
    }
    if (kv->n_wide) {
        size_t n = (size_t)kv->n_layers * kv->n_kv_heads * kv->n_wide * sizeof(int16_t);
        int16_t *w = (int16_t *)dev_alloc(c, n, &c->kv_bytes, "cudaMalloc (KV cache)");
        CUDA_CHECK(cudaMemcpy(w, shape->wide, n, cudaMemcpyHostToDevice), "wide channel table upload");
        kv->wide = w;
    }
}

// One-time costs at load rather than in the first prompt: cuBLAS's first GEMMs, the loading of each
// kernel (modules load lazily), the decode step's graph. Positions 0..2 (0 without prefill) of the
// cache are written; every forward overwrites what it reads past.
static void warm_up(CudaEngine *c) {
    const int ids[2] = {0, 0}, prefill = c->max_batch > 1 && c->b.kv.capacity >= 3;
    if (prefill) prefill_chunk(c, c->b.kv, ids, 2, 0, NULL, 0, 1);
    decode_step(c, ids[0], prefill ? 2 : 0, NULL, 1);
    rank_last_logits(c, c->d.V);
}

extern "C" Engine *cuda_engine_create(const Model *m, int capacity, KVFormat kv, int max_batch, int wo_split, char *why,
                                      size_t whylen) {
    if (!cuda_device_count(why, whylen)) return NULL;
    const int pool = capacity < 0;  // -N: a pool of N positions, or as many as fit
    if (pool) capacity = -capacity;
    const Config *cf = &m->cfg;
    if (!kv_formats[kv].gpu) return error_into(why, whylen, "the GPU engine has no --kv %s (the reference path has: add --ref)", kv_format_name(kv)), (Engine *)NULL;
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    if (prop.major < 8) return error_into(why, whylen, "%s has compute capability %d.%d; the GPU engine needs 8.0 or newer", prop.name, prop.major, prop.minor), (Engine *)NULL;
    if (!prop.cooperativeLaunch) return error_into(why, whylen, "%s does not support cooperative launches", prop.name), (Engine *)NULL;
    int D = cf->head_dim;
    if (D != 32 && D != 64 && D != 128 && D != 256) return error_into(why, whylen, "head_dim %d is not one of 32, 64, 128, 256", D), (Engine *)NULL;
    if (cf->hidden % 8 || cf->intermediate % 8) return error_into(why, whylen, "hidden_size and intermediate_size must be multiples of 8"), (Engine *)NULL;
    int gs = cf->n_heads / cf->n_kv_heads;
    if (gs > 16) return error_into(why, whylen, "%d query heads per kv head (at most 16)", gs), (Engine *)NULL;
    if (wo_split && !wo_split_valid(wo_split)) fatal("wo_split %d is not 1, 2, 4 or 8", wo_split);
    if (max_batch < 1) max_batch = 1;
    CUDA_CHECK(cudaSetDevice(0), "cudaSetDevice");

    CudaEngine *c = (CudaEngine *)xcalloc(1, sizeof *c);
    c->base.name = "cuda";
    c->base.forward = cu_forward;
    c->base.forward_top = cu_forward_top;
    c->base.last_logits = cu_last_logits;
    c->base.seqs = cu_seqs;
    c->base.forward_seqs = cu_forward_seqs;
    c->base.row_logits = cu_row_logits;
    c->base.free = cu_free;
    c->m = m;
    Dims &d = c->d;
    d.H = cf->hidden, d.I = cf->intermediate, d.L = cf->n_layers, d.Hq = cf->n_heads, d.Hkv = cf->n_kv_heads, d.D = D;
    d.V = cf->vocab, d.QD = d.Hq * D, d.KVD = d.Hkv * D, d.NH = d.Hq + 2 * d.Hkv, d.NQKV = d.NH * D, d.gs = gs;
    d.eps = cf->rms_eps;
    c->hp = gs <= 1 ? 1 : gs == 2 ? 2 : 4;
    c->gq = (gs + c->hp - 1) / c->hp * c->hp;
    c->max_batch = max_batch;

    // Grid: one block of NT threads per SM (occupancy permitting), all co-resident for the barriers.
    c->kfn = kernel_instance<DecodeKernel>(c->hp, kv);
    c->att_S = std::max(1, prop.multiProcessorCount / d.Hkv);
    c->smem = decode_smem(d, c->hp, c->att_S).bytes();
    if (c->smem > (size_t)prop.sharedMemPerBlockOptin) {
        cu_free(&c->base);
        return error_into(why, whylen, "the decode kernel needs %zu bytes of shared memory, %s has %zu", c->smem, prop.name,
                        (size_t)prop.sharedMemPerBlockOptin), (Engine *)NULL;
    }
    CUDA_CHECK(cudaFuncSetAttribute(c->kfn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)c->smem), "cudaFuncSetAttribute (kernel_decode)");
    int per_sm = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, c->kfn, NT, c->smem), "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    if (per_sm < 1) {
        cu_free(&c->base);
        return error_into(why, whylen, "kernel_decode cannot be resident on %s", prop.name), (Engine *)NULL;
    }
    c->grid = prop.multiProcessorCount;
    if ((long long)(d.NQKV + 1) / 2 * 2 / c->grid / D + 2 > MAX_FIN) {
        cu_free(&c->base);
        return error_into(why, whylen, "too many heads per block for the QKV stage"), (Engine *)NULL;
    }
    c->wo_split = wo_split ? wo_split : pick_split(d.H, c->grid * NW);
    c->down_split = pick_split(d.H, c->grid * NW * 2);  // longer rows: more slices pay (measured)
    size_t asm_ = attn_prefill_smem(D);
    if (asm_ > (size_t)prop.sharedMemPerBlockOptin) {
        cu_free(&c->base);
        return error_into(why, whylen, "head_dim %d needs more shared memory than %s has", D, prop.name), (Engine *)NULL;
    }
    CUDA_CHECK(cudaFuncSetAttribute(kernel_attn_prefill<32>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)attn_prefill_smem(32)), "cudaFuncSetAttribute");
    CUDA_CHECK(cudaFuncSetAttribute(kernel_attn_prefill<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)attn_prefill_smem(64)), "cudaFuncSetAttribute");
    CUDA_CHECK(cudaFuncSetAttribute(kernel_attn_prefill<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)attn_prefill_smem(128)), "cudaFuncSetAttribute");
    if (asm_ >= attn_prefill_smem(256))
        CUDA_CHECK(cudaFuncSetAttribute(kernel_attn_prefill<256>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)asm_), "cudaFuncSetAttribute");
    size_t msm;
    if (const void *fn = attn_mma_kernel(D, kv, &msm)) {
        c->mma_groups = MMA_MAX_GROUPS * msm <= (size_t)prop.sharedMemPerBlockOptin ? MMA_MAX_GROUPS : 1;
        CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(msm * c->mma_groups)),
                   "cudaFuncSetAttribute (kernel_attn_prefill_mma)");
    }

    // Enough memory? Weights + cache + the prefill scratch, against what is free.
    KVCache shape;  // the cache's format and shape; kv_alloc gives it device planes
    memset(&shape, 0, sizeof shape);
    shape.format = kv, shape.codec[0] = kv_formats[kv].k, shape.codec[1] = kv_formats[kv].v;
    shape.n_layers = d.L, shape.n_kv_heads = d.Hkv, shape.head_dim = D, shape.capacity = capacity;
    shape.n_wide = kv_wide_channels(m, kv, (int16_t **)&shape.wide);
    if (shape.n_wide > D / 8) {  // the attention adds one wide channel per lane of a row's D / 8 (kv_wide_channels caps them so)
        free((void *)shape.wide);
        cu_free(&c->base);
        return error_into(why, whylen, "%d wide key channels, more than head_dim / 8", shape.n_wide), (Engine *)NULL;
    }
    if (!kv_gpu_holds(kv, shape.n_wide)) {
        free((void *)shape.wide);
        cu_free(&c->base);
        return error_into(why, whylen, "the GPU engine's kv4h needs a model without wide key channels (this one has %d: Qwen2's "
                          "key biases); use k8v4", shape.n_wide), (Engine *)NULL;
    }
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    size_t B = (size_t)max_batch, wide = (size_t)std::max(std::max(d.H, d.QD), d.I);
    size_t need_w = weight_bytes(d, cf->tied), per_token = kv_bytes_per_token(kv, d.L, d.Hkv, D, shape.n_wide);
    size_t need_kv = per_token * capacity;
    size_t need_p = B > 1 ? B * (4 * (size_t)d.H * 3 + 8 * std::max((size_t)d.NQKV, 2 * (size_t)d.I) + 4 * (size_t)d.QD +
                                 2 * 2 * wide + 8 * (size_t)d.V)
                          : 0;
    size_t reserve = need_w + need_p + (256u << 20);  // + 256 MiB for cuBLAS, the decode scratch and the context
    if (pool) {  // and 1 GiB for the batched decode's rows (cu_seqs)
        reserve += 1u << 30;
        long long fits = free_b > reserve ? (long long)((free_b - reserve) / per_token) : 0;
        if (fits < capacity && fits >= 1) capacity = (int)fits, need_kv = per_token * capacity, shape.capacity = capacity;
    }
    if (reserve + need_kv > free_b) {
        free((void *)shape.wide);
        cu_free(&c->base);
        long long fits = free_b > reserve ? (long long)((free_b - reserve) / per_token) : 0;
        return error_into(why, whylen,
                          "%s %d does not fit: %s has %.2f GiB free; weights %.2f GiB, prefill %.2f GiB, and the KV cache %.2f GiB "
                          "(%s, %zu bytes a token); at most %lld positions fit",
                          pool ? "a KV pool of" : "-c", capacity, prop.name, free_b / 1073741824.0, need_w / 1073741824.0, need_p / 1073741824.0,
                          need_kv / 1073741824.0, kv_format_name(kv), per_token, fits), (Engine *)NULL;
    }
    CUDA_CHECK(cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking), "cudaStreamCreate");
    BLAS_CHECK(cublasCreate(&c->blas), "cublasCreate");
    BLAS_CHECK(cublasSetStream(c->blas, c->st), "cublasSetStream");
    // A workspace of its own: the same for direct and graph-captured GEMMs (so the same algorithms).
    c->ws_bytes = 32u << 20;
    c->ws = dev_alloc(c, c->ws_bytes, &c->scratch_bytes, "cudaMalloc (cuBLAS workspace)");
    BLAS_CHECK(cublasSetWorkspace(c->blas, c->ws, c->ws_bytes), "cublasSetWorkspace");

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
        if (kv_rotated(&shape)) upload_rotated_columns(wo, &lw->wo, D, stage);
        else upload_matrix(wo, &lw->wo, stage, stage_elems);
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
    uint16_t *embed = (uint16_t *)dev_alloc(c, (size_t)d.V * d.H * 2, &c->weight_bytes, "cudaMalloc (weights)");
    upload_matrix(embed, &m->embed, stage, stage_elems);
    c->b.embed = c->b.lm_head = embed;
    if (!cf->tied) {
        uint16_t *head = (uint16_t *)dev_alloc(c, (size_t)d.V * d.H * 2, &c->weight_bytes, "cudaMalloc (weights)");
        upload_matrix(head, &m->lm_head, stage, stage_elems);
        c->b.lm_head = head;
    }
    free(stage);
    c->b.final_norm = upload_vector(c, &m->final_norm);
    DevLayer *layers = (DevLayer *)dev_alloc(c, (size_t)d.L * sizeof(DevLayer), &c->weight_bytes, "cudaMalloc (weights)");
    CUDA_CHECK(cudaMemcpy(layers, c->h_layers, (size_t)d.L * sizeof(DevLayer), cudaMemcpyHostToDevice), "layer table upload");
    c->b.layers = layers;
    float *inv = (float *)xmalloc((size_t)D / 2 * sizeof(float)), *d_inv;
    d.rope_scale = rope_frequencies(cf, inv);
    d_inv = (float *)dev_alloc(c, (size_t)D / 2 * 4, &c->weight_bytes, "cudaMalloc (rope)");
    CUDA_CHECK(cudaMemcpy(d_inv, inv, (size_t)D / 2 * 4, cudaMemcpyHostToDevice), "rope upload");
    c->b.inv_freq = d_inv;
    free(inv);

    // KV cache
    kv_alloc(c, &c->b.kv, &shape);
    c->base.capacity = capacity;
    free((void *)shape.wide);

    // Decode scratch
    size_t *sb = &c->scratch_bytes;
    const char *sw = "cudaMalloc (scratch)";
    c->b.x = (float *)dev_alloc(c, 2 * (size_t)d.H * 4, sb, sw);
    c->b.qkv = (float *)dev_alloc(c, (size_t)d.NQKV * 4, sb, sw);
    c->b.q = (float *)dev_alloc(c, (size_t)d.QD * 4, sb, sw);
    c->b.part = (float *)dev_alloc(c, (size_t)d.Hkv * c->att_S * c->gq * D * 4, sb, sw);
    c->b.part_ml = (float *)dev_alloc(c, (size_t)d.Hkv * c->att_S * c->gq * 2 * 4, sb, sw);
    c->b.o = (float *)dev_alloc(c, (size_t)d.QD * 4, sb, sw);
    c->b.oslot = (float *)dev_alloc(c, (size_t)MAX_SPLIT * d.H * 4, sb, sw);
    c->b.hbuf = (float *)dev_alloc(c, (size_t)d.I * 4, sb, sw);
    c->b.dslot = (float *)dev_alloc(c, (size_t)MAX_SPLIT * d.H * 4, sb, sw);
    c->b.logits = (float *)dev_alloc(c, (size_t)d.V * 4, sb, sw);
    c->b.best_val = (float *)dev_alloc(c, (size_t)c->grid * 4, sb, sw);
    c->b.best_idx = (int *)dev_alloc(c, (size_t)c->grid * 4, sb, sw);
    c->b.first_bad = (int *)dev_alloc(c, (size_t)c->grid * 4, sb, sw);
    c->b.dbg = (float *)dev_alloc(c, (size_t)d.L * 2 * d.H * 4, sb, sw);
    c->b.bar = (unsigned *)dev_alloc(c, 4, sb, sw);
    c->b.tick = (unsigned *)dev_alloc(c, (size_t)(d.NH + d.Hkv) * 4, sb, sw);
    c->b.state = (int *)dev_alloc(c, STATE_WORDS * sizeof(int), sb, sw);
    c->b.trace = (int *)dev_alloc(c, ((size_t)capacity + 1) * 4, sb, sw);
    c->b.timing = (unsigned long long *)dev_alloc(c, ((size_t)d.L * 5 + 4) * 8, sb, sw);
    CUDA_CHECK(cudaMemset(c->b.bar, 0, 4), "cudaMemset (barrier)");
    CUDA_CHECK(cudaMemset(c->b.tick, 0, (size_t)(d.NH + d.Hkv) * 4), "cudaMemset (tickets)");
    CUDA_CHECK(cudaMemset(c->b.x, 0, 2 * (size_t)d.H * 4), "cudaMemset (residual)");

    // Prefill scratch (none when every token goes through decode)
    if (max_batch > 1) {
        c->pre.x = (float *)dev_alloc(c, B * d.H * 4, sb, sw);
        c->pre.raw = (float *)dev_alloc(c, 2 * B * std::max((size_t)d.NQKV, 2 * (size_t)d.I) * 4, sb, sw);
        c->pre.q = (float *)dev_alloc(c, B * d.QD * 4, sb, sw);
        c->pre.proj = (float *)dev_alloc(c, 2 * B * d.H * 4, sb, sw);
        c->pre.logits = (float *)dev_alloc(c, 2 * B * d.V * 4, sb, sw);
        c->pre.hi = (uint16_t *)dev_alloc(c, 2 * B * wide * 2, sb, sw);
        c->pre.ids = (int *)dev_alloc(c, B * 4, sb, sw);
    }
    CUDA_CHECK(cudaMallocHost((void **)&c->h_logits, (size_t)d.V * 4), "cudaMallocHost");
    c->top_slices = (d.V + TOP_SLICE - 1) / TOP_SLICE;
    c->top_kept = (unsigned long long *)dev_alloc(c, (size_t)c->top_slices * TOP_KEEP * 8, sb, sw);
    c->top_bad = (int *)dev_alloc(c, (size_t)c->top_slices * 4, sb, sw);
    c->top = (TopResult *)dev_alloc(c, sizeof(TopResult), sb, sw);
    CUDA_CHECK(cudaMallocHost((void **)&c->h_top, sizeof(TopResult)), "cudaMallocHost");
    CUDA_CHECK(cudaMallocHost((void **)&c->h_state, STATE_WORDS * sizeof(int)), "cudaMallocHost");
    CUDA_CHECK(cudaHostAlloc((void **)&c->h_pick, 2 * STATE_WORDS * sizeof(int), cudaHostAllocMapped), "cudaHostAlloc (mapped)");
    CUDA_CHECK(cudaHostGetDevicePointer((void **)&c->d_pick, c->h_pick, 0), "cudaHostGetDevicePointer");
    for (int i = 0; i < 2; i++) CUDA_CHECK(cudaEventCreate(&c->pick_done[i]), "cudaEventCreate");
    c->use_graph = 1;
    c->prefetch = 0;  // measured: 3.5% slower on Qwen3-0.6B, no change on 1.7B and 8B (README)
    CUDA_CHECK(cudaMallocHost((void **)&c->h_dbg, (size_t)d.L * 2 * d.H * 4), "cudaMallocHost");
    CUDA_CHECK(cudaMallocHost((void **)&c->h_x, B * d.H * 4), "cudaMallocHost");
    CUDA_CHECK(cudaDeviceSynchronize(), "upload");
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    long long fits = capacity + (free_b > (256u << 20) ? (long long)((free_b - (256u << 20)) / per_token) : 0);
    char wide_note[48] = "";
    if (c->b.kv.n_wide) snprintf(wide_note, sizeof wide_note, ", %d wide key channels", c->b.kv.n_wide);
    fprintf(stderr,
            "nano: GPU %s: weights %.2f GiB (bf16), KV cache %.2f GiB (%s, %zu bytes a token%s: -c up to %lld fits), scratch %.2f GiB; "
            "%.2f of %.2f GiB in use; decode grid %d x %d, wo_split %d\n",
            prop.name, c->weight_bytes / 1073741824.0, c->kv_bytes / 1073741824.0, kv_format_name(kv), per_token, wide_note, fits,
            c->scratch_bytes / 1073741824.0, (total_b - free_b) / 1073741824.0, total_b / 1073741824.0, c->grid, NT, c->wo_split);
    warm_up(c);
    return &c->base;
}

extern "C" void cuda_engine_set_hook(Engine *e, LayerHook hook, void *ctx) {
    CudaEngine *c = (CudaEngine *)e;
    ahead_drop(c);
    c->hook = hook;
    c->hook_ctx = ctx;
}

extern "C" void cuda_engine_set_wo_split(Engine *e, int wo_split) {
    CudaEngine *c = (CudaEngine *)e;
    if (!wo_split_valid(wo_split)) fatal("wo_split %d is not 1, 2, 4 or 8", wo_split);
    c->wo_split = wo_split;
    graph_drop(c);
}

extern "C" int cuda_engine_wo_split(Engine *e) { return ((CudaEngine *)e)->wo_split; }

extern "C" void cuda_engine_set_prefetch(Engine *e, int on) {
    CudaEngine *c = (CudaEngine *)e;
    c->prefetch = on;
    graph_drop(c);
}

extern "C" void cuda_engine_set_attn_groups(Engine *e, int groups) { ((CudaEngine *)e)->mma_force = groups; }

extern "C" void cuda_engine_use_graph(Engine *e, int on) {
    CudaEngine *c = (CudaEngine *)e;
    c->use_graph = on;
    graph_drop(c);
}

// ---------------------------------------------------------------------------------------------
// Stage access for the tests, KV cache copies, measurements

// Copies in the engine's stream, waited for: a plain cudaMemcpy from pageable memory can return before
// its data lands, and the engine's stream does not wait for the legacy default stream (non-blocking).
static void to_dev(CudaEngine *c, void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->st), "test input copy");
    sync_checked(c, "test input copy");
}
static void to_host(CudaEngine *c, void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->st), "test output copy");
    sync_checked(c, "test output copy");
}

// Host fp32 -> bf16 hi/lo parts on the device (the prefill path's GEMM operand).
static void upload_split(CudaEngine *c, uint16_t *hi, uint16_t *lo, const float *x, size_t n) {
    uint16_t *h = (uint16_t *)xmalloc(n * 2), *l = (uint16_t *)xmalloc(n * 2);
    for (size_t i = 0; i < n; i++) bf16_split(x[i], &h[i], &l[i]);
    to_dev(c, hi, h, n * 2);
    to_dev(c, lo, l, n * 2);
    free(h);
    free(l);
}

// Rows [T][2][Hkv][D] (K then V of each token) stored into the cache at positions pos.. by one warp
// each, as finish_head stores them.
__global__ void kernel_kv_store(KVCache kv, int layer, int pos, const float *rows) {
    extern __shared__ float ks[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, D = kv.head_dim, part = blockIdx.y, t = blockIdx.x;
    float *row = ks + warp * D;
    for (int h = warp; h < kv.n_kv_heads; h += blockDim.x >> 5) {
        for (int i = lane; i < D; i += 32) row[i] = rows[(((size_t)t * 2 + part) * kv.n_kv_heads + h) * D + i];
        __syncwarp();
        kv_store_row<-1>(kv, part, layer, h, pos + t, row);
    }
}

static void run_stage_decode(CudaEngine *c, CudaStage *s) {
    const Dims &d = c->d;
    DecodeParams p = decode_params(c);
    p.pos = s->pos, p.l0 = s->layer, p.l1 = s->layer + 1, p.stages = s->stage & ST_ALL, p.flags = 0;
    if (s->x) to_dev(c, c->b.x, s->x, (size_t)d.H * 4);
    switch (s->stage) {
    case ST_QKV: break;
    case ST_ATT: to_dev(c, c->b.q, s->q, (size_t)d.QD * 4); break;
    case ST_WO: to_dev(c, c->b.o, s->o, (size_t)d.QD * 4), p.flags = F_FLUSH; break;
    case ST_MLP | ST_DOWN: p.flags = F_FLUSH; break;
    case ST_FINAL: p.l1 = p.l0, p.flags = F_FINAL | F_ARGMAX; break;
    default: fatal("cuda_engine_run_stage: unknown stage %d", s->stage);
    }
    launch_decode(c, &p);
    sync_checked(c, "kernel_decode (stage test)");
    switch (s->stage) {
    case ST_QKV: to_host(c, s->out, c->b.q, (size_t)d.QD * 4); break;
    case ST_ATT: to_host(c, s->out, c->b.o, (size_t)d.QD * 4); break;
    case ST_FINAL:
        to_host(c, s->out, c->b.logits, (size_t)d.V * 4);
        to_host(c, &s->argmax, c->b.state, 4);
        break;
    default: to_host(c, s->out, c->b.x, (size_t)d.H * 4); break;
    }
}

static void run_stage_prefill(CudaEngine *c, CudaStage *s) {
    const Dims &d = c->d;
    const DevLayer &w = c->h_layers[s->layer];
    int T = s->T;
    if (T > c->max_batch) fatal("cuda_engine_run_stage: %d tokens exceed max_batch %d", T, c->max_batch);
    if (s->x) to_dev(c, c->pre.x, s->x, (size_t)T * d.H * 4);
    switch (s->stage) {
    case ST_QKV:
        launch_add_norm(c, c->pre, NULL, NULL, w.in_norm, T);
        gemm_rows(c, w.wqkv, d.NQKV, d.H, c->pre.hi, T, c->pre.raw, "cublasGemmEx (qkv_proj)");
        launch_qkv_finish(c, c->pre, c->b.kv, s->layer, s->pos, T);
        sync_checked(c, "prefill QKV (stage test)");
        to_host(c, s->out, c->pre.q, (size_t)T * d.QD * 4);
        break;
    case ST_ATT: {
        to_dev(c, c->pre.q, s->q, (size_t)T * d.QD * 4);
        launch_attn_prefill(c, c->pre, c->b.kv, s->layer, s->pos, T);
        sync_checked(c, "kernel_attn_prefill (stage test)");
        size_t n = (size_t)T * d.QD;
        uint16_t *h = (uint16_t *)xmalloc(n * 2), *l = (uint16_t *)xmalloc(n * 2);
        to_host(c, h, c->pre.hi, n * 2);
        to_host(c, l, c->pre.hi + n, n * 2);
        for (size_t i = 0; i < n; i++) s->out[i] = bf16_to_f32(h[i]) + bf16_to_f32(l[i]);
        free(h);
        free(l);
        break;
    }
    case ST_WO:
        upload_split(c, c->pre.hi, c->pre.hi + (size_t)T * d.QD, s->o, (size_t)T * d.QD);
        gemm_rows(c, w.wo, d.H, d.QD, c->pre.hi, T, c->pre.proj, "cublasGemmEx (o_proj)");
        launch_add_norm(c, c->pre, c->pre.proj, w.bo, w.post_norm, T);
        sync_checked(c, "prefill o_proj (stage test)");
        to_host(c, s->out, c->pre.x, (size_t)T * d.H * 4);
        break;
    case ST_MLP | ST_DOWN:
        launch_add_norm(c, c->pre, NULL, NULL, w.post_norm, T);
        gemm_rows(c, w.wgu, 2 * d.I, d.H, c->pre.hi, T, c->pre.raw, "cublasGemmEx (gate_up_proj)");
        launch_silu(c, c->pre, T);
        gemm_rows(c, w.wd, d.H, d.I, c->pre.hi, T, c->pre.proj, "cublasGemmEx (down_proj)");
        launch_add_norm(c, c->pre, c->pre.proj, NULL, c->b.final_norm, T);
        sync_checked(c, "prefill MLP (stage test)");
        to_host(c, s->out, c->pre.x, (size_t)T * d.H * 4);
        break;
    case ST_FINAL:
        launch_add_norm(c, c->pre, NULL, NULL, c->b.final_norm, T);
        gemm_rows(c, c->b.lm_head, d.V, d.H, c->pre.hi, T, c->pre.logits, "cublasGemmEx (lm_head)");
        launch_add_halves(c, c->pre.logits, (size_t)T * d.V);
        sync_checked(c, "prefill lm_head (stage test)");
        to_host(c, s->out, c->pre.logits, (size_t)T * d.V * 4);
        break;
    default: fatal("cuda_engine_run_stage: unknown stage %d", s->stage);
    }
}

extern "C" void cuda_engine_run_stage(Engine *e, CudaStage *s) {
    CudaEngine *c = (CudaEngine *)e;
    ahead_drop(c);
    if (s->stage == ST_KV_STORE) {
        size_t n = (size_t)s->T * 2 * c->d.KVD;
        float *rows = (float *)dev_alloc(c, n * 4, &c->scratch_bytes, "cudaMalloc (test rows)");
        to_dev(c, rows, s->x, n * 4);
        kernel_kv_store<<<dim3(s->T, 2), 128, 4 * c->d.D * sizeof(float), c->st>>>(c->b.kv, s->layer, s->pos, rows);
        LAUNCH_CHECK("kernel_kv_store");
        sync_checked(c, "kernel_kv_store (stage test)");
    } else if (s->T <= 1) run_stage_decode(c, s);
    else run_stage_prefill(c, s);
}

extern "C" void cuda_engine_kv_copy(Engine *e, KVCache *kv, int n, int to_gpu) {
    CudaEngine *c = (CudaEngine *)e;
    ahead_drop(c);
    const KVCache *g = &c->b.kv;
    if (kv->format != g->format || kv->n_layers != g->n_layers || kv->n_kv_heads != g->n_kv_heads || kv->head_dim != g->head_dim ||
        kv->n_wide != g->n_wide || n > kv->capacity || n > g->capacity)
        fatal("cuda_engine_kv_copy: the caches differ in format or shape");
    size_t rows = (size_t)g->n_layers * g->n_kv_heads;
    uint8_t *hp[4] = {kv->k, kv->k_aux, kv->v, kv->v_aux}, *gp[4] = {g->k, g->k_aux, g->v, g->v_aux};
    for (int i = 0; i < 4; i++) {  // plane i: part i / 2, aux i % 2; each (layer, kv head) holds capacity rows, copy the first n
        size_t rb = kv_row_bytes(g, i / 2, i % 2);
        size_t w = (size_t)n * rb, hpitch = (size_t)kv->capacity * rb, gpitch = (size_t)g->capacity * rb;
        if (!w) continue;
        if (to_gpu) CUDA_CHECK(cudaMemcpy2DAsync(gp[i], gpitch, hp[i], hpitch, w, rows, cudaMemcpyHostToDevice, c->st), "KV cache copy");
        else CUDA_CHECK(cudaMemcpy2DAsync(hp[i], hpitch, gp[i], gpitch, w, rows, cudaMemcpyDeviceToHost, c->st), "KV cache copy");
    }
    sync_checked(c, "KV cache copy");  // in the engine's stream, as to_dev's
}

extern "C" double cuda_engine_bench_decode(Engine *e, int id, int pos, int steps, int *ids) {
    CudaEngine *c = (CudaEngine *)e;
    ahead_drop(c);
    if (pos + steps > c->b.kv.capacity) fatal("cuda_engine_bench_decode: %d steps from position %d exceed the cache", steps, pos);
    state_set(c, id, pos);
    sync_checked(c, "state copy");
    DecodeParams p = decode_params(c);
    p.flags |= F_EMBED | F_FINAL | F_ARGMAX | F_CHAIN;
    p.trace = c->b.trace;
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
    if (ids) to_host(c, ids, c->b.trace + pos, (size_t)steps * 4);
    return ms / 1e3 / steps;
}

extern "C" void cuda_engine_stage_times(Engine *e, int id, int pos, int reps, double us[6]) {
    CudaEngine *c = (CudaEngine *)e;
    ahead_drop(c);
    const int L = c->d.L, n = 5 * L + 2;
    unsigned long long t[5 * 256 + 4];
    if (L > 256) fatal("cuda_engine_stage_times: too many layers");
    DecodeParams p = decode_params(c);
    p.flags |= F_EMBED | F_FINAL | F_ARGMAX | F_CHAIN;
    p.timing = c->b.timing;
    for (int k = 0; k < 6; k++) us[k] = 0;
    for (int r = 0; r < reps; r++) {
        state_set(c, id, pos);
        launch_decode(c, &p);
        CUDA_CHECK(cudaMemcpyAsync(t, c->b.timing, (size_t)n * 8, cudaMemcpyDeviceToHost, c->st), "timing copy");
        sync_checked(c, "kernel_decode (stage timing)");
        for (int l = 0; l < L; l++)
            for (int k = 0; k < 5; k++) us[k] += (double)(t[1 + l * 5 + k] - t[l * 5 + k]) / 1e3 / L / reps;
        us[5] += (double)(t[5 * L + 1] - t[5 * L]) / 1e3 / reps;
    }
}

// n grid barriers and nothing else.
__global__ void __launch_bounds__(NT, 1) kernel_barriers(unsigned *bar, int n) {
    for (int i = 0; i < n; i++) grid_sync(bar);
}

extern "C" double cuda_engine_barrier_us(Engine *e, int n) {
    CudaEngine *c = (CudaEngine *)e;
    ahead_drop(c);
    cudaEvent_t t[3];
    for (int i = 0; i < 3; i++) CUDA_CHECK(cudaEventCreate(&t[i]), "cudaEventCreate");
    int counts[2] = {0, n};
    CUDA_CHECK(cudaEventRecord(t[0], c->st), "cudaEventRecord");
    for (int i = 0; i < 2; i++) {  // an empty launch, then n barriers: the difference is theirs
        void *args[] = {&c->b.bar, &counts[i]};
        CUDA_CHECK(cudaLaunchCooperativeKernel((const void *)kernel_barriers, dim3(c->grid), dim3(NT), args, 0, c->st), "launch of kernel_barriers");
        CUDA_CHECK(cudaEventRecord(t[i + 1], c->st), "cudaEventRecord");
    }
    sync_checked(c, "kernel_barriers");
    float empty = 0, full = 0;
    CUDA_CHECK(cudaEventElapsedTime(&empty, t[0], t[1]), "cudaEventElapsedTime");
    CUDA_CHECK(cudaEventElapsedTime(&full, t[1], t[2]), "cudaEventElapsedTime");
    for (int i = 0; i < 3; i++) cudaEventDestroy(t[i]);
    return (full - empty) * 1e3 / n;
}

extern "C" void cuda_engine_bytes(Engine *e, double *weights, double *kv_per_pos) {
    CudaEngine *c = (CudaEngine *)e;
    const KVCache *kv = &c->b.kv;
    *weights = (double)weight_bytes(c->d, 1);  // lm_head is read once a token, the embedding only a row
    *kv_per_pos = (double)kv_bytes_per_token(kv->format, kv->n_layers, kv->n_kv_heads, kv->head_dim, kv->n_wide);
}

// A device-side copy, for the bandwidth measurement.
__global__ void kernel_copy(const uint4 *src, uint4 *dst, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) dst[i] = src[i];
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

extern "C" double cuda_engine_time(Engine *e, void (*fn)(void *ctx), void *ctx) {
    CudaEngine *c = (CudaEngine *)e;
    cudaEvent_t t0, t1;
    CUDA_CHECK(cudaEventCreate(&t0), "cudaEventCreate");
    CUDA_CHECK(cudaEventCreate(&t1), "cudaEventCreate");
    CUDA_CHECK(cudaEventRecord(t0, c->st), "cudaEventRecord");
    fn(ctx);
    CUDA_CHECK(cudaEventRecord(t1, c->st), "cudaEventRecord");
    CUDA_CHECK(cudaEventSynchronize(t1), "cudaEventSynchronize");
    // A greedy step queued ahead of a token fn did not ask for is not fn's time: fn ended at its last pick.
    cudaEvent_t end = c->ahead ? c->pick_done[(c->ahead_pos - 1) & 1] : t1;
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, t0, end), "cudaEventElapsedTime");
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    return ms / 1e3;
}

// One kind of the step's launches alone, as rows_step runs them: 1 the GEMMs (lm_head's too), 2 the
// attention (with the QKV heads' finish), 3 the residual adds and norms, 4 SiLU (run_layers' kinds
// 1 << (part - 1)), 5 the ranking of every row.
static void rows_part(CudaEngine *c, int part) {
    const Dims &d = c->d;
    const Acts &a = c->rows;
    const int M = c->n_seqs;
    if (part == 5) {
        kernel_top_slices<<<dim3(c->top_slices, M), TOP_THREADS, 0, c->st>>>(a.logits, c->rank_rows, d.V, d.V, c->row_kept, c->row_bad);
        kernel_top_merge<<<dim3(1, M), TOP_THREADS, 0, c->st>>>(a.logits, c->rank_rows, d.V, c->row_kept, c->row_bad, c->top_slices, c->row_top);
        return;
    }
    run_layers(c, a, M, c->b.kv, 0, 1, 1 << (part - 1));
    if (part == 1) gemm_rows(c, c->b.lm_head, d.V, d.H, a.hi, M, a.logits, "cublasGemmEx (lm_head)");
}

extern "C" void cuda_engine_rows_times(Engine *e, int reps, double ms[ROWS_TIMES]) {
    CudaEngine *c = (CudaEngine *)e;
    ahead_drop(c);
    if (!c->n_seqs) fatal("cuda_engine_rows_times: the engine has no rows (seqs)");
    for (int i = 0; i < c->n_seqs; i++) c->h_rank_rows[i] = i;
    CUDA_CHECK(cudaMemcpyAsync(c->rank_rows, c->h_rank_rows, (size_t)c->n_seqs * 4, cudaMemcpyHostToDevice, c->st), "row state copy");
    cudaEvent_t t0, t1;
    CUDA_CHECK(cudaEventCreate(&t0), "cudaEventCreate");
    CUDA_CHECK(cudaEventCreate(&t1), "cudaEventCreate");
    for (int part = 0; part < ROWS_TIMES; part++) {
        // reps of the part as one CUDA graph (as the step runs), launched once to warm up, then timed
        cudaGraph_t g = NULL;
        cudaGraphExec_t ge = NULL;
        CUDA_CHECK(cudaStreamBeginCapture(c->st, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture (rows timing)");
        for (int r = 0; r < reps; r++) {
            if (part == 0) rows_step(c);
            else rows_part(c, part);
        }
        CUDA_CHECK(cudaStreamEndCapture(c->st, &g), "cudaStreamEndCapture (rows timing)");
        CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0), "cudaGraphInstantiate (rows timing)");
        CUDA_CHECK(cudaGraphLaunch(ge, c->st), "cudaGraphLaunch (rows timing)");
        CUDA_CHECK(cudaEventRecord(t0, c->st), "cudaEventRecord");
        CUDA_CHECK(cudaGraphLaunch(ge, c->st), "cudaGraphLaunch (rows timing)");
        CUDA_CHECK(cudaEventRecord(t1, c->st), "cudaEventRecord");
        CUDA_CHECK(cudaEventSynchronize(t1), "rows timing");
        float t = 0;
        CUDA_CHECK(cudaEventElapsedTime(&t, t0, t1), "cudaEventElapsedTime");
        ms[part] = t / reps;
        cudaGraphExecDestroy(ge), cudaGraphDestroy(g);
    }
    cudaEventDestroy(t0), cudaEventDestroy(t1);
}

extern "C" int cuda_device_info(char *name, size_t namelen, int *driver, int *runtime) {
    char why[256];
    if (!cuda_device_count(why, sizeof why)) return 0;
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    snprintf(name, namelen, "%s", prop.name);
    CUDA_CHECK(cudaDriverGetVersion(driver), "cudaDriverGetVersion");
    CUDA_CHECK(cudaRuntimeGetVersion(runtime), "cudaRuntimeGetVersion");
    return 1;
}
