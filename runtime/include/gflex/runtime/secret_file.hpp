#pragma once
/// @file
/// Reading a secret kept in a file of its own (an API key, the operator's key): the file must
/// be a regular file (not a link) that only its owner may read.

#include <filesystem>
#include <string>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// The first line of `file`, trailing spaces and line ends removed. Refused with a message
/// naming the file: a file that cannot be opened (errc::io_error), that is not a regular
/// file, or that others may read (errc::invalid_argument).
expected<std::string> read_secret_file(const std::filesystem::path& file);

}  // namespace gflex
