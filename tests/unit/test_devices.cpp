/// Device discovery's parsing and its answers where there is no GPU.

#include <doctest/doctest.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "forwarding_backend.hpp"
#include "gflex/kernels/backend.hpp"
#include "gflex/kernels/calibration.hpp"
#include "gflex/kernels/devices.hpp"
#include "gflex/kernels/workload.hpp"
#include "skip_case.hpp"

using namespace gflex;
using namespace gflex::kernels;

TEST_SUITE("devices") {
  TEST_CASE("--gpus lists: all by default, distinct existing ordinals") {
    const std::vector<int> three{0, 1, 2};
    CHECK(parse_gpu_list("", three).value() == three);
    CHECK(parse_gpu_list("", {}).value().empty());
    CHECK(parse_gpu_list("0,2", three).value() == std::vector<int>{0, 2});
    CHECK(parse_gpu_list("1", {0, 1}).value() == std::vector<int>{1});
    auto missing = parse_gpu_list("0,2", {0, 1});
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().code() == errc::no_device);
    CHECK(missing.error().message().find("no usable CUDA device 2 (usable: 0,1)") !=
          std::string::npos);
    for (const char* bad : {"x", "0,,1", "-1", "1,", "0 1", "1.5"}) {
      CAPTURE(bad);
      auto r = parse_gpu_list(bad, {0, 1, 2, 3, 4, 5, 6, 7});
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code() == errc::invalid_argument);
    }
    CHECK(parse_gpu_list("1,1", {0, 1}).error().message().find("twice") != std::string::npos);
  }

  TEST_CASE("a device list from --backend cuda:N is named so in its errors") {
    // The node's --backend cuda:7 was refused as "--gpus: ...", a flag the user never gave.
    auto missing = parse_gpu_list("7", {0, 1}, "--backend cuda:");
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().message().starts_with(
        "--backend cuda:7: there is no usable CUDA device 7 (usable: 0,1)"));
    auto bad = parse_gpu_list("x", {0, 1}, "--backend cuda:");
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().message() ==
          "--backend cuda:x: 'x' is not a device number (e.g. "
          "--backend cuda:0)");
    CHECK(parse_gpu_list("x", {0}).error().message().starts_with("--gpus: 'x'"));
  }

  TEST_CASE("--gpus names CUDA device numbers, which skip a device the driver cannot describe") {
    // cuda_devices() leaves out such a device; the others keep their numbers. Taken as
    // positions, the default chose the broken device 0, and --gpus 1,2 was refused.
    const std::vector<int> usable{1, 2};
    CHECK(parse_gpu_list("", usable).value() == usable);
    CHECK(parse_gpu_list("1,2", usable).value() == usable);
    CHECK(parse_gpu_list("2", usable).value() == std::vector<int>{2});
    auto broken = parse_gpu_list("0", usable);
    REQUIRE_FALSE(broken.has_value());
    CHECK(broken.error().message().find("no usable CUDA device 0 (usable: 1,2)") !=
          std::string::npos);
  }

  TEST_CASE("a device older than the build's kernels is left out, saying why") {
    // Built for sm_80 and sm_90, a Volta or Turing card was listed: auto took the GPU path and
    // the first kernel launch failed (no kernel image for the device), so the node did not
    // start where it would have served on the CPU.
    auto gpu = [](int ordinal, const char* name, int major, int minor) {
      gpu_info d;
      d.ordinal = ordinal;
      d.name = name;
      d.cc_major = major;
      d.cc_minor = minor;
      return d;
    };
    const std::vector<gpu_info> all{
        gpu(0, "Tesla V100", 7, 0),      gpu(1, "A100", 8, 0), gpu(2, "RTX 4090", 8, 9),
        gpu(3, "Tesla T4", 7, 5),        gpu(4, "H100", 9, 0), gpu(5, "B200", 10, 0),
        gpu(6, "GeForce GTX 1080", 6, 1)};
    std::vector<std::string> why;
    auto usable = runnable_cuda_devices(all, {80, 90}, &why);
    std::vector<int> ordinals;
    for (const auto& d : usable) ordinals.push_back(d.ordinal);
    CHECK(ordinals == std::vector<int>{1, 2, 4, 5});  // 10.0 runs the sm_90 PTX
    REQUIRE(why.size() == 3);
    CHECK(why[0] ==
          "cuda:0 Tesla V100 (compute capability 7.0) is left out: this build's kernels are for "
          "sm_80, sm_90 (compute capability 8.0 and later); a build with "
          "CMAKE_CUDA_ARCHITECTURES=70 among them would run on it");
    CHECK(why[1].find("cuda:3 Tesla T4 (compute capability 7.5) is left out") == 0);
    CHECK(why[2].find("cuda:6 GeForce GTX 1080 (compute capability 6.1)") == 0);
    // Only old cards: none usable, and a node on auto serves on the CPU.
    CHECK(runnable_cuda_devices({gpu(0, "Tesla T4", 7, 5)}, {80, 90}).empty());
    // A build that includes the card's architecture keeps it; unknown architectures drop none.
    CHECK(runnable_cuda_devices({gpu(0, "Tesla T4", 7, 5)}, {75, 80}).size() == 1);
    CHECK(runnable_cuda_devices(all, {}).size() == all.size());
    // Naming the left-out card (--backend cuda:3) is refused, saying what the kernels run on.
    std::vector<int> numbers;
    for (const auto& d : usable) numbers.push_back(d.ordinal);
    auto named = parse_gpu_list("3", numbers);
    REQUIRE_FALSE(named.has_value());
    CHECK(named.error().code() == errc::no_device);
    CHECK(named.error().message().find("no usable CUDA device 3 (usable: 1,2,4,5)") !=
          std::string::npos);
    // The build's architectures come from its compiler: sm_80 and sm_90 here.
    if (cuda_compiled()) {
      const auto built = cuda_architectures();
      REQUIRE_FALSE(built.empty());
      CHECK(std::is_sorted(built.begin(), built.end()));
      CHECK(built.front() >= 50);
      CHECK(named.error().message().find("this build's kernels run on sm_" +
                                         std::to_string(built.front())) != std::string::npos);
    } else {
      CHECK(cuda_architectures().empty());
    }
  }

  TEST_CASE("byte sizes with binary suffixes") {
    CHECK(parse_byte_size("0").value() == 0);
    CHECK(parse_byte_size("1073741824").value() == 1073741824ULL);
    CHECK(parse_byte_size("512M").value() == 512ULL << 20);
    CHECK(parse_byte_size("6G").value() == 6ULL << 30);
    CHECK(parse_byte_size("6GiB").value() == 6ULL << 30);
    CHECK(parse_byte_size("2Ki").value() == 2048);
    for (const char* bad : {"", "G", "6X", "-1", "6 G", "99999999999999999999", "20000000000T"}) {
      CAPTURE(bad);
      auto r = parse_byte_size(bad);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().message().find("byte size") != std::string::npos);
    }
  }

  TEST_CASE("without a device: an empty list with its reason, calibration refused") {
    std::string why;
    auto devices = cuda_devices(&why);
    if (!devices.empty()) {
      MESSAGE("skipped: this machine has " << devices.size() << " CUDA device(s)");
      CHECK(devices[0].memory_bytes > 0);
      CHECK(devices[0].sm_count > 0);
      CHECK_FALSE(devices[0].name.empty());
      return;
    }
    CHECK_FALSE(why.empty());
    CHECK(cuda_device_count() == 0);
    auto cal = calibrate_cuda_device(0);
    REQUIRE_FALSE(cal.has_value());
    CHECK(cal.error().code() == errc::no_device);
    auto rates = measure_cuda_gemm_rates(0);
    REQUIRE_FALSE(rates.has_value());
    CHECK(rates.error().code() == errc::no_device);
  }

  TEST_CASE("a device that fails a step fails the calibration, as an error") {
    // Only a failure to build the model came back as an error: one thrown by a step ended
    // the node (or the trainer embedding it) in std::terminate.
    struct failing_gemm final : testing::forwarding_backend {
      using forwarding_backend::forwarding_backend;
      void dispatch(const char* op, std::function<void()> call) override {
        if (std::string(op) == "gemm")
          throw compute_error(error(errc::device_error, "cudaErrorLaunchFailure (a test's)"));
        call();
      }
    };
    auto cpu = make_cpu_backend(1);
    failing_gemm b(*cpu);
    auto r = calibrate_throughput(b, 0.1);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == errc::device_error);
    CHECK(r.error().message().find("cudaErrorLaunchFailure") != std::string::npos);
  }

  TEST_CASE("GEMM rates by precision: tensor cores beat exact FP32 on a GPU") {
    if (cuda_device_count() == 0) GFLEX_SKIP_CASE("no CUDA device on this machine");
    CHECK(measure_cuda_gemm_rates(cuda_device_count()).error().code() == errc::no_device);
    auto rates = measure_cuda_gemm_rates(0, 0.4);
    REQUIRE_MESSAGE(rates.has_value(), rates.error().message());
    INFO("TFLOP/s: fp32 " << rates->fp32 << ", tf32 " << rates->tf32 << ", bf16 from fp32 "
                          << rates->bf16_from_fp32 << ", bf16 " << rates->bf16);
    CHECK(rates->fp32 > 0.1);
    // Every card gflex builds for (sm_80, sm_90) has TF32 and bf16 tensor cores, several times
    // its FP32 rate: a figure at or below FP32's would mean the product did not use them.
    CHECK(rates->tf32 > 1.5 * rates->fp32);
    CHECK(rates->bf16 > 1.5 * rates->fp32);
    CHECK(rates->bf16_from_fp32 > 1.5 * rates->fp32);
  }

  TEST_CASE("GPU samples (NVML): real figures on a GPU, a reason and no figures without") {
    auto devices = cuda_devices();
    auto samples = sample_gpus({0});
    if (devices.empty()) {
      MESSAGE("skipped the figures: no CUDA device here");
      REQUIRE_FALSE(samples.has_value());
      CHECK(samples.error().code() == errc::no_device);
      CHECK_FALSE(samples.error().message().empty());
      return;
    }
    REQUIRE_MESSAGE(samples.has_value(), samples.error().message());
    REQUIRE(samples->size() == 1);
    const auto& s = samples->front();
    CHECK(s.ordinal == 0);
    // NVML's total and CUDA's agree within what the driver reserves for itself.
    const double ratio =
        static_cast<double>(s.memory_total) / static_cast<double>(devices[0].memory_bytes);
    CHECK(ratio > 0.95);
    CHECK(ratio < 1.05);
    CHECK(s.memory_used <= s.memory_total);
    CHECK(s.utilization >= 0.0);
    CHECK(s.utilization <= 1.0);
    CHECK(s.memory_activity >= 0.0);
    CHECK(s.memory_activity <= 1.0);
    auto missing = sample_gpus({static_cast<int>(devices.size())});
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().code() == errc::no_device);
  }

  TEST_CASE("conv2d geometry validity") {
    conv2d_geometry g{2, 28, 28, 1, 32, 3, 3, 1, 1};
    CHECK(g.valid());
    CHECK(g.out_height() == 28);
    CHECK(g.patch() == 9);
    g.pad_h = -1;
    CHECK_FALSE(g.valid());
    g = {2, 2, 2, 1, 1, 3, 3, 0, 0};  // kernel larger than the unpadded image
    CHECK_FALSE(g.valid());
  }
}

TEST_SUITE("devices") {
  TEST_CASE("--gpu-memory-limit: an allocation past it is a clear out-of-memory error") {
    if (cuda_device_count() == 0) GFLEX_SKIP_CASE("no CUDA device on this machine");
    const uint64_t before = cuda_memory_in_use(0);
    {
      auto b = make_cuda_backend(0);
      REQUIRE_MESSAGE(b.has_value(), b.error().message());
      // The backend's own device memory is counted too: its cuBLAS workspace (32 MiB) and
      // reduction scratch.
      const uint64_t with_backend = cuda_memory_in_use(0);
      CHECK(with_backend >= before + (uint64_t{32} << 20));
      set_cuda_memory_limit(0, with_backend + (1 << 20));  // 1 MiB more than is in use now
      tensor small = (*b)->allocate({1024}, dtype::f32);
      CHECK(cuda_memory_in_use(0) >= before + 4096);
      try {
        (*b)->allocate({1 << 20}, dtype::f32);  // 4 MiB
        FAIL("allocation past the limit succeeded");
      } catch (const compute_error& e) {
        CHECK(e.err().code() == errc::device_error);
        CHECK_MESSAGE(std::string(e.what()).find("out of device memory") != std::string::npos,
                      e.what());
      }
      // The backend stays usable after the refusal.
      (*b)->fill(small.data<float>(), 1024, 2.0f);
      std::vector<float> host(1024);
      (*b)->download(small.raw(), host.data(), host.size() * sizeof(float));
      CHECK(host[1023] == 2.0f);
    }
    CHECK(cuda_memory_in_use(0) == before);  // every byte given back
    set_cuda_memory_limit(0, 0);
  }
}

TEST_SUITE("devices") {
  TEST_CASE("--memory-limit: a CPU model past it is a clear out-of-memory error") {
    CHECK_MESSAGE(available_host_memory() > 0, "MemAvailable is read from /proc/meminfo");
    auto b = make_cpu_backend(1);
    const uint64_t before = host_memory_in_use();
    struct restore_limit {
      ~restore_limit() { set_host_memory_limit(0); }
    } restore;
    set_host_memory_limit(before + (1 << 20));          // 1 MiB more than is in use now
    tensor small = b->allocate({1 << 17}, dtype::f32);  // 512 KiB
    CHECK(host_memory_in_use() == before + (1 << 19));
    try {
      b->allocate({3 << 16}, dtype::f32);  // 768 KiB more: past the limit
      FAIL("allocation past the limit succeeded");
    } catch (const compute_error& e) {
      CHECK(e.err().code() == errc::device_error);
      CHECK_MESSAGE(std::string(e.what()).find("out of host memory (--memory-limit " +
                                               std::to_string(before + (1 << 20)) + " bytes, ") !=
                        std::string::npos,
                    e.what());
    }
    CHECK(host_memory_in_use() == before + (1 << 19));  // the refusal reserved nothing
    small = tensor{};
    CHECK(host_memory_in_use() == before);  // every byte given back
    tensor larger = b->allocate({3 << 16}, dtype::f32);
    CHECK(host_memory_in_use() == before + 3 * (1 << 18));
    larger = tensor{};

    // A whole model: fashion-mlp's parameters, gradients and a batch of 4,096's activations
    // (about 30 MiB) do not fit in 8 MiB; it fits, and trains, without the limit.
    auto w = find_workload("fashion-mlp");
    REQUIRE(w.has_value());
    set_host_memory_limit(before + (8 << 20));
    {
      auto refused = (*w)->instantiate(*b, 4096);
      REQUIRE_FALSE(refused.has_value());
      CHECK(refused.error().code() == errc::device_error);
      CHECK_MESSAGE(refused.error().message().find("out of host memory") != std::string::npos,
                    refused.error().message());
    }
    CHECK(host_memory_in_use() == before);  // what the model had allocated was given back
    set_host_memory_limit(0);
    auto m = (*w)->instantiate(*b, 4096);
    REQUIRE(m.has_value());
    CHECK(host_memory_in_use() > before + (8 << 20));
    m = expected<std::unique_ptr<model>>(error(errc::invalid_argument, "dropped"));
    CHECK(host_memory_in_use() == before);
  }

  TEST_CASE("--memory-limit: a CPU convolution's patch matrix counts against it") {
    // 64 x 64 pixels of 5 x 5 x 64 patches: 6.25 MiB of scratch beside 1 MiB of input.
    auto b = make_cpu_backend(1);
    const conv2d_geometry g{1, 64, 64, 64, 8, 5, 5, 2, 2, 1};
    tensor x = b->allocate({64 * 64 * 64}, dtype::f32);
    tensor w = b->allocate({8 * 5 * 5 * 64}, dtype::f32);
    tensor y = b->allocate({64 * 64 * 8}, dtype::f32);
    b->fill(x.data<float>(), x.numel(), 0.5f);
    b->fill(w.data<float>(), w.numel(), 0.25f);
    const uint64_t before = host_memory_in_use();
    struct restore_limit {
      ~restore_limit() { set_host_memory_limit(0); }
    } restore;
    set_host_memory_limit(before + (4 << 20));
    try {
      b->conv2d_forward(g, x.data<float>(), w.data<float>(), y.data<float>());
      FAIL("a patch matrix past the limit was allocated");
    } catch (const compute_error& e) {
      CHECK_MESSAGE(std::string(e.what()).find("out of host memory") != std::string::npos,
                    e.what());
    }
    CHECK(host_memory_in_use() == before);
    set_host_memory_limit(0);
    b->conv2d_forward(g, x.data<float>(), w.data<float>(), y.data<float>());
    CHECK(y.data<float>()[64 * 8 * 32 + 8 * 32] == doctest::Approx(5 * 5 * 64 * 0.125f));
  }
}
