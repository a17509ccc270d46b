#pragma once
/// @file
/// The reputation tracker: the core's record of every node identity it has seen (score,
/// streak, counts, flag; see reputation.hpp), persisted in LMDB under
/// `node/<name>/reputation`, and the source of verification sampling decisions.
///
/// Protocol:
/// - (hello_atom, name, tier, public key hex) -> ok_atom from the core supervisor: a node
///   joins; a new name gets a record (untrusted) bound to its key; a name bound to another
///   key, and a new name for a key that names max_names_per_key already, are refused
///   (permission_denied).
/// - (sample_atom, name) -> bool: whether to re-compute this result of the node (drawn with
///   the node's verification probability).
/// - (credit_atom, name, check, compute_s, earned): a result of the node was applied in a
///   committed round (`check`: a result_check, how it was checked); it is credited, and
///   `earned` micro-credits (what the node was paid for it, 0 for an unmetered job) are added
///   to its earnings.
/// - (reject_atom, name, reason) -> vector<string>: a result of the node was refused. The node
///   is flagged, the market told to bar it (bar_atom, name), and the gatekeeper to ban its key
///   and the tokens it joined with (bar_atom, key, name). Every other name of its key is
///   flagged and barred with it: one key behind many names is one cheat. The answer is every
///   other name of its key, at every telling (a job whose first request timed out learns them
///   from its next), so that the jobs discard their work too.
/// - (nodes_atom) -> vector<node_status>: every record, reputation fields filled in.
/// - (update_atom, "market" | "store" | "gate", actor): a restarted sibling; a new market is told
///   every barred node and every score again.
/// Every changed score goes to the market (score_atom, name, score), for min_reputation.
/// Records are read before the first message is handled, and written in batches a tenth of
/// a second after they change (at once for a rejection).

#include <caf/fwd.hpp>

#include "reputation.hpp"

namespace gflex {

/// The names one node key may join under: a volunteer runs a few nodes with one key, and a
/// key behind thousands of names would squat common host names (an honest node of that name
/// is refused) and fill the store with records.
inline constexpr size_t max_names_per_key = 16;

caf::actor spawn_reputation_tracker(caf::actor_system& sys, caf::actor store, caf::actor market,
                                    caf::actor gate, reputation_policy policy);

/// The LMDB key of a node identity's record.
std::string reputation_key(const std::string& name);

}  // namespace gflex
