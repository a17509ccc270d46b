/// @file
/// A cancel is acknowledged once the job's end is recorded: told "cancelled" while the record
/// still said running, a user saw a core restarted meanwhile resume the job and bill it again.

#include <doctest/doctest.h>

#include "job_fixture.hpp"

using namespace gflex;
using namespace gflex::test;

TEST_SUITE("job cancel") {
  TEST_CASE("a cancel whose record cannot be written is an error, not an acknowledgement") {
    job_fixture f(stored_job());
    auto s =
        f.await([](const job_status& s) { return s.detail.find("waiting for workers") == 0; }, 10);
    REQUIRE(s.state == job_state::running);
    f.self->send(f.store, caf::put_atom::value, job_record_key("job-1"));
    bool acknowledged = false;
    std::string refused;
    f.self->request(f.supervisor, f.wait, cancel_atom::value, f.alice, std::string("job-1"))
        .receive([&](caf::ok_atom) { acknowledged = true; },
                 [&](caf::error& e) { refused = f.sys.render(e); });
    CHECK_FALSE(acknowledged);
    CHECK_MESSAGE(refused.find("its end could not be recorded") != std::string::npos, refused);
  }

  TEST_CASE("a cancel is acknowledged with its end recorded") {
    job_fixture f(stored_job());
    f.await([](const job_status& s) { return s.detail.find("waiting for workers") == 0; }, 10);
    f.self->request(f.supervisor, f.wait, cancel_atom::value, f.alice, std::string("job-1"))
        .receive([](caf::ok_atom) {}, [&](caf::error& e) { FAIL(f.sys.render(e)); });
    CHECK(f.status().state == job_state::cancelled);
  }
}
