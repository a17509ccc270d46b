#pragma once
/// @file
/// Parses a program's command line with CLI11, keeping the programs' exit codes: 0 for
/// --help, 2 for bad usage. CLI11's own codes (105 for a failed check, 109 for an unknown
/// flag, ...) are not what the README or the systemd units (RestartPreventExitStatus=2)
/// expect: a typo in a node's flags restarted it every 10 s for ever.

#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>

namespace gflex::app {

/// Parses `argv` into `app`; nullopt when the program goes on, else the code to exit with
/// (CLI11 has printed the help or the error).
inline std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return std::nullopt;
}

/// CLI::Range for a floating-point flag: CLI11's passes NaN (every comparison with it is
/// false), and a core started with `--cloud-price nan` showed every job's cloud cost as
/// -9.2e12 credits. This one takes finite numbers in [min, max] only.
inline CLI::Validator finite_range(double min, double max) {
  return CLI::Validator(
      [min, max](std::string& text) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(v))
          return "Value " + text + " is not a finite number";
        if (v < min || v > max)
          return "Value " + text + " not in range [" + CLI::detail::to_string(min) + " - " +
                 CLI::detail::to_string(max) + "]";
        return {};
      },
      "FLOAT in [" + CLI::detail::to_string(min) + " - " + CLI::detail::to_string(max) + "]");
}

}  // namespace gflex::app
