#include <doctest/doctest.h>

#include <set>
#include <string>

#include "gflex/job_status.hpp"
#include "gflex/runtime/dtype.hpp"
#include "gflex/runtime/error.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/precision.hpp"
#include "gflex/runtime/update_codec.hpp"

using namespace gflex;

namespace {

// Every value of the table has a distinct name that parses back to it, and to_string (what
// the program prints) says the table's name. `count` is the number of values the enum has:
// a value added to the enum but not to its table fails here.
template <class Enum>
void check_table(size_t count) {
  const auto names = enum_names<Enum>();
  CHECK(names.size() == count);
  std::set<std::string> seen;
  std::set<int> values;
  for (const auto& entry : names) {
    INFO("name: " << entry.name);
    CHECK(seen.insert(entry.name).second);
    CHECK(values.insert(static_cast<int>(entry.value)).second);
    CHECK(std::string(to_string(entry.value)) == entry.name);
    CHECK(is_named(entry.value));
    auto back = enum_from_name<Enum>(entry.name);
    REQUIRE(back.has_value());
    CHECK(*back == entry.value);
  }
  CHECK_FALSE(enum_from_name<Enum>("").has_value());
  CHECK_FALSE(enum_from_name<Enum>("no such name").has_value());
}

}  // namespace

TEST_SUITE("enum_names") {
  TEST_CASE("every enum's names are distinct, complete and parse back") {
    check_table<errc>(16);
    check_table<dtype>(4);
    check_table<math_precision>(3);
    check_table<compression>(2);
    check_table<inner_optimizer>(2);
    check_table<lr_schedule>(2);
    check_table<trust_tier>(3);
    check_table<job_state>(6);
    check_table<node_tier>(2);
  }

  TEST_CASE("a value outside the table has no name and prints as unknown") {
    const auto odd = static_cast<job_state>(200);
    CHECK_FALSE(is_named(odd));
    CHECK(std::string(to_string(odd)) == "unknown");
    CHECK(std::string(name_of(static_cast<node_tier>(9), "?")) == "?");
  }

  TEST_CASE("choices list the names for messages, and the parsers use them") {
    CHECK(enum_choices<math_precision>() == "fp32, tf32 or bf16");
    CHECK(enum_choices<trust_tier>("\"", ", ") == "\"hybrid\", \"core\", \"community\"");
    CHECK(enum_choices<job_state>() == "queued, running, paused, done, failed or cancelled");
    auto tier = parse_node_tier("gold");
    REQUIRE_FALSE(tier.has_value());
    CHECK(tier.error().message() == "tier must be \"community\" or \"core\", got \"gold\"");
    CHECK(parse_compression("int8").value() == compression::int8);
    CHECK(parse_math_precision("bf16").value() == math_precision::bf16);
  }

  TEST_CASE("job states: which are terminal") {
    CHECK_FALSE(is_terminal(job_state::queued));
    CHECK_FALSE(is_terminal(job_state::running));
    CHECK_FALSE(is_terminal(job_state::paused));
    CHECK(is_terminal(job_state::done));
    CHECK(is_terminal(job_state::failed));
    CHECK(is_terminal(job_state::cancelled));
  }
}
