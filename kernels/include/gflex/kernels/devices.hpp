#pragma once
/// @file
/// What compute a machine has: its CUDA devices, what each achieves (measured at node start),
/// and the limits a node's owner sets on them. A node advertises this to the core; the
/// market prices work by it.

#include <cstdint>
#include <string>
#include <vector>

#include "gflex/runtime/error.hpp"

namespace gflex::kernels {

/// One CUDA device as the driver describes it.
struct gpu_info {
  int ordinal = 0;
  std::string name;  ///< "NVIDIA H100 80GB HBM3"
  int cc_major = 0;  ///< Compute capability.
  int cc_minor = 0;
  uint64_t memory_bytes = 0;  ///< Total device memory.
  int sm_count = 0;           ///< Streaming multiprocessors.
  std::string pci_bus_id;     ///< "0000:3b:00.0": how NVML finds the same device.
};

/// The usable CUDA devices, in ordinal order: those of cuda_driver_devices() that this
/// build's kernels run on (runnable_cuda_devices(); each device left out is logged once, with
/// the reason, as a warning). Empty where this build has no CUDA backend or there is no
/// driver or usable device. `why_none`, when given, receives the reason for an empty list
/// ("no CUDA driver: ...", "built without CUDA", "cuda:0 Tesla T4 (compute capability 7.5)
/// is left out: ...").
std::vector<gpu_info> cuda_devices(std::string* why_none = nullptr);

/// Every CUDA device the driver lists and describes, in ordinal order, whether or not this
/// build's kernels run on it; `why_none` as cuda_devices().
std::vector<gpu_info> cuda_driver_devices(std::string* why_none = nullptr);

/// The CUDA architectures this build's kernels are compiled for (80 for sm_80), ascending;
/// empty where this build has no CUDA backend or its compiler does not say.
std::vector<int> cuda_architectures();

/// The devices of `devices` that kernels compiled for `architectures` (as
/// cuda_architectures()) run on: those whose compute capability is at least the lowest
/// architecture. Below it there is no kernel image for the device: its first kernel launch
/// fails (cudaErrorNoKernelImageForDevice), where a node would have served on the CPU. A
/// newer device runs the compiled PTX (CMake embeds it for each architecture unless told
/// `-real`). Each device left out adds a line to `left_out`, when given, naming it and why.
/// An empty `architectures` (not known) leaves out none.
std::vector<gpu_info> runnable_cuda_devices(std::vector<gpu_info> devices,
                                            const std::vector<int>& architectures,
                                            std::vector<std::string>* left_out = nullptr);

/// What one device achieved in a short measurement.
struct device_calibration {
  double gemm_tflops = 0.0;  ///< FP32 GEMM (cuBLAS, 4096^3), tera-FLOP/s.
  double h2d_gbps = 0.0;     ///< Host-to-device copy from pinned memory, GB/s.
  double d2h_gbps = 0.0;     ///< Device-to-host copy into pinned memory, GB/s.
};

/// Measures device `ordinal` for roughly `seconds` in all. errc::no_device where there is no
/// such device; errc::device_error if a CUDA call fails.
expected<device_calibration> calibrate_cuda_device(int ordinal, double seconds = 0.5);

/// A device's GEMM rate at each math precision a job may ask for, tera-FLOP/s on 4096^3
/// products: the ceilings a step's GEMM-bound share is read against.
struct gemm_rates {
  double fp32 = 0.0;  ///< FP32 operands, exact FP32 products (`precision = "fp32"`).
  double tf32 = 0.0;  ///< FP32 operands, products in TF32 (`precision = "tf32"`).
  /// FP32 operands rounded to bf16 by cuBLAS as it multiplies: what a `precision = "bf16"`
  /// job's GEMMs run as.
  double bf16_from_fp32 = 0.0;
  /// bf16 operands and result, FP32 accumulation: the card's bf16 rate as a framework under
  /// bf16 autocast gets it. Against bf16_from_fp32: what keeping operands in bf16 would gain.
  double bf16 = 0.0;
};

/// Measures gemm_rates on device `ordinal` for roughly `seconds` in all (a quarter each).
/// errc::no_device where there is no such device; errc::device_error if a CUDA or cuBLAS call
/// fails (a card without bf16 tensor cores, for one).
expected<gemm_rates> measure_cuda_gemm_rates(int ordinal, double seconds = 1.0);

/// Caps the device memory that every backend of this process together may allocate on
/// device `ordinal` (0: no cap beyond the device's own). An allocation past the cap fails as
/// an out-of-memory compute_error naming the cap; nothing else changes. Call before the
/// first backend on the device is made.
void set_cuda_memory_limit(int ordinal, uint64_t bytes);

/// Bytes the backends of this process hold on device `ordinal` now.
uint64_t cuda_memory_in_use(int ordinal);

/// Caps the host memory that every CPU backend of this process together may allocate (a
/// model's parameters, optimiser state, activations and gradients; 0: no cap). An allocation
/// past the cap fails as an out-of-memory compute_error naming the cap, as on a GPU, so that
/// a job too large for the machine fails one assignment instead of the whole node.
void set_host_memory_limit(uint64_t bytes);

/// The cap set with set_host_memory_limit (0: none).
uint64_t host_memory_limit();

/// Bytes the CPU backends of this process hold now.
uint64_t host_memory_in_use();

/// The memory the kernel reports as available to new allocations (MemAvailable), in bytes;
/// 0 where it cannot tell.
uint64_t available_host_memory();

/// A device's state now, for a node's metrics.
struct gpu_sample {
  int ordinal = 0;
  uint64_t memory_total = 0;  ///< Bytes.
  uint64_t memory_used = 0;   ///< Bytes used on the device by every process (NVML).
  /// Bytes this process's backends have allocated and not freed (cuda_memory_in_use: what
  /// --gpu-memory-limit counts), not the CUDA context, the libraries' own memory or what the
  /// pool keeps: the process holds more.
  uint64_t memory_ours = 0;
  double utilization = -1.0;      ///< Share of the last sample period a kernel ran, [0, 1].
  double memory_activity = -1.0;  ///< Share of it device memory was read or written, [0, 1].
};

/// Samples devices `ordinals` through NVML, the driver's management library (loaded at run
/// time: it ships with the driver, not the toolkit). errc::no_device, saying why, where this
/// build has no CUDA, there is no such device, or NVML is missing or fails; the samples then
/// are not made up.
expected<std::vector<gpu_sample>> sample_gpus(const std::vector<int>& ordinals);

/// Parses a --gpus list ("0,2"): distinct CUDA device numbers, each one of `usable` (the
/// ordinals of cuda_devices(), which leaves out a device the driver cannot describe or this
/// build's kernels do not run on, so they need not run 0..n-1); an empty string means every
/// usable device. Errors name the bad entry, the devices there are and, in a CUDA build, the
/// compute capabilities its kernels run on, and are prefixed with `flag`, the option the
/// list came from ("--gpus", or "--backend cuda:" for --backend cuda:N).
expected<std::vector<int>> parse_gpu_list(const std::string& text, const std::vector<int>& usable,
                                          const std::string& flag = "--gpus");

/// Parses a byte size with an optional binary suffix ("512M", "6G", "1073741824"); "0" means
/// no limit.
expected<uint64_t> parse_byte_size(const std::string& text);

}  // namespace gflex::kernels
