// etcd's v3 API through its JSON gateway (etcd 3.4: POST /v3/kv/range, /v3/kv/txn,
// /v3/lease/grant, /v3/lease/keepalive, /v3/kv/lease/revoke). int64 fields travel as JSON
// strings, bytes as base64, and fields equal to their default are left out of answers
// (proto3), so "succeeded" is absent when a transaction fails.
#include "gflex/runtime/etcd_client.hpp"

#include <httplib.h>
#include <sodium.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <stdexcept>

namespace gflex {

namespace {

using json = nlohmann::json;

std::string to_base64(std::span<const uint8_t> bytes) {
  std::string out(sodium_base64_encoded_len(bytes.size(), sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), bytes.data(), bytes.size(),
                    sodium_base64_VARIANT_ORIGINAL);
  out.resize(out.size() - 1);  // the terminating NUL
  return out;
}

std::string to_base64(std::string_view text) {
  return to_base64(std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

expected<std::vector<uint8_t>> from_base64(const std::string& text) {
  std::vector<uint8_t> out(text.size() * 3 / 4 + 3);
  size_t n = 0;
  if (sodium_base642bin(out.data(), out.size(), text.data(), text.size(), nullptr, &n, nullptr,
                        sodium_base64_VARIANT_ORIGINAL) != 0)
    return error(errc::malformed_message, "etcd sent a value that is not base64");
  out.resize(n);
  return out;
}

// An int64 field: etcd's gateway writes them as strings; absent means 0. Anything else
// throws, and read_answer makes that the request's error.
int64_t int_field(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) return 0;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_string()) {
    const auto& text = it->get_ref<const std::string&>();
    int64_t v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec == std::errc() && end == text.data() + text.size() && !text.empty()) return v;
  }
  throw std::invalid_argument(std::string("field \"") + name + "\" is not an int64");
}

// Reads an answer of etcd's with `f`. nlohmann's accessors throw on a field of another type
// (a string where an object was expected, say), and so does int_field: such an answer is
// this request's error, never an exception on the caller's thread. The lease's renewal
// thread was ended by one, and with it the process.
template <class F>
auto read_answer(const char* path, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::exception& e) {
    return error(errc::malformed_message, std::string("etcd answered ") + path +
                                              " with a malformed field (" + e.what() + ")");
  }
}

expected<etcd_kv> kv_of(const json& j) {
  etcd_kv kv;
  auto key = from_base64(j.value("key", std::string()));
  if (!key) return key.error();
  kv.key.assign(key->begin(), key->end());
  auto value = from_base64(j.value("value", std::string()));
  if (!value) return value.error();
  kv.value = std::move(*value);
  kv.create_revision = int_field(j, "create_revision");
  kv.mod_revision = int_field(j, "mod_revision");
  kv.lease = int_field(j, "lease");
  return kv;
}

json op_json(const etcd_op& op) {
  if (op.value) {
    json put = {{"key", to_base64(op.key)}, {"value", to_base64(*op.value)}};
    if (op.lease != 0) put["lease"] = std::to_string(op.lease);
    return {{"request_put", put}};
  }
  return {{"request_delete_range", {{"key", to_base64(op.key)}}}};
}

json compare_json(const etcd_compare& c) {
  json j = {{"key", to_base64(c.key)}, {"result", "EQUAL"}};
  switch (c.what) {
    case etcd_compare::target::create_revision:
      j["target"] = "CREATE";
      j["create_revision"] = std::to_string(c.revision);
      break;
    case etcd_compare::target::mod_revision:
      j["target"] = "MOD";
      j["mod_revision"] = std::to_string(c.revision);
      break;
    case etcd_compare::target::value:
      j["target"] = "VALUE";
      j["value"] = to_base64(c.value);
      break;
    case etcd_compare::target::lease:
      j["target"] = "LEASE";
      j["lease"] = std::to_string(c.lease);
      break;
  }
  return j;
}

}  // namespace

struct etcd_client::impl {
  struct endpoint {
    std::string host;
    int port = 0;
    std::unique_ptr<httplib::Client> http;
  };
  std::vector<endpoint> endpoints;
  size_t current = 0;  // the member the last request reached

  // A member's answer: its status, or 0 and the error of a request that got none.
  struct answer {
    int status = 0;
    std::string body;
    httplib::Error error = httplib::Error::Success;
  };

  // POSTs `text` to `path` on member `e`. etcd's gateway sends every error answer chunked,
  // with a trailer (Grpc-Trailer-Content-Type), and cpp-httplib 0.11 reads no trailer: it
  // fails the request (Error::Read) after the whole body has come. Such an answer is read
  // here all the same, where its status line came and its body is a whole JSON object (no
  // cut-short object is one). Before, no refusal of etcd's reached the caller: a full space
  // quota's 429 on every write was "no etcd member answered", an answer lost.
  static answer send(endpoint& e, const char* path, const std::string& text) {
    httplib::Request req;
    req.method = "POST";
    req.path = path;
    req.body = text;
    req.headers = {{"Content-Type", "application/json"}};
    answer a;
    req.content_receiver = [&a](const char* data, size_t n, uint64_t, uint64_t) {
      a.body.append(data, n);
      return true;
    };
    httplib::Response res;
    if (e.http->send(req, res, a.error)) {
      a.status = res.status;
      return a;
    }
    if (a.error == httplib::Error::Read && res.status > 0 &&
        json::parse(a.body, nullptr, false).is_object()) {
      a.status = res.status;
      a.error = httplib::Error::Success;
      return a;
    }
    a.body.clear();
    return a;
  }

  // POSTs `body` to `path` on the current member, moving on to the next when one cannot be
  // reached or answers 5xx or 408; etcd's own refusals (another 4xx, with a message) are
  // returned as they are, as errc::store_error: nothing of the request was applied. Unless a
  // member asked before may have applied it: its answer was lost (a read timeout, a reset
  // connection) or was a 5xx or a 408 (gRPC's Canceled: etcd may apply a proposal whose
  // request was cancelled). A transaction's caller settles a failure it cannot be sure of,
  // and goes by a refusal: that one is errc::unavailable.
  expected<json> post(const char* path, const json& body) {
    const std::string text = body.dump();
    std::string last;
    bool maybe_applied = false;
    for (size_t tried = 0; tried < endpoints.size(); ++tried) {
      auto& e = endpoints[current];
      const answer r = send(e, path, text);
      if (r.status == 200) {
        auto parsed = json::parse(r.body, nullptr, false);
        if (parsed.is_discarded() || !parsed.is_object())
          return error(errc::malformed_message,
                       std::string("etcd answered ") + path + " with something that is not JSON");
        return parsed;
      }
      if (r.status > 0 && r.status < 500 && r.status != 408) {
        auto parsed = json::parse(r.body, nullptr, false);
        auto m = parsed.is_object() ? parsed.find("message") : parsed.end();
        std::string message = m != parsed.end() && m->is_string() ? m->get<std::string>() : r.body;
        if (maybe_applied)
          return error(errc::unavailable, "etcd refused " + std::string(path) + ": " + message +
                                              ", after " + last +
                                              " (that member may have applied it)");
        return error(errc::store_error, "etcd refused " + std::string(path) + ": " + message);
      }
      // A member never reached (no connection made) cannot have applied anything.
      if (r.status > 0 ||
          (r.error != httplib::Error::Connection && r.error != httplib::Error::ConnectionTimeout))
        maybe_applied = true;
      last = e.host + ":" + std::to_string(e.port) + ": " +
             (r.status > 0 ? "HTTP " + std::to_string(r.status) : httplib::to_string(r.error));
      current = (current + 1) % endpoints.size();
    }
    return error(errc::unavailable, "no etcd member answered (last: " + last + ")");
  }
};

etcd_client::etcd_client(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
etcd_client::etcd_client(etcd_client&&) noexcept = default;
etcd_client& etcd_client::operator=(etcd_client&&) noexcept = default;
etcd_client::~etcd_client() = default;

expected<etcd_client> etcd_client::make(std::string_view endpoints,
                                        std::chrono::milliseconds read_timeout) {
  auto p = std::make_unique<impl>();
  size_t at = 0;
  while (at <= endpoints.size()) {
    size_t end = endpoints.find(',', at);
    if (end == std::string_view::npos) end = endpoints.size();
    std::string one(endpoints.substr(at, end - at));
    at = end + 1;
    if (one.empty()) continue;
    auto colon = one.rfind(':');
    int port = 0;
    if (colon != std::string::npos && colon > 0) try {
        size_t used = 0;
        port = std::stoi(one.substr(colon + 1), &used);
        if (used != one.size() - colon - 1) port = 0;
      } catch (const std::exception&) {
        port = 0;
      }
    if (port <= 0 || port > 65535)
      return error(errc::invalid_argument,
                   "etcd endpoint \"" + one + "\" is not HOST:PORT with a port in 1..65535");
    impl::endpoint e;
    e.host = one.substr(0, colon);
    e.port = port;
    e.http = std::make_unique<httplib::Client>(e.host, e.port);
    e.http->set_connection_timeout(1, 0);
    // Headers and body leave in separate writes: without this each request waits out the
    // server's delayed acknowledgement (40 ms), which capped commits at about 23 a second.
    e.http->set_tcp_nodelay(true);
    e.http->set_read_timeout(read_timeout);
    e.http->set_write_timeout(5, 0);
    e.http->set_keep_alive(true);
    p->endpoints.push_back(std::move(e));
  }
  if (p->endpoints.empty())
    return error(errc::invalid_argument, "no etcd endpoint given (HOST:PORT,HOST:PORT,...)");
  return etcd_client(std::move(p));
}

expected<int64_t> etcd_client::grant_lease(int64_t ttl_s) {
  auto r = impl_->post("/v3/lease/grant", {{"TTL", std::to_string(ttl_s)}});
  if (!r) return r.error();
  return read_answer("/v3/lease/grant", [&]() -> expected<int64_t> {
    if (r->contains("error") && !(*r)["error"].get<std::string>().empty())
      return error(errc::store_error, "etcd refused a lease: " + (*r)["error"].get<std::string>());
    int64_t id = int_field(*r, "ID");
    if (id == 0) return error(errc::malformed_message, "etcd granted a lease without an id");
    return id;
  });
}

expected<int64_t> etcd_client::keep_alive(int64_t lease) {
  auto r = impl_->post("/v3/lease/keepalive", {{"ID", std::to_string(lease)}});
  if (!r) return r.error();
  return read_answer("/v3/lease/keepalive", [&]() -> expected<int64_t> {
    auto it = r->find("result");
    if (it == r->end() || !it->is_object())
      return error(errc::malformed_message, "etcd's keep-alive has no result");
    return int_field(*it, "TTL");
  });
}

expected<void> etcd_client::revoke(int64_t lease) {
  auto r = impl_->post("/v3/kv/lease/revoke", {{"ID", std::to_string(lease)}});
  if (!r) return r.error();
  return {};
}

expected<int64_t> etcd_client::time_to_live(int64_t lease) {
  auto r = impl_->post("/v3/lease/timetolive", {{"ID", std::to_string(lease)}});
  if (!r) return r.error();
  return read_answer("/v3/lease/timetolive", [&]() -> expected<int64_t> {
    return std::max<int64_t>(int_field(*r, "TTL"), 0);  // -1: expired, or never granted
  });
}

expected<etcd_txn_result> etcd_client::txn(std::span<const etcd_compare> compare,
                                           std::span<const etcd_op> success,
                                           std::span<const etcd_op> failure) {
  json body = {{"compare", json::array()}, {"success", json::array()}, {"failure", json::array()}};
  for (const auto& c : compare) body["compare"].push_back(compare_json(c));
  for (const auto& op : success) body["success"].push_back(op_json(op));
  for (const auto& op : failure) body["failure"].push_back(op_json(op));
  auto r = impl_->post("/v3/kv/txn", body);
  if (!r) return r.error();
  return read_answer("/v3/kv/txn", [&]() -> expected<etcd_txn_result> {
    etcd_txn_result out;
    out.succeeded = r->value("succeeded", false);
    if (auto h = r->find("header"); h != r->end()) out.revision = int_field(*h, "revision");
    return out;
  });
}

expected<std::vector<etcd_kv>> etcd_client::range(std::string_view key, bool prefix,
                                                  int64_t revision) {
  json body = {{"key", to_base64(key)}};
  if (prefix) body["range_end"] = to_base64(etcd_prefix_end(key));
  if (revision > 0) body["revision"] = std::to_string(revision);
  auto r = impl_->post("/v3/kv/range", body);
  if (!r) return r.error();
  return read_answer("/v3/kv/range", [&]() -> expected<std::vector<etcd_kv>> {
    std::vector<etcd_kv> out;
    if (auto kvs = r->find("kvs"); kvs != r->end() && kvs->is_array())
      for (const auto& j : *kvs) {
        if (!j.is_object())
          return error(errc::malformed_message, "etcd sent a key that is not one");
        auto kv = kv_of(j);
        if (!kv) return kv.error();
        out.push_back(std::move(*kv));
      }
    return out;
  });
}

expected<int64_t> etcd_client::revision() {
  // A range over one key that need not exist answers with the store's header.
  auto r = impl_->post("/v3/kv/range", {{"key", to_base64(std::string_view("\0", 1))}});
  if (!r) return r.error();
  return read_answer("/v3/kv/range", [&]() -> expected<int64_t> {
    auto h = r->find("header");
    if (h == r->end()) return error(errc::malformed_message, "etcd's answer has no header");
    return int_field(*h, "revision");
  });
}

expected<void> etcd_client::compact(int64_t revision) {
  auto r = impl_->post("/v3/kv/compaction", {{"revision", std::to_string(revision)}});
  if (!r) return r.error();
  return {};
}

std::string etcd_prefix_end(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    auto& last = reinterpret_cast<unsigned char&>(end.back());
    if (last < 0xff) {
      ++last;
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key (etcd's convention for "to the end")
}

}  // namespace gflex
