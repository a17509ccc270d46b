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

#include <cstddef>
#include <cstdint>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// 128 MiB: a data chunk (3000 samples) is about 2.4 MB and fashion-mlp's parameters 2 MiB;
/// the rest is room for larger models.
inline constexpr size_t max_message_bytes = size_t{128} << 20;

/// Connections closed for announcing a larger message, since the process started.
uint64_t oversized_messages_refused();

/// Whether the limit is in effect in this process: CAF's own configure_read exists, the
/// global symbol lookup finds this module's definition first, and libcaf_io was not linked
/// with -Bsymbolic (which would bind its internal calls to its own definition and bypass
/// the limit silently). run_core, run_node and client::connect refuse to start without it.
expected<void> message_limit_in_effect();

}  // namespace gflex
