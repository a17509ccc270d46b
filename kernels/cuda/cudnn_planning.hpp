#pragma once
/// @file
/// How the CUDA backend plans a convolution with cuDNN: the descriptors of one geometry (a
/// plan, built once and reused by every call), the key plans are cached on, and the choice of
/// each pass's algorithm under the backend's precision and workspace cap. Private to the CUDA
/// backend; describe_geometry and math_allowed are defined in cudnn_planning.cu.

#include <cudnn.h>

#include <algorithm>
#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cuda_check.hpp"
#include "gflex/kernels/backend.hpp"

namespace gflex::kernels::detail {

/// The largest cuDNN workspace a backend holds. FFT and Winograd algorithms can ask for
/// gigabytes for a few percent of speed; past this the next-ranked algorithm is used.
inline constexpr size_t k_max_workspace = size_t{512} << 20;

/// Owns one cuDNN descriptor; `Destroy` is the matching cudnnDestroy*Descriptor. Descriptors
/// are host objects: destroying one needs no device and no stream.
template <class Handle, cudnnStatus_t (*Destroy)(Handle)>
class cudnn_descriptor {
 public:
  cudnn_descriptor() = default;
  ~cudnn_descriptor() {
    if (handle_ != nullptr) (void)Destroy(handle_);
  }
  cudnn_descriptor(const cudnn_descriptor&) = delete;
  cudnn_descriptor& operator=(const cudnn_descriptor&) = delete;

  Handle get() const noexcept { return handle_; }
  Handle* out() noexcept { return &handle_; }

 private:
  Handle handle_ = nullptr;
};

using tensor_descriptor = cudnn_descriptor<cudnnTensorDescriptor_t, cudnnDestroyTensorDescriptor>;
using filter_descriptor = cudnn_descriptor<cudnnFilterDescriptor_t, cudnnDestroyFilterDescriptor>;
using convolution_descriptor =
    cudnn_descriptor<cudnnConvolutionDescriptor_t, cudnnDestroyConvolutionDescriptor>;

/// The three passes of a convolution, each with its own algorithm.
enum class conv_pass : int { forward = 0, backward_data = 1, backward_filter = 2 };

constexpr const char* pass_name(conv_pass pass) {
  switch (pass) {
    case conv_pass::forward:
      return "forward";
    case conv_pass::backward_data:
      return "backward-data";
    case conv_pass::backward_filter:
      return "backward-filter";
  }
  return "?";
}

/// What the plan cache is keyed on: the geometry and the precision (which sets the math types
/// the algorithm may use).
struct conv_key {
  std::array<int64_t, 10> extents{};
  math_precision precision = math_precision::fp32;
  auto operator<=>(const conv_key&) const = default;
};

/// The algorithm chosen for one pass, with the math type it runs under and the workspace it
/// needs.
struct conv_choice {
  bool chosen = false;
  int algo = 0;
  cudnnMathType_t math = CUDNN_FMA_MATH;
  size_t workspace = 0;
};

/// Everything cuDNN needs for one geometry: built once, then reused by every call (a training
/// run has a handful of geometries and calls each thousands of times). Each pass has its own
/// convolution descriptor because each carries the math type of its own algorithm.
struct conv_plan {
  conv_key key;
  tensor_descriptor x;
  tensor_descriptor y;
  filter_descriptor w;
  std::array<convolution_descriptor, 3> conv;
  std::array<conv_choice, 3> choice;
};

/// The algorithm a backend of this process chose for `pass` of `key` on device `ordinal`, if
/// one has: every backend on a device (a node's workers, a verifier's re-run beside them)
/// then runs a geometry with the same algorithm, hence the same bits, where timing each
/// backend's own candidates could rank near-equal ones differently.
std::optional<conv_choice> shared_choice(int ordinal, const conv_key& key, conv_pass pass);
/// Offers `choice` as the device's choice for `pass` of `key`; returns the device's choice
/// (`choice`, or one another backend offered first).
conv_choice share_choice(int ordinal, const conv_key& key, conv_pass pass,
                         const conv_choice& choice);

/// "batch 128, 32x32x3 -> 16, kernel 3x3, pad 1x1, stride 1": a geometry for error messages.
std::string describe_geometry(const conv2d_geometry& g);

/// Whether an algorithm that cuDNN's heuristics rate with math type `math` may serve a
/// backend at precision `p`. FP32 takes only algorithms without tensor cores (FMA; DEFAULT
/// rows run under the descriptor's FMA_MATH, which forbids TF32). TF32 and BF16 also take
/// tensor-core algorithms (TF32 for FP32 data), but never ALLOW_CONVERSION: the legacy API's
/// down-conversion is to FP16, whose range (65504) gradients can overflow.
bool math_allowed(cudnnMathType_t math, math_precision p);

/// Picks the first algorithm of a ranking (best first) that succeeds, is allowed at precision
/// `p`, needs at most `cap` bytes of workspace, and (in the first round) is deterministic, the
/// deterministic option a verifier's re-run needs; the second round drops determinism rather
/// than fail. The ranking is measured where cuDNN can measure it: `measure(requested,
/// &returned, perf, bytes)` wraps the pass's cudnnFind*AlgorithmEx, which runs each algorithm
/// that fits `bytes` of workspace on the layer's own buffers and sorts them by time (once per
/// geometry: plans are cached). `bytes` is the largest workspace an allowed candidate of
/// cuDNN's heuristic ranking asks for (`heuristic(requested, &returned, perf)`, the pass's
/// cudnnGet*Algorithm_v7), and that ranking serves where the measurement fails. Leaves `conv`
/// at the chosen algorithm's math type. `workspace(algo, &bytes)` wraps the pass's
/// cudnnGet*WorkspaceSize.
template <class Perf, class Heuristic, class Measure, class Workspace>
conv_choice pick_algorithm(cudnnConvolutionDescriptor_t conv, math_precision p, size_t cap,
                           int max_count, Heuristic heuristic, Measure measure, Workspace workspace,
                           conv_pass pass, const conv2d_geometry& g) {
  // FP32 must never run tensor-core math: FMA_MATH on the descriptor both steers the
  // heuristics and forbids TF32 at run time. Otherwise DEFAULT_MATH permits TF32.
  const cudnnMathType_t preferred = p == math_precision::fp32 ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH;
  GFLEX_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, preferred));
  std::vector<Perf> perf(static_cast<size_t>(std::max(max_count, 1)));
  int returned = 0;
  GFLEX_CUDNN_CHECK(heuristic(static_cast<int>(perf.size()), &returned, perf.data()));
  size_t room = 0;
  for (int i = 0; i < returned; ++i) {
    const Perf& candidate = perf[static_cast<size_t>(i)];
    if (candidate.status == CUDNN_STATUS_SUCCESS && math_allowed(candidate.mathType, p) &&
        candidate.memory <= cap)
      room = std::max(room, candidate.memory);
  }
  std::vector<Perf> measured(perf.size());
  int timed = 0;
  if (measure(static_cast<int>(measured.size()), &timed, measured.data(), room) ==
          CUDNN_STATUS_SUCCESS &&
      timed > 0) {
    perf = std::move(measured);
    returned = timed;
  } else {
    // A failed measurement is tolerated (the heuristics' ranking stays); an error it left
    // with the runtime must not be reported as the next kernel's launch failure.
    (void)cudaGetLastError();
  }
  // The measurement ran under the preferred math type too; the loop sets each candidate's.
  GFLEX_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, preferred));
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < returned; ++i) {
      const Perf& candidate = perf[static_cast<size_t>(i)];
      if (candidate.status != CUDNN_STATUS_SUCCESS) continue;
      if (round == 0 && candidate.determinism != CUDNN_DETERMINISTIC) continue;
      if (!math_allowed(candidate.mathType, p) || candidate.memory > cap) continue;
      const cudnnMathType_t math = p == math_precision::fp32 ? CUDNN_FMA_MATH : candidate.mathType;
      if (cudnnSetConvolutionMathType(conv, math) != CUDNN_STATUS_SUCCESS) continue;
      // The heuristics' memory figure is an estimate; the exact size under the math type we
      // run with decides, and a failure here means the algorithm cannot run this way.
      size_t bytes = 0;
      if (workspace(static_cast<int>(candidate.algo), &bytes) != CUDNN_STATUS_SUCCESS ||
          bytes > cap)
        continue;
      return conv_choice{true, static_cast<int>(candidate.algo), math, bytes};
    }
  }
  // Said as what it is, a shortage of device memory (the cap is a share of what is free
  // now): the node's worker counts other device errors in a row as a broken device, and a
  // volunteer's own use of the GPU restarted the node again and again.
  throw compute_error(gflex::error(
      errc::device_error, std::string("out of device memory for a convolution workspace: no "
                                      "cuDNN ") +
                              pass_name(pass) + " convolution algorithm for " +
                              describe_geometry(g) + " at " + to_string(p) + " within " +
                              std::to_string(cap) + " bytes (" + std::to_string(returned) +
                              " candidates)"));
}

}  // namespace gflex::kernels::detail
