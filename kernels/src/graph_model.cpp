/// @file
/// The engine of user-defined models: a planned layer graph (model_spec.hpp) executed on a
/// backend. Every value (the input and each layer's output) has an activation buffer and a
/// gradient buffer of max_batch samples; flatten and reshape are views of their input's
/// buffers. The backward pass visits the layers in reverse; a value read by several layers
/// (a residual) sums the gradients they send it.

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string_view>
#include <utility>

#include "gflex/kernels/model_spec.hpp"
#include "gflex/runtime/rng.hpp"
#include "model_base.hpp"

namespace gflex::kernels {

namespace {

int64_t numel_of(const shape_t& s) {
  return *checked_numel(s);
}

class graph_model final : public detail::model_base {
 public:
  graph_model(backend& b, const model_plan& plan, int64_t max_batch)
      : model_base(b, plan.parameters, plan.sample_values, max_batch), plan_(plan) {
    const size_t n = plan_.values.size();
    alias_values();
    acts_.resize(n);
    grads_.resize(n);
    for (size_t v = 0; v < n; ++v) {
      if (root_[v] != static_cast<int>(v)) continue;
      // The input is the staged batch (model_base's buffer, or the host batch the CPU reads
      // in place; token ids live in ids_) and takes no gradient.
      if (v == 0) continue;
      acts_[v] = b.allocate({max_batch * numel_of(plan_.values[v])}, dtype::f32);
    }
    written_.assign(n, false);
    extra_.resize(plan_.layers.size());
    for (size_t i = 0; i < plan_.layers.size(); ++i) {
      const auto& l = plan_.layers[i];
      const int64_t in = numel_of(l.in_shape), out = numel_of(l.out_shape);
      auto& e = extra_[i];
      switch (l.spec.kind) {
        case layer_kind::max_pool:
          e.index = b.allocate({max_batch * out}, dtype::i32);
          break;
        case layer_kind::dropout:  // its mask: a training buffer
          dropout_ = dropout_ || l.spec.rate > 0.0;
          break;
        case layer_kind::layer_norm:
        case layer_kind::rms_norm:
          e.a = b.allocate({max_batch * in / l.in_shape.back()}, dtype::f32);
          e.b = b.allocate({max_batch * in / l.in_shape.back()}, dtype::f32);
          break;
        case layer_kind::attention: {
          // The probabilities ([heads, t, t] a sample) and the log-sum-exps of fused attention
          // are allocated at their first use: which of the two a pass takes depends on the
          // backend's precision then (attention_forward).
          const int64_t t = l.in_shape[0], d = l.in_shape[1];
          e.a = b.allocate({max_batch * t * 3 * d}, dtype::f32);  // q, k, v
          e.c = b.allocate({max_batch * t * d}, dtype::f32);      // context
          attn_context_ = std::max(attn_context_, max_batch * t * d);
          break;
        }
        case layer_kind::next_token_xent:
          loss_stats_ = b.allocate({2}, dtype::f32);
          break;
        default:
          break;
      }
    }
    if (tokens()) {
      const int64_t t = plan_.spec.input[0];
      ids_host_.resize(static_cast<size_t>(max_batch * t));
      targets_host_.resize(static_cast<size_t>(max_batch * t));
      if (b.where().kind != device_kind::host) {
        ids_ = b.allocate({max_batch * t}, dtype::i32);
        targets_ = b.allocate({max_batch * t}, dtype::i32);
      }
    }
  }

  void evaluate_batch(const float* features, const int32_t* labels, int64_t batch) override {
    auto y = prepare(features, labels, batch);
    forward(batch, false);
    loss(batch, y, 0.0f, false);
  }

  void predict(const float* features, int64_t batch, std::span<float> out) override {
    std::vector<int32_t> no_labels(static_cast<size_t>(batch), 0);
    prepare(features, no_labels.data(), batch);
    forward(batch, false);
    const planned_layer& l = plan_.layers.back();
    const auto n = static_cast<size_t>(batch * numel_of(l.in_shape));
    GFLEX_CHECK(out.size() == n, "predict: output size mismatch");
    backend_.download(act(l.input), out.data(), n * sizeof(float));
  }

  void backward(const float* features, const int32_t* labels, int64_t batch,
                float loss_scale) override {
    allocate_training_buffers();
    auto y = prepare(features, labels, batch);
    ++passes_;
    if (recorded_passes_asked() && backend_.records() && !dropout_)
      recorded_pass(batch, y, loss_scale);
    else
      training_pass(batch, y, loss_scale);
    first_row_ = 0;  // batch_part() names the rows of one pass
  }

  // The gradients, the scratch buffer, dropout's masks and attention's context gradient, made
  // at the first backward pass: a model that only evaluates (the core's evaluator, `gflex job
  // eval`) held as much again as its activations for nothing, past the memory its bounds
  // allow for.
  expected<void> prepare_training() override {
    if (auto ready = model_base::prepare_training(); !ready) return ready;
    try {
      allocate_training_buffers();
      return {};
    } catch (const compute_error& e) {
      return e.err();
    }
  }

  void allocate_training_buffers() {
    if (training_buffers_) return;
    // Made in full or not at all: a model that failed here may be tried again.
    struct undo {
      graph_model& m;
      bool done = false;
      ~undo() {
        if (done) return;
        for (auto& g : m.grads_) g = tensor{};
        m.scratch_ = tensor{};
        m.attn_d1_ = tensor{};
        for (size_t i = 0; i < m.plan_.layers.size(); ++i)
          if (m.plan_.layers[i].spec.kind == layer_kind::dropout) m.extra_[i].a = tensor{};
      }
    } guard{*this};
    const int64_t max_batch = max_batch_;
    int64_t widest = 0;
    for (size_t v = 0; v < plan_.values.size(); ++v) {
      if (root_[v] != static_cast<int>(v)) continue;
      const int64_t size = max_batch * numel_of(plan_.values[v]);
      widest = std::max(widest, size);
      // A residual branch's output takes its gradient in the sum's buffer (alias_values).
      if (v != 0 && groot_[v] == static_cast<int>(v))
        grads_[v] = backend_.allocate({size}, dtype::f32);
    }
    scratch_ = backend_.allocate({std::max<int64_t>(widest, 1)}, dtype::f32);
    for (size_t i = 0; i < plan_.layers.size(); ++i)
      if (plan_.layers[i].spec.kind == layer_kind::dropout)
        extra_[i].a =
            backend_.allocate({max_batch * numel_of(plan_.layers[i].in_shape)}, dtype::f32);
    if (attn_context_ > 0) attn_d1_ = backend_.allocate({attn_context_}, dtype::f32);
    guard.done = true;
    training_buffers_ = true;
    ++layout_epoch_;  // a recorded pass holds buffer addresses
  }

  void batch_part(int64_t first_row, int64_t rows) override {
    first_row_ = first_row;
    if (rows == 0) ++passes_;  // a step this replica sits out still moves the masks on
  }

  void reset_optimizer() override {
    model_base::reset_optimizer();
    passes_ = 0;  // dropout masks restart with the optimiser: a re-computation draws the same
  }

  void set_noise_seed(uint64_t seed) override { noise_seed_ = seed; }

  // Forward, weight gradient and, where the layer's input needs one, input gradient: a layer
  // reading the model's input computes no gradient of the data (counting one overstated
  // fashion-mlp's GEMM rate by a third).
  double train_step_gemm_flops(int64_t batch) const override {
    double flops = 0.0;
    for (const auto& l : plan_.layers) flops += l.flops * (needs_grad(l.input) ? 3.0 : 2.0);
    return flops * static_cast<double>(batch);
  }

  bool gathers_rows() const override { return !tokens(); }

 private:
  struct layer_buffers {
    tensor a, b, c, index;
    bool fused = false;  ///< attention: whether the last forward pass was fused
  };

  bool tokens() const { return plan_.spec.vocab > 0; }

  // A training pass on the staged batch: forward, loss, backward.
  void training_pass(int64_t batch, const int32_t* labels, float loss_scale) {
    forward(batch, true);
    std::fill(written_.begin(), written_.end(), false);
    loss(batch, labels, loss_scale, true);
    for (size_t i = plan_.layers.size(); i-- > 0;) backward_layer(i, batch);
  }

  // What a recorded training pass depends on besides the model's own buffers: the same key,
  // the same launches on the same addresses.
  struct pass_key {
    int64_t batch;
    float loss_scale;
    const int32_t* labels;
    const float* input;
    const int32_t* ids;
    bool fused_attention;
    math_precision precision;
    bool operator==(const pass_key&) const = default;
  };

  // A backend that records (unless GFLEX_CUDA_GRAPHS=0): a training pass is run as one recorded
  // CUDA graph, hundreds of launches in one. The first pass with a key runs as it is (it
  // chooses convolution algorithms and allocates lazily: nothing a recording may do), the
  // second is recorded and replayed, later ones replay. Recordings go stale when the model
  // or the backend replaces a buffer (the epochs); a pass that cannot be recorded (it would
  // allocate, say) runs unrecorded, and after a second failure always does for its key.
  // Models with dropout draw a new mask each pass, which a replay would repeat: they are
  // never recorded.
  void recorded_pass(int64_t batch, const int32_t* labels, float loss_scale) {
    const pass_key key{
        batch, loss_scale, labels, input_, ids_ptr_, fused_attention_asked(), backend_.precision()};
    const std::pair<uint64_t, uint64_t> epochs{layout_epoch_, backend_.recording_epoch()};
    if (epochs != recorded_epochs_ || recorded_.size() >= 8) {
      recorded_.clear();
      recorded_epochs_ = epochs;
    }
    auto it = std::find_if(recorded_.begin(), recorded_.end(),
                           [&](const recording& r) { return r.key == key; });
    if (it == recorded_.end()) {  // first time: as it is
      training_pass(batch, labels, loss_scale);
      const std::pair<uint64_t, uint64_t> now{layout_epoch_, backend_.recording_epoch()};
      if (now != recorded_epochs_) {
        // The pass allocated: what was recorded before may use the buffers it replaced.
        recorded_.clear();
        recorded_epochs_ = now;
      }
      recorded_.push_back({key, nullptr, 0});
      return;
    }
    if (it->work) {
      backend_.replay(*it->work);
      return;
    }
    if (it->failures >= 2) {  // given up: this key runs unrecorded
      training_pass(batch, labels, loss_scale);
      return;
    }
    backend_.begin_recording();
    bool failed = false;
    try {
      training_pass(batch, labels, loss_scale);
    } catch (...) {
      // Nothing recorded ran: the pass runs unrecorded below, and fails there if it must.
      failed = true;
    }
    std::unique_ptr<recorded_work> work = backend_.end_recording();
    if (failed) work.reset();  // a part of the pass at most
    // The recording may have allocated a buffer after all: `it` and the epochs are checked
    // again.
    it = std::find_if(recorded_.begin(), recorded_.end(),
                      [&](const recording& r) { return r.key == key; });
    const bool current = std::pair{layout_epoch_, backend_.recording_epoch()} == recorded_epochs_;
    if (!work || !current || it == recorded_.end()) {
      // Tried once more (the unrecorded pass may grow what the recording would have), then
      // given up for this key.
      if (it != recorded_.end()) ++it->failures;
      training_pass(batch, labels, loss_scale);
      return;
    }
    backend_.replay(*work);  // recording ran nothing: this pass runs now
    it->work = std::move(work);
  }

  // On unless GFLEX_CUDA_GRAPHS=0: an H200 measured the recorded step faster (fashion-cnn
  // 1.208 against 1.244 ms, a small language model 3.371 against 3.766 ms; docs/BENCHMARKS.md).
  static bool recorded_passes_asked() {
    const char* v = std::getenv("GFLEX_CUDA_GRAPHS");
    return v == nullptr || std::string_view(v) != "0";
  }

  // Decides which values share a buffer: flatten and reshape are views of their input; a ReLU
  // that is the only reader of its input runs in place (its output is its input's buffer, its
  // backward masks the gradient in place), and when that input comes straight from a linear
  // or conv2d layer with a bias, the bias and the ReLU are one pass (bias_relu_forward). This
  // is the hand-written networks' fused layer, so the shipped graphs run as fast as they did.
  // Any other activation straight after a biased linear or conv2d layer is applied in the
  // bias's pass too (bias_activation_forward: a transformer's GELU).
  //
  // Gradients share buffers where values do, and one more way: an input of an add that
  // nothing else reads has the sum's gradient as its own, so it takes the sum's buffer
  // instead of a copy (a residual branch's output: the attention's and the MLP's).
  void alias_values() {
    const size_t n = plan_.values.size();
    auto is_view = [](const planned_layer& l) {
      return l.spec.kind == layer_kind::flatten || l.spec.kind == layer_kind::reshape;
    };
    std::vector<int> view_root(n);
    for (size_t v = 0; v < n; ++v) view_root[v] = static_cast<int>(v);
    for (const auto& l : plan_.layers)
      if (is_view(l)) view_root[static_cast<size_t>(l.output)] = view_root[l.input];
    std::vector<int> readers(n, 0);
    for (const auto& l : plan_.layers) {
      if (is_view(l) || l.spec.kind == layer_kind::embedding) continue;
      ++readers[static_cast<size_t>(view_root[static_cast<size_t>(l.input)])];
      if (l.other >= 0) ++readers[static_cast<size_t>(view_root[static_cast<size_t>(l.other)])];
    }
    root_.resize(n);
    for (size_t v = 0; v < n; ++v) root_[v] = static_cast<int>(v);
    relu_in_place_.assign(plan_.layers.size(), false);
    bias_relu_.assign(plan_.layers.size(), false);
    relu_fused_.assign(plan_.layers.size(), false);
    for (size_t i = 0; i < plan_.layers.size(); ++i) {
      const auto& l = plan_.layers[i];
      const auto in = static_cast<size_t>(l.input);
      if (is_view(l)) {
        root_[static_cast<size_t>(l.output)] = root_[in];
        continue;
      }
      if (l.spec.kind != layer_kind::relu || root_[in] == 0 || readers[view_root[in]] != 1)
        continue;
      relu_in_place_[i] = true;
      root_[static_cast<size_t>(l.output)] = root_[in];
      // Value v > 0 is written by layer v - 1.
      const auto& producer = plan_.layers[static_cast<size_t>(view_root[in] - 1)];
      if ((producer.spec.kind == layer_kind::linear || producer.spec.kind == layer_kind::conv2d) &&
          producer.spec.bias)
        bias_relu_[static_cast<size_t>(view_root[in] - 1)] = relu_fused_[i] = true;
    }
    fused_activation_.assign(plan_.layers.size(), -1);
    activation_fused_.assign(plan_.layers.size(), false);
    for (size_t i = 0; i < plan_.layers.size(); ++i) {
      const auto& l = plan_.layers[i];
      const auto in = static_cast<size_t>(l.input);
      const bool activation = l.spec.kind == layer_kind::gelu || l.spec.kind == layer_kind::tanh ||
                              (l.spec.kind == layer_kind::relu && !relu_in_place_[i]);
      // The producer's own output, not a view of it: value v > 0 is written by layer v - 1.
      if (!activation || in == 0 || view_root[in] != static_cast<int>(in)) continue;
      const size_t p = in - 1;
      const auto& producer = plan_.layers[p];
      if ((producer.spec.kind != layer_kind::linear && producer.spec.kind != layer_kind::conv2d) ||
          !producer.spec.bias || bias_relu_[p] || fused_activation_[p] >= 0)
        continue;
      fused_activation_[p] = static_cast<int>(i);
      activation_fused_[i] = true;
    }
    std::vector<int> grad_parent(n);
    for (size_t v = 0; v < n; ++v) grad_parent[v] = static_cast<int>(v);
    for (const auto& l : plan_.layers) {
      if (l.spec.kind != layer_kind::add) continue;
      for (int v : {l.input, l.other}) {
        const auto u = static_cast<size_t>(v);
        // Not the model's input, not a view or an in-place ReLU's output (their buffers are
        // another value's), and read by this add alone (x + x is read twice).
        if (v == 0 || root_[u] != v || readers[u] != 1) continue;
        grad_parent[u] = root_[static_cast<size_t>(l.output)];
        // One input a sum: the other's copy is made before either branch's backward pass runs.
        break;
      }
    }
    groot_.resize(n);
    for (size_t v = 0; v < n; ++v) {
      int r = root_[v];
      while (grad_parent[static_cast<size_t>(r)] != r) r = grad_parent[static_cast<size_t>(r)];
      groot_[v] = r;
    }
  }

  // Stages a batch: the features (or, for a token model, ids and next-token targets) where
  // the backend computes; returns the labels the loss reads.
  const int32_t* prepare(const float* features, const int32_t* labels, int64_t batch) {
    if (!tokens()) {
      auto [x, y] = stage(features, labels, batch);
      input_ = x;
      return y;
    }
    const int64_t t = plan_.spec.input[0], vocab = plan_.spec.vocab;
    // Before a token is written into buffers of max_batch samples (count_samples checks it
    // too, once the batch has proved to be tokens).
    GFLEX_CHECK(batch > 0 && batch <= max_batch_, "batch larger than the model's max_batch");
    for (int64_t r = 0; r < batch; ++r)
      for (int64_t j = 0; j <= t; ++j) {
        const float v = features[r * (t + 1) + j];
        if (!(v >= 0.0f && v < static_cast<float>(vocab)) || v != std::floor(v))
          throw compute_error(error(errc::invalid_argument,
                                    "token " + std::to_string(v) + " of sample " +
                                        std::to_string(r) + " is not an id below the vocabulary (" +
                                        std::to_string(vocab) + ")"));
        const auto id = static_cast<int32_t>(v);
        if (j < t) ids_host_[static_cast<size_t>(r * t + j)] = id;
        if (j > 0) targets_host_[static_cast<size_t>(r * t + j - 1)] = id;
      }
    // Only the ids and targets cross to the device, not the features they came from.
    count_samples(batch);
    if (backend_.where().kind == device_kind::host) {
      ids_ptr_ = ids_host_.data();
      return targets_host_.data();
    }
    backend_.upload(ids_host_.data(), ids_.raw(), sizeof(int32_t) * batch * t);
    backend_.upload(targets_host_.data(), targets_.raw(), sizeof(int32_t) * batch * t);
    ids_ptr_ = ids_.data<int32_t>();
    return targets_.data<int32_t>();
  }

  const float* act(int v) const {
    const int r = root_[static_cast<size_t>(v)];
    if (r == 0) return input_;
    return acts_[static_cast<size_t>(r)].data<float>();
  }
  float* act_mut(int v) { return const_cast<float*>(act(v)); }

  // The gradient buffer to write value v's gradient into: the value's own buffer if nothing
  // has written it in this pass, else scratch, which finish_grad adds in.
  float* grad_out(int v) {
    const auto r = static_cast<size_t>(groot_[static_cast<size_t>(v)]);
    return written_[r] ? scratch_.data<float>() : grads_[r].data<float>();
  }
  void finish_grad(int v, int64_t n) {
    const auto r = static_cast<size_t>(groot_[static_cast<size_t>(v)]);
    if (written_[r]) backend_.axpby(n, 1.0f, scratch_.data<float>(), 1.0f, grads_[r].data<float>());
    written_[r] = true;
  }
  // For an operation that can add its result to what a buffer holds: value v's gradient
  // buffer, and whether something wrote it in this pass (then it adds, one rounding as
  // finish_grad's sum). Marks it written.
  std::pair<float*, bool> grad_accumulator(int v) {
    const auto r = static_cast<size_t>(groot_[static_cast<size_t>(v)]);
    const bool add = written_[r];
    written_[r] = true;
    return {grads_[r].data<float>(), add};
  }
  // Adds dy to value v's gradient, or makes it v's gradient: one pass either way.
  void send_grad(int v, const float* dy, int64_t n) {
    auto [g, add] = grad_accumulator(v);
    backend_.axpby(n, 1.0f, dy, add ? 1.0f : 0.0f, g);
  }
  const float* grad(int v) const {
    return grads_[static_cast<size_t>(groot_[static_cast<size_t>(v)])].data<float>();
  }
  // The model's input (and views of it) takes no gradient.
  bool needs_grad(int v) const { return root_[static_cast<size_t>(v)] != 0; }
  bool has_grad(int v) const {
    return written_[static_cast<size_t>(groot_[static_cast<size_t>(v)])];
  }

  float* param(const planned_layer& l, size_t k) { return params() + l.params[k].offset; }
  float* dparam(const planned_layer& l, size_t k) { return gradients() + l.params[k].offset; }

  void forward(int64_t batch, bool training) {
    for (size_t i = 0; i < plan_.layers.size(); ++i) forward_layer(i, batch, training);
  }

  void forward_layer(size_t i, int64_t batch, bool training) {
    const planned_layer& l = plan_.layers[i];
    auto& e = extra_[i];
    const int64_t in_n = batch * numel_of(l.in_shape);
    const int64_t cols = l.in_shape.back(), rows = in_n / cols;
    const float* x = l.spec.kind == layer_kind::embedding ? nullptr : act(l.input);
    float* y = act_mut(l.output);
    switch (l.spec.kind) {
      case layer_kind::linear: {
        const int64_t units = l.spec.units;
        backend_.gemm(false, false, rows, units, cols, 1.0f, x, cols, param(l, 0), units, 0.0f, y,
                      units);
        if (l.spec.bias) bias_forward(i, y, param(l, 1), rows, units);
        break;
      }
      case layer_kind::conv2d: {
        const auto g = geometry(l, batch);
        backend_.conv2d_forward(g, x, param(l, 0), y);
        if (l.spec.bias)
          bias_forward(i, y, param(l, 1), batch * g.out_height() * g.out_width(), l.spec.filters);
        break;
      }
      case layer_kind::max_pool:
      case layer_kind::avg_pool:
        backend_.pool2d_forward(
            l.spec.kind == layer_kind::max_pool, x, batch, l.in_shape[0], l.in_shape[1],
            l.in_shape[2], l.spec.size, l.spec.stride, y,
            l.spec.kind == layer_kind::max_pool ? e.index.data<int32_t>() : nullptr);
        break;
      case layer_kind::flatten:
      case layer_kind::reshape:
        break;  // a view
      case layer_kind::relu:
      case layer_kind::gelu:
      case layer_kind::tanh:
        // A ReLU runs in place (y == x) where it can; its producer may have applied it already.
        if (!relu_fused_[i] && !activation_fused_[i])
          backend_.activation_forward(activation_of(l.spec.kind), x, y, in_n);
        break;
      case layer_kind::dropout:
        if (!training || l.spec.rate == 0.0) {
          backend_.axpby(in_n, 1.0f, x, 0.0f, y);
        } else {
          // The mask depends on the layer and on how many passes this model has made since
          // its optimiser was reset, so a re-computation of an assignment draws the same.
          // Value k of the batch draws by its index k in the whole batch: the kernels hash
          // seed + k * golden, so rows that begin at first_row_ start from a seed moved on by
          // the values before them.
          // The assignment's noise seed too: without it, step k of every assignment, in
          // every round and on every node, drew the same masks.
          const uint64_t seed =
              ((static_cast<uint64_t>(i) << 40) ^ passes_ ^ 0x6a09e667f3bcc909ull ^
               (noise_seed_ * 0xD1B54A32D192ED03ull)) +
              static_cast<uint64_t>(first_row_ * numel_of(l.in_shape)) * 0x9E3779B97F4A7C15ull;
          backend_.dropout_mask(in_n, static_cast<float>(l.spec.rate), seed, e.a.data<float>());
          backend_.multiply(in_n, x, e.a.data<float>(), y);
        }
        break;
      case layer_kind::layer_norm:
      case layer_kind::rms_norm: {
        const bool rms = l.spec.kind == layer_kind::rms_norm;
        backend_.norm_forward(rms, x, param(l, 0), rms ? nullptr : param(l, 1), rows, cols,
                              static_cast<float>(l.spec.eps), y, e.a.data<float>(),
                              e.b.data<float>());
        break;
      }
      case layer_kind::embedding:
        backend_.embedding_forward(ids_ptr_, param(l, 0), batch * plan_.spec.input[0], l.spec.dim,
                                   y);
        break;
      case layer_kind::position_embedding:
        backend_.axpby(in_n, 1.0f, x, 0.0f, y);
        backend_.bias_relu_forward(y, param(l, 0), batch, numel_of(l.in_shape), false);
        break;
      case layer_kind::attention:
        attention_forward(l, e, batch, x, y);
        break;
      case layer_kind::add:
        backend_.add(in_n, x, act(l.other), y);
        break;
      default:
        break;  // losses run in loss()
    }
  }

  static activation activation_of(layer_kind k) {
    return k == layer_kind::relu   ? activation::relu
           : k == layer_kind::gelu ? activation::gelu
                                   : activation::tanh;
  }

  // Layer i's bias over y ([rows, cols]), with the ReLU or other activation that follows it
  // where alias_values() fused them.
  void bias_forward(size_t i, float* y, const float* bias, int64_t rows, int64_t cols) {
    const int next = fused_activation_[i];
    if (next < 0) {
      backend_.bias_relu_forward(y, bias, rows, cols, bias_relu_[i]);
      return;
    }
    const planned_layer& a = plan_.layers[static_cast<size_t>(next)];
    backend_.bias_activation_forward(activation_of(a.spec.kind), y, bias, rows, cols,
                                     act_mut(a.output));
  }

  conv2d_geometry geometry(const planned_layer& l, int64_t batch) const {
    return {batch,         l.in_shape[0], l.in_shape[1],  l.in_shape[2],  l.spec.filters,
            l.spec.kernel, l.spec.kernel, l.spec.padding, l.spec.padding, l.spec.stride};
  }

  // Causal multi-head self-attention over [batch, t, d]: qkv = x Wqkv + b; per head
  // P = softmax(Q K^T / sqrt(dh)) with a causal mask; context = P V; y = context Wo + bo.
  // Heads are column blocks of qkv and context, so each head's products are strided GEMMs
  // over the batch, with no transposes.
  //
  // Where the backend has fused attention for the heads' width at its precision (the CUDA
  // backend in bf16) and GFLEX_FUSED_ATTENTION=1 asks for it, the middle is one fused pass
  // that keeps each row's log-sum-exp (e.b, [batch, heads, t]) instead of the probabilities.
  void attention_forward(const planned_layer& l, layer_buffers& e, int64_t batch, const float* x,
                         float* y) {
    const int64_t t = l.in_shape[0], d = l.in_shape[1], h = l.spec.heads, dh = d / h;
    const size_t wo = l.spec.bias ? 2 : 1;
    float* qkv = e.a.data<float>();
    float* ctx = e.c.data<float>();
    const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
    backend_.gemm(false, false, batch * t, 3 * d, d, 1.0f, x, d, param(l, 0), 3 * d, 0.0f, qkv,
                  3 * d);
    if (l.spec.bias) backend_.bias_relu_forward(qkv, param(l, 1), batch * t, 3 * d, false);
    e.fused = fused_attention_asked() && backend_.fused_attention(dh);
    if (e.fused) {
      if (e.b.numel() != max_batch_ * h * t) {
        e.b = backend_.allocate({max_batch_ * h * t}, dtype::f32);
        ++layout_epoch_;
      }
      backend_.fused_attention_forward(qkv, batch, t, d, h, scale, ctx, e.b.data<float>());
    } else {
      if (e.b.numel() != max_batch_ * h * t * t) {
        e.b = backend_.allocate({max_batch_ * h * t * t}, dtype::f32);
        ++layout_epoch_;
      }
      composed_attention_forward(e.b.data<float>(), qkv, batch, t, d, h, scale, ctx);
    }
    backend_.gemm(false, false, batch * t, d, d, 1.0f, ctx, d, param(l, wo), d, 0.0f, y, d);
    if (l.spec.bias) backend_.bias_relu_forward(y, param(l, wo + 1), batch * t, d, false);
  }

  // The middle of attention from GEMMs and the causal softmax, keeping the probabilities.
  void composed_attention_forward(float* probs, const float* qkv, int64_t batch, int64_t t,
                                  int64_t d, int64_t h, float scale, float* ctx) {
    const int64_t dh = d / h;
    for (int64_t head = 0; head < h; ++head)
      backend_.gemm_strided_batched(false, true, t, t, dh, 1.0f, qkv + head * dh, 3 * d, t * 3 * d,
                                    qkv + d + head * dh, 3 * d, t * 3 * d, 0.0f,
                                    probs + head * t * t, t, h * t * t, batch);
    backend_.causal_softmax_forward(probs, batch * h, t, scale);
    for (int64_t head = 0; head < h; ++head)
      backend_.gemm_strided_batched(false, false, t, dh, t, 1.0f, probs + head * t * t, t,
                                    h * t * t, qkv + 2 * d + head * dh, 3 * d, t * 3 * d, 0.0f,
                                    ctx + head * dh, d, t * d, batch);
  }

  void attention_backward(const planned_layer& l, layer_buffers& e, int64_t batch,
                          const float* dy) {
    const int64_t t = l.in_shape[0], d = l.in_shape[1], h = l.spec.heads, dh = d / h;
    const size_t wo = l.spec.bias ? 2 : 1;
    const float* x = act(l.input);
    const float* qkv = e.a.data<float>();
    const float* ctx = e.c.data<float>();
    float* dctx = attn_d1_.data<float>();
    const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
    backend_.gemm(true, false, d, d, batch * t, 1.0f, ctx, d, dy, d, 0.0f, dparam(l, wo), d);
    if (l.spec.bias) backend_.column_sum(dy, batch * t, d, dparam(l, wo + 1));
    backend_.gemm(false, true, batch * t, d, d, 1.0f, dy, d, param(l, wo), d, 0.0f, dctx, d);
    // dqkv has a buffer of its own (batch * t * 3d values): dctx is read while it is written.
    float* dqkv = scratch_for_qkv(batch * t * 3 * d);
    if (e.fused)
      backend_.fused_attention_backward(qkv, ctx, e.b.data<float>(), dctx, batch, t, d, h, scale,
                                        dqkv);
    else
      composed_attention_backward(e.b.data<float>(), qkv, dctx, batch, t, d, h, scale, dqkv);
    backend_.gemm(true, false, d, 3 * d, batch * t, 1.0f, x, d, dqkv, 3 * d, 0.0f, dparam(l, 0),
                  3 * d);
    if (l.spec.bias) backend_.column_sum(dqkv, batch * t, 3 * d, dparam(l, 1));
    if (!needs_grad(l.input)) return;
    float* dx = grad_out(l.input);
    backend_.gemm(false, true, batch * t, d, 3 * d, 1.0f, dqkv, 3 * d, param(l, 0), 3 * d, 0.0f, dx,
                  d);
    finish_grad(l.input, batch * t * d);
  }

  // dqkv from dctx through the composed middle, with the forward's probabilities.
  void composed_attention_backward(const float* probs, const float* qkv, const float* dctx,
                                   int64_t batch, int64_t t, int64_t d, int64_t h, float scale,
                                   float* dqkv) {
    const int64_t dh = d / h;
    if (attn_d2_.numel() < max_batch_ * h * t * t) {
      attn_d2_ = backend_.allocate({max_batch_ * h * t * t}, dtype::f32);
      ++layout_epoch_;
    }
    float* dprobs = attn_d2_.data<float>();
    for (int64_t head = 0; head < h; ++head)
      backend_.gemm_strided_batched(false, true, t, t, dh, 1.0f, dctx + head * dh, d, t * d,
                                    qkv + 2 * d + head * dh, 3 * d, t * 3 * d, 0.0f,
                                    dprobs + head * t * t, t, h * t * t, batch);
    // dV, written into the third column block of dqkv.
    for (int64_t head = 0; head < h; ++head)
      backend_.gemm_strided_batched(true, false, t, dh, t, 1.0f, probs + head * t * t, t, h * t * t,
                                    dctx + head * dh, d, t * d, 0.0f, dqkv + 2 * d + head * dh,
                                    3 * d, t * 3 * d, batch);
    backend_.softmax_backward(probs, dprobs, batch * h * t, t, scale);
    for (int64_t head = 0; head < h; ++head) {
      backend_.gemm_strided_batched(false, false, t, dh, t, 1.0f, dprobs + head * t * t, t,
                                    h * t * t, qkv + d + head * dh, 3 * d, t * 3 * d, 0.0f,
                                    dqkv + head * dh, 3 * d, t * 3 * d, batch);
      backend_.gemm_strided_batched(true, false, t, dh, t, 1.0f, dprobs + head * t * t, t,
                                    h * t * t, qkv + head * dh, 3 * d, t * 3 * d, 0.0f,
                                    dqkv + d + head * dh, 3 * d, t * 3 * d, batch);
    }
  }

  // Fused attention is asked for with GFLEX_FUSED_ATTENTION=1 until its kernels have been
  // measured on a card (docs/GPU.md). Read at each pass (a test turns it on and off).
  static bool fused_attention_asked() {
    const char* v = std::getenv("GFLEX_FUSED_ATTENTION");
    return v != nullptr && std::string_view(v) == "1";
  }

  float* scratch_for_qkv(int64_t n) {
    if (qkv_grad_.numel() < n) {
      qkv_grad_ = backend_.allocate({n}, dtype::f32);
      ++layout_epoch_;
    }
    return qkv_grad_.data<float>();
  }

  void loss(int64_t batch, const int32_t* labels, float loss_scale, bool training) {
    const planned_layer& l = plan_.layers.back();
    const float* y = act(l.input);
    const int64_t cols = l.in_shape.back();
    float* dy = training ? grad_out(l.input) : nullptr;
    switch (l.spec.kind) {
      case layer_kind::softmax_xent:
        backend_.softmax_xent(y, labels, batch, cols, loss_scale, dy, stats());
        break;
      case layer_kind::mse:
        backend_.mse_onehot(y, labels, batch, cols, loss_scale, dy, stats());
        break;
      case layer_kind::next_token_xent: {
        // Per-token mean loss and accuracy: each sample's T positions count as one sample.
        const int64_t t = l.in_shape[0];
        backend_.fill(loss_stats_.data<float>(), 2, 0.0f);
        backend_.softmax_xent(y, labels, batch * t, cols, loss_scale / static_cast<float>(t), dy,
                              loss_stats_.data<float>());
        backend_.axpby(2, 1.0f / static_cast<float>(t), loss_stats_.data<float>(), 1.0f, stats());
        break;
      }
      default:
        break;
    }
    if (training) finish_grad(l.input, batch * numel_of(l.in_shape));
  }

  void backward_layer(size_t i, int64_t batch) {
    const planned_layer& l = plan_.layers[i];
    auto& e = extra_[i];
    const layer_kind kind = l.spec.kind;
    if (kind == layer_kind::softmax_xent || kind == layer_kind::mse ||
        kind == layer_kind::next_token_xent || kind == layer_kind::flatten ||
        kind == layer_kind::reshape)
      return;                         // losses ran in loss(); views share their input's gradient
    if (!has_grad(l.output)) return;  // nothing downstream depends on it
    const float* dy = grad(l.output);
    const int64_t in_n = batch * numel_of(l.in_shape);
    const int64_t cols = l.in_shape.back(), rows = in_n / cols;
    const bool input_grad = needs_grad(l.input);
    const float* x = kind == layer_kind::embedding ? nullptr : act(l.input);
    switch (kind) {
      case layer_kind::linear: {
        const int64_t units = l.spec.units;
        backend_.gemm(true, false, cols, units, rows, 1.0f, x, cols, dy, units, 0.0f, dparam(l, 0),
                      units);
        if (l.spec.bias) backend_.column_sum(dy, rows, units, dparam(l, 1));
        if (input_grad) {
          backend_.gemm(false, true, rows, cols, units, 1.0f, dy, units, param(l, 0), units, 0.0f,
                        grad_out(l.input), cols);
          finish_grad(l.input, in_n);
        }
        break;
      }
      case layer_kind::conv2d: {
        const auto g = geometry(l, batch);
        backend_.conv2d_backward_filter(g, x, dy, dparam(l, 0));
        if (l.spec.bias)
          backend_.column_sum(dy, batch * g.out_height() * g.out_width(), l.spec.filters,
                              dparam(l, 1));
        if (input_grad) {
          backend_.conv2d_backward_data(g, dy, param(l, 0), grad_out(l.input));
          finish_grad(l.input, in_n);
        }
        break;
      }
      case layer_kind::max_pool:
      case layer_kind::avg_pool:
        if (!input_grad) break;
        backend_.pool2d_backward(kind == layer_kind::max_pool, dy,
                                 kind == layer_kind::max_pool ? e.index.data<int32_t>() : nullptr,
                                 batch, l.in_shape[0], l.in_shape[1], l.in_shape[2], l.spec.size,
                                 l.spec.stride, grad_out(l.input));
        finish_grad(l.input, in_n);
        break;
      case layer_kind::relu:
      case layer_kind::gelu:
      case layer_kind::tanh:
        if (!input_grad) break;
        if (relu_in_place_[i]) {  // the gradient is the input's too: mask it where y <= 0
          backend_.relu_backward(const_cast<float*>(dy), act(l.output), in_n);
          break;
        }
        backend_.activation_backward(activation_of(kind), x, dy, grad_out(l.input), in_n);
        finish_grad(l.input, in_n);
        break;
      case layer_kind::dropout:
        if (!input_grad) break;
        if (l.spec.rate == 0.0) {
          send_grad(l.input, dy, in_n);
          break;
        }
        backend_.multiply(in_n, dy, e.a.data<float>(), grad_out(l.input));
        finish_grad(l.input, in_n);
        break;
      case layer_kind::layer_norm:
      case layer_kind::rms_norm: {
        const bool rms = kind == layer_kind::rms_norm;
        // Into the input's gradient, added to what is there (a residual stream's), or into
        // scratch where the input takes no gradient: norm_backward writes dx whole.
        auto [dx, add] = input_grad ? grad_accumulator(l.input)
                                    : std::pair<float*, bool>{scratch_.data<float>(), false};
        backend_.norm_backward(rms, x, param(l, 0), dy, e.a.data<float>(), e.b.data<float>(), rows,
                               cols, dx, dparam(l, 0), rms ? nullptr : dparam(l, 1), add);
        break;
      }
      case layer_kind::embedding:
        backend_.embedding_backward(ids_ptr_, dy, batch * plan_.spec.input[0], l.spec.dim,
                                    plan_.spec.vocab, dparam(l, 0));
        break;
      case layer_kind::position_embedding:
        backend_.column_sum(dy, batch, numel_of(l.in_shape), dparam(l, 0));
        if (input_grad) send_grad(l.input, dy, in_n);
        break;
      case layer_kind::attention:
        attention_backward(l, e, batch, dy);
        break;
      case layer_kind::add:
        for (int v : {l.input, l.other}) {
          // An input with the sum's gradient buffer holds its gradient already.
          if (!needs_grad(v) ||
              groot_[static_cast<size_t>(v)] == groot_[static_cast<size_t>(l.output)])
            continue;
          send_grad(v, dy, in_n);
        }
        break;
      default:
        break;
    }
  }

  const model_plan plan_;  // a copy: a model may outlive the workload that made it
  std::vector<int> root_;
  std::vector<tensor> acts_, grads_;
  bool training_buffers_ = false;  ///< See allocate_training_buffers().
  std::vector<bool> written_;
  std::vector<layer_buffers> extra_;
  std::vector<bool> relu_in_place_;     // per layer: a ReLU that overwrites its input
  std::vector<bool> bias_relu_;         // per layer: a linear/conv2d that applies the next ReLU
  std::vector<bool> relu_fused_;        // per layer: a ReLU its producer applied
  std::vector<int> fused_activation_;   // per layer: the activation layer its bias pass applies
  std::vector<bool> activation_fused_;  // per layer: an activation its producer applied
  std::vector<int> groot_;              // per value: the root of its gradient buffer
  tensor scratch_, attn_d1_, attn_d2_, qkv_grad_, loss_stats_, ids_, targets_;
  int64_t attn_context_ = 0;
  std::vector<int32_t> ids_host_, targets_host_;
  const int32_t* ids_ptr_ = nullptr;
  const float* input_ = nullptr;
  uint64_t passes_ = 0;
  uint64_t noise_seed_ = 0;  // set_noise_seed: the assignment's
  int64_t first_row_ = 0;    // where the next pass's rows lie in a batch shared by replicas
  bool dropout_ = false;     // a dropout layer that drops: its masks change every pass
  struct recording {
    pass_key key;
    std::unique_ptr<recorded_work> work;
    int failures;  // recordings that failed: at 2 the key runs unrecorded
  };
  std::vector<recording> recorded_;  // recorded_pass()'s, for the current epochs
  std::pair<uint64_t, uint64_t> recorded_epochs_{0, 0};
  uint64_t layout_epoch_ = 0;  // bumped when a lazily allocated buffer is (re)allocated
};

/// Values an evaluation may hold for all its samples' activations at once: 256 MiB of fp32.
/// The core evaluates every job's model on its own CPU, so a model with large activations
/// (long attention contexts most of all) is evaluated in smaller batches, never one that
/// the core cannot hold.
constexpr double k_eval_budget_values = double(int64_t{1} << 26);

class graph_workload final : public workload {
 public:
  graph_workload(std::string label, model_plan plan, std::string model_text,
                 std::function<expected<dataset_splits>()> data)
      : label_(std::move(label)),
        plan_(std::move(plan)),
        text_(std::move(model_text)),
        data_(std::move(data)),
        eval_batch_(eval_batch_for(plan_)) {}

  std::string name() const override { return label_; }
  std::string describe() const override {
    return "model" + (plan_.spec.name.empty() ? "" : " '" + plan_.spec.name + "'") + ": " +
           std::to_string(plan_.layers.size()) + " layers, " + std::to_string(plan_.parameters) +
           " parameters, " + std::to_string(static_cast<int64_t>(plan_.forward_flops)) +
           " FLOPs per sample forward";
  }
  int64_t feature_dim() const override { return plan_.sample_values; }
  bool token_input() const override { return plan_.spec.vocab > 0; }
  double forward_flops() const override { return plan_.forward_flops; }

  int64_t eval_batch() const override { return eval_batch_; }
  uint64_t evaluation_bytes() const override {
    return static_cast<uint64_t>(eval_batch_) * static_cast<uint64_t>(plan_.working_values) *
           sizeof(float);
  }
  int64_t classes() const override { return plan_.classes; }
  std::string model_text() const override { return text_; }

  std::vector<parameter_block> layout() const override {
    std::vector<parameter_block> out;
    for (const auto& l : plan_.layers)
      for (const auto& p : l.params) out.push_back(p);
    return out;
  }

  void init_parameters(uint64_t seed, std::span<float> out) const override {
    GFLEX_CHECK(static_cast<int64_t>(out.size()) == plan_.parameters, "parameter count mismatch");
    rng root(seed);
    uint64_t stream_index = 0;
    for (size_t i = 0; i < plan_.layers.size(); ++i) {
      const auto& l = plan_.layers[i];
      const bool next_relu =
          i + 1 < plan_.layers.size() && (plan_.layers[i + 1].spec.kind == layer_kind::relu ||
                                          plan_.layers[i + 1].spec.kind == layer_kind::gelu);
      for (const auto& p : l.params) {
        const uint64_t block_index = stream_index++;
        float* dst = out.data() + p.offset;
        const int64_t n = *checked_numel(p.shape);
        const bool is_bias = p.name.ends_with("bias");
        double stddev = 0.0;
        float constant = 0.0f;
        switch (l.spec.kind) {
          case layer_kind::linear:
          case layer_kind::conv2d:
          case layer_kind::attention: {
            if (is_bias) break;  // biases start at zero
            // He initialisation before a ReLU/GELU, LeCun otherwise, unless the layer says;
            // fan-in is the product of every dimension but the output one.
            const int64_t fan_in = l.spec.kind == layer_kind::conv2d ? n / p.shape[0] : p.shape[0];
            const double gain = l.spec.init == weight_init::he      ? 2.0
                                : l.spec.init == weight_init::lecun ? 1.0
                                : next_relu                         ? 2.0
                                                                    : 1.0;
            stddev = std::sqrt(gain / static_cast<double>(fan_in));
            break;
          }
          case layer_kind::layer_norm:
          case layer_kind::rms_norm:
            constant = p.name.ends_with("gamma") ? 1.0f : 0.0f;
            break;
          case layer_kind::embedding:
          case layer_kind::position_embedding:
            stddev = 0.02;
            break;
          default:
            break;
        }
        if (stddev == 0.0) {
          std::fill(dst, dst + n, constant);
          continue;
        }
        // Only drawn blocks fork a stream (forking advances the root), salted with the block's
        // index: the hand-written networks the shipped graphs replaced drew the same way.
        rng stream = root.fork(block_index);
        for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(stream.normal() * stddev);
      }
    }
  }

  expected<std::unique_ptr<model>> instantiate(backend& b, int64_t max_batch) const override {
    if (auto fits = check_batch(max_batch); !fits) return fits.error();
    return detail::make_model<graph_model>(max_batch, b, plan_);
  }

  expected<void> check_batch(int64_t batch) const override {
    constexpr int64_t most = std::numeric_limits<int32_t>::max();
    // The model's input is value 0, a batch of it one tensor too (cuDNN's descriptor of a
    // convolution's input, for one): unchecked, a small convolution over a large input let a
    // job through whose every GPU assignment cuDNN refused.
    if (!plan_.values.empty()) {
      int64_t per_sample = 1;
      for (int64_t d : plan_.values.front()) per_sample *= d;  // bounded by the plan's limits
      if (per_sample > 0 && batch > most / per_sample)
        return error(errc::invalid_argument,
                     "inner.batch_size: " + std::to_string(batch) +
                         " samples of the model's "
                         "input (" +
                         std::to_string(per_sample) +
                         " values each) pass 2^31 - 1 values, the most the kernels take; at "
                         "most " +
                         std::to_string(most / per_sample) + " fit");
    }
    // Layer i writes value i + 1 unless it is a view.
    for (size_t i = 0; i < plan_.layers.size(); ++i) {
      const auto& l = plan_.layers[i];
      int64_t per_sample = 1;
      for (int64_t d : l.out_shape) per_sample *= d;  // bounded by the plan's limits
      if (per_sample > 0 && batch > most / per_sample)
        return error(errc::invalid_argument,
                     "inner.batch_size: " + std::to_string(batch) + " samples of layer " +
                         std::to_string(i + 1) + " (" + to_string(l.spec.kind) + ", " +
                         std::to_string(per_sample) +
                         " values each) pass 2^31 - 1 values, the most the kernels' matrix "
                         "products take; at most " +
                         std::to_string(most / per_sample) + " fit");
    }
    return {};
  }

  expected<dataset_splits> load_data() const override {
    if (!data_) return error(errc::invalid_argument, label_ + ": no data set is attached");
    return data_();
  }

 private:
  std::string label_;
  model_plan plan_;
  std::string text_;
  std::function<expected<dataset_splits>()> data_;
  int64_t eval_batch_;

  // As many samples as k_eval_budget_values holds (at least one), at most 16 for a token
  // model and 1,000 for any other: past those, a larger batch hardly evaluates faster.
  static int64_t eval_batch_for(const model_plan& plan) {
    const double fits =
        k_eval_budget_values / std::max(1.0, static_cast<double>(plan.working_values));
    const int64_t most = plan.spec.vocab > 0 ? 16 : 1000;
    return std::clamp<int64_t>(static_cast<int64_t>(std::min(fits, 1e6)), 1, most);
  }
};

}  // namespace

std::unique_ptr<workload> make_graph_workload(std::string label, model_plan plan,
                                              std::string model_text,
                                              std::function<expected<dataset_splits>()> data) {
  return std::make_unique<graph_workload>(std::move(label), std::move(plan), std::move(model_text),
                                          std::move(data));
}

}  // namespace gflex::kernels
