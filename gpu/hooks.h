// The GPU engine's hooks for its tests and measurements (tests/test_gpu.c): single stages on given
// inputs, KV cache copies, chained greedy decode, per-stage timing, bytes per token, the copy
// bandwidth. Implemented in kernels.cu; not part of the program's own interface (nano.h).
#ifndef NANO_GPU_HOOKS_H
#define NANO_GPU_HOOKS_H

#include "../nano.h"

#ifdef __cplusplus
extern "C" {
#endif

// The decode stages of a layer (the decode kernel runs them in this order), the final norm + lm_head,
// and (tests only) a store of given K/V rows into the cache.
enum { ST_QKV = 1, ST_ATT = 2, ST_WO = 4, ST_MLP = 8, ST_DOWN = 16, ST_ALL = 31, ST_FINAL = 32, ST_KV_STORE = 64 };
typedef struct {
    int stage, layer, pos, T;  // stage: ST_QKV, ST_ATT, ST_WO, ST_MLP | ST_DOWN, ST_FINAL or ST_KV_STORE
    const float *x;  // in [T][hidden]: residual (QKV, WO, MLP, FINAL); [T][2][Hkv][D] K and V rows (KV_STORE)
    const float *q;  // in [T][Hq*D]: query after q_norm and RoPE (ATT)
    const float *o;  // in [T][Hq*D]: attention output (WO)
    float *out;      // out: q [T][Hq*D] (QKV), o (ATT), residual [T][hidden] (WO, MLP), logits [T][vocab] (FINAL)
    int argmax;      // out (FINAL, T == 1): the decode kernel's greedy pick
} CudaStage;
// One stage of one layer on given inputs, through the decode kernel (T == 1) or the prefill path
// (T > 1), at positions pos..pos+T-1 of the engine's own KV cache.
void cuda_engine_run_stage(Engine *e, CudaStage *s);
// Copies positions [0, n) of every layer between a host KVCache of the same format and shape and the engine's cache.
void cuda_engine_kv_copy(Engine *e, KVCache *kv, int n, int to_gpu);
// Greedy decode chained on the GPU (the pick feeds the next step without the host) from token id at
// position pos: steps tokens, their ids in ids (when not NULL); returns seconds per token.
double cuda_engine_bench_decode(Engine *e, int id, int pos, int steps, int *ids);
// Microseconds per stage of a greedy decode step at position pos (block 0's %globaltimer, averaged
// over reps and layers): QKV, attention, o_proj, gate/up, down (each per layer), then the final
// norm + lm_head + pick.
void cuda_engine_stage_times(Engine *e, int id, int pos, int reps, double us[6]);
// Microseconds one grid barrier of the decode kernel's grid takes alone (n of them in one launch).
double cuda_engine_barrier_us(Engine *e, int n);
// Key-tile groups a block of the tensor-core prefill attention always has, 1 or 2 (0, the default: two
// when its blocks are fewer than the SMs, where the shared memory allows).
void cuda_engine_set_attn_groups(Engine *e, int groups);
// Decode steps of the Engine API replay a CUDA graph of the launch (1, the default) or launch directly.
void cuda_engine_use_graph(Engine *e, int on);
// Before each grid barrier of a step, prefetch into L2 the next stage's first weights (default 0).
void cuda_engine_set_prefetch(Engine *e, int on);
// Bytes a decode step streams: weights, and KV cache per position of context.
void cuda_engine_bytes(Engine *e, double *weights, double *kv_per_pos);
// Device-to-device copy bandwidth in bytes/s (read + written) over a buffer of the given size.
double cuda_copy_bandwidth(size_t bytes);
int cuda_engine_wo_split(Engine *e);  // the o_proj split in use (--wo-split, or the one picked from the shape)
// Seconds between CUDA events recorded on the engine's stream before and after fn(ctx) runs (fn calls
// the engine, whose calls return when their work is done): the device's view of the time fn took.
double cuda_engine_time(Engine *e, void (*fn)(void *ctx), void *ctx);
// Where a batched decode step's time goes (after a forward_seqs of one token per row, on those rows),
// in milliseconds averaged over reps: ms[0] the whole step, then each kind of its launches alone over
// every layer: [1] the GEMMs, [2] the attention (with the QKV heads' finish), [3] the residual adds and
// norms, [4] SiLU; and [5] ranking every row's logits. It overwrites the rows' activations, their K and V at
// the rows' positions and which sequence each ranked row is (the benchmark calls it after a test, whose
// next run sets them again).
#define ROWS_TIMES 6
void cuda_engine_rows_times(Engine *e, int reps, double ms[ROWS_TIMES]);
// Device 0's name and the driver's and runtime's CUDA versions (12040 is 12.4); 0 when there is no GPU.
int cuda_device_info(char *name, size_t namelen, int *driver, int *runtime);

#ifdef __cplusplus
}
#endif

#endif
