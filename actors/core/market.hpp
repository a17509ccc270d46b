#pragma once
/// @file
/// The market actor: the core's pool of compute slots (one per node worker), handed to jobs
/// round by round.
///
/// Protocol:
/// - (offer_atom, node_id, slots) from the registry: a node's workers become available.
/// - (withdraw_atom, node_id) from the registry: a node is gone; its slots disappear, and
///   every job holding one of them is told (withdraw_atom, node_id) at once.
/// - (offer_atom, node_id, slots) may come again for a node: a restarted worker.
/// - (withdraw_atom): every slot goes (the registry was restarted; nodes join again).
/// - (acquire_atom, job_id, workload, n, policy, max_price, min_reputation, avoided)
///   -> acquire_reply:
///   up to n free slots, now busy, chosen by matcher.hpp (throughputs as the core measured
///   them on `workload`, priced_throughputs; empty: as calibrated): `policy` is a gflex::trust_tier
///   (core-tier slots only, community only, or hybrid: community first), a slot's price must be
///   within max_price (micro-credits per device-hour; negative: any) and its node's score reach
///   min_reputation; the cheapest per unit of work go first, and among offers of (nearly)
///   equal cost the node given the least work so far; a share of community slots
///   (`newcomer_share` of the slots asked for, the fractions carried from one acquire to the
///   next) goes to nodes given fewer than 5 assignments first; no slot of a node whose id is
///   in `avoided` (nodes the job's work ran out of memory on) is taken. One slot per workload
///   at a time, while its holder has it, goes on its node's claim alone where that node has
///   not been measured on the workload and its claim, if true, makes it the cheapest
///   (slot_bid::explore): its answer measures it. A node that failed such a slot (out of its
///   memory, past the deadline, broken) is not explored on that workload again for
///   `remeasure_after`. The reply counts the slots left out (busy,
///   wrong tier, too expensive, low reputation, avoided).
/// - (score_atom, node_name, score) from the reputation tracker: a node's current score.
/// - (rate_atom, node_name, workload, samples/s) from a session, through the registry: the
///   rate the core measured for one of the node's assignments (averaged per node). A node's
///   rate on a workload that no answer renewed for `remeasure_after` counts no more (the node
///   is priced as one not measured yet), and its next answer measures it afresh: one slow
///   answer priced it out of jobs' reach for good, since only work measures a node again.
/// - (bar_atom, node_name) from the reputation tracker: a node caught misbehaving. Its slots
///   go (their holders hear withdraw_atom) and it is never offered again.
/// - (acquire_atom, workers) from a job or the verifier told of a new market: the workers it
///   holds assignments on are busy, held by it (now, or when the registry offers them again).
/// - (release_atom, worker) from the job holding it: the slot is free again (ignored if its
///   node is gone, or from anyone else). If another job waits for slots (its last acquire got
///   fewer than it wanted, within 2 s), the slot is held for the first such job whose bid it
///   fits for 500 ms: the releasing job, asking again at once, no longer takes it back ahead
///   of jobs that wait. Waiting jobs take such turns in order.
///   Its work was cancelled, or never sent: nothing is said of the node.
/// - (release_atom, worker, failed): the same after its node answered the work (`failed`
///   false) or failed it; a node that keeps failing is left out for a while (0.5 s, doubling
///   per failure in a row up to a minute). Only an answer ends the row.
/// - (release_atom, worker, failed, node_at_fault): with node_at_fault false, a failure the
///   job's own settings caused (its model out of the node's memory, past its deadline,
///   diverged): the slot is free again for every other job (held for a waiting one first),
///   its node's record of failures unchanged. Counted against the node, one user's job could
///   keep every node it touched out of all jobs' reach for a minute at a time.
/// - (release_atom, kept workers) from a job whose acquire was not answered in time: every
///   slot it holds but those is free again. The answer came after the job stopped waiting,
///   and its slots stayed busy, unused, for the job's life.
/// - (nodes_atom) -> (total, free) slot counts.
/// The market monitors every worker it offers (a dead worker's slot disappears) and every
/// job that holds slots (a job that dies gives its slots back).

#include <caf/fwd.hpp>

#include <chrono>

namespace gflex {

/// `newcomer_share`, in [0, 1]: the share of the slots jobs ask for reserved for newcomers.
/// `settle`: how long a market that replaces one (a restart) hands out no slot, while the
/// jobs' claims of the workers they hold come in (acquire_atom with their workers). The
/// registry offers every slot again as free at once, and the jobs hear of the new market a
/// hop later: a job whose acquire came first took a worker another job was running an
/// assignment on, and one of the two timed out, unpaid.
/// `remeasure_after`: how long a node's measured rate on a workload counts without a new
/// answer of that workload (rate_atom above); > 0.
caf::actor spawn_market(caf::actor_system& sys, double newcomer_share = 0.05,
                        std::chrono::milliseconds settle = std::chrono::milliseconds(0),
                        std::chrono::milliseconds remeasure_after = std::chrono::minutes(10));

}  // namespace gflex
