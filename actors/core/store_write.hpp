#pragma once
/// @file
/// A store write whose failure is checked before it is believed.
///
/// A commit not answered in time (a busy store, a slow disk) is not refused: the store takes
/// requests in order and finishes each, so the write may still land after its writer gave up.
/// A writer that took the timeout for a refusal held in memory what the store did not, until
/// the next restart read the store (a job known only to the store ran and billed; a key was
/// shown to nobody; a token use was spent on a node told it was refused). So every failed
/// commit is followed by a read of one key it wrote: the read queues behind the write and
/// sees its outcome.

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "messages.hpp"

namespace gflex {

/// What a commit's read-back checks: the key, how long the read may take, and whether the
/// value found there is the one the commit wrote.
template <class Matches>
struct store_read_back {
  std::string key;
  std::chrono::milliseconds wait;
  Matches matches;  ///< (bool found, const std::vector<uint8_t>& value) -> bool
};

/// Commits `batch` through `store` and calls `landed()` once it is known to be stored, or
/// `refused(commit_error, read_error)` once it is known not to be. `read_error` is empty when
/// the read-back answered (the value found was not the one written) and holds the read's
/// own failure otherwise; the commit is then taken as refused, as before the read-back.
template <class Self, class Matches, class Landed, class Refused>
void commit_checked(Self* self, const caf::actor& store, std::chrono::milliseconds wait,
                    store_batch batch, store_read_back<Matches> check, Landed landed,
                    Refused refused) {
  self->request(store, wait, commit_atom::value, std::move(batch))
      .then([=](caf::ok_atom) mutable { landed(); },
            [=](caf::error& commit_error) mutable {
              self->request(store, check.wait, read_atom::value, check.key)
                  .then(
                      [=](bool found, std::vector<uint8_t>& value) mutable {
                        if (check.matches(found, value)) return landed();
                        caf::error none;
                        refused(commit_error, none);
                      },
                      [=](caf::error& read_error) mutable { refused(commit_error, read_error); });
            });
}

/// A read-back of `key` judged by `matches`.
template <class Matches>
store_read_back<Matches> read_back(std::string key, std::chrono::milliseconds wait,
                                   Matches matches) {
  return {std::move(key), wait, std::move(matches)};
}

/// A read-back that needs `key` to hold exactly `value`.
inline auto holds_value(std::string key, std::chrono::milliseconds wait,
                        std::vector<uint8_t> value) {
  return read_back(std::move(key), wait,
                   [value = std::move(value)](bool found, const std::vector<uint8_t>& stored) {
                     return found && stored == value;
                   });
}

}  // namespace gflex
