#pragma once
/// @file
/// The core's Prometheus metrics (served by `gflex-core --metrics-listen`): their names,
/// help texts and label values in one place. Labels come from fixed sets only.

#include <chrono>
#include <string>

#include "gflex/runtime/metrics.hpp"

namespace gflex::core_metrics {

/// What happened to assignments: "sent", "accepted" (a valid result), "failed" (lost,
/// refused, late: handed out again), "verified" and "refuted" (a re-computation agreed or
/// not).
inline metrics::counter assignments(const char* outcome) {
  return metrics::counter_of("gflex_core_assignments_total",
                             "Assignments by outcome: sent, accepted, failed, verified, refuted",
                             {{"outcome", outcome}});
}

inline const metrics::counter& rounds_committed() {
  static const auto c = metrics::counter_of("gflex_core_rounds_committed_total",
                                            "Training rounds committed (durably, paid)");
  return c;
}

inline const metrics::histogram& round_duration() {
  static const auto h = metrics::histogram_of(
      "gflex_core_round_duration_seconds",
      "From a round's start to its last result (or its quorum)", metrics::seconds_buckets());
  return h;
}

/// Nodes connected now, by tier ("community" or "core").
inline metrics::gauge nodes(bool core_tier) {
  return metrics::gauge_of("gflex_core_nodes", "Nodes connected, by tier",
                           {{"tier", core_tier ? "core" : "community"}});
}

/// Heartbeats the registry has taken in (each renews a node's lease).
inline const metrics::counter& heartbeats() {
  static const auto c =
      metrics::counter_of("gflex_core_heartbeats_total", "Heartbeats taken in by the registry");
  return c;
}

inline metrics::counter joins(bool core_tier) {
  return metrics::counter_of("gflex_core_joins_total", "Nodes admitted, by tier",
                             {{"tier", core_tier ? "core" : "community"}});
}

/// The core's own actors restarted after they stopped (a bug, or a store that failed), by
/// role: anything above 0 is worth a look at the core's log.
inline metrics::counter child_restarts(const char* role) {
  return metrics::counter_of("gflex_core_child_restarts_total",
                             "The core's actors restarted after they stopped, by role",
                             {{"role", role}});
}

/// Refused joins, by the refusal's error kind (permission_denied, invalid_argument, ...).
inline metrics::counter join_refusals(const char* reason) {
  return metrics::counter_of("gflex_core_join_refusals_total",
                             "Joins refused, by the kind of error", {{"reason", reason}});
}

/// Payload bytes: "out" (parameters in assignments, their chunks as served, data chunks) and
/// "in" (updates, update chunks as pulled).
inline metrics::counter bytes(const char* direction, const char* kind) {
  return metrics::counter_of("gflex_core_payload_bytes_total",
                             "Payload bytes sent and received, by kind",
                             {{"direction", direction}, {"kind", kind}});
}

inline const metrics::gauge& store_bytes() {
  static const auto g =
      metrics::gauge_of("gflex_core_store_bytes",
                        "Bytes the core's store uses on disk (LMDB's pages and its blob files)");
  return g;
}

/// Credits held by the ledger's accounts, by kind: "user" (clients' balances), "escrow"
/// (held for jobs' running rounds), "node" (earned by nodes), "platform" (its fees) and
/// "issued" (all credits that entered from outside).
inline metrics::gauge ledger_credits(const char* kind) {
  return metrics::gauge_of("gflex_core_ledger_credits", "Credits in the ledger's accounts, by kind",
                           {{"kind", kind}});
}

/// Messages a session dropped: outside its interface, forged, bare errors ("node" or
/// "client" sessions; `gflex nodes` shows each node's own count).
inline metrics::counter dropped_messages(const char* session) {
  return metrics::counter_of("gflex_core_dropped_messages_total",
                             "Messages sessions dropped (outside their interface, forged)",
                             {{"session", session}});
}

/// Messages waiting in the mailbox of the busy actor `role`, as note_mailbox last saw them.
inline metrics::gauge mailbox_messages(const char* role) {
  return metrics::gauge_of(
      "gflex_core_mailbox_messages",
      "Messages waiting in the mailbox of the core's busy actors, when last seen",
      {{"actor", role}});
}

/// Notes the calling actor's mailbox length in gflex_core_mailbox_messages{actor=role}: a
/// rise at most every 250 ms, a fall at once. CAF lets only the actor itself read its mailbox,
/// so the busy actors call this from their busiest handler: the figure is the backlog each
/// time they get to it. It counts the messages the actor has taken in and not yet handled,
/// read without changing the queue (mailbox().size() would move new messages in, which
/// corrupts the queue CAF is iterating while a handler runs); those that arrived since are
/// counted next time.
template <class Self>
void note_mailbox(Self* self, const char* role) {
  // Each actor type notes under one role: its gauge is looked up once, not by name (under the
  // metrics registry's lock) on every message of its busiest handler.
  static const std::string first_role = role;
  static const metrics::gauge first_gauge = mailbox_messages(role);
  const metrics::gauge gauge = first_role == role ? first_gauge : mailbox_messages(role);
  const auto backlog = static_cast<double>(self->mailbox().queue().total_task_size());
  const double shown = gauge.value();
  if (backlog == shown) return;
  // Only rises are throttled. A burst's first message sees its peak; throttling the falls too
  // would skip the drained mailbox, and once the actor goes quiet nothing calls this again:
  // the gauge would keep the peak, and an alert on the backlog would never clear.
  if (backlog > shown) {
    auto& st = self->state;
    const auto now = std::chrono::steady_clock::now();
    if (now - st.mailbox_noted < std::chrono::milliseconds(250)) return;
    st.mailbox_noted = now;
  }
  gauge.set(backlog);
}

}  // namespace gflex::core_metrics
