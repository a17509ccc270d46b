#pragma once
/// @file
/// How a client's errors say that the link to its core was lost or that a request went
/// unanswered (errc::unavailable): a core restarting, a follower taking over. Whoever follows
/// a job (client::wait, a pipeline's train stage) tries again after them for a while.

#include <chrono>
#include <string>
#include <string_view>

#include "gflex/runtime/error.hpp"

namespace gflex::detail {

inline constexpr std::string_view link_lost = "the link to the core was lost";
inline constexpr std::string_view no_answer = "the core did not answer";
inline constexpr std::string_view no_leader = "no core leads now";

/// How long following a job rides out such errors, from the first of a run of them.
inline constexpr auto link_loss_patience = std::chrono::minutes(2);

inline bool is_link_loss(const error& e) {
  return e.code() == errc::unavailable &&
         (e.message().starts_with(link_lost) || e.message().starts_with(no_answer) ||
          e.message().starts_with(no_leader));
}

/// A follower's answer during a failover, as a lost link: it named a leader that cannot be
/// reached (the one that just died: its record stays for a lease), or said that none leads
/// yet. Following a job, or a pipeline's train stage, gave up on it at once, though another
/// core took over seconds later. Other errors are returned as they are.
inline error as_failover(error e) {
  const bool stale_leader = e.code() == errc::not_leader;
  const bool none_leads = e.code() == errc::unavailable &&
                          e.message().find(" follows and no core leads") != std::string::npos;
  if (!stale_leader && !none_leads) return e;
  return error(errc::unavailable, std::string(no_leader) + " (" + e.message() + ")");
}

}  // namespace gflex::detail
