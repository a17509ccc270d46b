#include "market_commands.hpp"
#include "fail.hpp"

#include <spdlog/spdlog.h>

#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "client_connection.hpp"
#include "gflex/gflex.hpp"
#include "gflex/runtime/credits.hpp"
#include "status_json.hpp"

namespace gflex::app {

namespace {

struct market_flags {
  connection_flags link;
  std::string id;
  std::string amount;
  bool as_json = false;
};

int run_account(const market_flags& f) {
  std::optional<client> c;
  if (int code = connect_core(f.link, c); code != 0) return code;
  std::string id = f.id;
  if (id.empty()) {
    // The key's own account (the operator's: the platform's). "platform" for every key
    // refused an account's key unless it named its account.
    auto who = c->principal();
    if (!who) return fail_answer(who.error());
    id = *who == "operator" ? std::string("platform") : *who;
  }
  auto a = c->account(id);
  if (!a) return fail_answer(a.error());
  if (f.as_json) {
    std::printf("%s\n", json_text(to_json(*a)).c_str());
    return 0;
  }
  std::printf("%s: %s credits\n", a->id.c_str(), format_credits(a->balance).c_str());
  for (const auto& line : a->recent) std::printf("  %s\n", line.c_str());
  return 0;
}

int run_verify(const market_flags& f) {
  std::optional<client> c;
  if (int code = connect_core(f.link, c); code != 0) return code;
  auto r = c->verify_ledger();
  if (!r) return fail_answer(r.error());
  if (f.as_json) {
    std::printf("%s\n", json_text(to_json(*r)).c_str());
  } else if (r->ok) {
    std::printf(
        "ledger ok: %llu entries, %llu accounts, %s credits issued, %s in escrow; "
        "the chain verifies, every transaction balances, no account is below zero\n",
        static_cast<unsigned long long>(r->entries), static_cast<unsigned long long>(r->accounts),
        format_credits(r->issued).c_str(), format_credits(r->in_escrow).c_str());
  } else {
    std::printf("ledger FAILS its check: %s\n", r->problem.c_str());
  }
  return r->ok ? 0 : 1;
}

int run_topup(const market_flags& f) {
  auto amount = parse_credits(f.amount);
  if (!amount) return fail(amount.error(), 2);
  std::optional<client> c;
  if (int code = connect_core(f.link, c); code != 0) return code;
  if (auto r = c->topup(f.id, *amount); !r) return fail_answer(r.error());
  // 0 resumes a job paused because its account could not hold a round's escrow, once the
  // account is credited (a job at the largest budget could not be topped up at all); the core
  // refuses it for any other job.
  if (*amount == 0)
    std::printf("%s: resumed, its budget as it was\n", f.id.c_str());
  else
    std::printf("%s: budget raised by %s credits\n", f.id.c_str(), format_credits(*amount).c_str());
  return 0;
}

}  // namespace

void add_market_commands(CLI::App& app, std::function<int()>& run) {
  auto f = std::make_shared<market_flags>();
  auto set = [&run, f](int (*fn)(const market_flags&)) {
    return [&run, f, fn] { run = [f, fn] { return fn(*f); }; };
  };
  auto core_flag = [&](CLI::App* cmd) { add_connection_flags(cmd, f->link); };

  auto* account = app.add_subcommand("account", "show an account's balance and recent entries");
  account->add_option("id", f->id,
                      "user/NAME, node/NAME, escrow/JOB or platform (default: the key's own "
                      "account; the operator's: platform)");
  account->add_flag("--json", f->as_json, "print JSON");
  core_flag(account);
  account->callback(set(run_account));

  auto* ledger = app.add_subcommand("ledger", "the credit ledger");
  ledger->require_subcommand(1);
  auto* verify = ledger->add_subcommand(
      "verify",
      "check the hash chain, that every transaction balances, that no account is "
      "below zero, and that ended jobs hold no escrow");
  verify->add_flag("--json", f->as_json, "print JSON");
  core_flag(verify);
  verify->callback(set(run_verify));

  auto* topup = app.add_subcommand("topup", "raise a metered job's budget; a paused job resumes");
  topup->add_option("job", f->id, "a job id")->required();
  topup
      ->add_option("amount", f->amount,
                   "credits to add (0: resume a job paused for its account, once credited)")
      ->required();
  core_flag(topup);
  topup->callback(set(run_topup));
}

}  // namespace gflex::app
