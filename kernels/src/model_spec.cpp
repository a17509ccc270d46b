/// @file
/// Reading and planning user-defined models (model_spec.hpp).

#include "gflex/kernels/model_spec.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include <toml++/toml.h>

#include "gflex/runtime/printable_text.hpp"
#include "gflex/runtime/toml_nesting.hpp"

namespace gflex::kernels {

namespace {

/// A count as a message shows it: 3 significant digits ("6.87e+10").
std::string fmt_count(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", x);
  return buf;
}

struct kind_name {
  layer_kind kind;
  const char* name;
};

constexpr std::array<kind_name, 19> k_kinds{{
    {layer_kind::linear, "linear"},
    {layer_kind::conv2d, "conv2d"},
    {layer_kind::max_pool, "max_pool"},
    {layer_kind::avg_pool, "avg_pool"},
    {layer_kind::flatten, "flatten"},
    {layer_kind::reshape, "reshape"},
    {layer_kind::relu, "relu"},
    {layer_kind::gelu, "gelu"},
    {layer_kind::tanh, "tanh"},
    {layer_kind::dropout, "dropout"},
    {layer_kind::layer_norm, "layer_norm"},
    {layer_kind::rms_norm, "rms_norm"},
    {layer_kind::embedding, "embedding"},
    {layer_kind::position_embedding, "position_embedding"},
    {layer_kind::attention, "attention"},
    {layer_kind::add, "add"},
    {layer_kind::softmax_xent, "softmax_xent"},
    {layer_kind::next_token_xent, "next_token_xent"},
    {layer_kind::mse, "mse"},
}};

/// The keys each layer type takes besides type, name and from.
std::vector<std::string_view> keys_of(layer_kind kind) {
  switch (kind) {
    case layer_kind::linear:
      return {"units", "bias", "init"};
    case layer_kind::conv2d:
      return {"filters", "kernel", "stride", "padding", "bias", "init"};
    case layer_kind::max_pool:
    case layer_kind::avg_pool:
      return {"size", "stride"};
    case layer_kind::reshape:
      return {"shape"};
    case layer_kind::dropout:
      return {"rate"};
    case layer_kind::layer_norm:
    case layer_kind::rms_norm:
      return {"eps"};
    case layer_kind::embedding:
      return {"dim"};
    case layer_kind::attention:
      return {"heads", "bias", "init"};
    case layer_kind::add:
      return {"with"};
    default:
      return {};
  }
}

bool is_loss(layer_kind k) {
  return k == layer_kind::softmax_xent || k == layer_kind::next_token_xent || k == layer_kind::mse;
}

/// Operations a softmax does per value of its rows (max, exp, sum, divide), as GELU's and
/// tanh's polynomial or a cross-entropy's log-sum-exp: an exp costs ten or more.
constexpr double k_softmax_ops = 20.0;

/// Forward operations per output value a layer does outside the matrix products and pooling
/// windows `planned_layer::flops` counts (a loss's output is its input). Uncounted, a
/// chain of 500 norms and GELUs on a [512, 1024] activation planned at a few million FLOPs
/// a sample while each of its forward passes did about 5e9 operations, and the core, which
/// sizes its evaluation by the count (evaluation_budget.hpp), spent tens of minutes of its
/// CPU on every evaluation.
double per_value_ops(layer_kind k) {
  switch (k) {
    case layer_kind::relu:
    case layer_kind::dropout:
    case layer_kind::embedding:  // a row copied
    case layer_kind::position_embedding:
    case layer_kind::add:
      return 1.0;
    case layer_kind::mse:
      return 3.0;
    case layer_kind::layer_norm:  // two passes over the row, then scale and shift
    case layer_kind::rms_norm:
      return 10.0;
    case layer_kind::gelu:
    case layer_kind::tanh:
    case layer_kind::softmax_xent:
    case layer_kind::next_token_xent:
      return k_softmax_ops;
    default:
      return 0.0;
  }
}

bool valid_name(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
  });
}

std::string shape_text(const shape_t& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Names a layer in messages: "model.layers[3] (conv2d 'c1')".
std::string where(size_t index, const layer_spec& l) {
  std::string out = "model.layers[" + std::to_string(index) + "] (" + to_string(l.kind);
  if (!l.name.empty()) out += " '" + l.name + "'";
  return out + ")";
}

class spec_reader {
 public:
  explicit spec_reader(std::string source) : source_(std::move(source)) {}

  error fail(const std::string& path, const std::string& what) const {
    return error(errc::invalid_argument, source_ + ": " + path + ": " + what);
  }

  expected<int64_t> integer(const toml::table& t, std::string_view key, const std::string& path,
                            int64_t lo, int64_t hi, int64_t fallback) const {
    const toml::node* n = t.get(key);
    if (n == nullptr) return fallback;
    const auto* v = n->as_integer();
    const std::string at = path + "." + std::string(key);
    if (v == nullptr) return fail(at, "must be an integer");
    if (v->get() < lo || v->get() > hi)
      return fail(at, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                          std::to_string(v->get()));
    return v->get();
  }

  expected<double> real(const toml::table& t, std::string_view key, const std::string& path,
                        double lo, double hi, bool hi_open, double fallback) const {
    const toml::node* n = t.get(key);
    if (n == nullptr) return fallback;
    const std::string at = path + "." + std::string(key);
    std::optional<double> x;
    if (const auto* f = n->as_floating_point()) x = f->get();
    if (const auto* i = n->as_integer()) x = static_cast<double>(i->get());
    if (!x) return fail(at, "must be a number");
    if (!(*x >= lo) || !(hi_open ? *x < hi : *x <= hi))
      return fail(at, "must be in [" + format_double(lo) + ", " + format_double(hi) +
                          (hi_open ? ")" : "]") + ", got " + format_double(*x));
    return *x;
  }

  expected<std::string> name(const toml::table& t, std::string_view key,
                             const std::string& path) const {
    const toml::node* n = t.get(key);
    if (n == nullptr) return std::string();
    const auto* v = n->as_string();
    const std::string at = path + "." + std::string(key);
    if (v == nullptr) return fail(at, "must be a string");
    if (!valid_name(v->get())) return fail(at, "must be 1-64 of A-Z a-z 0-9 _ - .");
    return v->get();
  }

  expected<std::vector<int64_t>> extents(const toml::table& t, std::string_view key,
                                         const std::string& path) const {
    const std::string at = path + "." + std::string(key);
    const toml::node* n = t.get(key);
    if (n == nullptr) return fail(at, "missing (required)");
    const auto* a = n->as_array();
    if (a == nullptr || a->empty() || a->size() > 4)
      return fail(at, "must be an array of 1 to 4 positive integers");
    std::vector<int64_t> out;
    for (const auto& e : *a) {
      const auto* v = e.as_integer();
      if (v == nullptr || v->get() <= 0 || v->get() > (int64_t{1} << 20))
        return fail(at, "must be an array of 1 to 4 integers in [1, 1048576]");
      out.push_back(v->get());
    }
    return out;
  }

 private:
  std::string source_;
};

expected<layer_spec> read_layer(const spec_reader& in, const toml::table& t, size_t index) {
  std::string path = "model.layers[" + std::to_string(index) + "]";
  const toml::node* type = t.get("type");
  if (type == nullptr) return in.fail(path + ".type", "missing (required)");
  if (!type->is_string()) return in.fail(path + ".type", "must be a string naming a layer type");
  const std::string type_name = type->as_string()->get();
  auto it = std::find_if(k_kinds.begin(), k_kinds.end(),
                         [&](const kind_name& k) { return type_name == k.name; });
  if (it == k_kinds.end()) {
    std::string known;
    for (const auto& k : k_kinds) known += (known.empty() ? "" : ", ") + std::string(k.name);
    return in.fail(path + ".type", "unknown layer type '" + type_name + "' (known: " + known + ")");
  }
  layer_spec l;
  l.kind = it->kind;
  path += " (" + type_name + ")";
  const auto keys = keys_of(l.kind);
  for (auto&& [key, node] : t) {
    const auto k = key.str();
    if (k == "type" || k == "name" || k == "from") continue;
    if (std::find(keys.begin(), keys.end(), k) == keys.end())
      return in.fail(path + "." + std::string(k),
                     std::string("not a key of a ") + type_name + " layer");
  }
  auto name = in.name(t, "name", path);
  if (!name) return name.error();
  l.name = *name;
  auto from = in.name(t, "from", path);
  if (!from) return from.error();
  l.from = *from;
  auto with = in.name(t, "with", path);
  if (!with) return with.error();
  l.with = *with;
  constexpr int64_t big = int64_t{1} << 20;
  auto get = [&](std::string_view key, int64_t lo, int64_t hi, int64_t fallback,
                 int64_t& out) -> expected<void> {
    auto v = in.integer(t, key, path, lo, hi, fallback);
    if (!v) return v.error();
    out = *v;
    return {};
  };
  auto need = [&](std::string_view key) -> expected<void> {
    if (t.get(key) == nullptr) return in.fail(path + "." + std::string(key), "missing (required)");
    return {};
  };
  switch (l.kind) {
    case layer_kind::linear:
      if (auto r = need("units"); !r) return r.error();
      if (auto r = get("units", 1, big, 0, l.units); !r) return r.error();
      break;
    case layer_kind::conv2d:
      if (auto r = need("filters"); !r) return r.error();
      if (auto r = need("kernel"); !r) return r.error();
      if (auto r = get("filters", 1, 65536, 0, l.filters); !r) return r.error();
      if (auto r = get("kernel", 1, 64, 0, l.kernel); !r) return r.error();
      if (auto r = get("stride", 1, 64, 1, l.stride); !r) return r.error();
      if (auto r = get("padding", 0, 64, 0, l.padding); !r) return r.error();
      break;
    case layer_kind::max_pool:
    case layer_kind::avg_pool:
      if (auto r = need("size"); !r) return r.error();
      if (auto r = get("size", 1, 64, 0, l.size); !r) return r.error();
      if (auto r = get("stride", 1, 64, l.size, l.stride); !r) return r.error();
      break;
    case layer_kind::reshape: {
      auto s = in.extents(t, "shape", path);
      if (!s) return s.error();
      l.shape = *s;
      break;
    }
    case layer_kind::dropout: {
      auto r = in.real(t, "rate", path, 0.0, 1.0, true, 0.1);
      if (!r) return r.error();
      // The kernels take the rate as a float: one that rounds to 1 would drop every value.
      if (static_cast<float>(*r) >= 1.0f)
        return in.fail(path + ".rate",
                       "must be below 1 as a 32-bit float, got " + format_double(*r));
      l.rate = *r;
      break;
    }
    case layer_kind::layer_norm:
    case layer_kind::rms_norm: {
      auto r = in.real(t, "eps", path, 1e-12, 1.0, false, 1e-5);
      if (!r) return r.error();
      l.eps = *r;
      break;
    }
    case layer_kind::embedding:
      if (auto r = need("dim"); !r) return r.error();
      if (auto r = get("dim", 1, 65536, 0, l.dim); !r) return r.error();
      break;
    case layer_kind::attention:
      if (auto r = need("heads"); !r) return r.error();
      if (auto r = get("heads", 1, 1024, 0, l.heads); !r) return r.error();
      break;
    case layer_kind::add:
      if (l.with.empty()) return in.fail(path + ".with", "missing (required)");
      break;
    default:
      break;
  }
  if (const toml::node* b = t.get("bias")) {
    if (!b->is_boolean()) return in.fail(path + ".bias", "must be true or false");
    l.bias = b->as_boolean()->get();
  }
  if (const toml::node* init = t.get("init")) {
    const auto* v = init->as_string();
    if (v == nullptr || (v->get() != "he" && v->get() != "lecun"))
      return in.fail(path + ".init", "must be \"he\" or \"lecun\"");
    l.init = v->get() == "he" ? weight_init::he : weight_init::lecun;
  }
  return l;
}

}  // namespace

const char* to_string(layer_kind kind) noexcept {
  for (const auto& k : k_kinds)
    if (k.kind == kind) return k.name;
  return "unknown";
}

expected<model_spec> parse_model_spec(std::string_view toml_text, const std::string& source) {
  // Checked before the parser recurses into it: a model comes from a user's job spec (the
  // core checked that spec; a node checks again what reaches it).
  if (auto shallow = check_toml_nesting(toml_text, source); !shallow) return shallow.error();
  toml::table root;
  try {
    root = toml::parse(toml_text, std::string_view(source));
  } catch (const toml::parse_error& e) {
    const auto& at = e.source().begin;
    return error(errc::invalid_argument, source + ":" + std::to_string(at.line) + ":" +
                                             std::to_string(at.column) +
                                             ": invalid TOML: " + std::string(e.description()));
  }
  spec_reader in(source);
  const toml::table* m = root.get_as<toml::table>("model");
  if (m == nullptr) return in.fail("model", "missing (a table)");
  for (auto&& [key, node] : *m) {
    const auto k = key.str();
    if (k != "name" && k != "input" && k != "vocab" && k != "layers")
      return in.fail("model." + std::string(k), "unknown key");
  }
  model_spec spec;
  auto name = in.name(*m, "name", "model");
  if (!name) return name.error();
  spec.name = *name;
  auto input = in.extents(*m, "input", "model");
  if (!input) return input.error();
  spec.input = *input;
  auto vocab = in.integer(*m, "vocab", "model", 1, 1 << 20, 0);
  if (!vocab) return vocab.error();
  spec.vocab = *vocab;
  const toml::node* layers = m->get("layers");
  if (layers == nullptr) return in.fail("model.layers", "missing (required)");
  const auto* list = layers->as_array();
  if (list == nullptr || list->empty())
    return in.fail("model.layers", "must be a non-empty array of layer tables");
  for (size_t i = 0; i < list->size(); ++i) {
    const auto* t = (*list)[i].as_table();
    if (t == nullptr) return in.fail("model.layers[" + std::to_string(i) + "]", "must be a table");
    auto l = read_layer(in, *t, i);
    if (!l) return l.error();
    spec.layers.push_back(std::move(*l));
  }
  return spec;
}

std::string to_toml(const model_spec& spec) {
  toml::table model;
  if (!spec.name.empty()) model.insert("name", spec.name);
  toml::array input;
  for (int64_t e : spec.input) input.push_back(e);
  model.insert("input", std::move(input));
  if (spec.vocab > 0) model.insert("vocab", spec.vocab);
  // One inline table per layer and line, as a user writes them (toml++ alone would print
  // an [[model.layers]] section per layer).
  std::string layers = "layers = [\n";
  for (const auto& l : spec.layers) {
    toml::table t;
    t.is_inline(true);
    t.insert("type", std::string(to_string(l.kind)));
    if (!l.name.empty()) t.insert("name", l.name);
    if (!l.from.empty()) t.insert("from", l.from);
    const auto keys = keys_of(l.kind);
    auto takes = [&](std::string_view key) {
      return std::find(keys.begin(), keys.end(), key) != keys.end();
    };
    if (takes("units")) t.insert("units", l.units);
    if (takes("filters")) t.insert("filters", l.filters);
    if (takes("kernel")) t.insert("kernel", l.kernel);
    if (takes("size")) t.insert("size", l.size);
    const bool pool = l.kind == layer_kind::max_pool || l.kind == layer_kind::avg_pool;
    if (takes("stride") && l.stride != (pool ? l.size : 1)) t.insert("stride", l.stride);
    if (takes("padding") && l.padding != 0) t.insert("padding", l.padding);
    if (takes("heads")) t.insert("heads", l.heads);
    if (takes("dim")) t.insert("dim", l.dim);
    if (takes("with")) t.insert("with", l.with);
    if (takes("rate")) t.insert("rate", l.rate);
    if (takes("eps") && l.eps != 1e-5) t.insert("eps", l.eps);
    if (takes("shape")) {
      toml::array shape;
      for (int64_t e : l.shape) shape.push_back(e);
      t.insert("shape", std::move(shape));
    }
    if (takes("bias") && !l.bias) t.insert("bias", false);
    if (takes("init") && l.init != weight_init::automatic)
      t.insert("init", std::string(l.init == weight_init::he ? "he" : "lecun"));
    std::ostringstream line;
    line << t;
    layers += "  " + line.str() + ",\n";
  }
  toml::table root;
  root.insert("model", std::move(model));
  std::ostringstream out;
  out << root << '\n' << layers << "]\n";
  return out.str();
}

bool model_takes_tokens(std::string_view toml_text) {
  auto spec = parse_model_spec(toml_text, "model");
  return spec && spec->vocab > 0;
}

expected<model_plan> plan_model(const model_spec& spec, const model_limits& limits) {
  auto fail = [](const std::string& where, const std::string& what) {
    return error(errc::invalid_argument, where + ": " + what);
  };
  model_plan plan;
  plan.spec = spec;
  if (spec.layers.empty()) return fail("model.layers", "empty");
  if (static_cast<int64_t>(spec.layers.size()) > limits.max_layers)
    return fail("model.layers", std::to_string(spec.layers.size()) + " layers, more than " +
                                    std::to_string(limits.max_layers));
  const bool tokens = spec.vocab > 0;
  if (tokens && spec.input.size() != 1)
    return fail("model.input", "a token model (with vocab) takes input = [context], got " +
                                   shape_text(spec.input));
  if (spec.input.empty()) return fail("model.input", "empty");
  // Parsed specs are checked; one built in C++ (an embedding trainer's) may not be.
  for (const int64_t e : spec.input)
    if (e < 1)
      return fail("model.input", "extents must be at least 1, got " + shape_text(spec.input));
  plan.values.push_back(spec.input);
  auto in_numel = checked_numel(spec.input);
  if (!in_numel || *in_numel > limits.max_activations)
    return fail("model.input", "too large: " + shape_text(spec.input));
  plan.sample_values = tokens ? spec.input[0] + 1 : *in_numel;
  std::map<std::string, int> names{{"input", 0}};
  // Parameter blocks are found by name (an export's tensors, `gflex job eval`): two of one
  // name, as an unnamed layer's "layer2.weight" and a layer named "layer2", would load the
  // first's weights for both.
  std::set<std::string> block_names;
  int64_t offset = 0;
  int64_t activations = *in_numel;
  // Beyond the outputs, per sample (model_limits::max_working_values): what attention keeps
  // for its backward pass, and the largest scratch one layer needs (shared by all).
  double kept = 0.0, scratch = 0.0;
  int previous = 0;
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    const layer_spec& l = spec.layers[i];
    const std::string at = where(i, l);
    // As the parser checks them (a rate that rounds to 1 as a float drops every value; an eps
    // of 0 makes a constant row NaN).
    if (l.kind == layer_kind::dropout && !(l.rate >= 0.0 && static_cast<float>(l.rate) < 1.0f))
      return fail(at + ".rate",
                  "must be in [0, 1) as a 32-bit float, got " + format_double(l.rate));
    if ((l.kind == layer_kind::layer_norm || l.kind == layer_kind::rms_norm) &&
        !(l.eps >= 1e-12 && l.eps <= 1.0))
      return fail(at + ".eps", "must be in [1e-12, 1], got " + format_double(l.eps));
    planned_layer p;
    p.spec = l;
    auto resolve = [&](const std::string& ref, const char* key) -> expected<int> {
      auto it = names.find(ref);
      if (it == names.end()) return fail(at + "." + key, "no earlier layer is named '" + ref + "'");
      return it->second;
    };
    if (l.from.empty()) {
      p.input = previous;
    } else {
      auto v = resolve(l.from, "from");
      if (!v) return v.error();
      p.input = *v;
    }
    if (l.kind == layer_kind::add) {
      auto v = resolve(l.with, "with");
      if (!v) return v.error();
      p.other = *v;
    }
    const shape_t in = plan.values[static_cast<size_t>(p.input)];
    p.in_shape = in;
    const int64_t last = in.back();
    const int64_t numel = *checked_numel(in);
    if (tokens && p.input == 0 && l.kind != layer_kind::embedding)
      return fail(at, "reads the token input: only an embedding layer can");
    if (tokens && p.other == 0)
      return fail(at + ".with", "adds the token input: only an embedding layer can read it");
    // An embedding looks up the model's token ids, whatever it would read otherwise.
    if (tokens && l.kind == layer_kind::embedding && p.input != 0)
      return fail(at + ".from", "an embedding reads the token input ('input') only");
    if (!tokens && l.kind == layer_kind::embedding)
      return fail(at, "an embedding needs token input: declare model.vocab");
    // A token model predicts each position's next token from the positions up to it: its
    // positions may meet only in attention, which is causal. A layer that mixes them (a
    // flatten, a reshape that moves them, a convolution or a pool over them) lets a position
    // see the tokens it is to predict: its loss falls towards 0 and means nothing. A reshape
    // keeps the positions' axis first and another after it: reshaped to [positions] alone,
    // the next dense layer or norm (which act on the last axis) ran across them.
    if (tokens) {
      const bool mixes =
          l.kind == layer_kind::flatten || l.kind == layer_kind::conv2d ||
          l.kind == layer_kind::max_pool || l.kind == layer_kind::avg_pool ||
          (l.kind == layer_kind::reshape && (l.shape.size() < 2 || l.shape[0] != spec.input[0]));
      if (mixes)
        return fail(at,
                    "mixes a token model's positions, so that each sees the tokens after "
                    "it, which it is to predict: positions may meet only in attention "
                    "(a reshape must keep the first axis, " +
                        std::to_string(spec.input[0]) + " positions, and at least one more)");
    }
    shape_t out = in;
    // A parameter past the value bound (an attention of width 2^20, a huge kernel) is
    // refused after the switch, naming it, before its size is added anywhere.
    std::string oversized, duplicate;
    auto add_param = [&](const std::string& what, shape_t shape) {
      auto n = checked_numel(shape);
      if (!n || *n > limits.max_parameters) {
        if (oversized.empty()) oversized = what + " " + shape_text(shape);
        return;
      }
      std::string block = (l.name.empty() ? "layer" + std::to_string(i) : l.name) + "." + what;
      if (!block_names.insert(block).second && duplicate.empty()) duplicate = block;
      p.params.push_back({std::move(block), shape, offset});
      offset += *n;
    };
    switch (l.kind) {
      case layer_kind::linear:
        out.back() = l.units;
        add_param("weight", {last, l.units});
        if (l.bias) add_param("bias", {l.units});
        p.flops = 2.0 * static_cast<double>(numel) * static_cast<double>(l.units);
        break;
      case layer_kind::conv2d: {
        if (in.size() != 3)
          return fail(at, "takes [height, width, channels] input, got " + shape_text(in));
        conv2d_geometry g{1,        in[0],    in[1],     in[2],     l.filters,
                          l.kernel, l.kernel, l.padding, l.padding, l.stride};
        if (!g.valid())
          return fail(at + ".kernel", "a " + std::to_string(l.kernel) + "x" +
                                          std::to_string(l.kernel) + " kernel with padding " +
                                          std::to_string(l.padding) + " does not fit input " +
                                          shape_text(in));
        out = {g.out_height(), g.out_width(), l.filters};
        add_param("weight", {l.filters, l.kernel, l.kernel, in[2]});
        if (l.bias) add_param("bias", {l.filters});
        p.flops = 2.0 * static_cast<double>(g.out_height() * g.out_width()) *
                  static_cast<double>(l.filters) * static_cast<double>(g.patch());
        // The CPU's convolution multiplies a patch matrix (one row per output pixel), but
        // for an unpadded stride-1 1x1 kernel, whose input is its own.
        if (l.kernel != 1 || l.padding != 0 || l.stride != 1)
          scratch = std::max(scratch, static_cast<double>(g.out_height() * g.out_width()) *
                                          static_cast<double>(g.patch()));
        break;
      }
      case layer_kind::max_pool:
      case layer_kind::avg_pool:
        if (l.size < 1 || l.stride < 1)  // parsed specs are checked; a built one may not be
          return fail(at + ".size", "a window and a stride of at least 1");
        if (in.size() != 3)
          return fail(at, "takes [height, width, channels] input, got " + shape_text(in));
        if (l.size > in[0] || l.size > in[1])
          return fail(at + ".size", "window " + std::to_string(l.size) + " is larger than input " +
                                        shape_text(in));
        out = {(in[0] - l.size) / l.stride + 1, (in[1] - l.size) / l.stride + 1, in[2]};
        // One operation per value each window reads: uncounted, a 64x64 window of stride 1
        // did 4,096 times its output's work where no bound on one sample's pass saw it.
        p.flops = static_cast<double>(out[0] * out[1] * out[2]) * static_cast<double>(l.size) *
                  static_cast<double>(l.size);
        // Kept: a max pool's winners, an index (4 bytes, as a value) per output
        // (graph_model): uncounted, a pass held up to twice what its bound said.
        if (l.kind == layer_kind::max_pool) kept += static_cast<double>(out[0] * out[1] * out[2]);
        break;
      case layer_kind::flatten:
        out = {numel};
        break;
      case layer_kind::reshape: {
        // As the parser's rule for `shape`: with no extents checked_numel counts 1 value, and
        // the next layer would read the last axis of an empty shape.
        if (l.shape.empty() || l.shape.size() > 4)
          return fail(at + ".shape",
                      "must be an array of 1 to 4 positive integers, got " + shape_text(l.shape));
        auto n = checked_numel(l.shape);
        if (!n || *n != numel)
          return fail(at + ".shape", shape_text(l.shape) + " does not hold the " +
                                         std::to_string(numel) + " values of " + shape_text(in));
        out = l.shape;
        break;
      }
      case layer_kind::layer_norm:
      case layer_kind::rms_norm:
        add_param("gamma", {last});
        if (l.kind == layer_kind::layer_norm) add_param("beta", {last});
        // Kept: two statistics a row (graph_model); a norm over rows one value wide held
        // three times its output, uncounted.
        kept += 2.0 * static_cast<double>(numel / last);
        break;
      case layer_kind::embedding:
        out = {in[0], l.dim};
        add_param("table", {spec.vocab, l.dim});
        break;
      case layer_kind::position_embedding:
        if (in.size() != 2)
          return fail(at, "takes [positions, width] input, got " + shape_text(in));
        add_param("table", in);
        break;
      case layer_kind::attention: {
        if (in.size() != 2)
          return fail(at, "takes [positions, width] input, got " + shape_text(in));
        if (l.heads < 1) return fail(at + ".heads", "at least 1");
        if (last % l.heads != 0)
          return fail(at + ".heads", "width " + std::to_string(last) + " is not a multiple of " +
                                         std::to_string(l.heads) + " heads");
        add_param("qkv.weight", {last, 3 * last});
        if (l.bias) add_param("qkv.bias", {3 * last});
        add_param("out.weight", {last, last});
        if (l.bias) add_param("out.bias", {last});
        const double t = static_cast<double>(in[0]), d = static_cast<double>(last);
        // Projections (4 d^2 per position) and the two products of attention (t d each).
        p.flops = 2.0 * t * 4.0 * d * d + 2.0 * 2.0 * t * t * d;
        // Kept: the projections and context (4 t d) and, on the CPU, the probabilities; the
        // backward pass's scratch holds their gradients.
        const double probs = static_cast<double>(l.heads) * t * t;
        kept += 4.0 * t * d + probs;
        scratch = std::max(scratch, probs);
        p.vector_flops = k_softmax_ops * probs;  // each head's rows of probabilities
        break;
      }
      case layer_kind::add: {
        const shape_t& other = plan.values[static_cast<size_t>(p.other)];
        if (other != in)
          return fail(at + ".with", "adds '" + l.with + "' of shape " + shape_text(other) +
                                        " to input of shape " + shape_text(in));
        break;
      }
      case layer_kind::softmax_xent:
      case layer_kind::mse:
        if (tokens) return fail(at, "a token model's loss is next_token_xent");
        if (in.size() != 1)
          return fail(at, "takes [classes] input (flatten first), got " + shape_text(in));
        if (last < 2) return fail(at, "needs at least 2 classes, got " + std::to_string(last));
        plan.classes = last;
        break;
      case layer_kind::next_token_xent:
        if (!tokens) return fail(at, "needs a token model (declare model.vocab)");
        if (in.size() != 2 || in[0] != spec.input[0] || in[1] != spec.vocab)
          return fail(at, "takes [" + std::to_string(spec.input[0]) + ", " +
                              std::to_string(spec.vocab) + "] logits (context, vocab), got " +
                              shape_text(in));
        plan.classes = spec.vocab;
        break;
      default:
        break;
    }
    if (!duplicate.empty())
      return fail(at + ".name", "its parameters are named '" + duplicate +
                                    "', as an earlier layer's are: name the layers apart");
    if (!oversized.empty())
      return fail(at, "its parameter " + oversized + " holds more than " +
                          std::to_string(limits.max_parameters) + " values");
    // Flatten's one dimension is all of its input, which the activation bound holds.
    for (int64_t e : out)
      if (e <= 0 || (e > limits.max_extent && l.kind != layer_kind::flatten))
        return fail(at, "output shape " + shape_text(out) +
                            (e <= 0 ? " is empty"
                                    : " has a dimension of more than " +
                                          std::to_string(limits.max_extent)));
    if (!checked_numel(out)) return fail(at, "output shape " + shape_text(out) + " is too large");
    p.out_shape = out;
    p.vector_flops += per_value_ops(l.kind) * static_cast<double>(*checked_numel(out));
    const double layer_flops = p.flops + p.vector_flops;
    const bool view = l.kind == layer_kind::flatten || l.kind == layer_kind::reshape;
    if (is_loss(l.kind)) {
      if (i + 1 != spec.layers.size()) return fail(at, "a loss must be the last layer");
      p.output = p.input;
    } else if (view) {
      p.output = static_cast<int>(plan.values.size());
      plan.values.push_back(out);
    } else {
      p.output = static_cast<int>(plan.values.size());
      plan.values.push_back(out);
      activations += *checked_numel(out);
    }
    if (offset > limits.max_parameters)
      return fail(at, "brings the parameters to " + std::to_string(offset) + ", more than " +
                          std::to_string(limits.max_parameters));
    if (activations > limits.max_activations)
      return fail(at, "brings one sample's activations to " + std::to_string(activations) +
                          " values, more than " + std::to_string(limits.max_activations));
    const double working = static_cast<double>(activations) + kept + scratch;
    if (working > static_cast<double>(limits.max_working_values))
      return fail(at,
                  "brings the values one sample's pass holds (outputs, attention "
                  "probabilities, convolution patches) to " +
                      fmt_count(working) + ", more than " +
                      std::to_string(limits.max_working_values));
    if (plan.forward_flops + layer_flops > limits.max_forward_flops)
      return fail(at, "brings one sample's forward pass to " +
                          fmt_count(plan.forward_flops + layer_flops) + " FLOPs, more than " +
                          fmt_count(limits.max_forward_flops));
    plan.working_values = static_cast<int64_t>(working);
    if (!l.name.empty()) {
      if (names.count(l.name) != 0)
        return fail(at + ".name", "'" + l.name + "' names an earlier layer too");
      names[l.name] = p.output;
    }
    previous = p.output;
    plan.forward_flops += layer_flops;
    plan.layers.push_back(std::move(p));
  }
  if (!is_loss(spec.layers.back().kind))
    return fail(where(spec.layers.size() - 1, spec.layers.back()),
                "the last layer must be a loss (softmax_xent, next_token_xent or mse)");
  // An output nothing reads would get no gradient: almost certainly a misspelt `from`.
  std::vector<int> uses(plan.values.size(), 0);
  for (const auto& p : plan.layers) {
    ++uses[static_cast<size_t>(p.input)];
    if (p.other >= 0) ++uses[static_cast<size_t>(p.other)];
  }
  for (size_t i = 0; i + 1 < plan.layers.size(); ++i)
    if (uses[static_cast<size_t>(plan.layers[i].output)] == 0)
      return fail(where(i, spec.layers[i]), "its output is never used");
  plan.parameters = offset;
  if (plan.parameters == 0) return fail("model.layers", "the model has no parameters to train");
  return plan;
}

}  // namespace gflex::kernels
