// The process's Prometheus registry behind <gflex/runtime/metrics.hpp>, and its /metrics.

#include "gflex/runtime/metrics.hpp"

#include "gflex/runtime/http_server.hpp"

#include <httplib.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>

namespace gflex::metrics {
namespace {

struct process_metrics {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::mutex m;  // families are looked up under it; the metrics themselves are atomic
  std::map<std::string, prometheus::Family<prometheus::Counter>*> counters;
  std::map<std::string, prometheus::Family<prometheus::Gauge>*> gauges;
  std::map<std::string, prometheus::Family<prometheus::Histogram>*> histograms;
  std::unique_ptr<http::server> server;
};

process_metrics& the() {
  static auto* p = new process_metrics;  // never destroyed: used until the process ends
  return *p;
}

std::map<std::string, std::string> to_map(labels l) {
  return {l.begin(), l.end()};
}

}  // namespace

void counter::inc(double by) const {
  c_->Increment(by);
}
double counter::value() const {
  return c_->Value();
}
void gauge::set(double v) const {
  g_->Set(v);
}
void gauge::inc(double by) const {
  g_->Increment(by);
}
void gauge::dec(double by) const {
  g_->Decrement(by);
}
double gauge::value() const {
  return g_->Value();
}
void histogram::observe(double v) const {
  h_->Observe(v);
}

counter counter_of(const std::string& name, const std::string& help, labels l) {
  auto& p = the();
  std::lock_guard<std::mutex> lock(p.m);
  auto& f = p.counters[name];
  if (f == nullptr) f = &prometheus::BuildCounter().Name(name).Help(help).Register(*p.registry);
  return counter(&f->Add(to_map(l)));
}

gauge gauge_of(const std::string& name, const std::string& help, labels l) {
  auto& p = the();
  std::lock_guard<std::mutex> lock(p.m);
  auto& f = p.gauges[name];
  if (f == nullptr) f = &prometheus::BuildGauge().Name(name).Help(help).Register(*p.registry);
  return gauge(&f->Add(to_map(l)));
}

histogram histogram_of(const std::string& name, const std::string& help,
                       const std::vector<double>& buckets, labels l) {
  auto& p = the();
  std::lock_guard<std::mutex> lock(p.m);
  auto& f = p.histograms[name];
  if (f == nullptr) f = &prometheus::BuildHistogram().Name(name).Help(help).Register(*p.registry);
  return histogram(&f->Add(to_map(l), prometheus::Histogram::BucketBoundaries(buckets)));
}

const std::vector<double>& seconds_buckets() {
  static const std::vector<double> b{0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1,
                                     2.5,   5,     10,   30,   60,  120,  300, 600};
  return b;
}

expected<uint16_t> serve(const std::string& host_port) {
  const auto colon = host_port.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == host_port.size() ||
      host_port.find_first_not_of("0123456789", colon + 1) != std::string::npos ||
      host_port.size() - colon - 1 > 5 || std::stoul(host_port.substr(colon + 1)) > 65535)
    return error(errc::invalid_argument,
                 "--metrics-listen '" + host_port + "': expected HOST:PORT (127.0.0.1:9464)");
  const std::string host = host_port.substr(0, colon);
  const int wanted = std::stoi(host_port.substr(colon + 1));
  auto& p = the();
  std::lock_guard<std::mutex> lock(p.m);
  if (p.server) return error(errc::invalid_argument, "metrics are served already");
  // Scrapes are rare and small: two threads serve them.
  auto server = http::server::start(
      host, static_cast<uint16_t>(wanted), 2,
      [](httplib::Server& routes) {
        routes.Get("/metrics", [](const httplib::Request&, httplib::Response& res) {
          res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
        });
      },
      "metrics");
  if (!server) return server.error();
  const uint16_t port = (*server)->port();
  p.server = std::move(*server);
  return port;
}

std::string render() {
  auto& p = the();
  return prometheus::TextSerializer().Serialize(p.registry->Collect());
}

}  // namespace gflex::metrics
