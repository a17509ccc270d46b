#pragma once
/// @file
/// What this process has sent to a port, as the peer's kernel acknowledged it: a test's
/// measure of how far an upload got, without a hook in the code under test. (The peer's
/// /proc/PID/io does not count what recv() reads.)

#include <cstdint>

namespace gflex::test {

/// Bytes acknowledged on every TCP socket of this process connected to `remote_port`.
uint64_t tcp_bytes_sent_to(uint16_t remote_port);

}  // namespace gflex::test
