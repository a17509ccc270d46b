#pragma once
/// @file
/// Reader for the IDX file format (the MNIST family), plain or gzip-compressed.

#include <filesystem>

#include "gflex/runtime/error.hpp"
#include "gflex/runtime/tensor.hpp"

namespace gflex {

/// Reads an IDX file of unsigned bytes (type code 0x08) into a u8 tensor with the file's
/// shape. Gzip is detected and decompressed transparently (zlib). A missing file, a wrong
/// magic number, a type other than u8, a rank other than `expected_rank`, or a file whose
/// length disagrees with its header (truncated or with trailing bytes) gives an error whose
/// message names the file.
expected<tensor> read_idx_u8(const std::filesystem::path& file, size_t expected_rank);

}  // namespace gflex
