/// @file
/// The names of job states and node tiers (gflex/job_status.hpp): one table each, read by
/// both printing and parsing.

#include <array>
#include <string>

#include "gflex/job_status.hpp"

namespace gflex {

namespace {

constexpr std::array<enum_name<job_state>, 6> k_job_state_names{{
    {job_state::queued, "queued"},
    {job_state::running, "running"},
    {job_state::paused, "paused"},
    {job_state::done, "done"},
    {job_state::failed, "failed"},
    {job_state::cancelled, "cancelled"},
}};

constexpr std::array<enum_name<node_tier>, 2> k_node_tier_names{{
    {node_tier::community, "community"},
    {node_tier::core, "core"},
}};

}  // namespace

template <>
std::span<const enum_name<job_state>> enum_names<job_state>() noexcept {
  return k_job_state_names;
}

template <>
std::span<const enum_name<node_tier>> enum_names<node_tier>() noexcept {
  return k_node_tier_names;
}

const char* to_string(job_state state) noexcept {
  return name_of(state);
}

const char* to_string(node_tier tier) noexcept {
  return name_of(tier);
}

expected<node_tier> parse_node_tier(std::string_view text) {
  if (auto tier = enum_from_name<node_tier>(text)) return *tier;
  return error(errc::invalid_argument, "tier must be " + enum_choices<node_tier>("\"") +
                                           ", got \"" + std::string(text) + "\"");
}

}  // namespace gflex
