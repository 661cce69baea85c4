// cuBLAS and cuBLASLt, loaded when the GPU engine first asks for them: the binary then runs the
// reference path on a machine without the CUDA libraries. These definitions stand in for the entry
// points kernels.cu calls and forward to the libraries, found with dlopen() by their versioned names.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <dlfcn.h>
#include <stdio.h>

#include "nano.h"

#define STR2(x) #x
#define STR(x) STR2(x)
#define CUBLAS_LIB "libcublas.so." STR(CUBLAS_VER_MAJOR)
#define CUBLASLT_LIB "libcublasLt.so." STR(CUBLAS_VER_MAJOR)

const char *nano_gpu_build(void) {
    static char s[32];
    snprintf(s, sizeof s, "CUDA %d.%d", CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10);
    return s;
}

static void *library_symbol(const char *libname, void **lib, const char *name) {
    if (!*lib && !(*lib = dlopen(libname, RTLD_NOW | RTLD_LOCAL)))
        fatal("the GPU engine needs %s (%s); --ref runs without it", libname, dlerror());
    void *f = dlsym(*lib, name);
    if (!f) fatal("%s: no symbol %s", libname, name);
    return f;
}

static void *cublas, *cublas_lt;
#define cublas_symbol(name) library_symbol(CUBLAS_LIB, &cublas, name)
#define cublas_lt_symbol(name) library_symbol(CUBLASLT_LIB, &cublas_lt, name)

// Each wrapper looks its function up once; the pointer is cast from dlsym's void *, as POSIX allows.
#define FORWARD_FROM(lookup, name, params, args)                        \
    cublasStatus_t CUBLASWINAPI name params {                           \
        static cublasStatus_t(CUBLASWINAPI * f) params;                 \
        if (!f) *(void **)&f = lookup(#name);                           \
        return f args;                                                  \
    }
#define FORWARD(name, params, args) FORWARD_FROM(cublas_symbol, name, params, args)
#define FORWARD_LT(name, params, args) FORWARD_FROM(cublas_lt_symbol, name, params, args)

FORWARD(cublasCreate_v2, (cublasHandle_t * handle), (handle))
FORWARD(cublasDestroy_v2, (cublasHandle_t handle), (handle))
FORWARD(cublasSetStream_v2, (cublasHandle_t handle, cudaStream_t stream), (handle, stream))
FORWARD(cublasSetWorkspace_v2, (cublasHandle_t handle, void *workspace, size_t workspaceSizeInBytes), (handle, workspace, workspaceSizeInBytes))
FORWARD(cublasGemmEx,
        (cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k, const void *alpha,
         const void *A, cudaDataType Atype, int lda, const void *B, cudaDataType Btype, int ldb, const void *beta, void *C,
         cudaDataType Ctype, int ldc, cublasComputeType_t computeType, cublasGemmAlgo_t algo),
        (handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc, computeType, algo))

FORWARD_LT(cublasLtCreate, (cublasLtHandle_t * handle), (handle))
FORWARD_LT(cublasLtDestroy, (cublasLtHandle_t handle), (handle))
FORWARD_LT(cublasLtMatmulDescCreate, (cublasLtMatmulDesc_t * desc, cublasComputeType_t compute, cudaDataType_t scale),
           (desc, compute, scale))
FORWARD_LT(cublasLtMatmulDescDestroy, (cublasLtMatmulDesc_t desc), (desc))
FORWARD_LT(cublasLtMatmulDescSetAttribute, (cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const void *buf, size_t size),
           (desc, attr, buf, size))
FORWARD_LT(cublasLtMatrixLayoutCreate, (cublasLtMatrixLayout_t * layout, cudaDataType type, uint64_t rows, uint64_t cols, int64_t ld),
           (layout, type, rows, cols, ld))
FORWARD_LT(cublasLtMatrixLayoutDestroy, (cublasLtMatrixLayout_t layout), (layout))
FORWARD_LT(cublasLtMatmulPreferenceCreate, (cublasLtMatmulPreference_t * pref), (pref))
FORWARD_LT(cublasLtMatmulPreferenceDestroy, (cublasLtMatmulPreference_t pref), (pref))
FORWARD_LT(cublasLtMatmulPreferenceSetAttribute,
           (cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const void *buf, size_t size),
           (pref, attr, buf, size))
FORWARD_LT(cublasLtMatmulAlgoGetHeuristic,
           (cublasLtHandle_t handle, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
            cublasLtMatrixLayout_t d, cublasLtMatmulPreference_t pref, int requested, cublasLtMatmulHeuristicResult_t results[], int *count),
           (handle, op, a, b, c, d, pref, requested, results, count))
FORWARD_LT(cublasLtMatmul,
           (cublasLtHandle_t handle, cublasLtMatmulDesc_t op, const void *alpha, const void *A, cublasLtMatrixLayout_t a, const void *B,
            cublasLtMatrixLayout_t b, const void *beta, const void *C, cublasLtMatrixLayout_t c, void *D, cublasLtMatrixLayout_t d,
            const cublasLtMatmulAlgo_t *algo, void *workspace, size_t workspace_bytes, cudaStream_t stream),
           (handle, op, alpha, A, a, B, b, beta, C, c, D, d, algo, workspace, workspace_bytes, stream))
