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
/// connection's offline buffer (what wr_buf returns), with no backpressure; when the write in
/// progress completes, the stream swaps that buffer in whole and writes it. A peer that stops
/// reading its socket, while its requests keep being answered (a client's fetches, a node's
/// chunk requests), grew the core's memory without bound. message_limit.cpp interposes on the
/// function through which BASP sends what it has written (caf::io::abstract_broker::flush)
/// too, and shuts down a connection whose peer stopped taking bytes: its read and write fail,
/// and CAF closes it as one whose peer went away (the peer's actors go down on this side).
///
/// What waits is no measure of a peer that stopped: a broker drains its whole mailbox each
/// time it runs, so a burst from a healthy peer lands there at once (a node's workers'
/// parameters, sent inline when they fit one payload chunk of up to 64 MiB; a pipeline's
/// window of items in flight to one worker). So the bound is on time without progress:
/// more than unsent_stall_bytes may wait only while the peer's kernel keeps acknowledging
/// bytes or writes keep completing; after unsent_stall_time with neither, the connection is
/// shut down. Past max_unsent_bytes() it is shut down however its peer reads.

#include <chrono>
#include <cstddef>
#include <cstdint>

#include "gflex/runtime/error.hpp"

namespace gflex {

/// 128 MiB: a data chunk (3000 samples) is about 2.4 MB and fashion-mlp's parameters 2 MiB;
/// the rest is room for larger models.
inline constexpr size_t max_message_bytes = size_t{128} << 20;

/// 64 MiB: what a connection may have waiting to be sent behind the write in progress with
/// no limit on time. With the default 1 MiB payload chunks, a client's 32 open requests and a
/// node's chunks (4 served at once) stay under it; bursts of larger chunks pass it, and then
/// the peer must keep taking bytes (unsent_stall_time).
inline constexpr size_t unsent_stall_bytes = size_t{64} << 20;

/// 60 s: how long more than unsent_stall_bytes may wait while the peer takes none of it (its
/// kernel acknowledges no byte and no write completes). A slow link acknowledges bytes every
/// round trip, however long its write in progress takes to finish. link_silence (180 s) does
/// not close a peer that sends its heartbeats (every 10 s) but reads nothing. The bound is
/// checked when something is flushed to the connection: at the latest at this side's next
/// heartbeat, so such a peer is shut down within 70 s.
inline constexpr std::chrono::seconds unsent_stall_time{60};

/// What a connection may have waiting to be sent however steadily its peer reads (the write
/// in progress may hold as much again): an eighth of the machine's physical memory, at least
/// 1 GiB and at most 4 GiB. Far above a burst of a node's workers' parameters; it keeps one
/// peer from taking the process's memory within the stall time.
size_t max_unsent_bytes();

/// The bound on unsent bytes in effect in this process.
struct unsent_bound {
  size_t stall_bytes = unsent_stall_bytes;  ///< May wait with no limit on time.
  /// How long more than stall_bytes may wait with no progress.
  std::chrono::milliseconds stall_time = unsent_stall_time;
  size_t max_bytes = max_unsent_bytes();  ///< May wait at all.
};

/// The bound applied now: the defaults above unless set_unsent_bound replaced them.
unsent_bound current_unsent_bound();

/// Replaces the bound in this process, for tests, which cannot wait a minute for a stall.
/// Refused (returns an error and changes nothing) unless 0 < stall_bytes <= max_bytes and the
/// stall time is positive.
expected<void> set_unsent_bound(const unsent_bound& bound);

/// Connections closed for announcing a larger message, since the process started.
uint64_t oversized_messages_refused();

/// Connections shut down for what waited to be sent to them (their peer stopped reading, or
/// more than max_unsent_bytes() waited), since the process started.
uint64_t stalled_connections_closed();

/// Whether the limits are in effect in this process: CAF's own configure_read and flush
/// exist, the global symbol lookup finds this module's definitions first, and libcaf_io was
/// not linked with -Bsymbolic (which would bind its internal calls to its own definitions and
/// bypass the limits silently). run_core, run_node and client::connect refuse to start
/// without them.
expected<void> message_limit_in_effect();

}  // namespace gflex
