/// @file
/// The source of the shared library libgflex (cmake/gflex_sdk.cmake), which is made of the
/// runtime, kernels and actors libraries whole. Its own code is the version query.

#include "gflex/gflex.hpp"

namespace gflex {

const char* sdk_version() noexcept {
  return GFLEX_VERSION;
}

}  // namespace gflex
