/// @file
/// An assignment that outlives its deadline is withdrawn from the worker that has it: the job
/// hands its shard to another worker and tells the first to stop. Before, it was given up
/// silently, and a slow node computed it to the end, and the next ones queued behind it, all
/// past their deadlines and for nothing. The node is then left out of the job's work for a while.

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

  TEST_CASE("a node the work ran past its deadline on is left out, and the status says why") {
    // Sent again once the market's short cooldown ended, a deadline too short for every node
    // kept each of them computing the job's assignments for nothing, round after round, while
    // the status said nothing of why.
    configured_system side;
    auto worker = side.sys.spawn(silent_worker);
    job_fixture f(stored_job(2, k_spec + "[round]\ndeadline_s = 1\n"),
                  {node_slot(worker, "n1", "slow")});
    auto s = f.await(
        [](const job_status& st) { return st.detail.find("left out") != std::string::npos; }, 20);
    CHECK(s.state == job_state::running);
    CHECK_MESSAGE(s.detail.find("1 left out for a while: this job's work took longer than "
                                "deadline_s (1 s) on slow") != std::string::npos,
                  s.detail);
    std::vector<std::string> avoided;
    f.self->request(f.market, f.wait, caf::get_atom::value, caf::get_atom::value)
        .receive([&](std::vector<std::string>& a) { avoided = std::move(a); },
                 [&](caf::error& e) { FAIL(f.sys.render(e)); });
    CHECK(avoided == std::vector<std::string>{"n1"});
    side.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a job stopped with its supervisor aborts its assignments on their workers") {
    // The market frees a dead job's slots at once: the resumed job's work (or another's)
    // queued behind the dead one's on the node, missed its deadline, and the honest node was
    // left out of the job and cooled down for it.
    configured_system side;
    auto worker = side.sys.spawn(silent_worker);
    job_fixture f(stored_job(), {node_slot(worker, "n1", "n1")});
    auto ask = [&] {
      std::pair<std::vector<uint64_t>, std::vector<uint64_t>> out;
      side.self->request(worker, f.wait, caf::get_atom::value)
          .receive(
              [&](std::vector<uint64_t>& a, std::vector<uint64_t>& b) {
                out = {std::move(a), std::move(b)};
              },
              [&](caf::error& e) { FAIL(side.sys.render(e)); });
      return out;
    };
    for (int tries = 0; tries < 100 && ask().first.empty(); ++tries)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    REQUIRE(ask().first.size() == 1);
    f.self->send_exit(f.supervisor, caf::exit_reason::kill);
    auto seen = ask();
    for (int tries = 0; tries < 50 && seen.second.empty(); ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      seen = ask();
    }
    CHECK(seen.second == seen.first);
    side.self->send_exit(worker, caf::exit_reason::user_shutdown);
  }

  TEST_CASE("a job's deadline_h counts from its submit, the core's downtime included") {
    // Counted as the time its job actors ran, a job that waited while its core was down
    // (restarted nightly, say) never reached its deadline, and held its round's escrow.
    auto stored = stored_job(2, k_spec + "[market]\nmax_price = 0\ndeadline_h = 1\n");
    auto record = decode_job_record(stored.kept.at(job_record_key("job-1")));
    REQUIRE(record.has_value());
    record->second.submitted_unix = std::chrono::duration_cast<std::chrono::seconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count() -
                                    7200;  // two hours ago; it ran for none of them
    stored.kept[job_record_key("job-1")] = encode_job_record(record->first, record->second);
    job_fixture f(std::move(stored));
    auto s = f.await([](const job_status& st) { return st.state == job_state::failed; }, 20);
    CHECK(s.state == job_state::failed);
    CHECK_MESSAGE(s.detail.find("its deadline of 1 h passed") != std::string::npos, s.detail);
  }
}
