#pragma once
/// @file
/// The core's web dashboard (`gflex-core --http-listen HOST:PORT`): one page that shows the
/// cluster, each job with its loss and accuracy curves, and the ledger, updating live; and
/// the JSON endpoints behind it, for scripts (docs/DASHBOARD.md).
///
/// It is read-only and opens nothing new to the network's side of the core: every /api
/// request carries an API key (`Authorization: Bearer KEY`) and is answered through a
/// client of the core in this process with that key, so the core's own checks decide what
/// it sees (an account: its jobs; the operator's key: everything). No key, or a key the
/// core does not know: 401 and no data.

#include <filesystem>
#include <memory>
#include <string>

#include "gflex/gflex.hpp"

namespace gflex::app {

struct dashboard_options {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  /// Chart.js (Debian's libjs-chart.js), served to the page from here: no network at run time.
  std::filesystem::path chart_js = "/usr/share/javascript/chart.js/chart.min.js";
};

/// Serves the dashboard beside `core` until the returned service is destroyed.
/// errc::io_error when Chart.js cannot be read, errc::unavailable when it cannot listen.
expected<std::unique_ptr<core_service>> start_dashboard(const dashboard_options& options,
                                                        local_core& core);

}  // namespace gflex::app
