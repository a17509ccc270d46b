#pragma once
/// @file
/// A node's reputation and the adaptive verification policy built on it. Free of CAF, so
/// that the unit tests and the verification benchmark use the same code as the core.
///
/// The score is a beta reputation, (good + 1) / (good + bad + 2), where good and bad count
/// accepted and rejected results with exponential decay (each new result multiplies the old
/// evidence by `decay`), so old behaviour fades. The streak counts results accepted since
/// the node was last caught. Verification sampling follows BOINC's adaptive replication: a
/// new identity is untrusted, and every one of its results is re-computed until its streak
/// reaches `trust_after`; after that a result is re-computed with probability 1/streak, but
/// never less than `floor`. A caught node loses streak and score and is flagged.

#include <cstdint>
#include <string>
#include <string_view>

#include "gflex/job_status.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex {

struct reputation_policy {
  double decay = 0.98;      ///< Weight old evidence keeps at each new result, in (0, 1].
  int64_t trust_after = 5;  ///< Accepted results before sampling drops below 1.
  double floor = 0.05;      ///< Lowest verification probability of a community node.

  /// The highest score a node can reach: every result accepted, for ever (its decayed
  /// evidence tends to 1 / (1 - decay) results); 1 without decay.
  double highest_score() const noexcept;
};

/// How an applied result was checked: not sampled (cleared), re-computed and matched, or
/// sampled but used without a re-computation (no core-tier worker, --unverified accept).
/// Only the first two are evidence that the node computes honestly.
enum class result_check : uint8_t { cleared = 0, verified = 1, unverified = 2 };

/// What the core knows of one node identity (today its name; a public key once nodes have
/// key pairs).
struct reputation {
  std::string name;
  node_tier tier = node_tier::community;
  double good = 0.0;  ///< Accepted results, decayed.
  double bad = 0.0;   ///< Rejected results, decayed.
  int64_t streak = 0;
  uint64_t validated = 0;  ///< Results applied in a committed round.
  uint64_t verified = 0;   ///< Of those, re-computed and matched.
  uint64_t rejected = 0;
  bool flagged = false;
  double credited_s = 0.0;  ///< Compute seconds credited for validated results.
  int64_t earned = 0;       ///< Micro-credits paid for validated results.
  std::string last_rejection;
  std::string public_key;  ///< Hex Ed25519 key the name is bound to at its first join.

  /// The beta score (good + 1) / (good + bad + 2), in (0, 1); 0.5 for a new identity.
  double score() const noexcept;

  /// The probability that a result of this node is re-computed: 0 for the core tier, 1 for
  /// an untrusted community node, then max(floor, 1 / streak).
  double verify_probability(const reputation_policy& policy) const noexcept;

  /// A result was applied in a committed round: score grows, and it is credited (`earned`:
  /// micro-credits it was paid; negative amounts are ignored). The streak grows only with a
  /// result that was checked or not sampled: one used unverified proves nothing, and would
  /// otherwise end a new identity's probation without one re-computation.
  void on_validated(const reputation_policy& policy, result_check check, double compute_s,
                    int64_t earned = 0);

  /// A result was refused (an immediate check or verification failed): the node loses its
  /// streak and what it had earned of its score, and is flagged.
  void on_rejected(const reputation_policy& policy, std::string reason);
};

/// What `gflex nodes` shows of a node's record (its reputation fields; the connection's
/// fields are the registry's).
node_status status_of(const std::string& name, const reputation& r);

/// The stored form of a record (JSON, one LMDB value per node).
std::string encode_reputation(const reputation& r);

/// Parses a stored record; anything malformed is errc::malformed_message.
expected<reputation> decode_reputation(std::string_view text);

}  // namespace gflex
