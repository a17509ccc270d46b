#pragma once
/// @file
/// What a core reports, as JSON: `gflex ... --json` prints these, and the dashboard's
/// /api endpoints answer them (docs/DASHBOARD.md lists the fields). Credits are strings of
/// whole credits ("12.5"), as the CLI prints them.

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "gflex/accounts.hpp"
#include "gflex/job_status.hpp"

namespace gflex::app {

/// A job's status; with its per-round history when the status carries one.
nlohmann::json to_json(const job_status& s);

/// The nodes, each with its share of the validated work among them.
nlohmann::json to_json(const std::vector<node_status>& nodes);

/// `j` as text. Bytes that are not UTF-8 (in a record a core wrote before it checked such
/// text, or in a file name) become U+FFFD: nlohmann's default throws, and the CLI aborted.
std::string json_text(const nlohmann::json& j, int indent = 2);

nlohmann::json to_json(const account_info& a);
nlohmann::json to_json(const ledger_report& r);

}  // namespace gflex::app
