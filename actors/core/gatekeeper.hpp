#pragma once
/// @file
/// The gatekeeper: a child of the core that decides who may do what. It knows the operator's
/// key, the accounts' API keys and the join tokens (their digests, in LMDB through the
/// store), and counts failed joins per address.
///
/// Protocol:
/// - (auth_atom, api_key) -> principal: "operator" or the key's account (user/NAME); an
///   unknown or malformed key is errc::permission_denied.
/// - (api_key_atom, account) -> api_key: the key of `account`, made and recorded at once; an
///   account that has a key already is refused (one key per account).
/// - (update_atom, api_key_atom, account) -> api_key: a new key of `account`, recorded in the
///   commit that deletes its old one (if any): the old key is refused from then on.
/// - (revoke_atom, api_key_atom, account) -> ok_atom: deletes the key of `account` (ok when it
///   has none); no key opens the account until it is given one again (update or create).
///   Making, replacing and revoking one account's key happen one at a time; another asked
///   meanwhile is refused (errc::unavailable), to be tried again.
/// - (token_atom, tier, lifetime_s, uses) -> token: a new join token (lifetime 0: no expiry)
///   that admits `uses` node keys (0: any number); it binds to the keys that use it.
/// - (token_atom) -> std::vector<join_token_record>: every token's record, newest last.
/// - (revoke_atom, id) -> ok_atom: revokes the token whose id (or a prefix of it, of at
///   least 6 digits, naming one token) is `id`.
/// - (admit_atom, token, tier, address, bool proof_ok, key hex) -> ok_atom: whether a node
///   that signed its hello (proof_ok) with `key` may join `tier` with `token` (the key is not
///   banned; the token is bound to it or has a use left); failures are counted per address,
///   and an address with many recent failures waits for its answer (at most 1024 wait, 16 per
///   address). A signed hello whose key joined before is counted, and waits, by its key's
///   failures instead of its address's, in slots of its own.
/// - (bar_atom, key hex, name) from the reputation tracker: the node was caught; its key is
///   banned and every token bound to it closed to new keys.
/// The records are read from the store when asked, so a revocation holds at once (for a key:
/// from the next request of a client session opened with it, each request being authenticated
/// anew) and a restarted gatekeeper needs no warm-up.

#include <caf/fwd.hpp>

#include <string>

namespace gflex {

caf::actor spawn_gatekeeper(caf::actor_system& sys, caf::actor store, std::string operator_key);

}  // namespace gflex
