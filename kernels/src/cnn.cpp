#include "gflex/kernels/cnn.hpp"

#include <cmath>

#include "gflex/runtime/rng.hpp"
#include "model_base.hpp"

namespace gflex::kernels {

namespace {

// Parameter blocks in flat-vector order.
enum block_index : size_t { conv1_w, conv1_b, conv2_w, conv2_b, fc1_w, fc1_b, fc2_w, fc2_b };

/// The network on one backend. Per batch of n images (H x W x C, NHWC):
///   a1 = relu(conv1(x) + b1)      [n, H, W, K1]      p1 = pool(a1) [n, H/2, W/2, K1]
///   a2 = relu(conv2(p1) + b2)     [n, H/2, W/2, K2]  p2 = pool(a2) [n, H/4, W/4, K2]
///   h  = relu(p2 W3 + b3)         [n, hidden]        z  = h W4 + b4 [n, classes]
/// The backward pass runs the same chain in reverse; pooling routes each gradient to the input
/// that won its window (the recorded argmax), ReLU masks by the layer's output.
class cnn_model final : public detail::model_base {
 public:
  cnn_model(backend& b, const cnn_shape& s, std::vector<parameter_block> layout, int64_t max_batch)
      : model_base(b, layout.back().offset + layout.back().shape.back(),
                   s.height * s.width * s.channels, max_batch),
        s_(s),
        layout_(std::move(layout)) {
    const int64_t h2 = s.height / 2, w2 = s.width / 2, h4 = s.height / 4, w4 = s.width / 4;
    a1_ = b.allocate({max_batch, s.height, s.width, s.conv1}, dtype::f32);
    p1_ = b.allocate({max_batch, h2, w2, s.conv1}, dtype::f32);
    i1_ = b.allocate({max_batch, h2, w2, s.conv1}, dtype::i32);
    a2_ = b.allocate({max_batch, h2, w2, s.conv2}, dtype::f32);
    p2_ = b.allocate({max_batch, h4, w4, s.conv2}, dtype::f32);
    i2_ = b.allocate({max_batch, h4, w4, s.conv2}, dtype::i32);
    h_ = b.allocate({max_batch, s.hidden}, dtype::f32);
    z_ = b.allocate({max_batch, s.classes}, dtype::f32);
  }

  void evaluate_batch(const float* features, const int32_t* labels, int64_t batch) override {
    auto [x, y] = stage(features, labels, batch);
    forward(x, batch);
    backend_.softmax_xent(z_.data<float>(), y, batch, s_.classes, 0.0f, nullptr, stats());
  }

  void backward(const float* features, const int32_t* labels, int64_t batch,
                float loss_scale) override {
    auto [x, y] = stage(features, labels, batch);
    forward(x, batch);
    allocate_deltas();
    const int64_t flat = (s_.height / 4) * (s_.width / 4) * s_.conv2;
    float* dz = dz_.data<float>();
    float* dh = dh_.data<float>();
    float* dp2 = dp2_.data<float>();
    float* da2 = da2_.data<float>();
    float* dp1 = dp1_.data<float>();
    float* da1 = da1_.data<float>();
    backend_.softmax_xent(z_.data<float>(), y, batch, s_.classes, loss_scale, dz, stats());

    // fc2, then fc1 (whose input is the flattened p2).
    backend_.gemm(true, false, s_.hidden, s_.classes, batch, 1.0f, h_.data<float>(), s_.hidden, dz,
                  s_.classes, 0.0f, grad(fc2_w), s_.classes);
    backend_.column_sum(dz, batch, s_.classes, grad(fc2_b));
    backend_.gemm(false, true, batch, s_.hidden, s_.classes, 1.0f, dz, s_.classes, param(fc2_w),
                  s_.classes, 0.0f, dh, s_.hidden);
    backend_.relu_backward(dh, h_.data<float>(), batch * s_.hidden);
    backend_.gemm(true, false, flat, s_.hidden, batch, 1.0f, p2_.data<float>(), flat, dh, s_.hidden,
                  0.0f, grad(fc1_w), s_.hidden);
    backend_.column_sum(dh, batch, s_.hidden, grad(fc1_b));
    backend_.gemm(false, true, batch, flat, s_.hidden, 1.0f, dh, s_.hidden, param(fc1_w), s_.hidden,
                  0.0f, dp2, flat);

    // pool2, ReLU, conv2 (filter, bias and data gradients).
    auto g2 = conv2(batch);
    backend_.max_pool2_backward(dp2, i2_.data<int32_t>(), batch, g2.height, g2.width, s_.conv2,
                                da2);
    backend_.relu_backward(da2, a2_.data<float>(), batch * g2.height * g2.width * s_.conv2);
    backend_.conv2d_backward_filter(g2, p1_.data<float>(), da2, grad(conv2_w));
    backend_.column_sum(da2, batch * g2.height * g2.width, s_.conv2, grad(conv2_b));
    backend_.conv2d_backward_data(g2, da2, param(conv2_w), dp1);

    // pool1, ReLU, conv1 (the input needs no gradient).
    auto g1 = conv1(batch);
    backend_.max_pool2_backward(dp1, i1_.data<int32_t>(), batch, g1.height, g1.width, s_.conv1,
                                da1);
    backend_.relu_backward(da1, a1_.data<float>(), batch * g1.height * g1.width * s_.conv1);
    backend_.conv2d_backward_filter(g1, x, da1, grad(conv1_w));
    backend_.column_sum(da1, batch * g1.height * g1.width, s_.conv1, grad(conv1_b));
  }

  double train_step_gemm_flops(int64_t batch) const override {
    // Multiply-adds of each layer's forward product; the backward pass does two more of the
    // same size (data and weight gradients) except for conv1's, which has no data gradient.
    const double n = static_cast<double>(batch);
    const double conv1 = n * s_.height * s_.width * s_.conv1 * 9 * s_.channels;
    const double conv2 = n * (s_.height / 2) * (s_.width / 2) * s_.conv2 * 9 * s_.conv1;
    const double fc1 = n * (s_.height / 4) * (s_.width / 4) * s_.conv2 * s_.hidden;
    const double fc2 = n * s_.hidden * s_.classes;
    return 2 * (2 * conv1 + 3 * (conv2 + fc1 + fc2));
  }

 private:
  conv2d_geometry conv1(int64_t batch) const {
    return {batch, s_.height, s_.width, s_.channels, s_.conv1, 3, 3, 1, 1};
  }
  conv2d_geometry conv2(int64_t batch) const {
    return {batch, s_.height / 2, s_.width / 2, s_.conv1, s_.conv2, 3, 3, 1, 1};
  }

  float* param(block_index i) { return params() + layout_[i].offset; }
  float* grad(block_index i) { return gradients() + layout_[i].offset; }

  void forward(const float* x, int64_t batch) {
    auto g1 = conv1(batch);
    backend_.conv2d_forward(g1, x, param(conv1_w), a1_.data<float>());
    backend_.bias_relu_forward(a1_.data<float>(), param(conv1_b), batch * g1.height * g1.width,
                               s_.conv1, true);
    backend_.max_pool2_forward(a1_.data<float>(), batch, g1.height, g1.width, s_.conv1,
                               p1_.data<float>(), i1_.data<int32_t>());
    auto g2 = conv2(batch);
    backend_.conv2d_forward(g2, p1_.data<float>(), param(conv2_w), a2_.data<float>());
    backend_.bias_relu_forward(a2_.data<float>(), param(conv2_b), batch * g2.height * g2.width,
                               s_.conv2, true);
    backend_.max_pool2_forward(a2_.data<float>(), batch, g2.height, g2.width, s_.conv2,
                               p2_.data<float>(), i2_.data<int32_t>());
    const int64_t flat = (s_.height / 4) * (s_.width / 4) * s_.conv2;
    backend_.gemm(false, false, batch, s_.hidden, flat, 1.0f, p2_.data<float>(), flat, param(fc1_w),
                  s_.hidden, 0.0f, h_.data<float>(), s_.hidden);
    backend_.bias_relu_forward(h_.data<float>(), param(fc1_b), batch, s_.hidden, true);
    backend_.gemm(false, false, batch, s_.classes, s_.hidden, 1.0f, h_.data<float>(), s_.hidden,
                  param(fc2_w), s_.classes, 0.0f, z_.data<float>(), s_.classes);
    backend_.bias_relu_forward(z_.data<float>(), param(fc2_b), batch, s_.classes, false);
  }

  // Gradient buffers exist only in models that train: the job's evaluator never needs them.
  void allocate_deltas() {
    if (dz_.numel() > 0) return;
    const int64_t n = max_batch_, h2 = s_.height / 2, w2 = s_.width / 2;
    dz_ = backend_.allocate({n, s_.classes}, dtype::f32);
    dh_ = backend_.allocate({n, s_.hidden}, dtype::f32);
    dp2_ = backend_.allocate({n, s_.height / 4, s_.width / 4, s_.conv2}, dtype::f32);
    da2_ = backend_.allocate({n, h2, w2, s_.conv2}, dtype::f32);
    dp1_ = backend_.allocate({n, h2, w2, s_.conv1}, dtype::f32);
    da1_ = backend_.allocate({n, s_.height, s_.width, s_.conv1}, dtype::f32);
  }

  cnn_shape s_;
  std::vector<parameter_block> layout_;
  tensor a1_, p1_, i1_, a2_, p2_, i2_, h_, z_;
  tensor dz_, dh_, dp2_, da2_, dp1_, da1_;
};

}  // namespace

cnn_workload::cnn_workload(std::string name, cnn_shape shape,
                           std::function<expected<dataset_splits>()> data)
    : name_(std::move(name)), shape_(shape), data_(std::move(data)) {
  // Kept, not aborted on: an embedding program's shape may come from its user, and an abort
  // ended that program.
  const auto& s = shape_;
  auto text = [](const char* key, int64_t v) { return std::string(key) + " " + std::to_string(v); };
  if (s.height < 1 || s.height % 4 != 0)
    invalid_ =
        "a CNN's image height must be a positive multiple of 4, got " + std::to_string(s.height);
  else if (s.width < 1 || s.width % 4 != 0)
    invalid_ =
        "a CNN's image width must be a positive multiple of 4, got " + std::to_string(s.width);
  else if (s.channels < 1 || s.conv1 < 1 || s.conv2 < 1 || s.hidden < 1)
    invalid_ = "a CNN's widths must be positive, got " + text("channels", s.channels) + ", " +
               text("conv1", s.conv1) + ", " + text("conv2", s.conv2) + ", " +
               text("hidden", s.hidden);
  else if (s.classes < 2)
    invalid_ = "a CNN needs at least 2 classes, got " + std::to_string(s.classes);
  if (!invalid_.empty()) invalid_ = name_ + ": " + invalid_;
}

expected<void> cnn_workload::check_batch(int64_t batch) const {
  (void)batch;
  if (!invalid_.empty()) return error(errc::invalid_argument, invalid_);
  return {};
}

std::string cnn_workload::describe() const {
  const auto& s = shape_;
  return "CNN " + std::to_string(s.height) + "x" + std::to_string(s.width) + "x" +
         std::to_string(s.channels) + ": conv3x3-" + std::to_string(s.conv1) + ", pool, conv3x3-" +
         std::to_string(s.conv2) + ", pool, dense-" + std::to_string(s.hidden) + ", dense-" +
         std::to_string(s.classes) + "; ReLU, softmax cross-entropy";
}

double cnn_workload::forward_flops() const {
  if (!invalid_.empty()) return 0.0;
  const auto& s = shape_;
  const auto d = [](int64_t v) { return static_cast<double>(v); };
  // 3x3 convolutions at full and half resolution (each followed by a 2x2 pooling), then the
  // two dense layers.
  return 2.0 * d(s.height) * d(s.width) * 9.0 * d(s.channels) * d(s.conv1) +
         2.0 * d(s.height / 2) * d(s.width / 2) * 9.0 * d(s.conv1) * d(s.conv2) +
         2.0 * d((s.height / 4) * (s.width / 4) * s.conv2) * d(s.hidden) +
         2.0 * d(s.hidden) * d(s.classes);
}

std::vector<parameter_block> cnn_workload::layout() const {
  if (!invalid_.empty()) return {};  // no parameters: instantiate() says why
  const auto& s = shape_;
  const int64_t flat = (s.height / 4) * (s.width / 4) * s.conv2;
  std::vector<parameter_block> blocks = {
      {"conv1.weight", {s.conv1, 3, 3, s.channels}, 0},
      {"conv1.bias", {s.conv1}, 0},
      {"conv2.weight", {s.conv2, 3, 3, s.conv1}, 0},
      {"conv2.bias", {s.conv2}, 0},
      {"fc1.weight", {flat, s.hidden}, 0},
      {"fc1.bias", {s.hidden}, 0},
      {"fc2.weight", {s.hidden, s.classes}, 0},
      {"fc2.bias", {s.classes}, 0},
  };
  int64_t offset = 0;
  for (auto& b : blocks) {
    b.offset = offset;
    offset += *checked_numel(b.shape);
  }
  return blocks;
}

void cnn_workload::init_parameters(uint64_t seed, std::span<float> out) const {
  GFLEX_CHECK(static_cast<int64_t>(out.size()) == parameter_count(), "parameter count mismatch");
  rng root(seed);
  auto blocks = layout();
  for (size_t i = 0; i < blocks.size(); ++i) {
    const auto& block = blocks[i];
    const int64_t n = *checked_numel(block.shape);
    float* p = out.data() + block.offset;
    if (block.shape.size() == 1) {
      std::fill(p, p + n, 0.0f);
      continue;
    }
    // He initialisation over each output's fan-in: a filter's R*S*C inputs, a dense layer's
    // rows (weights are [in, out]).
    const int64_t fan_in = i == conv1_w || i == conv2_w ? n / block.shape[0] : block.shape[0];
    rng stream = root.fork(i);
    const double stddev = std::sqrt(2.0 / static_cast<double>(fan_in));
    for (int64_t j = 0; j < n; ++j) p[j] = static_cast<float>(stream.normal() * stddev);
  }
}

expected<std::unique_ptr<model>> cnn_workload::instantiate(backend& b, int64_t max_batch) const {
  if (!invalid_.empty()) return error(errc::invalid_argument, invalid_);
  return detail::make_model<cnn_model>(max_batch, b, shape_, layout());
}

}  // namespace gflex::kernels
