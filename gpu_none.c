// The GPU entry points of a build without nvcc: no device is ever found, so every mode runs the
// reference path; --version and the engine line say the GPU engine is compiled out.
#include <stdio.h>

#include "gpu/hooks.h"
#include "nano.h"

const char *nano_gpu_build(void) { return NULL; }

int cuda_device_count(char *why, size_t whylen) {
    snprintf(why, whylen, "built without the GPU engine: nvcc was not found");
    return 0;
}

Engine *cuda_engine_create(const Model *m, int capacity, KVFormat kv, int max_batch, int wo_split, char *why, size_t whylen) {
    (void)m, (void)capacity, (void)kv, (void)max_batch, (void)wo_split;
    cuda_device_count(why, whylen);
    return NULL;
}

// Never reached: there is no engine to hook (--check stops at cuda_engine_create's NULL).
void cuda_engine_set_hook(Engine *e, LayerHook hook, void *ctx) { (void)e, (void)hook, (void)ctx; }

// The benchmark's hooks (gpu/hooks.h): never reached either, since no engine exists to measure.
void cuda_engine_set_wo_split(Engine *e, int wo_split) {
    (void)e, (void)wo_split;
    fatal("cuda_engine_set_wo_split: built without the GPU engine");
}
int cuda_engine_wo_split(Engine *e) {
    (void)e;
    fatal("cuda_engine_wo_split: built without the GPU engine");
}
void cuda_engine_bytes(Engine *e, double *weights, double *kv_per_pos) {
    (void)e, (void)weights, (void)kv_per_pos;
    fatal("cuda_engine_bytes: built without the GPU engine");
}
double cuda_copy_bandwidth(size_t bytes) {
    (void)bytes;
    fatal("cuda_copy_bandwidth: built without the GPU engine");
}
double cuda_engine_time(Engine *e, void (*fn)(void *ctx), void *ctx) {
    (void)e, (void)fn, (void)ctx;
    fatal("cuda_engine_time: built without the GPU engine");
}
void cuda_engine_rows_times(Engine *e, int reps, double ms[ROWS_TIMES]) {
    (void)e, (void)reps, (void)ms;
    fatal("cuda_engine_rows_times: built without the GPU engine");
}
int cuda_device_info(char *name, size_t namelen, int *driver, int *runtime) {
    (void)name, (void)namelen, (void)driver, (void)runtime;
    return 0;
}
