#pragma once
/// @file
/// Element types of tensors.

#include <cstddef>
#include <cstdint>

#include "gflex/runtime/enum_names.hpp"

namespace gflex {

/// Element type of a tensor. Values match schemas/tensor.capnp's DType.
enum class dtype : uint8_t { f32 = 0, i32 = 1, u8 = 2, i8 = 3 };

template <>
std::span<const enum_name<dtype>> enum_names<dtype>() noexcept;

/// Size of one element in bytes.
constexpr size_t size_of(dtype t) noexcept {
  switch (t) {
    case dtype::f32:
    case dtype::i32:
      return 4;
    case dtype::u8:
    case dtype::i8:
      return 1;
  }
  return 0;
}

/// A short name ("f32").
const char* to_string(dtype t) noexcept;

/// Maps a C++ element type to its dtype.
template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr dtype value = dtype::f32;
};
template <>
struct dtype_of<int32_t> {
  static constexpr dtype value = dtype::i32;
};
template <>
struct dtype_of<uint8_t> {
  static constexpr dtype value = dtype::u8;
};
template <>
struct dtype_of<int8_t> {
  static constexpr dtype value = dtype::i8;
};

}  // namespace gflex
