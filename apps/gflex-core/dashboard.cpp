#include "dashboard.hpp"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>

#include "dashboard_page.hpp"
#include "gflex/runtime/http_server.hpp"
#include "status_json.hpp"

namespace gflex::app {

namespace {

using clock_type = std::chrono::steady_clock;

// A client of the core per API key, kept while the page polls: one session per key, not
// one per request. Each is used by one request at a time.
struct keyed_client {
  std::mutex m;
  std::optional<client> c;
  std::string principal;
  // Written under `m` by the request using the client, read under the dashboard's own lock
  // by the eviction: atomic, or the two raced.
  std::atomic<clock_type::time_point> last_used;
};

class dashboard final : public core_service {
 public:
  dashboard(local_core& core, std::string chart_js) : core_(core), chart_js_(std::move(chart_js)) {}
  ~dashboard() override {
    server_.reset();  // no request runs after this; then the clients end their sessions
  }

  expected<void> start(const dashboard_options& o) {
    auto s = http::server::start(
        o.host, o.port, 4, [this](httplib::Server& http) { routes(http); }, "the dashboard");
    if (!s) return s.error();
    server_ = std::move(*s);
    spdlog::info("dashboard on http://{}:{}/ (read-only; an API key opens it)", o.host,
                 server_->port());
    return {};
  }

 private:
  static constexpr size_t max_clients = 32;
  static constexpr auto idle_limit = std::chrono::minutes(10);
  static constexpr auto verify_every = std::chrono::minutes(1);

  void routes(httplib::Server& http) {
    http.Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_header("Cache-Control", "no-store");
      // The page loads nothing from elsewhere and may not be framed by another site.
      res.set_header("Content-Security-Policy",
                     "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src "
                     "'self' 'unsafe-inline'; frame-ancestors 'none'");
      res.set_header("X-Content-Type-Options", "nosniff");
      res.set_content(dashboard_page, "text/html; charset=utf-8");
    });
    http.Get("/chart.js", [this](const httplib::Request&, httplib::Response& res) {
      res.set_header("Cache-Control", "max-age=86400");
      res.set_content(chart_js_, "application/javascript");
    });
    http.Get("/api/jobs", [this](const httplib::Request& req, httplib::Response& res) {
      with_client(req, res, [&](client& c, const std::string&) {
        auto jobs = c.jobs();
        if (!jobs) return fail(res, jobs.error());
        auto list = nlohmann::json::array();
        for (const auto& j : *jobs) list.push_back(to_json(j));
        answer(res, list);
      });
    });
    http.Get(R"(/api/jobs/([A-Za-z0-9_.-]{1,64}))",
             [this](const httplib::Request& req, httplib::Response& res) {
               with_client(req, res, [&](client& c, const std::string&) {
                 auto s = c.status(req.matches[1]);
                 if (!s) return fail(res, s.error());
                 answer(res, to_json(*s));
               });
             });
    http.Get("/api/nodes", [this](const httplib::Request& req, httplib::Response& res) {
      with_client(req, res, [&](client& c, const std::string&) {
        auto nodes = c.nodes();
        if (!nodes) return fail(res, nodes.error());
        answer(res, to_json(*nodes));
      });
    });
    http.Get("/api/ledger", [this](const httplib::Request& req, httplib::Response& res) {
      with_client(req, res, [&](client& c, const std::string& who) { ledger(c, who, res); });
    });
    http.set_error_handler([](const httplib::Request&, httplib::Response& res) {
      if (res.body.empty())
        res.set_content(
            nlohmann::json{{"error", res.status == 404 ? "no such page" : "the request failed"}}
                .dump(),
            "application/json");
    });
  }

  // The ledger as this key may see it: the operator, the whole ledger's check and the
  // platform's account with those of the jobs; an account, its own.
  void ledger(client& c, const std::string& who, httplib::Response& res) {
    nlohmann::json out{{"principal", who}};
    std::set<std::string> ids;
    if (who == "operator") {
      auto report = verified_ledger(c);
      if (!report) return fail(res, report.error());
      out["verify"] = to_json(report->first);
      out["verify_age_s"] = report->second;
      ids.insert("platform");
      auto jobs = c.jobs();
      if (!jobs && key_refused(jobs.error())) return fail(res, jobs.error());
      if (jobs)
        for (const auto& j : *jobs)
          if (!j.account.empty()) ids.insert(j.account);
    } else {
      ids.insert(who);
    }
    auto accounts = nlohmann::json::array();
    for (const auto& id : ids) {
      auto a = c.account(id);
      // A key refused since its client was opened sees no account: answered as refused, or
      // the page took an empty ledger for the account's.
      if (!a && key_refused(a.error())) return fail(res, a.error());
      if (a) accounts.push_back(to_json(*a));
    }
    out["accounts"] = std::move(accounts);
    answer(res, out);
  }

  // The ledger's check and its age in seconds. The check re-reads and re-hashes the whole
  // ledger: however many pages poll, the core runs it at most once a minute.
  expected<std::pair<ledger_report, double>> verified_ledger(client& c) {
    std::lock_guard<std::mutex> lock(verify_m_);
    const auto now = clock_type::now();
    if (!verified_ || now - verified_at_ > verify_every) {
      auto report = c.verify_ledger();
      if (!report) return report.error();
      verified_ = std::move(*report);
      verified_at_ = now;
    }
    return std::pair{*verified_, std::chrono::duration<double>(now - verified_at_).count()};
  }

  static void answer(httplib::Response& res, const nlohmann::json& j) {
    res.set_header("Cache-Control", "no-store");
    // Text from peers is checked at their hello; a byte that is not UTF-8 all the same (a
    // record written before the check) is replaced, not thrown on.
    res.set_content(json_text(j, -1), "application/json");
  }

  // Whether the core refused the key itself: replaced or revoked after its client was opened
  // (the core checks the key at every request), not a known key asking for what it may not
  // see. Told apart by the gatekeeper's words, as the only code both share is
  // permission_denied.
  static bool key_refused(const error& e) {
    return e.code() == errc::permission_denied &&
           e.message().find("unknown API key") != std::string::npos;
  }

  // A refused key is a 401, as at its client's opening: the page then asks for a key, where
  // a 403 had it poll with the dead key for ever. with_client forgets the key's client.
  static void fail(httplib::Response& res, const error& e) {
    if (key_refused(e)) {
      res.status = 401;
      res.set_header("WWW-Authenticate", "Bearer");
      return answer(res, {{"error", e.message()}});
    }
    res.status = e.code() == errc::permission_denied  ? 403
                 : e.code() == errc::invalid_argument ? 404
                                                      : 502;
    answer(res, {{"error", e.message()}});
  }

  // Runs `use` with the client of the request's key, or answers 401 without data.
  template <class F>
  void with_client(const httplib::Request& req, httplib::Response& res, F&& use) {
    const std::string header = req.get_header_value("Authorization");
    constexpr std::string_view bearer = "Bearer ";
    if (!header.starts_with(bearer) || header.size() > 200) {
      res.status = 401;
      res.set_header("WWW-Authenticate", "Bearer");
      return answer(res, {{"error", "an API key is needed (Authorization: Bearer KEY)"}});
    }
    const std::string key = header.substr(bearer.size());
    auto entry = client_for(key);
    // Only a key the core refused is 401: a core that did not answer in time is a 503, and
    // the page keeps polling (on a 401 it shows its login form and stops).
    if (!entry && entry.error().code() != errc::permission_denied) {
      res.status = 503;
      return answer(res,
                    {{"error", "the core cannot check the key now: " + entry.error().message()}});
    }
    if (!entry) {
      res.status = 401;
      res.set_header("WWW-Authenticate", "Bearer");
      return answer(res, {{"error", entry.error().message()}});
    }
    {
      std::lock_guard<std::mutex> lock((*entry)->m);
      (*entry)->last_used = clock_type::now();
      use(*(*entry)->c, (*entry)->principal);
    }
    // The core refused the key (fail answered 401): its client is forgotten, so that the
    // session ends and a later request with the key is checked anew, not relayed through
    // a client kept alive by the polling. Another request may have replaced it meanwhile.
    if (res.status == 401) {
      std::lock_guard<std::mutex> lock(m_);
      if (auto it = clients_.find(key); it != clients_.end() && it->second == *entry)
        clients_.erase(it);
    }
  }

  // The kept client of `key`, opened (and the key checked by the core) on first use.
  expected<std::shared_ptr<keyed_client>> client_for(const std::string& key) {
    {
      std::lock_guard<std::mutex> lock(m_);
      forget_idle();
      if (auto it = clients_.find(key); it != clients_.end()) return it->second;
    }
    auto entry = std::make_shared<keyed_client>();
    entry->c.emplace(core_.connect(key));
    auto who = entry->c->principal();
    if (!who) return who.error();
    entry->principal = *who;
    entry->last_used = clock_type::now();
    std::lock_guard<std::mutex> lock(m_);
    // The oldest is forgotten when too many keys are in use.
    forget_idle();
    while (clients_.size() >= max_clients) {
      auto oldest = clients_.begin();
      for (auto it = clients_.begin(); it != clients_.end(); ++it)
        if (it->second->last_used.load() < oldest->second->last_used.load()) oldest = it;
      clients_.erase(oldest);
    }
    return clients_.emplace(key, entry).first->second;
  }

  // Forgets the clients idle for long (under m_), at every request: only at a new key's
  // first, the sessions of keys whose pages were closed stayed open for good.
  void forget_idle() {
    const auto now = clock_type::now();
    for (auto it = clients_.begin(); it != clients_.end();)
      it = now - it->second->last_used.load() > idle_limit ? clients_.erase(it) : std::next(it);
  }

  local_core& core_;
  std::string chart_js_;
  std::mutex m_;
  std::map<std::string, std::shared_ptr<keyed_client>> clients_;
  std::mutex verify_m_;
  std::optional<ledger_report> verified_;
  clock_type::time_point verified_at_;
  std::unique_ptr<http::server> server_;  // last: stopped first
};

}  // namespace

expected<std::unique_ptr<core_service>> start_dashboard(const dashboard_options& options,
                                                        local_core& core) {
  std::ifstream in(options.chart_js, std::ios::binary);
  std::stringstream chart;
  chart << in.rdbuf();
  if (!in || chart.str().empty())
    return error(errc::io_error, "--http-listen: cannot read Chart.js from " +
                                     options.chart_js.string() +
                                     " (install Debian's libjs-chart.js, or give --chart-js)");
  auto d = std::make_unique<dashboard>(core, chart.str());
  if (auto ok = d->start(options); !ok) return ok.error();
  return std::unique_ptr<core_service>(std::move(d));
}

}  // namespace gflex::app
