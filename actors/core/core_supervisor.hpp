#pragma once
/// @file
/// The core supervisor: the root of a core's actor tree (store, market, data server,
/// registry, job supervisor) and the actor that nodes and clients talk to.
///
/// Protocol:
/// - (hello_atom, node_hello) -> node_welcome, or errc::invalid_argument when the node speaks
///   another protocol version (checked before anything else in the hello is looked at).
///   Then the signature, the join token (the gatekeeper) and the name's key binding (the
///   reputation tracker) are checked, errc::permission_denied for each.
/// - Client requests (submit, status, jobs, cancel, fetch, topup, account; the operator's
///   open, creditin, token, revoke, ledger, nodes) carry an API key after the atom; the
///   gatekeeper resolves it to a principal, and the job supervisor, ledger keeper or
///   gatekeeper answers for that principal (docs/PROTOCOL.md). The key is resolved anew for
///   every request, so a key replaced or revoked is refused from the next one on.
/// - The operator's (update_atom, key, api_key_atom, user/NAME) -> new API key and
///   (revoke_atom, key, api_key_atom, user/NAME) -> ok_atom replace or delete an account's
///   key (gatekeeper.hpp); an account the ledger does not hold is errc::invalid_argument.
///
/// It supervises its children one for one: each is monitored and, when it dies, restarted
/// from what it persists or can rebuild, and the siblings holding its handle are told
/// (update_atom, role, new actor). More than 5 restarts a minute stop the core.

#include <caf/fwd.hpp>

#include "gflex/gflex.hpp"

namespace gflex {

/// Checks `config` as gflex-core checks its flags: values out of their ranges (an embedding
/// program sets them directly) and settings valid alone but not together.
expected<void> check_core_config(const core_config& config);

/// Spawns a core's actor tree; fails when the store cannot be opened or the config does not
/// pass check_core_config.
expected<caf::actor> spawn_core(caf::actor_system& sys, const core_config& config);

}  // namespace gflex
