#pragma once
/// @file
/// GFLEX_CUDA_CHECK, GFLEX_CUBLAS_CHECK, GFLEX_CUDNN_CHECK and (in builds with NCCL)
/// GFLEX_NCCL_CHECK: turn a failed CUDA runtime, cuBLAS, cuDNN or NCCL call into a
/// gflex::kernels::compute_error carrying errc::device_error, the call site and the library's
/// message. Private to the CUDA backend; it includes no CAF header so that nvcc never sees one.

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#ifdef GFLEX_HAVE_NCCL
#include <nccl.h>
#endif

#include <string>

#include "gflex/kernels/backend.hpp"

namespace gflex::kernels::detail {

/// Throws the compute_error for a failed CUDA runtime call; `what` names the call.
[[noreturn]] inline void throw_cuda_error(cudaError_t status, const char* what, const char* file,
                                          int line) {
  // A failed call that does not poison the context (out of memory, an invalid argument) still
  // leaves its code in the runtime's per-thread "last error"; clear it so that the next launch
  // check does not report this failure a second time.
  (void)cudaGetLastError();
  std::string message = std::string(file) + ":" + std::to_string(line) + ": " + what + ": ";
  if (status == cudaErrorMemoryAllocation) message += "out of device memory (";
  message += cudaGetErrorName(status);
  message += ": ";
  message += cudaGetErrorString(status);
  if (status == cudaErrorMemoryAllocation) message += ")";
  throw compute_error(gflex::error(gflex::errc::device_error, std::move(message)));
}

/// Throws the compute_error for a failed cuBLAS call; `what` names the call.
[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, const char* what,
                                            const char* file, int line) {
  std::string message = std::string(file) + ":" + std::to_string(line) + ": " + what + ": ";
  // cuBLAS reports a failed workspace or handle allocation as ALLOC_FAILED; say it plainly.
  if (status == CUBLAS_STATUS_ALLOC_FAILED) message += "out of device memory (";
  message += cublasGetStatusString(status);
  if (status == CUBLAS_STATUS_ALLOC_FAILED) message += ")";
  throw compute_error(gflex::error(gflex::errc::device_error, std::move(message)));
}

/// Throws the compute_error for a failed cuDNN call; `what` names the call.
[[noreturn]] inline void throw_cudnn_error(cudnnStatus_t status, const char* what, const char* file,
                                           int line) {
  std::string message = std::string(file) + ":" + std::to_string(line) + ": " + what + ": ";
  const bool oom = status == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED ||
                   status == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
  if (oom) message += "out of memory (";
  message += cudnnGetErrorString(status);
  if (oom) message += ")";
  // cuDNN 9 keeps a sentence on the last failure ("... dimension exceeds ..."), which says far
  // more than the status name; it is per thread, like the failure we are reporting.
  char detail[512] = {};
  cudnnGetLastErrorString(detail, sizeof detail);
  if (detail[0] != '\0') {
    message += ": ";
    message += detail;
  }
  // A parameter or shape the library does not take is the work's, not a broken device's:
  // counted as a device failure, any job's model could shut a node down. A library or driver
  // that does not fit the device (an arch, a sub-library missing) is the node's.
  const bool refused_shape =
      CUDNN_STATUS_CATEGORY(status) == CUDNN_STATUS_BAD_PARAM ||
      status == CUDNN_STATUS_NOT_SUPPORTED || status == CUDNN_STATUS_NOT_SUPPORTED_SHAPE ||
      status == CUDNN_STATUS_NOT_SUPPORTED_LAYOUT || status == CUDNN_STATUS_NOT_SUPPORTED_PADDING ||
      status == CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE ||
      status == CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN;
  throw compute_error(
      gflex::error(refused_shape ? gflex::errc::invalid_argument : gflex::errc::device_error,
                   std::move(message)));
}

#ifdef GFLEX_HAVE_NCCL
/// Throws the compute_error for a failed NCCL call; `what` names the call.
[[noreturn]] inline void throw_nccl_error(ncclResult_t status, const char* what, const char* file,
                                          int line) {
  std::string message = std::string(file) + ":" + std::to_string(line) + ": " + what + ": ";
  message += ncclGetErrorString(status);
  // ncclGetLastError holds NCCL's own explanation (which peer, which transport); the argument
  // is unused by the library, so null is fine.
  const char* detail = ncclGetLastError(nullptr);
  if (detail != nullptr && detail[0] != '\0') {
    message += ": ";
    message += detail;
  }
  throw compute_error(gflex::error(gflex::errc::device_error, std::move(message)));
}
#endif

}  // namespace gflex::kernels::detail

/// Evaluates a CUDA runtime call once; throws gflex::kernels::compute_error if it failed.
#define GFLEX_CUDA_CHECK(expr)                                                                   \
  do {                                                                                           \
    const cudaError_t gflex_cuda_status_ = (expr);                                               \
    if (gflex_cuda_status_ != cudaSuccess)                                                       \
      ::gflex::kernels::detail::throw_cuda_error(gflex_cuda_status_, #expr, __FILE__, __LINE__); \
  } while (false)

/// Evaluates a cuBLAS call once; throws gflex::kernels::compute_error if it failed.
#define GFLEX_CUBLAS_CHECK(expr)                                                          \
  do {                                                                                    \
    const cublasStatus_t gflex_cublas_status_ = (expr);                                   \
    if (gflex_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                    \
      ::gflex::kernels::detail::throw_cublas_error(gflex_cublas_status_, #expr, __FILE__, \
                                                   __LINE__);                             \
  } while (false)

/// Checks the kernel launch just made (a bad configuration, or an earlier asynchronous fault).
#define GFLEX_CUDA_CHECK_LAUNCH() GFLEX_CUDA_CHECK(cudaGetLastError())

/// Evaluates a cuDNN call once; throws gflex::kernels::compute_error if it failed.
#define GFLEX_CUDNN_CHECK(expr)                                                                    \
  do {                                                                                             \
    const cudnnStatus_t gflex_cudnn_status_ = (expr);                                              \
    if (gflex_cudnn_status_ != CUDNN_STATUS_SUCCESS)                                               \
      ::gflex::kernels::detail::throw_cudnn_error(gflex_cudnn_status_, #expr, __FILE__, __LINE__); \
  } while (false)

#ifdef GFLEX_HAVE_NCCL
/// Evaluates an NCCL call once; throws gflex::kernels::compute_error if it failed.
#define GFLEX_NCCL_CHECK(expr)                                                                   \
  do {                                                                                           \
    const ncclResult_t gflex_nccl_status_ = (expr);                                              \
    if (gflex_nccl_status_ != ncclSuccess)                                                       \
      ::gflex::kernels::detail::throw_nccl_error(gflex_nccl_status_, #expr, __FILE__, __LINE__); \
  } while (false)
#endif
