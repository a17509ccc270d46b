#pragma once
/// @file
/// Prometheus metrics of this process (the core's or a node's), kept in one registry and
/// served on /metrics by `serve` when the operator asks (`--metrics-listen`). Handles are
/// cheap to copy and safe to use from any thread; a metric is created on first use of its
/// name and labels, and lives as long as the process. No prometheus-cpp header is included
/// here: the instrumented code pays for an atomic add, not for the library's templates.
///
/// Names follow Prometheus's rules: `gflex_core_...` or `gflex_node_...`, counters end in
/// `_total`, durations are `_seconds`, sizes `_bytes`. Label values must come from small,
/// fixed sets (a tier, a reason, a kind), never from job ids or node names.

#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "gflex/runtime/error.hpp"

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
}  // namespace prometheus

namespace gflex::metrics {

using labels = std::initializer_list<std::pair<const std::string, std::string>>;

class counter {
 public:
  void inc(double by = 1.0) const;
  double value() const;

 private:
  friend counter counter_of(const std::string&, const std::string&, labels);
  explicit counter(prometheus::Counter* c) : c_(c) {}
  prometheus::Counter* c_;
};

class gauge {
 public:
  void set(double v) const;
  void inc(double by = 1.0) const;
  void dec(double by = 1.0) const;
  double value() const;

 private:
  friend gauge gauge_of(const std::string&, const std::string&, labels);
  explicit gauge(prometheus::Gauge* g) : g_(g) {}
  prometheus::Gauge* g_;
};

class histogram {
 public:
  void observe(double v) const;

 private:
  friend histogram histogram_of(const std::string&, const std::string&, const std::vector<double>&,
                                labels);
  explicit histogram(prometheus::Histogram* h) : h_(h) {}
  prometheus::Histogram* h_;
};

/// The metric of that name and labels, created on first use (`help` describes the family;
/// the first caller's is kept).
counter counter_of(const std::string& name, const std::string& help, labels l = {});
gauge gauge_of(const std::string& name, const std::string& help, labels l = {});
histogram histogram_of(const std::string& name, const std::string& help,
                       const std::vector<double>& buckets, labels l = {});

/// Durations from 1 ms to about 10 minutes, for histograms of seconds.
const std::vector<double>& seconds_buckets();

/// Serves /metrics on HOST:PORT (a name or address; PORT 0 picks a free one) until the
/// process ends; returns the port. One call per process; errc::invalid_argument for a
/// malformed address, errc::unavailable when it cannot listen.
expected<uint16_t> serve(const std::string& host_port);

/// The text exposition /metrics answers (for tests and `gflex` itself).
std::string render();

}  // namespace gflex::metrics
