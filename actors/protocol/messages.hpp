#pragma once
/// @file
/// The protocol between core, nodes and clients: atoms, message structs with their CAF
/// `inspect` overloads, and the mapping of gflex errors onto caf::error. Included only by
/// actor sources (it pulls in CAF). docs/PROTOCOL.md describes every exchange.

#include <caf/all.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "access.hpp"
#include "gflex/accounts.hpp"
#include "gflex/data_sets.hpp"
#include "gflex/gflex.hpp"
#include "gflex/job_status.hpp"
#include "gflex/runtime/error.hpp"
#include "ledger_book.hpp"

namespace gflex {

// -- atoms: each names the verb of a request --------------------------------------------------

using hello_atom = caf::atom_constant<caf::atom("hello")>;         ///< node -> core: join
using beat_atom = caf::atom_constant<caf::atom("heartbeat")>;      ///< node -> registry
using bye_atom = caf::atom_constant<caf::atom("bye")>;             ///< node -> registry: leave
using assign_atom = caf::atom_constant<caf::atom("assign")>;       ///< job -> worker
using abort_atom = caf::atom_constant<caf::atom("abort")>;         ///< job -> worker: cancel
using submit_atom = caf::atom_constant<caf::atom("submit")>;       ///< client -> core
using status_atom = caf::atom_constant<caf::atom("status")>;       ///< client -> core
using jobs_atom = caf::atom_constant<caf::atom("jobs")>;           ///< client -> core
using nodes_atom = caf::atom_constant<caf::atom("nodes")>;         ///< client -> core
using cancel_atom = caf::atom_constant<caf::atom("cancel")>;       ///< client -> core
using fetch_atom = caf::atom_constant<caf::atom("fetch")>;         ///< client -> core
using chunk_atom = caf::atom_constant<caf::atom("chunk")>;         ///< node -> core data
using acquire_atom = caf::atom_constant<caf::atom("acquire")>;     ///< job -> market
using release_atom = caf::atom_constant<caf::atom("release")>;     ///< job -> market
using offer_atom = caf::atom_constant<caf::atom("offer")>;         ///< registry -> market
using withdraw_atom = caf::atom_constant<caf::atom("withdraw")>;   ///< registry -> market
using commit_atom = caf::atom_constant<caf::atom("commit")>;       ///< job -> store
using read_atom = caf::atom_constant<caf::atom("read")>;           ///< any -> store
using scan_atom = caf::atom_constant<caf::atom("scan")>;           ///< any -> store
using keys_atom = caf::atom_constant<caf::atom("keys")>;           ///< any -> store
using update_atom = caf::atom_constant<caf::atom("update")>;       ///< a restarted sibling
using progress_atom = caf::atom_constant<caf::atom("progress")>;   ///< job -> job_supervisor
using tick_atom = caf::atom_constant<caf::atom("tick")>;           ///< timers, to self
using stop_atom = caf::atom_constant<caf::atom("stop")>;           ///< to a process's owner
using sample_atom = caf::atom_constant<caf::atom("sample")>;       ///< job -> reputation
using credit_atom = caf::atom_constant<caf::atom("credit")>;       ///< job -> reputation
using reject_atom = caf::atom_constant<caf::atom("reject")>;       ///< job -> reputation
using verify_atom = caf::atom_constant<caf::atom("verify")>;       ///< job -> verifier
using bar_atom = caf::atom_constant<caf::atom("bar")>;             ///< reputation -> market
using score_atom = caf::atom_constant<caf::atom("score")>;         ///< reputation -> market
using open_atom = caf::atom_constant<caf::atom("open")>;           ///< any -> ledger
using transfer_atom = caf::atom_constant<caf::atom("transfer")>;   ///< any -> ledger
using fence_atom = caf::atom_constant<caf::atom("fence")>;         ///< job_supervisor -> ledger
using settle_atom = caf::atom_constant<caf::atom("settle")>;       ///< job -> ledger
using booked_atom = caf::atom_constant<caf::atom("booked")>;       ///< job -> ledger
using account_atom = caf::atom_constant<caf::atom("account")>;     ///< client -> core
using ledger_atom = caf::atom_constant<caf::atom("ledger")>;       ///< client -> core
using topup_atom = caf::atom_constant<caf::atom("topup")>;         ///< client -> core
using credit_in_atom = caf::atom_constant<caf::atom("creditin")>;  ///< operator -> core
using auth_atom = caf::atom_constant<caf::atom("auth")>;  ///< client -> core; core -> gatekeeper
using api_key_atom = caf::atom_constant<caf::atom("apikey")>;     ///< core -> gatekeeper
using token_atom = caf::atom_constant<caf::atom("token")>;        ///< operator -> core
using revoke_atom = caf::atom_constant<caf::atom("revoke")>;      ///< operator -> core
using admit_atom = caf::atom_constant<caf::atom("admit")>;        ///< core -> gatekeeper
using serve_atom = caf::atom_constant<caf::atom("serve")>;        ///< chunk source: session, cache
using rate_atom = caf::atom_constant<caf::atom("rate")>;          ///< session -> market
using dpush_atom = caf::atom_constant<caf::atom("dpush")>;        ///< client -> core: data upload
using dlist_atom = caf::atom_constant<caf::atom("dlist")>;        ///< client -> core: data sets
using drm_atom = caf::atom_constant<caf::atom("drm")>;            ///< client -> core: remove one
using earned_atom = caf::atom_constant<caf::atom("earned")>;      ///< node -> session: its credits
using expire_atom = caf::atom_constant<caf::atom("expire")>;      ///< timers, to self: drop stale
using shard_atom = caf::atom_constant<caf::atom("shard")>;        ///< worker -> cache: decoded
using prefetch_atom = caf::atom_constant<caf::atom("prefetch")>;  ///< worker -> cache: ahead

// -- messages -----------------------------------------------------------------------------------

/// node -> core (hello_atom): a node asks to join. The core checks `protocol` first and
/// refuses any other version; it offers `workers` compute slots to the market and sends
/// their assignments to `uplink`, the only handle of the node it holds (never a worker's).
/// The longest device description a hello may carry; the core refuses a longer one.
inline constexpr size_t max_device_description_chars = 512;

struct node_hello {
  uint32_t protocol = 0;
  std::string name;
  std::string device;  ///< What computes: "cpu: OpenBLAS ..." or the GPU group's description.
  uint64_t device_memory = 0;
  std::vector<gpu_status> gpus;  ///< The GPUs its workers use, as measured at start.
  uint32_t workers = 0;          ///< How many assignments it runs at once (1-1024).
  caf::actor uplink;
  uint8_t tier = 0;                 ///< gflex::node_tier: community (0) or core (1).
  std::string credential;           ///< The core's secret; required for the core tier.
  int64_t price = 0;                ///< Asked, micro-credits per device-hour.
  double throughput = 0.0;          ///< Calibrated, fashion-mlp samples per second per worker.
  std::vector<uint8_t> public_key;  ///< The node's Ed25519 key: its identity.
  std::vector<uint8_t> proof;       ///< Its signature of hello_message(protocol, name).
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_hello& x) {
  return f(caf::meta::type_name("node_hello"), x.protocol, x.name, x.device, x.device_memory,
           x.gpus, x.workers, x.uplink, x.tier, x.credential, x.price, x.throughput, x.public_key,
           x.proof);
}

/// A round's encoded parameters (a Cap'n Proto Tensor, f32 [parameter_count]), made once and
/// shared by every assignment of the round inside a process, never copied per assignment.
/// When they are larger than one payload chunk, `chunks` names their chunks (payload_chunks.hpp)
/// and they cross the network as those.
struct shared_params {
  std::vector<uint8_t> bytes;
  uint64_t chunk_bytes = 0;         ///< The chunk size `chunks` were cut with.
  std::vector<std::string> chunks;  ///< Digests; empty when the bytes travel inline.

  /// The bytes as they travel inline to a node in another process: packed (zstd, byte
  /// planes), made once by the first session that sends them. A node in the core's process
  /// reads `bytes` and pays for no packing.
  const std::vector<uint8_t>& wire_bytes() const;

 private:
  mutable std::once_flag packed_once_;
  mutable std::vector<uint8_t> packed_;
};

/// job -> worker (assign_atom): run `local_steps` inner steps from `params` on the shard whose
/// content address is `shard`, and answer with an assignment_result. Deterministic given
/// (params, shard, seed, hyper-parameters).
struct assignment {
  uint64_t id = 0;  ///< Unique (random 64-bit); a result must name it.
  std::string job_id;
  uint64_t round = 0;
  std::string workload;
  /// A user-defined model's declaration (a `[model]` table as TOML); empty for a built-in
  /// workload. The node plans it with its own kernels: a model is data, never code.
  std::string model;
  std::string shard;  ///< BLAKE2b-256 hex of the shard chunk.
  /// The shard this worker's place in the round has next round (empty in the last round, or
  /// for a re-computation): a hint, so that the node fetches and decodes it while it computes.
  /// Nothing depends on it being right.
  std::string next_shard;
  uint64_t seed = 0;
  int64_t local_steps = 1;
  int64_t batch_size = 128;
  float lr = 1e-3f;
  float weight_decay = 0.0f;
  bool plain_sgd = false;
  uint8_t compression = 0;  ///< gflex::compression of the answer.
  uint8_t precision = 0;    ///< gflex::math_precision the job allows its GEMMs.
  /// On the wire, the parameters as a Cap'n Proto Tensor, f32 [parameter_count], when they fit
  /// in one payload chunk; otherwise empty, and `params_chunks` names the chunks of their
  /// `params_bytes` bytes, which the node asks its session for (chunk_atom).
  std::vector<uint8_t> params;
  std::vector<std::string> params_chunks;
  uint64_t params_bytes = 0;
  /// A re-computation for the verifier: always sent with fp32 answers.
  bool verify = false;
  /// Inside a process (job -> session, uplink -> worker): the parameters, shared. Never
  /// serialized; the node's session turns it into `params` or `params_chunks`.
  std::shared_ptr<const shared_params> params_ref;
  /// Inside the core (job or verifier -> session): how long its asker waits for the answer,
  /// in seconds (a job's deadline_s, a re-computation's bound); 0: the longest a spec may
  /// give. Never serialized: the session waits for the node's answer that long and a little
  /// more.
  double answer_within_s = 0.0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, assignment& x) {
  return f(caf::meta::type_name("assignment"), x.id, x.job_id, x.round, x.workload, x.model,
           x.shard, x.next_shard, x.seed, x.local_steps, x.batch_size, x.lr, x.weight_decay,
           x.plain_sgd, x.compression, x.precision, x.params, x.params_chunks, x.params_bytes,
           x.verify);
}

/// The encoded parameters an assignment carries, wherever they are.
inline std::span<const uint8_t> params_of(const assignment& a) {
  if (a.params_ref) return a.params_ref->bytes;
  return a.params;
}

/// worker -> job: the pseudo-gradient theta_start - theta_end of an assignment.
struct assignment_result {
  uint64_t assignment_id = 0;
  /// Cap'n Proto Update (fp32 or int8). From a node, when larger than one payload chunk, it is
  /// empty and `update_chunks` names the chunks of its `update_bytes` bytes, which the session
  /// asks the node's uplink for (chunk_atom) and puts back here before the job sees it.
  std::vector<uint8_t> update;
  std::vector<std::string> update_chunks;
  uint64_t update_bytes = 0;
  double loss = 0.0;  ///< Mean training loss over the inner steps.
  int64_t samples = 0;
  double compute_s = 0.0;
  /// The node's signature of result_message(assignment_id, update); checked first.
  std::vector<uint8_t> signature;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, assignment_result& x) {
  return f(caf::meta::type_name("assignment_result"), x.assignment_id, x.update, x.update_chunks,
           x.update_bytes, x.loss, x.samples, x.compute_s, x.signature);
}

/// What a node may send to its session, the only core handle it ever holds (docs/PROTOCOL.md,
/// "Sessions"). Anything else it sends is dropped and counted.
/// - (beat_atom): renews the node's lease.
/// - (bye_atom): the node leaves; the session ends.
/// - (chunk_atom, digest) -> bytes: a data chunk, within the session's request bounds.
/// - (earned_atom) -> micro-credits: what the node has been paid for validated results so far
///   (looked up at most every 2 s; asked more often, the session answers what it last saw).
using node_session_actor =
    caf::typed_actor<caf::reacts_to<beat_atom>, caf::reacts_to<bye_atom>,
                     caf::replies_to<chunk_atom, std::string>::with<std::vector<uint8_t>>,
                     caf::replies_to<earned_atom>::with<int64_t>>;

/// What the core's own actors send to a session (refused from any other process):
/// - (assign_atom, worker index, assignment) -> assignment_result: the session sends it to the
///   node's uplink and checks the answer (it names the assignment, its figures are finite,
///   compute_s is at most what the session measured).
/// - (abort_atom, assignment id): the assignment is no longer needed.
/// - (serve_atom, data server): a restarted data server.
/// - (tick_atom) and (tick_atom, assignment id): its own timers (the chunks it serves, the
///   beats it sends for a node while that node's answer comes in).
using node_session_internal = node_session_actor::extend<
    caf::replies_to<assign_atom, uint32_t, assignment>::with<assignment_result>,
    caf::reacts_to<abort_atom, uint64_t>, caf::reacts_to<serve_atom, caf::actor>,
    caf::reacts_to<tick_atom>, caf::reacts_to<tick_atom, uint64_t>>;

/// What a node's session may send to the node's uplink (the only node handle the core holds):
/// - (assign_atom, worker index, assignment) -> assignment_result.
/// - (abort_atom, assignment id).
/// - (bye_atom, reason): the core is ending this session, and says why.
/// - (chunk_atom, digest) -> bytes: a chunk of an answer it sent with `update_chunks`.
using node_uplink_actor =
    caf::typed_actor<caf::replies_to<assign_atom, uint32_t, assignment>::with<assignment_result>,
                     caf::replies_to<chunk_atom, std::string>::with<std::vector<uint8_t>>,
                     caf::reacts_to<abort_atom, uint64_t>, caf::reacts_to<bye_atom, std::string>>;

/// core -> client: the answer to (fetch_atom, job id, offset): the bytes of a job's exported
/// model (a checkpoint) from `offset`, at most one payload chunk of them. A client asks from 0
/// and on until it has `total`; every part of one export has the same `step`, and a part with
/// another step means a newer export replaced it (the client starts again).
struct model_part {
  std::vector<uint8_t> bytes;
  uint64_t offset = 0;
  uint64_t total = 0;
  int64_t step = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, model_part& x) {
  return f(caf::meta::type_name("model_part"), x.bytes, x.offset, x.total, x.step);
}

/// What a client may send to its session, the handle the front door gives it for its API key
/// (auth_atom); the same requests as docs/PROTOCOL.md lists, without the key, answered for
/// the key's principal. Anything else is dropped and counted.
using client_session_actor = caf::typed_actor<
    caf::replies_to<submit_atom, std::string>::with<std::string>,
    caf::replies_to<submit_atom, std::string, std::string>::with<std::string>,
    caf::replies_to<status_atom, std::string>::with<job_status>,
    caf::replies_to<jobs_atom>::with<std::vector<job_status>>,
    caf::replies_to<nodes_atom>::with<std::vector<node_status>>,
    caf::replies_to<cancel_atom, std::string>::with<caf::ok_atom>,
    caf::replies_to<fetch_atom, std::string, uint64_t>::with<model_part>,
    caf::replies_to<topup_atom, std::string, int64_t>::with<caf::ok_atom>,
    caf::replies_to<account_atom, std::string>::with<account_info>,
    caf::replies_to<open_atom, std::string>::with<std::string>,
    caf::replies_to<update_atom, api_key_atom, std::string>::with<std::string>,
    caf::replies_to<revoke_atom, api_key_atom, std::string>::with<caf::ok_atom>,
    caf::replies_to<credit_in_atom, std::string, int64_t, std::string>::with<uint64_t>,
    caf::replies_to<ledger_atom>::with<ledger_report>,
    caf::replies_to<token_atom, std::string, int64_t, int64_t>::with<std::string>,
    caf::replies_to<token_atom>::with<std::vector<join_token_record>>,
    caf::replies_to<revoke_atom, std::string>::with<caf::ok_atom>,
    caf::replies_to<dpush_atom, std::string, data_part>::with<data_set_info>,
    caf::replies_to<dlist_atom>::with<std::vector<data_set_info>>,
    caf::replies_to<drm_atom, std::string>::with<caf::ok_atom>>;

/// core -> client: the answer to (auth_atom, API key, link).
struct client_welcome {
  std::string principal;         ///< Whom the key authenticates: user/NAME or operator.
  client_session_actor session;  ///< Where its requests go from now on.
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, client_welcome& x) {
  return f(caf::meta::type_name("client_welcome"), x.principal, x.session);
}

/// core -> node: the answer to node_hello.
struct node_welcome {
  uint32_t protocol = 0;
  std::string node_id;
  uint32_t heartbeat_ms = 1000;
  node_session_actor session;  ///< Where heartbeats, bye and chunk requests go.
  /// Payloads larger than this travel as chunks of this size, both ways.
  uint64_t payload_chunk_bytes = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_welcome& x) {
  return f(caf::meta::type_name("node_welcome"), x.protocol, x.node_id, x.heartbeat_ms, x.session,
           x.payload_chunk_bytes);
}

/// A compute slot as the market hands it out.
struct worker_slot {
  caf::actor worker;
  std::string node_id;
  std::string node_name;
  uint8_t tier = 0;                 ///< gflex::node_tier of its node.
  int64_t price = 0;                ///< Micro-credits per device-hour its node asks.
  double throughput = 0.0;          ///< Its calibrated samples per second.
  std::vector<uint8_t> public_key;  ///< Its node's key, which signs its results.
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, worker_slot& x) {
  return f(caf::meta::type_name("worker_slot"), x.worker, x.node_id, x.node_name, x.tier, x.price,
           x.throughput, x.public_key);
}

/// market -> job: the answer to acquire: the slots, and why others were left out.
struct acquire_reply {
  std::vector<worker_slot> slots;
  int64_t busy = 0;
  int64_t wrong_tier = 0;
  int64_t too_expensive = 0;
  int64_t low_reputation = 0;
  int64_t avoided = 0;  ///< Of nodes the job avoids (its work ran out of their memory).
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, acquire_reply& x) {
  return f(caf::meta::type_name("acquire_reply"), x.slots, x.busy, x.wrong_tier, x.too_expensive,
           x.low_reputation, x.avoided);
}

/// job -> verifier (verify_atom): re-run `work` on a core-tier worker and answer with the
/// relative L2 distance of `claimed` (the decoded update a node returned) from the result,
/// the ratio of their norms, and the re-computation's compute seconds.
struct verify_request {
  assignment work;
  std::vector<float> claimed;
  /// The job's [round] deadline_s (0: the longest a spec may give): how long the work takes
  /// where it was done, from which the verifier bounds its re-computation.
  double deadline_s = 0.0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, verify_request& x) {
  return f(caf::meta::type_name("verify_request"), x.work, x.claimed, x.deadline_s);
}

/// A batch of writes for the store, applied in one LMDB transaction.
struct store_batch {
  std::vector<std::string> keys;
  std::vector<std::vector<uint8_t>> values;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, store_batch& x) {
  return f(caf::meta::type_name("store_batch"), x.keys, x.values);
}

// -- inspect overloads of the types the public headers define (they stay free of CAF) ------

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, gpu_status& x) {
  return f(caf::meta::type_name("gpu_status"), x.ordinal, x.name, x.compute_capability,
           x.memory_bytes, x.memory_limit, x.sm_count, x.gemm_tflops, x.h2d_gbps);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, posting& x) {
  return f(caf::meta::type_name("posting"), x.account, x.amount);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, data_set_info& x) {
  return f(caf::meta::type_name("data_set_info"), x.owner, x.name, x.train_samples, x.test_samples,
           x.sample_values, x.classes, x.tokens, x.bytes, x.train_shards, x.test_shards,
           x.parts_received, x.unusable);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, data_part& x) {
  return f(caf::meta::type_name("data_part"), x.index, x.count, x.test, x.shard);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, account_info& x) {
  return f(caf::meta::type_name("account_info"), x.id, x.balance, x.recent);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, ledger_report& x) {
  return f(caf::meta::type_name("ledger_report"), x.ok, x.problem, x.entries, x.accounts, x.issued,
           x.in_escrow, x.stale_escrow, x.settled_jobs, x.settled_rounds);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, join_token_record& x) {
  return f(caf::meta::type_name("join_token_record"), x.id, x.tier, x.created_unix, x.expires_unix,
           x.revoked, x.joins, x.uses, x.keys, x.closed);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, round_point& x) {
  return f(caf::meta::type_name("round_point"), x.round, x.train_loss, x.test_loss, x.test_accuracy,
           x.evaluated, x.elapsed_s);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, job_status& x) {
  return f(caf::meta::type_name("job_status"), x.job_id, x.name, x.workload, x.owner, x.state,
           x.detail, x.round, x.rounds, x.test_accuracy, x.test_loss, x.tested_samples,
           x.test_samples, x.train_loss, x.nodes, x.bytes_sent, x.bytes_received, x.elapsed_s,
           x.eta_s, x.late_results, x.rejected_results, x.verified_results, x.rollbacks,
           x.screened_results, x.unverified_results, x.compute_s, x.recompute_s, x.account,
           x.budget, x.credits_spent, x.credits_held, x.device_hours, x.cloud_cost, x.history);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_status& x) {
  return f(caf::meta::type_name("node_status"), x.node_id, x.name, x.device, x.workers, x.gpus,
           x.last_seen_s, x.tier, x.score, x.streak, x.validated, x.verified, x.rejected, x.flagged,
           x.credited_s, x.earned, x.dropped, x.last_rejection);
}

/// Registers every message type above (and the vectors of them that travel) with `cfg`.
/// Core, nodes and clients must all call it: CAF matches types by these names.
void register_message_types(caf::actor_system_config& cfg);

/// How often each end of a link sends a heartbeat, and how long a link may stay silent
/// before it is closed (configure_actor_system).
inline constexpr std::chrono::seconds link_heartbeat{10};
inline constexpr std::chrono::seconds link_silence{180};

/// Applies the project's defaults to an actor system configuration: message types, the
/// error category, scheduler fairness (max-throughput, so one busy actor cannot starve
/// the others), and the closing of links that go silent (link_silence).
void configure_actor_system(caf::actor_system_config& cfg);

/// The CAF error category of gflex errors.
inline constexpr caf::atom_value error_category = caf::atom("gflex");

/// A gflex error as a caf::error (code, category "gflex", message in the context), so that
/// it crosses the network intact.
caf::error to_caf(const error& e);

/// The gflex error inside a caf::error; CAF's own errors (timeouts, unreachable peers)
/// become errc::io_error with CAF's rendering of them.
error from_caf(const caf::error& e, caf::actor_system* sys = nullptr);

}  // namespace gflex
