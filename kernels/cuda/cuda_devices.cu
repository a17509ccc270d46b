/// @file
/// Device discovery, calibration and the per-device memory budget, for builds with the CUDA
/// backend (kernels/src/devices.cpp has the answers of a build without it).
///
/// Design:
/// - The memory budget is one pair of atomics per device (limit, bytes in use), process-wide,
///   because several backends (a replica group's ranks, a trainer and a calibration) may share
///   a device and the owner's cap is on the device, not on one backend. A reservation is a
///   compare-and-swap loop, so concurrent backends on other threads never pass the cap
///   together, and no lock is held across a CUDA call.
/// - Calibration measures what a job will see: an FP32 SGEMM (exact math, as the backend's
///   default precision) and copies to and from pinned memory (as the backend's staged upload).
///   Everything is timed with CUDA events on one stream, so host scheduling noise stays out.

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "cuda_check.hpp"
#include "cuda_memory.hpp"
#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/devices.hpp"

namespace gflex::kernels {

namespace detail {

namespace {

/// One device's budget. Zero-initialised (static storage): no limit, nothing in use.
struct device_budget {
  std::atomic<uint64_t> limit{0};
  std::atomic<uint64_t> in_use{0};
};

std::array<device_budget, k_max_accounted_devices> budgets;

bool accounted(int ordinal) noexcept {
  return ordinal >= 0 && ordinal < k_max_accounted_devices;
}

}  // namespace

void reserve_device_memory(int ordinal, uint64_t bytes, const std::string& what) {
  if (!accounted(ordinal) || bytes == 0) return;
  device_budget& budget = budgets[static_cast<size_t>(ordinal)];
  const uint64_t limit = budget.limit.load(std::memory_order_relaxed);
  uint64_t current = budget.in_use.load(std::memory_order_relaxed);
  do {
    if (limit != 0 && (bytes > limit || current > limit - bytes)) {
      throw compute_error(
          gflex::error(errc::device_error, what + ": out of device memory (--gpu-memory-limit " +
                                               std::to_string(limit) +
                                               " bytes on cuda:" + std::to_string(ordinal) + ", " +
                                               std::to_string(current) + " in use)"));
    }
  } while (
      !budget.in_use.compare_exchange_weak(current, current + bytes, std::memory_order_relaxed));
}

void release_device_memory(int ordinal, uint64_t bytes) noexcept {
  if (!accounted(ordinal) || bytes == 0) return;
  budgets[static_cast<size_t>(ordinal)].in_use.fetch_sub(bytes, std::memory_order_relaxed);
}

uint64_t device_memory_limit(int ordinal) noexcept {
  return accounted(ordinal) ? budgets[static_cast<size_t>(ordinal)].limit.load() : 0;
}

}  // namespace detail

void set_cuda_memory_limit(int ordinal, uint64_t bytes) {
  if (ordinal >= 0 && ordinal < detail::k_max_accounted_devices)
    detail::budgets[static_cast<size_t>(ordinal)].limit.store(bytes);
}

uint64_t cuda_memory_in_use(int ordinal) {
  if (ordinal < 0 || ordinal >= detail::k_max_accounted_devices) return 0;
  return detail::budgets[static_cast<size_t>(ordinal)].in_use.load();
}

std::vector<int> cuda_architectures() {
#ifdef __CUDA_ARCH_LIST__
  // nvcc (11.5 and later) names what it compiles this file for, as every .cu file of the
  // build (CMAKE_CUDA_ARCHITECTURES): 800 for sm_80.
  std::vector<int> architectures{__CUDA_ARCH_LIST__};
  for (int& a : architectures) a /= 10;
  std::sort(architectures.begin(), architectures.end());
  architectures.erase(std::unique(architectures.begin(), architectures.end()), architectures.end());
  return architectures;
#else
  return {};  // not known: no device is left out for it
#endif
}

std::vector<gpu_info> cuda_driver_devices(std::string* why_none) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    // No driver, an old driver, no device: all mean "no CUDA here" (cuda_device_count agrees).
    // Clear the error so that it cannot resurface from a later cudaGetLastError.
    (void)cudaGetLastError();
    if (why_none != nullptr)
      *why_none = std::string("no usable CUDA driver or device: ") + cudaGetErrorString(status);
    return {};
  }
  std::vector<gpu_info> devices;
  std::string last_failure;
  for (int ordinal = 0; ordinal < count; ++ordinal) {
    cudaDeviceProp prop{};
    const cudaError_t props = cudaGetDeviceProperties(&prop, ordinal);
    if (props != cudaSuccess) {
      // A device the driver lists but cannot describe is not usable; the others still are.
      (void)cudaGetLastError();
      last_failure = "cuda:" + std::to_string(ordinal) + ": " + cudaGetErrorString(props);
      continue;
    }
    gpu_info info;
    info.ordinal = ordinal;
    info.name = prop.name;
    info.cc_major = prop.major;
    info.cc_minor = prop.minor;
    info.memory_bytes = prop.totalGlobalMem;
    info.sm_count = prop.multiProcessorCount;
    char bus[32];
    std::snprintf(bus, sizeof bus, "%04x:%02x:%02x.0", static_cast<unsigned>(prop.pciDomainID),
                  static_cast<unsigned>(prop.pciBusID), static_cast<unsigned>(prop.pciDeviceID));
    info.pci_bus_id = bus;
    devices.push_back(std::move(info));
  }
  if (devices.empty() && why_none != nullptr) {
    *why_none = last_failure.empty() ? "the CUDA driver reports no device"
                                     : "no usable CUDA device (" + last_failure + ")";
  }
  return devices;
}

namespace {

/// Fills x with values in [-1, 1) from a hash of the index: GEMM power (and so clocks) depend
/// on the data, and zeros would flatter the device.
__global__ void calibration_to_bf16_kernel(const float* x, __nv_bfloat16* y, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16_rn(x[i]);
}

__global__ void calibration_fill_kernel(float* x, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u;
    h ^= h >> 16;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = static_cast<float>(h >> 8) * (1.0f / 8388608.0f) - 1.0f;
  }
}

/// Everything one calibration holds, released in the destructor whatever failed. Never throws
/// from the destructor; the device it was made on is made current first.
class calibration_resources {
 public:
  explicit calibration_resources(int ordinal) : ordinal_(ordinal) {}
  ~calibration_resources() {
    // Work may still be queued if a check threw midway: wait for it before freeing.
    if (stream != nullptr) (void)cudaStreamSynchronize(stream);
    if (blas != nullptr) (void)cublasDestroy(blas);
    if (start != nullptr) (void)cudaEventDestroy(start);
    if (stop != nullptr) (void)cudaEventDestroy(stop);
    if (device_buffer != nullptr) (void)cudaFree(device_buffer);
    if (host_buffer != nullptr) (void)cudaFreeHost(host_buffer);
    if (stream != nullptr) (void)cudaStreamDestroy(stream);
    (void)cudaGetLastError();
    if (previous_ >= 0 && previous_ != ordinal_) (void)cudaSetDevice(previous_);
    (void)cudaGetLastError();
  }
  calibration_resources(const calibration_resources&) = delete;
  calibration_resources& operator=(const calibration_resources&) = delete;

  /// Makes the device current, remembering the caller's device to restore it after.
  void activate() {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      (void)cudaGetLastError();
      previous_ = -1;
    }
    GFLEX_CUDA_CHECK(cudaSetDevice(ordinal_));
  }

  /// Makes the device current and creates what a measurement uses: a stream, two events, a
  /// 256 MiB device buffer (and, where `pinned_host` asks, as much pinned host memory), the
  /// buffer's first two 4096^3 FP32 operands filled, and a cuBLAS handle on the stream at
  /// exact FP32, as the backend's (each GEMM's compute type grants anything faster). The
  /// buffer is not counted against --gpu-memory-limit: it is gone before a backend allocates.
  void open(bool pinned_host);

  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  void* device_buffer = nullptr;
  void* host_buffer = nullptr;

 private:
  int ordinal_;
  int previous_ = -1;
};

/// Seconds between `start` and `stop`, after waiting for `stop`.
double elapsed_seconds(cudaEvent_t start, cudaEvent_t stop) {
  GFLEX_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0.0f;
  GFLEX_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  return static_cast<double>(ms) * 1e-3;
}

/// Runs `op` once untimed (first-use costs: cuBLAS kernel selection, page mapping), once timed
/// to size the batch, then as many times as fit into `budget` seconds (at least once, at most
/// 1000), timed together. Returns the seconds per run.
template <class Op>
double time_repeated(calibration_resources& r, double budget, Op op) {
  op();
  GFLEX_CUDA_CHECK(cudaEventRecord(r.start, r.stream));
  op();
  GFLEX_CUDA_CHECK(cudaEventRecord(r.stop, r.stream));
  const double once = std::max(elapsed_seconds(r.start, r.stop), 1e-6);
  const int reps = static_cast<int>(std::clamp(budget / once, 1.0, 1000.0));
  GFLEX_CUDA_CHECK(cudaEventRecord(r.start, r.stream));
  for (int i = 0; i < reps; ++i) op();
  GFLEX_CUDA_CHECK(cudaEventRecord(r.stop, r.stream));
  return elapsed_seconds(r.start, r.stop) / reps;
}

/// The GEMM extent and the copy size of a calibration.
constexpr int k_gemm_n = 4096;
constexpr size_t k_copy_bytes = size_t{256} << 20;

void calibration_resources::open(bool pinned_host) {
  activate();
  GFLEX_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  GFLEX_CUDA_CHECK(cudaEventCreate(&start));
  GFLEX_CUDA_CHECK(cudaEventCreate(&stop));
  GFLEX_CUDA_CHECK(cudaMalloc(&device_buffer, k_copy_bytes));
  if (pinned_host) GFLEX_CUDA_CHECK(cudaMallocHost(&host_buffer, k_copy_bytes));
  calibration_fill_kernel<<<1024, 256, 0, stream>>>(static_cast<float*>(device_buffer),
                                                    2 * int64_t{k_gemm_n} * k_gemm_n);
  GFLEX_CUDA_CHECK_LAUNCH();
  GFLEX_CUBLAS_CHECK(cublasCreate(&blas));
  GFLEX_CUBLAS_CHECK(cublasSetStream(blas, stream));
  GFLEX_CUBLAS_CHECK(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH));
}

/// errc::no_device naming `ordinal` where it is not a usable device; nothing where it is.
std::optional<gflex::error> no_such_device(int ordinal) {
  const int count = cuda_device_count();
  if (ordinal >= 0 && ordinal < count) return std::nullopt;
  return gflex::error(errc::no_device, "no CUDA device cuda:" + std::to_string(ordinal) + " (" +
                                           std::to_string(count) + " usable CUDA device(s) found)");
}

}  // namespace

expected<device_calibration> calibrate_cuda_device(int ordinal, double seconds) {
  if (auto missing = no_such_device(ordinal)) return *missing;
  if (!(seconds > 0.0)) seconds = 0.5;
  try {
    calibration_resources r(ordinal);
    // One 256 MiB device buffer serves both measurements: the three 64 MiB GEMM operands fit
    // in it, so calibration needs no more device memory than the copy test alone. FP32 as the
    // backend computes by default: no TF32, so the figure is comparable across devices and
    // with what a default job gets.
    r.open(true);
    const int64_t matrix = int64_t{k_gemm_n} * k_gemm_n;
    auto* a = static_cast<float*>(r.device_buffer);
    float* b = a + matrix;
    float* c = b + matrix;

    device_calibration result;
    // Half the time for the GEMM, a quarter for each copy direction.
    const double gemm_seconds = time_repeated(r, seconds / 2, [&] {
      const float alpha = 1.0f;
      const float beta = 0.0f;
      GFLEX_CUBLAS_CHECK(cublasSgemm(r.blas, CUBLAS_OP_N, CUBLAS_OP_N, k_gemm_n, k_gemm_n, k_gemm_n,
                                     &alpha, a, k_gemm_n, b, k_gemm_n, &beta, c, k_gemm_n));
    });
    const double flops = 2.0 * k_gemm_n * static_cast<double>(k_gemm_n) * k_gemm_n;
    result.gemm_tflops = flops / gemm_seconds * 1e-12;

    const double h2d_seconds = time_repeated(r, seconds / 4, [&] {
      GFLEX_CUDA_CHECK(cudaMemcpyAsync(r.device_buffer, r.host_buffer, k_copy_bytes,
                                       cudaMemcpyHostToDevice, r.stream));
    });
    result.h2d_gbps = static_cast<double>(k_copy_bytes) / h2d_seconds * 1e-9;
    const double d2h_seconds = time_repeated(r, seconds / 4, [&] {
      GFLEX_CUDA_CHECK(cudaMemcpyAsync(r.host_buffer, r.device_buffer, k_copy_bytes,
                                       cudaMemcpyDeviceToHost, r.stream));
    });
    result.d2h_gbps = static_cast<double>(k_copy_bytes) / d2h_seconds * 1e-9;
    GFLEX_CUDA_CHECK(cudaStreamSynchronize(r.stream));
    return result;
  } catch (const compute_error& e) {
    return e.err();
  }
}

expected<gemm_rates> measure_cuda_gemm_rates(int ordinal, double seconds) {
  if (auto missing = no_such_device(ordinal)) return *missing;
  if (!(seconds > 0.0)) seconds = 1.0;
  try {
    calibration_resources r(ordinal);
    // The 256 MiB: FP32 a, b and c (64 MiB each), then a and b in bf16 (32 MiB each); the
    // bf16 result takes c's place once the FP32 products are timed.
    r.open(false);
    const int64_t matrix = int64_t{k_gemm_n} * k_gemm_n;
    auto* a = static_cast<float*>(r.device_buffer);
    float* b = a + matrix;
    float* c = b + matrix;
    auto* a16 = reinterpret_cast<__nv_bfloat16*>(c + matrix);
    __nv_bfloat16* b16 = a16 + matrix;
    auto* c16 = reinterpret_cast<__nv_bfloat16*>(c);
    calibration_to_bf16_kernel<<<1024, 256, 0, r.stream>>>(a, a16, 2 * matrix);
    GFLEX_CUDA_CHECK_LAUNCH();

    const float alpha = 1.0f;
    const float beta = 0.0f;
    const double flops = 2.0 * k_gemm_n * static_cast<double>(k_gemm_n) * k_gemm_n;
    auto rate = [&](cudaDataType_t operands, const void* x, const void* y, cudaDataType_t result,
                    void* z, cublasComputeType_t compute) {
      const double s = time_repeated(r, seconds / 4, [&] {
        GFLEX_CUBLAS_CHECK(cublasGemmEx(r.blas, CUBLAS_OP_N, CUBLAS_OP_N, k_gemm_n, k_gemm_n,
                                        k_gemm_n, &alpha, x, operands, k_gemm_n, y, operands,
                                        k_gemm_n, &beta, z, result, k_gemm_n, compute,
                                        CUBLAS_GEMM_DEFAULT));
      });
      return flops / s * 1e-12;
    };
    gemm_rates rates;
    rates.fp32 = rate(CUDA_R_32F, a, b, CUDA_R_32F, c, CUBLAS_COMPUTE_32F);
    rates.tf32 = rate(CUDA_R_32F, a, b, CUDA_R_32F, c, CUBLAS_COMPUTE_32F_FAST_TF32);
    rates.bf16_from_fp32 = rate(CUDA_R_32F, a, b, CUDA_R_32F, c, CUBLAS_COMPUTE_32F_FAST_16BF);
    rates.bf16 = rate(CUDA_R_16BF, a16, b16, CUDA_R_16BF, c16, CUBLAS_COMPUTE_32F);
    GFLEX_CUDA_CHECK(cudaStreamSynchronize(r.stream));
    return rates;
  } catch (const compute_error& e) {
    return e.err();
  }
}

}  // namespace gflex::kernels
