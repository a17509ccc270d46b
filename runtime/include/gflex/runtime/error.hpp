#pragma once
/// @file
/// The project's error type. Below the actor layer errors travel as `gflex::expected<T>`;
/// the actor layer maps `gflex::errc` onto `caf::error` so errors can cross the network.

#include <cstdint>
#include <string>
#include <utility>
#include <variant>

#include "gflex/runtime/enum_names.hpp"

namespace gflex {

/// What went wrong, independent of the message. Values are stable: they are sent on the wire.
enum class errc : uint8_t {
  none = 0,
  invalid_argument = 1,    ///< A caller passed a value outside the accepted domain.
  malformed_message = 2,   ///< Bytes from outside the process failed to decode.
  io_error = 3,            ///< A file could not be opened, read or written.
  bad_format = 4,          ///< A file was readable but its content is not what it claims.
  shape_mismatch = 5,      ///< Tensor shapes or sizes disagree.
  non_finite = 6,          ///< A tensor holds NaN or infinity where finite values are required.
  unknown_workload = 7,    ///< No workload is registered under the requested name.
  device_error = 8,        ///< A compute device (CUDA, cuBLAS, NCCL) reported a failure.
  no_device = 9,           ///< The requested compute device does not exist here.
  store_error = 10,        ///< The LMDB store failed.
  permission_denied = 11,  ///< The caller lacks the credential the request needs.
  limit_exceeded = 12,     ///< A peer passed one of the bounds on what it may ask for.
  unavailable = 13,        ///< Nothing can serve the request now (no core-tier worker free).
  stage_failed = 14,       ///< A pipeline stage failed more often than its restarts allow.
  /// A core of several: this core follows and does not do this; the message ends with the
  /// leader's address ("... is at HOST:PORT").
  not_leader = 15,
};

template <>
std::span<const enum_name<errc>> enum_names<errc>() noexcept;

/// A short, stable name for an error code ("io_error").
const char* to_string(errc code) noexcept;

/// An error code with a message for humans. The message says what failed and on what
/// (file names, shapes, keys), so that it can be printed to a user unchanged.
class error {
 public:
  error() = default;
  error(errc code, std::string message) : code_(code), message_(std::move(message)) {}

  errc code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }
  explicit operator bool() const noexcept { return code_ != errc::none; }

 private:
  errc code_ = errc::none;
  std::string message_;
};

/// Either a value or an error. A minimal stand-in for C++23's std::expected.
template <class T>
class [[nodiscard]] expected {
 public:
  expected(T value) : state_(std::in_place_index<0>, std::move(value)) {}
  expected(gflex::error err) : state_(std::in_place_index<1>, std::move(err)) {}

  bool has_value() const noexcept { return state_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  T& value() & { return std::get<0>(state_); }
  const T& value() const& { return std::get<0>(state_); }
  T&& value() && { return std::get<0>(std::move(state_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const gflex::error& error() const { return std::get<1>(state_); }

 private:
  std::variant<T, gflex::error> state_;
};

/// The result of an operation that returns nothing on success.
template <>
class [[nodiscard]] expected<void> {
 public:
  expected() = default;
  expected(gflex::error err) : error_(std::move(err)) {}

  bool has_value() const noexcept { return !error_; }
  explicit operator bool() const noexcept { return has_value(); }
  const gflex::error& error() const { return error_; }

 private:
  gflex::error error_;
};

}  // namespace gflex
