#include <doctest/doctest.h>
#include <sys/stat.h>

#include <fstream>

#include "gflex/runtime/identity.hpp"
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
    CHECK(open.error().message().find("read by others") != std::string::npos);
    auto junk = dir / "junk.key";
    std::ofstream(junk) << "not a key";
    ::chmod(junk.c_str(), 0600);
    auto bad = node_identity::load_or_create(junk);
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().message().find("is not a node key") != std::string::npos);
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
}
