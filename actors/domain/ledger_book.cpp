#include "ledger_book.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <limits>

#include <stdexcept>
#include <type_traits>

#include "gflex/runtime/credits.hpp"
#include "gflex/runtime/digest.hpp"
#include "json_fields.hpp"

namespace gflex {

namespace {

const std::string zero_hash(64, '0');

error refuse(const std::string& what) {
  return error(errc::invalid_argument, what);
}

nlohmann::json body_of(const ledger_entry& e) {
  auto postings = nlohmann::json::array();
  for (const auto& p : e.postings) postings.push_back({p.account, p.amount});
  nlohmann::json body = {{"seq", e.seq},   {"prev", e.prev}, {"time_ms", e.time_ms},
                         {"kind", e.kind}, {"memo", e.memo}, {"postings", postings}};
  // Only when named: entries booked before operations had ids keep their hashes.
  if (!e.op.empty()) body["op"] = e.op;
  return body;
}

}  // namespace

std::string entry_hash(const ledger_entry& e) {
  std::string text = e.prev + "\n" + body_of(e).dump();
  return digest_hex({reinterpret_cast<const uint8_t*>(text.data()), text.size()});
}

std::string encode_entry(const ledger_entry& e) {
  auto j = body_of(e);
  j["hash"] = e.hash;
  return j.dump();
}

expected<ledger_entry> decode_entry(std::string_view text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return error(errc::malformed_message, "ledger entry is not a JSON object");
  try {
    ledger_entry e;
    e.seq = integer_at<uint64_t>(j, "seq");
    e.prev = j.at("prev").get<std::string>();
    e.time_ms = integer_at<int64_t>(j, "time_ms");
    e.kind = j.at("kind").get<std::string>();
    e.memo = j.at("memo").get<std::string>();
    for (const auto& p : j.at("postings")) {
      if (!p.is_array() || p.size() != 2 || !p.at(1).is_number_integer())
        return error(errc::malformed_message, "ledger entry: a posting is not [account, amount]");
      e.postings.push_back({p.at(0).get<std::string>(), p.at(1).get<int64_t>()});
    }
    if (j.contains("op")) {
      e.op = j.at("op").get<std::string>();
      if (!is_operation_id(e.op))
        return error(errc::malformed_message, "ledger entry: a malformed operation id");
    }
    e.hash = j.at("hash").get<std::string>();
    return e;
  } catch (const std::exception& ex) {  // nlohmann's errors and integer_at's
    return error(errc::malformed_message, std::string("ledger entry: ") + ex.what());
  }
}

bool is_operation_id(std::string_view op) noexcept {
  if (op.empty() || op.size() > 256) return false;
  for (char c : op)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == '-' || c == '/'))
      return false;
  return true;
}

bool is_credit_reference(std::string_view reference) noexcept {
  return reference.size() <= 128 && reference.find('/') == std::string_view::npos &&
         is_operation_id(reference);
}

std::string credit_operation(std::string_view reference) {
  return "operator-credit/" + std::string(reference);
}

bool is_account_id(std::string_view id) noexcept {
  if (id == ledger_book::external || id == ledger_book::platform) return true;
  auto slash = id.find('/');
  if (slash == std::string_view::npos) return false;
  auto kind = id.substr(0, slash), name = id.substr(slash + 1);
  if (kind != "user" && kind != "node" && kind != "escrow") return false;
  if (name.empty() || name.size() > 128) return false;
  for (char c : name)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == '-'))
      return false;
  return true;
}

ledger_book::ledger_book() : head_(zero_hash) {
  balances_[external] = 0;
  balances_[platform] = 0;
}

uint64_t ledger_book::booked(const std::string& op) const {
  auto it = ops_.find(op);
  return it == ops_.end() ? 0 : it->second;
}

std::string ledger_book::credited_otherwise(const std::string& op,
                                            const std::vector<posting>& postings) const {
  auto it = credits_.find(op);
  if (it == credits_.end()) return {};
  auto key = [](const std::vector<posting>& ps) {
    std::vector<std::pair<std::string, int64_t>> out;
    for (const auto& p : ps) out.emplace_back(p.account, p.amount);
    std::sort(out.begin(), out.end());
    return out;
  };
  if (key(it->second) == key(postings)) return {};
  std::string booked;
  for (const auto& p : it->second)
    if (p.amount > 0) {
      if (!booked.empty()) booked += ", ";
      booked += p.account + " " + format_credits(p.amount);
    }
  return booked;
}

int64_t ledger_book::balance(const std::string& id) const {
  auto it = balances_.find(id);
  return it == balances_.end() ? 0 : it->second;
}

expected<ledger_entry> ledger_book::prepare_open(const std::string& id, int64_t time_ms) const {
  if (!is_account_id(id))
    return refuse("'" + id +
                  "' is not an account id (user/NAME, node/NAME or escrow/NAME, NAME 1-128 "
                  "of A-Z a-z 0-9 . _ -)");
  if (has_account(id)) return refuse("account " + id + " exists already");
  ledger_entry e;
  e.seq = seq_ + 1;
  e.prev = head_;
  e.time_ms = time_ms;
  e.kind = "open";
  e.memo = id;
  e.hash = entry_hash(e);
  return e;
}

expected<ledger_entry> ledger_book::prepare(std::string kind, std::string memo,
                                            std::vector<posting> postings, int64_t time_ms,
                                            std::string op) const {
  if (kind.empty() || kind == "open") return refuse("a transaction needs a kind other than open");
  if (!op.empty() && !is_operation_id(op))
    return refuse("'" + op + "' is not an operation id (1-256 of A-Z a-z 0-9 . _ - /)");
  if (!op.empty() && booked(op) != 0)
    return refuse("operation " + op + " is booked already (entry " + std::to_string(booked(op)) +
                  ")");
  if (memo.size() > 4096) return refuse("memo longer than 4096 characters");
  if (postings.size() < 2) return refuse("a transaction needs at least two postings");
  std::map<std::string, int64_t> after;
  __int128 sum = 0;
  for (const auto& p : postings) {
    if (!has_account(p.account)) return refuse("unknown account " + p.account);
    if (p.amount == 0) return refuse("a posting of zero to " + p.account);
    if (p.amount > max_amount_micro || p.amount < -max_amount_micro)
      return refuse("a posting of more than 1e12 credits to " + p.account);
    sum += p.amount;
    auto [it, fresh] = after.emplace(p.account, balance(p.account));
    // Postings are bounded, balances are not: enough credits issued would take an account
    // (the external one first) past int64's range, where it would wrap.
    // INT64_MIN is out of range too: the credits issued are the external balance negated.
    if (__builtin_add_overflow(it->second, p.amount, &it->second) ||
        it->second == std::numeric_limits<int64_t>::min())
      return refuse("account " + p.account + "'s balance would leave the ledger's range");
  }
  if (sum != 0)
    return refuse("postings do not balance (they sum to " +
                  format_credits(static_cast<int64_t>(sum)) + ")");
  for (const auto& [account, value] : after)
    if (value < 0 && account != external)
      return refuse("account " + account + " would go below zero (balance " +
                    format_credits(balance(account)) + ", change " +
                    format_credits(value - balance(account)) + ")");
  ledger_entry e;
  e.seq = seq_ + 1;
  e.prev = head_;
  e.time_ms = time_ms;
  e.kind = std::move(kind);
  e.memo = std::move(memo);
  e.postings = std::move(postings);
  e.op = std::move(op);
  e.hash = entry_hash(e);
  return e;
}

void ledger_book::apply(const ledger_entry& e) {
  if (e.kind == "open") balances_.emplace(e.memo, 0);
  for (const auto& p : e.postings) balances_[p.account] += p.amount;
  if (!e.op.empty()) ops_.emplace(e.op, e.seq);
  if (e.op.starts_with(credit_operation(""))) credits_.emplace(e.op, e.postings);
  seq_ = e.seq;
  head_ = e.hash;
}

ledger_audit verify_ledger(const std::vector<ledger_entry>& entries,
                           const std::map<std::string, int64_t>& stored, uint64_t head_seq) {
  ledger_audit audit;
  auto fail = [&](uint64_t seq, const std::string& why) {
    audit.ok = false;
    audit.problem = "entry " + std::to_string(seq) + ": " + why;
    return audit;
  };
  ledger_book book;
  for (const auto& e : entries) {
    if (e.seq != book.last_seq() + 1)
      return fail(e.seq, "sequence number follows " + std::to_string(book.last_seq()));
    if (e.prev != book.head()) return fail(e.seq, "does not chain to the entry before");
    if (e.hash != entry_hash(e)) return fail(e.seq, "hash does not match its contents");
    if (e.kind == "open") {
      if (!e.op.empty()) return fail(e.seq, "an account opening names an operation");
      // Its postings would be applied, moving credits no transaction balances or issues.
      if (!e.postings.empty()) return fail(e.seq, "an account opening moves credits");
      auto again = book.prepare_open(e.memo, e.time_ms);
      if (!again) return fail(e.seq, again.error().message());
    } else {
      auto again = book.prepare(e.kind, e.memo, e.postings, e.time_ms, e.op);
      if (!again) return fail(e.seq, again.error().message());
    }
    book.apply(e);
    audit.entries += 1;
  }
  if (book.last_seq() != head_seq)
    return fail(head_seq, "the head names entry " + std::to_string(head_seq) +
                              ", the chain ends at " + std::to_string(book.last_seq()));
  for (const auto& [account, value] : book.balances()) {
    auto it = stored.find(account);
    int64_t kept = it == stored.end() ? 0 : it->second;
    if (kept != value)
      return fail(book.last_seq(), "account " + account + " holds " + format_credits(kept) +
                                       ", the chain gives " + format_credits(value));
  }
  for (const auto& [account, value] : stored)
    if (!book.has_account(account))
      return fail(book.last_seq(), "account " + account + " is not opened in the chain");
  audit.accounts = book.balances().size();
  audit.issued = -book.balance(ledger_book::external);
  return audit;
}

}  // namespace gflex
