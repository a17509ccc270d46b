#pragma once
/// @file
/// `gflex data push | list | show | rm`: users' data sets on a core. A push reads and checks
/// the files here (format, dtype, shapes, labels in range), so that a bad file is refused
/// before anything is sent; the core checks every shard again and stores the set.

#include <CLI/CLI.hpp>

#include <functional>
#include <string>

#include "gflex/runtime/dataset.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex::app {

/// Files as `gflex data push` reads them: `format` idx or npy (features in `path`, labels in
/// `labels`, the last `test_fraction` held out) or tokens (bytes, samples of context + 1).
struct data_files {
  std::string path;
  std::string labels;
  std::string format;
  int64_t classes = 0;  ///< 0: the largest label + 1.
  double test_fraction = 0.1;
  int64_t context = 64;
};

/// Reads and checks the files; every error names the file and what is wrong.
expected<dataset_splits> read_data_files(const data_files& f);

/// Adds the data commands to the client's command line; `run` is set to the chosen one.
void add_data_commands(CLI::App& app, std::function<int()>& run);

}  // namespace gflex::app
