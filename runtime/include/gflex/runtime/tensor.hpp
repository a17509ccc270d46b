#pragma once
/// @file
/// gflex::tensor: a shaped, typed block of memory on the host or on a device.

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gflex/runtime/check.hpp"
#include "gflex/runtime/dtype.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex {

/// Where a tensor's bytes live.
enum class device_kind : uint8_t { host = 0, cuda = 1 };

/// A device: its kind and, for GPUs, its ordinal.
struct device {
  device_kind kind = device_kind::host;
  int index = 0;
  friend bool operator==(const device&, const device&) = default;
};

/// Row-major extents, outermost first.
using shape_t = std::vector<int64_t>;

/// Number of elements of a shape, or an error for negative extents or overflow past
/// `max_elements`.
expected<int64_t> checked_numel(const shape_t& shape, int64_t max_elements = int64_t{1} << 40);

/// "[128, 784]".
std::string to_string(const shape_t& shape);

/// A shaped, typed block of memory. Copies share the memory (like a shared_ptr); `clone`
/// copies it. Host memory is 64-byte aligned so vector loops and BLAS get aligned rows.
/// Device memory is allocated by a compute backend, which hands it over with `adopt`.
class tensor {
 public:
  /// An empty tensor (no shape, no memory).
  tensor() = default;

  /// Allocates uninitialised host memory. The shape must be valid (see checked_numel).
  static tensor empty(shape_t shape, dtype type);
  /// Allocates zeroed host memory.
  static tensor zeros(shape_t shape, dtype type);
  /// Takes ownership of memory allocated elsewhere (a device allocation); `memory`'s deleter
  /// frees it. The memory must hold at least numel * size_of(type) bytes.
  static tensor adopt(shape_t shape, dtype type, device where, std::shared_ptr<void> memory);

  const shape_t& shape() const noexcept { return shape_; }
  size_t rank() const noexcept { return shape_.size(); }
  int64_t dim(size_t i) const { return shape_.at(i); }
  int64_t numel() const noexcept { return numel_; }
  size_t nbytes() const noexcept { return static_cast<size_t>(numel_) * size_of(type_); }
  dtype type() const noexcept { return type_; }
  device where() const noexcept { return where_; }
  bool on_host() const noexcept { return where_.kind == device_kind::host; }
  bool defined() const noexcept { return memory_ != nullptr || !shape_.empty(); }

  void* raw() noexcept { return memory_.get(); }
  const void* raw() const noexcept { return memory_.get(); }

  /// Typed pointer; the element type must match the tensor's dtype.
  template <class T>
  T* data() {
    GFLEX_CHECK(dtype_of<T>::value == type_, "tensor element type mismatch");
    return static_cast<T*>(memory_.get());
  }
  template <class T>
  const T* data() const {
    GFLEX_CHECK(dtype_of<T>::value == type_, "tensor element type mismatch");
    return static_cast<const T*>(memory_.get());
  }

  /// The elements as a span; host tensors only.
  template <class T>
  std::span<T> span() {
    GFLEX_CHECK(on_host(), "span() of a device tensor");
    return {data<T>(), static_cast<size_t>(numel_)};
  }
  template <class T>
  std::span<const T> span() const {
    GFLEX_CHECK(on_host(), "span() of a device tensor");
    return {data<T>(), static_cast<size_t>(numel_)};
  }

  /// A deep copy on the host; host tensors only.
  tensor clone() const;

  /// The same memory seen with another shape of equal element count.
  expected<tensor> reshape(shape_t shape) const;

 private:
  tensor(shape_t shape, int64_t numel, dtype type, device where, std::shared_ptr<void> memory)
      : shape_(std::move(shape)),
        numel_(numel),
        type_(type),
        where_(where),
        memory_(std::move(memory)) {}

  shape_t shape_;
  int64_t numel_ = 0;
  dtype type_ = dtype::f32;
  device where_;
  std::shared_ptr<void> memory_;
};

/// Index of the first non-finite element of a host f32 tensor, or -1 if all are finite.
int64_t first_non_finite(std::span<const float> values) noexcept;

}  // namespace gflex
