// cpp-httplib behind <gflex/runtime/http_server.hpp>.
//
// httplib rather than civetweb (prometheus-cpp's exposer): civetweb's threads get a fixed
// 100 KiB stack, and in our programs the static TLS of cuBLASLt and OpenBLAS alone is about
// 170 KiB, so glibc refuses to create them. httplib's threads take the default stack.

#include "gflex/runtime/http_server.hpp"

#include <httplib.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace gflex::http {

namespace {

// Why binding to host:port failed, which httplib does not say: tried again here. A port in
// use may be free at the next start, and an address not this machine's may be one soon (an
// interface still being configured at boot: DHCP, IPv6 address detection), as may a name a
// resolver could not look up now (errc::unavailable, exit 1: a service restarts). A name that
// does not exist or a port this user may not take stays so (errc::invalid_argument, exit 2),
// and was restarted for ever.
error bind_failure(const std::string& host, uint16_t port, const std::string& what) {
  const std::string where = "cannot serve " + what + " on " + host + ":" + std::to_string(port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (const int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &found); rc != 0)
    return error(rc == EAI_AGAIN || rc == EAI_FAIL ? errc::unavailable : errc::invalid_argument,
                 where + ": " + ::gai_strerror(rc));
  int in_use = 0, not_here = 0, lasting = 0;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    int yes = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    const int err = ::bind(fd, a->ai_addr, a->ai_addrlen) == 0 ? 0 : errno;
    ::close(fd);
    if (err == EADDRINUSE) in_use = err;
    if (err == EADDRNOTAVAIL) not_here = err;
    if (err == EACCES) lasting = err;
  }
  ::freeaddrinfo(found);
  if (in_use == 0 && lasting != 0)
    return error(errc::invalid_argument, where + ": " + std::strerror(lasting));
  if (in_use == 0 && not_here != 0)
    return error(errc::unavailable,
                 where + ": not an address of this machine (yet: is its interface up?)");
  return error(errc::unavailable, where + ": the address is in use");
}

}  // namespace

struct server::impl {
  httplib::Server http;
  std::thread loop;
};

expected<std::unique_ptr<server>> server::start(const std::string& host, uint16_t port, int threads,
                                                const std::function<void(httplib::Server&)>& routes,
                                                const std::string& what, server_limits limits) {
  std::unique_ptr<server> s(new server);
  s->impl_ = std::make_unique<impl>();
  auto& http = s->impl_->http;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // Not httplib's default SO_REUSEPORT: a second process must not share the port.
  http.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  // A response's header and body leave in separate writes; with Nagle's algorithm the second
  // waits for the client's delayed acknowledgement (40 ms on Linux).
  http.set_tcp_nodelay(true);
  // Before the body is read (httplib reads it whole, before routing): a body past the limit,
  // one that would be decompressed, one a read-only service does not take, one without the
  // service's credential, one of no stated length.
  http.set_payload_max_length(std::max<size_t>(limits.max_body_bytes, 1));
  http.set_pre_routing_handler([limits = std::move(limits)](const httplib::Request& req,
                                                            httplib::Response& res) {
    if (req.has_header("Content-Encoding")) {
      res.status = 415;
      return httplib::Server::HandlerResponse::Handled;
    }
    if (limits.max_body_bytes == 0 && req.method != "GET" && req.method != "HEAD") {
      res.status = 405;
      return httplib::Server::HandlerResponse::Handled;
    }
    if (limits.admit && !limits.admit(req)) {
      res.status = 403;
      return httplib::Server::HandlerResponse::Handled;
    }
    // A body in chunks, or of no stated length, is not held to the limit by this httplib
    // (0.11 checks Content-Length only): it grew in memory for as long as it was sent.
    const bool takes_body = req.method == "PUT" || req.method == "POST" || req.method == "PATCH";
    if (req.has_header("Transfer-Encoding") || (takes_body && !req.has_header("Content-Length"))) {
      res.status = 411;
      return httplib::Server::HandlerResponse::Handled;
    }
    // The ranges a request asks for are ignored, and the whole body sent (as a server
    // may): httplib 0.11 serves each of them from the whole body without bounding their
    // number or overlap, and one request of 4,000 ranges "-" made a 200 KB page 800 MB of
    // memory, from anyone who reaches the port. None of these services needs ranges. (The
    // request is httplib's own, not const; the handler is only given it so.)
    const_cast<httplib::Request&>(req).ranges.clear();
    // Answered now rather than after httplib has read (and dropped) all of it.
    if (req.has_header("Content-Length") &&
        std::strtoull(req.get_header_value("Content-Length").c_str(), nullptr, 10) >
            limits.max_body_bytes) {
      res.status = 413;
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  routes(http);
  const int bound =
      port == 0 ? http.bind_to_any_port(host) : (http.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) return bind_failure(host, port, what);
  s->port_ = static_cast<uint16_t>(bound);
  // The server's threads (this loop and the pool it starts) take no signals: a stop
  // delivered to one of them would be lost.
  sigset_t all, before;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &before);
  s->impl_->loop = std::thread([&http] { http.listen_after_bind(); });
  pthread_sigmask(SIG_SETMASK, &before, nullptr);
  // httplib's stop() does nothing until its loop has marked itself running: a server stopped
  // before that (a core told to stop as it starts) would have been joined for ever. It is
  // marked within microseconds of the thread's start.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!http.is_running() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  if (!http.is_running()) {
    // Left as it is (its thread may yet use it), and the thread not waited for.
    s->impl_->loop.detach();
    (void)s->impl_.release();
    return error(errc::unavailable, "cannot serve " + what + ": its thread did not start");
  }
  return s;
}

server::~server() {
  if (!impl_) return;
  impl_->http.stop();
  if (impl_->loop.joinable()) impl_->loop.join();
}

}  // namespace gflex::http
