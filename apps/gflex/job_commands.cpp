#include "job_commands.hpp"
#include "fail.hpp"

#include <spdlog/spdlog.h>
#include <algorithm>
#include <cmath>

#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include "client_connection.hpp"
#include "core_address.hpp"
#include "default_job.hpp"
#include "gflex/gflex.hpp"
#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/model_spec.hpp"
#include "gflex/kernels/trainer.hpp"
#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/checkpoint.hpp"
#include "gflex/runtime/credits.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/progress.hpp"
#include "status_json.hpp"
#include "writable.hpp"

namespace gflex::app {

namespace {

bool write_json(const std::string& file, const nlohmann::json& j) {
  std::ofstream out(file);
  out << json_text(j) << '\n';
  if (!out) spdlog::error("{}: cannot write the JSON summary", file);
  return static_cast<bool>(out);
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) b /= 1000, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

// "test accuracy 0.8812", or "not yet evaluated" for a job whose history has no evaluation
// yet: its accuracy of 0 read as a model that had learnt nothing.
std::string accuracy_text(const job_status& s) {
  if (tested_round(s) == 0) return "not yet evaluated";
  char text[48];
  std::snprintf(text, sizeof text, "test accuracy %.4f", s.test_accuracy);
  return text;
}

// Draws a job's progress bar from successive statuses.
class job_progress {
 public:
  void operator()(const job_status& s) {
    if (!bar_ && s.rounds > 0) bar_ = std::make_shared<progress_bar>(s.job_id, s.rounds);
    if (!bar_) return;
    char line[256];
    std::snprintf(line, sizeof line, "round %lld/%lld | loss %.4f | %s | nodes %lld | %s moved",
                  static_cast<long long>(s.round), static_cast<long long>(s.rounds), s.train_loss,
                  accuracy_text(s).c_str(), static_cast<long long>(s.nodes),
                  human_bytes(static_cast<double>(s.bytes_sent + s.bytes_received)).c_str());
    std::string status = line;
    if (!s.detail.empty() && !is_terminal(s.state)) status += " | " + s.detail;
    if (is_terminal(s.state)) {
      // At the last committed round: a job that failed or was cancelled drew 100%.
      bar_->finish(s.round, status + " | " + to_string(s.state));
    } else {
      bar_->update(s.round, status);
    }
  }

 private:
  std::shared_ptr<progress_bar> bar_;  // shared: a std::function copies its target
};

expected<std::string> read_text(const std::string& file) {
  auto bytes = read_file(file, size_t{1} << 20);
  if (!bytes) return bytes.error();
  return std::string(bytes->begin(), bytes->end());
}

struct job_flags {
  connection_flags link;
  std::string spec_file;
  std::string job_id;
  std::string json;
  /// The submit's submission id (empty: a random one): given again, the core answers with
  /// the job it made instead of making a second.
  std::string submission_id;
  std::string out;
  bool wait = false;
  bool as_json = false;
  int nodes = 3;
  int workers_per_node = 1;
  std::string demo_workload = "fashion-mlp";
  CLI::Option* demo_workload_flag = nullptr;  ///< Whether --workload was given (its count).
};

int run_submit(const job_flags& f) {
  auto text = read_text(f.spec_file);
  if (!text) return fail(text.error(), 2);
  // Validate here first: the error names the file and the key, before any network traffic.
  auto spec = parse_job_spec(*text, f.spec_file);
  if (!spec) return fail(spec.error(), 2);
  // A user's data set is on the core, which checks that the model fits it.
  if (auto w = kernels::find_workload(
          spec->workload, spec->model,
          kernels::is_builtin_data_set(spec->data_set) ? spec->data_set : std::string());
      !w)
    return fail(
        error(w.error().code(), f.spec_file + ": " + (spec->model.empty() ? "job.workload: " : "") +
                                    w.error().message()),
        2);
  if (!f.json.empty() && !json_writable(f.json))
    return fail(
        error(errc::io_error, f.json + ": cannot be written (--json); nothing was submitted"), 2);
  std::optional<client> c;
  if (int code = connect_core(f.link, c); code != 0) return code;
  // Drawn here rather than by the client, so that a run that gives up (no answer within its
  // patience, or a follow cut short) can name it: run again with it, the core answers with
  // the job it made; run again without it, a second job ran and was paid for.
  std::string submission = f.submission_id;
  if (submission.empty()) {
    std::random_device random;
    for (int i = 0; i < 4; ++i) submission += fmt::format("{:08x}", random());
  }
  auto id = c->submit(*text, submission);
  if (!id) {
    const int code = fail_answer(id.error());
    if (code == 1)
      std::fprintf(stderr,
                   "the core may have made the job: submit again with --submission-id %s to be "
                   "answered with it rather than make a second\n",
                   submission.c_str());
    return code;
  }
  std::printf("%s\n", id->c_str());
  std::fflush(stdout);
  // Community results are sampled and re-computed on core-tier workers: without one, the job
  // waits for a verifier (or, on a core run with --unverified accept, goes on unverified).
  if (spec->tier != trust_tier::core) {
    auto nodes = c->nodes();
    const bool verifier = nodes && std::any_of(nodes->begin(), nodes->end(), [](const auto& n) {
                            return n.tier == node_tier::core;
                          });
    if (nodes && !verifier)
      std::fprintf(stderr,
                   "warning: no core-tier node is connected to verify %s's sampled results; "
                   "until one joins, the job waits for a verifier (unless the core runs with "
                   "--unverified accept)\n",
                   id->c_str());
  }
  // Exit 1 after the job was made: a script that retries a failed run must not submit it
  // again (a second job, paid for) but follow this one.
  auto made_all_the_same = [&] {
    std::fprintf(stderr,
                 "%s was submitted and may be running: follow it with `gflex status %s` (submitted "
                 "again with --submission-id %s, the core answers with it)\n",
                 id->c_str(), id->c_str(), submission.c_str());
  };
  if (!f.wait) {
    if (!f.json.empty() && !write_json(f.json, {{"job_id", *id}})) {
      std::fprintf(stderr, "%s was submitted; only its JSON could not be written\n", id->c_str());
      made_all_the_same();
      return 1;
    }
    return 0;
  }
  job_progress draw;
  auto s = c->wait(*id, draw);
  if (!s) {
    const int code = fail(s.error());
    made_all_the_same();
    return code;
  }
  std::printf("%s %s: %s after %lld rounds, %s moved, %.1f s\n", s->job_id.c_str(),
              to_string(s->state), accuracy_text(*s).c_str(), static_cast<long long>(s->round),
              human_bytes(static_cast<double>(s->bytes_sent + s->bytes_received)).c_str(),
              s->elapsed_s);
  if (!f.json.empty() && !write_json(f.json, to_json(*s))) return 1;
  if (s->state != job_state::done && !s->detail.empty())
    std::fprintf(stderr, "%s %s: %s\n", s->job_id.c_str(), to_string(s->state), s->detail.c_str());
  return s->state == job_state::done ? 0 : 1;
}

int run_status(const job_flags& f) {
  std::optional<client> c;
  if (int code = connect_core(f.link, c); code != 0) return code;
  if (!f.job_id.empty()) {
    auto s = c->status(f.job_id);
    if (!s) return fail_answer(s.error());
    if (f.as_json) {
      std::printf("%s\n", json_text(to_json(*s)).c_str());
    } else {
      // Figures of an evaluation before the last round say which round they are of: a job
      // evaluated every 10 rounds, cancelled at 37, showed round 30's as round 37's.
      const int64_t tested = tested_round(*s);
      std::string of_round =
          tested > 0 && tested != s->round ? " (round " + std::to_string(tested) + ")" : "";
      // A model too large for the core to evaluate on all of its test split is scored on
      // part of it: said, so that its figures are not read as the whole split's.
      if (tested > 0 && s->tested_samples > 0 && s->tested_samples < s->test_samples)
        of_round += " on " + std::to_string(s->tested_samples) + " of " +
                    std::to_string(s->test_samples) + " test samples";
      std::printf("%s %s: %s, round %lld/%lld, %s%s, loss %.4f%s%s\n", s->job_id.c_str(),
                  s->name.c_str(), to_string(s->state), static_cast<long long>(s->round),
                  static_cast<long long>(s->rounds), accuracy_text(*s).c_str(), of_round.c_str(),
                  s->train_loss, s->detail.empty() ? "" : " - ", s->detail.c_str());
      if (!s->account.empty())
        std::printf(
            "  cost: %s credits spent of a %s budget (%s in escrow) by %s, for %.4f "
            "device-hours; the same time in a public cloud: %s credits (%.1f%% of it)\n",
            format_credits(s->credits_spent).c_str(), format_credits(s->budget).c_str(),
            format_credits(s->credits_held).c_str(), s->account.c_str(), s->device_hours,
            format_credits(s->cloud_cost).c_str(),
            s->cloud_cost > 0
                ? 100.0 * static_cast<double>(s->credits_spent) / static_cast<double>(s->cloud_cost)
                : 0.0);
    }
    return 0;
  }
  auto all = c->jobs();
  if (!all) return fail_answer(all.error());
  if (f.as_json) {
    auto list = nlohmann::json::array();
    for (const auto& s : *all) list.push_back(to_json(s));
    std::printf("%s\n", json_text(list).c_str());
  } else {
    std::printf("%-10s %-20s %-10s %9s %9s\n", "JOB", "NAME", "STATE", "ROUND", "ACCURACY");
    for (const auto& s : *all) {
      // A job not yet evaluated has no accuracy: "-", not 0.0000 (a model that learnt nothing).
      char accuracy[16] = "-";
      if (tested_round(s) > 0) std::snprintf(accuracy, sizeof accuracy, "%.4f", s.test_accuracy);
      std::printf("%-10s %-20s %-10s %4lld/%-4lld %9s\n", s.job_id.c_str(), s.name.c_str(),
                  to_string(s.state), static_cast<long long>(s.round),
                  static_cast<long long>(s.rounds), accuracy);
    }
  }
  return 0;
}

int run_nodes(const job_flags& f) {
  std::optional<client> c;
  if (int code = connect_core(f.link, c); code != 0) return code;
  auto nodes = c->nodes();
  if (!nodes) return fail_answer(nodes.error());
  // Each node's share of the work done: its validated results over all nodes' listed.
  uint64_t total = 0;
  for (const auto& n : *nodes) total += n.validated;
  auto share = [&](const node_status& n) {
    return total > 0 ? static_cast<double>(n.validated) / static_cast<double>(total) : 0.0;
  };
  // A follower of a core of several knows identities, not connections (last_seen_s < 0).
  auto seen = [](const node_status& n) {
    if (n.last_seen_s < 0) return std::string("connection known to the leader");
    char text[48];
    std::snprintf(text, sizeof text, "seen %.1f s ago", n.last_seen_s);
    return std::string(text);
  };
  if (f.as_json) {
    // Nodes' device and GPU names come from the nodes (printable UTF-8 since their hello is
    // checked); anything else is replaced rather than thrown on.
    std::printf("%s\n", json_text(to_json(*nodes)).c_str());
  } else {
    for (const auto& n : *nodes) {
      std::printf(
          "%-6s %-20s %-9s %u worker(s)  %s  score %.2f streak %lld  validated %llu "
          "(verified %llu, %.1f%% of the work) rejected %llu  earned %s%s%s  (%s)\n",
          n.node_id.c_str(), n.name.c_str(), to_string(n.tier), n.workers, n.device.c_str(),
          n.score, static_cast<long long>(n.streak), static_cast<unsigned long long>(n.validated),
          static_cast<unsigned long long>(n.verified), 100.0 * share(n),
          static_cast<unsigned long long>(n.rejected), format_credits(n.earned).c_str(),
          n.flagged ? "  FLAGGED" : "",
          n.dropped != 0 ? ("  dropped " + std::to_string(n.dropped) + " message(s)").c_str() : "",
          seen(n).c_str());
      for (const auto& g : n.gpus)
        std::printf(
            "       cuda:%d %s (sm %s, %d SMs, %.1f GiB): %.1f TFLOP/s FP32 GEMM, %.1f GB/s "
            "host-to-device\n",
            g.ordinal, g.name.c_str(), g.compute_capability.c_str(), g.sm_count,
            static_cast<double>(g.memory_bytes) / (1 << 30), g.gemm_tflops, g.h2d_gbps);
      if (n.flagged && !n.last_rejection.empty())
        std::printf("       flagged: %s\n", n.last_rejection.c_str());
    }
  }
  return 0;
}

int run_cancel(const job_flags& f) {
  std::optional<client> c;
  if (int code = connect_core(f.link, c); code != 0) return code;
  if (auto ok = c->cancel(f.job_id); !ok) return fail_answer(ok.error());
  std::printf("%s cancelled\n", f.job_id.c_str());
  return 0;
}

int run_fetch(const job_flags& f) {
  if (auto ok = file_writable(f.out, "--out"); !ok)
    return fail(error(ok.error().code(), ok.error().message() + "; nothing was fetched"), 2);
  std::optional<client> c;
  if (int code = connect_core(f.link, c); code != 0) return code;
  auto bytes = c->fetch(f.job_id);
  if (!bytes) return fail_answer(bytes.error());
  if (auto ok = write_file_atomically(f.out, *bytes); !ok) return fail(ok.error());
  std::printf("%s: %s written\n", f.out.c_str(),
              human_bytes(static_cast<double>(bytes->size())).c_str());
  return 0;
}

int run_eval(const job_flags& f) {
  auto bytes = read_file(f.out);
  if (!bytes) return fail(bytes.error(), 2);
  auto c = decode_checkpoint(*bytes);
  if (!c) return fail(error(c.error().code(), f.out + ": " + c.error().message()), 2);
  if (!c->model.empty() && !kernels::is_builtin_data_set(c->data_set))
    return fail(error(errc::invalid_argument,
                      f.out + ": trained on the core's data set '" + c->data_set +
                          "', which is not on this machine: the job's status shows its test "
                          "figures"),
                2);
  auto w = kernels::find_workload(c->workload, c->model, c->data_set);
  if (!w) return fail(error(w.error().code(), f.out + ": " + w.error().message()), 2);
  // Reassemble the flat parameter vector from the named blocks of the workload's layout.
  std::vector<float> params(static_cast<size_t>((*w)->parameter_count()));
  for (const auto& block : (*w)->layout()) {
    const tensor* t = c->find(block.name);
    if (t == nullptr || t->type() != dtype::f32 || t->shape() != block.shape)
      return fail(error(errc::shape_mismatch, f.out + ": " + block.name + " is missing or not " +
                                                  to_string(block.shape) + " f32"),
                  2);
    std::copy_n(t->data<float>(), t->numel(), params.begin() + block.offset);
  }
  auto data = (*w)->load_data();
  if (!data) return fail(data.error());
  auto b = kernels::make_cpu_backend(0);
  auto stats = kernels::evaluate(**w, data->test, *b, params);
  if (!stats) return fail(error(stats.error().code(), f.out + ": " + stats.error().message()), 2);
  std::printf("%s: %s after %llu rounds: test accuracy %.4f, test loss %.4f\n", f.out.c_str(),
              c->workload.c_str(), static_cast<unsigned long long>(c->step), stats->accuracy(),
              stats->mean_loss());
  if (!f.json.empty() && !write_json(f.json, {{"workload", c->workload},
                                              {"step", c->step},
                                              {"test_accuracy", stats->accuracy()},
                                              {"test_loss", stats->mean_loss()}}))
    return 1;
  return 0;
}

int run_demo(const job_flags& f) {
  // A spec names its own workload: --workload beside it was ignored, and the demo trained
  // something else than the user asked for.
  if (!f.spec_file.empty() && f.demo_workload_flag != nullptr && f.demo_workload_flag->count() > 0)
    return fail(
        error(errc::invalid_argument, "--workload: not with --spec (the spec names what to train)"),
        2);
  std::string text = default_job_spec;
  if (f.demo_workload == "lm") {
    text = lm_job_spec;
  } else if (f.demo_workload != "fashion-mlp") {
    return fail(error(errc::invalid_argument,
                      "--workload: the demo runs fashion-mlp or lm, got '" + f.demo_workload + "'"),
                2);
  }
  if (!f.spec_file.empty()) {
    auto file = read_text(f.spec_file);
    if (!file) return fail(file.error(), 2);
    text = *file;
  }
  auto spec = parse_job_spec(
      text, f.spec_file.empty() ? "built-in " + f.demo_workload + " job" : f.spec_file);
  if (!spec) return fail(spec.error(), 2);
  // Checked first, as submit checks it: a demo ran to its end (minutes) to fail on its JSON.
  if (!f.json.empty() && !json_writable(f.json))
    return fail(
        error(errc::io_error, f.json + ": cannot be written (--json); the demo did not run"), 2);
  spdlog::info("demo: a core and {} node(s) in this process, training {} for {} rounds", f.nodes,
               spec->workload, spec->rounds);
  job_progress draw;
  auto last = run_embedded(embedded_config{f.nodes, f.workers_per_node, {}}, text, draw);
  // The embedded core refuses a spec that parses but does not fit (more workers than shards)
  // as the core of `gflex submit` does: 2, as there; a lost node or a signal stays 1.
  if (!last) return fail_answer(last.error());
  // A job that ended before its first evaluation has no test loss: its 0 read as a perfect
  // model.
  if (!spec->model.empty() && tested_round(*last) > 0)
    std::printf("test loss %.4f nats per %s (%.4f bits)\n", last->test_loss,
                kernels::model_takes_tokens(spec->model) ? "token" : "sample",
                last->test_loss / std::log(2.0));
  std::printf("%s: %s after %lld rounds on %d node(s), %s moved, %.1f s\n", to_string(last->state),
              accuracy_text(*last).c_str(), static_cast<long long>(last->round), f.nodes,
              human_bytes(static_cast<double>(last->bytes_sent + last->bytes_received)).c_str(),
              last->elapsed_s);
  if (!f.json.empty() && !write_json(f.json, to_json(*last))) return 1;
  return last->state == job_state::done ? 0 : 1;
}

}  // namespace

void add_job_commands(CLI::App& app, std::function<int()>& run) {
  auto f = std::make_shared<job_flags>();
  auto core_flag = [&](CLI::App* cmd) { add_connection_flags(cmd, f->link); };
  auto set = [&run, f](int (*fn)(const job_flags&)) {
    return [&run, f, fn] { run = [f, fn] { return fn(*f); }; };
  };

  auto* submit = app.add_subcommand("submit", "submit a job spec (TOML) to a core");
  submit->add_option("spec", f->spec_file, "the job spec file")->required();
  core_flag(submit);
  submit->add_flag("--wait", f->wait, "follow the job with a progress bar until it ends");
  submit->add_option("--json", f->json, "write {\"job_id\"} (or, with --wait, the summary)");
  submit->add_option("--submission-id", f->submission_id,
                     "ID (1 to 64 of [A-Za-z0-9_-]) the core keeps with the job: submitted again "
                     "with it, the job it made, never a second (default: a random one)");
  submit->callback(set(run_submit));

  auto* status = app.add_subcommand("status", "show jobs, or one job");
  status->add_option("job", f->job_id, "a job id");
  core_flag(status);
  status->add_flag("--json", f->as_json, "print JSON");
  status->callback(set(run_status));

  auto* nodes = app.add_subcommand("nodes", "show the nodes joined to a core");
  core_flag(nodes);
  nodes->add_flag("--json", f->as_json, "print JSON");
  nodes->callback(set(run_nodes));

  auto* cancel = app.add_subcommand("cancel", "cancel a job");
  cancel->add_option("job", f->job_id, "a job id")->required();
  core_flag(cancel);
  cancel->callback(set(run_cancel));

  auto* fetch = app.add_subcommand("fetch", "download a job's trained parameters");
  fetch->add_option("job", f->job_id, "a job id")->required();
  fetch->add_option("--out", f->out, "checkpoint file to write")->required();
  core_flag(fetch);
  fetch->callback(set(run_fetch));

  auto* eval = app.add_subcommand("eval", "test accuracy of a fetched checkpoint");
  eval->add_option("checkpoint", f->out, "a checkpoint file")->required();
  eval->add_option("--json", f->json, "write the result as JSON");
  eval->callback(set(run_eval));

  auto* demo = app.add_subcommand(
      "demo", "core and nodes in one process: train fashion-mlp to >= 0.88 test accuracy");
  demo->add_option("--nodes", f->nodes, "nodes to run")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  demo->add_option("--workers", f->workers_per_node, "workers per node")
      ->check(CLI::Range(1, 16))
      ->capture_default_str();
  demo->add_option("--spec", f->spec_file, "a job spec instead of the built-in one");
  f->demo_workload_flag =
      demo->add_option(
              "--workload", f->demo_workload,
              "the built-in job to run: fashion-mlp, or lm (a byte-level language model on "
              "Debian's fortunes, apps/jobs/lm.toml)")
          ->capture_default_str();
  demo->add_option("--json", f->json, "write the final status as JSON");
  demo->callback(set(run_demo));
}

}  // namespace gflex::app
