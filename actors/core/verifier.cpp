#include "verifier.hpp"

#include <sodium.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <limits>
#include <map>

#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "messages.hpp"
#include "robust_aggregation.hpp"

namespace gflex {

namespace {

/// Tries a request gets before the verifier gives up on it. A try that ran past a wait
/// shorter than the longest is not counted: the next waits twice as long (run).
constexpr int max_attempts = 3;
/// The works whose timed-out tries are remembered past their check (remember_timeouts).
constexpr size_t max_remembered_works = 4096;

// Who asked for a check: the job, and the job again for each time it asked anew while the
// check was queued or running (its request timed out first). Each is answered.
struct askers {
  std::vector<caf::response_promise> promises;
  template <class... Ts>
  void deliver(const Ts&... xs) {
    for (auto& p : promises) p.deliver(xs...);
  }
};

struct pending_check {
  verify_request request;
  askers promise;
  int attempts = 0;
  /// Attempts that ran past their wait: each next one waits twice as long (run).
  int timeouts = 0;
  std::chrono::steady_clock::time_point queued = std::chrono::steady_clock::now();
};

struct running_check {
  pending_check check;
  worker_slot slot;
};

struct verifier_state {
  caf::actor market;
  verifier_limits limits;
  std::deque<pending_check> queue;
  std::map<uint64_t, running_check> running;  // by the re-computation's assignment id
  bool asking = false;                        // an acquire is in flight
  bool tick_scheduled = false;
  /// Timed-out tries per work (job, round, shard), kept past the check: a job asks again for
  /// a check that failed (--unverified wait, every 30 s), and each new check began its
  /// doubling afresh, so a core tier more than four times slower than its first wait (a CPU
  /// re-computing a GPU's work) never finished one, and the job's round waited for ever.
  std::map<std::string, int> timeouts_of;
  std::deque<std::string> remembered;  // oldest first
  static inline const char* name = "verifier";
};

using verifier_actor = caf::stateful_actor<verifier_state>;

void pump(verifier_actor* self);

// A work's key among the remembered timeouts.
std::string work_key(const assignment& w) {
  return w.job_id + ' ' + std::to_string(w.round) + ' ' + w.shard;
}

void remember_timeouts(verifier_state& st, const assignment& w, int timeouts) {
  auto key = work_key(w);
  auto [it, added] = st.timeouts_of.insert_or_assign(key, timeouts);
  if (!added) return;
  st.remembered.push_back(std::move(key));
  if (st.remembered.size() > max_remembered_works) {
    st.timeouts_of.erase(st.remembered.front());
    st.remembered.pop_front();
  }
}

// `counted`: whether the try that failed counts against max_attempts.
void retry_or_fail(verifier_actor* self, pending_check check, const std::string& why,
                   bool counted = true) {
  if (counted) ++check.attempts;
  if (check.attempts >= max_attempts) {
    check.promise.deliver(to_caf(error(errc::io_error, "re-computation failed: " + why)));
  } else {
    check.queued = std::chrono::steady_clock::now();  // its wait starts again
    self->state.queue.push_front(std::move(check));
  }
  pump(self);
}

void run(verifier_actor* self, pending_check check, const worker_slot& slot) {
  auto work = check.request.work;
  do randombytes_buf(&work.id, sizeof work.id);
  while (work.id == 0);
  work.verify = true;
  work.next_shard.clear();  // the verifier's worker has no next round of this job
  work.compression = static_cast<uint8_t>(compression::fp32);
  const uint64_t id = work.id;
  spdlog::debug("verifier: re-computing job {} round {} shard {} on {}", work.job_id,
                work.round + 1, work.shard.substr(0, 12), slot.node_name);
  // A re-computation takes about as long as the assignment it checks, on a worker that may
  // be slower (limits.recompute_factor); one that hangs (its node still beating) is given up
  // on and tried elsewhere, where the longest deadline a spec may give held the round a day.
  const double deadline_s = check.request.deadline_s > 0.0
                                ? std::min(check.request.deadline_s, max_deadline_s)
                                : max_deadline_s;
  const auto& limits = self->state.limits;
  const auto longest = std::chrono::milliseconds(static_cast<int64_t>(max_deadline_s * 1000));
  // Doubled after each attempt that ran out of time: the speed gap between the node and the
  // core tier's worker (a CPU re-computing a GPU's work on a large model) can pass any fixed
  // factor, and every attempt then timed out alike.
  const auto wait = std::min(std::clamp(std::chrono::milliseconds(static_cast<int64_t>(
                                            deadline_s * limits.recompute_factor * 1000)),
                                        limits.min_recompute_wait, longest) *
                                 (int64_t{1} << std::min(check.timeouts, 16)),
                             longest);
  work.answer_within_s = std::chrono::duration<double>(wait).count();
  self->state.running[id] = {std::move(check), slot};
  // Watched while it runs: a worker that goes down (its node's link lost) holds the request,
  // never answered, and the market tells nobody what it held; the check waited out the
  // request's day-long timeout, and the job's round with it.
  self->monitor(slot.worker);
  self->request(slot.worker, wait, assign_atom::value, std::move(work))
      .then(
          [=](assignment_result& r) {
            auto& st = self->state;
            auto it = st.running.find(id);
            if (it == st.running.end()) return;
            auto done = std::move(it->second);
            st.running.erase(it);
            self->demonitor(done.slot.worker);
            self->send(st.market, release_atom::value, done.slot.worker, false);  // answered
            const auto& claimed = done.check.request.claimed;
            // Nothing claimed: the job asks only whether the core tier computes the work
            // (community nodes said it diverges).
            if (claimed.empty() && r.assignment_id == id) {
              done.check.promise.deliver(0.0, 1.0, r.compute_s);
              pump(self);
              return;
            }
            auto recomputed = decode_update(r.update, claimed.size());
            if (!recomputed || r.assignment_id != id) {
              retry_or_fail(self, std::move(done.check),
                            recomputed ? "the core-tier worker answered another assignment"
                                       : recomputed.error().message());
              return;
            }
            const double recomputed_norm = l2_norm(*recomputed), claimed_norm = l2_norm(claimed);
            const double norm_ratio = recomputed_norm > 0.0 ? claimed_norm / recomputed_norm
                                      : claimed_norm == 0.0
                                          ? 1.0
                                          : std::numeric_limits<double>::infinity();
            done.check.promise.deliver(relative_distance(claimed, *recomputed), norm_ratio,
                                       r.compute_s);
            pump(self);
          },
          [=](caf::error& e) {
            auto& st = self->state;
            auto it = st.running.find(id);
            if (it == st.running.end()) return;
            auto done = std::move(it->second);
            st.running.erase(it);
            self->demonitor(done.slot.worker);
            self->send(done.slot.worker, abort_atom::value, id);  // if it is still computing
            // Training that diverges on the core tier too is the work's, not the worker's:
            // said at once, not tried again.
            if (from_caf(e).code() == errc::non_finite) {
              self->send(st.market, release_atom::value, done.slot.worker);
              done.check.promise.deliver(
                  to_caf(error(errc::non_finite, "the core tier's re-computation diverged too: " +
                                                     from_caf(e).message())));
              pump(self);
              return;
            }
            // Past its wait, the worker is slower than the work needs, not broken: cooled down
            // as at fault, the core tier's workers were kept from every job's work for it, and
            // a core tier too slow for one job's model left out of all of them. So is work
            // that does not fit there (out of its memory, refused by its kernels), as a job
            // takes it of its own assignments.
            const auto err = from_caf(e, &self->system());
            const bool timed_out = e == caf::sec::request_timeout;
            const bool does_not_fit = (err.code() == errc::device_error &&
                                       err.message().find("out of") != std::string::npos &&
                                       err.message().find("memory") != std::string::npos) ||
                                      err.code() == errc::invalid_argument;
            self->send(st.market, release_atom::value, done.slot.worker, true,
                       !(timed_out || does_not_fit));
            if (timed_out) {
              done.check.timeouts += 1;
              remember_timeouts(st, done.check.request.work, done.check.timeouts);
            }
            retry_or_fail(self, std::move(done.check),
                          timed_out ? "its core-tier worker " + done.slot.node_name +
                                          " did not answer within " +
                                          std::to_string(wait.count() / 1000) + " s"
                                    : self->system().render(e),
                          !timed_out || wait >= longest);
          });
}

// Answers the requests that have waited longer than the limit for a core-tier worker.
void expire(verifier_actor* self) {
  auto& st = self->state;
  const auto now = std::chrono::steady_clock::now();
  for (auto it = st.queue.begin(); it != st.queue.end();) {
    if (now - it->queued < st.limits.max_wait) {
      ++it;
      continue;
    }
    const auto waited = std::chrono::duration_cast<std::chrono::seconds>(now - it->queued);
    it->promise.deliver(to_caf(error(
        errc::unavailable, "no core-tier worker was free to re-compute it for " +
                               std::to_string(waited.count()) + " s (" +
                               std::to_string(st.queue.size()) + " re-computations waiting)")));
    it = st.queue.erase(it);
  }
}

void pump(verifier_actor* self) {
  auto& st = self->state;
  expire(self);
  if (st.queue.empty() || st.asking) return;
  st.asking = true;
  auto wanted = static_cast<int64_t>(st.queue.size());
  // Core-tier workers are the platform's own: their calibrated throughput is taken as it is.
  self->request(st.market, std::chrono::seconds(10), acquire_atom::value, std::string("verifier"),
                std::string(), wanted, static_cast<uint8_t>(trust_tier::core), int64_t{-1}, 0.0,
                std::vector<std::string>{})
      .then(
          [=](acquire_reply& reply) {
            auto& slots = reply.slots;
            auto& st = self->state;
            st.asking = false;
            for (auto& slot : slots) {
              if (st.queue.empty()) {
                self->send(st.market, release_atom::value, slot.worker);
                continue;
              }
              auto check = std::move(st.queue.front());
              st.queue.pop_front();
              run(self, std::move(check), slot);
            }
            if (!st.queue.empty() && !st.tick_scheduled) {
              st.tick_scheduled = true;
              self->delayed_send(self, std::chrono::milliseconds(200), tick_atom::value);
            }
          },
          [=](caf::error& e) {
            auto& st = self->state;
            st.asking = false;
            // Answered late, the acquire still made its slots busy, held by the verifier.
            std::vector<caf::actor> kept;
            for (const auto& [id, running] : st.running) kept.push_back(running.slot.worker);
            self->send(st.market, release_atom::value, std::move(kept));
            spdlog::warn("verifier: market did not answer: {}", self->system().render(e));
            if (!st.tick_scheduled) {
              st.tick_scheduled = true;
              self->delayed_send(self, std::chrono::milliseconds(500), tick_atom::value);
            }
          });
}

caf::behavior verifier(verifier_actor* self, caf::actor market, verifier_limits limits) {
  self->state.market = std::move(market);
  self->state.limits = limits;
  self->set_down_handler([=](const caf::down_msg& down) {
    auto& st = self->state;
    std::vector<uint64_t> lost;
    for (const auto& [id, r] : st.running)
      if (r.slot.worker.address() == down.source) lost.push_back(id);
    for (uint64_t id : lost) {
      auto check = std::move(st.running[id].check);
      st.running.erase(id);
      retry_or_fail(self, std::move(check), "its core-tier worker went down");
    }
  });
  return {
      [=](verify_atom, verify_request& request) -> caf::response_promise {
        auto promise = self->make_response_promise();
        auto& st = self->state;
        // The same check asked again (a job's request that timed out before a slow core tier
        // answered, asked anew under --unverified wait) waits for the one queued or running:
        // each ask started a copy beside the first, on another core-tier worker, whose
        // answer went nowhere, and the job waited for the copy.
        auto same = [&](const pending_check& c) {
          return c.request.work.job_id == request.work.job_id &&
                 c.request.work.round == request.work.round &&
                 c.request.work.shard == request.work.shard &&
                 c.request.work.id == request.work.id && c.request.claimed == request.claimed;
        };
        for (auto& c : st.queue)
          if (same(c)) {
            c.promise.promises.push_back(promise);
            return promise;
          }
        for (auto& [id, r] : st.running)
          if (same(r.check)) {
            r.check.promise.promises.push_back(promise);
            return promise;
          }
        uint64_t held = 0;
        for (const auto& c : st.queue) held += c.request.claimed.size() * sizeof(float);
        for (const auto& [id, r] : st.running)
          held += r.check.request.claimed.size() * sizeof(float);
        const uint64_t asked = request.claimed.size() * sizeof(float);
        if (held > 0 && held + asked > st.limits.max_claimed_bytes) {
          promise.deliver(to_caf(error(errc::limit_exceeded,
                                       "the verifier holds " + std::to_string(held >> 20) +
                                           " MiB of claimed updates, the most it may; " +
                                           std::to_string(st.queue.size()) +
                                           " re-computations are waiting for a core-tier worker")));
          return promise;
        }
        if (self->state.queue.size() >= self->state.limits.max_queue) {
          promise.deliver(to_caf(error(errc::limit_exceeded,
                                       std::to_string(self->state.queue.size()) +
                                           " re-computations are waiting for a core-tier worker, "
                                           "the most the verifier holds")));
          return promise;
        }
        const auto known = st.timeouts_of.find(work_key(request.work));
        const int timeouts = known == st.timeouts_of.end() ? 0 : known->second;
        self->state.queue.push_back(
            {std::move(request), askers{{promise}}, 0, timeouts, std::chrono::steady_clock::now()});
        pump(self);
        return promise;
      },
      [=](tick_atom) {
        self->state.tick_scheduled = false;
        pump(self);
      },
      [=](withdraw_atom, const std::string& node_id) {
        auto& st = self->state;
        std::vector<uint64_t> lost;
        for (const auto& [id, r] : st.running)
          if (r.slot.node_id == node_id) lost.push_back(id);
        for (uint64_t id : lost) {
          auto check = std::move(st.running[id].check);
          st.running.erase(id);
          retry_or_fail(self, std::move(check), "its core-tier node went away");
        }
      },
      [=](update_atom, const std::string& role, caf::actor& replacement) {
        if (role == "market") {
          // The new market hears which core-tier workers run re-computations (it takes every
          // slot for free, and would hand them to jobs meanwhile).
          auto& st = self->state;
          st.market = std::move(replacement);
          std::vector<caf::actor> held;
          for (const auto& [id, r] : st.running) held.push_back(r.slot.worker);
          if (!held.empty()) self->send(st.market, acquire_atom::value, std::move(held));
        }
        pump(self);
      },
  };
}

}  // namespace

caf::actor spawn_verifier(caf::actor_system& sys, caf::actor market, verifier_limits limits) {
  return sys.spawn(verifier, std::move(market), limits);
}

}  // namespace gflex
