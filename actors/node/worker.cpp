#include "worker.hpp"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <new>
#include <numeric>
#include <set>
#include <thread>

#include "cache.hpp"
#include "gflex/kernels/replica_group.hpp"
#include "gflex/kernels/resident_features.hpp"
#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/cpu_usage.hpp"
#include "gflex/runtime/rng.hpp"
#include "gflex/runtime/tensor_codec.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "messages.hpp"
#include "node_metrics.hpp"

namespace gflex {

namespace {

/// A workload's model on every rank of the worker's group.
struct loaded_model {
  std::unique_ptr<kernels::workload> workload;
  std::vector<std::unique_ptr<kernels::model>> replicas;  ///< One per rank.
  int64_t max_batch = 0;                                  ///< Of the whole step (all ranks).
  uint64_t last_used = 0;  ///< worker_state::uses when an assignment last ran it.
};

/// Holds assignment `id` (cancellations::hold) from its acceptance to its answer: released
/// however the worker answers, and when the worker stops with it unanswered.
class held_assignment {
 public:
  held_assignment(std::shared_ptr<cancellations> held_by, uint64_t id)
      : held_by_(std::move(held_by)), id_(id) {
    held_by_->hold(id_);
  }
  held_assignment(held_assignment&& other) noexcept
      : held_by_(std::move(other.held_by_)), id_(other.id_) {}
  held_assignment(const held_assignment&) = delete;
  held_assignment& operator=(const held_assignment&) = delete;
  held_assignment& operator=(held_assignment&&) = delete;
  ~held_assignment() {
    if (held_by_) held_by_->release(id_);
  }

 private:
  std::shared_ptr<cancellations> held_by_;
  uint64_t id_;
};

struct worker_state {
  worker_config config;
  caf::actor cache;
  std::unique_ptr<kernels::replica_group> group;
  std::map<std::string, loaded_model> models;  // by workload, the kept_models most recent
  uint64_t uses = 0;                           // assignments run, for loaded_model::last_used
  /// Decoded shards by digest, the most recently used: at most kept_shards of them and
  /// kept_shard_bytes beyond the newest.
  struct kept_shard {
    std::shared_ptr<const dataset> data;
    uint64_t last_used = 0;
  };
  std::map<std::string, kept_shard> shards;
  /// Assignments waiting for their shard, by ask: the cache asked and the answer owed. A
  /// cache that stops drops the promises it holds unanswered (CAF 0.17 sends nothing for
  /// them): when the node supervisor hands over its replacement, the assignments asked of
  /// the old one fail at once, rather than hold their slots for the ask's 30 minutes.
  struct shard_wait {
    caf::actor_addr cache;
    caf::typed_response_promise<assignment_result> answer;
    std::string shard;
    held_assignment held;
    uint64_t assignment_id = 0;
  };
  std::map<uint64_t, shard_wait> shard_waits;
  uint64_t shard_asks = 0;
  int assignments = 0;
  bool device_broke = false;                        // a test aid's broken device has failed once
  std::unique_ptr<misbehaving_worker> misbehaving;  // test aid; null for honest workers
  cpu_monitor cpu;                                  // for --idle-only
  static inline const char* name = "worker";
};

using worker_actor = caf::stateful_actor<worker_state>;

size_t bytes_of(const dataset& d) {
  return d.features.nbytes() + d.labels.nbytes();
}

/// Models of more parameter bytes than this are not kept between assignments: a node then
/// holds no model while the next assignment's parameters arrive and are decoded.
constexpr int64_t kept_model_bytes = int64_t{64} << 20;

/// Decoded shards a worker keeps for the assignments that come back to them (a job's next
/// rounds hand each worker's place the shards it had), the most recently used: at most this
/// many, of at most this many bytes beyond the newest. A user's shard may be 128 MiB decoded.
constexpr size_t kept_shards = 32;
constexpr size_t kept_shard_bytes = size_t{256} << 20;

/// Models a worker keeps (their buffers, optimiser state included), the most recently used:
/// a node that serves job after job would otherwise keep every job's model for good.
constexpr size_t kept_models = 2;

/// Keeps `data` as the shard `digest`, the most recently used, and lets the least recently
/// used others go while more than kept_shards, or kept_shard_bytes beyond it, are kept.
void keep_shard(worker_state& st, const std::string& digest, std::shared_ptr<const dataset> data) {
  st.shards[digest] = {std::move(data), ++st.uses};
  for (;;) {
    size_t bytes = 0;
    auto oldest = st.shards.end();
    for (auto it = st.shards.begin(); it != st.shards.end(); ++it) {
      if (it->first == digest) continue;
      bytes += bytes_of(*it->second.data);
      if (oldest == st.shards.end() || it->second.last_used < oldest->second.last_used) oldest = it;
    }
    if (oldest == st.shards.end() || (st.shards.size() <= kept_shards && bytes <= kept_shard_bytes))
      return;
    st.shards.erase(oldest);
  }
}

error bad(const std::string& what) {
  return error(errc::invalid_argument, "assignment: " + what);
}

/// Puts the shard where each of the group's ranks computes (resident_features), so that the
/// assignment's batches cross to them as row numbers and labels. Nothing (empty: host
/// batches instead) for a token model (its features are checked and converted on the host),
/// where a GPU assignment reads fewer rows than the shard holds (fewer bytes go batch by
/// batch), and where a GPU has no memory left for the shard.
std::vector<kernels::resident_features> place_shard(kernels::replica_group& group,
                                                    const kernels::model& m, const dataset& shard,
                                                    int64_t rows_read) {
  const bool on_host = group.rank(0).where().kind == device_kind::host;
  if (!m.gathers_rows() || shard.size() > std::numeric_limits<int32_t>::max() ||
      (!on_host && rows_read < shard.size()))
    return {};
  std::vector<kernels::resident_features> out;
  for (int r = 0; r < group.size(); ++r) {
    out.emplace_back(group.rank(r), shard.features);
    if (!out.back().held()) return {};
  }
  return out;
}

expected<assignment_result> run_assignment(worker_state& st, assignment& a, const dataset& shard) {
  auto start = std::chrono::steady_clock::now();
  if (a.local_steps < 1 || a.local_steps > 1000000)
    return bad("local_steps " + std::to_string(a.local_steps) + " is outside [1, 1000000]");
  if (a.batch_size < 1 || a.batch_size > 65536)
    return bad("batch_size " + std::to_string(a.batch_size) + " is outside [1, 65536]");
  if (!(a.lr > 0.0f) || !std::isfinite(a.lr) || !(a.weight_decay >= 0.0f) ||
      !std::isfinite(a.weight_decay))
    return bad("learning rate and weight decay must be finite, lr positive");
  if (a.compression > static_cast<uint8_t>(compression::int8))
    return bad("unknown compression " + std::to_string(a.compression));
  if (a.precision > static_cast<uint8_t>(math_precision::bf16))
    return bad("unknown precision " + std::to_string(a.precision));

  const std::string key = a.workload + '\n' + a.model;
  auto& slot = st.models[key];
  slot.last_used = ++st.uses;
  while (st.models.size() > kept_models) {
    auto oldest = st.models.end();
    for (auto it = st.models.begin(); it != st.models.end(); ++it)
      if (it->first != key &&
          (oldest == st.models.end() || it->second.last_used < oldest->second.last_used))
        oldest = it;
    st.models.erase(oldest);
  }
  if (!slot.workload) {
    auto w = kernels::find_workload(a.workload, a.model, "");
    if (!w) return w.error();
    slot.workload = std::move(*w);
  }
  const auto& w = *slot.workload;
  if (shard.feature_dim() != w.feature_dim() || shard.classes != w.classes())
    return bad("shard does not fit workload " + w.name());
  auto& group = *st.group;
  const int ranks = group.size();
  if (slot.replicas.empty() || slot.max_batch < a.batch_size) {
    slot.replicas.clear();  // frees the old buffers before the larger ones are made
    const int64_t per_rank = (a.batch_size + ranks - 1) / ranks;
    auto make = [&]() -> expected<void> {
      for (int r = 0; r < ranks; ++r) {
        auto m = w.instantiate(group.rank(r), per_rank);
        // Its training buffers too: made at the first step, a model that did not fit beside
        // the kept ones failed there, past the retry below.
        if (m)
          if (auto ready = (*m)->prepare_training(); !ready) m = ready.error();
        if (!m) {
          slot.replicas.clear();
          return m.error();
        }
        slot.replicas.push_back(std::move(*m));
      }
      return {};
    };
    auto made = make();
    // Kept models are chosen by their parameters' bytes, but a model's memory may be mostly
    // elsewhere (a language model's attention: batch x heads x context^2 values a layer):
    // a new job's model that does not fit beside the kept ones is made again without them,
    // rather than fail here and have its job leave this node out for minutes.
    const auto& m = made ? std::string() : made.error().message();
    const bool out_of_memory = !made && made.error().code() == errc::device_error &&
                               m.find("out of") != std::string::npos &&
                               m.find("memory") != std::string::npos;
    if (out_of_memory) {
      bool freed = false;
      for (auto& [other_key, other] : st.models)
        if (other_key != key && !other.replicas.empty()) {
          other.replicas.clear();
          other.max_batch = 0;
          freed = true;
        }
      if (freed) made = make();
    }
    if (!made) return made.error();
    slot.max_batch = a.batch_size;
  }
  const int64_t n = w.parameter_count();
  // A large model's buffers are not kept past its assignment, however it ends: kept after a
  // cancel or an error, the next job's large model was made beside them, and ran out of
  // memory (the job then left this node out for minutes).
  struct large_model_dropped {
    loaded_model& slot;
    bool large;
    ~large_model_dropped() {
      if (!large) return;
      slot.replicas.clear();
      slot.max_batch = 0;
    }
  } dropped{slot, n * static_cast<int64_t>(sizeof(float)) > kept_model_bytes};
  auto params = decode_tensor(params_of(a));
  if (!params) return params.error();
  if (params->type() != dtype::f32 || params->rank() != 1 || params->numel() != n)
    return error(errc::shape_mismatch, "assignment: parameters are " + to_string(params->shape()) +
                                           " " + to_string(params->type()) + ", " + w.name() +
                                           " needs [" + std::to_string(n) + "] f32");
  // The encoded parameters are let go once decoded (the uplink keeps them only while an
  // assignment holds them): a large model's would otherwise stay twice in memory.
  a.params_ref.reset();
  a.params = {};
  auto theta = params->span<float>();
  if (auto i = first_non_finite(theta); i >= 0)
    return error(errc::non_finite, "assignment: parameter " + std::to_string(i) + " is not finite");

  // Verifications too run at the job's precision: the closer the re-run, the tighter the match.
  for (int r = 0; r < ranks; ++r)
    group.rank(r).set_precision(static_cast<math_precision>(a.precision));
  for (auto& m : slot.replicas) {
    m->load_parameters(theta);
    m->reset_optimizer();
    m->set_noise_seed(a.seed);
    m->optimizer() = kernels::adamw_config{};
    m->optimizer().lr = a.lr;
    m->optimizer().weight_decay = a.weight_decay;
    m->optimizer().plain_sgd = a.plain_sgd;
    m->take_stats();
  }
  // A verification re-runs someone else's work: it is always honest.
  const bool misbehave = st.misbehaving && !a.verify && st.misbehaving->decide(a.job_id);
  const int64_t steps = misbehave ? st.misbehaving->steps(a.local_steps) : a.local_steps;
  // Batches walk a seeded permutation of the shard, reshuffled at each pass: the same
  // assignment gives the same update anywhere.
  rng r(a.seed);
  const int64_t rows = shard.size(), dim = shard.feature_dim();
  std::vector<int64_t> order(static_cast<size_t>(rows));
  std::vector<int32_t> by(static_cast<size_t>(a.batch_size));
  auto shard_on_ranks = place_shard(group, *slot.replicas.front(), shard, steps * a.batch_size);
  std::vector<const float*> shard_at;
  for (const auto& held : shard_on_ranks) shard_at.push_back(held.at());
  std::vector<float> bx;  // a host batch, where the ranks do not hold the shard
  std::vector<int32_t> batch_rows;
  if (shard_at.empty())
    bx.resize(static_cast<size_t>(a.batch_size * dim));
  else
    batch_rows.resize(static_cast<size_t>(a.batch_size));
  int64_t cursor = rows;
  // An int8 update is computed and quantised where the model is (a quarter of the bytes
  // cross to the host). Not for a large model on the CPU, where it would only cost another
  // copy of the parameters, nor where a misbehaving worker (a test aid) alters the update.
  const bool int8 = !a.verify && a.compression == static_cast<uint8_t>(compression::int8);
  const bool on_host = group.rank(0).where().kind == device_kind::host;
  const bool quantize_there =
      int8 && !st.misbehaving &&
      (!on_host || n * static_cast<int64_t>(sizeof(float)) <= kept_model_bytes) &&
      slot.replicas.front()->mark_start();
  // Checked before each step and once after the last: one taken back during its last step
  // forms no update (a large model's takes seconds) and sends none.
  for (int64_t step = 0;; ++step) {
    if (st.config.cancelled->cancelled(a.id)) {
      spdlog::info("stopped {} round {} after {} of {} steps: the node no longer wants it",
                   a.job_id, a.round + 1, step, steps);
      return error(errc::invalid_argument, "assignment cancelled while it ran");
    }
    if (step >= steps) break;
    for (int64_t b = 0; b < a.batch_size; ++b) {
      if (cursor == rows) {
        std::iota(order.begin(), order.end(), 0);
        for (int64_t i = rows - 1; i > 0; --i)
          std::swap(order[i], order[r.below(static_cast<uint64_t>(i + 1))]);
        cursor = 0;
      }
      int64_t src = order[cursor++];
      if (bx.empty())
        batch_rows[b] = static_cast<int32_t>(src);
      else
        std::memcpy(&bx[b * dim], shard.features.data<float>() + src * dim, sizeof(float) * dim);
      by[b] = shard.labels.data<int32_t>()[src];
    }
    if (bx.empty())
      kernels::replica_step_rows(group, slot.replicas, shard_at, rows, batch_rows.data(), by.data(),
                                 a.batch_size);
    else
      kernels::replica_step(group, slot.replicas, bx.data(), by.data(), a.batch_size);
  }
  shard_on_ranks.clear();  // the GPUs' copies go before the update is formed
  kernels::batch_stats stats;
  for (auto& m : slot.replicas) {
    auto part = m->take_stats();
    stats.loss_sum += part.loss_sum;
    stats.correct += part.correct;
    stats.samples += part.samples;
  }
  std::vector<uint8_t> quantized;  // the encoded update, where the device quantised it
  if (quantize_there) {
    std::vector<int8_t> q(static_cast<size_t>(n));
    std::vector<float> scales(
        static_cast<size_t>((n + default_update_block_size - 1) / default_update_block_size));
    // Not finite: the host path below names the first bad value.
    if (slot.replicas.front()->quantized_update(default_update_block_size, q, scales))
      quantized = encode_quantized_update(q, scales, default_update_block_size);
  }
  // theta becomes the pseudo-gradient theta - end in place, the end parameters read a block
  // at a time: a large model's update takes no buffer of its own.
  if (quantized.empty()) {
    constexpr int64_t block = int64_t{1} << 20;
    std::vector<float> end(static_cast<size_t>(std::min(n, block)));
    for (int64_t at = 0; at < n; at += block) {
      const int64_t len = std::min(block, n - at);
      slot.replicas.front()->store_parameters(
          std::span<float>(end.data(), static_cast<size_t>(len)), at);
      for (int64_t i = 0; i < len; ++i) theta[at + i] -= end[i];
    }
  }
  std::span<const float> delta = theta;
  // A large model's buffers go before its update is encoded (and are made again for the next
  // assignment); a small one's stay for the next assignment.
  if (n * static_cast<int64_t>(sizeof(float)) > kept_model_bytes) {
    slot.replicas.clear();
    slot.max_batch = 0;
  }
  if (quantized.empty())
    if (auto i = first_non_finite(delta); i >= 0)
      return error(errc::non_finite,
                   "training diverged: update value " + std::to_string(i) + " is not finite");
  // A loss past float's range (a user's data of huge values) can come with finite steps: the
  // run diverged all the same, and a result with an infinite loss is malformed to the core.
  if (!std::isfinite(stats.mean_loss()))
    return error(errc::non_finite, "training diverged: the loss is not finite");
  std::vector<float> altered;  // a misbehaving worker's (a test aid)
  if (st.misbehaving && !a.verify) {
    altered.assign(delta.begin(), delta.end());
    // A stale cheat has nothing to replay on its first result of a job: that one is honest.
    const auto before = misbehave ? altered : std::vector<float>{};
    st.misbehaving->alter(a.job_id, altered);
    if (misbehave && (steps != a.local_steps || altered != before))
      spdlog::warn("worker: misbehaving (--misbehave, a test aid) on job {} round {}", a.job_id,
                   a.round + 1);
    delta = altered;
  }
  assignment_result out;
  out.assignment_id = a.id;
  // No error-feedback residual is carried from one assignment to the next: a result must
  // depend on its assignment alone, or no re-computation elsewhere could reproduce it (a
  // node's residual belongs to another round's shard anyway; int8 costs 0.6-0.8% of an
  // update's norm, measured by gflex_bench_reproducibility).
  if (!quantized.empty())
    out.update = std::move(quantized);
  else
    out.update = encode_update(
        delta, a.verify ? compression::fp32 : static_cast<compression>(a.compression));
  if (st.config.identity)
    out.signature = st.config.identity->sign(result_message(out.assignment_id, out.update));
  out.loss = stats.mean_loss();
  out.samples = stats.samples;
  out.compute_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

caf::behavior worker_behavior(worker_actor* self, worker_config config, caf::actor cache) {
  auto& st = self->state;
  st.config = std::move(config);
  st.cache = std::move(cache);
  auto group = make_worker_group(st.config.ranks, st.config.threads);
  if (!group) {
    spdlog::error("worker: {}", group.error().message());
    self->quit(to_caf(group.error()));
    return {};
  }
  st.group = std::move(*group);
  if (st.config.misbehave.kind != misbehaviour::mode::honest)
    st.misbehaving =
        std::make_unique<misbehaving_worker>(st.config.misbehave, st.config.misbehave_seed);

  // A device failure is an error for this assignment only; the worker stays up.
  auto compute = [=](assignment& a, const dataset& shard) -> caf::expected<assignment_result> {
    if (self->state.config.cancelled->cancelled(a.id)) {
      self->state.config.cancelled->forget(a.id);
      spdlog::info("stopped {} round {} before its first step: the node no longer wants it",
                   a.job_id, a.round + 1);
      return to_caf(error(errc::invalid_argument, "assignment aborted by its job"));
    }
    const bool inject_crash = ++self->state.assignments == self->state.config.crash_at_assignment;
    const bool inject_device_error =
        self->state.assignments == self->state.config.device_error_at_assignment;
    const bool inject_broken_device =
        self->state.config.device_broken_from > 0 &&
        self->state.assignments >= self->state.config.device_broken_from;
    auto& cfg = self->state.config;
    if (cfg.max_compute_s > 0.0 && cfg.compute_used->seconds() >= cfg.max_compute_s)
      return to_caf(error(errc::invalid_argument, "this node has given its --max-hours"));
    if (cfg.idle_only && !a.verify) {
      // What other processes used since this worker last looked (its own compute excluded).
      auto busy = self->state.cpu.others_busy();
      if (busy && *busy > 0.5)
        return to_caf(
            error(errc::io_error, "--idle-only: the machine is busy (other processes use " +
                                      std::to_string(static_cast<int>(*busy * 100)) +
                                      "% of its CPUs); try later"));
    }
    if (a.verify && cfg.verify_delay_ms > 0)  // a test aid; the worker is a detached actor
      std::this_thread::sleep_for(std::chrono::milliseconds(cfg.verify_delay_ms));
    bool end_told = false;
    auto tell = [&](node_activity::kind what, double samples_per_s, double compute_s) {
      end_told = what != node_activity::kind::started;
      if (!cfg.on_activity) return;
      node_activity n;
      n.what = what;
      n.job_id = a.job_id;
      n.round = static_cast<int64_t>(a.round) + 1;
      n.verify = a.verify;
      n.samples_per_s = samples_per_s;
      n.compute_s = compute_s;
      cfg.on_activity(n);
    };
    tell(node_activity::kind::started, 0.0, 0.0);
    // However the assignment ends, its end is told: one ended by an exception that ends this
    // worker (a defect) left the node's status line "working" on it for good.
    struct told_at_end {
      decltype(tell)& report;
      bool& told;
      ~told_at_end() {
        if (!told) try {
            report(node_activity::kind::failed, 0.0, 0.0);
          } catch (...) {
          }
      }
    } at_end{tell, end_told};
    if (inject_crash) throw std::runtime_error("injected worker crash (test aid)");
    // Its time counts against --max-hours from here to its end, whatever the end.
    struct counted {
      compute_clock& clock;
      uint64_t id;
      ~counted() { clock.stop(id); }
    } counting{*cfg.compute_used, a.id};
    cfg.compute_used->start(a.id);
    // Out of device or host memory, or another device failure: this assignment goes back to
    // its job (which gives it to another worker) and the worker stays up. Its models are
    // dropped, so their memory is free and the next assignment starts from a clean state.
    auto failed_on_device = [&](const error& why) -> caf::expected<assignment_result> {
      cfg.cancelled->forget(a.id);
      spdlog::warn("worker: assignment {} failed on the device: {}", a.id, why.message());
      node_metrics::assignments("failed").inc();
      tell(node_activity::kind::failed, 0.0, 0.0);
      self->state.models.clear();
      // Out of memory says nothing of the device (a model too large, another program's use),
      // nor does a size the kernels refuse (a job's batch of a model too large for 32-bit
      // extents: counted, any job spec could shut every node down); other device errors in a
      // row say it is broken.
      if (why.code() == errc::device_error && why.message().find("out of") == std::string::npos)
        cfg.device_failures->fetch_add(1);
      return to_caf(why);
    };
    try {
      if (inject_device_error)
        throw kernels::compute_error(
            error(errc::device_error,
                  "out of device memory (injected by --device-error-at, a test aid)"));
      // A broken device fails the first assignment in a step (a throw); its models dropped,
      // those after fail making their models again (instantiate returns the error).
      const error broken(errc::device_error,
                         "cudaErrorIllegalAddress: an illegal memory access was encountered "
                         "(injected by --device-broken-from, a test aid)");
      if (inject_broken_device && !self->state.device_broke) {
        self->state.device_broke = true;
        throw kernels::compute_error(broken);
      }
      auto r = inject_broken_device ? expected<assignment_result>(broken)
                                    : run_assignment(self->state, a, shard);
      // Taken back by its job while it ran is no failure of this node's: its owner saw
      // "failed" for each backup another node won.
      const bool taken_back = !r && cfg.cancelled->cancelled(a.id);
      cfg.cancelled->forget(a.id);
      // A device error returned, not thrown (making a model on a broken device), counts as
      // one thrown does: counted only when thrown, a broken GPU failed work for ever.
      if (!r && !taken_back && r.error().code() == errc::device_error)
        return failed_on_device(r.error());
      if (!r) {
        node_metrics::assignments(taken_back ? "cancelled" : "failed").inc();
        tell(taken_back ? node_activity::kind::cancelled : node_activity::kind::failed, 0.0, 0.0);
        return to_caf(r.error());
      }
      cfg.device_failures->store(0);
      node_metrics::assignments("done").inc();
      node_metrics::compute_seconds().inc(r->compute_s);
      node_metrics::step_duration().observe(
          r->compute_s / static_cast<double>(std::max<int64_t>(1, a.local_steps)));
      if (r->compute_s > 0)
        node_metrics::samples_per_second().set(static_cast<double>(r->samples) / r->compute_s);
      tell(node_activity::kind::done,
           r->compute_s > 0 ? static_cast<double>(r->samples) / r->compute_s : 0.0, r->compute_s);
      return std::move(*r);
    } catch (const kernels::compute_error& e) {
      return failed_on_device(e.err());
    } catch (const std::bad_alloc&) {
      // Host memory the budget does not count (a decoded message, a shard) ran out.
      return failed_on_device(error(errc::device_error, "out of host memory"));
    }
  };
  return {
      [=](assign_atom, assignment& a) -> caf::result<assignment_result> {
        // Held from here, a shard still coming too: a restarted uplink cancels what the old
        // one handed out (the core gave that work to other nodes), and cancelled only once
        // computing, one whose shard came after ran every step for nobody, its time counted
        // against --max-hours, the new session's work queued behind it.
        held_assignment held(self->state.config.cancelled, a.id);
        auto& shards = self->state.shards;
        // The cache fetches and decodes the next round's shard on its own thread meanwhile,
        // after this round's (asked first when it is not here: the cache takes requests in
        // the order they come).
        auto prefetch_next = [self, &next = a.next_shard] {
          if (!next.empty() && self->state.shards.count(next) == 0)
            self->send(self->state.cache, prefetch_atom::value, next);
        };
        if (auto it = shards.find(a.shard); it != shards.end()) {
          prefetch_next();
          it->second.last_used = ++self->state.uses;
          auto r = compute(a, *it->second.data);
          if (!r) return std::move(r.error());
          return std::move(*r);
        }
        auto rp = self->make_response_promise<assignment_result>();
        const uint64_t ask = ++self->state.shard_asks;
        self->state.shard_waits.emplace(
            ask, worker_state::shard_wait{self->state.cache.address(), rp, a.shard, std::move(held),
                                          a.id});
        // The cache fails a fetch once no chunk has come for 2 minutes; while chunks come
        // (behind the node's other shards, on a slow link) the worker waits for its own.
        auto asked =
            self->request(self->state.cache, std::chrono::minutes(30), shard_atom::value, a.shard);
        prefetch_next();
        // An ask no longer waited for was answered when its cache stopped.
        std::move(asked).then(
            [=](decoded_shard& d) mutable {
              // Kept to the end: the assignment is held while it computes.
              auto wait = self->state.shard_waits.extract(ask);
              // Kept for the next assignment on it, also where this one was aborted.
              keep_shard(self->state, a.shard, d.data);
              if (wait.empty()) return;
              auto r = compute(a, *d.data);
              if (!r)
                rp.deliver(std::move(r.error()));
              else
                rp.deliver(std::move(*r));
            },
            [=](caf::error& e) mutable {
              if (self->state.shard_waits.erase(ask) == 0) return;
              rp.deliver(e);
            });
        return rp;
      },
      // From the uplink: its job withdrew assignment `id`. One still waiting for its shard ends
      // now (the cache goes on fetching it, for the next); one computing stops at its next
      // step (the uplink's cancellations).
      [=](abort_atom, uint64_t id) {
        auto& waits = self->state.shard_waits;
        for (auto it = waits.begin(); it != waits.end(); ++it)
          if (it->second.assignment_id == id) {
            it->second.answer.deliver(
                to_caf(error(errc::invalid_argument, "assignment aborted by its job")));
            waits.erase(it);
            return;
          }
      },
      [=](update_atom, const std::string& role, caf::actor& replacement) {
        auto& st = self->state;
        if (role != "cache") return;
        st.cache = std::move(replacement);  // restarted by the node supervisor
        // The old cache answers none of what it was asked: those assignments go back to their
        // jobs now (the core hands them out again), their slots free for the next.
        for (auto it = st.shard_waits.begin(); it != st.shard_waits.end();) {
          if (it->second.cache == st.cache.address()) {
            ++it;
            continue;
          }
          it->second.answer.deliver(to_caf(
              error(errc::unavailable, "the node's cache stopped before it had shard " +
                                           it->second.shard.substr(0, 12) + "; it was restarted")));
          it = st.shard_waits.erase(it);
        }
      },
  };
}

}  // namespace

expected<std::unique_ptr<kernels::replica_group>> make_worker_group(
    const std::vector<std::string>& ranks, int cpu_threads) {
  std::vector<std::unique_ptr<kernels::backend>> backends;
  for (const auto& name : ranks) {
    auto b = kernels::make_backend(name, cpu_threads);
    if (!b) return b.error();
    backends.push_back(std::move(*b));
  }
  return kernels::make_replica_group(std::move(backends));
}

caf::actor spawn_worker(caf::actor_system& sys, worker_config config, caf::actor cache) {
  return sys.spawn<caf::detached>(worker_behavior, std::move(config), std::move(cache));
}

}  // namespace gflex
