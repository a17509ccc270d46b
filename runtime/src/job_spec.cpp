#include "gflex/runtime/job_spec.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <optional>
#include <sstream>
#include <vector>

#include <toml++/toml.h>

#include <cmath>

namespace gflex {

const char* to_string(inner_optimizer optimizer) noexcept {
  switch (optimizer) {
    case inner_optimizer::adamw:
      return "adamw";
    case inner_optimizer::sgd:
      return "sgd";
  }
  return "unknown";
}

const char* to_string(lr_schedule schedule) noexcept {
  switch (schedule) {
    case lr_schedule::constant:
      return "constant";
    case lr_schedule::cosine:
      return "cosine";
  }
  return "unknown";
}

const char* to_string(trust_tier tier) noexcept {
  switch (tier) {
    case trust_tier::hybrid:
      return "hybrid";
    case trust_tier::core:
      return "core";
    case trust_tier::community:
      return "community";
  }
  return "unknown";
}

int64_t round_escrow(const job_spec& spec) {
  if (spec.account.empty() || spec.max_price <= 0) return 0;
  long double micro =
      static_cast<long double>(spec.workers) * spec.max_price * spec.deadline_s / 3600.0L;
  return static_cast<int64_t>(std::ceil(micro));
}

double inner_lr_at(const job_spec& spec, int64_t round) {
  if (spec.schedule == lr_schedule::constant || spec.rounds <= 1) return spec.inner_lr;
  constexpr double final_fraction = 0.05;
  double progress = static_cast<double>(round) / static_cast<double>(spec.rounds - 1);
  return spec.inner_lr *
         (final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + std::cos(M_PI * progress)));
}

namespace {

// The schema: every table and the keys it may hold. Anything else in a spec is an error.
struct table_schema {
  std::string_view name;
  std::vector<std::string_view> keys;
};

const std::array<table_schema, 10>& schema() {
  static const std::array<table_schema, 10> tables{{
      {"job", {"name", "workload", "rounds", "workers", "seed"}},
      {"inner",
       {"optimizer", "local_steps", "batch_size", "lr", "weight_decay", "lr_schedule",
        "precision"}},
      {"outer", {"lr", "momentum"}},
      {"wire", {"compression"}},
      {"eval", {"every"}},
      {"round", {"deadline_s", "quorum", "backup_after"}},
      {"trust",
       {"tier", "tolerance", "norm_tolerance", "norm_bound", "min_cosine", "clip", "trim"}},
      {"market", {"account", "budget", "max_price", "min_reputation", "deadline_h"}},
      {"data", {"set"}},
      {"model", {}},  // any keys: the kernels check a model
  }};
  return tables;
}

// An interval of accepted floating-point values; either end may be open.
struct real_range {
  double lo;
  bool lo_open;
  double hi;
  bool hi_open;

  // NaN fails both comparisons, so this also rejects non-finite values.
  bool contains(double x) const {
    return (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
  }
};

// Shortest text that parses back to exactly `x` ("0.001", "1e-05", "nan", "inf").
std::string format_double(double x) {
  std::array<char, 64> buf{};
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), x);
  return std::string(buf.data(), ec == std::errc{} ? end : buf.data());
}

std::string describe(const real_range& r) {
  return std::string(r.lo_open ? "(" : "[") + format_double(r.lo) + ", " + format_double(r.hi) +
         (r.hi_open ? ")" : "]");
}

// TOML's names for value types, as a user would write them in a message.
const char* type_name(toml::node_type type) {
  switch (type) {
    case toml::node_type::none:
      return "nothing";
    case toml::node_type::table:
      return "table";
    case toml::node_type::array:
      return "array";
    case toml::node_type::string:
      return "string";
    case toml::node_type::integer:
      return "integer";
    case toml::node_type::floating_point:
      return "float";
    case toml::node_type::boolean:
      return "boolean";
    case toml::node_type::date:
      return "date";
    case toml::node_type::time:
      return "time";
    case toml::node_type::date_time:
      return "date-time";
  }
  return "unknown";
}

// A TOML basic string for `s`: quoted, with quotes, backslashes and control characters escaped.
// Other bytes pass through, which is right for the UTF-8 that toml++ has already validated.
std::string quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          static constexpr char hex[] = "0123456789ABCDEF";
          out += "\\u00";
          out += hex[(static_cast<unsigned char>(c) >> 4) & 0xf];
          out += hex[static_cast<unsigned char>(c) & 0xf];
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

// A key as it would be written in TOML, so that a dotted path in a message is unambiguous
// even when a (misspelt) key contains a dot or a space.
std::string key_text(std::string_view key) {
  bool bare = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
  return bare ? std::string(key) : quote(key);
}

// Builds the messages for one spec and reads typed values out of its tables.
class reader {
 public:
  reader(const std::string& source, const toml::table& root) : source_(source), root_(root) {}

  error fail(std::string_view path, const std::string& what) const {
    return error(errc::invalid_argument, source_ + ": " + std::string(path) + ": " + what);
  }

  // Checks that only known tables and keys occur. Of several unknown keys the one that comes
  // first in the text is reported, which is the one a user reading top to bottom meets first.
  expected<void> check_structure() const {
    std::optional<error> first;
    toml::source_position first_at{};
    auto note = [&](const toml::node& node, error e) {
      auto at = node.source().begin;
      if (!first || at < first_at) {
        first = std::move(e);
        first_at = at;
      }
    };
    for (auto&& [key, node] : root_) {
      const std::string_view name = key.str();  // clang 14 cannot capture a binding
      auto it = std::find_if(schema().begin(), schema().end(),
                             [&](const table_schema& t) { return t.name == name; });
      std::string path = key_text(key.str());
      if (it == schema().end()) {
        note(node, fail(path, node.is_table() ? "unknown table" : "unknown key"));
        continue;
      }
      const toml::table* table = node.as_table();
      if (table == nullptr) {
        note(node, fail(path, std::string("must be a table, got ") + type_name(node.type())));
        continue;
      }
      if (name == "model") continue;
      for (auto&& [inner_key, inner_node] : *table) {
        if (std::find(it->keys.begin(), it->keys.end(), inner_key.str()) != it->keys.end())
          continue;
        note(inner_node, fail(path + "." + key_text(inner_key.str()),
                              inner_node.is_table() ? "unknown table" : "unknown key"));
      }
    }
    if (first) return *first;
    return {};
  }

  // The top-level table `name`, or null when absent.
  const toml::table* table(std::string_view name) const { return root_.get_as<toml::table>(name); }

  // The node at table.key, or null when absent; check_structure has vetted the table's type.
  const toml::node* find(std::string_view table, std::string_view key) const {
    const toml::table* t = root_.get_as<toml::table>(table);
    return t == nullptr ? nullptr : t->get(key);
  }

  expected<void> integer(std::string_view table, std::string_view key, int64_t lo, int64_t hi,
                         int64_t& out) const {
    const toml::node* node = find(table, key);
    if (node == nullptr) return {};
    std::string path = std::string(table) + "." + std::string(key);
    const auto* value = node->as_integer();
    if (value == nullptr)
      return fail(path, std::string("must be an integer, got ") + type_name(node->type()));
    int64_t x = value->get();
    if (x < lo || x > hi)
      return fail(path, "must be an integer in " + bounds(lo, hi) + ", got " + std::to_string(x));
    out = x;
    return {};
  }

  // A TOML integer is signed 64-bit, so a seed is non-negative and below 2^63.
  expected<void> seed(std::string_view table, std::string_view key, uint64_t& out) const {
    int64_t x = static_cast<int64_t>(out);
    auto r = integer(table, key, 0, std::numeric_limits<int64_t>::max(), x);
    if (!r) return r;
    out = static_cast<uint64_t>(x);
    return {};
  }

  // Integers are accepted where a number is expected, so `lr = 1` means 1.0.
  expected<void> number(std::string_view table, std::string_view key, const real_range& range,
                        double& out) const {
    const toml::node* node = find(table, key);
    if (node == nullptr) return {};
    std::string path = std::string(table) + "." + std::string(key);
    double x = 0;
    if (const auto* f = node->as_floating_point())
      x = f->get();
    else if (const auto* i = node->as_integer())
      x = static_cast<double>(i->get());
    else
      return fail(path, std::string("must be a number, got ") + type_name(node->type()));
    if (!range.contains(x))
      return fail(path, "must be a number in " + describe(range) + ", got " + format_double(x));
    out = x;
    return {};
  }

  expected<void> string(std::string_view table, std::string_view key,
                        std::optional<std::string>& out) const {
    const toml::node* node = find(table, key);
    if (node == nullptr) return {};
    const auto* value = node->as_string();
    if (value == nullptr)
      return fail(std::string(table) + "." + std::string(key),
                  std::string("must be a string, got ") + type_name(node->type()));
    out = value->get();
    return {};
  }

  // Reads an enum by its to_string spelling; `values` lists the accepted ones.
  template <class Enum, size_t N>
  expected<void> choice(std::string_view table, std::string_view key,
                        const std::array<Enum, N>& values, Enum& out) const {
    std::optional<std::string> text;
    if (auto r = string(table, key, text); !r) return r;
    if (!text) return {};
    std::string allowed;
    for (Enum v : values) {
      if (*text == to_string(v)) {
        out = v;
        return {};
      }
      allowed += (allowed.empty() ? "" : ", ") + quote(to_string(v));
    }
    return fail(std::string(table) + "." + std::string(key),
                "must be one of " + allowed + ", got " + quote(*text));
  }

 private:
  static std::string bounds(int64_t lo, int64_t hi) {
    return "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  }

  const std::string& source_;
  const toml::table& root_;
};

// A job name ends up in log lines, file names and store keys, hence the conservative alphabet.
expected<void> check_name(const reader& in, const std::string& name) {
  constexpr size_t max_length = 64;
  if (name.empty()) return in.fail("job.name", "must not be empty");
  if (name.size() > max_length)
    return in.fail("job.name", "must be at most " + std::to_string(max_length) +
                                   " characters, got " + std::to_string(name.size()));
  bool ok = std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
  if (!ok)
    return in.fail("job.name",
                   "must use only letters, digits, '.', '_' and '-', got " + quote(name));
  return {};
}

expected<job_spec> read_spec(const reader& in) {
  constexpr int64_t max_steps = 100000;
  constexpr real_range learning_rate{0.0, true, 10.0, false};
  constexpr real_range unit_half_open{0.0, false, 1.0, true};

  if (auto r = in.check_structure(); !r) return r.error();
  job_spec spec;
  std::optional<std::string> name;
  std::optional<std::string> workload;
  // Keys are read in the order of the struct so that the first error reported is stable.
  if (auto r = in.string("job", "name", name); !r) return r.error();
  if (name) {
    if (auto r = check_name(in, *name); !r) return r.error();
    spec.name = *name;
  }
  if (auto r = in.string("job", "workload", workload); !r) return r.error();
  const toml::table* model = in.table("model");
  if (model != nullptr) {
    // Canonical text: what the formatter writes parses back to the same text.
    std::ostringstream text;
    text << toml::toml_formatter(
        toml::table{{"model", *model}},
        toml::toml_formatter::default_flags & ~toml::format_flags::indentation);
    spec.model = text.str() + "\n";
    if (!workload) {
      const auto* label = model->get_as<std::string>("name");
      workload = label != nullptr && !label->get().empty() ? label->get() : "model";
    }
  }
  if (!workload) return in.fail("job.workload", "missing (required without a [model] table)");
  if (workload->empty()) return in.fail("job.workload", "must not be empty");
  spec.workload = *workload;
  std::optional<std::string> data_set;
  if (auto r = in.string("data", "set", data_set); !r) return r.error();
  if (model != nullptr && (!data_set || data_set->empty()))
    return in.fail("data.set", "missing (a [model] needs the data set it trains on)");
  if (model == nullptr && data_set)
    return in.fail("data.set",
                   "only a job with a [model] names its data (a built-in workload "
                   "brings its own)");
  if (data_set) spec.data_set = *data_set;
  if (auto r = in.integer("job", "rounds", 1, max_steps, spec.rounds); !r) return r.error();
  if (auto r = in.integer("job", "workers", 1, 1024, spec.workers); !r) return r.error();
  if (auto r = in.seed("job", "seed", spec.seed); !r) return r.error();
  if (auto r = in.choice("inner", "optimizer",
                         std::array{inner_optimizer::adamw, inner_optimizer::sgd}, spec.inner);
      !r)
    return r.error();
  if (auto r = in.integer("inner", "local_steps", 1, max_steps, spec.local_steps); !r)
    return r.error();
  if (auto r = in.integer("inner", "batch_size", 1, 65536, spec.batch_size); !r) return r.error();
  if (auto r = in.number("inner", "lr", learning_rate, spec.inner_lr); !r) return r.error();
  if (auto r = in.number("inner", "weight_decay", unit_half_open, spec.weight_decay); !r)
    return r.error();
  if (auto r = in.choice("inner", "lr_schedule",
                         std::array{lr_schedule::cosine, lr_schedule::constant}, spec.schedule);
      !r)
    return r.error();
  if (auto r =
          in.choice("inner", "precision",
                    std::array{math_precision::fp32, math_precision::tf32, math_precision::bf16},
                    spec.precision);
      !r)
    return r.error();
  if (auto r = in.number("outer", "lr", learning_rate, spec.outer_lr); !r) return r.error();
  if (auto r = in.number("outer", "momentum", unit_half_open, spec.outer_momentum); !r)
    return r.error();
  if (auto r = in.choice("wire", "compression", std::array{compression::fp32, compression::int8},
                         spec.compression);
      !r)
    return r.error();
  if (auto r = in.integer("eval", "every", 1, max_steps, spec.eval_every); !r) return r.error();
  constexpr real_range deadline{0.0, true, 86400.0, false};
  constexpr real_range fraction{0.0, true, 1.0, false};
  constexpr real_range backup{0.0, false, 100.0, false};
  if (auto r = in.number("round", "deadline_s", deadline, spec.deadline_s); !r) return r.error();
  if (auto r = in.number("round", "quorum", fraction, spec.quorum); !r) return r.error();
  if (auto r = in.number("round", "backup_after", backup, spec.backup_after); !r) return r.error();
  if (auto r = in.choice("trust", "tier",
                         std::array{trust_tier::hybrid, trust_tier::core, trust_tier::community},
                         spec.tier);
      !r)
    return r.error();
  constexpr real_range tolerance{0.0, true, 1.0, false};
  constexpr real_range norm_bound{1.5, false, 1000.0, false};
  constexpr real_range cosine{-1.0, false, 1.0, false};
  constexpr real_range clip{0.0, false, 1000.0, false};
  constexpr real_range trim{0.0, false, 0.5, true};
  if (auto r = in.number("trust", "tolerance", tolerance, spec.tolerance); !r) return r.error();
  if (auto r = in.number("trust", "norm_tolerance", tolerance, spec.norm_tolerance); !r)
    return r.error();
  if (auto r = in.number("trust", "norm_bound", norm_bound, spec.norm_bound); !r) return r.error();
  if (auto r = in.number("trust", "min_cosine", cosine, spec.min_cosine); !r) return r.error();
  if (auto r = in.number("trust", "clip", clip, spec.clip); !r) return r.error();
  if (spec.clip > 0.0 && spec.clip < 1.0)
    return in.fail("trust.clip",
                   "must be 0 (off) or in [1, 1000], got " + format_double(spec.clip));
  if (auto r = in.number("trust", "trim", trim, spec.trim); !r) return r.error();
  std::optional<std::string> account;
  if (auto r = in.string("market", "account", account); !r) return r.error();
  double budget = 0.0, max_price = -1.0;
  constexpr real_range credits{0.0, true, 1e12, false};
  constexpr real_range price{0.0, false, 1e6, false};
  constexpr real_range unit{0.0, false, 1.0, false};
  constexpr real_range hours{0.0, false, 100000.0, false};
  if (auto r = in.number("market", "budget", credits, budget); !r) return r.error();
  if (auto r = in.number("market", "max_price", price, max_price); !r) return r.error();
  if (auto r = in.number("market", "min_reputation", unit, spec.min_reputation); !r)
    return r.error();
  if (auto r = in.number("market", "deadline_h", hours, spec.deadline_h); !r) return r.error();
  spec.budget = budget > 0.0 ? std::llround(budget * 1e6) : 0;
  spec.max_price = max_price >= 0.0 ? std::llround(max_price * 1e6) : -1;
  if (account) {
    const auto& a = *account;
    bool ok = a.size() > 5 && a.size() <= 5 + 128 && a.starts_with("user/");
    for (size_t i = 5; ok && i < a.size(); ++i) {
      char c = a[i];
      ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
    }
    if (!ok)
      return in.fail("market.account",
                     "must be user/NAME (NAME 1-128 of A-Z a-z 0-9 . _ -), got " + quote(a));
    spec.account = a;
    if (spec.budget == 0) return in.fail("market.budget", "required with market.account");
    if (spec.max_price < 0) return in.fail("market.max_price", "required with market.account");
    if (spec.budget < round_escrow(spec))
      return in.fail("market.budget",
                     format_double(budget) + " credits is less than one round's escrow, " +
                         format_double(static_cast<double>(round_escrow(spec)) / 1e6) +
                         " (job.workers x market.max_price x round.deadline_s / 3600)");
  } else if (spec.budget != 0) {
    return in.fail("market.budget", "needs market.account (who pays)");
  }
  return spec;
}

}  // namespace

expected<job_spec> parse_job_spec(std::string_view toml_text, const std::string& source) {
  // Checked before the parser allocates anything for it: specs come from clients.
  if (toml_text.size() > max_job_spec_bytes)
    return error(errc::invalid_argument, source + ": " + std::to_string(toml_text.size()) +
                                             " bytes, more than a job spec may have (" +
                                             std::to_string(max_job_spec_bytes) + ")");
  toml::table root;
  try {
    root = toml::parse(toml_text, std::string_view(source));
  } catch (const toml::parse_error& e) {
    const auto& at = e.source().begin;
    return error(errc::invalid_argument, source + ":" + std::to_string(at.line) + ":" +
                                             std::to_string(at.column) +
                                             ": invalid TOML: " + std::string(e.description()));
  }
  return read_spec(reader(source, root));
}

expected<job_spec> load_job_spec(const std::filesystem::path& file) {
  // A directory opens without complaint on Linux and then reads as empty; say what it is.
  std::error_code ec;
  if (std::filesystem::is_directory(file, ec))
    return error(errc::io_error, file.string() + ": is a directory, not a job spec");
  errno = 0;
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    int err = errno;
    return error(errc::io_error,
                 file.string() + ": cannot open job spec" +
                     (err != 0 ? std::string(" (") + std::strerror(err) + ")" : std::string()));
  }
  std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) return error(errc::io_error, file.string() + ": cannot read job spec");
  return parse_job_spec(text, file.string());
}

std::string to_toml(const job_spec& spec) {
  // A float written without '.' or an exponent would read back as an integer; the parser
  // accepts that, but writing "0.0" keeps the file saying what type the key has.
  auto real = [](double x) {
    std::string s = format_double(x);
    if (s.find_first_of(".en") == std::string::npos) s += ".0";  // "nan" and "inf" have an 'n'.
    return s;
  };
  std::string out;
  out += "[job]\n";
  out += "name = " + quote(spec.name) + "\n";
  out += "workload = " + quote(spec.workload) + "\n";
  out += "rounds = " + std::to_string(spec.rounds) + "\n";
  out += "workers = " + std::to_string(spec.workers) + "\n";
  out += "seed = " + std::to_string(spec.seed) + "\n";
  out += "\n[inner]\n";
  out += "optimizer = " + quote(to_string(spec.inner)) + "\n";
  out += "local_steps = " + std::to_string(spec.local_steps) + "\n";
  out += "batch_size = " + std::to_string(spec.batch_size) + "\n";
  out += "lr = " + real(spec.inner_lr) + "\n";
  out += "weight_decay = " + real(spec.weight_decay) + "\n";
  out += "lr_schedule = " + quote(to_string(spec.schedule)) + "\n";
  out += "precision = " + quote(to_string(spec.precision)) + "\n";
  out += "\n[outer]\n";
  out += "lr = " + real(spec.outer_lr) + "\n";
  out += "momentum = " + real(spec.outer_momentum) + "\n";
  out += "\n[wire]\n";
  out += "compression = " + quote(to_string(spec.compression)) + "\n";
  out += "\n[eval]\n";
  out += "every = " + std::to_string(spec.eval_every) + "\n";
  out += "\n[round]\n";
  out += "deadline_s = " + real(spec.deadline_s) + "\n";
  out += "quorum = " + real(spec.quorum) + "\n";
  out += "backup_after = " + real(spec.backup_after) + "\n";
  out += "\n[trust]\n";
  out += "tier = " + quote(to_string(spec.tier)) + "\n";
  out += "tolerance = " + real(spec.tolerance) + "\n";
  out += "norm_tolerance = " + real(spec.norm_tolerance) + "\n";
  out += "norm_bound = " + real(spec.norm_bound) + "\n";
  out += "min_cosine = " + real(spec.min_cosine) + "\n";
  out += "clip = " + real(spec.clip) + "\n";
  out += "trim = " + real(spec.trim) + "\n";
  out += "\n[market]\n";
  if (!spec.account.empty()) out += "account = " + quote(spec.account) + "\n";
  if (spec.budget > 0) out += "budget = " + real(static_cast<double>(spec.budget) / 1e6) + "\n";
  if (spec.max_price >= 0)
    out += "max_price = " + real(static_cast<double>(spec.max_price) / 1e6) + "\n";
  out += "min_reputation = " + real(spec.min_reputation) + "\n";
  out += "deadline_h = " + real(spec.deadline_h) + "\n";
  if (!spec.data_set.empty()) out += "\n[data]\nset = " + quote(spec.data_set) + "\n";
  if (!spec.model.empty()) out += "\n" + spec.model;
  return out;
}

}  // namespace gflex
