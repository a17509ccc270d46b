/// @file
/// The hostile-node suite. Speaks the wire protocol to a real core process
/// (GFLEX_TEST_CORE=host:port, started by protocol.sh with one honest core-tier node) as a
/// volunteer that joined with a valid community token and then attacks everything it can
/// reach: the front door and its own session (docs/SECURITY.md, "The boundary"). It sends
/// them exit messages of every kind, forged down and error messages, the verbs of the old
/// protocol (re-hello as core tier, offers and bye for other nodes, swapping a job's
/// verifier, verification requests, withdrawing other nodes), the core's internal verbs,
/// a flood of chunk requests and a 100 MB device string; rogue nodes answer assignments
/// with malformed results, a NaN or huge compute time; a used single-use token and a banned
/// node returning under a new name are tried. Each attack is refused or ignored, the core
/// stays up, the honest node keeps its work and reputation, a job run beside the attacks
/// finishes with normal accuracy and the ledger verifies. (test_boundary.cpp shows that
/// the same exit and error messages kill an unguarded actor over the network.) Everything
/// runs over TLS pinned to the core's bundle (GFLEX_CORE_CERT).

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <caf/io/middleman.hpp>
#include <caf/openssl/remote_actor.hpp>

#include <atomic>
#include <cmath>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "access.hpp"
#include "gflex/gflex.hpp"
#include "gflex/runtime/credits.hpp"
#include "gflex/runtime/digest.hpp"
#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/shard.hpp"
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

node_hello make_hello(uint32_t protocol, std::string name, uint32_t workers, caf::actor uplink,
                      uint8_t tier = 0, std::string credential = "-",
                      const node_identity& key = node_identity::generate()) {
  node_hello h;
  h.public_key = key.public_key();
  h.proof = key.sign(hello_message(protocol, name));
  h.protocol = protocol;
  h.name = std::move(name);
  h.device = "cpu";
  h.workers = workers;
  h.uplink = std::move(uplink);
  h.tier = tier;
  h.credential = credential == "-" ? community_token() : std::move(credential);
  return h;
}

// One key per node name for the whole run: a name stays bound to the key it first joined with.
const node_identity& key_of(const std::string& name) {
  static std::map<std::string, node_identity> keys;
  auto it = keys.find(name);
  if (it == keys.end()) it = keys.emplace(name, node_identity::generate()).first;
  return it->second;
}

// What a fake node saw: assignments answered, and why the core ended its session.
struct node_log {
  std::atomic<int> answered{0};
  std::atomic<int> aborted{0};  // aborts its session passed on
  std::mutex mutex;
  std::string bye;
  std::string shard;                       // the digest of a data chunk it was told to train on
  std::atomic<size_t> update_bytes{0};     // the size of the last update it announced as chunks
  std::vector<std::string> params_chunks;  // hold: the chunks of its assignment's parameters
  std::string last_bye() {
    std::lock_guard<std::mutex> lock(mutex);
    return bye;
  }
};

enum class answer_mode {
  idle,          // every assignment fails: a node that joins but never computes
  short_update,  // too few values
  nan_update,    // NaN inside an otherwise well-formed update
  other_id,      // names an assignment it was not given
  garbage,       // not an update at all
  forged_key,    // signed by a key that is not the node's
  nan_compute,   // compute_s is NaN
  chunk_lie,     // announces its update as chunks of far more bytes than any update can have
  chunk_forged,  // announces its real update's chunk, then sends other bytes for it
  hold,          // keeps its assignment (never answers), noting its parameters' chunks
};

// A fake node's uplink: what its session sends assignments to.
caf::behavior fake_uplink(caf::event_based_actor* self, answer_mode mode,
                          std::shared_ptr<node_log> log, std::shared_ptr<const node_identity> key) {
  // hold: the answers it owes, kept (never delivered) so that the assignments stay out.
  auto owed = std::make_shared<std::vector<caf::response_promise>>();
  return {
      [=](assign_atom, uint32_t, const assignment& a) -> caf::result<assignment_result> {
        if (mode == answer_mode::hold) {
          {
            std::lock_guard<std::mutex> lock(log->mutex);
            log->params_chunks = a.params_chunks;
          }
          owed->push_back(self->make_response_promise());
          return caf::delegated<assignment_result>();
        }
        {
          std::lock_guard<std::mutex> lock(log->mutex);
          log->shard = a.shard;
        }
        if (mode == answer_mode::idle)
          return to_caf(error(errc::io_error, "this worker does not compute"));
        log->answered.fetch_add(1);
        assignment_result r;
        r.assignment_id = a.id;
        r.loss = 1.0;
        r.samples = 1;
        r.compute_s = 0.01;
        std::vector<float> update(535818, 0.0f);
        const node_identity* signer = key.get();
        node_identity other = node_identity::generate();
        switch (mode) {
          case answer_mode::short_update:
            update.resize(1000);
            r.update = encode_update(update, compression::fp32);
            break;
          case answer_mode::nan_update: {
            r.update = encode_update(update, compression::fp32);
            float nan = std::nanf("");
            std::memcpy(r.update.data() + r.update.size() - 64, &nan, sizeof nan);
            break;
          }
          case answer_mode::other_id:
            r.assignment_id = a.id ^ 0x5a5a5a5a;
            r.update = encode_update(update, compression::fp32);
            break;
          case answer_mode::garbage:
            r.update = std::vector<uint8_t>(64, 0xAB);
            break;
          case answer_mode::forged_key:
            r.update = encode_update(update, compression::fp32);
            signer = &other;
            break;
          case answer_mode::chunk_lie:
          case answer_mode::chunk_forged:
            r.update = encode_update(update, compression::fp32);
            break;
          default:  // nan_compute
            r.update = encode_update(update, compression::fp32);
            r.compute_s = std::nan("");
            break;
        }
        r.signature = signer->sign(result_message(r.assignment_id, r.update));
        if (mode == answer_mode::chunk_lie) {
          // 1 GiB in 8 MiB chunks (the core's size here), named by one real digest.
          r.update_bytes = uint64_t{1} << 30;
          r.update_chunks.assign(128, digest_hex(r.update));
          r.update.clear();
        } else if (mode == answer_mode::chunk_forged) {
          r.update_bytes = r.update.size();
          log->update_bytes.store(r.update.size());
          r.update_chunks = {digest_hex(r.update)};
          r.update.clear();
        }
        return r;
      },
      // The session asks for the chunk of an answer sent as chunks: of the right size, but not
      // the bytes its digest names.
      [=](chunk_atom, const std::string&) {
        return std::vector<uint8_t>(log->update_bytes.load(), 0x5A);
      },
      [=](abort_atom, uint64_t) { log->aborted.fetch_add(1); },
      [=](bye_atom, const std::string& why) {
        std::lock_guard<std::mutex> lock(log->mutex);
        log->bye = why;
      },
  };
}

caf::behavior heartbeat(caf::event_based_actor* self, node_session_actor session) {
  self->send(self, tick_atom::value);
  return {[=](tick_atom) {
    self->send(session, beat_atom::value);
    self->delayed_send(self, std::chrono::milliseconds(300), tick_atom::value);
  }};
}

// A fake node joined to the test core: its uplink, its session, its heartbeat.
struct fake_node {
  std::shared_ptr<node_log> log = std::make_shared<node_log>();
  caf::actor uplink, beats;
  node_welcome welcome;
  caf::actor session() const { return caf::actor_cast<caf::actor>(welcome.session); }
};

// Asks the core for a node's welcome; the refusal's message, or "" when welcomed.
std::string ask_hello(caf::scoped_actor& self, const caf::actor& core, node_hello h,
                      node_welcome* out = nullptr) {
  std::string refusal;
  self->request(core, std::chrono::seconds(90), hello_atom::value, std::move(h))
      .receive(
          [&](node_welcome& w) {
            if (out) *out = std::move(w);
          },
          [&](caf::error& e) { refusal = from_caf(e).message(); });
  return refusal;
}

fake_node join_fake(peer& p, caf::scoped_actor& self, const std::string& name, answer_mode mode,
                    const std::string& token = "-", uint32_t workers = 1) {
  fake_node n;
  auto key = std::make_shared<const node_identity>(key_of(name));
  n.uplink = p.sys->spawn(fake_uplink, mode, n.log, key);
  auto why =
      ask_hello(self, p.core, make_hello(protocol_version, name, workers, n.uplink, 0, token, *key),
                &n.welcome);
  REQUIRE_MESSAGE(why.empty(), name << " could not join: " << why);
  REQUIRE(n.welcome.session);
  n.beats = p.sys->spawn(heartbeat, n.welcome.session);
  return n;
}

void leave(caf::scoped_actor& self, fake_node& n) {
  self->send_exit(n.beats, caf::exit_reason::user_shutdown);
  self->send_exit(n.uplink, caf::exit_reason::user_shutdown);
}

std::optional<node_status> node_named(client& c, const std::string& name) {
  auto nodes = c.nodes();
  REQUIRE(nodes.has_value());
  for (const auto& n : *nodes)
    if (n.name == name) return n;
  return std::nullopt;
}

// The chunk request's answer: "served" or the error's message.
std::string ask_chunk(caf::scoped_actor& self, const caf::actor& session, const std::string& name) {
  std::string why;
  self->request(session, std::chrono::seconds(20), chunk_atom::value, name)
      .receive([&](std::vector<uint8_t>&) { why = "served"; },
               [&](caf::error& e) { why = from_caf(e).message(); });
  return why;
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

TEST_CASE("a hostile node's attacks on the front door and its session are refused") {
  peer p;
  caf::scoped_actor self{*p.sys};
  auto c = connect_operator();
  REQUIRE(c.has_value());
  auto mallory = join_fake(p, self, "mallory", answer_mode::idle);
  auto session = mallory.session();
  auto door = p.core;
  auto honest_before = node_named(*c, "honest");
  REQUIRE(honest_before.has_value());

  // The verbs of the old protocol, to both handles it holds: none of them is in either
  // interface any more, and none names an internal actor it could reach.
  auto fake = p.sys->spawn(fake_uplink, answer_mode::idle, mallory.log,
                           std::make_shared<const node_identity>(key_of("mallory")));
  auto again_as_core =
      make_hello(protocol_version, "mallory", 1, fake, 1, community_token(), key_of("mallory"));
  for (const auto& target : {door, session}) {
    self->send(target, offer_atom::value, std::string("n1"), std::vector<caf::actor>{fake});
    self->send(target, bye_atom::value, std::string("n1"));
    self->send(target, update_atom::value, std::string("verifier"), fake);
    self->send(target, verify_atom::value, verify_request{});
    self->send(target, withdraw_atom::value, std::string("n1"));
    self->send(target, serve_atom::value, fake);
  }
  self->send(session, hello_atom::value, again_as_core);
  // The core's internal verbs, to the session: only the core's own actors may use them.
  assignment own;
  own.id = 42;
  std::string why;
  self->request(session, std::chrono::seconds(10), assign_atom::value, uint32_t{0}, own)
      .receive([&](assignment_result&) { why = "accepted"; },
               [&](caf::error& e) { why = from_caf(e).message(); });
  CHECK_MESSAGE(why.find("only the core assigns work") != std::string::npos, why);
  self->send(session, abort_atom::value, uint64_t{42});
  // Re-hello as core tier through the front door, with its community token: refused by the
  // token's tier.
  why = ask_hello(self, door, again_as_core);
  CHECK_MESSAGE(why.find("admits the community tier, not the core tier") != std::string::npos, why);
  // Exit, down and error messages of every kind, to every handle it holds.
  for (const auto& target : {door, session}) {
    self->send(target, caf::down_msg{target.address(), caf::exit_reason::kill});
    self->send(target, caf::make_error(caf::sec::runtime_error));
    for (auto reason : {caf::exit_reason::user_shutdown, caf::exit_reason::unhandled_exception,
                        caf::exit_reason::kill})
      self->send_exit(target, reason);
    caf::anon_send_exit(target, caf::exit_reason::kill);
  }
  // A 100 MB device string.
  auto huge = make_hello(protocol_version, "mallory-big", 1, fake, 0, "-", key_of("mallory-big"));
  huge.device.assign(100u << 20, 'x');
  why = ask_hello(self, door, std::move(huge));
  CHECK_MESSAGE(why.find("device description has at most") != std::string::npos, why);

  // A public key of 16 MiB, a 1 MiB proof and a 1 MiB token: refused at once (a key of any
  // size was hex-encoded and held, over and over, through a failure delay).
  for (int field = 0; field < 3; ++field) {
    auto big = make_hello(protocol_version, "mallory-key", 1, fake, 0, community_token(),
                          key_of("mallory-key"));
    if (field == 0) big.public_key.assign(16u << 20, 7);
    if (field == 1) big.proof.assign(1u << 20, 7);
    if (field == 2) big.credential.assign(1u << 20, 'a');
    why = ask_hello(self, door, std::move(big));
    CHECK_MESSAGE(why.find("32-byte public key, a 64-byte proof") != std::string::npos,
                  field << ": " << why);
  }

  // A device description that would clear an operator's terminal, and a GPU name that is
  // not UTF-8 (a JSON encoder throws on it: `gflex nodes --json`, the dashboard).
  auto escaping =
      make_hello(protocol_version, "mallory-esc", 1, fake, 0, "-", key_of("mallory-esc"));
  escaping.device = "GPU\x1b[2J";
  why = ask_hello(self, door, std::move(escaping));
  CHECK_MESSAGE(why.find("printable UTF-8") != std::string::npos, why);
  auto mangled =
      make_hello(protocol_version, "mallory-utf", 1, fake, 0, "-", key_of("mallory-utf"));
  mangled.gpus.push_back(gpu_status{});
  mangled.gpus.back().name = "\xff";
  why = ask_hello(self, door, std::move(mangled));
  CHECK_MESSAGE(why.find("not printable UTF-8") != std::string::npos, why);

  // A hello naming an uplink of another process (here the core's own front door): its
  // session would answer to nobody, past --max-per-address.
  why = ask_hello(self, door,
                  make_hello(protocol_version, "mallory-elsewhere", 1, door, 0, community_token(),
                             key_of("mallory-elsewhere")));
  CHECK_MESSAGE(why.find("from the process of the uplink it names") != std::string::npos, why);

  // Both still answer; its session stamps its own identity; the honest node is untouched.
  std::this_thread::sleep_for(std::chrono::seconds(1));
  // Chunks that none of its assignments named (a path, a digest of nothing): refused.
  CHECK(ask_chunk(self, session, "../../etc/passwd").find("is not one of this node's") !=
        std::string::npos);
  CHECK(ask_chunk(self, session, std::string(64, '0')).find("is not one of this node's") !=
        std::string::npos);
  auto jobs = c->jobs();
  CHECK_MESSAGE(jobs.has_value(), "the front door stopped answering");
  std::this_thread::sleep_for(std::chrono::seconds(1));  // a heartbeat carries the count
  auto m = node_named(*c, "mallory");
  REQUIRE_MESSAGE(m.has_value(), "mallory's session ended");
  CHECK(m->tier == node_tier::community);
  CHECK(m->dropped >= 10);
  MESSAGE("mallory's session dropped " << m->dropped << " message(s)");
  // Its session's own timer message, sent by the node (it would pump chunks past the byte
  // rate): each is dropped and counted.
  for (int i = 0; i < 5; ++i) self->send(session, tick_atom::value);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // the next heartbeat
  auto m2 = node_named(*c, "mallory");
  REQUIRE_MESSAGE(m2.has_value(), "mallory's session ended");
  CHECK(m2->dropped == m->dropped + 5);
  auto honest = node_named(*c, "honest");
  REQUIRE(honest.has_value());
  CHECK(honest->node_id == honest_before->node_id);  // same session: never disconnected
  CHECK(honest->tier == node_tier::core);
  CHECK_FALSE(honest->flagged);

  leave(self, mallory);
  self->send_exit(fake, caf::exit_reason::user_shutdown);
}

TEST_CASE("a node that answers its session's requests of the core is cut off") {
  // CAF matches a response by its id alone, and a session takes its node's responses (it
  // asks the node's uplink things): a node that answered, under the ids the session's
  // requests take, a request the session made of the core's data server or registry had its
  // own answer taken (chunk requests counted as served, past the bounds on what it fetches).
  peer p;
  caf::scoped_actor self{*p.sys};
  auto c = connect_operator();
  REQUIRE(c.has_value());
  auto forger = join_fake(p, self, "forger", answer_mode::idle);
  auto session = forger.session();
  constexpr int64_t forged = 424242424242;
  // Its earnings, asked of the registry by its session (at most every 2 s); answered right
  // behind the question by the node, under every id the session's first requests take.
  // The forged answers race the registry's own over the link, and lose most tries to it
  // (4 tries lost all of them in one run of seven here): ten, each ended once one lands.
  bool gone = false;
  for (int attempt = 0; attempt < 10 && !gone; ++attempt) {
    auto asked = self->request(session, std::chrono::seconds(10), earned_atom::value);
    for (uint64_t id = 1; id <= 2000; ++id)
      session->enqueue(self->ctrl(), caf::make_message_id(id).response_id(),
                       caf::make_message(forged), nullptr);
    int64_t earned = -1;
    std::move(asked).receive([&](int64_t e) { earned = e; }, [](caf::error&) {});
    CHECK(earned != forged);
    for (int tries = 0; tries < 22 && !gone; ++tries) {
      gone = !node_named(*c, "forger").has_value();
      if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  CHECK_MESSAGE(gone, "the forger's session goes on");
  CHECK_MESSAGE(forger.log->last_bye().find("answered a request the session made of the core") !=
                    std::string::npos,
                forger.log->last_bye());
  leave(self, forger);
}

TEST_CASE(
    "rogue nodes' results are rejected, never applied nor credited; a job beside them "
    "finishes") {
  peer p;
  caf::scoped_actor self{*p.sys};
  auto c = connect_operator();
  REQUIRE(c.has_value());
  // The rogues join with a token of their own, so that their ban can be seen to revoke it.
  auto rogue_token = c->create_token("community", 0, 0);
  REQUIRE(rogue_token.has_value());
  const std::pair<const char*, answer_mode> rogues[] = {
      {"rogue-size", answer_mode::short_update}, {"rogue-nan", answer_mode::nan_update},
      {"rogue-id", answer_mode::other_id},       {"rogue-garbage", answer_mode::garbage},
      {"rogue-forger", answer_mode::forged_key}, {"rogue-compute", answer_mode::nan_compute},
      {"rogue-chunks", answer_mode::chunk_lie},  {"rogue-pieces", answer_mode::chunk_forged}};
  std::vector<fake_node> nodes;
  for (const auto& [name, mode] : rogues)
    nodes.push_back(join_fake(p, self, name, mode, *rogue_token));
  job_status s = run_small_job();
  int answered = 0;
  for (auto& n : nodes) answered += n.log->answered.load();
  CHECK(s.state == job_state::done);
  CHECK(s.round == 4);
  CHECK(answered >= 1);
  CHECK(s.rejected_results == static_cast<uint64_t>(answered));
  CHECK(std::isfinite(s.test_accuracy));
  CHECK(s.test_accuracy > 0.5);  // only the honest node's updates were applied
  auto all = c->nodes();
  REQUIRE(all.has_value());
  int flagged = 0;
  for (const auto& n : *all) {
    if (n.name.starts_with("rogue-") && n.rejected > 0) {
      CHECK(n.flagged);
      CHECK(n.validated == 0);
      CHECK(n.credited_s == 0.0);
      CHECK(n.earned == 0);
      flagged += 1;
    }
    if (n.name == "honest") {
      CHECK_FALSE(n.flagged);
      CHECK(n.validated > 0);
    }
  }
  CHECK(flagged == answered);
  auto ledger = c->verify_ledger();
  REQUIRE(ledger.has_value());
  CHECK_MESSAGE(ledger->ok, ledger->problem);
  MESSAGE("rogues answered " << answered << " assignment(s), all rejected; " << flagged
                             << " flagged; accuracy " << s.test_accuracy);
  // A flood of requests for a real chunk (protocol.sh runs the core with --chunk-rate 4: a
  // 32 MiB burst): past the byte budget requests wait, past 64 waiting the node is told why
  // and disconnected. A caught node still holds its session, so it floods with that; it
  // floods with a chunk it was assigned (a session serves no other).
  auto& flooding = nodes.front();
  std::string digest;
  {
    std::lock_guard<std::mutex> lock(flooding.log->mutex);
    digest = flooding.log->shard;
  }
  REQUIRE_MESSAGE(!digest.empty(), "the flooding node was given no assignment");
  const auto session = flooding.session();
  auto refused = std::make_shared<std::atomic<int>>(0);
  auto flooder = p.sys->spawn([=](caf::event_based_actor* f) -> caf::behavior {
    for (int i = 0; i < 300; ++i)
      f->request(session, std::chrono::seconds(60), chunk_atom::value, digest)
          .then([](std::vector<uint8_t>&) {},
                [=](caf::error& e) {
                  if (from_caf(e).code() == errc::limit_exceeded) refused->fetch_add(1);
                });
    return {[](tick_atom) {}};
  });
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (flooding.log->last_bye().empty() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK_MESSAGE(flooding.log->last_bye().find("chunk requests waiting") != std::string::npos,
                "bye: " << flooding.log->last_bye());
  // The refusal follows the bye over the link, to another actor of this process: the bye can
  // be seen first.
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (refused->load() < 1 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(refused->load() >= 1);
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (node_named(*c, rogues[0].first) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK_FALSE(node_named(*c, rogues[0].first).has_value());
  CHECK(node_named(*c, "honest").has_value());
  self->send_exit(flooder, caf::exit_reason::user_shutdown);
  for (auto& n : nodes) leave(self, n);

  // A caught node cannot come back: not under a new name and key with the same token (it
  // is closed to new keys), nor with its key and a new token (the key is banned).
  if (flagged > 0) {
    auto fake = p.sys->spawn(fake_uplink, answer_mode::idle, std::make_shared<node_log>(),
                             std::make_shared<const node_identity>(key_of("rogue-new")));
    auto why = ask_hello(
        self, p.core,
        make_hello(protocol_version, "rogue-new", 1, fake, 0, *rogue_token, key_of("rogue-new")));
    CHECK_MESSAGE(why.find("admits no new node keys: node rogue-") != std::string::npos, why);
    std::string caught;
    for (const auto& n : *all)
      if (n.name.starts_with("rogue-") && n.flagged) caught = n.name;
    REQUIRE_FALSE(caught.empty());
    auto fresh = c->create_token("community", 0, 0);
    REQUIRE(fresh.has_value());
    why = ask_hello(
        self, p.core,
        make_hello(protocol_version, caught + "-renamed", 1, fake, 0, *fresh, key_of(caught)));
    CHECK_MESSAGE(why.find("this node key is banned") != std::string::npos, why);
    self->send_exit(fake, caf::exit_reason::user_shutdown);
  }
}

// Run by protocol.sh against a second core whose parameters travel in 64 KiB chunks (the
// first core's 8 MiB hold a fashion-mlp's whole).
TEST_CASE("a parameter chunk is served three times per assignment, then refused (chunked core)") {
  peer p;
  caf::scoped_actor self{*p.sys};
  auto c = connect_operator();
  REQUIRE(c.has_value());
  auto holder = join_fake(p, self, "greedy", answer_mode::hold);
  auto id = c->submit(R"([job]
name = "greedy"
workload = "fashion-mlp"
rounds = 1
workers = 1
[trust]
tier = "community"
)");
  REQUIRE_MESSAGE(id.has_value(), id.error().message());
  std::vector<std::string> chunks;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (chunks.empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::lock_guard<std::mutex> lock(holder.log->mutex);
    chunks = holder.log->params_chunks;
  }
  REQUIRE_MESSAGE(chunks.size() > 1, "the assignment's parameters did not come in chunks");
  const auto session = holder.session();
  for (int i = 1; i <= 3; ++i) CHECK(ask_chunk(self, session, chunks.front()) == "served");
  CHECK(ask_chunk(self, session, chunks.front()) == "parameter chunk served too often");
  // Another chunk of the same assignment still has its own allowance.
  CHECK(ask_chunk(self, session, chunks.back()) == "served");
  // The refusal counts as a dropped message (the core learns the count with the next beat).
  uint64_t dropped = 0;
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (dropped == 0 && std::chrono::steady_clock::now() < deadline) {
    auto greedy = node_named(*c, "greedy");
    REQUIRE(greedy.has_value());
    dropped = greedy->dropped;
    if (dropped == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  CHECK(dropped == 1);
  CHECK(c->cancel(*id).has_value());
  // The assignment is withdrawn: the asks an uplink had out (and those it made on their
  // answers before the abort reached it) are answered as late, not counted as dropped; an
  // honest node was cut off as an attacker after some 250 aborts. A third ask of one chunk
  // is dropped, as any chunk no assignment names.
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (holder.log->aborted.load() == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  REQUIRE_MESSAGE(holder.log->aborted.load() > 0, "the cancelled job's assignment was not aborted");
  for (int i = 1; i <= 2; ++i) {
    const auto late = ask_chunk(self, session, chunks[1]);
    CHECK_MESSAGE(late.find("is of an assignment withdrawn") != std::string::npos, late);
  }
  CHECK(ask_chunk(self, session, chunks[1]).find("is not one of this node's") != std::string::npos);
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (dropped < 2 && std::chrono::steady_clock::now() < deadline) {
    auto greedy = node_named(*c, "greedy");
    REQUIRE(greedy.has_value());
    dropped = greedy->dropped;
    if (dropped < 2) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  CHECK(dropped == 2);
  leave(self, holder);
}

TEST_CASE("hellos outside the protocol are refused; a single-use token admits one key") {
  peer p;
  caf::scoped_actor self{*p.sys};
  auto worker = p.sys->spawn(fake_uplink, answer_mode::idle, std::make_shared<node_log>(),
                             std::make_shared<const node_identity>(key_of("probe")));
  auto why = ask_hello(self, p.core, make_hello(protocol_version + 1, "probe", 1, worker));
  CHECK_MESSAGE(why.find("protocol version " + std::to_string(protocol_version + 1) +
                         " is not supported") != std::string::npos,
                why);
  // A name of a megabyte holding a forged log line, in a hello of another protocol: its
  // refusal is logged before the name is checked (protocol.sh reads the core's log).
  auto forging =
      make_hello(protocol_version + 1,
                 "probe\nFORGED-LOG-LINE critical\n" + std::string(1 << 20, 'x'), 1, worker);
  CHECK(ask_hello(self, p.core, forging).find("is not supported") != std::string::npos);
  // Hellos of another protocol in a loop, as any peer with the core's bundle can send them:
  // each is refused, and the core's log keeps to its bound (protocol.sh counts its lines; a
  // line each filled the disk).
  const int looped = 300;
  for (int i = 0; i < looped; ++i)
    self->send(p.core, hello_atom::value,
               make_hello(protocol_version + 1, "looping-" + std::to_string(i), 1, worker));
  int refused = 0;
  for (int i = 0; i < looped; ++i)
    self->receive([](node_welcome&) {}, [&](caf::error&) { ++refused; },
                  caf::after(std::chrono::seconds(90)) >> [] { FAIL("no answer to a hello"); });
  CHECK(refused == looped);
  CHECK(ask_hello(self, p.core, make_hello(protocol_version, "probe", 0, worker))
            .find("1-1024 workers") != std::string::npos);
  CHECK(ask_hello(self, p.core, make_hello(protocol_version, "probe", 5000, worker))
            .find("1-1024 workers") != std::string::npos);
  CHECK_FALSE(ask_hello(self, p.core, make_hello(protocol_version, "", 1, worker)).empty());
  CHECK(ask_hello(self, p.core, make_hello(protocol_version, "probe", 1, worker, 7))
            .find("unknown tier") != std::string::npos);
  // A price past the bound the refusal states (a thousand times it was let in).
  auto dear = make_hello(protocol_version, "probe", 1, worker);
  dear.price = int64_t{2'000'000} * micro_per_credit;
  CHECK(ask_hello(self, p.core, dear).find("price must be in [0, 1000000] credits per hour") !=
        std::string::npos);
  auto forged_key = make_hello(protocol_version, "probe", 1, worker);
  forged_key.proof = node_identity::generate().sign(hello_message(protocol_version, "probe"));
  why = ask_hello(self, p.core, forged_key);
  CHECK_MESSAGE(why.find("signature does not match") != std::string::npos, why);
  why = ask_hello(self, p.core, make_hello(protocol_version, "honest", 1, worker));
  CHECK_MESSAGE(why.find("belongs to another node key") != std::string::npos, why);

  // A community token admits one key by default; the key that used it may come back.
  auto c = connect_operator();
  REQUIRE(c.has_value());
  auto single = c->create_token("community", 0);
  REQUIRE(single.has_value());
  auto first = make_hello(protocol_version, "single-a", 1, worker, 0, *single, key_of("single-a"));
  node_welcome w;
  why = ask_hello(self, p.core, first, &w);
  CHECK_MESSAGE(why.empty(), why);
  why = ask_hello(
      self, p.core,
      make_hello(protocol_version, "single-b", 1, worker, 0, *single, key_of("single-b")));
  CHECK_MESSAGE(why.find("is used up") != std::string::npos, why);
  self->send(w.session, bye_atom::value);
  why = ask_hello(self, p.core, first, &w);
  CHECK_MESSAGE(why.empty(), why);
  self->send(w.session, bye_atom::value);
  self->send_exit(worker, caf::exit_reason::user_shutdown);
}

TEST_CASE(
    "a client holds only its session: keyed requests elsewhere, forged system messages "
    "and floods are refused") {
  peer p;
  caf::scoped_actor self{*p.sys};
  auto link =
      p.sys->spawn([](caf::event_based_actor*) -> caf::behavior { return {[](tick_atom) {}}; });
  // The old protocol's keyed requests to the front door are refused from another process.
  std::string why;
  self->request(p.core, std::chrono::seconds(10), jobs_atom::value,
                std::string(env_or_fail("GFLEX_API_KEY")))
      .receive([&](std::vector<job_status>&) { why = "answered"; },
               [&](caf::error& e) { why = from_caf(e).message(); });
  CHECK_MESSAGE(why.find("sends (auth, API key) first") != std::string::npos, why);
  // A bad key gets no session.
  self->request(p.core, std::chrono::seconds(30), auth_atom::value, new_api_key(), link)
      .receive([&](client_welcome&) { why = "welcomed"; },
               [&](caf::error& e) { why = from_caf(e).message(); });
  CHECK_MESSAGE(why.find("unknown API key") != std::string::npos, why);
  // The operator's key gets a session, which answers for the operator.
  client_welcome w;
  self->request(p.core, std::chrono::seconds(30), auth_atom::value,
                std::string(env_or_fail("GFLEX_API_KEY")), link)
      .receive([&](client_welcome& x) { w = std::move(x); },
               [&](caf::error& e) { FAIL("no session: " << from_caf(e).message()); });
  REQUIRE(w.session);
  CHECK(w.principal == "operator");
  auto session = caf::actor_cast<caf::actor>(w.session);
  // System messages and messages outside its interface: dropped; it still answers.
  self->send(session, caf::down_msg{link.address(), caf::exit_reason::kill});
  self->send(session, caf::make_error(caf::sec::runtime_error));
  for (auto reason : {caf::exit_reason::user_shutdown, caf::exit_reason::kill})
    self->send_exit(session, reason);
  self->send(session, hello_atom::value, std::string("x"));
  self->send(session, update_atom::value, std::string("verifier"), link);
  bool answered = false;
  self->request(session, std::chrono::seconds(10), jobs_atom::value)
      .receive([&](std::vector<job_status>&) { answered = true; },
               [&](caf::error& e) { MESSAGE(from_caf(e).message()); });
  CHECK(answered);
  // A hostile upload, past the client's own checks: damaged, inconsistent or out-of-order
  // shards and bad names are refused, and nothing is stored.
  auto push = [&](const std::string& name, data_part part) {
    std::string out = "stored";
    self->request(session, std::chrono::seconds(30), dpush_atom::value, name, std::move(part))
        .receive([&](data_set_info& i) { out = "part " + std::to_string(i.parts_received); },
                 [&](caf::error& e) { out = from_caf(e).message(); });
    return out;
  };
  dataset ok_data;
  ok_data.classes = 3;
  ok_data.features = tensor::empty({4, 2}, dtype::f32);
  ok_data.labels = tensor::empty({4}, dtype::i32);
  for (int i = 0; i < 8; ++i) ok_data.features.data<float>()[i] = 0.25f * static_cast<float>(i);
  for (int i = 0; i < 4; ++i) ok_data.labels.data<int32_t>()[i] = i % 3;
  const auto good = encode_shard(ok_data, 0, 4);
  auto garbage = good;
  garbage.resize(garbage.size() / 2);
  CHECK(push("probe", {0, 2, false, garbage}).find("malformed") != std::string::npos);
  CHECK(push("../x", {0, 1, false, good}).find("data set name must be") != std::string::npos);
  CHECK(push("probe", {0, 100000, false, good}).find("1 to 4096 parts") != std::string::npos);
  CHECK(push("probe", {0, 3, false, good}) == "part 1");
  CHECK(push("probe", {2, 3, true, good}).find("expected part 1 of 3") != std::string::npos);
  CHECK(push("probe", {1, 3, false, good}).find("no upload in progress") != std::string::npos);
  std::vector<data_set_info> sets{data_set_info{}};
  self->request(session, std::chrono::seconds(10), dlist_atom::value)
      .receive([&](std::vector<data_set_info>& s) { sets = std::move(s); },
               [&](caf::error& e) { FAIL(from_caf(e).message()); });
  CHECK(sets.empty());
  // Submits sent at once count against the account's job limit before any of them is
  // recorded (protocol.sh runs the core with --max-jobs-per-account 3).
  auto unfinished = [&] {
    int64_t n = 0;
    self->request(session, std::chrono::seconds(10), jobs_atom::value)
        .receive(
            [&](std::vector<job_status>& jobs) {
              for (const auto& j : jobs) n += !is_terminal(j.state);
            },
            [&](caf::error& e) { FAIL(from_caf(e).message()); });
    return n;
  };
  const int64_t before = unfinished();
  auto submitted = std::make_shared<std::atomic<int>>(0);
  auto over_limit = std::make_shared<std::atomic<int>>(0);
  auto accepted_ids = std::make_shared<std::vector<std::string>>();
  auto ids_mutex = std::make_shared<std::mutex>();
  const std::string long_job =
      "[job]\nname = \"limit\"\nworkload = \"fashion-mlp\"\nrounds = 1000\nworkers = 1\n"
      "[market]\nmax_price = 0\n";
  auto submitter = p.sys->spawn([=](caf::event_based_actor* f) -> caf::behavior {
    for (int i = 0; i < 10; ++i)
      f->request(session, std::chrono::seconds(60), submit_atom::value, long_job)
          .then(
              [=](std::string& id) {
                std::lock_guard<std::mutex> guard(*ids_mutex);
                accepted_ids->push_back(id);
                submitted->fetch_add(1);
              },
              [=](caf::error& e) {
                if (from_caf(e).message().find("unfinished jobs") != std::string::npos)
                  over_limit->fetch_add(1);
                submitted->fetch_add(1);
              });
    return {[](tick_atom) {}};
  });
  auto submit_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (submitted->load() < 10 && std::chrono::steady_clock::now() < submit_deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::vector<std::string> ids;
  {
    std::lock_guard<std::mutex> guard(*ids_mutex);
    ids = *accepted_ids;
  }
  CHECK(submitted->load() == 10);
  CHECK_MESSAGE(before + static_cast<int64_t>(ids.size()) <= 3,
                before << " unfinished jobs, then " << ids.size() << " of 10 submits accepted");
  CHECK(over_limit->load() + static_cast<int>(ids.size()) == 10);
  MESSAGE("of 10 submits at once (with " << before << " unfinished), " << ids.size()
                                         << " were accepted");
  for (const auto& id : ids)
    self->request(session, std::chrono::seconds(10), cancel_atom::value, id)
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(from_caf(e).message()); });
  self->send_exit(submitter, caf::exit_reason::user_shutdown);
  // More requests open at once than the session allows: the rest are refused.
  auto refused = std::make_shared<std::atomic<int>>(0);
  auto answers = std::make_shared<std::atomic<int>>(0);
  auto flooder = p.sys->spawn([=](caf::event_based_actor* f) -> caf::behavior {
    for (int i = 0; i < 200; ++i)
      f->request(session, std::chrono::seconds(60), ledger_atom::value)
          .then([=](ledger_report&) { answers->fetch_add(1); },
                [=](caf::error& e) {
                  answers->fetch_add(1);
                  if (from_caf(e).code() == errc::limit_exceeded) refused->fetch_add(1);
                });
    return {[](tick_atom) {}};
  });
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (answers->load() < 200 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(answers->load() == 200);
  CHECK(refused->load() >= 1);
  MESSAGE("of 200 ledger checks at once, " << refused->load() << " were refused");
  // The front door still serves clients.
  auto c = connect_operator();
  REQUIRE(c.has_value());
  CHECK(c->jobs().has_value());
  self->send_exit(flooder, caf::exit_reason::user_shutdown);
  self->send_exit(link, caf::exit_reason::user_shutdown);
}
