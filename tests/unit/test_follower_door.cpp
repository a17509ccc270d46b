/// The front door of a follower core (actors/core/follower_door.hpp), over an LMDB store
/// holding what the leader committed: keys are checked as on the leader, status, jobs and
/// nodes are answered from the records (each principal seeing only its own jobs), and every
/// other request, a node's hello included, names the leader; with no leader it says to try
/// again. A read of the replicated state that fails (a key's check included) names the leader
/// too, or says to try another core, and a wrong key stays refused. A client following a job
/// over a follower reports no node events from its listing, which knows no connections.

#include <doctest/doctest.h>

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "client_door.hpp"
#include "configured_system.hpp"
#include "follower_door.hpp"
#include "gatekeeper.hpp"
#include "gflex/gflex.hpp"
#include "job_record.hpp"
#include "link_loss.hpp"
#include "messages.hpp"
#include "reputation.hpp"
#include "running_core.hpp"
#include "store.hpp"
#include "temp_dir.hpp"
#include "two_class_rows.hpp"

using namespace gflex;

namespace {

const std::string operator_key = "the operator's key";

std::string shipped_spec() {
  std::ifstream in(std::filesystem::path(GFLEX_SOURCE_DIR) / "apps/jobs/fashion-mlp.toml");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<uint8_t> bytes_of(const std::string& s) {
  return {s.begin(), s.end()};
}

// A store cut off from etcd: every read fails as the replicated store's do then.
caf::behavior cut_off_store(caf::event_based_actor*) {
  const auto cut_off = [] {
    return to_caf(
        error(errc::unavailable, "no etcd member answered (last: 10.0.0.9:2379: Connection)"));
  };
  return {
      [=](read_atom, const std::string&) -> caf::result<bool, std::vector<uint8_t>> {
        return cut_off();
      },
      [=](scan_atom, const std::string&, const std::string&)
          -> caf::result<std::vector<std::string>, std::vector<std::vector<uint8_t>>> {
        return cut_off();
      },
  };
}

// The leader as a client meets it: every key is alice's, and a job's status is answered;
// (get_atom) says how many sessions it gave.
struct leading_door_state {
  client_sessions sessions;
  uint64_t welcomed = 0;
};

caf::behavior any_key_gate(caf::event_based_actor*) {
  return {[](auth_atom, const std::string&) { return std::string("user/alice"); }};
}

caf::behavior leading_door(caf::stateful_actor<leading_door_state>* self, caf::actor gate) {
  self->set_down_handler(
      [=](const caf::down_msg& down) { self->state.sessions.forget(down.source); });
  return {
      [=](auth_atom, std::string& key, caf::actor& link) {
        self->state.welcomed += 1;
        return open_client_session(self, gate, std::move(key), std::move(link));
      },
      [=](status_atom, const std::string&, const std::string& id) {
        job_status s;
        s.job_id = id;
        s.round = 9;
        return s;
      },
      [=](caf::get_atom) { return self->state.welcomed; },
  };
}

// A leader whose node listing fails while each status is answered, for a client following
// job-9: queued, queued, running, then done. The listing fails at every ask but the third,
// which lists node n1; with `lost_link` it fails as a lost link does, else as a registry
// that did not answer. Past eight status asks, the status fails too, so that a client that
// never sees the job end is stopped.
struct listing_fails_state {
  client_sessions sessions;
  int statuses = 0;
  int listings = 0;
};

caf::behavior listing_fails_door(caf::stateful_actor<listing_fails_state>* self, caf::actor gate,
                                 bool lost_link) {
  self->set_down_handler(
      [=](const caf::down_msg& down) { self->state.sessions.forget(down.source); });
  return {
      [=](auth_atom, std::string& key, caf::actor& link) {
        return open_client_session(self, gate, std::move(key), std::move(link));
      },
      [=](status_atom, const std::string&, const std::string& id) -> caf::result<job_status> {
        const int n = ++self->state.statuses;
        if (n > 8) return to_caf(error(errc::invalid_argument, "asked past the end of the job"));
        job_status s;
        s.job_id = id;
        s.owner = "operator";
        s.state = n <= 2 ? job_state::queued : n == 3 ? job_state::running : job_state::done;
        s.round = n <= 2 ? 0 : n - 2;
        return s;
      },
      [=](nodes_atom, const std::string&) -> caf::result<std::vector<node_status>> {
        if (++self->state.listings == 3) {
          node_status n;
          n.node_id = "node-1";
          n.name = "n1";
          return std::vector<node_status>{n};
        }
        if (lost_link)
          return to_caf(error(errc::unavailable,
                              std::string(detail::no_answer) + " (the registry, within 10 s)"));
        return to_caf(error(errc::io_error, "the registry did not answer"));
      },
  };
}

// A leader whose first answer to a submit is lost (as a core that did not answer), and
// which answers every later one with job-7; (get_atom) lists the submission ids it saw.
struct losing_submit_state {
  client_sessions sessions;
  std::vector<std::string> submissions;
};

caf::behavior losing_submit_door(caf::stateful_actor<losing_submit_state>* self, caf::actor gate) {
  self->set_down_handler(
      [=](const caf::down_msg& down) { self->state.sessions.forget(down.source); });
  return {
      [=](auth_atom, std::string& key, caf::actor& link) {
        return open_client_session(self, gate, std::move(key), std::move(link));
      },
      [=](submit_atom, const std::string&, const std::string&,
          const std::string& submission) -> caf::result<std::string> {
        self->state.submissions.push_back(submission);
        if (self->state.submissions.size() == 1)
          return to_caf(error(errc::unavailable, std::string(detail::no_answer) + " within 60 s"));
        return std::string("job-7");
      },
      [=](caf::get_atom) { return self->state.submissions; },
  };
}

// A leader still loading its data sets: a push's first part is answered as a passing loss
// (as a starting core's job supervisor answers it) its first two times, then taken; with
// `lose_second`, the second part's answer is lost. (get_atom) lists the parts it saw.
struct losing_push_state {
  client_sessions sessions;
  std::vector<uint32_t> parts;
};

// Answers a push's first part as a passing loss twice, and loses the answer to its second
// part `lose_second` times.
caf::behavior losing_push_door(caf::stateful_actor<losing_push_state>* self, caf::actor gate,
                               int lose_second) {
  self->set_down_handler(
      [=](const caf::down_msg& down) { self->state.sessions.forget(down.source); });
  return {
      [=](auth_atom, std::string& key, caf::actor& link) {
        return open_client_session(self, gate, std::move(key), std::move(link));
      },
      [=](dpush_atom, const std::string&, const std::string& name,
          const data_part& part) -> caf::result<data_set_info> {
        auto& parts = self->state.parts;
        parts.push_back(part.index);
        if (part.index == 0 && std::count(parts.begin(), parts.end(), 0u) <= 2)
          return to_caf(error(errc::unavailable,
                              std::string(detail::no_answer) +
                                  ": it is still loading its data sets; nothing was changed"));
        if (part.index == 1 && std::count(parts.begin(), parts.end(), 1u) <= lose_second)
          return to_caf(error(errc::unavailable, std::string(detail::no_answer) + " within 120 s"));
        data_set_info info;
        info.name = name;
        info.parts_received = part.index + 1;
        return info;
      },
      [=](caf::get_atom) { return self->state.parts; },
  };
}

struct door_fixture : test::configured_system {
  test::temp_dir dir;
  caf::actor store, gate, door, link;
  std::shared_ptr<leader_record> leader = std::make_shared<leader_record>();
  const std::chrono::seconds timeout{30};
  std::string alice_key;

  door_fixture() {
    auto s = spawn_store(sys, dir.path());
    REQUIRE(s.has_value());
    store = *s;
    gate = spawn_gatekeeper(sys, store, operator_key);
    leader->set("c1 127.0.0.1:7400");
    door = spawn_follower_door(sys, "c2", store, gate, leader);
    link = sys.spawn([](caf::event_based_actor*) -> caf::behavior { return {[](tick_atom) {}}; });
    // What the leader committed: alice's key, her job at round 7, the operator's job, a node.
    self->request(gate, timeout, api_key_atom::value, std::string("user/alice"))
        .receive([&](std::string& key) { alice_key = key; },
                 [&](caf::error& e) { FAIL(sys.render(e)); });
    store_batch batch;
    auto job = [&](const std::string& id, const std::string& owner, int64_t round) {
      job_status s;
      s.job_id = id;
      s.owner = owner;
      s.state = job_state::running;
      s.round = round;
      s.test_accuracy = 0.85;
      batch.keys.push_back(job_record_key(id));
      batch.values.push_back(encode_job_record(shipped_spec(), s));
    };
    job("job-1", "user/alice", 7);
    job("job-2", "operator", 3);
    reputation r;
    r.name = "n1";
    r.tier = node_tier::core;
    r.validated = 12;
    batch.keys.push_back("node/n1/reputation");
    batch.values.push_back(bytes_of(encode_reputation(r)));
    self->request(store, timeout, commit_atom::value, std::move(batch))
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(sys.render(e)); });
  }

  ~door_fixture() {
    for (const auto& a : {door, gate, store, link}) self->send_exit(a, caf::exit_reason::kill);
    for (const auto& a : also) self->send_exit(a, caf::exit_reason::kill);
  }

  // `a`, a test's own actor, ended with the fixture: a failed REQUIRE leaves it running, and
  // the actor system's end waited for it for ever.
  caf::actor own(caf::actor a) {
    also.push_back(a);
    return a;
  }
  std::vector<caf::actor> also;

  // A session for `key` at `at` (this fixture's door by default), or the door's error.
  expected<caf::actor> session_of(const std::string& key) { return session_of(key, door); }
  expected<caf::actor> session_of(const std::string& key, const caf::actor& at) {
    expected<caf::actor> out = error(errc::io_error, "no answer");
    self->request(at, timeout, auth_atom::value, key, link)
        .receive([&](client_welcome& w) { out = caf::actor_cast<caf::actor>(w.session); },
                 [&](caf::error& e) { out = from_caf(e, &sys); });
    return out;
  }

  template <class T, class... Ts>
  expected<T> ask(const caf::actor& to, Ts&&... xs) {
    expected<T> out = error(errc::io_error, "no answer");
    self->request(to, timeout, std::forward<Ts>(xs)...)
        .receive([&](T& v) { out = std::move(v); },
                 [&](caf::error& e) { out = from_caf(e, &sys); });
    return out;
  }
};

// An operator's client, without TLS, of the door published on loopback at `port`.
expected<client> operator_client(uint16_t port) {
  client_options options;
  options.insecure = true;
  options.api_key = operator_key;
  return client::connect("127.0.0.1", port, options);
}

}  // namespace

TEST_SUITE("follower_door") {
  TEST_CASE_FIXTURE(door_fixture, "reads come from the committed records, for their owner only") {
    CHECK(session_of("gfk_" + std::string(64, '0')).error().code() == errc::permission_denied);
    auto alice = session_of(alice_key);
    REQUIRE(alice.has_value());
    auto job = ask<job_status>(*alice, status_atom::value, std::string("job-1"));
    REQUIRE(job.has_value());
    CHECK(job->round == 7);
    CHECK(job->rounds == 30);  // filled in from the spec, as the leader shows it
    CHECK(job->name == "fashion-mlp");
    CHECK(job->detail.find("as of its last committed round, read on core c2") != std::string::npos);
    // The operator's job is not alice's to see, here as on the leader.
    auto other = ask<job_status>(*alice, status_atom::value, std::string("job-2"));
    REQUIRE_FALSE(other.has_value());
    CHECK(other.error().message() == "unknown job 'job-2'");
    // Ids that name no job record of alice's are unknown.
    for (const auto& bad : {std::string(600, 'x'), std::string("job-2/record"), std::string()})
      CHECK(ask<job_status>(*alice, status_atom::value, bad).error().message() ==
            "unknown job '" + bad + "'");
    auto jobs = ask<std::vector<job_status>>(*alice, jobs_atom::value);
    REQUIRE(jobs.has_value());
    REQUIRE(jobs->size() == 1);
    CHECK(jobs->front().job_id == "job-1");
    CHECK(ask<std::vector<node_status>>(*alice, nodes_atom::value).error().code() ==
          errc::permission_denied);

    auto op = session_of(operator_key);
    REQUIRE(op.has_value());
    CHECK(ask<std::vector<job_status>>(*op, jobs_atom::value)->size() == 2);
    auto nodes = ask<std::vector<node_status>>(*op, nodes_atom::value);
    REQUIRE(nodes.has_value());
    REQUIRE(nodes->size() == 1);
    CHECK(nodes->front().name == "n1");
    CHECK(nodes->front().validated == 12);
    CHECK(nodes->front().node_id == "-");
    CHECK(nodes->front().last_seen_s < 0);
  }

  TEST_CASE_FIXTURE(door_fixture,
                    "following a job over a follower reports no node joined or lost from its "
                    "listing") {
    // A second node and a job that has ended, so that following returns after one look.
    store_batch batch;
    reputation r;
    r.name = "n2";
    batch.keys.push_back("node/n2/reputation");
    batch.values.push_back(bytes_of(encode_reputation(r)));
    job_status ended;
    ended.job_id = "job-3";
    ended.owner = "operator";
    ended.state = job_state::done;
    ended.round = 30;
    batch.keys.push_back(job_record_key("job-3"));
    batch.values.push_back(encode_job_record(shipped_spec(), ended));
    self->request(store, timeout, commit_atom::value, std::move(batch))
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(sys.render(e)); });
    auto port = sys.middleman().publish(door, 0, "127.0.0.1");
    REQUIRE(port);
    auto c = operator_client(*port);
    REQUIRE(c.has_value());
    REQUIRE(c->nodes()->size() == 2);  // both records, each with node id "-"
    // The follower knows no connections: every node of its listing has the same id "-", and
    // one of them was reported joined (and, had the leader listed them before, all lost).
    std::vector<std::string> joined, lost;
    job_events events;
    events.on_node_joined = [&](const node_status& n) { joined.push_back(n.name); };
    events.on_node_lost = [&](const node_status& n) { lost.push_back(n.name); };
    auto last = c->follow("job-3", events, std::chrono::milliseconds(10));
    REQUIRE_MESSAGE(last.has_value(), last.error().message());
    CHECK(last->state == job_state::done);
    CHECK_MESSAGE(joined.empty(), joined.size(), " joined");
    CHECK_MESSAGE(lost.empty(), lost.size(), " lost");
  }

  TEST_CASE_FIXTURE(door_fixture, "writes and hellos name the leader; with none, try again") {
    auto alice = session_of(alice_key);
    REQUIRE(alice.has_value());
    auto submitted = ask<std::string>(*alice, submit_atom::value, shipped_spec());
    REQUIRE_FALSE(submitted.has_value());
    CHECK(submitted.error().code() == errc::not_leader);
    CHECK(submitted.error().message().ends_with("the leader, c1, is at 127.0.0.1:7400"));
    auto cancelled = ask<caf::ok_atom>(*alice, cancel_atom::value, std::string("job-1"));
    CHECK(cancelled.error().code() == errc::not_leader);
    auto hello = ask<node_welcome>(door, hello_atom::value, node_hello{});
    CHECK(hello.error().code() == errc::not_leader);
    // Nothing was written: the job is still running at round 7.
    CHECK(ask<job_status>(*alice, status_atom::value, std::string("job-1"))->round == 7);

    leader->set("");
    auto later = ask<std::string>(*alice, submit_atom::value, shipped_spec());
    CHECK(later.error().code() == errc::unavailable);
    CHECK(later.error().message().find("no core leads at the moment") != std::string::npos);

    // A client takes both for a failover under way, which following a job rides out: a
    // train stage that met one failed, though another core led seconds later.
    CHECK(detail::is_link_loss(detail::as_failover(submitted.error())));
    CHECK(detail::is_link_loss(detail::as_failover(later.error())));
    CHECK(detail::as_failover(later.error()).message().find("no core leads at the moment") !=
          std::string::npos);
    const error refusal(errc::unavailable, "no core-tier worker is free");
    CHECK_FALSE(detail::is_link_loss(detail::as_failover(refusal)));
    CHECK_FALSE(detail::is_link_loss(detail::as_failover(error(errc::invalid_argument, "x"))));
  }

  TEST_CASE_FIXTURE(door_fixture,
                    "a follower that cannot read the replicated state sends clients on, and "
                    "still refuses a wrong key") {
    // Cut off from etcd while clients still reach it: the store's error, passed on, was final
    // to a client, which tried none of its other cores while another core led.
    auto cut = own(sys.spawn(cut_off_store));
    auto cut_gate = own(spawn_gatekeeper(sys, cut, operator_key));
    auto cut_door = own(spawn_follower_door(sys, "c2", cut, cut_gate, leader));
    auto sent_on = [](const error& e) {
      return e.code() == errc::not_leader &&
             e.message().find("no etcd member answered") != std::string::npos &&
             e.message().ends_with("the leader it last knew, c1, is at 127.0.0.1:7400");
    };
    // The key's check reads the store: an account's session is not given, and the answer
    // names the leader.
    auto alice = session_of(alice_key, cut_door);
    REQUIRE_FALSE(alice.has_value());
    CHECK_MESSAGE(sent_on(alice.error()), alice.error().message());
    // Keys refused without a read stay refused: a wrong key must not send a client round.
    for (const auto& bad : {std::string("not a key"), std::string()}) {
      auto refused = session_of(bad, cut_door);
      REQUIRE_FALSE(refused.has_value());
      CHECK(refused.error().code() == errc::permission_denied);
    }
    // The operator's key needs no read; the reads behind its requests fail, each sent on.
    auto op = session_of(operator_key, cut_door);
    REQUIRE(op.has_value());
    auto status = ask<job_status>(*op, status_atom::value, std::string("job-1"));
    REQUIRE_FALSE(status.has_value());
    CHECK_MESSAGE(sent_on(status.error()), status.error().message());
    auto jobs = ask<std::vector<job_status>>(*op, jobs_atom::value);
    REQUIRE_FALSE(jobs.has_value());
    CHECK_MESSAGE(sent_on(jobs.error()), jobs.error().message());
    auto nodes = ask<std::vector<node_status>>(*op, nodes_atom::value);
    REQUIRE_FALSE(nodes.has_value());
    CHECK_MESSAGE(sent_on(nodes.error()), nodes.error().message());
    // Knowing no leader: "try another core", which a client following a job rides out.
    leader->set("");
    auto none = session_of(alice_key, cut_door);
    REQUIRE_FALSE(none.has_value());
    CHECK(none.error().code() == errc::unavailable);
    CHECK_MESSAGE(none.error().message().find(" follows and no core leads") != std::string::npos,
                  none.error().message());
    CHECK(none.error().message().find("no etcd member answered") != std::string::npos);
    CHECK(detail::is_link_loss(detail::as_failover(none.error())));
  }

  TEST_CASE_FIXTURE(door_fixture,
                    "a client goes past a follower cut off from the replicated state to its "
                    "other cores, but not with a wrong key") {
    // c1 follows, cut off from etcd; the leader it last knew is gone since; another core
    // leads. A client that named c1 first failed every request, its key's check included.
    auto cut = own(sys.spawn(cut_off_store));
    auto cut_gate = own(spawn_gatekeeper(sys, cut, operator_key));
    auto cut_door = own(spawn_follower_door(sys, "c1", cut, cut_gate, leader));
    leader->set("c9 127.0.0.1:" + std::to_string(test::free_loopback_port()));
    auto gate_of_leader = own(sys.spawn(any_key_gate));
    auto leading = own(sys.spawn(leading_door, gate_of_leader));
    auto follower_port = sys.middleman().publish(cut_door, 0, "127.0.0.1");
    auto leader_port = sys.middleman().publish(leading, 0, "127.0.0.1");
    REQUIRE(follower_port);
    REQUIRE(leader_port);
    client_options options;
    options.insecure = true;
    options.api_key = alice_key;
    options.other_cores = {{"127.0.0.1", *leader_port}};
    {
      auto c = client::connect("127.0.0.1", *follower_port, options);
      REQUIRE(c.has_value());
      auto job = c->status("job-1");
      CHECK_MESSAGE(job.has_value(), job.error().message());
      if (job) CHECK(job->round == 9);
    }
    // Knowing no leader, the follower says to try another core: the client does, for the
    // key's check alone too.
    leader->set("");
    {
      auto c = client::connect("127.0.0.1", *follower_port, options);
      REQUIRE(c.has_value());
      auto who = c->principal();
      CHECK_MESSAGE(who.has_value(), who.error().message());
      if (who) CHECK(*who == "user/alice");
      auto job = c->status("job-1");
      CHECK_MESSAGE(job.has_value(), job.error().message());
    }
    // A wrong key is refused on c1, finally: the leader here would have taken any key.
    const auto welcomed = ask<uint64_t>(leading, caf::get_atom::value);
    REQUIRE(welcomed.has_value());
    options.api_key = "not a key";
    {
      auto c = client::connect("127.0.0.1", *follower_port, options);
      REQUIRE(c.has_value());
      auto job = c->status("job-1");
      REQUIRE_FALSE(job.has_value());
      CHECK_MESSAGE(job.error().code() == errc::permission_denied, job.error().message());
    }
    const auto welcomed_after = ask<uint64_t>(leading, caf::get_atom::value);
    REQUIRE(welcomed_after.has_value());
    CHECK(*welcomed_after == *welcomed);
  }

  TEST_CASE_FIXTURE(door_fixture,
                    "a submit whose answer is lost is asked again with the same submission id") {
    // Submitted again on the word of a lost answer, a job the core had made was made twice,
    // run and billed twice. The core answers the same id with the job it made.
    auto gate_of_leader = own(sys.spawn(any_key_gate));
    auto leading = own(sys.spawn(losing_submit_door, gate_of_leader));
    auto port = sys.middleman().publish(leading, 0, "127.0.0.1");
    REQUIRE(port);
    auto c = operator_client(*port);
    REQUIRE(c.has_value());
    auto id = c->submit(shipped_spec());
    CHECK_MESSAGE(id.has_value(), id.error().message());
    if (id) CHECK(*id == "job-7");
    auto seen = ask<std::vector<std::string>>(leading, caf::get_atom::value);
    REQUIRE(seen.has_value());
    REQUIRE(seen->size() == 2);
    CHECK((*seen)[0].size() == 32);  // 128 random bits, in hex
    CHECK((*seen)[1] == (*seen)[0]);
    // A caller's own id is the one sent.
    auto mine = c->submit(shipped_spec(), "trainer-run-12");
    CHECK_MESSAGE(mine.has_value(), mine.error().message());
    seen = ask<std::vector<std::string>>(leading, caf::get_atom::value);
    REQUIRE(seen.has_value());
    REQUIRE(seen->size() == 3);
    CHECK(seen->back() == "trainer-run-12");
    // An empty or malformed id is refused before anything is sent: empty, it was no id, and
    // the answer lost, the submit asked again made a second job.
    for (const std::string& bad : {std::string(), std::string("a b")}) {
      auto refused = c->submit(shipped_spec(), bad);
      REQUIRE_FALSE(refused.has_value());
      CHECK(refused.error().code() == errc::invalid_argument);
    }
    seen = ask<std::vector<std::string>>(leading, caf::get_atom::value);
    REQUIRE(seen.has_value());
    CHECK(seen->size() == 3);
  }

  TEST_CASE_FIXTURE(door_fixture,
                    "a push's first part is asked again while the core cannot take it yet") {
    // A starting core answers a push's first part as a passing loss until it has read its
    // stored sets and jobs: `gflex data push` (and a pipeline's upload) rides that out. A
    // later part's lost answer starts the upload again from its first part (the upload may
    // have taken the part already: it is never sent twice into one upload), five times at
    // most: one such loss failed the whole push.
    for (const int lose_second : {0, 1, 100}) {
      CAPTURE(lose_second);
      auto gate_of_leader = own(sys.spawn(any_key_gate));
      auto leading = own(sys.spawn(losing_push_door, gate_of_leader, lose_second));
      auto port = sys.middleman().publish(leading, 0, "127.0.0.1");
      REQUIRE(port);
      auto c = operator_client(*port);
      REQUIRE(c.has_value());
      const dataset_splits data{test::two_class_rows(40), test::two_class_rows(8)};
      auto pushed = c->push_data("rows", data, 2);
      auto seen = ask<std::vector<uint32_t>>(leading, caf::get_atom::value);
      REQUIRE(seen.has_value());
      if (lose_second == 0) {
        CHECK_MESSAGE(pushed.has_value(), pushed.error().message());
        // Part 0 three times (two passing losses), then each other part once.
        CHECK(*seen == std::vector<uint32_t>{0, 0, 0, 1, 2});
      } else if (lose_second == 1) {
        CHECK_MESSAGE(pushed.has_value(), pushed.error().message());
        CHECK(*seen == std::vector<uint32_t>{0, 0, 0, 1, 0, 1, 2});
      } else {
        REQUIRE_FALSE(pushed.has_value());
        CHECK(detail::is_link_loss(pushed.error()));
        CHECK(pushed.error().message().find("part 2 of 3, after 5 fresh starts") !=
              std::string::npos);
        CHECK(*seen == std::vector<uint32_t>{0, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1});
      }
    }
  }

  TEST_CASE_FIXTURE(door_fixture,
                    "following a job whose node listing fails reports the job to its end") {
    // Each answered status restarted the loss clock before the nodes were asked, so a listing
    // lost again and again was ridden out for ever, every report skipped, the job's end too;
    // any other error of the listing ended the following though the job's status was fine.
    for (const bool lost_link : {true, false}) {
      CAPTURE(lost_link);
      auto gate_of_leader = own(sys.spawn(any_key_gate));
      auto leading = own(sys.spawn(listing_fails_door, gate_of_leader, lost_link));
      auto port = sys.middleman().publish(leading, 0, "127.0.0.1");
      REQUIRE(port);
      auto c = operator_client(*port);
      REQUIRE(c.has_value());
      std::vector<job_state> states;
      std::vector<std::string> joined, lost;
      int64_t last_round = 0;
      job_events events;
      events.on_state = [&](const job_status& s) { states.push_back(s.state); };
      events.on_round = [&](const job_status& s, int64_t) { last_round = s.round; };
      events.on_node_joined = [&](const node_status& n) { joined.push_back(n.name); };
      events.on_node_lost = [&](const node_status& n) { lost.push_back(n.name); };
      auto last = c->follow("job-9", events, std::chrono::milliseconds(10));
      CHECK_MESSAGE(last.has_value(), last.error().message());
      if (!last) continue;
      CHECK(last->state == job_state::done);
      CHECK(last_round == 2);
      // The first state seen is reported, though its poll's listing failed.
      CHECK(states ==
            std::vector<job_state>{job_state::queued, job_state::running, job_state::done});
      // The one listing that worked reported n1; the failed ones after it lost nobody.
      CHECK(joined == std::vector<std::string>{"n1"});
      CHECK_MESSAGE(lost.empty(), lost.size(), " lost");
    }
  }
}
