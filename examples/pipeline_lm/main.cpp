// A training pipeline as an actor graph: text files -> tokenize -> shuffle -> batch ->
// a distributed job training a byte-level language model -> evaluate every committed round
// -> a sink that writes a CSV of the losses and a checkpoint (which `gflex sample` reads).
//
//   pipeline_lm OUT_DIR [--text DIR] [--nodes N] [--rounds R] [--steps S] [--max-bytes B]
//
// Every stage is an actor; the job runs on an in-process cluster (a core and N nodes). The
// last text file is not trained on: the evaluate stage measures the model on it, in bits per
// byte, with its own kernels. Exit status: 0 when the job is done, 1 otherwise.

#include <gflex/gflex.hpp>
#include <gflex/kernels/backend.hpp>
#include <gflex/kernels/model_builder.hpp>
#include <gflex/kernels/workload.hpp>
#include <gflex/pipeline.hpp>
#include <gflex/runtime/checkpoint.hpp>
#include <gflex/runtime/job_spec.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace fs = std::filesystem;
namespace pl = gflex::pipeline;

namespace {

constexpr int64_t context = 64;          // positions per sample
constexpr int64_t window = context + 1;  // and the last one's target

using sample = std::array<uint8_t, window>;

std::vector<uint8_t> read_bytes(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// The model: the shipped language model (apps/jobs/lm.toml), two pre-norm GPT blocks.
gflex::kernels::model_builder language_model() {
  auto m = gflex::kernels::model_builder::tokens("gpt-2x128", context, 256);
  m.embedding(128).position_embedding().named("x0");
  for (auto [in, mid, out] : {std::array<const char*, 3>{"x0", "x1", "x2"},
                              std::array<const char*, 3>{"x2", "x3", "x4"}}) {
    m.layer_norm().from(in).attention(4).add(in).named(mid);
    m.layer_norm().linear(512).gelu().linear(128).add(mid).named(out);
  }
  m.layer_norm().linear(256).next_token_xent();
  return m;
}

/// Measures parameters on held-out text with this machine's CPU: mean bits per byte.
class evaluator {
 public:
  evaluator(const gflex::job_spec& spec, std::vector<uint8_t> text) : spec_(spec) {
    auto w = gflex::kernels::find_workload(spec.workload, spec.model, "");
    if (!w) throw std::runtime_error(w.error().message());
    workload_ = std::move(*w);
    backend_ = gflex::kernels::make_cpu_backend(1);
    for (size_t s = 0; s + window <= text.size() && s / (window - 1) < 512; s += window - 1)
      for (int64_t j = 0; j < window; ++j) held_out_.push_back(static_cast<float>(text[s + j]));
    // Refused here, not after the first round was trained and paid for.
    if (held_out_.empty())
      throw std::runtime_error("the held-out text (the last file by name) has " +
                               std::to_string(text.size()) + " bytes, fewer than one sample of " +
                               std::to_string(window));
  }
  double bits(const std::vector<float>& parameters) {
    const int64_t n = static_cast<int64_t>(held_out_.size()) / window;
    auto m = workload_->instantiate(*backend_, n);
    if (!m) throw std::runtime_error(m.error().message());
    (*m)->load_parameters(parameters);
    std::vector<int32_t> labels(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      labels[static_cast<size_t>(i)] =
          static_cast<int32_t>(held_out_[static_cast<size_t>(i * window + context)]);
    (*m)->evaluate_batch(held_out_.data(), labels.data(), n);
    return (*m)->take_stats().mean_loss() / std::log(2.0);
  }
  gflex::kernels::workload& workload() { return *workload_; }

 private:
  gflex::job_spec spec_;
  std::unique_ptr<gflex::kernels::workload> workload_;
  std::unique_ptr<gflex::kernels::backend> backend_;
  std::vector<float> held_out_;
};

struct flags {
  fs::path out;
  fs::path text = "/usr/share/games/fortunes";
  int nodes = 2;
  int rounds = 10;
  int steps = 50;
  int64_t max_bytes = 0;  // 0: all
};

bool parse(int argc, char** argv, flags& f) {
  if (argc < 2) return false;
  f.out = argv[1];
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--text")
      f.text = v;
    else if (k == "--nodes")
      f.nodes = std::atoi(v.c_str());
    else if (k == "--rounds")
      f.rounds = std::atoi(v.c_str());
    else if (k == "--steps")
      f.steps = std::atoi(v.c_str());
    else if (k == "--max-bytes")
      f.max_bytes = std::atoll(v.c_str());
    else
      return false;
  }
  return (argc % 2) == 0 && f.nodes >= 1 && f.rounds >= 1 && f.steps >= 1 && f.max_bytes >= 0;
}

}  // namespace

int main(int argc, char** argv) {
  flags f;
  if (!parse(argc, argv, f)) {
    std::fprintf(stderr,
                 "usage: pipeline_lm OUT_DIR [--text DIR] [--nodes N] [--rounds R] "
                 "[--steps S] [--max-bytes B]\n");
    return 2;
  }
  // The text files, in name order (fortune files have no extension; their .dat indexes do).
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(f.text, ec))
    if (e.is_regular_file() && !e.path().has_extension()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  if (ec || files.size() < 2) {
    std::fprintf(stderr, "%s: needs at least two text files (the last is held out)\n",
                 f.text.c_str());
    return 1;
  }
  const fs::path held_out_file = files.back();
  files.pop_back();
  fs::create_directories(f.out, ec);

  auto model = language_model();
  const std::string spec_toml =
      "[job]\nname = \"pipeline-lm\"\nrounds = " + std::to_string(f.rounds) +
      "\nworkers = " + std::to_string(f.nodes) +
      "\nseed = 1\n[inner]\noptimizer = \"adamw\"\nlocal_steps = " + std::to_string(f.steps) +
      "\nbatch_size = 16\nlr = 0.004\nlr_schedule = \"cosine\"\n[outer]\nlr = 1.0\n"
      "momentum = 0.0\n[eval]\nevery = 1\n[round]\ndeadline_s = 600.0\n" +
      model.toml();
  auto spec = gflex::parse_job_spec(spec_toml + "[data]\nset = \"text\"\n", "pipeline_lm");
  if (!spec) {
    std::fprintf(stderr, "%s\n", spec.error().message().c_str());
    return 1;
  }

  // The held-out text is checked before the cluster starts and anything is trained.
  std::optional<evaluator> eval;
  try {
    eval.emplace(*spec, read_bytes(held_out_file));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", held_out_file.string().c_str(), e.what());
    return 1;
  }

  gflex::embedded_config config;
  config.nodes = f.nodes;
  auto cluster = gflex::embedded_cluster::start(config);
  if (!cluster) {
    std::fprintf(stderr, "the cluster did not start: %s\n", cluster.error().message().c_str());
    return 1;
  }

  pl::train_options train;
  train.client = &cluster->client();
  train.spec_toml = spec_toml;
  train.data_set = "text";
  train.classes = 256;
  train.tokens = true;
  train.test_every = 10;

  std::ofstream csv(f.out / "loss.csv");
  csv << "round,train_loss_nats,job_test_bits,held_out_bits,elapsed_s\n";
  std::string job_id;
  int64_t bytes_read = 0;

  pl::graph g;
  g.source<std::vector<uint8_t>>(
       "read",
       [&files, &bytes_read, max = f.max_bytes](int64_t i) -> std::optional<std::vector<uint8_t>> {
         if (i >= static_cast<int64_t>(files.size()) || (max > 0 && bytes_read >= max))
           return std::nullopt;
         auto bytes = read_bytes(files[static_cast<size_t>(i)]);
         bytes_read += static_cast<int64_t>(bytes.size());
         return bytes;
       })
      // Samples of 65 bytes overlapping by one: every byte but a file's first is a target once.
      .flat_map<sample>(
          "tokenize",
          [](const std::vector<uint8_t>& text, const std::function<void(sample)>& emit) {
            for (size_t s = 0; s + window <= text.size(); s += window - 1) {
              sample x;
              std::copy_n(text.begin() + static_cast<std::ptrdiff_t>(s), window, x.begin());
              emit(x);
            }
          })
      .shuffle("shuffle", 8192, 7)
      .batch("batch", 256)
      .map("to samples",
           [](const std::vector<sample>& rows) {
             pl::sample_batch b;
             b.sample_values = window;
             for (const auto& x : rows) {
               b.features.insert(b.features.end(), x.begin(), x.end());
               b.labels.push_back(x[window - 1]);
             }
             return b;
           })
      .train("train", train)
      .map(
          "evaluate",
          [&eval](const pl::round_update& u) {
            return std::pair{u, eval->bits(*u.parameters)};
          },
          pl::stage_options{.blocking = true})
      .sink(
          "report",
          [&](const std::pair<pl::round_update, double>& r) {
            const auto& s = r.first.status;
            job_id = s.job_id;
            std::printf(
                "round %lld/%lld: train loss %.4f, job's held-out %.3f bits/byte, "
                "%s %.3f bits/byte\n",
                static_cast<long long>(s.round), static_cast<long long>(s.rounds), s.train_loss,
                s.test_loss / std::log(2.0), held_out_file.filename().c_str(), r.second);
            std::fflush(stdout);
            csv << s.round << ',' << s.train_loss << ',' << s.test_loss / std::log(2.0) << ','
                << r.second << ',' << s.elapsed_s << '\n';
            csv.flush();
            // The latest parameters as a checkpoint `gflex sample` reads (`gflex eval` needs
            // the data set, which is this program's own text, not one gflex knows).
            gflex::checkpoint c;
            c.workload = spec->workload;
            c.model = spec->model;
            c.data_set = "text";
            c.step = static_cast<uint64_t>(s.round);
            for (const auto& block : eval->workload().layout()) {
              auto t = gflex::tensor::empty(block.shape, gflex::dtype::f32);
              std::copy_n(r.first.parameters->begin() + block.offset, t.numel(), t.data<float>());
              c.tensors.push_back({block.name, std::move(t)});
            }
            auto written =
                gflex::write_file_atomically(f.out / "lm.ckpt", gflex::encode_checkpoint(c));
            if (!written) throw std::runtime_error(written.error().message());
          },
          pl::stage_options{.blocking = true});

  auto report = g.run();
  if (!report) {
    std::fprintf(stderr, "the pipeline failed: %s\n", report.error().message().c_str());
    return 1;
  }
  for (const auto& s : report->stages)
    std::printf("stage %-11s %-8s in %8lld out %8lld restarts %d peak in flight %lld\n",
                s.name.c_str(), s.kind.c_str(), static_cast<long long>(s.items_in),
                static_cast<long long>(s.items_out), s.restarts,
                static_cast<long long>(s.peak_unfinished));
  std::printf("%s done in %.1f s: %s and %s written\n", job_id.c_str(), report->elapsed_s,
              (f.out / "loss.csv").c_str(), (f.out / "lm.ckpt").c_str());
  return 0;
}
