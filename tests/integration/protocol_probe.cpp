/// @file
/// Speaks the wire protocol to a real core process (GFLEX_TEST_CORE=host:port, started by
/// protocol.sh with one honest node) and checks that bad input gets a clear error and
/// changes no state: malformed job specs, an unknown workload, a node with another protocol
/// version, no workers or a forged core-tier credential, chunk names that are not digests,
/// and rogue workers whose results are of the wrong size, hold NaN, name another assignment
/// or are not an update (each rogue is flagged at once and never credited). Everything runs
/// over TLS pinned to the core's bundle (GFLEX_CORE_CERT). (security.sh tests tokens and
/// clients' authorization with real processes: one process is one CAF node, and a core
/// takes a second connection from the same node for the first.)

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <caf/io/middleman.hpp>
#include <caf/openssl/remote_actor.hpp>

#include <atomic>
#include <cmath>
#include <map>
#include <thread>

#include "gflex/gflex.hpp"
#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "link_security.hpp"
#include "messages.hpp"

using namespace gflex;

namespace {

struct core_address {
  std::string host;
  uint16_t port = 0;
};

std::string env_or_fail(const char* name) {
  const char* v = std::getenv(name);
  REQUIRE_MESSAGE(v != nullptr, "set " << name << " (protocol.sh does)");
  return v;
}

// A client of the test core with the operator's key (GFLEX_API_KEY).
expected<client> connect_operator() {
  client_options o;
  o.api_key = env_or_fail("GFLEX_API_KEY");
  o.core_cert = env_or_fail("GFLEX_CORE_CERT");
  auto where = std::getenv("GFLEX_TEST_CORE");
  REQUIRE(where != nullptr);
  std::string text = where;
  auto colon = text.rfind(':');
  return client::connect(text.substr(0, colon),
                         static_cast<uint16_t>(std::stoi(text.substr(colon + 1))), o);
}

// The community-tier join token protocol.sh made.
std::string community_token() {
  return env_or_fail("GFLEX_TEST_TOKEN");
}

core_address test_core() {
  const char* env = std::getenv("GFLEX_TEST_CORE");
  REQUIRE_MESSAGE(env != nullptr, "set GFLEX_TEST_CORE=host:port (protocol.sh does)");
  std::string text = env;
  auto colon = text.rfind(':');
  return {text.substr(0, colon), static_cast<uint16_t>(std::stoi(text.substr(colon + 1)))};
}

// An actor system connected to the core, for talking to it as a node would.
struct peer {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  caf::actor core;
  peer() {
    configure_actor_system(cfg);
    auto tls = configure_peer_tls(cfg, env_or_fail("GFLEX_CORE_CERT"));
    REQUIRE_MESSAGE(tls.has_value(), tls.error().message());
    sys = std::make_unique<caf::actor_system>(cfg);
    auto where = test_core();
    auto c = caf::openssl::remote_actor(*sys, where.host, where.port);
    if (!c) FAIL("cannot reach the core: " << sys->render(c.error()));
    core = *c;
  }
};

const char* small_job = R"([job]
name = "probe"
workload = "fashion-mlp"
rounds = 4
workers = 2
[inner]
local_steps = 5
batch_size = 32
[wire]
compression = "fp32"
)";

// Submits small_job to the test core and follows it until it ends (two minutes at most).
job_status run_small_job() {
  auto c = connect_operator();
  REQUIRE(c.has_value());
  auto id = c->submit(small_job);
  REQUIRE_MESSAGE(id.has_value(), id.error().message());
  job_status s;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    auto st = c->status(*id);
    REQUIRE(st.has_value());
    s = *st;
  } while (!is_terminal(s.state) && std::chrono::steady_clock::now() < deadline);
  return s;
}

node_hello make_hello(uint32_t protocol, std::string name, std::vector<caf::actor> workers,
                      caf::actor uplink, uint8_t tier = 0, std::string credential = "-",
                      const node_identity& key = node_identity::generate()) {
  node_hello h;
  h.public_key = key.public_key();
  h.proof = key.sign(hello_message(protocol, name));
  h.protocol = protocol;
  h.name = std::move(name);
  h.device = "cpu";
  h.workers = std::move(workers);
  h.uplink = std::move(uplink);
  h.tier = tier;
  h.credential = credential == "-" ? community_token() : std::move(credential);
  return h;
}

// One key per node name for the whole run: doctest re-runs a test case for each subcase, and a
// name stays bound to the key it first joined with.
const node_identity& key_of(const std::string& name) {
  static std::map<std::string, node_identity> keys;
  auto it = keys.find(name);
  if (it == keys.end()) it = keys.emplace(name, node_identity::generate()).first;
  return it->second;
}

// Answers every assignment with an error: a node that joins but never computes.
caf::behavior idle_worker(caf::event_based_actor*) {
  return {
      [=](assign_atom, const assignment&) -> caf::result<assignment_result> {
        return to_caf(error(errc::io_error, "this worker does not compute"));
      },
  };
}

// Answers every assignment with a result that must be rejected, in the way `mode` names,
// signed with the node's key `key` (mode 4: with another key).
caf::behavior rogue_worker(caf::event_based_actor*, int mode,
                           std::shared_ptr<std::atomic<int>> answered,
                           std::shared_ptr<const node_identity> key) {
  return {
      [=](assign_atom, const assignment& a) -> assignment_result {
        answered->fetch_add(1);
        assignment_result r;
        r.assignment_id = a.id;
        r.loss = 1.0;
        r.samples = 1;
        std::vector<float> update(535818, 0.0f);
        switch (mode) {
          case 0:  // too few values
            update.resize(1000);
            r.update = encode_update(update, compression::fp32);
            break;
          case 1: {  // NaN inside an otherwise well-formed update
            r.update = encode_update(update, compression::fp32);
            float nan = std::nanf("");
            std::memcpy(r.update.data() + r.update.size() - 64, &nan, sizeof nan);
            break;
          }
          case 2:  // answers for an assignment it was not given
            r.assignment_id = a.id ^ 0x5a5a5a5a;
            r.update = encode_update(update, compression::fp32);
            break;
          case 3:  // not an update at all
            r.update = std::vector<uint8_t>(64, 0xAB);
            break;
          default:  // a well-formed update, signed by a key that is not the node's
            r.update = encode_update(update, compression::fp32);
            r.signature = node_identity::generate().sign(result_message(r.assignment_id, r.update));
            return r;
        }
        r.signature = key->sign(result_message(r.assignment_id, r.update));
        return r;
      },
  };
}

// Kills the job actor that sent it the first assignment, then behaves.
caf::behavior job_killer(caf::event_based_actor* self, std::shared_ptr<std::atomic<int>> kills) {
  return {
      [=](assign_atom, const assignment&) -> caf::result<assignment_result> {
        if (kills->fetch_add(1) == 0) {
          auto job = caf::actor_cast<caf::actor>(self->current_sender());
          self->send_exit(job, caf::exit_reason::kill);
        }
        return to_caf(error(errc::io_error, "this worker does not compute"));
      },
  };
}

caf::behavior heartbeat(caf::event_based_actor* self, caf::actor registry, std::string node) {
  self->send(self, tick_atom::value);
  return {[=](tick_atom) {
    self->send(registry, beat_atom::value, node);
    self->delayed_send(self, std::chrono::milliseconds(300), tick_atom::value);
  }};
}

}  // namespace

TEST_CASE("malformed job specs and unknown workloads are refused and change nothing") {
  auto c = connect_operator();
  REQUIRE(c.has_value());
  auto before = c->jobs();
  REQUIRE(before.has_value());
  auto bad = c->submit("[job]\nworkload = \"fashion-mlp\"\n[inner]\nbatch_size = \"big\"\n");
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().code() == errc::invalid_argument);
  CHECK(bad.error().message().find("inner.batch_size") != std::string::npos);
  auto syntax = c->submit("[job\n");
  REQUIRE_FALSE(syntax.has_value());
  CHECK(syntax.error().message().find("invalid TOML") != std::string::npos);
  auto unknown = c->submit("[job]\nworkload = \"imagenet-vit\"\n");
  REQUIRE_FALSE(unknown.has_value());
  CHECK(unknown.error().code() == errc::unknown_workload);
  CHECK(unknown.error().message().find("imagenet-vit") != std::string::npos);
  auto after = c->jobs();
  REQUIRE(after.has_value());
  CHECK(after->size() == before->size());
}

TEST_CASE("a node with another protocol version or no workers is refused") {
  peer p;
  caf::scoped_actor self{*p.sys};
  auto worker = p.sys->spawn([]() -> caf::behavior { return {[](int) {}}; });
  auto ask = [&](node_hello h) {
    std::string refusal;
    self->request(p.core, std::chrono::seconds(10), hello_atom::value, std::move(h))
        .receive([&](node_welcome&) { refusal = ""; },
                 [&](caf::error& e) { refusal = from_caf(e).message(); });
    return refusal;
  };
  node_hello wrong = make_hello(protocol_version + 1, "probe", {worker}, worker);
  auto refusal = ask(wrong);
  CHECK_MESSAGE(refusal.find("protocol version " + std::to_string(protocol_version + 1) +
                             " is not supported") != std::string::npos,
                refusal);
  CHECK(ask(make_hello(protocol_version, "probe", {}, worker)).find("1-1024 workers") !=
        std::string::npos);
  CHECK_FALSE(ask(make_hello(protocol_version, "", {worker}, worker)).empty());
  CHECK(ask(make_hello(protocol_version, "probe", {worker}, worker, 7)).find("unknown tier") !=
        std::string::npos);
  // A hello signed by another key than the one it presents, and a name that belongs to
  // another node's key, are refused.
  auto forged_key = make_hello(protocol_version, "probe", {worker}, worker);
  forged_key.proof = node_identity::generate().sign(hello_message(protocol_version, "probe"));
  auto why = ask(forged_key);
  CHECK_MESSAGE(why.find("signature does not match") != std::string::npos, why);
  why = ask(make_hello(protocol_version, "honest", {worker}, worker));
  CHECK_MESSAGE(why.find("belongs to another node key") != std::string::npos, why);
  self->send_exit(worker, caf::exit_reason::user_shutdown);
}

TEST_CASE("rogue workers' results are rejected, reassigned, never applied nor credited") {
  peer p;
  caf::scoped_actor self{*p.sys};
  auto idle = p.sys->spawn(idle_worker);
  auto join = [&](const std::string& name, caf::actor worker,
                  const node_identity& key = key_of("idle")) {
    node_welcome welcome;
    self->request(p.core, std::chrono::seconds(10), hello_atom::value,
                  make_hello(protocol_version, name, {worker}, worker, 0, "-", key))
        .receive([&](node_welcome& w) { welcome = std::move(w); },
                 [&](caf::error& e) { FAIL("join refused: " << p.sys->render(e)); });
    return welcome;
  };
  node_welcome welcome = join("idle", idle);
  auto beats = p.sys->spawn(heartbeat, welcome.registry, welcome.node_id);

  SUBCASE("chunk names that are not digests are refused") {
    for (std::string name : {std::string("../../etc/passwd"), std::string(64, 'Z')}) {
      std::string why;
      self->request(welcome.data_server, std::chrono::seconds(10), chunk_atom::value, name)
          .receive([&](std::vector<uint8_t>&) { why = "served"; },
                   [&](caf::error& e) { why = from_caf(e).message(); });
      CHECK(why.find("not a chunk digest") != std::string::npos);
    }
    std::string why;
    self->request(welcome.data_server, std::chrono::seconds(10), chunk_atom::value,
                  std::string(64, '0'))
        .receive([&](std::vector<uint8_t>&) { why = "served"; },
                 [&](caf::error& e) { why = from_caf(e).message(); });
    CHECK(why.find("no chunk") != std::string::npos);
  }

  SUBCASE("a job actor killed mid-round is restarted from its checkpoint") {
    auto kills = std::make_shared<std::atomic<int>>(0);
    auto killer = p.sys->spawn(job_killer, kills);
    self->send(welcome.registry, offer_atom::value, welcome.node_id,
               std::vector<caf::actor>{killer});
    job_status s = run_small_job();
    CHECK(kills->load() >= 1);
    CHECK(s.state == "done");
    CHECK(s.round == 4);
    self->send_exit(killer, caf::exit_reason::user_shutdown);
  }

  SUBCASE("a killed registry and data server are restarted and nodes join again") {
    self->send_exit(welcome.registry, caf::exit_reason::kill);
    self->send_exit(welcome.data_server, caf::exit_reason::kill);
    auto c = connect_operator();
    REQUIRE(c.has_value());
    // The honest node joins the new registry by itself (its id gets the new prefix).
    bool rejoined = false;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!rejoined && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      auto nodes = c->nodes();
      if (!nodes) continue;
      for (const auto& n : *nodes)
        rejoined |= n.name == "honest" && n.node_id.find('-') != std::string::npos;
    }
    CHECK(rejoined);
    auto s = run_small_job();
    CHECK(s.state == "done");
    CHECK(s.round == 4);
  }

  SUBCASE("bad results") {
    // Five rogue nodes, one per kind of bad result (the fifth signs with a key not its own). Each
    // is caught at its first answer, flagged and given no more work; the honest core-tier node
    // finishes the job.
    const char* names[] = {"rogue-size", "rogue-nan", "rogue-id", "rogue-garbage", "rogue-forger"};
    auto answered = std::make_shared<std::atomic<int>>(0);
    std::vector<caf::actor> rogues;
    for (int mode = 0; mode < 5; ++mode) {
      auto key = std::make_shared<const node_identity>(key_of(names[mode]));
      rogues.push_back(p.sys->spawn(rogue_worker, mode, answered, key));
      auto w = join(names[mode], rogues.back(), *key);
      rogues.push_back(p.sys->spawn(heartbeat, w.registry, w.node_id));
    }
    job_status s = run_small_job();
    CHECK(s.state == "done");
    CHECK(s.round == 4);
    CHECK(answered->load() >= 1);
    CHECK(s.rejected_results == static_cast<uint64_t>(answered->load()));
    CHECK(std::isfinite(s.test_accuracy));
    CHECK(s.test_accuracy > 0.5);  // only the honest node's updates were applied
    auto c = connect_operator();
    REQUIRE(c.has_value());
    auto nodes = c->nodes();
    REQUIRE(nodes.has_value());
    int flagged = 0;
    for (const auto& n : *nodes) {
      if (n.name.starts_with("rogue-") && n.rejected > 0) {
        CHECK(n.flagged);
        CHECK(n.validated == 0);
        CHECK(n.credited_s == 0.0);
        flagged += 1;
      }
      if (n.name == "honest") {
        CHECK_FALSE(n.flagged);
        CHECK(n.tier == "core");
      }
    }
    CHECK(flagged == answered->load());
    MESSAGE("rogues answered " << answered->load() << " assignment(s), all rejected; " << flagged
                               << " flagged; accuracy " << s.test_accuracy);
    for (auto& r : rogues) self->send_exit(r, caf::exit_reason::user_shutdown);
  }
  self->send_exit(beats, caf::exit_reason::user_shutdown);
  self->send_exit(idle, caf::exit_reason::user_shutdown);
}
