#pragma once
/// @file
/// A follower of a core of several refuses what only the leader does (a node's hello, a
/// client's submit) with errc::not_leader, its message ending with the leader's address:
/// "... is at HOST:PORT" (follower_door.hpp). Nodes and clients go there next.

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

namespace gflex {

/// The address a not_leader refusal names; none when `message` names none, or a port
/// outside 1..65535.
inline std::optional<std::pair<std::string, uint16_t>> leader_named_in(const std::string& message) {
  const auto at = message.rfind(" is at ");
  if (at == std::string::npos) return std::nullopt;
  const std::string address = message.substr(at + 7);
  const auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) return std::nullopt;
  const std::string digits = address.substr(colon + 1);
  if (digits.empty() || digits.size() > 5 ||
      digits.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  const long port = std::strtol(digits.c_str(), nullptr, 10);
  if (port <= 0 || port > 65535) return std::nullopt;
  return std::pair{address.substr(0, colon), static_cast<uint16_t>(port)};
}

}  // namespace gflex
