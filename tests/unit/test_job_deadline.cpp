/// @file
/// An assignment that outlives its deadline is withdrawn from the worker that has it: the job
/// hands its shard to another worker and tells the first to stop. Before, it was given up
/// silently, and a slow node computed it to the end, and the next ones queued behind it, all
/// past their deadlines and for nothing.

#include <doctest/doctest.h>

#include "job_fixture.hpp"

using namespace gflex;
using namespace gflex::test;

namespace {

struct silent_worker_state {
  std::vector<caf::typed_response_promise<assignment_result>> held;  // never answered
  std::vector<uint64_t> assigned, aborted;
};

// A worker that takes every assignment and answers none, and notes the aborts it is sent.
caf::behavior silent_worker(caf::stateful_actor<silent_worker_state>* self) {
  return {
      [=](assign_atom, assignment& a) -> caf::result<assignment_result> {
        self->state.assigned.push_back(a.id);
        auto rp = self->make_response_promise<assignment_result>();
        self->state.held.push_back(rp);
        return rp;
      },
      [=](abort_atom, uint64_t id) { self->state.aborted.push_back(id); },
      [=](caf::get_atom) -> caf::result<std::vector<uint64_t>, std::vector<uint64_t>> {
        return {self->state.assigned, self->state.aborted};
      },
  };
}

}  // namespace

TEST_SUITE("job deadlines") {
  TEST_CASE("an assignment past its deadline is aborted on its worker") {
    configured_system side;  // the worker's own system: it stands for a node
    auto worker = side.sys.spawn(silent_worker);
    job_fixture f(stored_job(2, k_spec + "[round]\ndeadline_s = 1\n"),
                  {node_slot(worker, "n1", "slow")});
    std::vector<uint64_t> assigned, aborted;
    for (int tries = 0; tries < 100 && aborted.empty(); ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      side.self->request(worker, f.wait, caf::get_atom::value)
          .receive(
              [&](std::vector<uint64_t>& a, std::vector<uint64_t>& b) {
                assigned = std::move(a);
                aborted = std::move(b);
              },
              [&](caf::error& e) { FAIL(side.sys.render(e)); });
    }
    REQUIRE(assigned.size() == 1);
    CHECK(aborted == assigned);
    side.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }
}
