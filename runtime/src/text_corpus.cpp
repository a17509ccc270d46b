#include "gflex/runtime/text_corpus.hpp"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>

namespace gflex {

std::filesystem::path fortunes_dir() {
  if (const char* dir = std::getenv("GFLEX_FORTUNES_DIR"); dir != nullptr && *dir != 0) return dir;
  return default_fortunes_dir;
}

namespace {

// The corpus's files, in name order (read_text_corpus).
expected<std::vector<std::filesystem::path>> corpus_files(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    return error(errc::io_error, dir.string() +
                                     ": text corpus directory not found (install Debian's "
                                     "fortunes or set GFLEX_FORTUNES_DIR)");
  // Every step takes an error code: the throwing forms (a range-for's increment, an entry
  // that cannot be stat'ed) would escape as an exception from a function that returns errors.
  std::vector<std::filesystem::path> files;
  std::filesystem::directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    std::error_code entry_ec;
    if (it->is_symlink(entry_ec) || !it->is_regular_file(entry_ec) || entry_ec ||
        it->path().has_extension())
      continue;
    files.push_back(it->path());
  }
  if (ec) return error(errc::io_error, dir.string() + ": cannot list: " + ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

expected<uint64_t> text_corpus_size(const std::filesystem::path& dir) {
  auto files = corpus_files(dir);
  if (!files) return files.error();
  uint64_t size = 0;
  for (const auto& f : *files) {
    std::error_code ec;
    const auto bytes = std::filesystem::file_size(f, ec);
    if (ec) return error(errc::io_error, f.string() + ": " + ec.message());
    size += bytes;
  }
  return size;
}

expected<void> check_token_splits(int64_t bytes, int64_t window, int64_t test_every) {
  if (window < 2) return error(errc::invalid_argument, "a token sample needs at least 2 tokens");
  const int64_t samples = bytes < window ? 0 : (bytes - 1) / (window - 1);
  const int64_t test = test_every > 0 ? samples / test_every : 0;
  if (samples - test < 1 || (test_every > 0 && test < 1))
    return error(errc::invalid_argument, "the text has " + std::to_string(bytes) +
                                             " bytes: too few for samples of " +
                                             std::to_string(window) + " tokens");
  return {};
}

expected<std::vector<uint8_t>> read_text_corpus(const std::filesystem::path& dir) {
  auto files = corpus_files(dir);
  if (!files) return files.error();
  std::vector<uint8_t> bytes;
  for (const auto& f : *files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) return error(errc::io_error, f.string() + ": cannot open");
    bytes.insert(bytes.end(), std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (bytes.empty()) return error(errc::io_error, dir.string() + ": no text files");
  return bytes;
}

expected<dataset_splits> make_token_splits(const std::vector<uint8_t>& bytes, int64_t window,
                                           int64_t test_every) {
  const auto size = static_cast<int64_t>(bytes.size());
  if (auto ok = check_token_splits(size, window, test_every); !ok) return ok.error();
  const int64_t samples = (size - 1) / (window - 1);
  const int64_t test = test_every > 0 ? samples / test_every : 0;
  dataset_splits out;
  for (dataset* d : {&out.train, &out.test}) {
    const int64_t n = d == &out.test ? test : samples - test;
    d->classes = 256;
    d->tokens = true;
    d->features = tensor::empty({n, window}, dtype::f32);
    d->labels = tensor::empty({n}, dtype::i32);
  }
  int64_t train_row = 0, test_row = 0;
  for (int64_t s = 0; s < samples; ++s) {
    const bool held_out = test_every > 0 && s % test_every == test_every - 1 && test_row < test;
    dataset& d = held_out ? out.test : out.train;
    const int64_t row = held_out ? test_row++ : train_row++;
    float* f = d.features.data<float>() + row * window;
    const uint8_t* src = bytes.data() + s * (window - 1);
    for (int64_t j = 0; j < window; ++j) f[j] = static_cast<float>(src[j]);
    d.labels.data<int32_t>()[row] = src[window - 1];
  }
  return out;
}

}  // namespace gflex
