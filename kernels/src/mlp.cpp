#include "gflex/kernels/mlp.hpp"

#include <cmath>

#include "gflex/runtime/rng.hpp"
#include "model_base.hpp"

namespace gflex::kernels {

namespace {

/// The MLP on one backend. Per layer l the forward pass computes
///   act[l] = relu(in[l] * W[l] + b[l])   (no ReLU on the last layer: logits)
/// and the backward pass, from d[l] = dLoss/d(pre-activation of layer l):
///   gW[l] = in[l]^T * d[l],  gb[l] = column sums of d[l],  d[l-1] = (d[l] * W[l]^T) . relu'
class mlp_model final : public detail::model_base {
 public:
  mlp_model(backend& b, std::vector<int64_t> widths, std::vector<parameter_block> layout,
            int64_t max_batch)
      : model_base(b, layout.back().offset + layout.back().shape.back(), widths.front(), max_batch),
        widths_(std::move(widths)),
        layout_(std::move(layout)) {
    for (size_t l = 1; l < widths_.size(); ++l) {
      acts_.push_back(b.allocate({max_batch, widths_[l]}, dtype::f32));
      deltas_.push_back(b.allocate({max_batch, widths_[l]}, dtype::f32));
    }
  }

  void evaluate_batch(const float* features, const int32_t* labels, int64_t batch) override {
    auto [x, y] = stage(features, labels, batch);
    forward(x, batch);
    backend_.softmax_xent(acts_.back().data<float>(), y, batch, widths_.back(), 0.0f, nullptr,
                          stats());
  }

  double train_step_gemm_flops(int64_t batch) const override {
    double flops = 0.0;
    for (size_t l = 0; l + 1 < widths_.size(); ++l) {
      double mac = static_cast<double>(batch) * widths_[l] * widths_[l + 1];
      flops += 2 * mac * (l == 0 ? 2 : 3);  // forward, weight gradient, input gradient
    }
    return flops;
  }

  // Forward and backward pass of one batch: leaves the scaled loss gradient in the gradient
  // buffer and adds the batch's loss and accuracy to the statistics.
  void backward(const float* features, const int32_t* labels, int64_t batch,
                float loss_scale) override {
    auto [x, y] = stage(features, labels, batch);
    forward(x, batch);
    size_t last = widths_.size() - 2;
    backend_.softmax_xent(acts_[last].data<float>(), y, batch, widths_.back(), loss_scale,
                          deltas_[last].data<float>(), stats());
    for (size_t l = last + 1; l-- > 0;) {
      const float* in = l == 0 ? x : acts_[l - 1].data<float>();
      int64_t fan_in = widths_[l], fan_out = widths_[l + 1];
      float* d = deltas_[l].data<float>();
      float* gw = gradients() + layout_[2 * l].offset;
      float* gb = gradients() + layout_[2 * l + 1].offset;
      backend_.gemm(true, false, fan_in, fan_out, batch, 1.0f, in, fan_in, d, fan_out, 0.0f, gw,
                    fan_out);
      backend_.column_sum(d, batch, fan_out, gb);
      if (l > 0) {
        const float* w = params() + layout_[2 * l].offset;
        float* d_in = deltas_[l - 1].data<float>();
        backend_.gemm(false, true, batch, fan_in, fan_out, 1.0f, d, fan_out, w, fan_out, 0.0f, d_in,
                      fan_in);
        backend_.relu_backward(d_in, acts_[l - 1].data<float>(), batch * fan_in);
      }
    }
  }

 private:
  void forward(const float* x, int64_t batch) {
    for (size_t l = 0; l + 1 < widths_.size(); ++l) {
      const float* in = l == 0 ? x : acts_[l - 1].data<float>();
      int64_t fan_in = widths_[l], fan_out = widths_[l + 1];
      const float* w = params() + layout_[2 * l].offset;
      const float* b = params() + layout_[2 * l + 1].offset;
      float* out = acts_[l].data<float>();
      backend_.gemm(false, false, batch, fan_out, fan_in, 1.0f, in, fan_in, w, fan_out, 0.0f, out,
                    fan_out);
      backend_.bias_relu_forward(out, b, batch, fan_out, l + 2 < widths_.size());
    }
  }

  std::vector<int64_t> widths_;
  std::vector<parameter_block> layout_;
  std::vector<tensor> acts_, deltas_;
};

}  // namespace

mlp_workload::mlp_workload(std::string name, std::vector<int64_t> widths,
                           std::function<expected<dataset_splits>()> data)
    : name_(std::move(name)), widths_(std::move(widths)), data_(std::move(data)) {
  // Kept, not aborted on: an embedding program's widths may come from its user, and a width
  // of 0 or below reached the GEMMs (which refused it and left the layer's output unwritten,
  // training went on from garbage) or offset the parameters backwards.
  if (widths_.size() < 2) {
    invalid_ = "an MLP needs an input and an output width, got " + std::to_string(widths_.size()) +
               " widths";
  } else if (widths_.back() < 2) {
    invalid_ =
        "an MLP needs at least 2 classes (its last width), got " + std::to_string(widths_.back());
  } else {
    for (size_t l = 0; l < widths_.size(); ++l)
      if (widths_[l] < 1) {
        invalid_ = "an MLP's widths must be positive, width " + std::to_string(l) + " is " +
                   std::to_string(widths_[l]);
        break;
      }
  }
  if (!invalid_.empty()) invalid_ = name_ + ": " + invalid_;
}

int64_t mlp_workload::feature_dim() const {
  return widths_.empty() ? 0 : widths_.front();
}

int64_t mlp_workload::classes() const {
  return widths_.empty() ? 0 : widths_.back();
}

expected<void> mlp_workload::check_batch(int64_t batch) const {
  (void)batch;
  if (!invalid_.empty()) return error(errc::invalid_argument, invalid_);
  return {};
}

std::string mlp_workload::describe() const {
  std::string out = "MLP ";
  for (size_t i = 0; i < widths_.size(); ++i) {
    if (i > 0) out += '-';
    out += std::to_string(widths_[i]);
  }
  return out + ", ReLU, softmax cross-entropy";
}

double mlp_workload::forward_flops() const {
  if (!invalid_.empty()) return 0.0;
  double flops = 0.0;
  for (size_t l = 0; l + 1 < widths_.size(); ++l)
    flops += 2.0 * static_cast<double>(widths_[l]) * static_cast<double>(widths_[l + 1]);
  return flops;
}

std::vector<parameter_block> mlp_workload::layout() const {
  std::vector<parameter_block> blocks;
  if (!invalid_.empty()) return blocks;  // no parameters: instantiate() says why
  int64_t offset = 0;
  for (size_t l = 0; l + 1 < widths_.size(); ++l) {
    std::string layer = "fc" + std::to_string(l + 1);
    blocks.push_back({layer + ".weight", {widths_[l], widths_[l + 1]}, offset});
    offset += widths_[l] * widths_[l + 1];
    blocks.push_back({layer + ".bias", {widths_[l + 1]}, offset});
    offset += widths_[l + 1];
  }
  return blocks;
}

void mlp_workload::init_parameters(uint64_t seed, std::span<float> out) const {
  GFLEX_CHECK(static_cast<int64_t>(out.size()) == parameter_count(), "parameter count mismatch");
  rng root(seed);
  auto blocks = layout();
  for (size_t i = 0; i < blocks.size(); ++i) {
    const auto& block = blocks[i];
    float* p = out.data() + block.offset;
    if (block.shape.size() == 1) {
      std::fill(p, p + block.shape[0], 0.0f);
      continue;
    }
    // He initialisation keeps the variance of ReLU activations constant across layers.
    rng stream = root.fork(i);
    double stddev = std::sqrt(2.0 / static_cast<double>(block.shape[0]));
    for (int64_t j = 0; j < block.shape[0] * block.shape[1]; ++j)
      p[j] = static_cast<float>(stream.normal() * stddev);
  }
}

expected<std::unique_ptr<model>> mlp_workload::instantiate(backend& b, int64_t max_batch) const {
  if (!invalid_.empty()) return error(errc::invalid_argument, invalid_);
  return detail::make_model<mlp_model>(max_batch, b, widths_, layout());
}

}  // namespace gflex::kernels
