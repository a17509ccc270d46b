#pragma once
/// @file
/// Whether a definition of a CAF function in this program takes the place of CAF's own (the
/// interpositions of message_limit.cpp and routed_messages.cpp): CAF's definition exists,
/// global symbol lookup finds this program's first, and libcaf_io was not linked with
/// -Bsymbolic (which would bind its internal calls to its own definition and bypass ours
/// silently).

#include <string>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// `symbol`: the mangled name; `ours`: any function defined in the same module as our
/// definition; `what`: the guard's name for the error ("the message size limit").
expected<void> interposed_here(const char* symbol, const void* ours, const std::string& what);

}  // namespace gflex
