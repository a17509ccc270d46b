/// @file
/// `gflex`: the client. Parses the command line and runs one subcommand.

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <functional>

#include "data_commands.hpp"
#include "devices_command.hpp"
#include "gflex/kernels/blas_kernels.hpp"
#include "gflex/runtime/logging.hpp"
#include "job_commands.hpp"
#include "market_commands.hpp"
#include "parse_command_line.hpp"
#include "sample_command.hpp"
#include "train_command.hpp"

int main(int argc, char** argv) {
  gflex::kernels::use_best_blas_kernels(argv);
  CLI::App app{"gflex: train neural networks on a hybrid GPU cloud"};
  app.require_subcommand(1);
  app.fallthrough();  // --log-level may follow the subcommand too
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off")
      ->capture_default_str();
  std::function<int()> run;
  gflex::app::add_train_commands(app, run);
  gflex::app::add_devices_command(app, run);
  gflex::app::add_job_commands(app, run);
  gflex::app::add_market_commands(app, run);
  gflex::app::add_data_commands(app, run);
  gflex::app::add_sample_command(app, run);
  if (auto code = gflex::app::parse_command_line(app, argc, argv)) return *code;
  if (auto ok = gflex::init_logging(log_level); !ok) {
    std::fprintf(stderr, "gflex: %s\n", ok.error().message().c_str());
    return 2;
  }
  return run ? run() : 2;
}
