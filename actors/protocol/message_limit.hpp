#pragma once
/// @file
/// The largest message a core, node or client accepts from a peer, checked before anything
/// is allocated for it.
///
/// CAF 0.17's BASP layer reads a 32-byte header and then allocates a buffer of the size the
/// header claims, up to 4 GiB, before it has received a byte of the payload: one peer that
/// completes the handshake (with TLS, anyone holding a core's bundle) could make the core
/// allocate gigabytes per connection. CAF has no setting for it, so message_limit.cpp
/// interposes on the one function through which BASP asks for a payload of a given size
/// (caf::io::abstract_broker::configure_read, called through the PLT) and closes a
/// connection that announces more than max_message_bytes instead.
///
/// Sending has no bound in CAF either: BASP appends every outgoing message to the
/// connection's write buffer (an std::vector that grows while the write before it waits for
/// the socket), with no backpressure. A peer that stops reading its socket, while its requests
/// keep being answered (a client's fetches, a node's chunk requests), grew the core's memory
/// without bound. message_limit.cpp interposes on the function through which BASP sends what
/// it has written (caf::io::abstract_broker::flush) too, and shuts down a connection whose
/// bytes waiting behind the write in progress pass max_unsent_bytes: its read and write fail,
/// and CAF closes it as one whose peer went away (the peer's actors go down on this side).

#include <cstddef>
#include <cstdint>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// 128 MiB: a data chunk (3000 samples) is about 2.4 MB and fashion-mlp's parameters 2 MiB;
/// the rest is room for larger models.
inline constexpr size_t max_message_bytes = size_t{128} << 20;

/// 256 MiB: what a connection may have waiting to be sent behind the write in progress (that
/// write, one buffer swapped out earlier, may hold as much again). Two of the largest
/// messages, and far more than a peer within its other bounds has waiting (a client's 32
/// open requests of 1 MiB answers each; a node's chunks, 4 served at once).
inline constexpr size_t max_unsent_bytes = size_t{256} << 20;

/// Connections closed for announcing a larger message, since the process started.
uint64_t oversized_messages_refused();

/// Connections shut down for having more than max_unsent_bytes waiting to be sent (their
/// peer stopped reading), since the process started.
uint64_t stalled_connections_closed();

/// Whether the limits are in effect in this process: CAF's own configure_read and flush
/// exist, the global symbol lookup finds this module's definitions first, and libcaf_io was
/// not linked with -Bsymbolic (which would bind its internal calls to its own definitions and
/// bypass the limits silently). run_core, run_node and client::connect refuse to start
/// without them.
expected<void> message_limit_in_effect();

}  // namespace gflex
