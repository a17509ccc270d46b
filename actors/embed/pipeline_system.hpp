#pragma once
/// @file
/// The actor system of a pipeline's process or of one of its worker processes.

#include <caf/fwd.hpp>

namespace gflex::pipeline::detail {

/// Configures `cfg` for a pipeline: with `network`, the middleman and the messages that cross
/// processes, and the closing of links that go silent (as the runtime's own links).
void configure_pipeline_system(caf::actor_system_config& cfg, bool network);

}  // namespace gflex::pipeline::detail
