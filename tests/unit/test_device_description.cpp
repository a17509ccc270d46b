/// What a node says computes for it (actors/node/device_description.hpp): within what a hello
/// may carry however many GPUs it has.

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "device_description.hpp"

using namespace gflex;

TEST_SUITE("device description") {
  TEST_CASE("one device, or a few GPUs, are described in full") {
    CHECK(describe_devices({"cpu: OpenBLAS, 2 threads"}, "unused", 512) ==
          "cpu: OpenBLAS, 2 threads");
    CHECK(describe_devices({"cuda:0 A", "cuda:1 B"}, "NCCL all-reduce", 512) ==
          "cuda:0 A; cuda:1 B (NCCL all-reduce)");
  }

  TEST_CASE("a group of many GPUs fits a hello: the first ones, and how many more") {
    // Nine of 64 characters each came to 600 and more: the core refused the node for good.
    std::vector<std::string> ranks;
    for (int r = 0; r < 9; ++r)
      ranks.push_back("cuda:" + std::to_string(r) +
                      " NVIDIA RTX 6000 Ada Generation (sm_89, 142 SMs, 47.5 GiB)");
    const auto d = describe_devices(ranks, "NCCL all-reduce over 9 GPUs", 512);
    CHECK(d.size() <= 512);
    CHECK(d.rfind(ranks[0], 0) == 0);
    CHECK(d.find("; 2 more") != std::string::npos);
    CHECK(d.find("(NCCL all-reduce over 9 GPUs)") != std::string::npos);
    // However many, and however long each one's words.
    for (size_t count : {1u, 2u, 64u, 1024u}) {
      const std::vector<std::string> long_ranks(count, std::string(700, 'g'));
      const auto e = describe_devices(long_ranks, std::string(900, 'r'), 512);
      CHECK(e.size() <= 512);
      CHECK(e.rfind("ggg", 0) == 0);
    }
  }
}
