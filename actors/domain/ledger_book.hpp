#pragma once
/// @file
/// The credit ledger's books, free of CAF and of storage: accounts, balances, and a chain of
/// double-entry transactions, each hashed together with the one before it.
///
/// Amounts are integers in micro-credits (1 credit = 1,000,000), so that sums are exact.
/// Every transaction's postings sum to zero, and no account may go below zero except
/// `external`, the contra account of money that entered from outside (an operator's credit
/// posts +x to a user and -x to external, so external's balance is minus all money issued).
/// Accounts are opened by an entry of their own, so that replaying the chain rebuilds
/// everything. Each entry's hash is BLAKE2b-256 over the previous hash and the entry's
/// canonical JSON; changing any entry breaks every hash after it.

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "gflex/runtime/credits.hpp"
#include "gflex/runtime/error.hpp"

namespace gflex {

struct posting {
  std::string account;
  int64_t amount = 0;  ///< Micro-credits; positive adds to the account.
};

struct ledger_entry {
  uint64_t seq = 0;  ///< 1 for the first entry.
  std::string prev;  ///< The previous entry's hash; 64 zeros for the first.
  int64_t time_ms = 0;
  std::string kind;  ///< open, credit, hold, settle, release, ...
  std::string memo;
  std::vector<posting> postings;
  /// The operation this entry books, when its sender named one (a job's "JOB/RUN/hold/3"):
  /// an operation is booked at most once, so a sender that got no answer (a timeout) can ask
  /// whether it was booked, or send it again, without paying twice. Empty: unnamed.
  std::string op;
  std::string hash;
};

/// The canonical stored form (JSON), hash included.
std::string encode_entry(const ledger_entry& e);
expected<ledger_entry> decode_entry(std::string_view text);

/// The hash an entry must carry: BLAKE2b-256 hex over prev and the entry without its hash.
std::string entry_hash(const ledger_entry& e);

/// Operation ids: 1-256 characters of [A-Za-z0-9._/-].
bool is_operation_id(std::string_view op) noexcept;

/// An operator's credit is named by a reference of its own (a payment's or an invoice's id):
/// 1-128 characters of [A-Za-z0-9._-]. Its operation id is "operator-credit/REFERENCE", so a
/// reference is credited at most once.
bool is_credit_reference(std::string_view reference) noexcept;
std::string credit_operation(std::string_view reference);

/// Account ids: "external", "platform", or KIND/NAME with KIND one of user, node, escrow and
/// NAME 1-128 characters of [A-Za-z0-9._-].
bool is_account_id(std::string_view id) noexcept;

class ledger_book {
 public:
  static constexpr const char* external = "external";
  static constexpr const char* platform = "platform";

  ledger_book();

  bool has_account(const std::string& id) const { return balances_.count(id) != 0; }
  int64_t balance(const std::string& id) const;
  const std::map<std::string, int64_t>& balances() const { return balances_; }
  uint64_t last_seq() const { return seq_; }
  /// The entry that booked operation `op`; 0 if none has.
  uint64_t booked(const std::string& op) const;
  /// For an operator's credit (credit_operation) booked already with other postings than
  /// `postings`: what it booked ("user/alice 50"); empty otherwise. A reference reused for
  /// another account or amount was answered as booked while nothing was credited.
  std::string credited_otherwise(const std::string& op, const std::vector<posting>& postings) const;
  const std::string& head() const { return head_; }

  /// The entry that opens account `id`; refused if the id is malformed or already open.
  expected<ledger_entry> prepare_open(const std::string& id, int64_t time_ms) const;

  /// A transaction: at least two postings to open accounts, none zero, summing to zero,
  /// leaving no account but `external` below zero; `op`, when given, an operation id not
  /// booked before. Refusals say which rule and change nothing; apply() the result to book it.
  expected<ledger_entry> prepare(std::string kind, std::string memo, std::vector<posting> postings,
                                 int64_t time_ms, std::string op = {}) const;

  /// Books a prepared (or verified) entry.
  void apply(const ledger_entry& e);

 private:
  std::map<std::string, int64_t> balances_;
  std::map<std::string, uint64_t> ops_;                  // operation id -> the entry that booked it
  std::map<std::string, std::vector<posting>> credits_;  // operator credits' postings, by op
  uint64_t seq_ = 0;
  std::string head_;
};

/// What verify_ledger found.
struct ledger_audit {
  bool ok = true;
  std::string problem;  ///< The first problem, in words, when not ok.
  uint64_t entries = 0;
  uint64_t accounts = 0;
  int64_t issued = 0;  ///< Money that entered from outside (minus external's balance).
};

/// Replays `entries` (in stored order) from nothing and checks every invariant: sequence
/// numbers follow on, each hash chains to the one before and matches the entry, each
/// transaction balances and is well-formed, no account but external goes below zero, and the
/// replayed balances equal `stored` (the balances kept beside the chain) and `head_seq`.
ledger_audit verify_ledger(const std::vector<ledger_entry>& entries,
                           const std::map<std::string, int64_t>& stored, uint64_t head_seq);

}  // namespace gflex
