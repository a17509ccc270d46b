#pragma once
/// @file
/// Parses a program's command line with CLI11, keeping the programs' exit codes: 0 for
/// --help, 2 for bad usage. CLI11's own codes (105 for a failed check, 109 for an unknown
/// flag, ...) are not what the README or the systemd units (RestartPreventExitStatus=2)
/// expect: a typo in a node's flags restarted it every 10 s for ever.

#include <CLI/CLI.hpp>

#include <optional>

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

}  // namespace gflex::app
