#include "gatekeeper.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <ctime>
#include <deque>
#include <functional>
#include <map>
#include <set>

#include "access.hpp"
#include "gflex/runtime/log_throttle.hpp"
#include "messages.hpp"
#include "store_write.hpp"

namespace gflex {

namespace {

struct pending_admit {
  caf::response_promise promise;
  std::string token, tier, address;
  bool proof_ok = false;
  std::string key;  // the node key (hex) the hello presents
  // A key that joined before, proven by the hello's signature: its failures and held answers
  // are its own, not its address's.
  bool known = false;
};

/// Answers held for addresses that keep failing; past this many a new hello is refused at
/// once (a guesser must not grow the core's memory).
constexpr size_t max_held = 1024;
// Of which from one address (or one known key): a flood of bad hellos from one address pushed
// the oldest held answers out, those of nodes with valid tokens from other addresses among
// them.
constexpr size_t max_held_per_address = 16;

// Node keys remembered as having joined, at most. Only a valid token adds one, but a token
// without a use limit admits any number of keys: past the bound, a new key is slowed by its
// address's failures, as before it had joined.
constexpr size_t max_known_keys = 262144;

/// Joins with one token that may wait for the one before them (each reads and writes the
/// token's record in turn); past them a join is refused, to be tried again. A node that sent
/// hellos in a loop with its own valid token queued them faster than the store writes, for
/// as long as it went on; a rush of honest nodes sharing a token fits with room to spare.
constexpr size_t max_waiting_joins = 256;

struct gatekeeper_state {
  caf::actor store;
  std::string operator_key;
  join_failures failures;  // by address
  // Node keys bound to a token record (they joined with a valid token), and the failures of
  // signed hellos that present them. Counted by address only, six failed joins in ten minutes
  // made every hello from the address wait, up to 30 s: behind one NAT, a node restarting
  // with an expired token held up every other node there, and a peer keeping 16 bad hellos in
  // flight got all the others refused. A signed hello with a key that joined is slowed by its
  // key's failures instead: a guesser gets such a key only by joining with a valid token (or
  // from a copy of that node's hello, whose proof signs its name only), and is slowed by that
  // key's failures then. Every other hello is slowed by its address's, as before.
  std::set<std::string> known_keys;
  join_failures key_failures;
  // Refused and held joins are logged at most 20 in 10 s together (a guesser's hellos are as
  // many as it sends); the core supervisor, which answers the hello, counts every refusal
  // (gflex_core_join_refusals_total), these among them.
  log_throttle refusal_log{20, std::chrono::seconds(10)};
  std::map<uint64_t, pending_admit> held;  // answers delayed for addresses that keep failing
  uint64_t next_held = 1;
  // A token's record is read, changed and written back while the store answers and the
  // gatekeeper goes on with other messages. Each change of a token (by its store key) waits
  // for the one before it, so that joins at once neither lose each other's key bindings nor
  // pass its use limit, and no join's write undoes a closure or a revocation.
  std::set<std::string> tokens_changing;
  std::map<std::string, std::deque<std::function<void()>>> tokens_waiting;
  // Accounts whose key is being made, replaced or revoked: each reads the account's key
  // records, then writes, and one at a time per account keeps a creation from adding a second
  // key beside a replacement's, and a revocation from missing the key a replacement writes.
  std::set<std::string> accounts_keyed;
  // Keys banned since this gatekeeper started (the store holds them all): a join that read
  // its key's ban before the ban was written, then waited its turn on a token, is refused
  // here before its key is bound. Bound unchecked, the caught node came back under a new
  // name, and the token (scanned before the binding) stayed open to it.
  std::set<std::string> barred;
  // Keys whose ban, or the closing of one of their tokens, failed: banned again (it is done
  // again whole, each part once) after bar_retry. Logged only, the token stayed open to the
  // caught node's next key until the core restarted, and a ban never stored was lost with a
  // restarted gatekeeper.
  std::set<std::string> barring_again;
  std::map<std::string, int> bar_failures;  // by key: the wait doubles, to a minute at most
  static inline const char* name = "gatekeeper";
};

using gatekeeper_actor = caf::stateful_actor<gatekeeper_state>;

// Runs `change` of the token record at store key `key` once no other change of it is under
// way; `change` calls token_changed(self, key) when it is done (written, failed or refused).
void change_token(gatekeeper_actor* self, const std::string& key, std::function<void()> change) {
  auto& st = self->state;
  if (!st.tokens_changing.insert(key).second) {
    st.tokens_waiting[key].push_back(std::move(change));
    return;
  }
  change();
}

// The change of the token at `key` is done: the next waiting one starts.
void token_changed(gatekeeper_actor* self, const std::string& key) {
  auto& st = self->state;
  auto it = st.tokens_waiting.find(key);
  if (it == st.tokens_waiting.end()) {
    st.tokens_changing.erase(key);
    return;
  }
  auto next = std::move(it->second.front());
  it->second.pop_front();
  if (it->second.empty()) st.tokens_waiting.erase(it);
  next();
}

constexpr auto store_timeout = std::chrono::seconds(30);
constexpr auto bar_retry = std::chrono::seconds(2);  // a ban that failed is done again after

int64_t now_unix() {
  return static_cast<int64_t>(std::time(nullptr));
}

std::vector<uint8_t> bytes_of(const std::string& s) {
  return {s.begin(), s.end()};
}

store_batch one_write(std::string key, std::vector<uint8_t> value) {
  store_batch b;
  b.keys.push_back(std::move(key));
  b.values.push_back(std::move(value));
  return b;
}

// The store keys of the API key records of `account`, from a scan of api_key_store_key("").
// An empty record is a deleted one (store_batch erases with an empty value; a store that keeps
// the empty value holds no account there).
std::vector<std::string> keys_of(const std::string& account, const std::vector<std::string>& keys,
                                 const std::vector<std::vector<uint8_t>>& owners) {
  std::vector<std::string> out;
  for (size_t i = 0; i < keys.size() && i < owners.size(); ++i)
    if (std::string(owners[i].begin(), owners[i].end()) == account) out.push_back(keys[i]);
  return out;
}

// The refusal of a second change of one account's key while one is under way. Unavailable,
// not invalid: the same request passes once the first change is done, and the operator's CLI
// exits 1 (try again) on it, where 2 tells a script the request fails again as sent.
caf::error account_busy(const std::string& account) {
  return to_caf(error(errc::unavailable, "the API key of account " + account +
                                             " is being made or changed now; try again"));
}

// Changes the API key records of `account`: `change` is called with the store keys of its
// records (keys_of) and `done`, which answers the client and ends the change. One change of an
// account at a time (account_busy otherwise): two at once would both act on the same records.
template <class Answer, class Change>
caf::result<Answer> change_account_keys(gatekeeper_actor* self, const std::string& account,
                                        Change change) {
  if (!self->state.accounts_keyed.insert(account).second) return account_busy(account);
  auto rp = self->make_response_promise<Answer>();
  auto done = [=](auto&& answer) mutable {
    self->state.accounts_keyed.erase(account);
    rp.deliver(std::forward<decltype(answer)>(answer));
  };
  self->request(self->state.store, store_timeout, scan_atom::value, api_key_store_key(""))
      .then(
          [=](std::vector<std::string>& keys, std::vector<std::vector<uint8_t>>& owners) mutable {
            change(keys_of(account, keys, owners), done);
          },
          [=](caf::error& e) mutable { done(std::move(e)); });
  return rp;
}

// Whether a line about a refused or held join may be written now, within
// gatekeeper_state::refusal_log's bound; if lines were held back before it, it says how many.
bool may_log_join(gatekeeper_actor* self) {
  uint64_t held_back = 0;
  if (!self->state.refusal_log.allow(log_throttle::clock::now(), held_back)) return false;
  if (held_back > 0)
    spdlog::warn(
        "gatekeeper: {} more refused or held joins were not logged (a log line each would "
        "let a peer fill the disk; gflex_core_join_refusals_total counts the refusals)",
        held_back);
  return true;
}

// Decides a join and answers `p`: the token's record is read, checked, and its join count
// written back; every refusal is counted against the address.
void decide(gatekeeper_actor* self, pending_admit p) {
  auto refuse = [self](pending_admit& p, const error& e) {
    self->state.failures.record(p.address, join_failures::clock::now());
    if (p.known) self->state.key_failures.record(p.key, join_failures::clock::now());
    if (may_log_join(self))
      spdlog::warn("gatekeeper: refused a join from {}: {} ({} failures from there recently)",
                   p.address, e.message(),
                   self->state.failures.count(p.address, join_failures::clock::now()));
    p.promise.deliver(to_caf(e));
  };
  if (!p.proof_ok) {
    refuse(p, error(errc::permission_denied,
                    "the hello's signature does not match the node key it presents"));
    return;
  }
  if (!looks_like_join_token(p.token)) {
    refuse(p, error(errc::permission_denied,
                    p.token.empty() ? "a node needs a join token (--token) to join"
                                    : "that is not a join token (gft_ and 64 hex digits)"));
    return;
  }
  auto key = token_store_key(secret_digest(p.token));
  auto check_token = [=](pending_admit p) {
    if (auto w = self->state.tokens_waiting.find(key);
        w != self->state.tokens_waiting.end() && w->second.size() >= max_waiting_joins) {
      p.promise.deliver(to_caf(
          error(errc::limit_exceeded, std::to_string(max_waiting_joins) +
                                          " joins with this token are being admitted; try again "
                                          "shortly")));
      return;
    }
    change_token(self, key, [=]() mutable {
      auto done = [=] { token_changed(self, key); };
      self->request(self->state.store, store_timeout, read_atom::value, key)
          .then(
              [=](bool found, std::vector<uint8_t>& bytes) mutable {
                if (!found) {
                  refuse(p, error(errc::permission_denied, "unknown join token"));
                  done();
                  return;
                }
                auto r = decode_token_record(bytes);
                if (!r) {
                  p.promise.deliver(to_caf(r.error()));
                  done();
                  return;
                }
                if (auto ok = admits(*r, p.tier, p.key, now_unix()); !ok) {
                  refuse(p, ok.error());
                  done();
                  return;
                }
                if (self->state.barred.count(p.key) != 0) {
                  refuse(p, error(errc::permission_denied,
                                  "this node key is banned: its node was caught cheating"));
                  done();
                  return;
                }
                r->joins += 1;
                // The token binds to the keys that use it (up to its use limit).
                if (std::find(r->keys.begin(), r->keys.end(), p.key) == r->keys.end())
                  r->keys.push_back(p.key);
                // Read back after a failure: a binding written late spent a use of the
                // token on a node told it was refused (a reinstalled node with a new key then
                // found the token used up). Still this join's turn on the token (done()
                // comes after).
                const uint64_t joins = r->joins;
                auto bound = [joins, node = p.key](bool found, const std::vector<uint8_t>& bytes) {
                  auto now =
                      found ? decode_token_record(bytes)
                            : expected<join_token_record>(error(errc::store_error, "no record"));
                  return now && now->joins == joins &&
                         std::find(now->keys.begin(), now->keys.end(), node) != now->keys.end();
                };
                commit_checked(
                    self, self->state.store, store_timeout, one_write(key, encode_token_record(*r)),
                    read_back(key, std::chrono::minutes(5), bound),
                    [=]() mutable {
                      if (self->state.known_keys.size() < max_known_keys)
                        self->state.known_keys.insert(p.key);
                      p.promise.deliver(caf::ok_atom::value);
                      done();
                    },
                    [=](caf::error& e, caf::error&) mutable {
                      p.promise.deliver(e);
                      done();
                    });
              },
              [=](caf::error& e) mutable {
                p.promise.deliver(e);
                done();
              });
    });
  };
  // A banned key is refused whatever token it brings.
  self->request(self->state.store, store_timeout, read_atom::value, banned_key_store_key(p.key))
      .then(
          [=](bool banned, std::vector<uint8_t>& name) mutable {
            if (banned) {
              refuse(p, error(errc::permission_denied, "this node key is banned: node " +
                                                           std::string(name.begin(), name.end()) +
                                                           " was caught cheating"));
              return;
            }
            check_token(std::move(p));
          },
          [=](caf::error& e) mutable { p.promise.deliver(e); });
}

// Learns the keys bound to the stored tokens: a restarted core is rejoined by all its nodes at
// once, and those behind an address that fails must not wait for it.
void learn_known_keys(gatekeeper_actor* self) {
  self->request(self->state.store, store_timeout, scan_atom::value, std::string("token/"))
      .then(
          [=](std::vector<std::string>&, std::vector<std::vector<uint8_t>>& values) {
            auto& known = self->state.known_keys;
            for (const auto& v : values)
              if (auto r = decode_token_record(v))
                for (auto& k : r->keys)
                  if (known.size() < max_known_keys) known.insert(std::move(k));
          },
          [=](caf::error& e) {
            // Only slower joins: each key is learnt again when it joins.
            spdlog::warn("gatekeeper: cannot read the join tokens' node keys: {}",
                         self->system().render(e));
          });
}

// Holds the answer to held hello `id` for `wait`, then decides it.
void hold(gatekeeper_actor* self, uint64_t id, std::chrono::milliseconds wait) {
  auto it = self->state.held.find(id);
  if (it == self->state.held.end()) return;
  const auto& p = it->second;
  // A line each is within the refusals' bound: a failing address's every further hello
  // comes here, as many as it sends.
  if (may_log_join(self)) {
    const auto now = join_failures::clock::now();
    spdlog::info(
        "gatekeeper: holding the answer to a hello from {} for {} ms ({} failed joins from {} "
        "recently)",
        p.address, wait.count(),
        p.known ? self->state.key_failures.count(p.key, now)
                : self->state.failures.count(p.address, now),
        p.known ? "its node key" : "there");
  }
  self->delayed_send(self, wait, tick_atom::value, id);
}

caf::behavior gatekeeper(gatekeeper_actor* self, caf::actor store, std::string operator_key) {
  self->state.store = std::move(store);
  self->state.operator_key = std::move(operator_key);
  learn_known_keys(self);
  return {
      [=](update_atom, const std::string& role, caf::actor& replacement) {
        if (role != "store") return;
        self->state.store = replacement;
        learn_known_keys(self);  // a store that replaced a failed one may hold more
      },
      [=](auth_atom, const std::string& key) -> caf::result<std::string> {
        const auto& op = self->state.operator_key;
        if (!op.empty() && same_secret(key, op)) return std::string(operator_principal);
        if (!looks_like_api_key(key))
          return to_caf(error(errc::permission_denied,
                              key.empty() ? "this core needs an API key (--api-key-file or "
                                            "GFLEX_API_KEY)"
                                          : "that is not an API key (gfk_ and 64 hex digits)"));
        auto rp = self->make_response_promise<std::string>();
        self->request(self->state.store, store_timeout, read_atom::value,
                      api_key_store_key(secret_digest(key)))
            .then(
                [=](bool found, std::vector<uint8_t>& bytes) mutable {
                  // An empty record is a revoked or replaced key (see keys_of): refused as
                  // one never made, or it authenticated as the principal "".
                  if (!found || bytes.empty()) {
                    rp.deliver(to_caf(error(errc::permission_denied, "unknown API key")));
                    return;
                  }
                  rp.deliver(std::string(bytes.begin(), bytes.end()));
                },
                [=](caf::error& e) mutable { rp.deliver(e); });
        return rp;
      },
      [=](api_key_atom, const std::string& account) -> caf::result<std::string> {
        // One key per account, made once. The ledger opens the account before its key is
        // written, and a write that failed left an open account no key reached: it gets its
        // key when created again, and an account with a key is refused. Two creations of
        // one account at once would both find no key: the second is refused.
        return change_account_keys<std::string>(
            self, account, [=](const std::vector<std::string>& old, auto done) mutable {
              // Said how to give it a key all the same: a creation whose answer was lost
              // (the key written after the client stopped waiting) left a key shown to
              // nobody, and creating it again only ever comes here.
              if (!old.empty()) {
                done(to_caf(error(errc::invalid_argument,
                                  "account " + account +
                                      " exists already and has an API key; to give it a new "
                                      "one (its old one then opening nothing): gflex-core "
                                      "account rekey " +
                                      account)));
                return;
              }
              auto key = new_api_key();
              const auto stored_at = api_key_store_key(secret_digest(key));
              // Read back after a failure: a key written late was shown to nobody, and
              // the account, which has a key, could never be given one ("exists
              // already").
              commit_checked(
                  self, self->state.store, store_timeout, one_write(stored_at, bytes_of(account)),
                  holds_value(stored_at, std::chrono::minutes(5), bytes_of(account)),
                  [=]() mutable { done(key); },
                  [=](caf::error& e, caf::error&) mutable { done(std::move(e)); });
            });
      },
      [=](update_atom, api_key_atom, const std::string& account) -> caf::result<std::string> {
        // A leaked key opened the account for good: nothing replaced or deleted a key record.
        // The new record and the deletion of the old ones are one commit, so that no failure
        // leaves the old key valid beside a new one shown to nobody, nor the account with
        // neither. An account without a key (revoked) gets one.
        return change_account_keys<std::string>(
            self, account, [=](const std::vector<std::string>& old, auto done) mutable {
              auto key = new_api_key();
              const auto stored_at = api_key_store_key(secret_digest(key));
              auto batch = one_write(stored_at, bytes_of(account));
              for (const auto& k : old) {
                batch.keys.push_back(k);
                batch.values.emplace_back();
              }
              // Read back after a failure: the new record landed only with the deletions,
              // and a key written late was shown to nobody while the old one was gone.
              commit_checked(
                  self, self->state.store, store_timeout, std::move(batch),
                  holds_value(stored_at, std::chrono::minutes(5), bytes_of(account)),
                  [=]() mutable {
                    spdlog::info(
                        "gatekeeper: account {} has a new API key ({} old one{} "
                        "refused from now on)",
                        account, old.size(), old.size() == 1 ? "" : "s");
                    done(key);
                  },
                  [=](caf::error& e, caf::error&) mutable { done(std::move(e)); });
            });
      },
      [=](revoke_atom, api_key_atom, const std::string& account) -> caf::result<caf::ok_atom> {
        // The key records go; the account, its credits and jobs stay, opened by no key until
        // it is given a new one. An account without a key is answered ok: revoking again
        // (after a lost answer) finds nothing left to do.
        return change_account_keys<caf::ok_atom>(
            self, account, [=](const std::vector<std::string>& old, auto done) mutable {
              if (old.empty()) {
                done(caf::ok_atom::value);
                return;
              }
              store_batch batch;
              for (const auto& k : old) {
                batch.keys.push_back(k);
                batch.values.emplace_back();
              }
              // Read back after a failure: a revocation that landed late was reported as
              // failed, and the operator believed the key still opened the account.
              auto gone = [](bool found, const std::vector<uint8_t>& now) {
                return !found || now.empty();
              };
              commit_checked(
                  self, self->state.store, store_timeout, std::move(batch),
                  read_back(old.front(), std::chrono::minutes(5), gone),
                  [=]() mutable {
                    spdlog::info("gatekeeper: the API key of account {} is revoked", account);
                    done(caf::ok_atom::value);
                  },
                  [=](caf::error& e, caf::error&) mutable { done(std::move(e)); });
            });
      },
      [=](token_atom, const std::string& tier, int64_t lifetime_s,
          int64_t uses) -> caf::result<std::string> {
        const auto named = parse_node_tier(tier);
        if (!named)
          return to_caf(error(errc::invalid_argument, "--tier: '" + tier + "' is not a tier (" +
                                                          enum_choices<node_tier>() + ")"));
        if (lifetime_s < 0)
          return to_caf(error(errc::invalid_argument, "a token's lifetime cannot be negative"));
        if (uses < 0 || uses > 1000000)
          return to_caf(error(errc::invalid_argument,
                              "--uses: a token admits 0 (any number) to 1000000 node keys"));
        auto token = new_join_token();
        auto digest = secret_digest(token);
        join_token_record r;
        r.id = digest.substr(0, 12);
        r.tier = *named;
        r.created_unix = now_unix();
        r.expires_unix = lifetime_s == 0 ? 0 : r.created_unix + lifetime_s;
        r.uses = static_cast<uint64_t>(uses);
        auto rp = self->make_response_promise<std::string>();
        // Read back after a failure: a token that landed late was live, and its secret shown
        // to nobody.
        const auto record = encode_token_record(r);
        commit_checked(
            self, self->state.store, store_timeout, one_write(token_store_key(digest), record),
            holds_value(token_store_key(digest), std::chrono::minutes(5), record),
            [=]() mutable {
              spdlog::info("gatekeeper: join token {} created for the {} tier", r.id, tier);
              rp.deliver(token);
            },
            [=](caf::error& e, caf::error&) mutable { rp.deliver(e); });
        return rp;
      },
      [=](token_atom) -> caf::result<std::vector<join_token_record>> {
        auto rp = self->make_response_promise<std::vector<join_token_record>>();
        self->request(self->state.store, store_timeout, scan_atom::value, std::string("token/"))
            .then(
                [=](std::vector<std::string>& keys,
                    std::vector<std::vector<uint8_t>>& values) mutable {
                  std::vector<join_token_record> out;
                  for (size_t i = 0; i < keys.size(); ++i) {
                    auto r = decode_token_record(values[i]);
                    if (!r) {
                      spdlog::error("store: {}: {}", keys[i], r.error().message());
                      continue;
                    }
                    out.push_back(std::move(*r));
                  }
                  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
                    return a.created_unix < b.created_unix;
                  });
                  rp.deliver(std::move(out));
                },
                [=](caf::error& e) mutable { rp.deliver(e); });
        return rp;
      },
      [=](revoke_atom, const std::string& id) -> caf::result<caf::ok_atom> {
        if (id.size() < 6 || id.size() > 12)
          return to_caf(error(errc::invalid_argument,
                              "a token id has 6 to 12 hex digits (see `gflex-core token list`)"));
        auto rp = self->make_response_promise<caf::ok_atom>();
        self->request(self->state.store, store_timeout, scan_atom::value, std::string("token/"))
            .then(
                [=](std::vector<std::string>& keys, std::vector<std::vector<uint8_t>>&) mutable {
                  std::vector<size_t> matches;
                  for (size_t i = 0; i < keys.size(); ++i)
                    if (keys[i].compare(6, id.size(), id) == 0) matches.push_back(i);
                  if (matches.size() != 1) {
                    rp.deliver(to_caf(error(errc::invalid_argument,
                                            matches.empty() ? "no join token has the id " + id
                                                            : "the id " + id +
                                                                  " names several tokens; give "
                                                                  "more digits")));
                    return;
                  }
                  // Read again and written under the token's turn (change_token).
                  const std::string key = keys[matches[0]];
                  change_token(self, key, [=]() mutable {
                    auto done = [=] { token_changed(self, key); };
                    self->request(self->state.store, store_timeout, read_atom::value, key)
                        .then(
                            [=](bool found, std::vector<uint8_t>& bytes) mutable {
                              auto r = found ? decode_token_record(bytes)
                                             : expected<join_token_record>(
                                                   error(errc::store_error, "the token is gone"));
                              if (!r) {
                                rp.deliver(to_caf(r.error()));
                                done();
                                return;
                              }
                              r->revoked = true;
                              // Read back after a failure: a revocation that landed late was
                              // reported as failed.
                              auto revoked = [](bool found, const std::vector<uint8_t>& now) {
                                auto stored = found ? decode_token_record(now)
                                                    : expected<join_token_record>(
                                                          error(errc::store_error, "no record"));
                                return stored && stored->revoked;
                              };
                              commit_checked(
                                  self, self->state.store, store_timeout,
                                  one_write(key, encode_token_record(*r)),
                                  read_back(key, std::chrono::minutes(5), revoked),
                                  [=]() mutable {
                                    spdlog::info("gatekeeper: join token {} revoked", r->id);
                                    rp.deliver(caf::ok_atom::value);
                                    done();
                                  },
                                  [=](caf::error& e, caf::error&) mutable {
                                    rp.deliver(e);
                                    done();
                                  });
                            },
                            [=](caf::error& e) mutable {
                              rp.deliver(e);
                              done();
                            });
                  });
                },
                [=](caf::error& e) mutable { rp.deliver(e); });
        return rp;
      },
      [=](admit_atom, std::string& token, std::string& tier, std::string& address, bool proof_ok,
          std::string& key) -> caf::result<caf::ok_atom> {
        auto rp = self->make_response_promise<caf::ok_atom>();
        pending_admit p{rp,       std::move(token), std::move(tier), std::move(address),
                        proof_ok, std::move(key)};
        auto& st = self->state;
        const auto now = join_failures::clock::now();
        p.known = p.proof_ok && st.known_keys.count(p.key) != 0;
        const auto wait =
            p.known ? st.key_failures.delay(p.key, now) : st.failures.delay(p.address, now);
        if (wait.count() == 0) {
          decide(self, std::move(p));
          return rp;
        }
        // Held, not refused: a node that has the right token still gets in, only slower. Each
        // known key has slots of its own, so that a flood from its address crowds it out of
        // none.
        const auto alike = std::count_if(st.held.begin(), st.held.end(), [&](const auto& h) {
          const auto& o = h.second;
          return o.known == p.known && (p.known ? o.key == p.key : o.address == p.address);
        });
        if (st.held.size() >= max_held || static_cast<size_t>(alike) >= max_held_per_address) {
          p.promise.deliver(to_caf(
              error(errc::limit_exceeded, "too many joins are waiting for an answer; try later")));
          return rp;
        }
        const auto id = st.next_held++;
        st.held.emplace(id, std::move(p));
        hold(self, id, wait);
        return rp;
      },
      // From the reputation tracker: the node with `key` (hex) was caught. Its key is banned
      // and every token it joined with is closed to new keys, so that it cannot return under
      // a new name and key with the same token, nor with the same key and a new token. The
      // other nodes bound to a shared token may still come back with it.
      [=](bar_atom, const std::string& key, const std::string& name) {
        auto& st = self->state;
        st.barred.insert(key);
        if (self->current_sender() == self->ctrl()) st.barring_again.erase(key);
        auto report = [=](caf::error& e) {
          auto& st = self->state;
          if (!st.barring_again.insert(key).second) return;  // done again already
          const int failures = std::min(++st.bar_failures[key], 6);
          const auto wait = std::min<std::chrono::seconds>(bar_retry * (1 << (failures - 1)),
                                                           std::chrono::seconds(60));
          spdlog::error("gatekeeper: cannot ban the key of node {} (again in {} s): {}", name,
                        wait.count(), self->system().render(e));
          self->delayed_send(self, wait, bar_atom::value, key, name);
        };
        // Read back after a failure: a ban that landed late is not written again.
        commit_checked(
            self, st.store, store_timeout, one_write(banned_key_store_key(key), bytes_of(name)),
            holds_value(banned_key_store_key(key), std::chrono::minutes(5), bytes_of(name)), [] {},
            [=](caf::error& e, caf::error&) { report(e); });
        // Each token bound to the key is closed under its turn (change_token): read again,
        // so that a join written since is kept, and written before any join that waits.
        auto close = [=](const std::string& token_key) {
          change_token(self, token_key, [=] {
            auto done = [=] { token_changed(self, token_key); };
            auto failed = [=](caf::error& e) {
              report(e);
              done();
            };
            self->request(self->state.store, store_timeout, read_atom::value, token_key)
                .then(
                    [=](bool found, std::vector<uint8_t>& bytes) {
                      auto r = found ? decode_token_record(bytes)
                                     : expected<join_token_record>(
                                           error(errc::store_error, "the token is gone"));
                      if (!r || r->revoked || !r->closed.empty()) {
                        done();
                        return;
                      }
                      r->closed = "node " + name + " joined with it and was caught";
                      spdlog::warn("gatekeeper: join token {} closed to new keys: {}", r->id,
                                   r->closed);
                      self->request(self->state.store, store_timeout, commit_atom::value,
                                    one_write(token_key, encode_token_record(*r)))
                          .then([=](caf::ok_atom) { done(); }, failed);
                    },
                    failed);
          });
        };
        self->request(st.store, store_timeout, scan_atom::value, std::string("token/"))
            .then(
                [=](std::vector<std::string>& keys, std::vector<std::vector<uint8_t>>& values) {
                  for (size_t i = 0; i < keys.size(); ++i) {
                    auto r = decode_token_record(values[i]);
                    if (r && std::find(r->keys.begin(), r->keys.end(), key) != r->keys.end())
                      close(keys[i]);
                  }
                },
                report);
      },
      [=](tick_atom, uint64_t id) {
        auto it = self->state.held.find(id);
        if (it == self->state.held.end()) return;
        auto p = std::move(it->second);
        self->state.held.erase(it);
        decide(self, std::move(p));
      },
  };
}

}  // namespace

caf::actor spawn_gatekeeper(caf::actor_system& sys, caf::actor store, std::string operator_key) {
  return sys.spawn(gatekeeper, std::move(store), std::move(operator_key));
}

}  // namespace gflex
