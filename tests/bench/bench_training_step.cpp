/// @file
/// gflex_bench_step [THREADS] [BATCH] [BACKEND] [WORKLOAD] [PRECISION]: where the time of a
/// training step goes on a backend (cpu, or cuda:N) at a precision (fp32, the default, tf32 or
/// bf16: GEMMs and convolutions only), and the backend's own GEMM peak at that precision,
/// measured in the same run. WORKLOAD is a built-in workload's name or a job spec file
/// (*.toml) whose [model] is timed (a language model's step on random ids; tokens_per_s).
///
/// Prints a JSON object: the sgemm peak (2048-square on the CPU, 4096-square on a GPU, best of
/// several), for fashion-mlp the rate of each GEMM shape of the step in isolation, the time of
/// AdamW, the rate of whole training steps (synthetic data: the step's cost does not depend on
/// the values), and the GEMM-bound part of the step: the time its GEMMs and convolutions take
/// inside the step (each operation timed to completion) and the rate they reach there. Whole
/// steps are timed twice: with the batch sent from the host (step_ms) and with the data held
/// where the model computes and the batch sent as row numbers (step_rows_ms, the path of gflex
/// train and of a node's worker); and an update leaving the device, as fp32 parameters
/// (update_out_fp32_ms) and quantised there to int8 (update_out_int8_ms).

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "forwarding_backend.hpp"
#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/blas_kernels.hpp"
#include "gflex/kernels/workload.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/rng.hpp"

using namespace gflex;
using namespace gflex::kernels;
using clock_type = std::chrono::steady_clock;

namespace {

// Best per-call time of `inner` calls, over `repeats`; waits for the backend's queue so that
// a GPU's asynchronous work is counted.
template <class F>
double best_seconds(int repeats, int inner, F&& f, backend& b) {
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    b.synchronize();
    auto t0 = clock_type::now();
    for (int i = 0; i < inner; ++i) f();
    b.synchronize();
    double s = std::chrono::duration<double>(clock_type::now() - t0).count() / inner;
    best = std::min(best, s);
  }
  return best;
}

std::vector<float> random_vector(size_t n, uint64_t seed) {
  rng r(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(r.normal() * 0.1);
  return v;
}

// A host vector copied into backend memory.
tensor on_backend(backend& b, const std::vector<float>& host) {
  tensor t = b.allocate({static_cast<int64_t>(host.size())}, dtype::f32);
  b.upload(host.data(), t.raw(), host.size() * sizeof(float));
  return t;
}

double gemm_rate(backend& b, bool ta, bool tb, int64_t m, int64_t n, int64_t k, int inner) {
  tensor a = on_backend(b, random_vector(static_cast<size_t>(m * k), 1));
  tensor bm = on_backend(b, random_vector(static_cast<size_t>(k * n), 2));
  tensor c = b.allocate({m * n}, dtype::f32);
  int64_t lda = ta ? m : k, ldb = tb ? k : n;
  auto run = [&] {
    b.gemm(ta, tb, m, n, k, 1.0f, a.data<float>(), lda, bm.data<float>(), ldb, 0.0f,
           c.data<float>(), n);
  };
  run();  // warm-up: library initialisation, first touch
  b.synchronize();
  double s = best_seconds(
      5, inner, [&] { run(); }, b);
  return 2.0 * m * n * k / s / 1e9;
}

// Forwards to another backend and adds up the wall time of each kind of operation.
class timing_backend final : public testing::forwarding_backend {
 public:
  explicit timing_backend(backend& inner) : forwarding_backend(inner) {}
  std::map<std::string, double> seconds;

 private:
  // Each operation is timed to its completion: on a GPU the wrapper waits for the stream,
  // which costs the overlap of launches but says where the device's time goes.
  void dispatch(const char* what, std::function<void()> call) override {
    auto t0 = clock_type::now();
    call();
    inner_.synchronize();
    seconds[what] += std::chrono::duration<double>(clock_type::now() - t0).count();
  }
};

}  // namespace

int main(int argc, char** argv) {
  gflex::kernels::use_best_blas_kernels(argv);
  int threads = argc > 1 ? std::atoi(argv[1]) : 0;
  int64_t batch = argc > 2 ? std::atoll(argv[2]) : 128;
  std::string backend_name = argc > 3 ? argv[3] : "cpu";
  std::string workload = argc > 4 ? argv[4] : "fashion-mlp";
  auto precision = parse_math_precision(argc > 5 ? argv[5] : "fp32");
  if (!precision) {
    std::fprintf(stderr, "%s\n", precision.error().message().c_str());
    return 1;
  }
  auto made = make_backend(backend_name, threads);
  if (!made) {
    std::fprintf(stderr, "%s\n", made.error().message().c_str());
    return 1;
  }
  auto& b = *made;
  // The peak is measured at the same precision as the step: bf16 and tf32 against what the
  // tensor cores give cuBLAS's FP32 GEMM under that compute mode.
  b->set_precision(*precision);
  const bool gpu = b->where().kind != device_kind::host;
  const int64_t peak_size = gpu ? 4096 : 2048;
  double peak = gemm_rate(*b, false, false, peak_size, peak_size, peak_size, gpu ? 20 : 3);

  // A job spec's [model] (a language model of tests/bench/specs/, say) or a built-in workload.
  auto w = [&]() -> expected<std::unique_ptr<gflex::kernels::workload>> {
    if (!workload.ends_with(".toml")) return find_workload(workload);
    auto spec = load_job_spec(workload);
    if (!spec) return spec.error();
    if (spec->model.empty())
      return error(errc::invalid_argument, workload + " has no [model] table");
    return find_workload(spec->name, spec->model, "");
  }();
  if (!w) {
    std::fprintf(stderr, "%s\n", w.error().message().c_str());
    return 1;
  }
  auto m = (*w)->instantiate(*b, batch);
  if (!m) {
    std::fprintf(stderr, "%s\n", m.error().message().c_str());
    return 1;
  }
  std::vector<float> params((*w)->parameter_count());
  (*w)->init_parameters(1, params);
  (*m)->load_parameters(params);
  const int64_t dim = (*w)->feature_dim();
  auto x = random_vector(static_cast<size_t>(batch * dim), 3);
  for (auto& v : x) v = std::abs(v) * 5;
  // A token model's samples are ids: any below the vocabulary (the step's cost does not
  // depend on which).
  const bool tokens = (*w)->token_input();
  if (tokens) {
    rng pick(8);
    for (auto& v : x) v = static_cast<float>(pick.below(static_cast<uint64_t>((*w)->classes())));
  }
  std::vector<int32_t> y(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) y[i] = static_cast<int32_t>(i % (*w)->classes());
  // As many steps as take about a third of a second per repeat (at most 100, 10 for the CPU's
  // slower workloads), so that a large language model's run stays short: one warm-up step
  // (cuDNN's and cuBLAS's set-up), then one timed.
  const int most = workload == "fashion-mlp" || gpu ? 100 : 10;
  (*m)->train_step(x.data(), y.data(), batch);
  const double once = best_seconds(
      1, 1, [&] { (*m)->train_step(x.data(), y.data(), batch); }, *b);
  auto steps_for = [&](double seconds, int at_least, int at_most) {
    return static_cast<int>(std::clamp(seconds / once, double(at_least), double(at_most)));
  };
  const int inner = steps_for(0.3, 1, most);
  double step_s = best_seconds(
      5, inner, [&] { (*m)->train_step(x.data(), y.data(), batch); }, *b);
  double step_flops = (*m)->train_step_gemm_flops(batch);
  // The path gflex train and a node's worker take where the model can: the data set held where
  // the model computes (uploaded once, untimed) and each batch sent as row numbers and labels.
  double rows_step_s = 0.0;
  if ((*m)->gathers_rows()) {
    const int64_t data_rows = 8 * batch;
    tensor data = on_backend(*b, random_vector(static_cast<size_t>(data_rows * dim), 6));
    std::vector<int32_t> rows(static_cast<size_t>(data_rows));
    rng pick(7);
    for (auto& r : rows) r = static_cast<int32_t>(pick.below(static_cast<uint64_t>(data_rows)));
    int64_t at = 0;
    rows_step_s = best_seconds(
        5, inner,
        [&] {
          (*m)->backward_rows(data.data<float>(), data_rows, rows.data() + at * batch, y.data(),
                              batch, 1.0f / static_cast<float>(batch));
          (*m)->apply_gradients();
          at = (at + 1) % 8;
        },
        *b);
  }
  // An assignment's update leaving the device: the fp32 parameters downloaded (the host then
  // subtracts and quantises), against the update computed and quantised where the model is.
  const int64_t count = (*w)->parameter_count();
  std::vector<float> host_params(static_cast<size_t>(count));
  std::vector<int8_t> q(static_cast<size_t>(count));
  std::vector<float> scales(static_cast<size_t>((count + 255) / 256));
  double fp32_out_s = best_seconds(
      5, 10, [&] { (*m)->store_parameters(host_params); }, *b);
  double int8_out_s = best_seconds(
      5, 10,
      [&] {
        (*m)->mark_start();
        (*m)->quantized_update(256, q, scales);
      },
      *b);

  // AdamW over all parameters, alone.
  int64_t n = (*w)->parameter_count();
  tensor p = on_backend(*b, random_vector(n, 4)), g = on_backend(*b, random_vector(n, 5));
  tensor m1 = on_backend(*b, std::vector<float>(n, 0.0f)),
         v1 = on_backend(*b, std::vector<float>(n, 0.0f));
  int64_t step = 0;
  double adamw_s = best_seconds(
      5, 100,
      [&] {
        b->adamw(p.data<float>(), g.data<float>(), m1.data<float>(), v1.data<float>(), n,
                 adamw_config{}, ++step);
      },
      *b);

  std::printf("{\n  \"backend\": \"%s\",\n  \"workload\": \"%s\",\n  \"batch\": %lld,\n",
              b->describe().c_str(), workload.c_str(), static_cast<long long>(batch));
  std::printf("  \"precision\": \"%s\",\n", to_string(*precision));
  std::printf("  \"sgemm_peak_size\": %lld,\n  \"sgemm_peak_gflops\": %.1f,\n",
              static_cast<long long>(peak_size), peak);
  // The GEMM shapes of one fashion-mlp step (weights [in, out], activations [batch, width]).
  if (workload == "fashion-mlp") {
    struct shape {
      const char* name;
      bool ta, tb;
      int64_t m, n, k;
    };
    std::vector<shape> shapes = {
        {"fwd fc1", false, false, batch, 512, 784}, {"fwd fc2", false, false, batch, 256, 512},
        {"fwd fc3", false, false, batch, 10, 256},  {"dW fc1", true, false, 784, 512, batch},
        {"dW fc2", true, false, 512, 256, batch},   {"dW fc3", true, false, 256, 10, batch},
        {"dX fc2", false, true, batch, 512, 256},   {"dX fc3", false, true, batch, 256, 10}};
    double gemm_only_s = 0.0;
    std::printf("  \"shapes\": [\n");
    for (size_t i = 0; i < shapes.size(); ++i) {
      const auto& s = shapes[i];
      double rate = gemm_rate(*b, s.ta, s.tb, s.m, s.n, s.k, 200);
      gemm_only_s += 2.0 * s.m * s.n * s.k / (rate * 1e9);
      std::printf(
          "    {\"gemm\": \"%s\", \"m\": %lld, \"n\": %lld, \"k\": %lld, \"gflops\": %.1f}%s\n",
          s.name, static_cast<long long>(s.m), static_cast<long long>(s.n),
          static_cast<long long>(s.k), rate, i + 1 < shapes.size() ? "," : "");
    }
    std::printf("  ],\n  \"gemm_only_ms\": %.3f,\n", gemm_only_s * 1e3);
  }
  std::printf("  \"adamw_ms\": %.3f,\n", adamw_s * 1e3);
  std::printf("  \"update_out_fp32_ms\": %.3f,\n  \"update_out_int8_ms\": %.3f,\n",
              fp32_out_s * 1e3, int8_out_s * 1e3);
  // The same steps through a timing wrapper: where the step's time goes, by operation.
  timing_backend timed(*b);
  auto tm = (*w)->instantiate(timed, batch);
  (*tm)->load_parameters(params);
  (*tm)->train_step(x.data(), y.data(), batch);  // warm-up: cuDNN algorithm choice
  timed.seconds.clear();
  const int timed_steps = steps_for(1.5, 3, 2 * most);
  for (int i = 0; i < timed_steps; ++i) (*tm)->train_step(x.data(), y.data(), batch);
  std::printf("  \"step_breakdown_ms\": {");
  bool first = true;
  double gemm_bound_s = 0.0;
  for (const auto& [op, secs] : timed.seconds) {
    std::printf("%s\"%s\": %.3f", first ? "" : ", ", op.c_str(), secs / timed_steps * 1e3);
    first = false;
    // The model's GEMM FLOPs count attention's score and context products (full t x t):
    // fused, they run inside fused_attention_*.
    if (op.starts_with("gemm") || op.starts_with("conv2d_") || op.starts_with("fused_attention"))
      gemm_bound_s += secs / timed_steps;
  }
  std::printf("},\n");
  std::printf("  \"step_ms\": %.3f,\n  \"samples_per_s\": %.0f,\n", step_s * 1e3, batch / step_s);
  // Training passes replayed as recorded CUDA graphs (the default; GFLEX_CUDA_GRAPHS=0 turns them
  // off): 0 says the steps above ran unrecorded, whatever was asked.
  std::printf("  \"replays\": %llu,\n", static_cast<unsigned long long>(b->replays()));
  if (tokens)
    std::printf("  \"tokens_per_s\": %.0f,\n",
                static_cast<double>(batch * (dim - 1)) / step_s);  // dim: context + 1
  if (rows_step_s > 0)
    std::printf("  \"step_rows_ms\": %.3f,\n  \"samples_per_s_rows\": %.0f,\n", rows_step_s * 1e3,
                batch / rows_step_s);
  std::printf("  \"gemm_bound_ms\": %.3f,\n  \"gemm_bound_gflops\": %.1f,\n", gemm_bound_s * 1e3,
              step_flops / gemm_bound_s / 1e9);
  std::printf("  \"gemm_bound_fraction_of_peak\": %.3f,\n", step_flops / gemm_bound_s / 1e9 / peak);
  std::printf("  \"step_gemm_gflops\": %.1f,\n  \"fraction_of_peak\": %.3f\n}\n",
              step_flops / step_s / 1e9, step_flops / step_s / 1e9 / peak);
  return 0;
}
