// cpp-httplib behind <gflex/runtime/http_server.hpp>.
//
// httplib rather than civetweb (prometheus-cpp's exposer): civetweb's threads get a fixed
// 100 KiB stack, and in our programs the static TLS of cuBLASLt and OpenBLAS alone is about
// 170 KiB, so glibc refuses to create them. httplib's threads take the default stack.

#include "gflex/runtime/http_server.hpp"

#include <httplib.h>
#include <pthread.h>
#include <signal.h>

#include <thread>

namespace gflex::http {

struct server::impl {
  httplib::Server http;
  std::thread loop;
};

expected<std::unique_ptr<server>> server::start(const std::string& host, uint16_t port, int threads,
                                                const std::function<void(httplib::Server&)>& routes,
                                                const std::string& what) {
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
  routes(http);
  const int bound =
      port == 0 ? http.bind_to_any_port(host) : (http.bind_to_port(host, port) ? port : -1);
  if (bound <= 0)
    return error(errc::unavailable, "cannot serve " + what + " on " + host + ":" +
                                        std::to_string(port) +
                                        ": the address is in use or not this machine's");
  s->port_ = static_cast<uint16_t>(bound);
  // The server's threads (this loop and the pool it starts) take no signals: a stop
  // delivered to one of them would be lost.
  sigset_t all, before;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &before);
  s->impl_->loop = std::thread([&http] { http.listen_after_bind(); });
  pthread_sigmask(SIG_SETMASK, &before, nullptr);
  return s;
}

server::~server() {
  if (!impl_) return;
  impl_->http.stop();
  if (impl_->loop.joinable()) impl_->loop.join();
}

}  // namespace gflex::http
