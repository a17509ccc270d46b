#pragma once
/// @file
/// An actor system configured as the programs configure theirs (the project's messages
/// registered, the middleman loaded), with a blocking actor to ask from; for fixtures of the
/// actor tests.

#include <caf/all.hpp>

#include "messages.hpp"

namespace gflex::test {

struct configured_system {
  static caf::actor_system_config& configured(caf::actor_system_config& cfg) {
    configure_actor_system(cfg);
    return cfg;
  }

  caf::actor_system_config cfg;
  caf::actor_system sys{configured(cfg)};
  caf::scoped_actor self{sys};
};

}  // namespace gflex::test
