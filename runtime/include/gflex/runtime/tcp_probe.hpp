#pragma once
/// @file
/// Whether a TCP endpoint answers, within a bound. CAF 0.17 connects with a blocking
/// connect() on its middleman's thread: to a machine that is off (its packets dropped, no
/// reset) that takes the kernel's SYN retries, about 2 minutes, and every other connect of the
/// process waits behind it. Probed first, such an address is passed over in seconds.

#include <chrono>
#include <cstdint>
#include <string>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// Connects to host:port (each address it resolves to, in turn) and closes again. An error
/// (errc::unavailable) names the address and why: refused, unresolved, or no answer within
/// `timeout`.
expected<void> probe_tcp(const std::string& host, uint16_t port,
                         std::chrono::milliseconds timeout = std::chrono::seconds(3));

}  // namespace gflex
