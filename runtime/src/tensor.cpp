#include "gflex/runtime/tensor.hpp"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

namespace gflex {

expected<int64_t> checked_numel(const shape_t& shape, int64_t max_elements) {
  int64_t n = 1;
  for (int64_t extent : shape) {
    if (extent < 0)
      return error(errc::invalid_argument, "negative extent in shape " + to_string(shape));
    if (extent != 0 && n > max_elements / extent)
      return error(errc::invalid_argument, "shape " + to_string(shape) + " has more than " +
                                               std::to_string(max_elements) + " elements");
    n *= extent;
  }
  return n;
}

std::string to_string(const shape_t& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

namespace {

std::shared_ptr<void> allocate_host(size_t bytes) {
  // 64-byte alignment: a cache line, and what AVX-512 loads want.
  size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (p == nullptr) throw std::bad_alloc();
  return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
}

}  // namespace

tensor tensor::empty(shape_t shape, dtype type) {
  auto n = checked_numel(shape);
  GFLEX_CHECK(n.has_value(), "tensor::empty with an invalid shape");
  auto memory = allocate_host(static_cast<size_t>(*n) * size_of(type));
  return tensor(std::move(shape), *n, type, device{}, std::move(memory));
}

tensor tensor::zeros(shape_t shape, dtype type) {
  tensor t = empty(std::move(shape), type);
  std::memset(t.raw(), 0, t.nbytes());
  return t;
}

tensor tensor::adopt(shape_t shape, dtype type, device where, std::shared_ptr<void> memory) {
  auto n = checked_numel(shape);
  GFLEX_CHECK(n.has_value(), "tensor::adopt with an invalid shape");
  return tensor(std::move(shape), *n, type, where, std::move(memory));
}

tensor tensor::clone() const {
  GFLEX_CHECK(on_host(), "clone() of a device tensor");
  tensor copy = empty(shape_, type_);
  if (nbytes() > 0) std::memcpy(copy.raw(), raw(), nbytes());
  return copy;
}

expected<tensor> tensor::reshape(shape_t shape) const {
  auto n = checked_numel(shape);
  if (!n) return n.error();
  if (*n != numel_)
    return error(errc::shape_mismatch,
                 "cannot reshape " + to_string(shape_) + " to " + to_string(shape));
  return tensor(std::move(shape), numel_, type_, where_, memory_);
}

int64_t first_non_finite(std::span<const float> values) noexcept {
  for (size_t i = 0; i < values.size(); ++i)
    if (!std::isfinite(values[i])) return static_cast<int64_t>(i);
  return -1;
}

}  // namespace gflex
