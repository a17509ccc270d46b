#pragma once
/// @file
/// The embedding API of GPUFlex: run a core or a node, talk to a core as a client, or run
/// core and nodes together in one process. The apps are thin mains over this header; a C++
/// trainer links the installed SDK's `gflex::gflex` (docs/EMBEDDING.md) and uses the same
/// calls. No CAF header is included here.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "gflex/accounts.hpp"
#include "gflex/data_sets.hpp"
#include "gflex/job_status.hpp"
#include "gflex/node_activity.hpp"
#include "gflex/runtime/dataset.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex {

class key_value_store;

/// The SDK's version ("0.2.0"), from libgflex (cmake/gflex_sdk.cmake).
const char* sdk_version() noexcept;

/// The wire protocol version this build speaks; a node with another is refused at join.
inline constexpr uint32_t protocol_version = 11;

/// How to run a core.
struct core_config {
  std::string host = "127.0.0.1";
  uint16_t port = 7400;
  std::filesystem::path data_dir;  ///< LMDB store; required.
  /// A core of several servers (docs/FAILURES.md): "etcd://HOST:PORT,..." keeps the state in
  /// etcd instead of LMDB; the core serves nodes and clients only while it leads. Empty: the
  /// one-machine core on LMDB. A core that loses its leadership ends the whole process at
  /// once with exit code 3 (std::_Exit, from the store's thread: run_core does not return,
  /// no destructor runs), since another core may lead already: run such a core in a
  /// process of its own.
  std::string store_url;
  std::string core_id;  ///< This core's name among the cores (default: HOST:PORT).
  /// HOST:PORT other machines reach this core at, which a leader writes into its record for
  /// the followers to send clients to (default: host:port, which must then not be 0.0.0.0).
  std::string advertise;
  std::string chunk_listen;  ///< HOST:PORT its chunk service listens on (the other cores).
  /// HOST:PORT the other cores reach its chunk service at, where that is not chunk_listen's
  /// address (NAT, a public address on no interface of this machine; chunk_listen may then be
  /// 0.0.0.0:PORT). Default: chunk_listen's address, with the port it got.
  std::string chunk_advertise;
  int64_t leader_lease_s = 5;  ///< TTL of the etcd lease a leader holds.
  /// The store the core keeps its state in, when its caller opened one (run_core does for
  /// store_url); null: LMDB in data_dir.
  std::shared_ptr<key_value_store> shared_store;
  /// Heartbeat interval a node is told to use, and the lease after which a silent node is
  /// taken as lost.
  uint32_t heartbeat_ms = 1000;
  uint32_t lease_ms = 4000;  ///< Checked every lease/4: a hung node is found within 5 s.
  /// The operator's API key (`gflex-core init` writes it to DATA_DIR/operator.key; run_core
  /// reads it from there). Empty: no key is the operator's.
  std::string operator_key;
  /// The process is the core and nothing else (gflex-core): it routes no messages between
  /// other processes, so a peer's message naming another node as its source, and an actor
  /// handle on a node it has no connection to, are refused below CAF (docs/SECURITY.md). Not
  /// for a process that also hosts a pipeline's workers, whose messages it routes.
  bool standalone = false;
  /// Serve plain TCP instead of TLS (run_core logs a warning). Without it, run_core serves
  /// TLS with the credentials `gflex-core init` made in the data directory.
  bool insecure = false;
  /// Unfinished jobs one account may have at a time.
  int max_jobs_per_account = 16;
  /// Shard bytes one account's data sets may hold together (the core keeps them in memory).
  uint64_t max_data_bytes_per_account = uint64_t{4} << 30;
  /// The core's memory the unfinished jobs' models may take, checked at submit: one
  /// account's together, and every account's (0: half of this machine's memory).
  uint64_t max_job_memory_per_account = uint64_t{8} << 30;
  uint64_t max_job_memory = 0;
  /// Sampled community results are re-computed on core-tier workers. When none has been
  /// free for `verify_wait_s` seconds, a job either waits for one ("wait": its status says
  /// so) or uses such results unverified ("accept": with reduced assurance, counted in its
  /// unverified_results).
  std::string unverified = "wait";
  double verify_wait_s = 60.0;
  /// The platform's share of every payment to a node, in [0, 1).
  double fee = 0.1;
  /// What a device-hour costs in a public cloud, credits (1 credit = 1 US dollar): the
  /// default is the on-demand price of an AWS EC2 p3.2xlarge (one V100 GPU), $3.06 an hour,
  /// in us-east-1. `gflex status` compares a job's cost with it.
  double cloud_price = 3.06;
  /// The share of each round's assignments reserved for community nodes with little history
  /// (given fewer than 5 assignments so far), in [0, 1], so that new nodes earn and are
  /// tested. Fractions carry over from round to round: 0.05 of rounds of three is one
  /// assignment in about seven rounds.
  double newcomer_share = 0.05;
  /// Bounds on what one peer may hold or ask for (docs/SECURITY.md): nodes connected from
  /// one address at once, and the data chunks one node may fetch (MiB per second sustained,
  /// requests waiting; one more waiting disconnects it).
  uint32_t max_nodes_per_address = 64;
  uint32_t chunk_mib_per_s = 64;
  uint32_t chunk_queue = 64;
  /// Parameters, updates and exported models larger than this travel between processes as
  /// content-addressed chunks of this size (KiB, 16 to 65536): one network message is capped
  /// at 128 MiB, which whole payloads would limit to about 33 million fp32 parameters. Small
  /// enough that a chunk crosses a slow volunteer uplink well within the lease (1 MiB at 16
  /// Mbit/s: half a second; the core counts each chunk that arrives as a sign of life).
  uint32_t payload_chunk_kib = 1024;
  /// Training samples per data shard of a built-in data set (1 to 1,000,000). A round gives
  /// each of a job's workers its own shard, so a job may have at most train samples / this
  /// many workers: Fashion-MNIST's 60,000 make 20 shards of 3,000 by default, 1,000 of 60.
  int64_t shard_samples = 3000;
  /// A test aid (gflex-core's hidden --crash-job-at-round): every job actor throws while its
  /// Nth round is open (0: never), to exercise the job supervisor's restarts and their limit.
  int crash_job_at_round = 0;
  /// Test aids (gflex-core's hidden --store-commit-delay-ms and --ledger-wait-ms): every
  /// store commit waits this long first, as on a loaded disk or a slow etcd; and how long a
  /// ledger write may take before its outcome is asked (the keeper asks the store, a job the
  /// keeper), so that a test can have writes land after their requests timed out.
  int store_commit_delay_ms = 0;
  int ledger_wait_ms = 60000;
};

/// How to run a node.
struct node_config {
  std::string name;  ///< Shown by the core; defaults to the host name.
  int workers = 1;   ///< Compute slots (one worker actor each) on the CPU.
  /// The node's identity key (node.key, to which its name and reputation are bound) and
  /// its chunk cache; required.
  std::filesystem::path data_dir;
  /// auto (every GPU found, else the CPU), cpu, cuda (every GPU, or those of `gpus`) or
  /// cuda:N. A GPU node's workers each span all its GPUs (a replica group: one stream per
  /// GPU, updates all-reduced with NCCL) and `workers` is ignored.
  std::string backend = "auto";
  int threads_per_worker = 1;  ///< CPU threads per worker (CPU backend).
  std::string gpus;            ///< --gpus "0,2": which CUDA devices (empty: all).
  int streams_per_gpu = 1;     ///< Worker actors per GPU group, each with its own streams.
  /// Device memory all workers together may use on each GPU ("6G"; "0": no limit).
  std::string gpu_memory_limit = "0";
  /// Host memory all CPU workers together may hold for their models ("12G"; "0": no limit;
  /// "auto": three quarters of what the machine has available when the node starts), so
  /// that a job too large for the machine fails its assignments, not the node.
  std::string memory_limit = "auto";
  /// Disk the chunk cache (data_dir/chunks) may take ("20G"; "0": no limit): past it the
  /// least recently used chunks are removed.
  std::string cache_limit = "10G";
  /// Told what the node does (from the node's threads: it must be quick and thread-safe);
  /// empty: nobody listens.
  std::function<void(const node_activity&)> on_activity;
  /// community (the default: results are checked and sampled for verification) or core (the
  /// platform's own machines: trusted, and they verify others' work).
  node_tier tier = node_tier::community;
  /// The join token (`gflex-core token create`); its tier must be `tier`.
  std::string token;
  /// The core's certificate bundle (its core-cert.pem): the link runs over TLS and accepts
  /// only that core. Required unless `insecure`.
  std::filesystem::path core_cert;
  bool insecure = false;  ///< Plain TCP, unencrypted (a warning is logged).
  /// The price asked, credits per device-hour (one worker for an hour), in [0, 1e6].
  double price = 1.0;
  /// Stop offering compute after this many device-hours (0: no limit): the node leaves. Every
  /// assignment's time counts, however it ends (taken back, failed), and a running one's as
  /// it runs; counted per run of the node.
  double max_hours = 0.0;
  /// Take assignments only while other processes leave the machine idle (they use less
  /// than half of its CPUs).
  bool idle_only = false;
  /// The other servers of a core of several (host, port), tried in turn after the one
  /// run_node is given when a core cannot be reached: only the leader serves nodes.
  std::vector<std::pair<std::string, uint16_t>> other_cores;
};

/// Makes a new core's credentials in `data_dir`: its TLS authority, certificate and the
/// bundle nodes and clients pin (see <gflex/runtime/tls_credentials.hpp>), and the
/// operator's API key in DATA_DIR/operator.key (mode 0600). Returns the authority's
/// fingerprint. Refuses, changing nothing, when the directory already has credentials.
expected<std::string> init_core(const std::filesystem::path& data_dir);

/// Runs a core until SIGINT or SIGTERM; returns the process exit code (with a store_url,
/// a lost leadership ends the process instead, with exit code 3). While it runs, its
/// own handlers take the two signals (in any thread); the caller's are put back when it
/// returns. The data directory must have been made by init_core: the operator key is read
/// from it, and (unless `insecure`) the TLS credentials.
int run_core(const core_config& config);

class client;

/// A core running in this process, as run_core lends it to a service beside it (the
/// dashboard): it opens clients that reach the core without a socket. Each one's key is
/// checked at its first request as a remote client's is, and it sees what that key may see.
class local_core {
 public:
  virtual ~local_core() = default;
  virtual client connect(const std::string& api_key) = 0;
};

/// Something that runs beside a core in its process; destroyed before the core stops.
class core_service {
 public:
  virtual ~core_service() = default;
};

/// Starts a service once the core listens; an error stops the core (exit code 2).
using core_service_starter =
    std::function<expected<std::unique_ptr<core_service>>(local_core& core)>;

/// run_core with a service beside the core (`start` may be empty: none).
int run_core(const core_config& config, const core_service_starter& start);

/// Runs a node joined to the core at host:port until SIGINT or SIGTERM, reconnecting when
/// the core goes away, then ends the process with its exit code (non-zero when the core
/// refuses the node): it does not return once the node has started. CAF 0.17's teardown
/// would wait for the core to drop its proxies of the node's workers, after a refused hello
/// for ever, so the node flushes its logs and calls std::_Exit. Run it in a process of its
/// own (gflex-node does); it returns only when the node cannot start (1 without the peer
/// guards, 2 for bad TLS credentials or a configuration it cannot start).
int run_node(const node_config& config, const std::string& host, uint16_t port);

/// How a client reaches a core and who it is there.
struct client_options {
  /// An account's API key or the operator's; every request carries it.
  std::string api_key;
  /// The core's certificate bundle (its core-cert.pem): TLS, pinned to that core.
  std::filesystem::path core_cert;
  bool insecure = false;  ///< Plain TCP instead (needs a core run with --insecure).
  /// A core of several: the other cores' addresses (host, port). When the link to the one it
  /// uses is lost, the client dials it again, then these in turn (a follower names the
  /// leader, and the client goes there). A follower that cannot read the replicated state,
  /// or knows no leader, sends the client on to these too; a wrong key stays final.
  std::vector<std::pair<std::string, uint16_t>> other_cores;
};

/// What client::follow reports as a job runs. Each callback is optional.
struct job_events {
  /// Rounds were committed since the last report: the status after them and the number of
  /// rounds committed before (polling may see several at once).
  std::function<void(const job_status&, int64_t previous_round)> on_round;
  /// The job's state changed (queued, running, paused, done, failed, cancelled).
  std::function<void(const job_status&)> on_state;
  /// A node joined the cluster (those connected when following starts are reported first).
  /// Node events need the operator's key: the core lists its nodes to the operator only, and
  /// with an account's key they are not reported.
  std::function<void(const node_status&)> on_node_joined;
  /// A node left the cluster or was found silent past its lease (operator's key only).
  std::function<void(const node_status&)> on_node_lost;
  /// The job paid for committed rounds: `micro` more micro-credits spent since the last
  /// report (a metered job only).
  std::function<void(const job_status&, int64_t micro)> on_bill;
};

/// A connection to a core, for submitting and following jobs. A client sees and changes
/// only its account's jobs and account; the operator's key sees everything. One client may
/// be used from several threads at once (its requests then run side by side).
class client {
 public:
  /// Connects to the core at host:port; errc::io_error when it cannot, errc::bad_format
  /// for a certificate bundle that is not one.
  static expected<client> connect(const std::string& host, uint16_t port,
                                  const client_options& options);

  client(client&&) noexcept;
  client& operator=(client&&) noexcept;
  ~client();

  /// Who this client's key authenticates as: "operator" or an account (user/NAME). The
  /// first request checks the key; errc::permission_denied for one the core does not know.
  expected<std::string> principal();

  /// Submits a job spec (TOML text); returns the job id. The core validates the spec and
  /// refuses bad ones with an error naming the key. An answer lost (the link, a busy core, a
  /// failover) is asked for again, for up to two minutes, with the same submission id, which
  /// the core answers with the job it made: never two jobs of one call.
  expected<std::string> submit(const std::string& spec_toml);
  /// As above, with the caller's submission id (1 to 64 of [A-Za-z0-9_-]): a program that
  /// restarts and submits again with the id it kept gets the job it made before, not a
  /// second one (a submission id is its owner's: other accounts' ids do not meet it). The
  /// same id with another spec is refused (invalid_argument).
  expected<std::string> submit(const std::string& spec_toml, const std::string& submission);
  expected<job_status> status(const std::string& job_id);
  expected<std::vector<job_status>> jobs();
  expected<std::vector<node_status>> nodes();
  expected<void> cancel(const std::string& job_id);
  /// The trained parameters of the last committed round, as checkpoint bytes.
  expected<std::vector<uint8_t>> fetch(const std::string& job_id);
  /// The same parameters written into the caller's buffer, block after block in the model's
  /// layout order (as plan_model lists them); `out` must hold exactly the model's parameter
  /// count (the error says how many it holds). Returns the checkpoint's tensor names.
  expected<std::vector<std::string>> fetch_parameters(const std::string& job_id,
                                                      std::span<float> out);
  /// Follows a job to its end, polling every `poll` and calling `on_status` with each status
  /// seen; returns the final one.
  expected<job_status> wait(const std::string& job_id,
                            const std::function<void(const job_status&)>& on_status = {},
                            std::chrono::milliseconds poll = std::chrono::milliseconds(200));
  /// Follows a job to its end, polling its status (and, for the node events, the cluster's
  /// nodes) every `poll`, and calls `events` with what changed; returns the final status. A
  /// node listing that fails skips that poll's node events (logged once until one works).
  expected<job_status> follow(const std::string& job_id, const job_events& events,
                              std::chrono::milliseconds poll = std::chrono::milliseconds(200));

  /// Uploads `data` as the data set `name` of this key's account (replacing one of that
  /// name): its splits cut into shards of at most about 8 MiB, sent in order; the core
  /// checks each and stores the set with the last. Returns what the core stored. The
  /// training split is cut into at least `min_train_shards` shards where it has that many
  /// samples (a round gives each of its workers a different shard); 0 cuts one per 3,000
  /// samples, as the core cuts its built-in sets. A set the core's limits refuse (parts,
  /// the test split's size, an empty split, a test split of other values per sample,
  /// classes or token flag than the training split) is refused before a byte is sent.
  expected<data_set_info> push_data(const std::string& name, const dataset_splits& data,
                                    int64_t min_train_shards = 0);
  /// This account's data sets (the operator's key: everyone's).
  expected<std::vector<data_set_info>> data_sets();
  expected<void> remove_data(const std::string& name);

  /// Operator: opens a ledger account (user/NAME) and returns its new API key; an existing
  /// or malformed id is refused.
  expected<std::string> create_account(const std::string& id);
  /// Operator: a new API key of the account `id` (user/NAME), whose old key is refused from
  /// then on (in sessions opened with it too); an account without a key (revoked) gets one.
  /// An account the core does not hold is errc::invalid_argument.
  expected<std::string> replace_api_key(const std::string& id);
  /// Operator: deletes the API key of the account `id`: the account keeps its credits and
  /// jobs, and no key opens it until replace_api_key gives it one. An account without a key
  /// is ok; one the core does not hold is errc::invalid_argument.
  expected<void> revoke_api_key(const std::string& id);
  /// Operator: credits `micro` micro-credits to an account from outside, as the payment named
  /// `reference` (1-128 characters of A-Z a-z 0-9 . _ -); returns the entry's sequence number.
  /// A reference is credited once: sent again (after a timeout, say), the credit is answered
  /// with the entry that booked it and nothing more is credited.
  expected<uint64_t> credit_account(const std::string& id, int64_t micro,
                                    const std::string& reference);
  expected<account_info> account(const std::string& id);
  /// Checks the whole ledger (chain, balances, escrow of ended jobs).
  expected<ledger_report> verify_ledger();
  /// Raises a paused or running metered job's budget by `micro`; a paused job resumes.
  expected<void> topup(const std::string& job_id, int64_t micro);

  /// Operator: a new join token for `tier` ("community" or "core"), valid for `lifetime_s`
  /// seconds (0: until revoked), that admits `uses` node keys (0: any number; negative: the
  /// tier's default, 1 for community tokens and any number for core tokens). It binds to the
  /// keys that use it: a node that joined with it may always rejoin with it.
  expected<std::string> create_token(const std::string& tier, int64_t lifetime_s,
                                     int64_t uses = -1);
  /// Operator: every join token's record.
  expected<std::vector<join_token_record>> tokens();
  /// Operator: revokes the token with this id (or a unique prefix of at least 6 digits).
  expected<void> revoke_token(const std::string& id);

  struct impl;

 private:
  explicit client(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
  friend class embedded_cluster;
  friend struct in_process_core;
};

/// Core and nodes in one process (no sockets; the same actors and job path).
struct embedded_config {
  int nodes = 3;
  int workers_per_node = 1;
  std::filesystem::path data_dir;  ///< Empty: a temporary directory, removed at the end.
};

/// A core and `nodes` core-tier nodes in this process (no sockets; the same actors and job
/// path as separate processes), up until the object is destroyed: a trainer submits, follows,
/// fetches and cancels any number of jobs through `client()`, which holds the operator's key.
class embedded_cluster {
 public:
  static expected<embedded_cluster> start(const embedded_config& config);
  embedded_cluster(embedded_cluster&&) noexcept;
  embedded_cluster& operator=(embedded_cluster&&) noexcept;
  /// Stops the nodes, then the core, and waits for the core's store to close; the data
  /// directory is then free for another cluster, and a temporary one is removed, even while a
  /// client moved out of the cluster lives on.
  ~embedded_cluster();

  /// The operator's client of this cluster. The cluster's actor system is not the client's:
  /// it may be moved out (the next call lends a new one) or assigned to, and one moved out
  /// may outlive the cluster: its requests then fail at once (errc::unavailable, "the embedded
  /// cluster that lent this client has ended"), and the actor system, with no core or node
  /// left in it, ends with the last such client.
  gflex::client& client();
  /// The nodes' names ("node-1", ...).
  std::vector<std::string> node_names() const;

  struct state;

 private:
  friend expected<job_status> run_embedded(const embedded_config&, const std::string&,
                                           const std::function<void(const job_status&)>&);
  explicit embedded_cluster(std::unique_ptr<state> s);
  static expected<std::unique_ptr<state>> start_core(const embedded_config& config);
  static error add_nodes(state& s, const embedded_config& config);
  std::unique_ptr<state> s_;
};

/// Runs one job on an embedded cluster to its end, calling `on_status` as it progresses;
/// returns the final status. A SIGINT or SIGTERM meanwhile cancels the job and returns
/// errc::unavailable ("interrupted"), the cluster and its temporary directory gone; the
/// program's own handlers are back once it returns.
expected<job_status> run_embedded(const embedded_config& config, const std::string& spec_toml,
                                  const std::function<void(const job_status&)>& on_status);

}  // namespace gflex
