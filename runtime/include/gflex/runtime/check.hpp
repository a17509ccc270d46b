#pragma once
/// @file
/// GFLEX_CHECK: an invariant that only a bug can break. Input from users or the network is
/// never checked with it; that gets a gflex::error instead.

namespace gflex::detail {
[[noreturn]] void check_failed(const char* expr, const char* file, int line, const char* what);
}  // namespace gflex::detail

#define GFLEX_CHECK(expr, what)                                                  \
  do {                                                                           \
    if (!(expr)) ::gflex::detail::check_failed(#expr, __FILE__, __LINE__, what); \
  } while (false)
