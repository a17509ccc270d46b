/// @file
/// A job whose work ran out of a node's memory leaves that node out of its next acquires for
/// a while, and says so while it waits. Before, the work went back to the same node (the
/// cheapest, and free again at once) to fail again, and a model too large for every node went
/// round them for ever while the job's status said nothing of why.

#include <doctest/doctest.h>

#include "job_fixture.hpp"

using namespace gflex;
using namespace gflex::test;

namespace {

// A worker that answers every assignment with `answer`.
caf::behavior answering_worker(caf::event_based_actor*, error answer) {
  return {
      [answer](assign_atom, assignment&) -> caf::result<assignment_result> {
        return to_caf(answer);
      },
      [](abort_atom, uint64_t) {},
  };
}

// A node's answer when the model exceeds its memory.
error out_of_host_memory() {
  return error(errc::device_error,
               "allocating 64 MiB: out of host memory (--memory-limit 16777216 bytes)");
}

// Each release the fixture's market was sent so far, as it notes them.
std::vector<std::string> releases(job_fixture& f) {
  std::vector<std::string> released;
  f.self->request(f.market, f.wait, caf::get_atom::value, release_atom::value)
      .receive([&](std::vector<std::string>& r) { released = std::move(r); },
               [&](caf::error& e) { FAIL(f.sys.render(e)); });
  return released;
}

}  // namespace

TEST_SUITE("job out of memory") {
  TEST_CASE("a node the work ran out of memory on is left out, and the status says why") {
    configured_system side;  // the worker's own system: it stands for a node
    auto worker = side.sys.spawn(answering_worker, out_of_host_memory());
    job_fixture f(stored_job(), {node_slot(worker, "n-small", "small")});
    auto s = f.await(
        [](const job_status& st) { return st.detail.find("ran out of") != std::string::npos; }, 20);
    CHECK(s.state == job_state::running);
    CHECK(s.detail.find("1 left out for a while: this job's work ran out of their memory (small: "
                        "allocating 64 MiB: out of host memory") != std::string::npos);
    std::vector<std::string> avoided;
    f.self->request(f.market, f.wait, caf::get_atom::value, caf::get_atom::value)
        .receive([&](std::vector<std::string>& a) { avoided = std::move(a); },
                 [&](caf::error& e) { FAIL(f.sys.render(e)); });
    CHECK(avoided == std::vector<std::string>{"n-small"});
    // The model, not the node, is at fault: the market frees the slot for other jobs rather
    // than cool the node down for all of them.
    const auto released = releases(f);
    REQUIRE_FALSE(released.empty());
    for (const auto& r : released) CHECK(r == "failed: not the node's fault");
    side.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a node whose kernels refuse the model's shapes is left out, not cooled down") {
    // cuDNN refuses a tensor past 2^31 - 1 values: counted against the node, a job's model
    // cooled every GPU node down for all jobs, one after another, round after round.
    configured_system side;
    auto worker = side.sys.spawn(
        answering_worker, error(errc::invalid_argument,
                                "a convolution tensor of 2621440000 values exceeds cuDNN's 32-bit "
                                "limit"));
    job_fixture f(stored_job(), {node_slot(worker, "n-gpu", "gpu")});
    auto s = f.await(
        [](const job_status& st) { return st.detail.find("refused by") != std::string::npos; }, 20);
    CHECK_MESSAGE(s.detail.find("1 left out for a while: this job's work was refused by their "
                                "kernels (gpu: a convolution tensor") != std::string::npos,
                  s.detail);
    const auto released = releases(f);
    REQUIRE_FALSE(released.empty());
    for (const auto& r : released) CHECK(r == "failed: not the node's fault");
    side.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a node the core did not serve its parameters in time is not cooled down") {
    // The uplink's own fetch of the parameter chunks timed out (the core was slow to serve
    // them): it says so as unavailable. Taken as the node's fault, each node of a job whose
    // core was overloaded was cooled down for every job, and the next rounds had fewer workers.
    configured_system side;
    auto worker = side.sys.spawn(
        answering_worker,
        error(errc::unavailable, "the core did not serve a parameter chunk (request_timeout)"));
    job_fixture f(stored_job(), {node_slot(worker, "n-far", "far")});
    std::vector<std::string> released;
    for (int i = 0; i < 100 && released.empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      released = releases(f);
    }
    REQUIRE_FALSE(released.empty());
    for (const auto& r : released) CHECK(r == "failed: not the node's fault");
    side.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }
}
