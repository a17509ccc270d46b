#pragma once
/// @file
/// Reading a secret kept in a file of its own (an API key, the operator's key): the file must
/// be a regular file (not a link) that only its owner may read. And writing one, whole or not
/// at all.

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// The first line of `file`, trailing spaces and line ends removed. Refused with a message
/// naming the file: a file that cannot be opened (errc::io_error), that is a symbolic link or
/// not a regular file, that others may read, or that another user than this one or root owns
/// (errc::invalid_argument).
expected<std::string> read_secret_file(const std::filesystem::path& file);

/// Why a secret file owned by uid `owner` is refused, for the message after its name.
std::string foreign_owner(unsigned owner);

/// Creates `file` holding `bytes`, with `mode`, never over an existing file (errc::io_error
/// then, naming it). Whole or not at all: the bytes go to a temporary file beside it, synced,
/// which then takes the name. A full disk or a crash midway left a short key file behind,
/// which every later start refused ("is not a node key") until someone deleted it.
expected<void> write_new_file(const std::filesystem::path& file, std::span<const uint8_t> bytes,
                              int mode = 0600);

}  // namespace gflex
