#pragma once
/// @file
/// Whole-or-nothing file writes, shared by the secret files and the checkpoints.

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <span>

#include "gflex/runtime/error.hpp"

namespace gflex::detail {

/// Writes `bytes` to a temporary file beside `file` (created afresh with `mode`, never through
/// a link left at its name), syncs it, then gives it the name: over an existing file when
/// `replace`, else refusing one (as O_EXCL would); then syncs the directory. Named after its
/// bytes are on disk: a crash or a power loss leaves the old file or the new, never a short
/// one (without `sync`, neither the file nor the directory is synced: for a cache whose
/// files are checked when read). errc::io_error naming the file and the step that failed.
expected<void> write_synced(const std::filesystem::path& file, std::span<const uint8_t> bytes,
                            mode_t mode, bool replace, bool sync);

}  // namespace gflex::detail
