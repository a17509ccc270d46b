/// @file
/// `gflex-node --join HOST:PORT`: lends this machine's compute to a core until SIGINT or
/// SIGTERM; reconnects by itself when the core goes away.

#include <CLI/CLI.hpp>

#include <cstdlib>
#include <string>

#include "client_connection.hpp"
#include "core_address.hpp"
#include "gflex/gflex.hpp"
#include "gflex/kernels/blas_kernels.hpp"
#include "gflex/runtime/fd_limit.hpp"
#include "gflex/test_aids.hpp"
#include "node_progress.hpp"
#include "parse_command_line.hpp"

int main(int argc, char** argv) {
  gflex::kernels::use_best_blas_kernels(argv);
  CLI::App app{"gflex-node: a compute node of a GPUFlex cloud"};
  std::string join, log_level = "info", metrics_listen;
  gflex::node_config config;
  gflex::node_test_aids aids;  // hidden flags, for the project's tests
  config.data_dir = "gflex-node-data";
  app.add_option("--join", join,
                 "the core's HOST:PORT (a core of several servers: every one's, comma-separated)")
      ->required();
  app.add_option("--name", config.name, "name shown by the core (default: host name)");
  app.add_option("--metrics-listen", metrics_listen,
                 "HOST:PORT to serve Prometheus metrics on (/metrics); off unless given");
  app.add_option("--workers", config.workers, "compute slots on the CPU backend")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option(
         "--data-dir", config.data_dir,
         "the node's identity key (node.key: keep it, its name and reputation are bound to it) "
         "and its cache of data set chunks")
      ->capture_default_str();
  app.add_option("--backend", config.backend,
                 "auto (every GPU found, else the CPU), cpu, cuda or cuda:N")
      ->capture_default_str();
  app.add_option("--gpus", config.gpus, "which CUDA devices to use, e.g. 0,2 (default: all)");
  app.add_option("--streams-per-gpu", config.streams_per_gpu,
                 "workers per GPU group, each with its own CUDA stream on every GPU")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--gpu-memory-limit", config.gpu_memory_limit,
                 "device memory the node may use on each GPU, e.g. 6G (0: no limit)")
      ->capture_default_str();
  app.add_option("--memory-limit", config.memory_limit,
                 "host memory the CPU workers may hold for their models, e.g. 12G (0: no "
                 "limit; auto: three quarters of what is available at start)")
      ->capture_default_str();
  app.add_option("--cache-limit", config.cache_limit,
                 "disk the data chunk cache may take under --data-dir, e.g. 20G (0: no limit); "
                 "the least recently used chunks go first, and 1 GiB of the disk is left free")
      ->capture_default_str();
  app.add_option("--threads", config.threads_per_worker, "CPU threads per worker")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  std::string tier = gflex::to_string(config.tier);
  app.add_option("--tier", tier,
                 "community, or core (the platform's own machines; needs a core-tier token)")
      ->check([](const std::string& name) {
        auto known = gflex::parse_node_tier(name);
        return known ? std::string() : known.error().message();
      })
      ->capture_default_str();
  app.add_option("--token", config.token,
                 "join token from the core's operator (default: $GFLEX_TOKEN)");
  std::string core_cert;
  app.add_option("--core-cert", core_cert,
                 "the core's certificate bundle, its core-cert.pem (default: $GFLEX_CORE_CERT)");
  app.add_flag("--insecure", config.insecure,
               "plain TCP, unencrypted (a core run with --insecure)");
  app.add_option("--price", config.price, "credits asked per device-hour (one worker, one hour)")
      ->check(gflex::app::finite_range(0.0, 1e6))
      ->capture_default_str();
  app.add_option("--max-hours", config.max_hours,
                 "leave after this many device-hours of compute, every assignment's however "
                 "it ended (0: no limit; counted per run)")
      ->check(gflex::app::finite_range(0.0, 1e6))
      ->capture_default_str();
  app.add_flag("--idle-only", config.idle_only,
               "take assignments only while other processes leave the machine idle");
  app.add_option("--misbehave", aids.misbehave,
                 "return bad work on purpose, a test aid: random, scale:X, signflip, lazy, stale, "
                 "sometimes:P:MODE or in:JOB:MODE");
  app.add_option("--misbehave-seed", aids.misbehave_seed,
                 "seed of --misbehave's random choices (default: from the name)");
  app.add_option("--protocol-version", aids.announce_protocol,
                 "announce another protocol version (a test aid)")
      ->group("");
  app.add_option("--device-error-at", aids.device_error_at,
                 "fail each worker's Nth assignment as out of device memory (a test aid)")
      ->group("");
  app.add_option("--device-broken-from", aids.device_broken_from,
                 "fail each worker's assignments from its Nth on as a broken device (a test aid)")
      ->group("");
  app.add_option("--verify-delay-ms", aids.verify_delay_ms,
                 "start each re-computation this many milliseconds late (a test aid)")
      ->check(CLI::Range(0, 60000))
      ->group("");
  app.add_option("--crash-worker-at", aids.crash_worker_at,
                 "crash each worker at its Nth assignment (a test aid)")
      ->group("");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off")
      ->capture_default_str();
  if (auto code = gflex::app::parse_command_line(app, argc, argv)) return *code;
  config.tier = gflex::parse_node_tier(tier).value();
  // A secret is better kept out of the process list: the environment is the usual place.
  if (const char* token = std::getenv("GFLEX_TOKEN"); config.token.empty() && token != nullptr)
    config.token = token;
  const char* cert_from = "--core-cert";
  if (const char* cert = std::getenv("GFLEX_CORE_CERT"); core_cert.empty() && cert != nullptr) {
    core_cert = cert;
    cert_from = "GFLEX_CORE_CERT";
  }
  config.core_cert = core_cert;
  // Said as the OS says it: the bundle's TLS check took an absent file for one that is not a
  // bundle.
  if (!config.insecure && !core_cert.empty())
    if (auto ok = gflex::app::check_core_cert_file(core_cert, cert_from); !ok) {
      std::fprintf(stderr, "gflex-node: %s\n", ok.error().message().c_str());
      return 2;
    }
  auto address =
      gflex::app::start_daemon("gflex-node", log_level, join.substr(0, join.find(',')), "--join");
  if (!address) return 2;
  // The cache's chunk files and the node's connections are descriptors too.
  gflex::raise_fd_limit();
  auto cores = gflex::app::parse_host_ports(join, "--join");
  if (!cores) {
    std::fprintf(stderr, "gflex-node: %s\n", cores.error().message().c_str());
    return 2;
  }
  for (size_t i = 1; i < cores->size(); ++i)
    config.other_cores.emplace_back((*cores)[i].host, (*cores)[i].port);
  if (int code = gflex::app::serve_metrics(metrics_listen); code != 0) return code;
  gflex::app::node_progress status(config.name.empty() ? std::string("gflex-node") : config.name,
                                   config.workers);
  config.on_activity = [&status](const gflex::node_activity& a) { status.on_activity(a); };
  return gflex::run_node(config, address->host, address->port, aids);
}
