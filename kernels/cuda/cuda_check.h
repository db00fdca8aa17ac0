// Fatal checks for CUDA runtime and cuBLASLt calls (docs/design.md, "Errors"): a failed call prints
// the statement, the library's error string, file:line and the rank, then aborts. Used by the CUDA
// backend's host code and launchers; nothing a user can cause reaches these.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "kernels/base/check.h"

#define CUDA_CHECK(call)                                                   \
  do {                                                                     \
    const cudaError_t cuda_result_ = (call);                               \
    TESSERA_CHECK(cuda_result_ == cudaSuccess)                             \
        << #call << " returned " << cudaGetErrorName(cuda_result_) << " (" \
        << cudaGetErrorString(cuda_result_) << ")";                        \
  } while (0)

#define CUBLAS_CHECK(call)                                                        \
  do {                                                                            \
    const cublasStatus_t cublas_result_ = (call);                                 \
    TESSERA_CHECK(cublas_result_ == CUBLAS_STATUS_SUCCESS)                        \
        << #call << " returned " << cublasLtGetStatusName(cublas_result_) << " (" \
        << cublasLtGetStatusString(cublas_result_) << ")";                        \
  } while (0)

// After a kernel launch: a bad launch configuration surfaces here, not at the next sync.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
