#include "ledger_keeper.hpp"

#include "core_metrics.hpp"
#include "gflex/runtime/credits.hpp"

#include <spdlog/spdlog.h>

#include <charconv>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <type_traits>
#include <utility>

#include "messages.hpp"

namespace gflex {

namespace {

/// Entries kept in memory for `account` views (the newest).
constexpr size_t recent_entries = 2000;

std::string entry_key(uint64_t seq) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "ledger/entry/%020llu", static_cast<unsigned long long>(seq));
  return buf;
}

std::string balance_key(const std::string& account) {
  return "ledger/balance/" + account;
}

std::vector<uint8_t> bytes_of(const std::string& s) {
  return {s.begin(), s.end()};
}

std::string text_of(const std::vector<uint8_t>& v) {
  return {v.begin(), v.end()};
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The ledger's totals by kind of account, for /metrics, in micro-credits. Kept up to date
// from each entry's postings (integers, so the sums are exact): summing every balance at each
// write made a burst of new nodes' account openings quadratic in the number of accounts.
struct ledger_totals {
  int64_t user = 0, escrow = 0, node = 0, platform = 0, issued = 0;

  void add(const std::string& account, int64_t micro) {
    if (account.starts_with("user/"))
      user += micro;
    else if (account.starts_with("escrow/"))
      escrow += micro;
    else if (account.starts_with("node/"))
      node += micro;
    else if (account == ledger_book::platform)
      platform += micro;
    else if (account == ledger_book::external)
      issued -= micro;
  }

  void publish() const {
    auto credits = [](int64_t micro) {
      return static_cast<double>(micro) / static_cast<double>(micro_per_credit);
    };
    core_metrics::ledger_credits("user").set(credits(user));
    core_metrics::ledger_credits("escrow").set(credits(escrow));
    core_metrics::ledger_credits("node").set(credits(node));
    core_metrics::ledger_credits("platform").set(credits(platform));
    core_metrics::ledger_credits("issued").set(credits(issued));
  }
};

struct keeper_state {
  std::chrono::steady_clock::time_point mailbox_noted{};  // core_metrics::note_mailbox
  caf::actor store;
  ledger_book book;
  ledger_totals totals;
  std::deque<ledger_entry> recent;
  std::deque<std::function<void()>> queued;  // operations waiting for the write before them
  bool writing = false;                      // a write is in flight
  std::string broken;  // why the stored ledger failed its check at start; writes refused
  std::chrono::milliseconds store_wait{60000};  // for a write, then for each read of the head
  std::function<void()> ask_again;  // reads the stored head once more (the last read failed)
  uint64_t fence = 0;               // job runs of an earlier epoch are refused (fence_atom)
  static inline const char* name = "ledger_keeper";
};

using keeper_actor = caf::stateful_actor<keeper_state>;

// Everything under ledger/, parsed: entries in order, balances, head.
struct stored_ledger {
  std::vector<ledger_entry> entries;
  std::map<std::string, int64_t> balances;
  uint64_t head = 0;
  std::string problem;
};

stored_ledger parse_stored(std::vector<std::string>& keys,
                           std::vector<std::vector<uint8_t>>& values) {
  stored_ledger out;
  for (size_t i = 0; i < keys.size() && out.problem.empty(); ++i) {
    const auto& k = keys[i];
    auto text = text_of(values[i]);
    if (k.starts_with("ledger/entry/")) {
      auto e = decode_entry(text);
      if (!e)
        out.problem = k + ": " + e.error().message();
      else
        out.entries.push_back(std::move(*e));
    } else if (k.starts_with("ledger/balance/")) {
      char* end = nullptr;
      long long v = std::strtoll(text.c_str(), &end, 10);
      if (text.empty() || end != text.c_str() + text.size()) out.problem = k + ": not a number";
      out.balances[k.substr(15)] = v;
    } else if (k == "ledger/head") {
      out.head = std::strtoull(text.c_str(), nullptr, 10);
    }
  }
  return out;
}

// The writes that book `e` on top of `book` (which does not hold it yet).
void add_writes(const ledger_book& book, const ledger_entry& e, store_batch& batch) {
  batch.keys.push_back(entry_key(e.seq));
  batch.values.push_back(bytes_of(encode_entry(e)));
  std::map<std::string, int64_t> changed;
  if (e.kind == "open") changed[e.memo] = 0;
  for (const auto& p : e.postings) {
    auto [it, fresh] = changed.emplace(p.account, book.balance(p.account));
    it->second += p.amount;
  }
  for (const auto& [account, value] : changed) {
    batch.keys.push_back(balance_key(account));
    batch.values.push_back(bytes_of(std::to_string(value)));
  }
  batch.keys.push_back("ledger/head");
  batch.values.push_back(bytes_of(std::to_string(e.seq)));
}

std::string describe(const ledger_entry& e, const std::string& account) {
  int64_t change = 0;
  for (const auto& p : e.postings)
    if (p.account == account) change += p.amount;
  char when[32];
  std::time_t t = static_cast<std::time_t>(e.time_ms / 1000);
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", std::gmtime(&t));
  return std::to_string(e.seq) + "  " + when + "  " + e.kind + "  " + (change >= 0 ? "+" : "") +
         format_credits(change) + "  " + e.memo;
}

// The epoch of the job run that operation `op` names (`JOB/EPOCH.RUN/what/index`), if it
// names one: other operations (credit references, runs named before epochs) have none.
std::optional<uint64_t> run_epoch(const std::string& op) {
  if (!op.starts_with("job-")) return std::nullopt;
  const auto slash = op.find('/');
  if (slash == std::string::npos) return std::nullopt;
  const auto dot = op.find('.', slash + 1), next = op.find('/', slash + 1);
  if (dot == std::string::npos || dot >= next || dot == slash + 1) return std::nullopt;
  uint64_t epoch = 0;
  const auto* first = op.data() + slash + 1;
  auto [end, ec] = std::from_chars(first, op.data() + dot, epoch, 16);
  if (ec != std::errc{} || end != op.data() + dot) return std::nullopt;
  return epoch;
}

void next_in_turn(keeper_actor* self);

// Runs `op` once every write queued before it is durable and booked: each entry's sequence
// number and hash come from the one before, so entries are prepared one at a time. The queue
// is the keeper's own rather than CAF's `await`, which parks every other message in the
// mailbox's cache and walks that cache again at each resume: quadratic in a burst (10,000
// new nodes' payout accounts, opened at their first join, kept the keeper busy for minutes,
// and rounds waited behind them to be settled).
// A ledger whose stored chain failed its check at start takes no operation: `op` is not run
// and `promise` gets the reason.
template <class Promise>
void in_turn(keeper_actor* self, Promise promise, std::function<void()> op) {
  auto& st = self->state;
  st.queued.push_back([=]() mutable {
    if (!self->state.broken.empty()) {
      promise.deliver(
          to_caf(error(errc::store_error, "the ledger fails its check: " + self->state.broken)));
      return;
    }
    op();
  });
  next_in_turn(self);
}

void next_in_turn(keeper_actor* self) {
  auto& st = self->state;
  while (!st.writing && !st.queued.empty()) {
    auto op = std::move(st.queued.front());
    st.queued.pop_front();
    op();  // answers at once, or starts a write (and the queue waits for it)
  }
}

// Books `e` in memory (its writes are durable), answers `promise`, and lets the next queued
// operation run.
template <class Promise, class Value>
void booked(keeper_actor* self, const ledger_entry& e, Promise promise, Value done) {
  auto& st = self->state;
  if (!e.hash.empty()) {
    st.book.apply(e);
    for (const auto& p : e.postings) st.totals.add(p.account, p.amount);
    st.recent.push_back(e);
    if (st.recent.size() > recent_entries) st.recent.pop_front();
    st.totals.publish();
  }
  promise.deliver(done);
  st.writing = false;
  next_in_turn(self);
}

// A write of `e` was not answered with success: a timeout, or the store restarted under it.
// It may still land (the store applies commits in the order they come), so no other entry
// may take its sequence number until the outcome is known: the stored head, read after the
// write, says it. The read is asked again (each second) until the store answers it.
template <class Promise, class Value>
void confirm(keeper_actor* self, ledger_entry e, Promise promise, Value done, caf::error why) {
  auto& st = self->state;
  self->request(st.store, st.store_wait, read_atom::value, std::string("ledger/head"))
      .then(
          [=](bool found, std::vector<uint8_t>& value) mutable {
            const auto text = text_of(value);
            const uint64_t head = found ? std::strtoull(text.c_str(), nullptr, 10) : 0;
            if (head >= e.seq) {
              spdlog::info("ledger: entry {} landed after its write was not answered ({})", e.seq,
                           self->system().render(why));
              booked(self, e, promise, done);
              return;
            }
            spdlog::error("ledger: cannot write entry {}: {}", e.seq, self->system().render(why));
            promise.deliver(why);
            self->state.writing = false;
            next_in_turn(self);
          },
          [=](caf::error& err) mutable {
            spdlog::warn(
                "ledger: entry {}'s write was not answered and the stored head cannot be "
                "read ({}); reading it again in a second",
                e.seq, self->system().render(err));
            self->state.ask_again = [=]() mutable { confirm(self, e, promise, done, why); };
            self->delayed_send(self, std::chrono::seconds(1), tick_atom::value);
          });
}

// Books `e` in memory once its writes are durable, answers `promise`, and lets the next
// queued operation run; the queue waits until the write's outcome is known.
template <class Promise, class Value>
void write(keeper_actor* self, ledger_entry e, store_batch batch, Promise promise, Value done) {
  self->state.writing = true;
  self->request(self->state.store, self->state.store_wait, commit_atom::value, std::move(batch))
      .then([=](caf::ok_atom) mutable { booked(self, e, promise, done); },
            [=](caf::error& err) mutable {
              if (e.hash.empty()) {  // a batch without an entry: nothing of the ledger's to check
                spdlog::error("ledger: cannot write: {}", self->system().render(err));
                promise.deliver(err);
                self->state.writing = false;
                next_in_turn(self);
                return;
              }
              confirm(self, std::move(e), promise, done, err);
            });
}

// A transaction as operation `op` (none when empty), with `batch` written in the same
// transaction when given: an operation booked already is answered with its entry, and
// nothing is written.
template <class Promise, class Value>
void book_transaction(keeper_actor* self, Promise rp, std::string kind, std::string memo,
                      std::vector<posting> postings, std::string op,
                      std::shared_ptr<store_batch> batch, Value done) {
  in_turn(self, rp,
          [=, kind = std::move(kind), memo = std::move(memo), postings = std::move(postings),
           op = std::move(op)]() mutable {
            auto& st = self->state;
            if (auto epoch = run_epoch(op); epoch && *epoch < st.fence) {
              rp.deliver(to_caf(error(errc::permission_denied,
                                      "operation " + op +
                                          " is of a job run that ended: its job supervisor was "
                                          "replaced, and the job runs again")));
              return;
            }
            if (!op.empty() && st.book.booked(op) != 0) {
              // A credit reference is the operator's payment id: booked again with the same
              // postings it is a retry; with others, a mistake that must not look booked.
              if (auto other = st.book.credited_otherwise(op, postings); !other.empty()) {
                rp.deliver(to_caf(error(
                    errc::invalid_argument,
                    "reference " + op.substr(op.find('/') + 1) + " was credited already, as " +
                        other + " (entry " + std::to_string(st.book.booked(op)) +
                        "): a reference is one payment's; give this one its own")));
                return;
              }
              if constexpr (std::is_same_v<Value, uint64_t>)
                rp.deliver(st.book.booked(op));
              else
                rp.deliver(done);
              return;
            }
            ledger_entry entry;
            store_batch writes;
            if (batch) writes = std::move(*batch);
            if (!postings.empty() || !batch) {
              auto e = st.book.prepare(std::move(kind), std::move(memo), std::move(postings),
                                       now_ms(), std::move(op));
              if (!e) {
                rp.deliver(to_caf(e.error()));
                return;
              }
              entry = std::move(*e);
              add_writes(st.book, entry, writes);
            }
            if constexpr (std::is_same_v<Value, uint64_t>) done = entry.seq;
            write(self, std::move(entry), std::move(writes), rp, done);
          });
}

// The audit behind `gflex ledger verify`: the whole chain re-hashed and every balance
// recomputed. It runs on a detached auditor (below), never on the keeper's scheduler thread.
ledger_report audit_ledger(std::vector<std::string>& keys,
                           std::vector<std::vector<uint8_t>>& values,
                           const std::vector<std::string>& ended_jobs) {
  auto stored = parse_stored(keys, values);
  ledger_report r;
  auto audit = stored.problem.empty() ? verify_ledger(stored.entries, stored.balances, stored.head)
                                      : ledger_audit{false, stored.problem};
  r.ok = audit.ok;
  r.problem = audit.problem;
  r.entries = audit.entries;
  r.accounts = audit.accounts;
  r.issued = audit.issued;
  for (const auto& [account, value] : stored.balances)
    if (account.starts_with("escrow/")) r.in_escrow += value;
  for (const auto& job : ended_jobs) {
    auto it = stored.balances.find("escrow/" + job);
    if (it != stored.balances.end() && it->second != 0) r.stale_escrow += 1;
  }
  // Each round of a job is paid once: settle entries name "JOB round R:".
  std::map<std::string, std::set<std::string>> settled;
  for (const auto& e : stored.entries) {
    if (e.kind != "settle") continue;
    auto space = e.memo.find(' '), colon = e.memo.find(':');
    if (space == std::string::npos || colon == std::string::npos) continue;
    auto job = e.memo.substr(0, space);
    auto round = e.memo.substr(space + 1, colon - space - 1);
    if (!settled[job].insert(round).second && r.ok) {
      r.ok = false;
      r.problem =
          "entry " + std::to_string(e.seq) + ": " + job + " " + round + " is paid a second time";
    }
  }
  for (const auto& [job, rounds] : settled) {
    r.settled_jobs.push_back(job);
    r.settled_rounds.push_back(rounds.size());
  }
  if (r.ok && r.stale_escrow != 0) {
    r.ok = false;
    r.problem = std::to_string(r.stale_escrow) + " ended job(s) still hold credits in escrow";
  }
  return r;
}

// A one-shot actor on its own thread that audits one scan of the ledger and ends.
caf::behavior auditor(caf::event_based_actor* self) {
  return {
      [=](ledger_atom, std::vector<std::string>& keys, std::vector<std::vector<uint8_t>>& values,
          const std::vector<std::string>& ended_jobs) -> ledger_report {
        self->quit();
        return audit_ledger(keys, values, ended_jobs);
      },
  };
}

caf::behavior keeper(keeper_actor* self, caf::actor store, std::chrono::milliseconds store_wait) {
  self->state.store = std::move(store);
  self->state.store_wait = store_wait;
  self->request(self->state.store, std::chrono::seconds(120), scan_atom::value,
                std::string("ledger/"))
      .await(
          [=](std::vector<std::string>& keys, std::vector<std::vector<uint8_t>>& values) {
            auto& st = self->state;
            auto stored = parse_stored(keys, values);
            auto audit = stored.problem.empty()
                             ? verify_ledger(stored.entries, stored.balances, stored.head)
                             : ledger_audit{false, stored.problem};
            if (!audit.ok) {
              st.broken = audit.problem;
              spdlog::error(
                  "ledger: the stored ledger fails its check ({}); refusing every "
                  "transaction until it is repaired",
                  audit.problem);
              return;
            }
            for (const auto& e : stored.entries) {
              st.book.apply(e);
              st.recent.push_back(e);
              if (st.recent.size() > recent_entries) st.recent.pop_front();
            }
            for (const auto& [account, micro] : st.book.balances()) st.totals.add(account, micro);
            st.totals.publish();
            spdlog::debug("ledger: {} entries, {} accounts", stored.entries.size(),
                          st.book.balances().size());
          },
          [=](caf::error& e) {
            spdlog::error("ledger: cannot read: {}", self->system().render(e));
            self->quit(e);
          });
  return {
      [=](open_atom, const std::string& account, bool exists_ok) -> caf::result<caf::ok_atom> {
        auto rp = self->make_response_promise<caf::ok_atom>();
        in_turn(self, rp, [=]() mutable {
          auto& st = self->state;
          if (exists_ok && st.book.has_account(account)) {
            rp.deliver(caf::ok_atom::value);
            return;
          }
          auto e = st.book.prepare_open(account, now_ms());
          if (!e) {
            rp.deliver(to_caf(e.error()));
            return;
          }
          store_batch batch;
          add_writes(st.book, *e, batch);
          write(self, std::move(*e), std::move(batch), rp, caf::ok_atom::value);
        });
        return rp;
      },
      [=](transfer_atom, std::string& kind, std::string& memo,
          std::vector<posting>& postings) -> caf::result<uint64_t> {
        auto rp = self->make_response_promise<uint64_t>();
        book_transaction(self, rp, std::move(kind), std::move(memo), std::move(postings), {},
                         nullptr, uint64_t{0});
        return rp;
      },
      [=](transfer_atom, std::string& kind, std::string& memo, std::vector<posting>& postings,
          std::string& op) -> caf::result<uint64_t> {
        auto rp = self->make_response_promise<uint64_t>();
        book_transaction(self, rp, std::move(kind), std::move(memo), std::move(postings),
                         std::move(op), nullptr, uint64_t{0});
        return rp;
      },
      [=](settle_atom, std::string& kind, std::string& memo, std::vector<posting>& postings,
          store_batch& batch) -> caf::result<caf::ok_atom> {
        core_metrics::note_mailbox(self, "ledger");
        auto rp = self->make_response_promise<caf::ok_atom>();
        // Shared, not copied, while it waits: a large job's batch holds its checkpoint.
        book_transaction(self, rp, std::move(kind), std::move(memo), std::move(postings), {},
                         std::make_shared<store_batch>(std::move(batch)), caf::ok_atom::value);
        return rp;
      },
      [=](settle_atom, std::string& kind, std::string& memo, std::vector<posting>& postings,
          store_batch& batch, std::string& op) -> caf::result<caf::ok_atom> {
        core_metrics::note_mailbox(self, "ledger");
        auto rp = self->make_response_promise<caf::ok_atom>();
        book_transaction(self, rp, std::move(kind), std::move(memo), std::move(postings),
                         std::move(op), std::make_shared<store_batch>(std::move(batch)),
                         caf::ok_atom::value);
        return rp;
      },
      [=](fence_atom, uint64_t epoch) -> caf::result<caf::ok_atom> {
        auto rp = self->make_response_promise<caf::ok_atom>();
        in_turn(self, rp, [=]() mutable {
          self->state.fence = std::max(self->state.fence, epoch);
          rp.deliver(caf::ok_atom::value);
        });
        return rp;
      },
      [=](booked_atom, const std::string& op) -> caf::result<uint64_t> {
        auto rp = self->make_response_promise<uint64_t>();
        in_turn(self, rp, [=]() mutable { rp.deliver(self->state.book.booked(op)); });
        return rp;
      },
      [=](tick_atom) {
        if (auto again = std::exchange(self->state.ask_again, {})) again();
      },
      [=](account_atom, const std::string& account) -> caf::result<account_info> {
        auto& st = self->state;
        // A ledger that failed its check holds no account in memory: "unknown account" told
        // users and the operator that accounts which exist were gone.
        if (!st.broken.empty())
          return to_caf(error(errc::store_error, "the ledger fails its check: " + st.broken));
        if (!st.book.has_account(account))
          return to_caf(error(errc::invalid_argument, "unknown account " + account));
        account_info info;
        info.id = account;
        info.balance = st.book.balance(account);
        for (auto it = st.recent.rbegin(); it != st.recent.rend() && info.recent.size() < 20;
             ++it) {
          bool touches = it->kind == "open" ? it->memo == account : false;
          for (const auto& p : it->postings) touches = touches || p.account == account;
          if (touches) info.recent.push_back(describe(*it, account));
        }
        return info;
      },
      [=](ledger_atom, const std::vector<std::string>& ended_jobs) -> caf::result<ledger_report> {
        auto rp = self->make_response_promise<ledger_report>();
        self->request(self->state.store, std::chrono::seconds(120), scan_atom::value,
                      std::string("ledger/"))
            .then(
                [=](std::vector<std::string>& keys,
                    std::vector<std::vector<uint8_t>>& values) mutable {
                  // Re-hashing a long ledger takes a while: a detached auditor does it.
                  auto audit = self->system().spawn<caf::detached>(auditor);
                  self->request(audit, std::chrono::minutes(10), ledger_atom::value,
                                std::move(keys), std::move(values), ended_jobs)
                      .then([=](ledger_report& r) mutable { rp.deliver(std::move(r)); },
                            [=](caf::error& e) mutable { rp.deliver(e); });
                },
                [=](caf::error& e) mutable { rp.deliver(e); });
        return rp;
      },
      [=](update_atom, const std::string& role, caf::actor& replacement) {
        if (role == "store") self->state.store = std::move(replacement);
      },
  };
}

}  // namespace

caf::actor spawn_ledger_keeper(caf::actor_system& sys, caf::actor store,
                               std::chrono::milliseconds store_wait) {
  // Detached: at start (and at every restart by the core's supervisor) the keeper re-hashes
  // the whole chain before it takes a transaction, which for a long ledger would hold one of
  // CAF's scheduler threads (and every actor waiting for it) for as long.
  return sys.spawn<caf::detached>(keeper, std::move(store), store_wait);
}

}  // namespace gflex
