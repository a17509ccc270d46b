#include "gflex/runtime/logging.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <string>

namespace gflex {

expected<void> init_logging(std::string_view level) {
  auto parsed = spdlog::level::from_str(std::string(level));
  // from_str maps anything unknown to "off"; only accept "off" when asked for by name.
  if (parsed == spdlog::level::off && level != "off")
    return error(errc::invalid_argument,
                 "unknown log level '" + std::string(level) +
                     "' (use trace, debug, info, warn, error, critical or off)");
  static bool configured = false;
  if (!configured) {
    auto logger = spdlog::stderr_color_mt("gflex");
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
    spdlog::set_default_logger(logger);
    configured = true;
  }
  spdlog::set_level(parsed);
  return {};
}

}  // namespace gflex
