// GPU engine. For now it only reports whether a usable CUDA device exists; the fused decode
// kernels (RMSNorm-QKV, cooperative attention, K-parallel W_O) will live here.
#include <cuda_runtime.h>
#include <stdio.h>

#include "nano.h"

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
