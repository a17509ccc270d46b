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
/// - (settle_atom, kind, memo, postings, store_batch) -> ok_atom: books the transaction (if
///   there are postings) and writes the batch with it, atomically.
/// - (account_atom, account) -> account_info.
/// - (ledger_atom) -> ledger_report: re-reads everything from LMDB and verifies it; also
///   counts escrow that ended jobs still hold (`escrow/<job>` accounts named in
///   `ended_jobs`, which the caller passes: (ledger_atom, ended_jobs)).
/// Messages are handled one at a time, each waiting for its write, so the chain in LMDB is
/// always a prefix of the one in memory.

#include <caf/fwd.hpp>

namespace gflex {

caf::actor spawn_ledger_keeper(caf::actor_system& sys, caf::actor store);

}  // namespace gflex
