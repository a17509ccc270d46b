#include "gflex/runtime/job_spec.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <optional>
#include <span>
#include <sstream>
#include <vector>

#include <toml++/toml.h>

#include <cmath>

#include "gflex/runtime/checkpoint.hpp"
#include "gflex/runtime/digest.hpp"
#include "gflex/runtime/printable_text.hpp"
#include "gflex/runtime/toml_nesting.hpp"

namespace gflex {

namespace {

constexpr std::array<enum_name<inner_optimizer>, 2> k_optimizer_names{{
    {inner_optimizer::adamw, "adamw"},
    {inner_optimizer::sgd, "sgd"},
}};

constexpr std::array<enum_name<lr_schedule>, 2> k_schedule_names{{
    {lr_schedule::cosine, "cosine"},
    {lr_schedule::constant, "constant"},
}};

constexpr std::array<enum_name<trust_tier>, 3> k_trust_tier_names{{
    {trust_tier::hybrid, "hybrid"},
    {trust_tier::core, "core"},
    {trust_tier::community, "community"},
}};

}  // namespace

template <>
std::span<const enum_name<inner_optimizer>> enum_names<inner_optimizer>() noexcept {
  return k_optimizer_names;
}

template <>
std::span<const enum_name<lr_schedule>> enum_names<lr_schedule>() noexcept {
  return k_schedule_names;
}

template <>
std::span<const enum_name<trust_tier>> enum_names<trust_tier>() noexcept {
  return k_trust_tier_names;
}

const char* to_string(inner_optimizer optimizer) noexcept {
  return name_of(optimizer);
}

const char* to_string(lr_schedule schedule) noexcept {
  return name_of(schedule);
}

const char* to_string(trust_tier tier) noexcept {
  return name_of(tier);
}

std::string market_workload(const std::string& workload, const std::string& model_text) {
  if (model_text.empty()) return workload;
  const auto* bytes = reinterpret_cast<const uint8_t*>(model_text.data());
  return workload + "#" + digest_hex({bytes, model_text.size()}).substr(0, 16);
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

// A table a spec may hold and the keys it may hold. Anything else in a spec is an error.
struct table_schema {
  std::string_view name;
  std::vector<std::string_view> keys;
};

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

  // Checks that only the tables and keys of `tables` occur ("model" takes any keys: the kernels
  // check a model). Of several unknown keys the one that comes first in the text is reported,
  // which is the one a user reading top to bottom meets first.
  expected<void> check_structure(std::span<const table_schema> tables) const {
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
      auto it = std::find_if(tables.begin(), tables.end(),
                             [&](const table_schema& t) { return t.name == name; });
      std::string path = key_text(key.str());
      if (it == tables.end()) {
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

  // Reads an enum by its name (enum_names.hpp).
  template <class Enum>
  expected<void> choice(std::string_view table, std::string_view key, Enum& out) const {
    std::optional<std::string> text;
    if (auto r = string(table, key, text); !r) return r;
    if (!text) return {};
    if (auto value = enum_from_name<Enum>(*text)) {
      out = *value;
      return {};
    }
    return fail(std::string(table) + "." + std::string(key),
                "must be one of " + enum_choices<Enum>("\"", ", ") + ", got " + quote(*text));
  }

 private:
  static std::string bounds(int64_t lo, int64_t hi) {
    return "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  }

  const std::string& source_;
  const toml::table& root_;
};

// One key of a job spec, described once: parsing, the structure check and to_toml all read
// the table below, so that no key can be parsed and not written, or written and refused.
struct field {
  std::string_view table;
  std::string_view key;
  // Reads the key into the spec when it is there: a wrong type or a value out of range is an
  // error that names it.
  std::function<expected<void>(const reader&, job_spec&)> read;
  // The key's value as TOML text, or nothing when the spec leaves it unset.
  std::function<std::optional<std::string>(const job_spec&)> write;
};

// A float written without '.' or an exponent would read back as an integer; the parser accepts
// that, but writing "0.0" keeps the file saying what type the key has.
std::string real_text(double x) {
  std::string s = format_double(x);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";  // "nan" and "inf" have an 'n'.
  return s;
}

field integer_field(std::string_view table, std::string_view key, int64_t job_spec::*member,
                    int64_t lo, int64_t hi) {
  return {table, key,
          [=](const reader& in, job_spec& spec) {
            return in.integer(table, key, lo, hi, spec.*member);
          },
          [=](const job_spec& spec) { return std::to_string(spec.*member); }};
}

field real_field(std::string_view table, std::string_view key, double job_spec::*member,
                 real_range range) {
  return {
      table, key,
      [=](const reader& in, job_spec& spec) { return in.number(table, key, range, spec.*member); },
      [=](const job_spec& spec) { return real_text(spec.*member); }};
}

// [trust] tolerance and norm_tolerance: a result outside them flags its node on the whole
// platform and bans its key, so a job may loosen them, never tighten them below the
// platform's (its defaults, set above the worst honest divergence measured): a job's owner
// could otherwise have every honest node that worked for it banned.
field trust_bound_field(std::string_view key, double job_spec::*member, double platform) {
  return {"trust", key,
          [=](const reader& in, job_spec& spec) -> expected<void> {
            if (auto r = in.number("trust", key, {0.0, true, 1.0, false}, spec.*member); !r)
              return r;
            if (spec.*member < platform)
              return in.fail("trust." + std::string(key),
                             "must be in [" + format_double(platform) + ", 1], got " +
                                 format_double(spec.*member) +
                                 ": a tighter bound would flag and ban honest nodes, whose "
                                 "work on other arithmetic differs that much");
            return {};
          },
          [=](const job_spec& spec) { return real_text(spec.*member); }};
}

template <class Enum>
field choice_field(std::string_view table, std::string_view key, Enum job_spec::*member) {
  return {table, key,
          [=](const reader& in, job_spec& spec) { return in.choice(table, key, spec.*member); },
          [=](const job_spec& spec) { return quote(name_of(spec.*member)); }};
}

// A string key; `check` vets a present value, and an empty one is written only with
// `write_empty`.
field text_field(std::string_view table, std::string_view key, std::string job_spec::*member,
                 std::function<expected<void>(const reader&, const std::string&)> check,
                 bool write_empty) {
  return {table, key,
          [=](const reader& in, job_spec& spec) -> expected<void> {
            std::optional<std::string> text;
            if (auto r = in.string(table, key, text); !r || !text) return r;
            if (check)
              if (auto r = check(in, *text); !r) return r;
            spec.*member = std::move(*text);
            return {};
          },
          [=](const job_spec& spec) -> std::optional<std::string> {
            if (!write_empty && (spec.*member).empty()) return std::nullopt;
            return quote(spec.*member);
          }};
}

// A number of credits stored in micro-credits; `unset` (the default) is not written.
field credits_field(std::string_view table, std::string_view key, int64_t job_spec::*member,
                    real_range range, int64_t unset) {
  return {table, key,
          [=](const reader& in, job_spec& spec) -> expected<void> {
            if (in.find(table, key) == nullptr) return {};
            double credits = 0.0;
            if (auto r = in.number(table, key, range, credits); !r) return r;
            spec.*member = std::llround(credits * 1e6);
            // Below half a micro-credit the amount rounds to 0: a max_price of 4e-7 took only
            // nodes that ask nothing, and a budget of it read as none at all.
            if (credits != 0.0 && spec.*member == 0)
              return in.fail(std::string(table) + "." + std::string(key),
                             format_double(credits) +
                                 " credits is less than a micro-credit (0.000001), the "
                                 "smallest amount there is");
            return {};
          },
          [=](const job_spec& spec) -> std::optional<std::string> {
            if (spec.*member == unset) return std::nullopt;
            return real_text(static_cast<double>(spec.*member) / 1e6);
          }};
}

// A job name ends up in log lines, file names and store keys, hence the conservative alphabet.
// A name that logs, statuses and the market's keys carry as it is: 1 to 64 letters, digits,
// '.', '_' and '-'.
expected<void> check_label(const reader& in, const std::string& key, const std::string& name) {
  constexpr size_t max_length = 64;
  if (name.empty()) return in.fail(key, "must not be empty");
  if (name.size() > max_length)
    return in.fail(key, "must be at most " + std::to_string(max_length) + " characters, got " +
                            std::to_string(name.size()));
  bool ok = std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
  if (!ok)
    return in.fail(key, "must use only letters, digits, '.', '_' and '-', got " +
                            quote(printable_text(name.substr(0, max_length))));
  return {};
}

expected<void> check_name(const reader& in, const std::string& name) {
  return check_label(in, "job.name", name);
}

// The paying account: user/NAME, NAME 1-128 of a conservative alphabet (it is a ledger key).
expected<void> check_account(const reader& in, const std::string& a) {
  bool ok = a.size() > 5 && a.size() <= 5 + 128 && a.starts_with("user/");
  for (size_t i = 5; ok && i < a.size(); ++i) {
    char c = a[i];
    ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
  }
  if (!ok)
    return in.fail("market.account",
                   "must be user/NAME (NAME 1-128 of A-Z a-z 0-9 . _ -), got " + quote(a));
  return {};
}

// Every key of a spec but [model]'s, in the order they are read (so that the first error
// reported is stable) and written. The ranges are those job_spec's comments give.
const std::vector<field>& fields() {
  constexpr int64_t max_steps = 100000;
  // From 1e-30: the workers take it as a 32-bit float (down to 5% of it by the schedule),
  // which reads a smaller rate as 0 (or a denormal) and refuses it.
  constexpr real_range learning_rate{1e-30, false, 10.0, false};
  constexpr real_range unit_half_open{0.0, false, 1.0, true};
  constexpr real_range fraction{0.0, true, 1.0, false};
  constexpr real_range unit{0.0, false, 1.0, false};
  static const std::vector<field> table{
      text_field("job", "name", &job_spec::name, check_name, true),
      text_field(
          "job", "workload", &job_spec::workload,
          // Escape codes and line breaks reached the core's log and every status raw.
          [](const reader& in, const std::string& workload) -> expected<void> {
            return check_label(in, "job.workload", workload);
          },
          true),
      integer_field("job", "rounds", &job_spec::rounds, 1, max_steps),
      integer_field("job", "workers", &job_spec::workers, 1, 1024),
      {"job", "seed",
       [](const reader& in, job_spec& spec) {
         // A TOML integer is signed 64-bit, so a seed is non-negative and below 2^63.
         int64_t seed = static_cast<int64_t>(spec.seed);
         auto r = in.integer("job", "seed", 0, std::numeric_limits<int64_t>::max(), seed);
         if (r) spec.seed = static_cast<uint64_t>(seed);
         return r;
       },
       [](const job_spec& spec) { return std::to_string(spec.seed); }},
      choice_field("inner", "optimizer", &job_spec::inner),
      integer_field("inner", "local_steps", &job_spec::local_steps, 1, max_steps),
      integer_field("inner", "batch_size", &job_spec::batch_size, 1, 65536),
      real_field("inner", "lr", &job_spec::inner_lr, learning_rate),
      real_field("inner", "weight_decay", &job_spec::weight_decay, unit_half_open),
      choice_field("inner", "lr_schedule", &job_spec::schedule),
      choice_field("inner", "precision", &job_spec::precision),
      real_field("outer", "lr", &job_spec::outer_lr, learning_rate),
      real_field("outer", "momentum", &job_spec::outer_momentum, unit_half_open),
      choice_field("wire", "compression", &job_spec::compression),
      integer_field("eval", "every", &job_spec::eval_every, 1, max_steps),
      // From a second: less timed every assignment out at once (under a millisecond, a
      // request of no time at all), round after round, cooling each node down as it failed.
      real_field("round", "deadline_s", &job_spec::deadline_s, {1.0, false, max_deadline_s, false}),
      real_field("round", "quorum", &job_spec::quorum, fraction),
      real_field("round", "backup_after", &job_spec::backup_after, {0.0, false, 100.0, false}),
      choice_field("trust", "tier", &job_spec::tier),
      trust_bound_field("tolerance", &job_spec::tolerance, job_spec{}.tolerance),
      trust_bound_field("norm_tolerance", &job_spec::norm_tolerance, job_spec{}.norm_tolerance),
      real_field("trust", "norm_bound", &job_spec::norm_bound, {1.5, false, 1000.0, false}),
      real_field("trust", "min_cosine", &job_spec::min_cosine, {-1.0, false, 1.0, false}),
      {"trust", "clip",
       [](const reader& in, job_spec& spec) -> expected<void> {
         if (auto r = in.number("trust", "clip", {0.0, false, 1000.0, false}, spec.clip); !r)
           return r;
         if (spec.clip > 0.0 && spec.clip < 1.0)
           return in.fail("trust.clip",
                          "must be 0 (off) or in [1, 1000], got " + format_double(spec.clip));
         return {};
       },
       [](const job_spec& spec) { return real_text(spec.clip); }},
      real_field("trust", "trim", &job_spec::trim, {0.0, false, 0.5, true}),
      text_field("market", "account", &job_spec::account, check_account, false),
      credits_field("market", "budget", &job_spec::budget, {0.0, true, 1e12, false}, 0),
      credits_field("market", "max_price", &job_spec::max_price, {0.0, false, 1e6, false}, -1),
      real_field("market", "min_reputation", &job_spec::min_reputation, unit),
      real_field("market", "deadline_h", &job_spec::deadline_h, {0.0, false, 100000.0, false}),
      text_field("data", "set", &job_spec::data_set, nullptr, false),
  };
  return table;
}

// The tables a spec may hold and their keys, from the fields, and [model] with any keys.
const std::vector<table_schema>& tables() {
  static const std::vector<table_schema> schema = [] {
    std::vector<table_schema> out;
    for (const field& f : fields()) {
      if (out.empty() || out.back().name != f.table) out.push_back({f.table, {}});
      out.back().keys.push_back(f.key);
    }
    out.push_back({"model", {}});
    return out;
  }();
  return schema;
}

expected<job_spec> read_spec(const reader& in) {
  if (auto r = in.check_structure(tables()); !r) return r.error();
  job_spec spec;
  for (const field& f : fields())
    if (auto r = f.read(in, spec); !r) return r.error();

  // What one key alone cannot say.
  const toml::table* model = in.table("model");
  if (model != nullptr) {
    // Canonical text: what the formatter writes parses back to the same text. Written as a
    // [model] section however it was given: an inline `model = { ... }` came out as a key,
    // which to_toml put under [data] (and the same model had two texts, two market names).
    toml::table section = *model;
    section.is_inline(false);
    std::ostringstream text;
    text << toml::toml_formatter(
        toml::table{{"model", std::move(section)}},
        toml::toml_formatter::default_flags & ~toml::format_flags::indentation);
    spec.model = text.str() + "\n";
    if (in.find("job", "workload") == nullptr) {
      const auto* label = model->get_as<std::string>("name");
      spec.workload = label != nullptr && !label->get().empty() ? label->get() : "model";
      if (auto ok = check_label(in, "model.name", spec.workload); !ok) return ok.error();
    }
  }
  if (spec.workload.empty())
    return in.fail("job.workload", "missing (required without a [model] table)");
  // Plain SGD steps by the gradient alone: a decay given with it would be silently ignored.
  if (spec.inner == inner_optimizer::sgd && spec.weight_decay != 0.0)
    return in.fail("inner.weight_decay",
                   "applies to inner.optimizer = \"adamw\" only (plain "
                   "SGD would ignore it)");
  // AdamW's decay multiplies every parameter by 1 - lr x weight_decay each step: at 1 or more
  // the job ran, and was billed, flipping or zeroing its model step after step.
  // Checked as the nodes compute it, in float: lr 1 and weight_decay 0.99999999 pass in
  // double, and round to a factor of exactly 0 in float.
  if (spec.inner_lr * spec.weight_decay >= 1.0 ||
      1.0f - static_cast<float>(spec.inner_lr) * static_cast<float>(spec.weight_decay) <= 0.0f)
    return in.fail("inner.weight_decay",
                   format_double(spec.weight_decay) + " times inner.lr " +
                       format_double(spec.inner_lr) +
                       " is 1 or more: each step would multiply every parameter by 1 - lr x "
                       "weight_decay, which is not positive");
  if (model != nullptr && spec.data_set.empty())
    return in.fail("data.set", "missing (a [model] needs the data set it trains on)");
  if (model == nullptr && in.find("data", "set") != nullptr)
    return in.fail("data.set",
                   "only a job with a [model] names its data (a built-in workload "
                   "brings its own)");
  if (!spec.account.empty()) {
    if (spec.budget == 0) return in.fail("market.budget", "required with market.account");
    if (spec.max_price < 0) return in.fail("market.max_price", "required with market.account");
    if (spec.budget < round_escrow(spec))
      return in.fail("market.budget",
                     format_double(static_cast<double>(spec.budget) / 1e6) +
                         " credits is less than one round's escrow, " +
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
  return read_spec(reader(source, root));
}

expected<job_spec> load_job_spec(const std::filesystem::path& file) {
  // Read no further than a spec may go: the path may name a pipe or a device that never ends.
  auto bytes = read_file(file, max_job_spec_bytes);
  if (!bytes) {
    if (bytes.error().message().ends_with(": is a directory"))
      return error(errc::io_error, file.string() + ": is a directory, not a job spec");
    return bytes.error();
  }
  return parse_job_spec(
      std::string_view(reinterpret_cast<const char*>(bytes->data()), bytes->size()), file.string());
}

std::string to_toml(const job_spec& spec) {
  std::string out;
  std::string_view table;
  for (const field& f : fields()) {
    const std::optional<std::string> value = f.write(spec);
    if (!value) continue;
    if (f.table != table) {
      out += out.empty() ? "[" : "\n[";
      out.append(f.table).append("]\n");
      table = f.table;
    }
    out.append(f.key).append(" = ").append(*value).append("\n");
  }
  if (!spec.model.empty()) out += "\n" + spec.model;
  return out;
}

int64_t quorum_results(const job_spec& spec) {
  const double exact = spec.quorum * static_cast<double>(spec.workers);
  // A fraction given in decimal (at most 1e-9 apart from its double) never needs one more.
  const auto n = static_cast<int64_t>(std::ceil(exact - 1e-9 * std::max(1.0, exact)));
  return std::clamp<int64_t>(n, 1, std::max<int64_t>(spec.workers, 1));
}

}  // namespace gflex
