#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>

#include "access.hpp"
#include "gflex/runtime/job_spec.hpp"
#include "gflex/runtime/lifetime.hpp"
#include "gflex/runtime/secret_file.hpp"
#include "gflex/runtime/tls_credentials.hpp"
#include "temp_dir.hpp"

using namespace gflex;

TEST_SUITE("access") {
  TEST_CASE("API keys and join tokens: fresh, well-formed, stored only as digests") {
    auto key = new_api_key();
    auto token = new_join_token();
    CHECK(looks_like_api_key(key));
    CHECK_FALSE(looks_like_join_token(key));
    CHECK(looks_like_join_token(token));
    CHECK_FALSE(looks_like_api_key(token));
    CHECK(new_api_key() != key);
    for (std::string bad : {std::string(""), std::string("gfk_"), "gfk_" + std::string(63, 'a'),
                            "gfk_" + std::string(64, 'A'), "gfk_" + std::string(64, 'g'),
                            "gfk_" + std::string(65, 'a'), "xfk_" + std::string(64, 'a')})
      CHECK_FALSE(looks_like_api_key(bad));
    auto digest = secret_digest(key);
    CHECK(digest.size() == 64);
    CHECK(digest == secret_digest(key));
    CHECK(digest != secret_digest(token));
    CHECK(digest.find(key.substr(4, 16)) == std::string::npos);
    CHECK(api_key_store_key(digest) == "apikey/" + digest);
    CHECK(token_store_key(digest) == "token/" + digest);
    CHECK(same_secret(key, std::string(key)));
    CHECK_FALSE(same_secret(key, new_api_key()));
    CHECK_FALSE(same_secret(key, key.substr(0, 10)));
  }

  TEST_CASE("token records round-trip; malformed ones are refused") {
    join_token_record r{
        "0123456789ab", node_tier::core, 1700000000, 1700003600, true, 7, 2, {"aa", "bb"}, ""};
    auto back = decode_token_record(encode_token_record(r));
    REQUIRE(back.has_value());
    CHECK(back->id == r.id);
    CHECK(back->tier == node_tier::core);
    CHECK(back->created_unix == r.created_unix);
    CHECK(back->expires_unix == r.expires_unix);
    CHECK(back->revoked);
    CHECK(back->joins == 7);
    CHECK(back->uses == 2);
    CHECK(back->keys == std::vector<std::string>{"aa", "bb"});
    auto bytes = [](std::string s) { return std::vector<uint8_t>(s.begin(), s.end()); };
    for (std::string bad :
         {std::string("{"), std::string("[]"),
          std::string(R"({"id":"a","tier":"gold","created":1,"expires":0,"revoked":false,)"
                      R"("joins":0})"),
          std::string(R"({"id":"a","tier":"core","created":1.5,"expires":0,"revoked":false,)"
                      R"("joins":0})"),
          std::string(R"({"id":"a","tier":"core","created":1,"expires":0,"revoked":false,)"
                      R"("joins":-1})"),
          std::string(R"({"id":"a","tier":"core","created":1,"expires":0})")}) {
      auto r2 = decode_token_record(bytes(bad));
      CHECK_MESSAGE(!r2.has_value(), bad);
      if (!r2) CHECK(r2.error().code() == errc::malformed_message);
    }
  }

  TEST_CASE("a token admits its own tier until it expires (new keys) or is revoked (all)") {
    join_token_record r{"0123456789ab", node_tier::community, 100, 200, false, 0, 0, {}, ""};
    CHECK(admits(r, "community", "k1", 150).has_value());
    auto tier = admits(r, "core", "k1", 150);
    REQUIRE_FALSE(tier.has_value());
    CHECK(tier.error().message().find("admits the community tier, not the core tier") !=
          std::string::npos);
    auto late = admits(r, "community", "k1", 200);
    REQUIRE_FALSE(late.has_value());
    CHECK(late.error().message().find("has expired") != std::string::npos);
    // A key it bound before it expired rejoins: an expired token turned a whole tier away
    // when a core restart made every node rejoin, and each node exited.
    r.keys.push_back("k0");
    CHECK(admits(r, "community", "k0", 1LL << 40).has_value());
    CHECK_FALSE(admits(r, "community", "k1", 1LL << 40).has_value());
    r.keys.clear();
    r.expires_unix = 0;
    CHECK(admits(r, "community", "k1", 1LL << 40).has_value());
    r.keys.push_back("k1");  // revoked, it admits no key, bound or not
    r.revoked = true;
    auto revoked = admits(r, "community", "k1", 150);
    REQUIRE_FALSE(revoked.has_value());
    CHECK(revoked.error().code() == errc::permission_denied);
    CHECK(revoked.error().message().find("was revoked") != std::string::npos);
  }

  TEST_CASE("a token with a use limit binds to the keys that used it") {
    join_token_record r{"0123456789ab", node_tier::community, 100, 0, false, 0, 1, {}, ""};
    CHECK(admits(r, "community", "k1", 150).has_value());  // unused: any key
    r.keys.push_back("k1");
    CHECK(admits(r, "community", "k1", 150).has_value());  // its key comes back
    auto second = admits(r, "community", "k2", 150);
    REQUIRE_FALSE(second.has_value());
    CHECK(second.error().code() == errc::permission_denied);
    CHECK(second.error().message().find("is used up") != std::string::npos);
    r.uses = 0;  // any number of keys
    CHECK(admits(r, "community", "k2", 150).has_value());
    r.uses = 2;
    CHECK(admits(r, "community", "k2", 150).has_value());
    r.keys.push_back("k2");
    CHECK_FALSE(admits(r, "community", "k3", 150).has_value());
    // Closed to new keys (a node that joined with it was caught): its keys may come back.
    r.closed = "node x joined with it and was caught";
    CHECK(admits(r, "community", "k1", 150).has_value());
    auto closed = admits(r, "community", "k3", 150);
    REQUIRE_FALSE(closed.has_value());
    CHECK(closed.error().message().find("admits no new node keys: node x") != std::string::npos);
    // A record from before use limits (no "uses", no "keys") admits any number of keys.
    std::string old =
        R"({"id":"a","tier":"core","created":1,"expires":0,"revoked":false,"joins":3})";
    auto back = decode_token_record(std::vector<uint8_t>(old.begin(), old.end()));
    REQUIRE(back.has_value());
    CHECK(back->uses == 0);
    CHECK(back->keys.empty());
  }

  TEST_CASE("lifetimes: 0, or a count with s, m, h or d, at most ten years") {
    CHECK(*parse_lifetime("0") == 0);
    CHECK(*parse_lifetime("90s") == 90);
    CHECK(*parse_lifetime("90m") == 5400);
    CHECK(*parse_lifetime("12h") == 43200);
    CHECK(*parse_lifetime("7d") == 604800);
    CHECK(*parse_lifetime("3660d") == 3660LL * 86400);
    for (const char* bad :
         {"", "s", "7", "-1d", "0d", "1.5h", "7w", "3661d", "99999999999999999d", "7 d", "d7"})
      CHECK_MESSAGE(!parse_lifetime(bad).has_value(), bad);
  }

  TEST_CASE("failed joins: five are free, then every answer waits longer, up to a cap") {
    join_failures f;
    auto t = join_failures::clock::now();
    using ms = std::chrono::milliseconds;
    for (int i = 0; i < join_failures::free_failures - 1; ++i) f.record("10.0.0.1", t);
    CHECK(f.delay("10.0.0.1", t) == ms(0));
    f.record("10.0.0.1", t);
    CHECK(f.delay("10.0.0.1", t) == ms(250));
    f.record("10.0.0.1", t);
    CHECK(f.delay("10.0.0.1", t) == ms(500));
    for (int i = 0; i < 20; ++i) f.record("10.0.0.1", t);
    CHECK(f.delay("10.0.0.1", t) == std::chrono::duration_cast<ms>(join_failures::max_delay));
    // Other addresses are not slowed; old failures age out of the window.
    CHECK(f.delay("10.0.0.2", t) == ms(0));
    CHECK(f.count("10.0.0.1", t) == 26);
    CHECK(f.count("10.0.0.1", t + join_failures::window + std::chrono::seconds(1)) == 0);
    CHECK(f.delay("10.0.0.1", t + join_failures::window + std::chrono::seconds(1)) == ms(0));
    CHECK(f.total() == 26);
  }

  TEST_CASE("a flood of addresses does not grow the record without bound") {
    join_failures f;
    auto t = join_failures::clock::now();
    for (int i = 0; i < 70000; ++i) f.record("a" + std::to_string(i), t);
    CHECK(f.total() == 70000);
    CHECK(f.count("a69999", t) == 1);
    int remembered = 0;
    for (int i = 0; i < 70000; i += 100) remembered += f.count("a" + std::to_string(i), t);
    CHECK(remembered <= 700);
    CHECK(remembered < 700);  // some were dropped
  }

  TEST_CASE("a job spec larger than 64 KiB is refused before it is parsed") {
    std::string big = "[job]\nworkload = \"fashion-mlp\"\n# " + std::string(70000, 'x') + "\n";
    auto spec = parse_job_spec(big, "big.toml");
    REQUIRE_FALSE(spec.has_value());
    CHECK(spec.error().message().find("more than a job spec may have") != std::string::npos);
  }
}

TEST_SUITE("secret files") {
  TEST_CASE("a secret file: its first line, only if no one else may read it") {
    test::temp_dir dir;
    auto file = dir / "key";
    std::ofstream(file) << "gfk_abc \r\nsecond line\n";
    ::chmod(file.c_str(), 0600);
    auto key = read_secret_file(file);
    REQUIRE_MESSAGE(key.has_value(), key.error().message());
    CHECK(*key == "gfk_abc");
    ::chmod(file.c_str(), 0640);
    auto open = read_secret_file(file);
    REQUIRE_FALSE(open.has_value());
    CHECK(open.error().message().find("may be read by others") != std::string::npos);
    auto missing = read_secret_file(dir / "absent");
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().code() == errc::io_error);
    auto link = dir / "link";
    ::chmod(file.c_str(), 0600);
    std::filesystem::create_symlink(file, link);
    auto linked = read_secret_file(link);
    REQUIRE_FALSE(linked.has_value());
    CHECK_MESSAGE(linked.error().message().find("is a symbolic link") != std::string::npos,
                  linked.error().message());
    CHECK_FALSE(read_secret_file(dir.path()).has_value());
  }

  TEST_CASE("a pipe as a secret file is refused at once, named, not waited on for a writer") {
    // `mkfifo key; gflex status --api-key-file key` waited for ever in open(2).
    test::temp_dir dir;
    const auto fifo = dir / "key";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    auto read = std::async(std::launch::async, [&] { return read_secret_file(fifo); });
    const bool done = read.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
    // A reader stuck in open is let go by a writer, so that the test ends (and fails).
    if (!done) {
      const int writer = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
      if (writer >= 0) ::close(writer);
    }
    CHECK_MESSAGE(done, "opening a pipe that no one writes blocked");
    auto got = read.get();
    REQUIRE_FALSE(got.has_value());
    CHECK(got.error().code() == errc::invalid_argument);
    CHECK(got.error().message() == fifo.string() + " is not a regular file");
  }
}

TEST_SUITE("tls credentials") {
  TEST_CASE("a core's credentials: keys private, a bundle that checks, never overwritten") {
    test::temp_dir dir;
    auto fingerprint = create_core_credentials(dir.path());
    REQUIRE_MESSAGE(fingerprint.has_value(), fingerprint.error().message());
    CHECK(fingerprint->starts_with("SHA256:"));
    CHECK(fingerprint->size() == 7 + 64);
    auto files = core_tls_files::in(dir.path());
    for (const auto& key : {files.ca_key, files.core_key}) {
      struct stat st {};
      REQUIRE(::stat(key.c_str(), &st) == 0);
      CHECK((st.st_mode & 0777) == 0600);
    }
    // The bundle pins the same authority the core's own files name.
    CHECK(check_core_bundle(files.bundle).has_value());
    CHECK(*pinned_fingerprint(files.bundle) == *fingerprint);
    CHECK(*pinned_fingerprint(files.ca_cert) == *fingerprint);
    CHECK(*pinned_fingerprint(files.core_cert) == *fingerprint);
    auto again = create_core_credentials(dir.path());
    REQUIRE_FALSE(again.has_value());
    CHECK(again.error().message().find("already exists") != std::string::npos);
    CHECK(*pinned_fingerprint(files.bundle) == *fingerprint);
    // Another core's credentials pin another authority.
    test::temp_dir other;
    auto second = create_core_credentials(other.path());
    REQUIRE(second.has_value());
    CHECK(*second != *fingerprint);
  }

  TEST_CASE("what is not a core bundle is refused, saying why") {
    test::temp_dir dir;
    REQUIRE(create_core_credentials(dir.path()).has_value());
    auto files = core_tls_files::in(dir.path());
    auto why = [](const std::filesystem::path& p) {
      auto r = check_core_bundle(p);
      return r ? std::string() : r.error().message();
    };
    // A file that cannot be read says why, not that its contents are wrong.
    const auto absent = dir / "absent.pem";
    CHECK(why(absent) == absent.string() + ": cannot be read (No such file or directory)");
    if (::geteuid() != 0) {  // root reads any file
      const auto unreadable = dir / "unreadable.pem";
      std::filesystem::copy_file(files.bundle, unreadable);
      std::filesystem::permissions(unreadable, std::filesystem::perms::none);
      CHECK(why(unreadable) == unreadable.string() + ": cannot be read (Permission denied)");
      CHECK(pinned_fingerprint(unreadable).error().message().find("Permission denied") !=
            std::string::npos);
    }
    CHECK(why(files.ca_cert).find("two certificates") != std::string::npos);
    // The core's own chain has no key in it.
    CHECK(why(files.core_cert).find("no private key") != std::string::npos);
    // A bundle whose key belongs to another certificate.
    test::temp_dir other;
    REQUIRE(create_core_credentials(other.path()).has_value());
    std::ifstream a(files.bundle), b(core_tls_files::in(other.path()).bundle);
    std::string mine((std::istreambuf_iterator<char>(a)), {});
    std::string theirs((std::istreambuf_iterator<char>(b)), {});
    auto key_at = theirs.find("-----BEGIN PRIVATE KEY-----");
    REQUIRE(key_at != std::string::npos);
    auto mixed = dir / "mixed.pem";
    std::ofstream(mixed) << mine.substr(0, mine.find("-----BEGIN PRIVATE KEY-----"))
                         << theirs.substr(key_at);
    CHECK(why(mixed).find("does not belong") != std::string::npos);
    auto no_file = pinned_fingerprint(absent);
    REQUIRE_FALSE(no_file.has_value());
    CHECK(no_file.error().message().find("No such file or directory") != std::string::npos);
  }

  TEST_CASE("a core's public files are readable by all, whatever the umask") {
    // The core's service makes its credentials under UMask=0077: the bundle handed to nodes
    // and clients, and the certificates, came out 0600, and a node's service running as
    // another user could not read its copy.
    test::temp_dir dir;
    const mode_t before = ::umask(077);
    auto made = create_core_credentials(dir.path());
    ::umask(before);
    REQUIRE_MESSAGE(made.has_value(), made.error().message());
    auto files = core_tls_files::in(dir.path());
    auto mode_of = [](const std::filesystem::path& p) {
      struct stat st {};
      REQUIRE(::stat(p.c_str(), &st) == 0);
      return st.st_mode & 0777;
    };
    for (const auto& pub : {files.ca_cert, files.core_cert, files.bundle})
      CHECK_MESSAGE(mode_of(pub) == 0644, pub.string());
    for (const auto& key : {files.ca_key, files.core_key})
      CHECK_MESSAGE(mode_of(key) == 0600, key.string());
  }
}
