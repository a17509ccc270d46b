#include "gflex/kernels/trainer.hpp"

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <numeric>

#include "gflex/kernels/resident_features.hpp"
#include "gflex/runtime/rng.hpp"

namespace gflex::kernels {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

expected<void> check_data(const workload& w, const dataset& d, const char* split) {
  // Every label indexes its row's logits and every row is read by its number: a label outside
  // [0, classes) or fewer rows of features than labels would be read out of bounds, and a
  // value that is not finite turns the loss into NaN (blamed on the learning rate).
  if (auto ok = check_dataset(d, std::string(split) + " data"); !ok) return ok.error();
  if (d.feature_dim() != w.feature_dim() || d.classes != w.classes())
    return error(errc::shape_mismatch, std::string(split) + " data has " +
                                           std::to_string(d.feature_dim()) + " features and " +
                                           std::to_string(d.classes) + " classes but " + w.name() +
                                           " needs " + std::to_string(w.feature_dim()) + " and " +
                                           std::to_string(w.classes()));
  if (d.size() == 0) return error(errc::invalid_argument, std::string(split) + " data is empty");
  return {};
}

expected<void> check_options(const train_options& o) {
  auto bad = [](const std::string& what) { return error(errc::invalid_argument, what); };
  if (o.epochs < 1) return bad("epochs must be at least 1, got " + std::to_string(o.epochs));
  if (o.batch_size < 1 || o.batch_size > 65536)
    return bad("batch size must be in [1, 65536], got " + std::to_string(o.batch_size));
  if (!(o.optimizer.lr > 0.0f) || !std::isfinite(o.optimizer.lr))
    return bad("learning rate must be positive and finite");
  if (!(o.optimizer.beta1 >= 0.0f && o.optimizer.beta1 < 1.0f) ||
      !(o.optimizer.beta2 >= 0.0f && o.optimizer.beta2 < 1.0f))
    return bad("AdamW betas must be in [0, 1)");
  // AdamW divides by sqrt(v) + eps, and v stays 0 for a parameter that never had a gradient:
  // an eps of 0 makes it 0 / 0 (NaN), a negative one may divide by 0 or flip the step.
  if (!(o.optimizer.eps > 0.0f) || !std::isfinite(o.optimizer.eps))
    return bad("AdamW eps must be positive and finite");
  if (!(o.optimizer.weight_decay >= 0.0f) || !std::isfinite(o.optimizer.weight_decay))
    return bad("weight decay must be non-negative and finite");
  // Each step multiplies every parameter by 1 - lr x weight decay: it must stay positive.
  if (static_cast<double>(o.optimizer.lr) * static_cast<double>(o.optimizer.weight_decay) >= 1.0)
    return bad(
        "learning rate times weight decay must be below 1 (each step multiplies every "
        "parameter by 1 - lr x weight decay)");
  if (o.optimizer.plain_sgd && o.optimizer.weight_decay != 0.0f)
    return bad("weight decay applies to AdamW only (plain SGD would ignore it)");
  // The cosine schedule ends at this fraction of the learning rate: below 0 the last steps
  // climb the loss, above 1 the rate grows, and NaN makes every step's rate NaN.
  if (!(o.final_lr_fraction >= 0.0f && o.final_lr_fraction <= 1.0f))
    return bad("final learning-rate fraction must be in [0, 1], got " +
               std::to_string(o.final_lr_fraction));
  if (o.max_steps < 0) return bad("max_steps must not be negative");
  if (o.warmup_steps < 0) return bad("warmup_steps must not be negative");
  return {};
}

// Runs one evaluation pass of `m` over `d` in chunks of at most `chunk` rows.
batch_stats evaluate_model(model& m, const dataset& d, int64_t chunk) {
  const float* x = d.features.data<float>();
  const int32_t* y = d.labels.data<int32_t>();
  int64_t dim = d.feature_dim();
  m.take_stats();
  for (int64_t start = 0; start < d.size(); start += chunk) {
    int64_t rows = std::min(chunk, d.size() - start);
    m.evaluate_batch(x + start * dim, y + start, rows);
  }
  return m.take_stats();
}

}  // namespace

expected<train_report> train(const workload& w, const dataset_splits& data, backend& b,
                             const train_options& options,
                             const std::function<void(const train_progress&)>& on_progress) {
  if (auto ok = check_options(options); !ok) return ok.error();
  if (auto ok = check_data(w, data.train, "training"); !ok) return ok.error();
  if (options.evaluate)
    if (auto ok = check_data(w, data.test, "test"); !ok) return ok.error();

  auto start = clock_type::now();
  const int64_t eval_rows = std::max<int64_t>(options.batch_size, w.eval_batch());
  auto instance = w.instantiate(b, eval_rows);
  if (!instance) return instance.error();
  model& m = **instance;
  try {
    std::vector<float> params(static_cast<size_t>(w.parameter_count()));
    w.init_parameters(options.seed, params);
    m.load_parameters(params);
    m.optimizer() = options.optimizer;

    const int64_t n = data.train.size();
    const int64_t dim = data.train.feature_dim();
    const int64_t steps_per_epoch = (n + options.batch_size - 1) / options.batch_size;
    int64_t total_steps = steps_per_epoch * options.epochs;
    if (options.max_steps > 0) total_steps = std::min(total_steps, options.max_steps);

    // The training set where the model computes, so that a batch crosses as row numbers and
    // labels and is gathered there: a GPU holds a copy (one upload, before the clock starts,
    // as a PyTorch loop holds its data on the device), the CPU reads the set in place.
    // Otherwise (a token model, a GPU without memory for the set) batches are gathered on the
    // host into one staging buffer; a shuffled copy of the whole training set per epoch
    // would cost 188 MB of writes for Fashion-MNIST.
    const float* features = data.train.features.data<float>();
    const int32_t* labels = data.train.labels.data<int32_t>();
    resident_features resident;
    if (m.gathers_rows() && n <= std::numeric_limits<int32_t>::max())
      resident = resident_features(b, data.train.features);
    const float* resident_at = resident.at();
    tensor batch_x = tensor::empty({options.batch_size, dim}, dtype::f32);
    tensor batch_y = tensor::empty({options.batch_size}, dtype::i32);
    std::vector<int32_t> batch_rows(static_cast<size_t>(resident_at ? options.batch_size : 0));
    std::vector<int64_t> order(static_cast<size_t>(n));

    train_report report;
    rng root(options.seed);
    int64_t step = 0;
    double steady_s = 0.0;  // training time after the warm-up steps
    if (on_progress) {
      train_progress p;
      p.epoch = 1;
      p.epochs = options.epochs;
      p.total_steps = total_steps;
      on_progress(p);  // lets a progress display start its clock with the run
    }
    auto diverged = [&](int epoch, int64_t at) -> expected<train_report> {
      return error(errc::non_finite,
                   "training diverged in epoch " + std::to_string(epoch) + " (by step " +
                       std::to_string(at) +
                       "): the loss is not finite; try a lower learning rate (--lr)");
    };
    for (int epoch = 1; epoch <= options.epochs && step < total_steps; ++epoch) {
      // Fisher-Yates with the project's own generator: the same order on every platform.
      std::iota(order.begin(), order.end(), 0);
      rng shuffle = root.fork(static_cast<uint64_t>(epoch));
      for (int64_t i = n - 1; i > 0; --i)
        std::swap(order[i], order[shuffle.below(static_cast<uint64_t>(i + 1))]);

      epoch_report er;
      er.epoch = epoch;
      auto epoch_start = clock_type::now();
      // Where this epoch's steady time starts: at its start once the warm-up is behind.
      auto steady_start = epoch_start;
      int64_t steady_from_samples = 0;
      m.take_stats();
      // Reading the statistics synchronises a GPU stream, so they are read only now and then.
      auto fold_stats = [&] {
        auto recent = m.take_stats();
        er.train_loss += recent.loss_sum;
        er.train_accuracy += static_cast<double>(recent.correct);
        return recent;
      };
      for (int64_t s = 0; s < steps_per_epoch && step < total_steps; ++s, ++step) {
        int64_t rows = std::min(options.batch_size, n - s * options.batch_size);
        float* bx = batch_x.data<float>();
        int32_t* by = batch_y.data<int32_t>();
        for (int64_t r = 0; r < rows; ++r) {
          int64_t src = order[s * options.batch_size + r];
          if (resident_at)
            batch_rows[static_cast<size_t>(r)] = static_cast<int32_t>(src);
          else
            std::memcpy(bx + r * dim, features + src * dim, sizeof(float) * dim);
          by[r] = labels[src];
        }
        if (options.cosine_schedule) {
          double progress = static_cast<double>(step) / static_cast<double>(total_steps);
          double f = options.final_lr_fraction +
                     (1.0 - options.final_lr_fraction) * 0.5 * (1.0 + std::cos(M_PI * progress));
          m.optimizer().lr = static_cast<float>(options.optimizer.lr * f);
        }
        if (resident_at) {
          m.backward_rows(resident_at, n, batch_rows.data(), by, rows,
                          1.0f / static_cast<float>(rows));
          m.apply_gradients();
        } else {
          m.train_step(bx, by, rows);
        }
        er.samples += rows;
        report.gemm_flops += m.train_step_gemm_flops(rows);
        if (step + 1 == options.warmup_steps) {
          fold_stats();  // the warm-up's work done before the steady clock starts
          steady_start = clock_type::now();
          steady_from_samples = er.samples;
        }
        if (on_progress && (s % 20 == 19 || s + 1 == steps_per_epoch)) {
          auto recent = fold_stats();
          if (!std::isfinite(recent.loss_sum)) return diverged(epoch, step + 1);
          train_progress p;
          p.epoch = epoch;
          p.epochs = options.epochs;
          p.step = step + 1;
          p.total_steps = total_steps;
          p.recent_loss = recent.mean_loss();
          double t = report.train_s + seconds_since(epoch_start);
          p.samples_per_s = t > 0 ? static_cast<double>(report.samples + er.samples) / t : 0.0;
          on_progress(p);
        }
      }
      fold_stats();
      // Trained on past a NaN, every step after was of NaN parameters, and the evaluation's
      // arg max of NaN logits (class 0) made up an accuracy.
      if (!std::isfinite(er.train_loss)) return diverged(epoch, step);
      const auto epoch_end = clock_type::now();
      er.train_s = std::chrono::duration<double>(epoch_end - epoch_start).count();
      er.train_loss /= static_cast<double>(er.samples);
      er.train_accuracy /= static_cast<double>(er.samples);
      report.train_s += er.train_s;
      report.samples += er.samples;
      if (step > options.warmup_steps) {  // this epoch has steps past the warm-up
        steady_s += std::chrono::duration<double>(epoch_end - steady_start).count();
        report.steady_samples += er.samples - steady_from_samples;
      }
      if (options.evaluate) {
        auto test = evaluate_model(m, data.test, eval_rows);
        er.test_loss = test.mean_loss();
        er.test_accuracy = test.accuracy();
        report.test_accuracy = er.test_accuracy;
      }
      report.epochs.push_back(er);
      if (on_progress) {
        train_progress p;
        p.epoch = epoch;
        p.epochs = options.epochs;
        p.step = step;
        p.total_steps = total_steps;
        p.recent_loss = er.train_loss;
        p.samples_per_s = static_cast<double>(report.samples) / report.train_s;
        p.finished_epoch = &report.epochs.back();
        on_progress(p);
      }
    }
    report.steps = step;
    report.samples_per_s =
        report.train_s > 0 ? static_cast<double>(report.samples) / report.train_s : 0.0;
    report.steady_samples_per_s =
        steady_s > 0 ? static_cast<double>(report.steady_samples) / steady_s : 0.0;
    report.wall_s = seconds_since(start);
    return report;
  } catch (const compute_error& e) {
    return e.err();
  }
}

expected<batch_stats> evaluate(const workload& w, const dataset& test, backend& b,
                               std::span<const float> params, int64_t batch_size) {
  if (auto ok = check_data(w, test, "test"); !ok) return ok.error();
  if (static_cast<int64_t>(params.size()) != w.parameter_count())
    return error(errc::shape_mismatch, "parameters have " + std::to_string(params.size()) +
                                           " values but " + w.name() + " has " +
                                           std::to_string(w.parameter_count()));
  if (auto bad = first_non_finite(params); bad >= 0)
    return error(errc::non_finite,
                 "parameter " + std::to_string(bad) + " is not finite (NaN or infinity)");
  batch_size = std::min(batch_size, w.eval_batch());
  // The core evaluates every job's model on its own CPU: memory the system refuses fails the
  // evaluation (and the job), never the core.
  try {
    auto instance = w.instantiate(b, batch_size);
    if (!instance) return instance.error();
    (*instance)->load_parameters(params);
    return evaluate_model(**instance, test, batch_size);
  } catch (const compute_error& e) {
    return e.err();
  } catch (const std::bad_alloc&) {
    return error(errc::device_error, "evaluating " + w.name() + ": out of host memory");
  }
}

}  // namespace gflex::kernels
