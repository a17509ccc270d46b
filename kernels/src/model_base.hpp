#pragma once
/// @file
/// What every model on a backend shares: one flat buffer each for parameters, gradients and
/// the two AdamW moments (so that the optimiser and the all-reduce are single passes), the
/// loss/accuracy statistics, and the staging of host batches into backend memory. A network
/// adds its activations, forward and backward passes.

#include <cmath>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "gflex/kernels/workload.hpp"

namespace gflex::kernels::detail {

class model_base : public model {
 public:
  model_base(backend& b, int64_t parameters, int64_t feature_dim, int64_t max_batch)
      : backend_(b), count_(parameters), feature_dim_(feature_dim), max_batch_(max_batch) {
    params_ = b.allocate({count_}, dtype::f32);
    // On the host, made at the first backward pass: a model that only evaluates (every job's
    // on the core, at each evaluation) held a parameter-sized buffer it never wrote, a GiB
    // for the largest models. A device's is made here, before any step is recorded.
    if (b.where().kind != device_kind::host) grads_ = b.allocate({count_}, dtype::f32);
    b.fill(params_.data<float>(), count_, 0.0f);
    reset_optimizer();
    if (b.where().kind != device_kind::host) {
      input_ = b.allocate({max_batch, feature_dim}, dtype::f32);
      labels_ = b.allocate({max_batch}, dtype::i32);
    }
    stats_ = b.allocate({2}, dtype::f32);
    b.fill(stats_.data<float>(), 2, 0.0f);
  }

  int64_t parameter_count() const override { return count_; }
  int64_t feature_dim() const override { return feature_dim_; }

  void load_parameters(std::span<const float> host) override {
    GFLEX_CHECK(static_cast<int64_t>(host.size()) == count_, "parameter count mismatch");
    backend_.upload(host.data(), params_.raw(), params_.nbytes());
  }

  void store_parameters(std::span<float> host) override {
    GFLEX_CHECK(static_cast<int64_t>(host.size()) == count_, "parameter count mismatch");
    backend_.download(params_.raw(), host.data(), params_.nbytes());
  }

  void store_parameters(std::span<float> host, int64_t offset) override {
    GFLEX_CHECK(offset >= 0 && offset + static_cast<int64_t>(host.size()) <= count_,
                "parameter range outside the model");
    backend_.download(params_.data<float>() + offset, host.data(), host.size_bytes());
  }

  void reset_optimizer() override {
    if (moments_) {
      backend_.fill(m_.data<float>(), count_, 0.0f);
      backend_.fill(v_.data<float>(), count_, 0.0f);
    }
    step_ = 0;
  }

  adamw_config& optimizer() override { return optimizer_; }

  // The parameters' gradients: a worker makes a model's training buffers before its first
  // step, to know it fits beside the models it keeps.
  expected<void> prepare_training() override {
    try {
      gradients();
      return {};
    } catch (const compute_error& e) {
      return e.err();
    }
  }

  float* gradients() override {
    if (grads_.numel() == 0) grads_ = backend_.allocate({count_}, dtype::f32);
    return grads_.data<float>();
  }

  void apply_gradients() override {
    ++step_;
    if (optimizer_.plain_sgd) {
      backend_.axpby(count_, -optimizer_.lr, gradients(), 1.0f, params_.data<float>());
    } else {
      // The moments are made at the first AdamW step: a model trained with SGD or only
      // evaluated (a large one on the core) never holds them, two parameter-sized buffers.
      if (!moments_) {
        m_ = backend_.allocate({count_}, dtype::f32);
        v_ = backend_.allocate({count_}, dtype::f32);
        backend_.fill(m_.data<float>(), count_, 0.0f);
        backend_.fill(v_.data<float>(), count_, 0.0f);
        moments_ = true;
      }
      backend_.adamw(params_.data<float>(), gradients(), m_.data<float>(), v_.data<float>(), count_,
                     optimizer_, step_);
    }
  }

  void compute_gradients(const float* features, const int32_t* labels, int64_t batch,
                         std::span<float> out) override {
    GFLEX_CHECK(static_cast<int64_t>(out.size()) == count_, "gradient count mismatch");
    backward(features, labels, batch, 1.0f / static_cast<float>(batch));
    backend_.download(gradients(), out.data(), static_cast<size_t>(count_) * sizeof(float));
  }

  void backward_rows(const float* features, int64_t data_rows, const int32_t* rows,
                     const int32_t* labels, int64_t batch, float loss_scale) override {
    GFLEX_CHECK(gathers_rows(), "backward_rows: this model reads its batches on the host");
    GFLEX_CHECK(batch > 0 && batch <= max_batch_, "batch larger than the model's max_batch");
    for (int64_t i = 0; i < batch; ++i)
      GFLEX_CHECK(rows[i] >= 0 && rows[i] < data_rows, "backward_rows: row outside the data");
    // The CPU backend reads host batches in place and has no staging buffers until now.
    if (input_.numel() == 0) input_ = backend_.allocate({max_batch_, feature_dim_}, dtype::f32);
    if (gather_.numel() == 0) gather_ = backend_.allocate({2 * max_batch_}, dtype::i32);
    // Row numbers and labels go over in one copy.
    gather_host_.assign(rows, rows + batch);
    gather_host_.insert(gather_host_.end(), labels, labels + batch);
    backend_.upload(gather_host_.data(), gather_.raw(), sizeof(int32_t) * 2 * batch);
    backend_.embedding_forward(gather_.data<int32_t>(), features, batch, feature_dim_,
                               input_.data<float>());
    gathered_ = batch;
    backward(nullptr, nullptr, batch, loss_scale);
  }

  bool mark_start() override {
    try {
      if (start_.numel() == 0) start_ = backend_.allocate({count_}, dtype::f32);
    } catch (const compute_error&) {
      return false;  // out of device memory: the caller computes the update on the host
    }
    backend_.axpby(count_, 1.0f, params_.data<float>(), 0.0f, start_.data<float>());
    return true;
  }

  bool quantized_update(int64_t block, std::span<int8_t> q, std::span<float> scales) override {
    GFLEX_CHECK(start_.numel() == count_, "quantized_update without mark_start");
    GFLEX_CHECK(block > 0 && static_cast<int64_t>(q.size()) == count_ &&
                    static_cast<int64_t>(scales.size()) == (count_ + block - 1) / block,
                "quantized_update: sizes do not fit the model");
    float* delta = start_.data<float>();
    // start - now, one rounding as on the host (y = -1 * now + 1 * start).
    backend_.axpby(count_, -1.0f, params_.data<float>(), 1.0f, delta);
    // Accumulated in double, the sum of squares is finite exactly when every value is (a
    // NaN would pass the quantiser's max unseen).
    const bool finite = std::isfinite(backend_.sum_squares(delta, count_));
    if (finite && backend_.where().kind == device_kind::host) {
      backend_.quantize_int8(delta, nullptr, count_, block, q.data(), scales.data());
    } else if (finite) {
      tensor dq = backend_.allocate({count_}, dtype::i8);
      tensor ds = backend_.allocate({static_cast<int64_t>(scales.size())}, dtype::f32);
      backend_.quantize_int8(delta, nullptr, count_, block, dq.data<int8_t>(), ds.data<float>());
      backend_.download(dq.raw(), q.data(), q.size_bytes());
      backend_.download(ds.raw(), scales.data(), scales.size_bytes());
    }
    start_ = tensor{};
    return finite;
  }

  batch_stats take_stats() override {
    float host[2];
    backend_.download(stats_.raw(), host, sizeof host);
    backend_.fill(stats_.data<float>(), 2, 0.0f);
    batch_stats out{host[0], static_cast<int64_t>(std::llround(host[1])), samples_};
    samples_ = 0;
    return out;
  }

 protected:
  /// Puts a host batch where the backend computes (the CPU backend reads it in place) and
  /// counts its samples.
  std::pair<const float*, const int32_t*> stage(const float* features, const int32_t* labels,
                                                int64_t batch) {
    count_samples(batch);
    if (gathered_ != 0) {  // backward_rows() put the batch in place already
      GFLEX_CHECK(gathered_ == batch, "a gathered batch of another size");
      gathered_ = 0;
      return {input_.data<float>(), gather_.data<int32_t>() + batch};
    }
    if (backend_.where().kind == device_kind::host) return {features, labels};
    backend_.upload(features, input_.raw(), sizeof(float) * batch * feature_dim_);
    backend_.upload(labels, labels_.raw(), sizeof(int32_t) * batch);
    return {input_.data<float>(), labels_.data<int32_t>()};
  }

  /// Counts a batch's samples for the statistics: stage() does, and a model that stages its
  /// inputs itself (a token model's ids) calls it instead.
  void count_samples(int64_t batch) {
    GFLEX_CHECK(batch > 0 && batch <= max_batch_, "batch larger than the model's max_batch");
    samples_ += batch;
  }

  float* params() { return params_.data<float>(); }
  float* stats() { return stats_.data<float>(); }

  backend& backend_;
  const int64_t count_;
  const int64_t feature_dim_;
  const int64_t max_batch_;

 private:
  tensor params_, grads_, m_, v_, input_, labels_, stats_;
  tensor gather_;                     // backward_rows: row numbers, then labels
  std::vector<int32_t> gather_host_;  // their host copy
  int64_t gathered_ = 0;              // rows backward_rows() gathered for the next stage()
  tensor start_;                      // mark_start()'s parameters, then the update
  bool moments_ = false;              // m_ and v_ exist
  adamw_config optimizer_;
  int64_t step_ = 0;
  int64_t samples_ = 0;
};

/// A workload's instantiate(): checks the batch size and turns a device failure while the
/// model allocates into its error.
template <class Model, class... Args>
expected<std::unique_ptr<model>> make_model(int64_t max_batch, Args&&... args) {
  if (max_batch <= 0)
    return error(errc::invalid_argument,
                 "batch size must be positive, got " + std::to_string(max_batch));
  try {
    return std::unique_ptr<model>(std::make_unique<Model>(std::forward<Args>(args)..., max_batch));
  } catch (const compute_error& e) {
    return e.err();
  }
}

}  // namespace gflex::kernels::detail
