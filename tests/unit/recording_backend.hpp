#pragma once
/// @file
/// The CPU backend made to record as the CUDA backend does, so that recorded training passes
/// (graph_model's, on unless GFLEX_CUDA_GRAPHS=0) are tested where no GPU is: while recording, each
/// operation is kept (a closure over copies of its arguments) instead of run, and what a
/// CUDA capture cannot hold (allocating, copying, waiting, reducing) is refused with a
/// compute_error, as the CUDA backend refuses it.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "forwarding_backend.hpp"

namespace gflex::kernels::testing {

class recording_backend final : public forwarding_backend {
 public:
  using forwarding_backend::forwarding_backend;

  /// An operation that throws while recording, as a failed check in the model's own code
  /// would: the recording is left to the model to drop (end_recording returns it).
  std::string throw_op;
  /// How many times throw_op throws before it records again.
  int throw_times = 1 << 30;

  /// Makes work recorded so far stale, as a CUDA backend's grown workspace does.
  void replace_buffers() { ++epoch_; }

  bool records() const override { return true; }
  void begin_recording() override {
    if (recording_) throw compute_error(error(errc::invalid_argument, "already recording"));
    recording_ = true;
    failed_ = false;
    ops_.clear();
  }
  std::unique_ptr<recorded_work> end_recording() override {
    recording_ = false;
    if (failed_) return nullptr;
    return std::make_unique<work>(std::move(ops_), this, epoch_);
  }
  void replay(const recorded_work& w) override {
    refuse("replay");
    const auto* recorded = dynamic_cast<const work*>(&w);
    if (recorded == nullptr || recorded->owner != this)
      throw compute_error(error(errc::invalid_argument, "replaying work another backend recorded"));
    if (recorded->epoch != epoch_)
      throw compute_error(error(errc::invalid_argument,
                                "replaying work recorded before the workspace was replaced"));
    for (const auto& op : recorded->ops) op();
    ++replays_;
  }
  uint64_t replays() const override { return replays_; }
  uint64_t recording_epoch() const override { return epoch_; }

  tensor allocate(shape_t s, dtype t) override {
    refuse("allocate");
    return inner_.allocate(std::move(s), t);
  }
  void upload(const void* s, void* d, size_t n) override {
    refuse("upload");
    inner_.upload(s, d, n);
  }
  void download(const void* s, void* d, size_t n) override {
    refuse("download");
    inner_.download(s, d, n);
  }
  void synchronize() override {
    refuse("synchronize");
    inner_.synchronize();
  }
  double sum(const float* x, int64_t n) override {
    refuse("sum");
    return inner_.sum(x, n);
  }
  double sum_squares(const float* x, int64_t n) override {
    refuse("sum_squares");
    return inner_.sum_squares(x, n);
  }

 private:
  struct work final : recorded_work {
    work(std::vector<std::function<void()>> o, const void* b, uint64_t e)
        : ops(std::move(o)), owner(b), epoch(e) {}
    std::vector<std::function<void()>> ops;
    const void* owner;
    uint64_t epoch;
  };

  void dispatch(const char* op, std::function<void()> call) override {
    if (!recording_) {
      call();
      return;
    }
    if (op == throw_op && throw_times > 0) {
      --throw_times;
      throw compute_error(error(errc::invalid_argument, throw_op + " failed while recording"));
    }
    ops_.push_back(std::move(call));
  }

  void refuse(const std::string& what) {
    if (!recording_) return;
    failed_ = true;
    throw compute_error(error(errc::invalid_argument, what + " while recording"));
  }

  bool recording_ = false;
  bool failed_ = false;
  std::vector<std::function<void()>> ops_;
  uint64_t replays_ = 0;
  uint64_t epoch_ = 0;
};

}  // namespace gflex::kernels::testing
