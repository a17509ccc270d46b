#pragma once
/// @file
/// The ledger keeper: the core's credit ledger (ledger_book.hpp) kept in LMDB through the
/// store, one entry at a time in chain order. Keys: `ledger/entry/<seq, 20 digits>` (the
/// entry's JSON), `ledger/balance/<account>` (micro-credits, decimal), `ledger/head` (the last
/// seq). An entry, its balances and the head are written in one transaction; a job's round
/// settlement is written in the same transaction as the round's record and checkpoint, so a
/// crash can never pay for a round that is not committed, or commit one that is not paid.
///
/// Protocol:
/// - (open_atom, account, exists_ok) -> ok_atom: opens an account (an existing one is an
///   error unless exists_ok).
/// - (transfer_atom, kind, memo, postings) -> seq: books a transaction; refused (nothing
///   changes) if it does not balance, overdraws, or names an unknown account.
/// - (transfer_atom, kind, memo, postings, op) -> seq: the same, as operation `op`: an
///   operation already booked is not booked again (the answer is the entry that booked it).
/// - (settle_atom, kind, memo, postings, store_batch[, op]) -> ok_atom: books the transaction
///   (if there are postings) and writes the batch with it, atomically; as operation `op`
///   when given (one already booked: ok, nothing written).
/// - (booked_atom, op) -> seq: the entry that booked `op`, 0 if none. Answered after every
///   message that came before it, so a sender whose request timed out learns its outcome.
/// - (fence_atom, epoch) -> ok_atom: from now on, refuses the operations of job runs of an
///   earlier epoch (a job's operations are `JOB/EPOCH.RUN/what/index`, job_run_id), with
///   errc::permission_denied. Answered after every message that came before it. A job
///   supervisor that replaces one that died fences off the job actors of the one before,
///   which may still be finishing a round: settled after the new one read the job's record,
///   that round was trained and paid for twice.
/// - (account_atom, account) -> account_info.
/// - (ledger_atom) -> ledger_report: re-reads everything from LMDB and verifies it; also
///   counts escrow that ended jobs still hold (`escrow/<job>` accounts named in
///   `ended_jobs`, which the caller passes: (ledger_atom, ended_jobs)).
/// A ledger whose stored chain fails its check at start loads no account: every request but
/// ledger_atom is answered errc::store_error, "the ledger fails its check: <why>", until it
/// is repaired. An open with exists_ok is refused too (the account may well exist, but
/// nothing trusted says so), and with it every node's join.
/// Messages are handled one at a time, each waiting for its write, so the chain in LMDB is
/// always a prefix of the one in memory. Every answer is definite: a write the store does not
/// answer in time may still land, so the keeper then reads the stored head (which the store
/// answers after the write) and books the entry if it landed, before it takes the next message.

#include <caf/fwd.hpp>

#include <chrono>

namespace gflex {

/// `store_wait`: how long a write may take before the keeper asks the store whether it landed.
caf::actor spawn_ledger_keeper(caf::actor_system& sys, caf::actor store,
                               std::chrono::milliseconds store_wait = std::chrono::seconds(60));

}  // namespace gflex
