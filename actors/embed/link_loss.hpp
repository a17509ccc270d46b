#pragma once
/// @file
/// How a client's errors say that the link to its core was lost or that a request went
/// unanswered (errc::unavailable): a core restarting, a follower taking over. Whoever follows
/// a job (client::wait, a pipeline's train stage) tries again after them for a while.

#include <chrono>
#include <string_view>

#include "gflex/runtime/error.hpp"

namespace gflex::detail {

inline constexpr std::string_view link_lost = "the link to the core was lost";
inline constexpr std::string_view no_answer = "the core did not answer";

/// How long following a job rides out such errors, from the first of a run of them.
inline constexpr auto link_loss_patience = std::chrono::minutes(2);

inline bool is_link_loss(const error& e) {
  return e.code() == errc::unavailable &&
         (e.message().starts_with(link_lost) || e.message().starts_with(no_answer));
}

}  // namespace gflex::detail
