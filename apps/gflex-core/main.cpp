/// @file
/// `gflex-core init --data-dir DIR`: makes a new core's credentials (TLS, operator key).
/// `gflex-core --listen HOST:PORT --data-dir DIR`: runs a core until SIGINT or SIGTERM.
/// `gflex-core account create|rekey|revoke|credit ...`, `gflex-core token create|list|revoke
/// ...`: the operator's commands, against a running core, with the operator's key.

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <optional>
#include <random>

#include "client_connection.hpp"
#include "core_address.hpp"
#include "dashboard.hpp"
#include "fail.hpp"
#include "gflex/gflex.hpp"
#include "gflex/kernels/blas_kernels.hpp"
#include "gflex/runtime/credits.hpp"
#include "gflex/runtime/fd_limit.hpp"
#include "gflex/runtime/lifetime.hpp"
#include "gflex/runtime/logging.hpp"
#include "large_buffers.hpp"
#include "parse_command_line.hpp"

namespace {

using gflex::app::fail;
using gflex::app::fail_answer;

struct operator_flags {
  gflex::app::connection_flags link;
  std::string action, id, amount, reference, tier = "community", expires = "0";
  int64_t uses = -1;  // the tier's default
};

// A credit's reference when the operator gives none: random, so that it names this credit
// only.
std::string fresh_reference() {
  std::random_device rd;
  char text[32];
  std::snprintf(text, sizeof text, "cli-%08x%08x", rd(), rd());
  return text;
}

// The operator's commands: a client of the running core.
int run_operator(const operator_flags& f) {
  int64_t amount = 0;
  if (f.action == "credit") {
    auto a = gflex::parse_credits(f.amount);
    if (!a) return fail(a.error(), 2);
    if (*a == 0) return fail(gflex::error(gflex::errc::invalid_argument, "credit zero"), 2);
    amount = *a;
  }
  int64_t lifetime_s = 0;
  if (f.action == "token-create") {
    auto l = gflex::parse_lifetime(f.expires);
    if (!l) return fail(l.error(), 2);
    lifetime_s = *l;
  }
  std::optional<gflex::client> c;
  if (int code = gflex::app::connect_core(f.link, c); code != 0) return code;
  // The core's refusals exit as the gflex client's do (fail_answer): 2 for a request that fails
  // again as sent (an account that exists, an unknown one or token, a key that is not the
  // operator's), 1 for what trying again may serve (a lost link, a store error).
  if (f.action == "create" || f.action == "rekey") {
    auto key = f.action == "create" ? c->create_account(f.id) : c->replace_api_key(f.id);
    if (!key) return fail_answer(key.error());
    // The key goes to stdout alone, to be saved by whoever runs this; it is shown once.
    if (f.action == "create")
      std::fprintf(stderr, "%s opened; its API key (shown once, keep it secret):\n", f.id.c_str());
    else
      std::fprintf(stderr,
                   "%s has a new API key; the old one opens nothing from now on (shown once, "
                   "keep it secret):\n",
                   f.id.c_str());
    std::printf("%s\n", key->c_str());
    return 0;
  }
  if (f.action == "revoke") {
    if (auto r = c->revoke_api_key(f.id); !r) return fail_answer(r.error());
    std::printf("%s: API key revoked; no key opens it until `gflex-core account rekey %s`\n",
                f.id.c_str(), f.id.c_str());
    return 0;
  }
  if (f.action == "credit") {
    const std::string reference = f.reference.empty() ? fresh_reference() : f.reference;
    auto seq = c->credit_account(f.id, amount, reference);
    if (!seq) {
      // The credit may still have been booked (an answer lost on the way back): the same
      // reference, sent again, books it at most once. A refusal (an unknown account, another
      // key's) booked nothing: no retry is offered for it.
      const auto code = seq.error().code();
      if (code == gflex::errc::unavailable || code == gflex::errc::io_error ||
          code == gflex::errc::store_error)
        std::fprintf(stderr,
                     "to retry without crediting twice: gflex-core account credit %s %s "
                     "--reference %s\n",
                     f.id.c_str(), f.amount.c_str(), reference.c_str());
      return fail_answer(seq.error());
    }
    // A reference booked before is answered with its first entry: "booked", not "credited
    // now", is true both times. Said before the balance is read: a failed read (exit 1, no
    // reference shown) had the operator credit again under a new reference.
    std::printf("%s: %s credits booked as ledger entry %llu (reference %s)", f.id.c_str(),
                gflex::format_credits(amount).c_str(), static_cast<unsigned long long>(*seq),
                reference.c_str());
    auto info = c->account(f.id);
    if (info)
      std::printf(", balance %s credits\n", gflex::format_credits(info->balance).c_str());
    else
      std::printf("; the balance cannot be read now (%s)\n", info.error().message().c_str());
    return 0;
  }
  if (f.action == "token-create") {
    auto token = c->create_token(f.tier, lifetime_s, f.uses);
    if (!token) return fail_answer(token.error());
    std::printf("%s\n", token->c_str());
    return 0;
  }
  if (f.action == "token-revoke") {
    if (auto r = c->revoke_token(f.id); !r) return fail_answer(r.error());
    std::printf("token %s revoked\n", f.id.c_str());
    return 0;
  }
  auto tokens = c->tokens();
  if (!tokens) return fail_answer(tokens.error());
  auto when = [](int64_t t) {
    if (t == 0) return std::string("never");
    char buf[32];
    std::time_t tt = static_cast<std::time_t>(t);
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&tt));
    return std::string(buf);
  };
  std::printf("%-12s  %-9s  %-20s  %-20s  %-7s  %-6s  %-9s  %s\n", "id", "tier", "created",
              "expires", "revoked", "joins", "keys", "uses");
  for (const auto& t : *tokens)
    std::printf("%-12s  %-9s  %-20s  %-20s  %-7s  %-6llu  %-9zu  %s\n", t.id.c_str(),
                to_string(t.tier), when(t.created_unix).c_str(), when(t.expires_unix).c_str(),
                t.revoked ? "yes" : "no", static_cast<unsigned long long>(t.joins), t.keys.size(),
                t.uses == 0 ? "any" : std::to_string(t.uses).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  gflex::kernels::use_best_blas_kernels(argv);
  gflex::app::map_large_buffers_apart();
  CLI::App app{"gflex-core: the coordinating core of a GPUFlex cloud"};
  std::string listen = "127.0.0.1:7400", log_level = "info", metrics_listen;
  gflex::core_config config;
  int64_t data_quota_mib = static_cast<int64_t>(config.max_data_bytes_per_account >> 20);
  int64_t job_memory_account_mib = static_cast<int64_t>(config.max_job_memory_per_account >> 20);
  int64_t job_memory_mib = 0;
  app.add_option("--listen", listen, "HOST:PORT to accept nodes and clients on")
      ->capture_default_str();
  app.add_option("--metrics-listen", metrics_listen,
                 "HOST:PORT to serve Prometheus metrics on (/metrics); off unless given");
  std::string http_listen;
  gflex::app::dashboard_options dashboard;
  app.add_option("--http-listen", http_listen,
                 "HOST:PORT to serve the web dashboard and its JSON API on (read-only, behind "
                 "an API key); off unless given");
  app.add_option("--chart-js", dashboard.chart_js,
                 "Chart.js for the dashboard (Debian's libjs-chart.js)")
      ->capture_default_str();
  app.add_option("--data-dir", config.data_dir,
                 "directory of the LMDB store and the credentials `init` made");
  auto* store =
      app.add_option("--store", config.store_url,
                     "etcd://HOST:PORT[,HOST:PORT...]: one of a core of several servers, its "
                     "state in etcd, serving nodes and clients while it leads "
                     "(docs/FAILURES.md); default: this core alone, its state in LMDB in "
                     "--data-dir")
          // An empty one (`--store "$ETCD"`, unset) ran this core alone: split brain.
          ->check(CLI::Validator(
              [](std::string& s) {
                return s.empty() ? std::string("must name the etcd members, got nothing")
                                 : std::string();
              },
              "etcd://..."));
  app.add_option("--core-id", config.core_id,
                 "this core's name among the cores (default: its --advertise address, else its "
                 "--listen address)");
  app.add_option("--advertise", config.advertise,
                 "HOST:PORT the other machines reach this core at, for the other cores to send "
                 "clients to when it leads (with --store etcd://; default: the --listen "
                 "address, which must then name one)");
  app.add_option("--chunk-listen", config.chunk_listen,
                 "HOST:PORT the other cores fetch parameters and checkpoints from (with "
                 "--store etcd://)");
  app.add_option("--chunk-advertise", config.chunk_advertise,
                 "HOST:PORT the other cores reach --chunk-listen at, where that is another "
                 "address (NAT, a public address on no interface here; --chunk-listen may then "
                 "be 0.0.0.0:PORT)")
      ->needs(store);
  app.add_option("--leader-lease-s", config.leader_lease_s,
                 "seconds without renewal after which a leader's etcd lease lapses")
      ->needs(store)
      ->check(CLI::Range(2, 600))
      ->capture_default_str();
  app.add_option("--heartbeat-ms", config.heartbeat_ms, "heartbeat interval told to nodes")
      ->check(CLI::Range(50, 600000))
      ->capture_default_str();
  app.add_option("--lease-ms", config.lease_ms, "silence after which a node is taken as lost")
      ->check(CLI::Range(100, 3600000))
      ->capture_default_str();
  app.add_option("--fee", config.fee, "the platform's share of every payment to a node")
      ->check(gflex::app::finite_range(0.0, 0.99))
      ->capture_default_str();
  app.add_option("--cloud-price", config.cloud_price,
                 "credits a device-hour costs in a public cloud, for cost reports (default: an "
                 "AWS p3.2xlarge on demand, $3.06/h)")
      ->check(gflex::app::finite_range(0.0, 1e6))
      ->capture_default_str();
  app.add_option("--newcomer-share", config.newcomer_share,
                 "share of each round's assignments reserved for nodes with little history")
      ->check(gflex::app::finite_range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--max-per-address", config.max_nodes_per_address,
                 "nodes that may be connected from one address at once")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app.add_option("--chunk-rate", config.chunk_mib_per_s,
                 "MiB per second of data chunks one node may fetch (sustained; an 8 s burst)")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app.add_option("--chunk-queue", config.chunk_queue,
                 "chunk requests one node may have waiting; one more disconnects it")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--payload-chunk-kib", config.payload_chunk_kib,
                 "parameters, updates and exported models larger than this travel as "
                 "content-addressed chunks of it, KiB")
      ->check(CLI::Range(16, 65536))
      ->capture_default_str();
  app.add_option("--shard-samples", config.shard_samples,
                 "training samples per data shard of a built-in data set (a job has at most "
                 "as many workers as shards)")
      ->check(CLI::Range(int64_t{1}, int64_t{1000000}))
      ->capture_default_str();
  app.add_option("--crash-job-at-round", config.crash_job_at_round,
                 "every job actor throws while its Nth round is open (a test aid)")
      ->check(CLI::Range(0, 1000000))
      ->group("");
  app.add_option("--store-commit-delay-ms", config.store_commit_delay_ms,
                 "every store commit waits this long first (a test aid)")
      ->check(CLI::Range(0, 600000))
      ->group("");
  app.add_option("--ledger-wait-ms", config.ledger_wait_ms,
                 "how long a ledger write may take before its outcome is asked (a test aid)")
      ->check(CLI::Range(100, 3600000))
      ->group("");
  app.add_option("--max-jobs-per-account", config.max_jobs_per_account,
                 "unfinished jobs one account may have")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option(
         "--max-data-per-account-mib", data_quota_mib,
         "MiB of the core's memory one account's data sets may take (shards as stored, test splits "
         "decoded)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30))
      ->capture_default_str();
  app.add_option("--max-job-memory-per-account-mib", job_memory_account_mib,
                 "MiB of the core's memory one account's unfinished jobs' models may take "
                 "(parameters three times, and two rounds of workers' updates)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30))
      ->capture_default_str();
  app.add_option("--max-job-memory-mib", job_memory_mib,
                 "MiB of the core's memory every account's unfinished jobs' models may take "
                 "(default: half of this machine's memory)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  app.add_option("--unverified", config.unverified,
                 "when no core-tier worker can re-compute sampled results: wait for one, or "
                 "accept them unverified (counted in each job's unverified_results)")
      ->check(CLI::IsMember({"wait", "accept"}))
      ->capture_default_str();
  app.add_option("--verify-wait-s", config.verify_wait_s,
                 "seconds a re-computation waits for a core-tier worker before --unverified "
                 "applies")
      ->check(gflex::app::finite_range(0.1, 86400.0))
      ->capture_default_str();
  app.add_flag("--insecure", config.insecure,
               "serve plain TCP instead of TLS: links are not encrypted (a warning is logged)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off")
      ->capture_default_str();
  app.fallthrough();

  std::filesystem::path init_dir;
  auto* init = app.add_subcommand(
      "init",
      "make a new core's credentials: TLS authority and certificate, the bundle nodes "
      "and clients pin (DATA_DIR/core-cert.pem), and the operator key "
      "(DATA_DIR/operator.key)");
  init->add_option("--data-dir", init_dir, "the core's data directory")->required();

  operator_flags f;
  auto* account = app.add_subcommand(
      "account", "operator: open and credit ledger accounts, replace or revoke their API keys");
  account->require_subcommand(1);
  auto* create = account->add_subcommand("create", "open an account; prints its API key");
  create->add_option("id", f.id, "user/NAME")->required();
  gflex::app::add_connection_flags(create, f.link);
  create->callback([&] { f.action = "create"; });
  // A leaked key opened its account for good: these replace it, or take it away.
  auto* rekey = account->add_subcommand(
      "rekey", "give an account a new API key, which it prints; the old one opens nothing more");
  rekey->add_option("id", f.id, "user/NAME")->required();
  gflex::app::add_connection_flags(rekey, f.link);
  rekey->callback([&] { f.action = "rekey"; });
  auto* revoke = account->add_subcommand(
      "revoke",
      "revoke an account's API key: it keeps its credits and jobs, and no key opens it until "
      "`account rekey`");
  revoke->add_option("id", f.id, "user/NAME")->required();
  gflex::app::add_connection_flags(revoke, f.link);
  revoke->callback([&] { f.action = "revoke"; });
  auto* credit = account->add_subcommand("credit", "credit an account from outside");
  credit->add_option("id", f.id, "user/NAME")->required();
  credit->add_option("amount", f.amount, "credits")->required();
  credit->add_option("--reference", f.reference,
                     "the payment's id (1-128 of A-Z a-z 0-9 . _ -): a reference is credited "
                     "once, so running the command again with it credits nothing more "
                     "(default: a fresh one, printed)");
  gflex::app::add_connection_flags(credit, f.link);
  credit->callback([&] { f.action = "credit"; });

  auto* token = app.add_subcommand("token", "operator: join tokens for nodes");
  token->require_subcommand(1);
  auto* token_create = token->add_subcommand("create", "make a join token; prints it");
  token_create->add_option("--tier", f.tier, "community or core")
      ->check(CLI::IsMember({"community", "core"}))
      ->capture_default_str();
  token_create
      ->add_option("--expires", f.expires,
                   "how long it admits new node keys: 0 (until revoked), or 90m, 12h, 7d ... "
                   "(the keys it admitted rejoin after; revoke it to shut them out)")
      ->capture_default_str();
  token_create
      ->add_option("--uses", f.uses,
                   "how many node keys it admits, 0 for any number (default: 1 for a community "
                   "token, any number for a core token)")
      ->check(CLI::Range(int64_t{0}, int64_t{1000000}));
  gflex::app::add_connection_flags(token_create, f.link);
  token_create->callback([&] { f.action = "token-create"; });
  auto* token_list = token->add_subcommand("list", "show every join token (not the tokens)");
  gflex::app::add_connection_flags(token_list, f.link);
  token_list->callback([&] { f.action = "token-list"; });
  auto* token_revoke = token->add_subcommand("revoke", "revoke a join token by its id");
  token_revoke->add_option("id", f.id, "the token's id (as `token list` shows it)")->required();
  gflex::app::add_connection_flags(token_revoke, f.link);
  token_revoke->callback([&] { f.action = "token-revoke"; });
  if (auto code = gflex::app::parse_command_line(app, argc, argv)) return *code;
  config.max_data_bytes_per_account = static_cast<uint64_t>(data_quota_mib) << 20;
  config.max_job_memory_per_account = static_cast<uint64_t>(job_memory_account_mib) << 20;
  config.max_job_memory = static_cast<uint64_t>(job_memory_mib) << 20;

  if (auto ok = gflex::init_logging(log_level); !ok) {
    std::fprintf(stderr, "gflex-core: %s\n", ok.error().message().c_str());
    return 2;
  }
  // The core's own flags are not an operator command's: `gflex-core --insecure token list`
  // set the core's --insecure, which nothing used, and the command tried TLS.
  if (init->parsed() || !f.action.empty()) {
    std::string command = init->parsed()         ? "init"
                          : f.action == "create" ? "account create"
                          : f.action == "credit" ? "account credit"
                          : f.action == "rekey"  ? "account rekey"
                          : f.action == "revoke" ? "account revoke"
                                                 : f.action;
    std::replace(command.begin(), command.end(), '-', ' ');
    for (const CLI::Option* option : app.get_options())
      if (option->count() > 0 && option->get_name() != "--log-level") {
        std::fprintf(stderr,
                     "gflex-core: %s is a flag of the core itself, not of `%s`: give that "
                     "command's flags after its name (gflex-core %s --help)\n",
                     option->get_name().c_str(), command.c_str(), command.c_str());
        return 2;
      }
  }
  if (init->parsed()) {
    auto fingerprint = gflex::init_core(init_dir);
    if (!fingerprint) return fail(fingerprint.error(), 2);
    std::printf(
        "core credentials made in %s\n"
        "  give nodes and clients:  %s  (--core-cert; authority %s)\n"
        "  operator key:            %s  (--api-key-file; keep it secret)\n",
        init_dir.string().c_str(), (init_dir / "core-cert.pem").string().c_str(),
        fingerprint->c_str(), (init_dir / "operator.key").string().c_str());
    return 0;
  }
  if (!f.action.empty()) return run_operator(f);
  if (config.data_dir.empty()) {
    std::fprintf(stderr, "gflex-core: --data-dir is required to run a core\n");
    return 2;
  }
  auto address = gflex::app::start_daemon("gflex-core", log_level, listen, "--listen");
  if (!address) return 2;
  // Each node and client holds a connection, one descriptor: the 10,000 nodes a core is
  // measured with (docs/SCALING.md), their clients, the store and the metrics fit in 16,384.
  gflex::raise_fd_limit(16384, "10,000 nodes (a connection each) and their clients");
  config.host = address->host;
  config.port = address->port;
  config.standalone = true;
  // Every address checked before anything listens: two flags on one port failed as a port in
  // use (exit 1), the dashboard's only after the core had started, and a service restarted
  // the core for ever on flags that never work.
  std::vector<std::pair<std::string, gflex::app::host_port>> listens{{"--listen", *address}};
  for (const auto& [flag, text] :
       {std::pair<std::string, std::string>{"--metrics-listen", metrics_listen},
        {"--http-listen", http_listen}}) {
    if (text.empty()) continue;
    auto where = gflex::app::parse_host_port(text, flag);
    if (!where) return fail(where.error(), 2);
    listens.emplace_back(flag, *where);
  }
  // A chunk address of port 0 (any) or one malformed is left to the chunk service to judge.
  if (auto chunks = gflex::app::parse_host_port(config.chunk_listen, "--chunk-listen"); chunks)
    listens.emplace_back("--chunk-listen", *chunks);
  if (auto distinct = gflex::app::check_distinct_listens(listens); !distinct)
    return fail(distinct.error(), 2);
  if (int code = gflex::app::serve_metrics(metrics_listen); code != 0) return code;
  if (http_listen.empty()) return gflex::run_core(config);
  auto where = gflex::app::parse_host_port(http_listen, "--http-listen");
  if (!where) return fail(where.error(), 2);
  dashboard.host = where->host;
  dashboard.port = where->port;
  return gflex::run_core(config, [&](gflex::local_core& core) {
    return gflex::app::start_dashboard(dashboard, core);
  });
}
