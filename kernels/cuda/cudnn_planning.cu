/// @file
/// The plain (non-template) functions of the cuDNN convolution planning declared in
/// cudnn_planning.hpp, defined once here rather than in every file that includes the header.

#include <cudnn.h>

#include <string>

#include "cudnn_planning.hpp"

namespace gflex::kernels::detail {

std::string describe_geometry(const conv2d_geometry& g) {
  return "batch " + std::to_string(g.batch) + ", " + std::to_string(g.height) + "x" +
         std::to_string(g.width) + "x" + std::to_string(g.in_channels) + " -> " +
         std::to_string(g.out_channels) + ", kernel " + std::to_string(g.kernel_h) + "x" +
         std::to_string(g.kernel_w) + ", pad " + std::to_string(g.pad_h) + "x" +
         std::to_string(g.pad_w) + ", stride " + std::to_string(g.stride);
}

bool math_allowed(cudnnMathType_t math, math_precision p) {
  if (math == CUDNN_FMA_MATH || math == CUDNN_DEFAULT_MATH) return true;
  return p != math_precision::fp32 && math == CUDNN_TENSOR_OP_MATH;
}

}  // namespace gflex::kernels::detail
