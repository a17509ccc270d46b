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

// A worker that answers every assignment as a node does whose memory the model exceeds.
caf::behavior too_small_worker(caf::event_based_actor*) {
  return {
      [](assign_atom, assignment&) -> caf::result<assignment_result> {
        return to_caf(
            error(errc::device_error,
                  "allocating 64 MiB: out of host memory (--memory-limit 16777216 bytes)"));
      },
      [](abort_atom, uint64_t) {},
  };
}

}  // namespace

TEST_SUITE("job out of memory") {
  TEST_CASE("a node the work ran out of memory on is left out, and the status says why") {
    configured_system side;  // the worker's own system: it stands for a node
    auto worker = side.sys.spawn(too_small_worker);
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
    std::vector<std::string> released;
    f.self->request(f.market, f.wait, caf::get_atom::value, release_atom::value)
        .receive([&](std::vector<std::string>& r) { released = std::move(r); },
                 [&](caf::error& e) { FAIL(f.sys.render(e)); });
    REQUIRE_FALSE(released.empty());
    for (const auto& r : released) CHECK(r == "failed: not the node's fault");
    side.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }
}
