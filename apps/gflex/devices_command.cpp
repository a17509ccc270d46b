#include "devices_command.hpp"
#include "status_json.hpp"

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <memory>

#include "gflex/kernels/devices.hpp"

namespace gflex::app {

namespace {

struct devices_flags {
  bool calibrate = false;
  std::string json;  ///< File to write, or "-" for stdout.
};

int run_devices(const devices_flags& f) {
  std::string why;
  auto devices = kernels::cuda_devices(&why);
  auto list = nlohmann::json::array();
  for (const auto& d : devices) {
    nlohmann::json entry = {
        {"ordinal", d.ordinal},
        {"name", d.name},
        {"cc", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor)},
        {"memory_bytes", d.memory_bytes},
        {"sm_count", d.sm_count},
    };
    std::string measured;
    if (f.calibrate) {
      auto cal = kernels::calibrate_cuda_device(d.ordinal);
      if (!cal) {
        spdlog::error("cuda:{}: {}", d.ordinal, cal.error().message());
        return 1;
      }
      entry["gemm_tflops"] = cal->gemm_tflops;
      entry["h2d_gbps"] = cal->h2d_gbps;
      entry["d2h_gbps"] = cal->d2h_gbps;
      char buf[160];
      std::snprintf(buf, sizeof buf,
                    "; FP32 GEMM %.1f TFLOP/s, host-to-device %.1f GB/s, device-to-host %.1f GB/s",
                    cal->gemm_tflops, cal->h2d_gbps, cal->d2h_gbps);
      measured = buf;
      // Each precision's GEMM ceiling: what a bf16 or tf32 step's GEMM-bound share is read
      // against. A card that cannot run one (no bf16 tensor cores) says so and keeps the rest.
      if (auto rates = kernels::measure_cuda_gemm_rates(d.ordinal)) {
        entry["gemm_rates_tflops"] = {{"fp32", rates->fp32},
                                      {"tf32", rates->tf32},
                                      {"bf16_from_fp32", rates->bf16_from_fp32},
                                      {"bf16", rates->bf16}};
        std::snprintf(buf, sizeof buf,
                      "; GEMM TFLOP/s: fp32 %.1f, tf32 %.1f, bf16 from fp32 operands %.1f, "
                      "bf16 %.1f",
                      rates->fp32, rates->tf32, rates->bf16_from_fp32, rates->bf16);
        measured += buf;
      } else {
        spdlog::warn("cuda:{}: GEMM rates by precision: {}", d.ordinal, rates.error().message());
        entry["gemm_rates_error"] = rates.error().message();
      }
    }
    list.push_back(entry);
    if (f.json != "-")
      std::printf("cuda:%d  %s  sm_%d%d  %d SMs  %.1f GiB%s\n", d.ordinal, d.name.c_str(),
                  d.cc_major, d.cc_minor, d.sm_count,
                  static_cast<double>(d.memory_bytes) / (1 << 30), measured.c_str());
  }
  if (devices.empty() && f.json != "-")
    std::printf("no CUDA device: %s; a node here serves on the CPU backend\n", why.c_str());
  if (!f.json.empty()) {
    nlohmann::json out = {{"devices", list}, {"reason", devices.empty() ? why : ""}};
    if (f.json == "-") {
      std::printf("%s\n", json_text(out).c_str());
    } else {
      std::ofstream file(f.json);
      file << json_text(out) << '\n';
      if (!file) {
        spdlog::error("{}: cannot write", f.json);
        return 1;
      }
    }
  }
  return 0;
}

}  // namespace

void add_devices_command(CLI::App& app, std::function<int()>& run) {
  auto flags = std::make_shared<devices_flags>();
  auto* cmd = app.add_subcommand("devices", "list this machine's CUDA devices");
  cmd->add_flag("--calibrate", flags->calibrate,
                "measure each device's GEMM rates (FP32, TF32, bf16) and copy bandwidth (about "
                "two seconds each)");
  cmd->add_option("--json", flags->json, "write the list as JSON to this file (- for stdout)");
  cmd->callback([flags, &run] { run = [flags] { return run_devices(*flags); }; });
}

}  // namespace gflex::app
