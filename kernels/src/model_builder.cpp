/// @file
/// model_builder.hpp: each call appends one layer_spec, as parse_model_spec would read it.

#include "gflex/kernels/model_builder.hpp"

#include "gflex/runtime/check.hpp"

namespace gflex::kernels {

namespace {

layer_spec layer(layer_kind kind) {
  layer_spec l;
  l.kind = kind;
  return l;
}

}  // namespace

model_builder::model_builder(std::string name, std::vector<int64_t> input) {
  spec_.name = std::move(name);
  spec_.input = std::move(input);
}

model_builder model_builder::tokens(std::string name, int64_t context, int64_t vocab) {
  model_builder b(std::move(name), {context});
  b.spec_.vocab = vocab;
  return b;
}

model_builder& model_builder::push(layer_spec l) {
  spec_.layers.push_back(std::move(l));
  return *this;
}

layer_spec& model_builder::last() {
  GFLEX_CHECK(!spec_.layers.empty(), "model_builder: named/from/init need a layer before them");
  return spec_.layers.back();
}

model_builder& model_builder::linear(int64_t units, bool bias) {
  auto l = layer(layer_kind::linear);
  l.units = units;
  l.bias = bias;
  return push(std::move(l));
}

model_builder& model_builder::conv2d(int64_t filters, int64_t kernel, int64_t stride,
                                     int64_t padding, bool bias) {
  auto l = layer(layer_kind::conv2d);
  l.filters = filters;
  l.kernel = kernel;
  l.stride = stride;
  l.padding = padding;
  l.bias = bias;
  return push(std::move(l));
}

model_builder& model_builder::pool(layer_kind kind, int64_t size, int64_t stride) {
  auto l = layer(kind);
  l.size = size;
  l.stride = stride > 0 ? stride : size;
  return push(std::move(l));
}

model_builder& model_builder::max_pool(int64_t size, int64_t stride) {
  return pool(layer_kind::max_pool, size, stride);
}

model_builder& model_builder::avg_pool(int64_t size, int64_t stride) {
  return pool(layer_kind::avg_pool, size, stride);
}

model_builder& model_builder::flatten() {
  return push(layer(layer_kind::flatten));
}

model_builder& model_builder::reshape(std::vector<int64_t> shape) {
  auto l = layer(layer_kind::reshape);
  l.shape = std::move(shape);
  return push(std::move(l));
}

model_builder& model_builder::relu() {
  return push(layer(layer_kind::relu));
}
model_builder& model_builder::gelu() {
  return push(layer(layer_kind::gelu));
}
model_builder& model_builder::tanh() {
  return push(layer(layer_kind::tanh));
}

model_builder& model_builder::dropout(double rate) {
  auto l = layer(layer_kind::dropout);
  l.rate = rate;
  return push(std::move(l));
}

model_builder& model_builder::norm(layer_kind kind, double eps) {
  auto l = layer(kind);
  l.eps = eps;
  return push(std::move(l));
}

model_builder& model_builder::layer_norm(double eps) {
  return norm(layer_kind::layer_norm, eps);
}
model_builder& model_builder::rms_norm(double eps) {
  return norm(layer_kind::rms_norm, eps);
}

model_builder& model_builder::embedding(int64_t dim) {
  auto l = layer(layer_kind::embedding);
  l.dim = dim;
  return push(std::move(l));
}

model_builder& model_builder::position_embedding() {
  return push(layer(layer_kind::position_embedding));
}

model_builder& model_builder::attention(int64_t heads, bool bias) {
  auto l = layer(layer_kind::attention);
  l.heads = heads;
  l.bias = bias;
  return push(std::move(l));
}

model_builder& model_builder::add(std::string with) {
  auto l = layer(layer_kind::add);
  l.with = std::move(with);
  return push(std::move(l));
}

model_builder& model_builder::softmax_xent() {
  return push(layer(layer_kind::softmax_xent));
}
model_builder& model_builder::next_token_xent() {
  return push(layer(layer_kind::next_token_xent));
}
model_builder& model_builder::mse() {
  return push(layer(layer_kind::mse));
}

model_builder& model_builder::named(std::string name) {
  last().name = std::move(name);
  return *this;
}

model_builder& model_builder::from(std::string from) {
  last().from = std::move(from);
  return *this;
}

model_builder& model_builder::init(weight_init how) {
  last().init = how;
  return *this;
}

std::string model_builder::toml() const {
  return to_toml(spec_);
}

expected<model_plan> model_builder::plan(const model_limits& limits) const {
  // Read back from its TOML first, as the core reads it: every range the parser checks (a
  // kernel of 65, a dropout rate of 1.5, 0 heads) is checked here too, with its messages.
  auto parsed = parse_model_spec(toml(), "model");
  if (!parsed) return parsed.error();
  return plan_model(*parsed, limits);
}

}  // namespace gflex::kernels
