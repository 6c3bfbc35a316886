// SPDX-License-Identifier: Apache-2.0
// A device endpoint's listening Unix socket: binds the path (replacing a
// stale socket file), hands every accepted socket to the endpoint on the
// io's thread until Close(), and unlinks the path when destroyed.
#pragma once

#include <unistd.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/basic_socket_acceptor.hpp"
#include "boost/asio/local/stream_protocol.hpp"
#include "vioport/core/log.h"
#include "vioport/transports/fd.h"

namespace vioport {

template <typename Protocol>
class UnixListener {
 public:
  using Socket = typename Protocol::socket;
  // Call on the io's thread.
  static absl::StatusOr<std::unique_ptr<UnixListener>> Listen(boost::asio::io_context& io, const std::string& path,
                                                              Protocol protocol, std::function<void(Socket)> on_accept) {
    if (absl::Status s = ClaimSocketPath(path); !s.ok()) return s;
    std::unique_ptr<UnixListener> l(new UnixListener(io, path, std::move(on_accept)));
    boost::system::error_code ec;
    l->acceptor_.open(protocol, ec);
    if (!ec) l->acceptor_.bind(typename Protocol::endpoint(boost::asio::local::stream_protocol::endpoint(path)), ec);
    if (!ec) l->acceptor_.listen(4, ec);
    if (ec) return absl::UnavailableError(absl::StrCat("listen on ", path, ": ", ec.message()));
    l->Accept();
    return l;
  }
  // Live upgrade: listen on a socket the old vios handed over (already
  // bound to `path`); nothing is accepted until Resume().
  static absl::StatusOr<std::unique_ptr<UnixListener>> Adopt(boost::asio::io_context& io, const std::string& path,
                                                             Protocol protocol, UniqueFd fd,
                                                             std::function<void(Socket)> on_accept) {
    std::unique_ptr<UnixListener> l(new UnixListener(io, path, std::move(on_accept)));
    boost::system::error_code ec;
    l->acceptor_.assign(protocol, fd.get(), ec);
    if (ec) return absl::UnavailableError(absl::StrCat("taking over the socket of ", path, ": ", ec.message()));
    fd.release();
    l->paused_ = true;
    return l;
  }
  ~UnixListener() {
    Close();
    if (!released_) ::unlink(path_.c_str());
  }
  // Stop accepting for now (the socket stays bound; connections queue).
  void Pause() {
    paused_ = true;
    boost::system::error_code ec;
    acceptor_.cancel(ec);
  }
  void Resume() {
    if (!paused_ || !acceptor_.is_open()) return;
    paused_ = false;
    Accept();
  }
  int native_handle() { return acceptor_.native_handle(); }
  // After a committed upgrade: close our descriptor, leaving the socket
  // and its path to the new vios.
  void Release() {
    if (!acceptor_.is_open()) return;
    boost::system::error_code ec;
    const int fd = acceptor_.release(ec);
    if (fd >= 0) ::close(fd);
    released_ = true;
  }
  // Stop accepting (the socket file stays until destruction).
  void Close() {
    boost::system::error_code ec;
    acceptor_.close(ec);
  }

 private:
  UnixListener(boost::asio::io_context& io, std::string path, std::function<void(Socket)> f)
      : acceptor_(io), path_(std::move(path)), on_accept_(std::move(f)) {}
  void Accept() {
    acceptor_.async_accept([this, alive = std::weak_ptr<int>(alive_)](const boost::system::error_code& ec, Socket s) {
      if (alive.expired() || ec == boost::asio::error::operation_aborted || !acceptor_.is_open() || paused_) return;
      if (ec) {
        VIOPORT_LOG(kWarning, path_, ": accept: ", ec.message());
      } else {
        on_accept_(std::move(s));
      }
      Accept();
    });
  }

  boost::asio::basic_socket_acceptor<Protocol> acceptor_;
  std::string path_;
  std::function<void(Socket)> on_accept_;
  bool paused_ = false;
  bool released_ = false;
  // Expires with the listener: an accept that completed before it was
  // destroyed may still have its handler queued.
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

}  // namespace vioport
