#pragma once
/// @file
/// Byte-level text corpora for language models: text files read as bytes (a vocabulary of
/// 256) and cut into training samples of `window` tokens.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "gflex/runtime/dataset.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex {

/// Where Debian's `fortunes` package installs its text files.
inline constexpr const char* default_fortunes_dir = "/usr/share/games/fortunes";

/// The directory to read the fortunes corpus from: $GFLEX_FORTUNES_DIR if set, else Debian's.
std::filesystem::path fortunes_dir();

/// The corpus's bytes: every regular file in `dir` whose name has no extension (the fortune
/// texts; not their .dat indexes or .u8 links), in name order, concatenated.
expected<std::vector<uint8_t>> read_text_corpus(const std::filesystem::path& dir);

/// The corpus's size in bytes (what read_text_corpus would read), from the files' sizes.
expected<uint64_t> text_corpus_size(const std::filesystem::path& dir);

/// Whether a text of `bytes` bytes cuts into samples of `window` tokens for both splits
/// (make_token_splits): errc::invalid_argument, saying why, if not.
expected<void> check_token_splits(int64_t bytes, int64_t window, int64_t test_every = 10);

/// Cuts `bytes` into samples of `window` tokens (features f32 [n, window] holding byte values,
/// labels i32 [n] the last token of each sample, 256 classes). Consecutive samples overlap
/// by one token, so that every byte but the first is a next-token target once. Every
/// `test_every`-th sample goes to the test split (held-out text).
expected<dataset_splits> make_token_splits(const std::vector<uint8_t>& bytes, int64_t window,
                                           int64_t test_every = 10);

}  // namespace gflex
