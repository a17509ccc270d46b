/// @file
/// `gflex-core --listen HOST:PORT --data-dir DIR`: runs a core until SIGINT or SIGTERM.
/// `gflex-core account create ID | credit ID AMOUNT [--core HOST:PORT]`: the operator's
/// account commands, against a running core.

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>

#include "../gflex/core_address.hpp"
#include "gflex/gflex.hpp"
#include "gflex/runtime/credits.hpp"
#include "gflex/runtime/logging.hpp"

namespace {

int fail(const gflex::error& e, int code = 1) {
  spdlog::error("{}", e.message());
  return code;
}

// The operator's account commands: a client of the running core.
int run_account(const std::string& core, const std::string& action, const std::string& id,
                const std::string& amount_text) {
  int64_t amount = 0;
  if (action == "credit") {
    auto a = gflex::parse_credits(amount_text);
    if (!a) return fail(a.error(), 2);
    if (*a == 0) return fail(gflex::error(gflex::errc::invalid_argument, "credit zero"), 2);
    amount = *a;
  }
  auto address = gflex::app::parse_host_port(core, "--core");
  if (!address) return fail(address.error(), 2);
  auto c = gflex::client::connect(address->host, address->port);
  if (!c) return fail(c.error());
  if (action == "create") {
    if (auto r = c->create_account(id); !r) return fail(r.error());
    std::printf("%s\n", id.c_str());
    return 0;
  }
  auto seq = c->credit_account(id, amount);
  if (!seq) return fail(seq.error());
  auto info = c->account(id);
  if (!info) return fail(info.error());
  std::printf("%s: credited %s, balance %s credits (ledger entry %llu)\n", id.c_str(),
              gflex::format_credits(amount).c_str(), gflex::format_credits(info->balance).c_str(),
              static_cast<unsigned long long>(*seq));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gflex-core: the coordinating core of a GPUFlex cloud"};
  std::string listen = "127.0.0.1:7400", log_level = "info";
  gflex::core_config config;
  app.add_option("--listen", listen, "HOST:PORT to accept nodes and clients on")
      ->capture_default_str();
  app.add_option("--data-dir", config.data_dir, "directory of the LMDB store");
  app.add_option("--heartbeat-ms", config.heartbeat_ms, "heartbeat interval told to nodes")
      ->check(CLI::Range(50, 600000))
      ->capture_default_str();
  app.add_option("--lease-ms", config.lease_ms, "silence after which a node is taken as lost")
      ->check(CLI::Range(100, 3600000))
      ->capture_default_str();
  app.add_option("--core-secret", config.core_secret,
                 "secret a node must present to join the core tier (default: "
                 "$GFLEX_CORE_SECRET; none: no core-tier nodes)");
  app.add_option("--fee", config.fee, "the platform's share of every payment to a node")
      ->check(CLI::Range(0.0, 0.99))
      ->capture_default_str();
  app.add_option("--cloud-price", config.cloud_price,
                 "credits a device-hour costs in a public cloud, for cost reports (default: an "
                 "AWS p3.2xlarge on demand, $3.06/h)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off")
      ->capture_default_str();
  app.fallthrough();

  std::string core = "127.0.0.1:7400", action, id, amount;
  auto* account = app.add_subcommand("account", "operator: open and credit ledger accounts");
  account->require_subcommand(1);
  auto* create = account->add_subcommand("create", "open an account (user/NAME)");
  create->add_option("id", id, "user/NAME")->required();
  create->add_option("--core", core, "the running core's HOST:PORT")->capture_default_str();
  create->callback([&] { action = "create"; });
  auto* credit = account->add_subcommand("credit", "credit an account from outside");
  credit->add_option("id", id, "user/NAME")->required();
  credit->add_option("amount", amount, "credits")->required();
  credit->add_option("--core", core, "the running core's HOST:PORT")->capture_default_str();
  credit->callback([&] { action = "credit"; });
  CLI11_PARSE(app, argc, argv);

  if (!action.empty()) {
    if (auto ok = gflex::init_logging(log_level); !ok) {
      std::fprintf(stderr, "gflex-core: %s\n", ok.error().message().c_str());
      return 2;
    }
    return run_account(core, action, id, amount);
  }
  if (config.data_dir.empty()) {
    std::fprintf(stderr, "gflex-core: --data-dir is required to run a core\n");
    return 2;
  }
  if (const char* secret = std::getenv("GFLEX_CORE_SECRET");
      config.core_secret.empty() && secret != nullptr)
    config.core_secret = secret;
  auto address = gflex::app::start_daemon("gflex-core", log_level, listen, "--listen");
  if (!address) return 2;
  config.host = address->host;
  config.port = address->port;
  return gflex::run_core(config);
}
