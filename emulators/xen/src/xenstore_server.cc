// SPDX-License-Identifier: Apache-2.0
// xen::XenStoreServer; see xenstore_server.h.
#include "vioport/emulators/xenstore_server.h"

#include <unistd.h>

#include <array>
#include <cstdio>
#include <deque>
#include <set>
#include <vector>

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include "absl/strings/str_cat.h"

namespace vioport::xen {

namespace asio = boost::asio;
using Stream = asio::local::stream_protocol;

namespace {
class Session;
}

struct XenStoreServer::Impl {
  asio::io_context& io;
  XenStore& store;
  XenStoreServerOptions options;
  std::vector<std::unique_ptr<Stream::acceptor>> acceptors;
  std::vector<std::string> paths;
  std::set<std::shared_ptr<Session>> sessions;
  uint64_t dropped = 0;
  bool closed = false;
  std::weak_ptr<Impl> self_weak;

  Impl(asio::io_context& i, XenStore& s, XenStoreServerOptions o) : io(i), store(s), options(o) {}
  void Accept(Stream::acceptor* acceptor, uint32_t domid);
};

namespace {

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(std::weak_ptr<XenStoreServer::Impl> server, Stream::socket socket, uint32_t domid)
      : server_(std::move(server)), socket_(std::move(socket)), domid_(domid) {}

  uint32_t domid() const { return domid_; }

  void Start(XenStore& store) {
    std::weak_ptr<Session> weak = shared_from_this();
    conn_ = store.Connect(domid_, [weak](const XsHeader& hdr, std::string_view payload) {
      if (auto self = weak.lock()) self->Enqueue(hdr, payload);
    });
    ReadHeader();
  }

  // Closes now (not from inside a XenStore sink).
  void Shutdown(bool dropped) {
    if (closed_) return;
    closed_ = true;
    boost::system::error_code ec;
    socket_.close(ec);
    auto server = server_.lock();
    if (!server) return;
    if (dropped) server->dropped++;
    if (server->options.log_connections)
      std::fprintf(stderr, "xenstored: domid %u connection %s\n", domid_, dropped ? "dropped" : "closed");
    server->store.Disconnect(conn_);
    server->sessions.erase(shared_from_this());
  }

 private:
  void Enqueue(const XsHeader& hdr, std::string_view payload) {
    if (closed_ || closing_) return;
    auto server = server_.lock();
    if (!server) return;
    const size_t size = kXsHeaderSize + payload.size();
    if (queued_ + size > server->options.max_queued_output) {
      // Inside a XenStore call: close once it has returned.
      closing_ = true;
      asio::post(server->io, [self = shared_from_this()] { self->Shutdown(true); });
      return;
    }
    out_.push_back(EncodeXsMessage(hdr.type, hdr.req_id, hdr.tx_id, payload));
    queued_ += size;
    if (!writing_) WriteNext();
  }

  void WriteNext() {
    if (out_.empty() || closed_) {
      writing_ = false;
      return;
    }
    writing_ = true;
    asio::async_write(socket_, asio::buffer(out_.front()),
                      [self = shared_from_this()](const boost::system::error_code& ec, size_t) {
                        if (self->closed_) return;
                        if (ec) return self->Shutdown(false);
                        self->queued_ -= self->out_.front().size();
                        self->out_.pop_front();
                        self->WriteNext();
                      });
  }

  void ReadHeader() {
    asio::async_read(socket_, asio::buffer(hdr_bytes_),
                     [self = shared_from_this()](const boost::system::error_code& ec, size_t) {
                       if (self->closed_ || self->closing_) return;
                       if (ec) return self->Shutdown(false);
                       self->hdr_ = DecodeXsHeader(self->hdr_bytes_.data());
                       if (self->hdr_.len > kXsPayloadMax) return self->Shutdown(true);
                       self->payload_.resize(self->hdr_.len);
                       if (self->hdr_.len == 0) return self->Dispatch();
                       self->ReadPayload();
                     });
  }

  void ReadPayload() {
    asio::async_read(socket_, asio::buffer(payload_),
                     [self = shared_from_this()](const boost::system::error_code& ec, size_t) {
                       if (self->closed_ || self->closing_) return;
                       if (ec) return self->Shutdown(false);
                       self->Dispatch();
                     });
  }

  void Dispatch() {
    auto server = server_.lock();
    if (!server) return;
    server->store.HandleMessage(conn_, hdr_, payload_);
    if (!closed_ && !closing_) ReadHeader();
  }

  std::weak_ptr<XenStoreServer::Impl> server_;
  Stream::socket socket_;
  uint32_t domid_;
  XenStore::ConnId conn_ = 0;
  std::array<uint8_t, kXsHeaderSize> hdr_bytes_{};
  XsHeader hdr_;
  std::string payload_;
  std::deque<std::string> out_;
  size_t queued_ = 0;
  bool writing_ = false;
  bool closing_ = false;
  bool closed_ = false;
};

}  // namespace

void XenStoreServer::Impl::Accept(Stream::acceptor* acceptor, uint32_t domid) {
  acceptor->async_accept([weak = self_weak, acceptor, domid](const boost::system::error_code& ec,
                                                             Stream::socket socket) {
    auto self = weak.lock();
    if (!self || self->closed) return;
    // Closed by StopListening: the acceptor may be gone already.
    if (ec == asio::error::operation_aborted) return;
    if (!ec) {
      auto session = std::make_shared<Session>(weak, std::move(socket), domid);
      self->sessions.insert(session);
      if (self->options.log_connections) std::fprintf(stderr, "xenstored: domid %u connected\n", domid);
      session->Start(self->store);
    }
    self->Accept(acceptor, domid);
  });
}

XenStoreServer::XenStoreServer(asio::io_context& io, XenStore& store, XenStoreServerOptions options)
    : impl_(std::make_shared<Impl>(io, store, options)) {
  impl_->self_weak = impl_;
}

XenStoreServer::~XenStoreServer() { Close(); }

absl::Status XenStoreServer::Listen(const std::string& path, uint32_t domid) {
  if (impl_->closed) return absl::FailedPreconditionError("server closed");
  ::unlink(path.c_str());
  auto acceptor = std::make_unique<Stream::acceptor>(impl_->io);
  boost::system::error_code ec;
  acceptor->open(Stream(), ec);
  if (!ec) acceptor->bind(Stream::endpoint(path), ec);
  if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("listen on ", path, ": ", ec.message()));
  Stream::acceptor* raw = acceptor.get();
  impl_->acceptors.push_back(std::move(acceptor));
  impl_->paths.push_back(path);
  impl_->Accept(raw, domid);
  return absl::OkStatus();
}

absl::Status XenStoreServer::StopListening(const std::string& path) {
  for (size_t i = 0; i < impl_->paths.size(); ++i) {
    if (impl_->paths[i] != path) continue;
    // Destroying the acceptor cancels its pending accept, whose handler
    // then sees operation_aborted and does not touch it.
    ::unlink(path.c_str());
    impl_->acceptors.erase(impl_->acceptors.begin() + static_cast<std::ptrdiff_t>(i));
    impl_->paths.erase(impl_->paths.begin() + static_cast<std::ptrdiff_t>(i));
    return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("not listening on ", path));
}

size_t XenStoreServer::CloseConnectionsOf(uint32_t domid) {
  // Shutdown erases from the set: collect first.
  std::vector<std::shared_ptr<Session>> of;
  for (const auto& s : impl_->sessions)
    if (s->domid() == domid) of.push_back(s);
  for (const auto& s : of) s->Shutdown(false);
  return of.size();
}

void XenStoreServer::Close() {
  if (impl_->closed) return;
  impl_->closed = true;
  boost::system::error_code ec;
  for (auto& a : impl_->acceptors) a->close(ec);
  for (const auto& p : impl_->paths) ::unlink(p.c_str());
  // Shutdown erases from the set: iterate over a copy.
  const auto sessions = impl_->sessions;
  for (const auto& s : sessions) s->Shutdown(false);
  impl_->sessions.clear();
}

size_t XenStoreServer::connection_count() const { return impl_->sessions.size(); }

uint64_t XenStoreServer::dropped_connections() const { return impl_->dropped; }

}  // namespace vioport::xen
