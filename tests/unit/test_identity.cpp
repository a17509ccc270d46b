#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <future>

#include "gflex/runtime/identity.hpp"
#include "gflex/runtime/secret_file.hpp"
#include "skip_case.hpp"
#include "temp_dir.hpp"

using namespace gflex;

TEST_SUITE("identity") {
  TEST_CASE("a node key is made once, kept with mode 0600, and read back the same") {
    test::temp_dir dir;
    auto file = dir / "node" / "node.key";
    auto first = node_identity::load_or_create(file);
    REQUIRE_MESSAGE(first.has_value(), first.error().message());
    struct stat st {};
    REQUIRE(::stat(file.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    auto again = node_identity::load_or_create(file);
    REQUIRE(again.has_value());
    CHECK(again->public_key() == first->public_key());
    CHECK(first->public_key().size() == public_key_bytes);
    CHECK(key_hex(first->public_key()).size() == 64);
  }

  TEST_CASE("a key file others may read, or that is not a key, is refused") {
    test::temp_dir dir;
    auto file = dir / "node.key";
    REQUIRE(node_identity::load_or_create(file).has_value());
    ::chmod(file.c_str(), 0644);
    auto open = node_identity::load_or_create(file);
    REQUIRE_FALSE(open.has_value());
    // The mode as chmod takes it: "mode 420 in octal digits" was 0644 printed in decimal.
    CHECK_MESSAGE(open.error().message().find(
                      "may be read by others (mode 0644, should be 0600)") != std::string::npos,
                  open.error().message());
    auto junk = dir / "junk.key";
    std::ofstream(junk) << "not a key";
    ::chmod(junk.c_str(), 0600);
    auto bad = node_identity::load_or_create(junk);
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().message().find("is not a node key") != std::string::npos);
  }

  TEST_CASE("a key file that is a pipe is refused at once, named, not waited on for a writer") {
    // gflex-node waited for ever at start in open(2) when DATA/node.key was a FIFO.
    test::temp_dir dir;
    const auto fifo = dir / "node.key";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    auto load = std::async(std::launch::async, [&] { return node_identity::load_or_create(fifo); });
    const bool done = load.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
    // A reader stuck in open is let go by a writer, so that the test ends (and fails).
    if (!done) {
      const int writer = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
      if (writer >= 0) ::close(writer);
    }
    CHECK_MESSAGE(done, "opening a pipe that no one writes blocked");
    auto got = load.get();
    REQUIRE_FALSE(got.has_value());
    CHECK(got.error().message() == fifo.string() + ": is not a regular file");
  }

  TEST_CASE("signatures verify for their key and message only") {
    auto a = node_identity::generate(), b = node_identity::generate();
    std::vector<uint8_t> update{1, 2, 3, 4};
    auto msg = result_message(42, update);
    auto sig = a.sign(msg);
    CHECK(verify_signature(a.public_key(), msg, sig));
    CHECK_FALSE(verify_signature(b.public_key(), msg, sig));  // another node's key
    CHECK_FALSE(verify_signature(a.public_key(), result_message(43, update), sig));
    update[0] = 9;  // the update changed after signing
    CHECK_FALSE(verify_signature(a.public_key(), result_message(42, update), sig));
    CHECK_FALSE(verify_signature({}, msg, sig));
    CHECK_FALSE(verify_signature(a.public_key(), msg, std::vector<uint8_t>(10, 0)));
    CHECK(hello_message(2, "n") != hello_message(2, "m"));
  }

  TEST_CASE("a key file that cannot be written whole is not left behind") {
    // A full disk (here: a file size limit of 10 bytes) or a crash between the create and the
    // write left a short node.key, which every later start refused ("is not a node key")
    // until someone deleted it: under systemd, a restart every 10 s for good.
    test::temp_dir dir;
    const auto file = dir.path() / "node.key";
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::signal(SIGXFSZ, SIG_IGN);
      rlimit small{10, 10};
      ::setrlimit(RLIMIT_FSIZE, &small);
      auto made = node_identity::load_or_create(file);
      ::_exit(made ? 0 : 1);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK_MESSAGE(WEXITSTATUS(status) == 1, "a 64-byte key was written past a 10-byte limit?");
    CHECK_FALSE(std::filesystem::exists(file));
    for (const auto& e : std::filesystem::directory_iterator(dir.path()))
      CHECK_MESSAGE(false, "left behind: " << e.path().filename().string());
    // Without the limit it is made, and kept.
    auto made = node_identity::load_or_create(file);
    REQUIRE(made.has_value());
    CHECK(node_identity::load_or_create(file)->public_key() == made->public_key());
    // Never over an existing file.
    const std::vector<uint8_t> other(8, 1);
    auto refused = write_new_file(file, other);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().message().find("cannot create") != std::string::npos);
    CHECK(node_identity::load_or_create(file)->public_key() == made->public_key());
  }

  TEST_CASE("a key file's temporary copies left by writers that died are removed") {
    // A crash between the create and the rename left node.key.tmp.PID holding the secret,
    // for good unless a later writer got the same pid.
    test::temp_dir dir;
    const auto file = dir.path() / "node.key";
    std::fflush(nullptr);
    const pid_t dead = ::fork();
    REQUIRE(dead >= 0);
    if (dead == 0) ::_exit(0);
    REQUIRE(::waitpid(dead, nullptr, 0) == dead);  // its pid runs nothing now
    const auto left = dir.path() / ("node.key.tmp." + std::to_string(dead));
    const auto running = dir.path() / ("node.key.tmp." + std::to_string(::getppid()));
    const auto other = dir.path() / "other.key.tmp.1";
    for (const auto& f : {left, running, other}) std::ofstream(f) << "a secret";
    REQUIRE(node_identity::load_or_create(file).has_value());
    CHECK_FALSE(std::filesystem::exists(left));
    CHECK(std::filesystem::exists(running));  // its writer may still be at work
    CHECK(std::filesystem::exists(other));    // another file's
  }

  TEST_CASE("a key or secret file another user owns is refused, naming its owner") {
    // Mode 0600 keeps out all but the owner: a root-run node or core given someone else's
    // directory took their node.key or operator.key, which they may read or replace.
    if (::geteuid() != 0) GFLEX_SKIP_CASE("giving a file another owner needs root");
    test::temp_dir dir;
    auto key = dir / "node.key";
    REQUIRE(node_identity::load_or_create(key).has_value());
    auto secret = dir / "operator.key";
    std::ofstream(secret) << "gfk_abc\n";
    ::chmod(secret.c_str(), 0600);
    REQUIRE(read_secret_file(secret).has_value());
    for (const auto& file : {key, secret}) REQUIRE(::chown(file.c_str(), 4242, 4242) == 0);
    auto node = node_identity::load_or_create(key);
    REQUIRE_FALSE(node.has_value());
    CHECK(node.error().code() == errc::invalid_argument);
    CHECK_MESSAGE(node.error().message().find("is owned by uid 4242") != std::string::npos,
                  node.error().message());
    auto read = read_secret_file(secret);
    REQUIRE_FALSE(read.has_value());
    CHECK(read.error().code() == errc::invalid_argument);
    CHECK_MESSAGE(read.error().message().find(secret.string() + " is owned by uid 4242") == 0,
                  read.error().message());
    // Files root owns are taken (a packaged default).
    for (const auto& file : {key, secret}) REQUIRE(::chown(file.c_str(), 0, 0) == 0);
    CHECK(node_identity::load_or_create(key).has_value());
    CHECK(read_secret_file(secret).has_value());
  }
}
