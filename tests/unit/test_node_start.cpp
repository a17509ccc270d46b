/// A node that could not start (actors/node/node_supervisor.hpp): its exit code says whether
/// starting again may work, which is what a service manager restarts by. And a started node
/// whose uplink is restarted: the new session's work is not held up by the old one's. A node
/// that stops cancels what its workers compute.

#include <doctest/doctest.h>

#include <caf/all.hpp>

#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "configured_system.hpp"
#include "gflex/kernels/model_spec.hpp"
#include "gflex/runtime/digest.hpp"
#include "gflex/runtime/shard.hpp"
#include "gflex/runtime/tensor_codec.hpp"
#include "gflex/runtime/update_codec.hpp"
#include "messages.hpp"
#include "node_supervisor.hpp"
#include "temp_dir.hpp"

using namespace gflex;

namespace {

// A core played by one actor: its front door welcomes every hello with itself as the session
// (so that the node's cache keeps its data server across joins), tells `test` each uplink
// that joins, and `test` each chunk asked for ("asked"), which it holds until (ok_atom). From
// `test`: (assign_atom, a) hands worker 0 of the latest uplink `a`.
caf::behavior one_actor_core(caf::event_based_actor* self, caf::actor test,
                             std::vector<uint8_t> chunk) {
  using promise = caf::typed_response_promise<std::vector<uint8_t>>;
  auto held = std::make_shared<std::vector<promise>>();
  auto uplink = std::make_shared<caf::actor>();
  return {
      [=](hello_atom, node_hello& h) -> node_welcome {
        *uplink = h.uplink;
        caf::anon_send(test, h.uplink);
        node_welcome w;
        w.protocol = h.protocol;
        w.node_id = "n1";
        w.heartbeat_ms = 50;
        w.session = caf::actor_cast<node_session_actor>(self);
        return w;
      },
      [](beat_atom) {},
      [](bye_atom) {},
      [](earned_atom) { return int64_t{0}; },
      [=](chunk_atom, const std::string&) -> caf::result<std::vector<uint8_t>> {
        held->push_back(self->make_response_promise<std::vector<uint8_t>>());
        caf::anon_send(test, std::string("asked"));
        return held->back();
      },
      [=](caf::ok_atom) {
        for (auto& rp : *held) rp.deliver(chunk);
        held->clear();
      },
      [=](assign_atom, assignment& a) {
        self->request(*uplink, std::chrono::seconds(30), assign_atom::value, uint32_t{0}, a)
            .then([](assignment_result&) {}, [](caf::error&) {});
      },
  };
}

// The actor a node in these tests reports to: what the node tells its owner is dropped.
caf::actor node_owner(caf::actor_system& sys) {
  return sys.spawn([](caf::event_based_actor* self) -> caf::behavior {
    self->set_default_handler(caf::drop);
    return {[](int) {}};
  });
}

// A CPU node's settings with no memory bound (a bound is process-wide) and any join token
// (the cores here check none).
node_config cpu_node_config() {
  node_config config;
  config.backend = "cpu";
  config.memory_limit = std::string("0");
  config.token = std::string(8, 't');
  return config;
}

}  // namespace

TEST_SUITE("node start") {
  TEST_CASE("a device or file that failed at start is restarted; settings are final") {
    // Every failure was exit 2, which the unit never restarts: a GPU out of memory at a
    // restart (another program held it) kept the node down until someone noticed.
    CHECK(start_failure_exit_code(error(errc::device_error, "out of device memory")) == 1);
    CHECK(start_failure_exit_code(error(errc::io_error, "node.key: cannot read")) == 1);
    CHECK(start_failure_exit_code(error(errc::unavailable, "NCCL")) == 1);
    CHECK(start_failure_exit_code(error(errc::invalid_argument, "--workers")) == 2);
    CHECK(start_failure_exit_code(error(errc::no_device, "no CUDA device")) == 2);
  }

  TEST_CASE("a node key file that is wrong is a settings error, not restarted") {
    // Each was io_error, exit 1: the service restarted the node for ever, planning its GPUs
    // each time, on a file that stays wrong until someone fixes it.
    test::configured_system s;
    node_config config = cpu_node_config();
    auto owner = node_owner(s.sys);
    auto start_with = [&](const std::string& what, auto make_key) {
      CAPTURE(what);
      test::temp_dir dir;
      config.data_dir = dir.path();
      make_key(dir / "node.key");
      auto node = spawn_node(s.sys, config, node_test_aids{}, "", 0, caf::actor{}, owner);
      if (node) s.self->send_exit(*node, caf::exit_reason::user_shutdown);
      REQUIRE_FALSE(node.has_value());
      CHECK(node.error().message().find("node.key") != std::string::npos);
      CHECK(start_failure_exit_code(node.error()) == 2);
    };
    start_with("too short", [](const std::filesystem::path& key) {
      std::ofstream(key) << "not a key";
      ::chmod(key.c_str(), 0600);
    });
    start_with("readable by others", [](const std::filesystem::path& key) {
      std::ofstream(key) << std::string(64, 'k');
      ::chmod(key.c_str(), 0644);
    });
    start_with("a directory",
               [](const std::filesystem::path& key) { std::filesystem::create_directory(key); });
    s.self->send_exit(owner, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a restarted uplink cancels the old one's work whose shard is still coming") {
    // Only the assignments computing were cancelled: one whose worker still waited for its
    // shard ran every step once the shard came, for an uplink that was gone, its time
    // counted against --max-hours and the new session's work queued behind it.
    test::configured_system s;
    test::temp_dir dir;
    caf::actor test = caf::actor_cast<caf::actor>(s.self);
    dataset d;
    d.classes = 10;
    d.features = tensor::zeros({4, 16}, dtype::f32);
    d.labels = tensor::zeros({4}, dtype::i32);
    const auto shard = encode_shard(d, 0, 4);
    auto core = s.sys.spawn(one_actor_core, test, shard);
    auto owner = node_owner(s.sys);
    node_config config = cpu_node_config();
    config.data_dir = dir.path();
    config.on_activity = [test](const node_activity& n) {
      if (n.what == node_activity::kind::started) caf::anon_send(test, n.job_id, true);
    };
    auto node = spawn_node(s.sys, config, node_test_aids{}, "", 0, core, owner);
    REQUIRE_MESSAGE(node.has_value(), node.error().message());
    std::vector<caf::actor> uplinks;
    std::vector<std::string> started;
    int asked = 0;
    auto until = [&](auto done) {
      bool timed_out = false;
      while (!done() && !timed_out)
        s.self->receive([&](caf::actor& u) { uplinks.push_back(u); },
                        [&](std::string&) { ++asked; },
                        [&](std::string& job, bool) { started.push_back(job); },
                        caf::after(std::chrono::seconds(10)) >> [&] { timed_out = true; });
      return done();
    };
    auto assign = [&](uint64_t id, const std::string& job) {
      assignment a;
      a.id = id;
      a.job_id = job;
      a.shard = digest_hex(shard);
      s.self->send(core, assign_atom::value, a);
    };
    REQUIRE(until([&] { return uplinks.size() == 1; }));
    assign(11, "old");
    REQUIRE(until([&] { return asked == 1; }));  // its worker waits for the shard
    s.self->send_exit(uplinks[0], caf::exit_reason::kill);
    REQUIRE(until([&] { return uplinks.size() == 2; }));  // restarted, joined again
    s.self->send(core, caf::ok_atom::value);              // the shard comes
    assign(12, "new");
    REQUIRE(until([&] { return !started.empty(); }));
    CHECK_MESSAGE(started.front() == "new", "the old uplink's assignment ran first");
    for (const auto& x : {*node, core, owner})
      s.self->send_exit(x, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a node that says bye or stops cancels what its workers compute") {
    // Only a restarted uplink cancelled the workers' assignments: a node that stopped sent its
    // workers an exit that waited in their mailboxes while they computed every step, and an
    // embedded cluster's destructor waited for them (minutes for a large model).
    const std::string model =
        "[model]\ninput = [64]\nlayers = [ { type = \"linear\", units = 256 }, "
        "{ type = \"relu\" }, { type = \"linear\", units = 3 }, { type = \"softmax_xent\" } ]\n";
    auto spec = kernels::parse_model_spec(model, "model");
    REQUIRE(spec.has_value());
    auto plan = kernels::plan_model(*spec);
    REQUIRE(plan.has_value());
    dataset d;
    d.classes = 3;
    d.features = tensor::zeros({32, 64}, dtype::f32);
    d.labels = tensor::zeros({32}, dtype::i32);
    const auto shard = encode_shard(d, 0, 32);
    for (const bool bye : {true, false}) {
      CAPTURE(bye);
      test::configured_system s;
      test::temp_dir dir;
      caf::actor test = caf::actor_cast<caf::actor>(s.self);
      auto core = s.sys.spawn(one_actor_core, test, shard);
      auto owner = node_owner(s.sys);
      node_config config = cpu_node_config();
      config.data_dir = dir.path();
      config.on_activity = [test](const node_activity& n) {
        if (n.what != node_activity::kind::joined && n.what != node_activity::kind::earned)
          caf::anon_send(test, static_cast<int>(n.what));
      };
      auto node = spawn_node(s.sys, config, node_test_aids{}, "", 0, core, owner);
      REQUIRE_MESSAGE(node.has_value(), node.error().message());
      // Whatever fails below, the actors stop: the actor system waits for them as it ends.
      struct stopped_at_end {
        caf::scoped_actor& self;
        std::vector<caf::actor> actors;
        ~stopped_at_end() {
          for (const auto& x : actors) self->send_exit(x, caf::exit_reason::user_shutdown);
        }
      } stop_all{s.self, {*node, core, owner}};
      int last = -1;  // the latest activity (node_activity::kind)
      bool joined = false;
      auto until = [&](auto done, std::chrono::seconds wait) {
        bool timed_out = false;
        while (!done() && !timed_out)
          s.self->receive([&](caf::actor&) { joined = true; },
                          // The worker asks for its shard: served at once.
                          [&](std::string&) { s.self->send(core, caf::ok_atom::value); },
                          [&](int what) { last = what; },
                          caf::after(wait) >> [&] { timed_out = true; });
        return done();
      };
      REQUIRE(until([&] { return joined; }, std::chrono::seconds(10)));
      assignment a;
      a.id = 21;
      a.job_id = "slow";
      a.workload = "model";
      a.model = model;
      a.shard = digest_hex(shard);
      a.local_steps = 400000;  // over 10 s here: it is cancelled long before
      a.batch_size = 32;
      a.compression = static_cast<uint8_t>(compression::fp32);
      a.params = encode_tensor(tensor::zeros({plan->parameters}, dtype::f32));
      s.self->send(core, assign_atom::value, a);
      REQUIRE(until([&] { return last != -1; }, std::chrono::seconds(10)));
      REQUIRE(last == static_cast<int>(node_activity::kind::started));
      const auto since = std::chrono::steady_clock::now();
      if (bye)
        s.self->send(*node, bye_atom::value);
      else
        s.self->send_exit(*node, caf::exit_reason::user_shutdown);
      last = -1;
      REQUIRE(until([&] { return last != -1; }, std::chrono::seconds(120)));
      const auto took = std::chrono::steady_clock::now() - since;
      CHECK_MESSAGE(last == static_cast<int>(node_activity::kind::cancelled),
                    "the assignment was not cancelled (activity " << last << ")");
      CHECK(took < std::chrono::seconds(5));
    }
  }
}
