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

/// A transform for an integer flag: decimal digits only (a sign for signed ones), leading
/// zeros dropped. CLI11 (2.1) reads integers in base 0: `--workers 010` ran 8 workers,
/// `--heartbeat-ms 0x10` 16 ms, and an unsigned `--seed -1` became 18446744073709551615.
inline CLI::Validator decimal_integer(bool is_signed) {
  return CLI::Validator(
      [is_signed](std::string& text) -> std::string {
        size_t digits = 0;
        if (is_signed && !text.empty() && text[0] == '-') digits = 1;
        const bool all_digits = text.size() > digits &&
                                text.find_first_not_of("0123456789", digits) == std::string::npos;
        if (!all_digits)
          return "Value " + text + " is not a " +
                 (is_signed ? "decimal integer" : "decimal integer of 0 or more");
        const size_t first = text.find_first_not_of('0', digits);
        text.erase(digits, (first == std::string::npos ? text.size() - 1 : first) - digits);
        return {};
      },
      "");
}

/// Adds decimal_integer to every integer option of `app` and its subcommands.
inline void take_integers_in_decimal(CLI::App& app) {
  for (CLI::Option* option : app.get_options()) {
    const std::string type = option->get_type_name();
    if (type.rfind("INT", 0) == 0)
      option->transform(decimal_integer(true));
    else if (type.rfind("UINT", 0) == 0)
      option->transform(decimal_integer(false));
  }
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; }))
    take_integers_in_decimal(*sub);
}

/// Parses `argv` into `app`; nullopt when the program goes on, else the code to exit with
/// (CLI11 has printed the help or the error).
inline std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv) {
  take_integers_in_decimal(app);
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
