#pragma once
/// @file
/// The data server actor: serves shard chunks to nodes by content address.
///
/// Protocol: (chunk_atom, digest) -> bytes, or errc::invalid_argument for a name that is not
/// a digest and errc::io_error for a digest the core does not serve.

#include <caf/fwd.hpp>

#include <memory>

namespace gflex {

class data_catalog;

caf::actor spawn_data_server(caf::actor_system& sys, std::shared_ptr<data_catalog> catalog);

}  // namespace gflex
