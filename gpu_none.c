// The GPU entry points of a build without nvcc: no device is ever found, so every mode runs the
// reference path; --version and the engine line say the GPU engine is compiled out.
#include <stdio.h>

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
