#pragma once
/// @file
/// Reader for NumPy's .npy files (format versions 1-3), as users export their data sets.

#include <filesystem>

#include "gflex/runtime/error.hpp"
#include "gflex/runtime/tensor.hpp"

namespace gflex {

/// Reads an .npy array in C order: float32 and float64 become f32 (float64 values must fit),
/// uint8 stays u8, int8/int16/int32/int64/uint16/uint32 become i32 (values must fit). A
/// missing file, a bad magic string or header, Fortran order, another dtype (complex,
/// objects, strings, big-endian), more than 4 dimensions, or a length that disagrees with the
/// header is errc::bad_format (or io_error) with a message naming the file.
expected<tensor> read_npy(const std::filesystem::path& file);

}  // namespace gflex
