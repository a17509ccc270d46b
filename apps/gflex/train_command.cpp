#include "train_command.hpp"
#include "status_json.hpp"

#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data_commands.hpp"
#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/trainer.hpp"
#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/progress.hpp"
#include "parse_command_line.hpp"
#include "writable.hpp"

namespace gflex::app {

namespace {

struct train_flags {
  std::string workload = "fashion-mlp";
  std::string spec_file;  ///< A job spec whose workload or [model] and [data] to train.
  /// Local files in place of the spec's data set (`gflex data push`'s formats): a model meant
  /// for a pushed data set, checked here first.
  data_files data;
  std::string backend = "cpu";
  std::string precision = "fp32";
  int threads = 0;
  std::string json;
  kernels::train_options options;
  /// The flags that a job spec's settings give way to when given (CLI11 counts them).
  struct {
    CLI::Option* batch_size = nullptr;
    CLI::Option* lr = nullptr;
    CLI::Option* weight_decay = nullptr;
    CLI::Option* precision = nullptr;
    CLI::Option* seed = nullptr;
    CLI::Option* constant_lr = nullptr;
    CLI::Option* classes = nullptr;
    CLI::Option* context = nullptr;
    CLI::Option* workload = nullptr;
    CLI::Option* format = nullptr;
    CLI::Option* labels = nullptr;
    CLI::Option* test_fraction = nullptr;
  } given;
};

bool on_command_line(const CLI::Option* flag) {
  return flag != nullptr && flag->count() > 0;
}

// A job spec's [inner] settings (optimizer, batch size, learning rate and its schedule, weight
// decay, precision) and its [job] seed, for each that the command line does not give: `gflex
// train --spec` runs the steps a job's workers would run, which is what a user checks before
// paying for the job. Rounds and local steps are the job's, not a trainer's: --epochs and
// --max-steps say how long to train.
void take_spec_settings(train_flags& f, const job_spec& spec) {
  auto& o = f.options;
  if (!on_command_line(f.given.batch_size)) o.batch_size = spec.batch_size;
  if (!on_command_line(f.given.lr)) o.optimizer.lr = static_cast<float>(spec.inner_lr);
  if (!on_command_line(f.given.weight_decay))
    o.optimizer.weight_decay = static_cast<float>(spec.weight_decay);
  if (!on_command_line(f.given.precision)) f.precision = to_string(spec.precision);
  if (!on_command_line(f.given.seed)) o.seed = spec.seed;
  if (!on_command_line(f.given.constant_lr))
    o.cosine_schedule = spec.schedule == lr_schedule::cosine;
  o.optimizer.plain_sgd = spec.inner == inner_optimizer::sgd;
}

nlohmann::json to_json(const train_flags& f, const kernels::train_report& r,
                       const std::string& backend) {
  // Without evaluation nothing was measured on the test split: null, not a zero that reads
  // as a model that learnt nothing.
  const bool evaluated = f.options.evaluate && !r.epochs.empty();
  const auto measured = [&](double v) { return evaluated ? nlohmann::json(v) : nlohmann::json(); };
  nlohmann::json epochs = nlohmann::json::array();
  for (const auto& e : r.epochs)
    epochs.push_back({{"epoch", e.epoch},
                      {"train_loss", e.train_loss},
                      {"train_accuracy", e.train_accuracy},
                      {"test_loss", measured(e.test_loss)},
                      {"test_accuracy", measured(e.test_accuracy)},
                      {"train_s", e.train_s}});
  const double test_loss = evaluated ? r.epochs.back().test_loss : 0.0;
  return {{"workload", f.spec_file.empty() ? f.workload : f.spec_file},
          {"evaluated", evaluated},
          {"test_loss", measured(test_loss)},
          {"test_bits", measured(test_loss / std::log(2.0))},
          {"backend", backend},
          {"precision", f.precision},
          {"epochs", static_cast<int>(r.epochs.size())},
          {"batch_size", f.options.batch_size},
          {"optimizer", f.options.optimizer.plain_sgd ? "sgd" : "adamw"},
          {"lr", f.options.optimizer.lr},
          {"weight_decay", f.options.optimizer.weight_decay},
          {"lr_schedule", f.options.cosine_schedule ? "cosine" : "constant"},
          {"seed", f.options.seed},
          {"steps", r.steps},
          {"samples", r.samples},
          {"test_accuracy", measured(r.test_accuracy)},
          {"samples_per_s", r.samples_per_s},
          {"warmup_steps", f.options.warmup_steps},
          {"steady_samples_per_s", r.steady_samples_per_s},
          {"train_s", r.train_s},
          {"wall_s", r.wall_s},
          {"gemm_gflops_per_s", r.train_s > 0 ? r.gemm_flops / r.train_s / 1e9 : 0.0},
          {"history", epochs}};
}

// The workload a job spec names (its [model] on its [data] set, or a built-in one): what a
// user checks locally before paying for the job.
// With a spec, its settings are taken into `f` (take_spec_settings).
expected<std::unique_ptr<kernels::workload>> workload_of(train_flags& f) {
  if (f.spec_file.empty() && !f.data.path.empty())
    return error(errc::invalid_argument, "--data: needs --spec (the model to train on it)");
  // Flags that nothing would read are refused, as `gflex data push` refuses those its format
  // does not take: they were ignored, and the run trained on other data than the user meant.
  if (f.data.path.empty())
    for (const auto& [flag, name] : {std::pair{f.given.format, "--format"},
                                     {f.given.labels, "--labels"},
                                     {f.given.classes, "--classes"},
                                     {f.given.context, "--context"},
                                     {f.given.test_fraction, "--test-fraction"}})
      if (on_command_line(flag))
        return error(errc::invalid_argument,
                     std::string(name) + ": only with --data (the files to train on)");
  if (!f.spec_file.empty() && on_command_line(f.given.workload))
    return error(errc::invalid_argument,
                 "--workload: not with --spec (the spec names what to train)");
  if (!f.data.path.empty() && f.data.format.empty())
    return error(errc::invalid_argument, "--format: required with --data (idx, npy or tokens)");
  if (f.spec_file.empty()) return kernels::find_workload(f.workload);
  auto spec = load_job_spec(f.spec_file);
  if (!spec) return spec.error();
  take_spec_settings(f, *spec);
  const bool local = !f.data.path.empty();
  // A set pushed with `gflex data push` is on the core only: "unknown data set" sent the
  // user looking for a typo in the spec, when its files are what this command needs.
  if (!local && !spec->model.empty() && !kernels::is_builtin_data_set(spec->data_set))
    return error(errc::invalid_argument,
                 f.spec_file + ": data.set '" + spec->data_set +
                     "' is not built in: a set pushed to a core (gflex data push) is on the "
                     "core only; give its files here with --data FILE --format idx|npy|tokens "
                     "(and --labels for idx and npy)");
  auto w = kernels::find_workload(spec->workload, spec->model, local ? "" : spec->data_set);
  if (!w) return error(w.error().code(), f.spec_file + ": " + w.error().message());
  // A text is cut into samples of the model's length unless --context says otherwise (its
  // default, 64, failed every other model inside the trainer, naming neither file nor flag).
  if (local && (*w)->token_input() && !on_command_line(f.given.context))
    f.data.context = (*w)->feature_dim() - 1;  // a sample is its context and the next token
  return w;
}

// Whether the files read for --data are what the model takes (checked here, where the flags
// and files can be named: the trainer refused them as a shape mismatch, exit 1). Labels that
// do not reach the model's last class are the model's classes unless --classes says.
expected<void> fit_to_model(const train_flags& f, const kernels::workload& w,
                            dataset_splits& data) {
  const std::string model = "the model of " + f.spec_file;
  const bool tokens = data.train.tokens;
  if (tokens != w.token_input())
    return error(errc::invalid_argument,
                 "--format " + f.data.format + ": " + model + " takes " +
                     (w.token_input() ? "tokens (--format tokens)"
                                      : std::to_string(w.feature_dim()) +
                                            " values per sample (--format idx or npy)"));
  const int64_t dim = data.train.feature_dim();
  if (dim != w.feature_dim()) {
    if (tokens)
      return error(errc::invalid_argument,
                   "--context " + std::to_string(f.data.context) + ": " + f.data.path +
                       "'s samples are " + std::to_string(dim) + " tokens, " + model + " takes " +
                       std::to_string(w.feature_dim()) + " (--context " +
                       std::to_string(w.feature_dim() - 1) + ", or leave it out)");
    return error(errc::invalid_argument, f.data.path + ": " + std::to_string(dim) +
                                             " values per sample, " + model + " takes " +
                                             std::to_string(w.feature_dim()));
  }
  const int64_t classes = data.train.classes;
  if (classes == w.classes()) return {};
  if (tokens)
    return error(errc::invalid_argument, f.data.path + ": a text of bytes has " +
                                             std::to_string(classes) + " token values, " + model +
                                             " a vocabulary of " + std::to_string(w.classes()));
  if (on_command_line(f.given.classes))
    return error(errc::invalid_argument, "--classes " + std::to_string(f.data.classes) + ": " +
                                             model + " takes " + std::to_string(w.classes()) +
                                             " classes");
  if (classes > w.classes())
    return error(errc::invalid_argument,
                 f.data.labels + ": the labels make " + std::to_string(classes) +
                     " classes (the largest is " + std::to_string(classes - 1) + "), " + model +
                     " takes " + std::to_string(w.classes()) + " (--classes)");
  data.train.classes = data.test.classes = w.classes();
  return {};
}

int run_training(train_flags& f) {
  auto w = workload_of(f);
  if (!w) {
    spdlog::error("{}", w.error().message());
    return 2;
  }
  // Checked before the run, as submit and demo check it: a whole training run was wasted on a
  // path that could never be written, and its exit 1 had a script train again.
  if (!f.json.empty() && !json_writable(f.json)) {
    spdlog::error("{}: cannot be written (--json); nothing was trained", f.json);
    return 2;
  }
  auto precision = parse_math_precision(f.precision);
  if (!precision) {
    spdlog::error("--precision: {}", precision.error().message());
    return 2;
  }
  auto b = kernels::make_backend(f.backend, f.threads);
  if (!b) {
    spdlog::error("{}", b.error().message());
    return 2;
  }
  (*b)->set_precision(*precision);
  spdlog::info("workload {}: {}, {} parameters", (*w)->name(), (*w)->describe(),
               (*w)->parameter_count());
  spdlog::info("backend {}", (*b)->describe());
  if (!f.spec_file.empty())
    spdlog::info("{} with {}, batch size {}, lr {} ({}), weight decay {}, {}, seed {}", f.spec_file,
                 f.options.optimizer.plain_sgd ? "SGD" : "AdamW", f.options.batch_size,
                 f.options.optimizer.lr, f.options.cosine_schedule ? "cosine" : "constant",
                 f.options.optimizer.weight_decay, f.precision, f.options.seed);
  auto data = f.data.path.empty() ? (*w)->load_data() : read_data_files(f.data);
  if (!data) {
    spdlog::error("{}", data.error().message());
    // A file the user named that cannot be used is bad input (2), as `gflex data push` says.
    return f.data.path.empty() ? 1 : 2;
  }
  if (!f.data.path.empty())
    if (auto fits = fit_to_model(f, **w, *data); !fits) {
      spdlog::error("{}", fits.error().message());
      return 2;
    }
  std::unique_ptr<progress_bar> bar;
  auto on_progress = [&](const kernels::train_progress& p) {
    if (!bar) bar = std::make_unique<progress_bar>("train", p.total_steps);
    char status[160];
    std::snprintf(status, sizeof status,
                  "epoch %d/%d | step %lld/%lld | loss %.4f | %.0f samples/s", p.epoch, p.epochs,
                  static_cast<long long>(p.step), static_cast<long long>(p.total_steps),
                  p.recent_loss, p.samples_per_s);
    bar->update(p.step, status);
    if (p.finished_epoch != nullptr) {
      const auto& e = *p.finished_epoch;
      if (f.options.evaluate) {
        std::snprintf(status, sizeof status,
                      "epoch %d/%d | train loss %.4f | test loss %.4f | test accuracy %.4f",
                      e.epoch, p.epochs, e.train_loss, e.test_loss, e.test_accuracy);
      } else {
        std::snprintf(status, sizeof status, "epoch %d/%d | train loss %.4f", e.epoch, p.epochs,
                      e.train_loss);
      }
      if (p.step == p.total_steps) {
        bar->finish(status);
      } else {
        bar->clear_line();
        spdlog::info("{}", status);
      }
    }
  };
  auto report = kernels::train(**w, *data, **b, f.options, on_progress);
  if (!report) {
    spdlog::error("{}", report.error().message());
    return 1;
  }
  auto summary = to_json(f, *report, (*b)->describe());
  if (f.options.evaluate)
    std::printf("test accuracy %.4f after %zu epochs, %.0f samples/s, %.1f s\n",
                report->test_accuracy, report->epochs.size(), report->samples_per_s,
                report->wall_s);
  else
    std::printf("trained %zu epochs, not evaluated (--no-eval), %.0f samples/s, %.1f s\n",
                report->epochs.size(), report->samples_per_s, report->wall_s);
  if (f.options.evaluate && !report->epochs.empty())
    std::printf("test loss %.4f nats per %s (%.4f bits)\n", report->epochs.back().test_loss,
                (*w)->token_input() ? "token" : "sample",
                report->epochs.back().test_loss / std::log(2.0));
  if (!f.json.empty()) {
    std::ofstream out(f.json);
    out << json_text(summary) << '\n';
    if (!out) {
      spdlog::error("{}: cannot write the JSON summary", f.json);
      return 1;
    }
  }
  return 0;
}

// CLI11's number validators print the whole double range; this one says what is wanted.
std::string check_positive(const std::string& text) {
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || *end != 0 || !std::isfinite(v) || v <= 0)
    return "must be a positive number, got '" + text + "'";
  return {};
}

std::string check_non_negative(const std::string& text) {
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || *end != 0 || !std::isfinite(v) || v < 0)
    return "must be a non-negative number, got '" + text + "'";
  return {};
}

void add_common_flags(CLI::App* cmd, train_flags& f) {
  f.given.workload =
      cmd->add_option("--workload", f.workload, "workload to train")->capture_default_str();
  cmd->add_option("--spec", f.spec_file,
                  "train what a job spec names: its [model] on its [data] set, or its workload");
  cmd->add_option("--data", f.data.path,
                  "with --spec: train on this file instead of the data set (as gflex data push "
                  "reads it)");
  f.given.format =
      cmd->add_option("--format", f.data.format, "--data's format: idx, npy or tokens");
  f.given.labels = cmd->add_option("--labels", f.data.labels, "--data's labels file (idx and npy)");
  f.given.classes =
      cmd->add_option("--classes", f.data.classes, "--data's label count (default: the model's)")
          ->check(CLI::Range(int64_t{2}, int64_t{65536}));
  f.given.test_fraction =
      cmd->add_option("--test-fraction", f.data.test_fraction, "--data's held-out part")
          ->check(finite_range(0.001, 0.9))
          ->capture_default_str();
  f.given.context = cmd->add_option("--context", f.data.context,
                                    "--data tokens: positions per sample (default: the model's)")
                        ->check(CLI::Range(int64_t{1}, int64_t{65536}));
  cmd->add_option("--backend", f.backend, "compute backend: cpu, cuda or cuda:N")
      ->capture_default_str();
  f.given.precision =
      cmd->add_option("--precision", f.precision,
                      "GEMM and convolution precision: fp32, or tf32 / bf16 on GPUs with tensor "
                      "cores (with --spec: the spec's)")
          ->capture_default_str();
  cmd->add_option("--threads", f.threads, "CPU threads for OpenBLAS (0: all cores)")
      ->check(CLI::Range(0, 1024));
  cmd->add_option("--json", f.json, "write a JSON summary to this file");
  f.given.seed = cmd->add_option("--seed", f.options.seed,
                                 "seed of initialisation and shuffling (with --spec: the spec's)")
                     ->capture_default_str();
}

}  // namespace

void add_train_commands(CLI::App& app, std::function<int()>& run) {
  auto flags = std::make_shared<train_flags>();
  auto* train = app.add_subcommand("train", "train a workload in this process");
  add_common_flags(train, *flags);
  train->add_option("--epochs", flags->options.epochs, "passes over the training set")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  flags->given.batch_size = train
                                ->add_option("--batch-size", flags->options.batch_size,
                                             "samples per step (with --spec: the spec's)")
                                ->check(CLI::Range(1, 65536))
                                ->capture_default_str();
  flags->given.lr = train
                        ->add_option("--lr", flags->options.optimizer.lr,
                                     "AdamW (or SGD) learning rate (with --spec: the spec's)")
                        ->check(CLI::Validator(check_positive, "POSITIVE"))
                        ->capture_default_str();
  flags->given.weight_decay =
      train
          ->add_option("--weight-decay", flags->options.optimizer.weight_decay,
                       "AdamW decoupled weight decay (with --spec: the spec's)")
          ->check(CLI::Validator(check_non_negative, "NON-NEGATIVE"))
          ->capture_default_str();
  train->add_option("--max-steps", flags->options.max_steps, "stop after this many steps")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  train
      ->add_option("--warmup-steps", flags->options.warmup_steps,
                   "steps left out of steady_samples_per_s in --json (first launches, set-up)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  train->add_flag("!--no-eval", flags->options.evaluate, "skip the test split after each epoch");
  flags->given.constant_lr =
      train->add_flag("!--constant-lr", flags->options.cosine_schedule,
                      "keep the learning rate constant instead of cosine decay (with --spec: the "
                      "spec's lr_schedule)");
  train->callback([flags, &run] { run = [flags] { return run_training(*flags); }; });
}

}  // namespace gflex::app
