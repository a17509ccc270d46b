#include "misbehaviour.hpp"

#include <charconv>
#include <cmath>

namespace gflex {

namespace {

error bad(std::string_view text, const std::string& what) {
  // Appended piece by piece: GCC 12 warns (-Wrestrict, a false positive) on the chain of +.
  std::string message = "--misbehave ";
  message.append(text).append(": ").append(what);
  return error(errc::invalid_argument, std::move(message));
}

expected<double> number(std::string_view whole, std::string_view text) {
  double x = 0.0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), x);
  if (ec != std::errc() || end != text.data() + text.size() || !std::isfinite(x))
    return bad(whole, std::string("'").append(text).append("' is not a finite number"));
  return x;
}

expected<misbehaviour> parse_mode(std::string_view whole, std::string_view text) {
  misbehaviour m;
  if (text == "random") {
    m.kind = misbehaviour::mode::random;
  } else if (text == "signflip") {
    m.kind = misbehaviour::mode::signflip;
  } else if (text == "lazy") {
    m.kind = misbehaviour::mode::lazy;
  } else if (text == "stale") {
    m.kind = misbehaviour::mode::stale;
  } else if (text.starts_with("scale:")) {
    auto x = number(whole, text.substr(6));
    if (!x) return x.error();
    if (*x == 1.0) return bad(whole, "scale:1 is honest work");
    m.kind = misbehaviour::mode::scale;
    m.factor = *x;
  } else {
    return bad(whole, "unknown mode '" + std::string(text) +
                          "' (random, scale:X, signflip, lazy, stale or sometimes:P:MODE)");
  }
  return m;
}

}  // namespace

expected<misbehaviour> parse_misbehaviour(std::string_view text) {
  if (text.empty() || text == "honest") return misbehaviour{};
  if (text.starts_with("in:")) {
    auto rest = text.substr(3);
    auto colon = rest.find(':');
    if (colon == std::string_view::npos || colon == 0) return bad(text, "expected in:JOB:MODE");
    auto inner = rest.substr(colon + 1);
    if (inner.starts_with("in:")) return bad(text, "in cannot nest");
    auto m = parse_misbehaviour(inner);
    if (!m) return m.error();
    if (m->kind == misbehaviour::mode::honest) return bad(text, "in:JOB needs a mode");
    m->only_job = std::string(rest.substr(0, colon));
    return m;
  }
  if (!text.starts_with("sometimes:")) return parse_mode(text, text);
  auto rest = text.substr(10);
  auto colon = rest.find(':');
  if (colon == std::string_view::npos) return bad(text, "expected sometimes:P:MODE");
  auto p = number(text, rest.substr(0, colon));
  if (!p) return p.error();
  if (!(*p > 0.0 && *p <= 1.0)) return bad(text, "P must be in (0, 1]");
  auto inner = rest.substr(colon + 1);
  if (inner.starts_with("sometimes:")) return bad(text, "sometimes cannot nest");
  auto m = parse_mode(text, inner);
  if (!m) return m.error();
  m->probability = *p;
  return m;
}

bool misbehaving_worker::decide(const std::string& job_id) {
  now_ = how_.kind != misbehaviour::mode::honest &&
         (how_.only_job.empty() || how_.only_job == job_id) &&
         (how_.probability >= 1.0 || rng_.uniform() < how_.probability);
  return now_;
}

int64_t misbehaving_worker::steps(int64_t local_steps) const {
  if (now_ && how_.kind == misbehaviour::mode::lazy) return std::max<int64_t>(1, local_steps / 10);
  return local_steps;
}

void misbehaving_worker::alter(const std::string& job_id, std::vector<float>& delta) {
  std::vector<float> honest;
  if (how_.kind == misbehaviour::mode::stale) honest = delta;
  if (now_) {
    switch (how_.kind) {
      case misbehaviour::mode::random: {
        double norm = 0.0;
        for (float v : delta) norm += static_cast<double>(v) * v;
        // Noise scaled to the honest update's norm, so that a norm check alone cannot tell
        // it apart.
        double noise_norm = 0.0;
        for (float& v : delta) v = static_cast<float>(rng_.normal());
        for (float v : delta) noise_norm += static_cast<double>(v) * v;
        double s = noise_norm > 0.0 ? std::sqrt(norm / noise_norm) : 0.0;
        for (float& v : delta) v = static_cast<float>(v * s);
        break;
      }
      case misbehaviour::mode::scale:
        for (float& v : delta) v = static_cast<float>(v * how_.factor);
        break;
      case misbehaviour::mode::signflip:
        for (float& v : delta) v = -v;
        break;
      case misbehaviour::mode::stale:
        if (last_job_ == job_id && last_update_.size() == delta.size()) delta = last_update_;
        break;
      case misbehaviour::mode::lazy:  // took effect in steps()
      case misbehaviour::mode::honest:
        break;
    }
  }
  if (how_.kind == misbehaviour::mode::stale) {
    last_job_ = job_id;
    last_update_ = std::move(honest);
  }
}

}  // namespace gflex
