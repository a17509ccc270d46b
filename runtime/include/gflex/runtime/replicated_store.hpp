#pragma once
/// @file
/// gflex::replicated_store: a core's state kept in etcd, for a core of several servers, one
/// of which leads at a time (docs/FAILURES.md).
///
/// - Membership and leadership: each core holds an etcd lease (renewed every third of its
///   TTL) with its member record attached (/gflex/member/ID: the address of its chunk
///   service), created only where no other live core holds it: a core id is one core's. The
///   leader is the core whose record /gflex/leader (attached to its lease) is;
///   a core wins it with a transaction that creates the key only where none exists.
/// - Fencing: every commit is one etcd transaction that applies only while /gflex/leader
///   still has the revision this core created it at; a core whose lease lapsed, or that
///   another core replaced, cannot commit. Each commit also records its writer
///   (/gflex/writer: "ID REVISION N"), so etcd's history shows who committed what, and
///   compares the writer's revision: a commit whose answer was lost is settled (it landed, or
///   it never will) before the next one, so none lands late over a later one; a leader that
///   cannot settle it within twice its lease's TTL gives up the leadership. A commit etcd
///   refuses outright (a 4xx: its space quota full) wrote nothing and fails at once.
/// - Values of `chunk_threshold` bytes or more (parameters, checkpoints, data sets) are too
///   large for etcd, as are a commit's further values once those it keeps in etcd pass
///   `inline_limit` bytes: each is a file named by its digest in every core's chunk directory,
///   pushed to every live member before the commit that names it, and etcd holds a
///   reference. A member that does not take a chunk within its lease's TTL and 5 s (its chunk
///   service unreachable from the leader) is taken out of the membership, its record deleted,
///   and the commit goes on without it; it sees its record gone and joins again. A core that
///   joins (or rejoins after a partition) fetches the chunks it lacks before it may campaign;
///   a chunk no core serves any more is looked for again under its key, passed over where no
///   value names it now, and, still named but held by no live core, logged and passed over
///   (its key's readers hear that no core holds it). A commit whose pushes began before the
///   core registered passed it by, and may land after its read of the references: where a
///   commit landed since (/gflex/writer moved), the core reads them again and fetches what
///   it lacks, until a read names nothing new (after 5 reads that each did, it gives up);
///   where no commit has landed since it registered, it looks every quarter second until one
///   has, and fetches what that one names.
/// - Every chunk request names the core it is meant for; a chunk service refuses one meant
///   for another core (421), so that cores given one chunk address are not counted as
///   holding each other's chunks: the leader takes such a core out of the membership, and a
///   core whose chunk address reaches another core's service from its own machine is refused
///   at start.
/// - A chunk service serves at most 4 GETs at once (the others get 503, and the fetcher asks
///   the next core, or all again a quarter second later), so that a leader's pushes always
///   find a thread: joining cores fetching checkpoints from one core held its every thread,
///   and the leader took that healthy core out of the membership.
/// - A core being destroyed (a rejoin on its lease thread) or told to stop as it starts
///   (`start`'s flag) ends its join and its fetches at once, a GET in flight included.
///
/// The core's keys live under /gflex/data/.

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "gflex/runtime/error.hpp"
#include "gflex/runtime/store.hpp"

namespace gflex {

struct replication_config {
  std::string endpoints;  ///< etcd members, "host:port,host:port,..."
  std::string core_id;    ///< this core's name among the cores (letters, digits, '-', '.', ':')
  /// Where this core serves its chunks to the other cores (HOST:PORT; port 0: any free one),
  /// and the address they reach it at (default: the listen address with the chosen port; only
  /// with one may the listen address be every address, 0.0.0.0).
  std::string chunk_listen;
  std::string chunk_advertise;
  std::filesystem::path chunk_dir;  ///< the chunk files (created if missing)
  /// Shared by the cores of one cloud; chunk requests without it are refused. The cores use
  /// a digest of the operator key, which they share with the rest of the data directory.
  std::string secret;
  /// The address nodes and clients reach this core at, written into the leader record.
  std::string core_address;
  int64_t lease_ttl_s = 5;
  size_t chunk_threshold = size_t{64} << 10;
  /// The most bytes of values one commit keeps in etcd itself: past it, a value is kept as a
  /// chunk whatever its size (one no longer than a chunk's reference excepted). A commit is
  /// one etcd transaction, which etcd refuses over its request limit (--max-request-bytes):
  /// a data set of many shards just under `chunk_threshold`, stored in one batch, was
  /// refused whole.
  size_t inline_limit = size_t{1} << 20;
  /// The leader compacts etcd's history to this many revisions behind its newest: every
  /// round rewrites its job's record, and etcd, keeping every revision, would fill its space
  /// quota and refuse every commit (nothing reads past revisions).
  int64_t kept_revisions = 10000;
  /// Chunk files no committed value names are removed once older than this, looked for every
  /// `garbage_period_s` (a chunk is pushed before the commit that names it; the leader never
  /// removes those of a commit in flight, however long its pushes take, and before a commit
  /// whose pushes took over a second, tells the other cores to keep them, pushing again any
  /// they removed).
  int64_t garbage_age_s = 120;
  int64_t garbage_period_s = 60;
};

class replicated_store final : public key_value_store {
 public:
  /// Connects to etcd, starts the chunk service, registers this core as a member and fetches
  /// the chunks that committed values name and this core lacks (those replaced or erased
  /// meanwhile are passed over, as are, logged, those no live core holds). `on_lost` is called
  /// (from the lease thread, or the thread of a commit that cannot be settled) when this core led
  /// and lost its lease or gave up the leadership: it must stop acting as leader at once.
  /// errc::invalid_argument, naming the id, where another live core holds `core_id` (a
  /// record under a lease that is not renewed, as a killed core's, is waited out: its TTL).
  /// `stop` (the process's stop-signal flag; read, never written, and only until start
  /// returns): once it is not 0, the wait and the fetches end, one in flight included, and
  /// start returns errc::unavailable saying that the core stopped.
  static expected<std::unique_ptr<replicated_store>> start(replication_config config,
                                                           std::function<void()> on_lost,
                                                           const std::atomic<int>* stop = nullptr);
  ~replicated_store() override;

  /// Tries, every second, to become the leader until it does (true) or `stop` is set
  /// (false). `on_follow` is told the leader record whenever it changes.
  expected<bool> campaign(const std::atomic<int>& stop,
                          const std::function<void(const std::string& leader)>& on_follow);

  /// The current leader's record ("ID ADDRESS"), empty when none leads.
  expected<std::string> leader() const;

  expected<void> commit(std::span<const store_write> writes) override;
  expected<std::optional<std::vector<uint8_t>>> get(std::string_view key) const override;
  expected<std::vector<std::string>> keys(std::string_view prefix) const override;
  expected<void> scan(std::string_view prefix,
                      const std::function<bool(std::string_view key,
                                               std::span<const uint8_t> value)>& fn) const override;
  /// Reads only the chunks of the keys it hands to `fn`.
  expected<void> scan_ending(
      std::string_view prefix, std::string_view suffix,
      const std::function<bool(std::string_view key, std::span<const uint8_t> value)>& fn)
      const override;
  int64_t used_bytes() const override;

  /// The port the chunk service listens on.
  uint16_t chunk_port() const;

 private:
  struct impl;
  explicit replicated_store(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

/// Whether a core may keep its state in etcd at `endpoints` given what its data directory
/// holds. Refused (errc::invalid_argument, naming both stores and what to do) where the
/// directory's LMDB store (data.mdb: a one-server core's accounts, API keys, ledger, tokens and
/// jobs) holds records and etcd holds none of a core's state: the core would start empty, as
/// if they were lost, and say nothing. The files `gflex-core init` makes (credentials, the
/// operator key) and an LMDB store with no record (a core started and stopped) are no state.
/// Where both hold state, data.mdb is not used, and a warning says so. A data directory
/// without data.mdb is not touched; errc::unavailable where etcd cannot be read.
expected<void> check_single_core_state(const std::filesystem::path& data_dir,
                                       const std::string& endpoints);

/// The store URL's etcd endpoints: "etcd://h:p,h:p" gives "h:p,h:p"; errc::invalid_argument
/// for any other scheme.
expected<std::string> etcd_endpoints_of(const std::string& store_url);

}  // namespace gflex
