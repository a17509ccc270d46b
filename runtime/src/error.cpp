#include "gflex/runtime/error.hpp"

#include <array>
#include <cstdio>
#include <cstdlib>

#include "gflex/runtime/check.hpp"
#include "gflex/runtime/dtype.hpp"

namespace gflex {

namespace {

constexpr std::array<enum_name<errc>, 16> k_errc_names{{
    {errc::none, "none"},
    {errc::invalid_argument, "invalid_argument"},
    {errc::malformed_message, "malformed_message"},
    {errc::io_error, "io_error"},
    {errc::bad_format, "bad_format"},
    {errc::shape_mismatch, "shape_mismatch"},
    {errc::non_finite, "non_finite"},
    {errc::unknown_workload, "unknown_workload"},
    {errc::device_error, "device_error"},
    {errc::no_device, "no_device"},
    {errc::store_error, "store_error"},
    {errc::permission_denied, "permission_denied"},
    {errc::limit_exceeded, "limit_exceeded"},
    {errc::unavailable, "unavailable"},
    {errc::stage_failed, "stage_failed"},
    {errc::not_leader, "not_leader"},
}};

constexpr std::array<enum_name<dtype>, 4> k_dtype_names{{
    {dtype::f32, "f32"},
    {dtype::i32, "i32"},
    {dtype::u8, "u8"},
    {dtype::i8, "i8"},
}};

}  // namespace

template <>
std::span<const enum_name<errc>> enum_names<errc>() noexcept {
  return k_errc_names;
}

template <>
std::span<const enum_name<dtype>> enum_names<dtype>() noexcept {
  return k_dtype_names;
}

const char* to_string(errc code) noexcept {
  return name_of(code);
}

const char* to_string(dtype t) noexcept {
  return name_of(t);
}

namespace detail {

void check_failed(const char* expr, const char* file, int line, const char* what) {
  std::fprintf(stderr, "gflex: internal error at %s:%d: %s (%s)\n", file, line, what, expr);
  std::abort();
}

}  // namespace detail
}  // namespace gflex
