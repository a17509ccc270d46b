#pragma once
/// @file
/// Whether a process answers at a core's address, not only takes the connection. A frozen core
/// (SIGSTOP, a suspended machine) or another program on its port takes the connection in the
/// kernel and says nothing, and CAF 0.17 dialling it waits for its handshake for ever. Over
/// TLS that handshake cannot be cancelled: it keeps the middleman's network thread polling it,
/// a CPU core's worth, until the peer answers or closes. A client's dial
/// (client::impl::dial) and a node's uplink give CAF only an address that answered.

#include <chrono>
#include <cstdint>
#include <string>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// Connects to host:port (each address it resolves to, in turn), says goodbye (a TLS
/// close_notify alert) and waits up to `timeout` for anything back: bytes, the connection's
/// end or a reset. An error (errc::io_error) begins with host:port and says why not: no
/// answer (a frozen core, or another program listening there), refused, or unresolved.
expected<void> probe_answer(const std::string& host, uint16_t port, std::chrono::seconds timeout);

}  // namespace gflex
