// cuBLAS, loaded when the GPU engine first asks for it: the binary then runs the reference path on a
// machine without the CUDA libraries. These definitions stand in for the five cuBLAS entry points
// kernels.cu calls and forward to the library, found with dlopen() by its versioned name.
#include <cublas_v2.h>
#include <dlfcn.h>
#include <stdio.h>

#include "nano.h"

#define STR2(x) #x
#define STR(x) STR2(x)
#define CUBLAS_LIB "libcublas.so." STR(CUBLAS_VER_MAJOR)

const char *nano_gpu_build(void) {
    static char s[32];
    snprintf(s, sizeof s, "CUDA %d.%d", CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10);
    return s;
}

static void *cublas_symbol(const char *name) {
    static void *lib;
    if (!lib && !(lib = dlopen(CUBLAS_LIB, RTLD_NOW | RTLD_LOCAL)))
        fatal("the GPU engine needs %s (%s); --ref runs without it", CUBLAS_LIB, dlerror());
    void *f = dlsym(lib, name);
    if (!f) fatal("%s: no symbol %s", CUBLAS_LIB, name);
    return f;
}

// Each wrapper looks its function up once; the pointer is cast from dlsym's void *, as POSIX allows.
#define FORWARD(name, params, args)                                     \
    cublasStatus_t CUBLASWINAPI name params {                           \
        static cublasStatus_t(CUBLASWINAPI * f) params;                 \
        if (!f) *(void **)&f = cublas_symbol(#name);                    \
        return f args;                                                  \
    }

FORWARD(cublasCreate_v2, (cublasHandle_t * handle), (handle))
FORWARD(cublasDestroy_v2, (cublasHandle_t handle), (handle))
FORWARD(cublasSetStream_v2, (cublasHandle_t handle, cudaStream_t stream), (handle, stream))
FORWARD(cublasSetWorkspace_v2, (cublasHandle_t handle, void *workspace, size_t workspaceSizeInBytes), (handle, workspace, workspaceSizeInBytes))
FORWARD(cublasGemmEx,
        (cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k, const void *alpha,
         const void *A, cudaDataType Atype, int lda, const void *B, cudaDataType Btype, int ldb, const void *beta, void *C,
         cudaDataType Ctype, int ldc, cublasComputeType_t computeType, cublasGemmAlgo_t algo),
        (handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc, computeType, algo))
