#include "job.hpp"

#include <sodium.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <deque>
#include <map>
#include <set>

#include "data_catalog.hpp"
#include "gflex/kernels/trainer.hpp"
#include "gflex/runtime/checkpoint.hpp"
#include "gflex/runtime/tensor_codec.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "messages.hpp"

namespace gflex {

std::string job_record_key(const std::string& job_id) {
  return "job/" + job_id + "/record";
}
std::string job_checkpoint_key(const std::string& job_id) {
  return "job/" + job_id + "/checkpoint";
}

namespace {

using clock_type = std::chrono::steady_clock;

struct in_flight {
  int64_t shard = 0;
  worker_slot slot;
  std::chrono::steady_clock::time_point started;
};

struct job_state {
  job_start job;
  job_links links;
  std::unique_ptr<kernels::workload> workload;
  std::shared_ptr<const served_data> data;
  std::unique_ptr<kernels::backend> eval_backend;

  // The current round.
  std::vector<uint8_t> round_params;  // encoded theta, sent with every assignment
  std::deque<int64_t> unassigned;     // shards still to hand out
  std::map<uint64_t, in_flight> pending;
  std::vector<double> delta_sum;
  int64_t received = 0;
  double loss_sum = 0.0;
  std::set<std::string> round_nodes;
  std::set<int64_t> answered;     // shards of this round with an applied result
  std::map<int64_t, int> copies;  // assignments out per shard (backups make it > 1)
  std::set<int64_t> backed_up;    // shards given a backup copy this round
  std::vector<double> durations;  // seconds each answered assignment of this round took
  std::chrono::steady_clock::time_point round_started;
  bool waiting_for_workers = false;
  // What the last durable commit holds; clients are shown these, never rounds that a crash
  // could still take back.
  int64_t durable_round = 0;
  double durable_accuracy = 0.0;
  double durable_loss = 0.0;
  bool finished = false;
  std::set<caf::actor_addr> monitored;

  clock_type::time_point resumed_at = clock_type::now();
  double elapsed_before = 0.0;

  static inline const char* name = "job";
};

using job_actor = caf::stateful_actor<job_state>;

uint64_t fresh_assignment_id() {
  uint64_t id = 0;
  while (id == 0) randombytes_buf(&id, sizeof id);  // unique and unguessable
  return id;
}

uint64_t mix_seed(uint64_t seed, uint64_t round, uint64_t shard) {
  uint64_t z = seed ^ (round * 0x9E3779B97F4A7C15ULL) ^ (shard * 0xBF58476D1CE4E5B9ULL);
  z = (z ^ (z >> 31)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 29);
}

void publish(job_actor* self) {
  auto& st = self->state;
  auto& s = st.job.status;
  s.elapsed_s =
      st.elapsed_before + std::chrono::duration<double>(clock_type::now() - st.resumed_at).count();
  if (s.round > 0 && s.state == "running") {
    double per_round = s.elapsed_s / static_cast<double>(s.round);
    s.eta_s = per_round * static_cast<double>(s.rounds - s.round);
  }
  self->send(st.links.supervisor, update_atom::value, s);
}

void dispatch(job_actor* self);
void start_round(job_actor* self);
void commit_round(job_actor* self);

void finish(job_actor* self, const std::string& state, const std::string& detail) {
  auto& st = self->state;
  if (st.finished) return;
  st.finished = true;
  st.job.status.state = state;
  st.job.status.detail = detail;
  st.job.status.eta_s = 0.0;
  for (auto& [id, a] : st.pending) {
    self->send(a.slot.worker, abort_atom::value, id);
    self->send(st.links.market, release_atom::value, a.slot.worker);
  }
  st.pending.clear();
  publish(self);
  store_batch batch;
  batch.keys.push_back(job_record_key(st.job.id));
  batch.values.push_back(encode_job_record(st.job.spec_text, st.job.status));
  self->request(st.links.store, std::chrono::seconds(30), commit_atom::value, std::move(batch))
      .then([=](caf::ok_atom) { self->quit(); },
            [=](caf::error& e) {
              spdlog::error("job {}: cannot record its end: {}", self->state.job.id,
                            self->system().render(e));
              self->quit();
            });
}

void fail_assignment(job_actor* self, uint64_t id, const std::string& why) {
  auto& st = self->state;
  auto it = st.pending.find(id);
  if (it == st.pending.end()) return;
  int64_t shard = it->second.shard;
  spdlog::warn("job {}: assignment {:016x} on {} failed ({}); reassigning shard {}", st.job.id, id,
               it->second.slot.node_name, why, shard);
  self->send(st.links.market, release_atom::value, it->second.slot.worker);
  st.pending.erase(it);
  // Another copy (a backup) may still be running, or may already have answered.
  if (--st.copies[shard] <= 0 && !st.answered.count(shard)) st.unassigned.push_front(shard);
  dispatch(self);
}

void commit_round(job_actor* self) {
  auto& st = self->state;
  const auto& spec = st.job.spec;
  const double inv = 1.0 / static_cast<double>(st.received);
  const double mu = spec.outer_momentum, lr = spec.outer_lr;
  // Nesterov momentum on the averaged pseudo-gradient (DiLoCo's outer optimiser):
  //   m = mu * m + g;  theta -= lr * (g + mu * m)
  for (size_t i = 0; i < st.job.theta.size(); ++i) {
    double g = st.delta_sum[i] * inv;
    double m = mu * st.job.momentum[i] + g;
    st.job.momentum[i] = static_cast<float>(m);
    st.job.theta[i] = static_cast<float>(st.job.theta[i] - lr * (g + mu * m));
  }
  auto& s = st.job.status;
  s.round += 1;
  s.train_loss = st.loss_sum * inv;
  s.nodes = static_cast<int64_t>(st.round_nodes.size());
  const bool last = s.round == s.rounds;
  // The next round goes out before this one is evaluated and written, so that workers
  // compute while the job thread evaluates, encodes the checkpoint and the store writes it.
  if (!last) start_round(self);
  if (s.round % spec.eval_every == 0 || last) {
    auto eval = kernels::evaluate(*st.workload, st.data->test, *st.eval_backend, st.job.theta);
    if (!eval) {
      finish(self, "failed", "evaluation failed: " + eval.error().message());
      return;
    }
    s.test_accuracy = eval->accuracy();
  }
  st.elapsed_before += std::chrono::duration<double>(clock_type::now() - st.resumed_at).count();
  st.resumed_at = clock_type::now();
  s.elapsed_s = st.elapsed_before;
  if (last) s.state = "done";

  // Record and checkpoint of the round in one transaction: a restart resumes from here.
  checkpoint c;
  c.workload = spec.workload;
  c.step = static_cast<uint64_t>(s.round);
  auto as_tensor = [](const std::vector<float>& v) {
    auto t = tensor::empty({static_cast<int64_t>(v.size())}, dtype::f32);
    std::copy(v.begin(), v.end(), t.data<float>());
    return t;
  };
  c.tensors.push_back({"theta", as_tensor(st.job.theta)});
  c.tensors.push_back({"outer_momentum", as_tensor(st.job.momentum)});
  store_batch batch;
  batch.keys = {job_record_key(st.job.id), job_checkpoint_key(st.job.id)};
  batch.values = {encode_job_record(st.job.spec_text, s), encode_checkpoint(c)};
  // The store applies commits in the order they are sent, and a round counts as committed
  // (and is reported) only once its transaction is durable. A crash before that resumes
  // from the round before; the in-memory result of this one is then recomputed, never
  // applied twice.
  const int64_t round = s.round;
  const double accuracy = s.test_accuracy, loss = s.train_loss;
  self->request(st.links.store, std::chrono::seconds(60), commit_atom::value, std::move(batch))
      .then(
          [=](caf::ok_atom) {
            auto& st = self->state;
            st.durable_round = round;
            st.durable_accuracy = accuracy;
            st.durable_loss = loss;
            spdlog::info("job {}: round {}/{} committed, loss {:.4f}, test accuracy {:.4f}",
                         st.job.id, round, st.job.status.rounds, loss, accuracy);
            if (last) {
              finish(self, "done", "");
            } else {
              publish(self);
            }
          },
          [=](caf::error& e) {
            finish(self, "failed", "cannot commit round: " + self->system().render(e));
          });
}

void on_result(job_actor* self, uint64_t id, assignment_result& r) {
  auto& st = self->state;
  auto it = st.pending.find(id);
  if (it == st.pending.end()) {
    // The assignment was reassigned or its round closed: drop the late copy, counted.
    st.job.status.late_results += 1;
    return;
  }
  if (r.assignment_id != id) {
    st.job.status.rejected_results += 1;
    fail_assignment(self, id,
                    "result rejected: it names assignment " + std::to_string(r.assignment_id) +
                        ", which this worker was not given");
    return;
  }
  auto update = decode_update(r.update, st.job.theta.size());
  if (!update || !std::isfinite(r.loss)) {
    st.job.status.rejected_results += 1;
    fail_assignment(self, id,
                    "result rejected: " + (update ? "non-finite loss" : update.error().message()));
    return;
  }
  auto slot = it->second.slot;
  auto shard = it->second.shard;
  st.durations.push_back(
      std::chrono::duration<double>(clock_type::now() - it->second.started).count());
  st.pending.erase(it);
  st.answered.insert(shard);
  st.copies[shard] -= 1;
  // The first valid result of a shard wins; its other copies are cancelled, and their
  // results, should they still come, are dropped as late.
  for (auto other = st.pending.begin(); other != st.pending.end();) {
    if (other->second.shard != shard) {
      ++other;
      continue;
    }
    self->send(other->second.slot.worker, abort_atom::value, other->first);
    self->send(st.links.market, release_atom::value, other->second.slot.worker);
    st.copies[shard] -= 1;
    other = st.pending.erase(other);
  }
  self->send(st.links.market, release_atom::value, slot.worker);
  st.job.status.bytes_received += r.update.size();
  spdlog::debug(
      "job {}: applied assignment {:016x} (round {}, shard {}) from {}: {:.3f} s of "
      "compute, {} bytes",
      st.job.id, id, st.job.status.round + 1, shard, slot.node_name, r.compute_s, r.update.size());
  for (size_t i = 0; i < update->size(); ++i) st.delta_sum[i] += (*update)[i];
  st.loss_sum += r.loss;
  st.received += 1;
  st.round_nodes.insert(slot.node_id);
  if (st.received == st.job.spec.workers) {
    commit_round(self);
  } else {
    dispatch(self);
  }
}

void send_assignment(job_actor* self, const worker_slot& slot, int64_t shard) {
  auto& st = self->state;
  const auto& spec = st.job.spec;
  assignment a;
  a.id = fresh_assignment_id();
  a.job_id = st.job.id;
  a.round = static_cast<uint64_t>(st.job.status.round);
  a.workload = spec.workload;
  a.shard = st.data->shards[static_cast<size_t>(shard)].digest;
  a.seed = mix_seed(spec.seed, a.round, static_cast<uint64_t>(shard));
  a.local_steps = spec.local_steps;
  a.batch_size = spec.batch_size;
  a.lr = static_cast<float>(inner_lr_at(spec, st.job.status.round));
  a.weight_decay = static_cast<float>(spec.weight_decay);
  a.plain_sgd = spec.inner == inner_optimizer::sgd;
  a.compression = static_cast<uint8_t>(spec.compression);
  a.params = st.round_params;
  st.job.status.bytes_sent += a.params.size();
  st.pending[a.id] = {shard, slot, clock_type::now()};
  st.copies[shard] += 1;
  if (st.monitored.insert(slot.worker.address()).second) self->monitor(slot.worker);
  uint64_t id = a.id;
  spdlog::debug("job {}: assignment {:016x} (round {}, shard {}) to {}", st.job.id, a.id,
                a.round + 1, shard, slot.node_name);
  auto deadline = std::chrono::milliseconds(static_cast<int64_t>(spec.deadline_s * 1000));
  self->request(slot.worker, deadline, assign_atom::value, std::move(a))
      .then([=](assignment_result& r) { on_result(self, id, r); },
            [=](caf::error& e) { fail_assignment(self, id, self->system().render(e)); });
}

void dispatch(job_actor* self) {
  auto& st = self->state;
  if (st.finished || st.unassigned.empty() || st.waiting_for_workers) return;
  st.waiting_for_workers = true;
  auto wanted = static_cast<int64_t>(st.unassigned.size());
  self->request(st.links.market, std::chrono::seconds(10), acquire_atom::value, st.job.id, wanted)
      .then(
          [=](std::vector<worker_slot>& slots) {
            auto& st = self->state;
            st.waiting_for_workers = false;
            if (st.finished) {
              for (auto& s : slots) self->send(st.links.market, release_atom::value, s.worker);
              return;
            }
            for (auto& s : slots) {
              // A backup queued for a shard that has been answered since is not needed.
              while (!st.unassigned.empty() && st.answered.count(st.unassigned.front()))
                st.unassigned.pop_front();
              if (st.unassigned.empty()) {
                self->send(st.links.market, release_atom::value, s.worker);
                continue;
              }
              int64_t shard = st.unassigned.front();
              st.unassigned.pop_front();
              send_assignment(self, s, shard);
            }
            std::string detail;
            if (!st.unassigned.empty()) {
              detail = "waiting for workers: " + std::to_string(st.unassigned.size()) +
                       " assignment(s) of round " + std::to_string(st.job.status.round + 1) +
                       " have none";
              self->delayed_send(self, std::chrono::milliseconds(250), tick_atom::value);
            }
            if (detail != st.job.status.detail) {
              st.job.status.detail = detail;
              publish(self);
            }
          },
          [=](caf::error& e) {
            self->state.waiting_for_workers = false;
            spdlog::warn("job {}: market did not answer: {}", self->state.job.id,
                         self->system().render(e));
            self->delayed_send(self, std::chrono::milliseconds(500), tick_atom::value);
          });
}

void start_round(job_actor* self) {
  auto& st = self->state;
  const auto& spec = st.job.spec;
  st.round_params = encode_tensor([&] {
    auto t = tensor::empty({static_cast<int64_t>(st.job.theta.size())}, dtype::f32);
    std::copy(st.job.theta.begin(), st.job.theta.end(), t.data<float>());
    return t;
  }());
  st.delta_sum.assign(st.job.theta.size(), 0.0);
  st.received = 0;
  st.loss_sum = 0.0;
  st.round_nodes.clear();
  st.unassigned.clear();
  st.answered.clear();
  st.copies.clear();
  st.backed_up.clear();
  st.durations.clear();
  st.round_started = clock_type::now();
  self->delayed_send(self, std::chrono::milliseconds(250), tick_atom::value,
                     static_cast<uint64_t>(st.job.status.round));
  auto shards = static_cast<int64_t>(st.data->shards.size());
  for (int64_t k = 0; k < spec.workers; ++k)
    st.unassigned.push_back((st.job.status.round * spec.workers + k) % shards);
  dispatch(self);
}

// Runs four times a second during a round: backup copies for stragglers, and closing a
// round that is past its deadline with a quorum of results.
void watch_round(job_actor* self) {
  auto& st = self->state;
  const auto& spec = st.job.spec;
  auto now = clock_type::now();
  const auto answered = static_cast<int64_t>(st.answered.size());
  double age = std::chrono::duration<double>(now - st.round_started).count();
  auto quorum = static_cast<int64_t>(std::ceil(spec.quorum * static_cast<double>(spec.workers)));
  if (age > spec.deadline_s && answered >= quorum && answered < spec.workers) {
    spdlog::warn("job {}: round {} past its deadline; closing it with {} of {} results", st.job.id,
                 st.job.status.round + 1, answered, spec.workers);
    for (auto& [id, a] : st.pending) {
      self->send(a.slot.worker, abort_atom::value, id);
      self->send(st.links.market, release_atom::value, a.slot.worker);
    }
    st.pending.clear();
    st.unassigned.clear();
    commit_round(self);
    return;
  }
  if (spec.backup_after <= 0 || st.durations.empty()) return;
  std::vector<double> d = st.durations;
  std::nth_element(d.begin(), d.begin() + d.size() / 2, d.end());
  double limit = spec.backup_after * d[d.size() / 2];
  bool queued = false;
  for (const auto& [id, a] : st.pending) {
    if (st.answered.count(a.shard) || st.backed_up.count(a.shard)) continue;
    if (std::chrono::duration<double>(now - a.started).count() <= limit) continue;
    spdlog::info("job {}: shard {} on {} is slow ({:.1f} s, median {:.1f} s); backing it up",
                 st.job.id, a.shard, a.slot.node_name,
                 std::chrono::duration<double>(now - a.started).count(), d[d.size() / 2]);
    st.backed_up.insert(a.shard);
    st.unassigned.push_back(a.shard);
    queued = true;
  }
  if (queued) dispatch(self);
}

caf::behavior job_behavior(job_actor* self, job_start start, job_links links) {
  auto& st = self->state;
  st.job = std::move(start);
  st.links = std::move(links);
  st.elapsed_before = st.job.status.elapsed_s;
  st.resumed_at = clock_type::now();
  st.durable_round = st.job.status.round;
  st.durable_accuracy = st.job.status.test_accuracy;
  st.durable_loss = st.job.status.train_loss;

  auto w = kernels::find_workload(st.job.spec.workload);
  expected<std::shared_ptr<const served_data>> data =
      w ? st.links.catalog->get(**w) : expected<std::shared_ptr<const served_data>>(w.error());
  if (!data) {
    st.job.status.state = "failed";
    st.job.status.detail = data.error().message();
    finish(self, "failed", data.error().message());
    return {[](status_atom) {}};
  }
  st.workload = std::move(*w);
  st.data = std::move(*data);
  st.eval_backend = kernels::make_cpu_backend(0);
  if (st.job.theta.empty()) {
    st.job.theta.resize(static_cast<size_t>(st.workload->parameter_count()));
    st.workload->init_parameters(st.job.spec.seed, st.job.theta);
    st.job.momentum.assign(st.job.theta.size(), 0.0f);
  }
  st.job.status.state = "running";
  st.job.status.detail.clear();
  publish(self);

  // A job stops with its supervisor (a restarted one resumes it from the store); a link
  // would instead take the supervisor down with any job that is killed.
  self->monitor(st.links.supervisor);
  self->set_down_handler([=](const caf::down_msg& down) {
    auto& st = self->state;
    if (down.source == st.links.supervisor.address()) {
      self->quit(down.reason);
      return;
    }
    st.monitored.erase(down.source);
    std::vector<uint64_t> lost;
    for (const auto& [id, a] : st.pending)
      if (a.slot.worker.address() == down.source) lost.push_back(id);
    for (uint64_t id : lost) fail_assignment(self, id, "worker lost");
  });
  start_round(self);
  return {
      [=](tick_atom) { dispatch(self); },
      [=](update_atom, const std::string& role, caf::actor& replacement) {
        // The core restarted a sibling; in-flight requests to the old one fail and retry.
        if (role == "store") self->state.links.store = std::move(replacement);
        if (role == "market") self->state.links.market = std::move(replacement);
        dispatch(self);
      },
      [=](tick_atom, uint64_t round) {
        auto& st = self->state;
        if (st.finished || round != static_cast<uint64_t>(st.job.status.round)) return;
        watch_round(self);
        self->delayed_send(self, std::chrono::milliseconds(250), tick_atom::value, round);
      },
      [=](withdraw_atom, const std::string& node_id) {
        auto& st = self->state;
        std::vector<uint64_t> lost;
        for (const auto& [id, a] : st.pending)
          if (a.slot.node_id == node_id) lost.push_back(id);
        for (uint64_t id : lost) fail_assignment(self, id, "its node was withdrawn");
      },
      [=](cancel_atom) -> caf::result<caf::ok_atom> {
        // Workers learn this actor's address from the assignments it sends them; only the
        // job supervisor (acting for the job's owner) may end the job.
        if (self->current_sender() !=
            caf::actor_cast<caf::strong_actor_ptr>(self->state.links.supervisor))
          return to_caf(error(errc::invalid_argument, "only the job supervisor cancels a job"));
        finish(self, "cancelled", "cancelled by its owner");
        return caf::ok_atom::value;
      },
      [=](status_atom) -> job_status { return self->state.job.status; },
  };
}

}  // namespace

caf::actor spawn_job(caf::actor_system& sys, job_start start, job_links links) {
  return sys.spawn<caf::detached>(job_behavior, std::move(start), std::move(links));
}

}  // namespace gflex
