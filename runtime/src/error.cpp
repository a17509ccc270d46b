#include "gflex/runtime/error.hpp"

#include <cstdio>
#include <cstdlib>

#include "gflex/runtime/check.hpp"
#include "gflex/runtime/dtype.hpp"

namespace gflex {

const char* to_string(errc code) noexcept {
  switch (code) {
    case errc::none:
      return "none";
    case errc::invalid_argument:
      return "invalid_argument";
    case errc::malformed_message:
      return "malformed_message";
    case errc::io_error:
      return "io_error";
    case errc::bad_format:
      return "bad_format";
    case errc::shape_mismatch:
      return "shape_mismatch";
    case errc::non_finite:
      return "non_finite";
    case errc::unknown_workload:
      return "unknown_workload";
    case errc::device_error:
      return "device_error";
    case errc::no_device:
      return "no_device";
    case errc::store_error:
      return "store_error";
    case errc::permission_denied:
      return "permission_denied";
    case errc::limit_exceeded:
      return "limit_exceeded";
    case errc::unavailable:
      return "unavailable";
    case errc::stage_failed:
      return "stage_failed";
  }
  return "unknown";
}

const char* to_string(dtype t) noexcept {
  switch (t) {
    case dtype::f32:
      return "f32";
    case dtype::i32:
      return "i32";
    case dtype::u8:
      return "u8";
    case dtype::i8:
      return "i8";
  }
  return "unknown";
}

namespace detail {

void check_failed(const char* expr, const char* file, int line, const char* what) {
  std::fprintf(stderr, "gflex: internal error at %s:%d: %s (%s)\n", file, line, what, expr);
  std::abort();
}

}  // namespace detail
}  // namespace gflex
