/// @file
/// A submit asked again with the id its client gave it is answered with the job the first
/// made: whether that job is made already, is being stored, or was made before the core
/// restarted. Without the id, a client whose answer was lost (a busy core, a dropped link,
/// a failover) and that submitted again made a second job, run and billed beside the first.

#include <doctest/doctest.h>

#include <string>
#include <thread>

#include "job_fixture.hpp"

using namespace gflex;
using namespace gflex::test;

namespace {

// The job id `who`'s submit of `text` with `submission` is answered with, or the refusal.
expected<std::string> submit(job_fixture& f, const std::string& who, const std::string& text,
                             const std::string& submission) {
  expected<std::string> out = error(errc::io_error, "no answer");
  f.self->request(f.supervisor, f.wait, submit_atom::value, who, text, submission)
      .receive([&](std::string& id) { out = std::move(id); },
               [&](caf::error& e) { out = from_caf(e); });
  return out;
}

// Bob's data set "c" beside alice's in `st` (as stored_job() keeps hers).
void add_bobs_set(failing_store_state& st) {
  const auto train = encode_shard(samples(12), 0, 12), test = encode_shard(samples(6), 0, 6);
  data_upload up("user/bob", "c", 2, {});
  REQUIRE(up.add({0, 2, false, train}).has_value());
  REQUIRE(up.add({1, 2, true, test}).has_value());
  st.kept[data_set_key("user/bob", "c")] = encode_data_set(up.finish().value());
  st.kept[data_chunk_key(digest_hex(train))] = train;
  st.kept[data_chunk_key(digest_hex(test))] = test;
}

size_t jobs_of(job_fixture& f, const std::string& who) {
  size_t out = 0;
  f.self->request(f.supervisor, f.wait, jobs_atom::value, who)
      .receive([&](std::vector<job_status>& all) { out = all.size(); },
               [&](caf::error& e) { FAIL(f.sys.render(e)); });
  return out;
}

// Waits (10 s at most each) until `f`'s supervisor has read its job records and listed its
// stored data sets: a submit on a set not yet listed is a passing loss, which a test that
// holds a submit's write on purpose took for the submit's own refusal (it came first under
// the sanitizers, where the sets are listed after the records are read).
void records_and_sets_read(job_fixture& f) {
  f.await([](const job_status& s) { return !s.detail.empty(); }, 10);
  for (int tries = 0; tries < 200; ++tries) {
    bool listed = false;
    f.self->request(f.supervisor, f.wait, dlist_atom::value, f.alice)
        .receive([&](std::vector<data_set_info>&) { listed = true; }, [](caf::error&) {});
    if (listed) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  FAIL("the stored data sets were not listed within 10 s");
}

}  // namespace

TEST_SUITE("submission id") {
  TEST_CASE("a submit asked again with its submission id is answered with the same job") {
    auto st = stored_job();
    add_bobs_set(st);
    job_fixture f(st);
    records_and_sets_read(f);
    auto first = submit(f, f.alice, free_spec, "a1b2");
    REQUIRE_MESSAGE(first.has_value(), first.error().message());
    CHECK(*first == "job-2");
    auto again = submit(f, f.alice, free_spec, "a1b2");
    REQUIRE_MESSAGE(again.has_value(), again.error().message());
    CHECK(*again == "job-2");
    CHECK(jobs_of(f, f.alice) == 2);  // job-1 and job-2
    // Another id is another job; the same id of another owner too (ids are the owner's).
    auto other = submit(f, f.alice, free_spec, "c3d4");
    REQUIRE(other.has_value());
    CHECK(*other == "job-3");
    auto bobs = submit(f, "user/bob", free_spec, "a1b2");
    REQUIRE_MESSAGE(bobs.has_value(), bobs.error().message());
    CHECK(*bobs == "job-4");
    // The same id with another spec is refused, naming the job it made; nothing is made.
    auto changed = submit(f, f.alice, free_spec + "# another\n[eval]\nevery = 2\n", "a1b2");
    REQUIRE_FALSE(changed.has_value());
    CHECK(changed.error().code() == errc::invalid_argument);
    CHECK_MESSAGE(
        changed.error().message().find("made job-2 from another spec") != std::string::npos,
        changed.error().message());
    CHECK(jobs_of(f, f.alice) == 3);
  }

  TEST_CASE("a submit asked again while the first is being stored gets the first's job") {
    auto st = stored_job();
    st.held_keys.insert(job_record_key("job-2"));
    job_fixture f(st);
    records_and_sets_read(f);
    auto first = f.self->request(f.supervisor, f.wait, submit_atom::value, f.alice, free_spec,
                                 std::string("held-1"));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // its record is held
    auto again = f.self->request(f.supervisor, f.wait, submit_atom::value, f.alice, free_spec,
                                 std::string("held-1"));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    f.self->send(f.store, caf::put_atom::value, held_atom::value);  // it lands
    std::string first_id, again_id;
    first.receive([&](std::string& x) { first_id = x; },
                  [&](caf::error& e) { FAIL(f.sys.render(e)); });
    again.receive([&](std::string& x) { again_id = x; },
                  [&](caf::error& e) { FAIL(f.sys.render(e)); });
    CHECK(first_id == "job-2");
    CHECK(again_id == "job-2");
    CHECK(jobs_of(f, f.alice) == 2);
  }

  TEST_CASE("a submit refused while its repeat waited gives the repeat its refusal") {
    // The repeat was taken anew instead: a job its client had given up on (and, told the job
    // may have been made, had submitted again itself with another id) was made after all.
    auto st = stored_job();
    st.held_keys.insert(job_record_key("job-2"));
    job_fixture f(st, {}, {}, std::chrono::milliseconds(500));
    records_and_sets_read(f);
    auto first = f.self->request(f.supervisor, f.wait, submit_atom::value, f.alice, free_spec,
                                 std::string("refused-1"));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    auto again = f.self->request(f.supervisor, f.wait, submit_atom::value, f.alice, free_spec,
                                 std::string("refused-1"));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    f.self->send(f.store, caf::put_atom::value, held_atom::value, false);  // the write fails
    std::string first_why = "answered", again_why = "answered";
    first.receive([](std::string& x) { FAIL("made " << x); },
                  [&](caf::error& e) { first_why = f.sys.render(e); });
    again.receive([](std::string& x) { FAIL("the repeat made " << x); },
                  [&](caf::error& e) { again_why = f.sys.render(e); });
    CHECK(first_why != "answered");
    CHECK(again_why == first_why);  // the first's refusal
    CHECK(jobs_of(f, f.alice) == 1);
    // Known not stored (the read-back found nothing): asked again, the job is made.
    auto made = submit(f, f.alice, free_spec, "refused-1");
    CHECK_MESSAGE(made.has_value(), made.error().message());
    CHECK(jobs_of(f, f.alice) == 2);
  }

  TEST_CASE("a submission whose record's outcome is unknown is not made again") {
    // The write failed and so did the read that checks it: the record may be in the store,
    // and a repeat with the same id made a second job beside it, both run after a restart.
    auto st = stored_job();
    st.unwritable.insert(job_record_key("job-2"));
    st.unreadable.insert(job_record_key("job-2"));
    job_fixture f(st, {}, {}, std::chrono::milliseconds(500));
    records_and_sets_read(f);
    auto first = submit(f, f.alice, free_spec, "unknown-1");
    REQUIRE_FALSE(first.has_value());
    auto again = submit(f, f.alice, free_spec, "unknown-1");
    REQUIRE_FALSE(again.has_value());
    CHECK(again.error().code() == errc::io_error);
    CHECK_MESSAGE(
        again.error().message().find("whether the job was made is unknown") != std::string::npos,
        again.error().message());
    CHECK(jobs_of(f, f.alice) == 1);
    // Another submission is its own.
    auto other = submit(f, f.alice, free_spec, "unknown-2");
    CHECK_MESSAGE(other.has_value(), other.error().message());
  }

  TEST_CASE("a core that restarted answers a submission id from the job's record") {
    auto st = stored_job(2, free_spec);
    auto record = decode_job_record(st.kept.at(job_record_key("job-1")));
    REQUIRE(record.has_value());
    record->second.submission = "before-restart";
    st.kept[job_record_key("job-1")] = encode_job_record(free_spec, record->second);
    job_fixture f(st);
    auto id = submit(f, f.alice, free_spec, "before-restart");  // waits for the records
    REQUIRE_MESSAGE(id.has_value(), id.error().message());
    CHECK(*id == "job-1");
    CHECK(jobs_of(f, f.alice) == 1);
  }

  TEST_CASE("a malformed submission id is refused and nothing is submitted") {
    job_fixture f(stored_job());
    f.await([](const job_status& s) { return !s.detail.empty(); }, 10);
    for (const std::string& bad : {std::string(), std::string(65, 'a'), std::string("a b"),
                                   std::string("a\x1b[2J"), std::string("\xc3\xa9")}) {
      auto id = submit(f, f.alice, free_spec, bad);
      REQUIRE_FALSE(id.has_value());
      CHECK(id.error().code() == errc::invalid_argument);
      CHECK(id.error().message().find("submission id") != std::string::npos);
    }
    CHECK(jobs_of(f, f.alice) == 1);
  }
}
