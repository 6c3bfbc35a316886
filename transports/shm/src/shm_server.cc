// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/shm_server.h"

#include "absl/strings/str_cat.h"
#include "boost/asio/generic/seq_packet_protocol.hpp"
#include "shm_session.h"
#include "vioport/core/log.h"
#include "vioport/transports/device_loop.h"
#include "vioport/transports/shm_guest.h"
#include "vioport/transports/unix_listener.h"

namespace vioport {

namespace asio = boost::asio;
// Boost 1.74 has no local::seq_packet_protocol: the generic protocol with a
// Unix-domain endpoint is the same socket.
using SeqProtocol = asio::generic::seq_packet_protocol;
using SeqSocket = SeqProtocol::socket;

namespace {
struct Connection;
}  // namespace

struct ShmServer::Impl {
  ShmServer* self;
  std::shared_ptr<VirtioDevice> device;
  DeviceLoop loop;
  std::unique_ptr<UnixListener<SeqProtocol>> listener;
  std::shared_ptr<Connection> conn;
  EndpointState state;
  shm::Session::Counters past_session;  // connections that ended (loop thread)

  Impl(ShmServer* s, asio::io_context& io, std::shared_ptr<VirtioDevice> d)
      : self(s), device(d), loop(io, std::move(d), {s->opts_.poll, s->opts_.spin_us}) {}
  void Accepted(SeqSocket sock);
};

namespace {

// One guest connection on the loop's thread: the socket around a session.
struct Connection : std::enable_shared_from_this<Connection>, shm::Session::Host {
  ShmServer::Impl* srv;
  SeqSocket sock;
  std::unique_ptr<shm::Session> session;  // null once closed
  bool closed = false;

  Connection(ShmServer::Impl* s, SeqSocket so)
      : srv(s), sock(std::move(so)),
        session(std::make_unique<shm::Session>(s->device, this, s->self->options().name,
                                               s->self->options().transport_features, s->loop.poll())) {}
  DeviceController* controller() const { return session ? session->controller() : nullptr; }
  absl::Status Send(const shm::MsgHeader& h, std::span<const int> fds) override {
    return shm::SendMsg(sock.native_handle(), h, {}, fds);
  }
  void Attached(DeviceController& ctl, std::span<const int> kicks) override {
    for (uint16_t q = 0; q < kicks.size(); ++q) srv->loop.WatchKick(q, kicks[q]);
    srv->loop.Serve(&ctl);
    srv->state.connected = true;
  }
  void Read() {
    sock.async_wait(SeqSocket::wait_read, [self = shared_from_this()](const boost::system::error_code& ec) {
      if (self->closed) return;
      if (ec) return self->Close(ec.message(), false);
      for (;;) {
        auto m = shm::RecvMsg(self->sock.native_handle(), self->controller() ? 0 : 1);
        absl::Status s = m.ok() ? self->session->Handle(*m) : m.status();
        if (absl::IsResourceExhausted(s)) break;  // drained
        if (absl::IsUnavailable(s)) return self->Close(std::string(s.message()), false);
        if (!s.ok()) {
          self->srv->state.protocol_errors++;
          return self->Close(std::string(s.message()), true);
        }
        self->Published();
      }
      self->Read();
    });
  }
  void Published() {
    DeviceController* c = controller();
    srv->state.status = c ? c->status() : 0;
  }
  void Close(const std::string& why, bool tell_guest) {
    if (closed) return;
    closed = true;
    if (tell_guest) (void)shm::SendMsg(sock.native_handle(), shm::Header(shm::MsgType::kError), why);
    const bool attached = controller() != nullptr;
    if (attached) {
      VIOPORT_LOG(kInfo, srv->self->options().name, ": guest detached: ", why);
    } else {
      VIOPORT_LOG(kWarning, srv->self->options().name, ": connection refused: ", why);
    }
    srv->state.SetError(why);
    if (DeviceController* c = controller()) srv->state.Ended(*c);
    srv->past_session.register_writes += session->counters().register_writes;
    srv->past_session.register_writes_ignored += session->counters().register_writes_ignored;
    srv->loop.Serve(nullptr);
    srv->loop.UnwatchKicks();
    session.reset();  // the device is reset, then the region unmapped
    boost::system::error_code ec;
    sock.close(ec);
    srv->state.connected = false;
    srv->state.status = 0;
  }
};

}  // namespace

ShmServer::ShmServer(ShmServerOptions o) : opts_(std::move(o)) {}

absl::StatusOr<std::unique_ptr<ShmServer>> ShmServer::Create(asio::io_context& io, std::shared_ptr<VirtioDevice> device,
                                                           ShmServerOptions options) {
  if (!device) return absl::InvalidArgumentError("no device");
  if (device->num_queues() == 0 || device->num_queues() > shm::kMaxQueues)
    return absl::InvalidArgumentError(absl::StrCat("shm carries 1 to ", shm::kMaxQueues, " queues, the device has ",
                                                   device->num_queues()));
  if (device->config_size() > shm::kMaxConfigSize)
    return absl::InvalidArgumentError("device config space does not fit the register page");
  if (options.socket_path.empty()) return absl::InvalidArgumentError("shm: no socket path");
  std::unique_ptr<ShmServer> s(new ShmServer(std::move(options)));
  s->impl_ = std::make_unique<Impl>(s.get(), io, std::move(device));
  Impl* im = s->impl_.get();
  im->loop.set_after_work([im] {
    if (im->conn) im->conn->Published();
  });
  auto l = im->loop.Run([&] {
    return UnixListener<SeqProtocol>::Listen(im->loop.io(), s->opts_.socket_path, SeqProtocol(AF_UNIX, 0),
                                             [im](SeqSocket sock) { im->Accepted(std::move(sock)); });
  });
  if (!l.ok()) return l.status();
  im->listener = std::move(*l);
  VIOPORT_LOG(kInfo, s->opts_.name, ": listening on ", s->opts_.socket_path, s->opts_.poll ? " (polling)" : "");
  return s;
}

ShmServer::~ShmServer() {
  impl_->loop.Run([im = impl_.get()] {
    if (im->conn) im->conn->Close("server stopping", true);
    im->conn.reset();
    im->listener.reset();
  });
  impl_.reset();  // the loop last: handlers still queued find it gone
}

void ShmServer::Impl::Accepted(SeqSocket sock) {
  if (conn && !conn->closed) {
    // One guest at a time: the device has one driver.
    state.refused++;
    (void)shm::SendMsg(sock.native_handle(), shm::Header(shm::MsgType::kError), "device busy: another guest is attached");
    VIOPORT_LOG(kWarning, self->opts_.name, ": refused a second guest");
    return;
  }
  state.connections++;
  conn = std::make_shared<Connection>(this, std::move(sock));
  boost::system::error_code ec;
  conn->sock.non_blocking(true, ec);
  conn->Read();
}

bool ShmServer::connected() const { return impl_->state.connected; }
uint8_t ShmServer::device_status() const { return impl_->state.status; }

void ShmServer::StopAccepting() {
  impl_->loop.Run([im = impl_.get()] { im->listener->Close(); });
}

absl::Status ShmServer::Quiesce() {
  return impl_->loop.Run([im = impl_.get()] { return im->loop.device().Quiesce(); });
}

std::string ShmServer::last_error() const {
  return impl_->loop.Run([im = impl_.get()] {
    if (DeviceController* c = im->conn ? im->conn->controller() : nullptr; c && !c->last_error().empty())
      return c->last_error();
    return im->state.error();
  });
}

void ShmServer::AppendCounters(CounterList* out) const {
  impl_->loop.Run([im = impl_.get(), out] {
    TransportCounters live;
    shm::Session::Counters sc = im->past_session;
    if (DeviceController* c = im->conn ? im->conn->controller() : nullptr) {
      live = c->transport_counters();
      sc.register_writes += im->conn->session->counters().register_writes;
      sc.register_writes_ignored += im->conn->session->counters().register_writes_ignored;
    }
    im->state.AppendCounters(live, out);
    out->insert(out->end(),
                {{"register_writes", sc.register_writes}, {"register_writes_ignored", sc.register_writes_ignored}});
  });
}

void RegisterShmTransport() {
  RegisterDeviceTransport(
      {"shm",
       "hypervisor-less virtio-mmio over shared memory (docs/transports/shm.md): the\n"
       "guest brings a sealed memfd, vios maps it and mirrors the registers in it",
       {OptionSpec::String("path", "SOCKET", "the Unix socket guests connect to").Required(),
        OptionSpec::Bool("poll", false, "busy-poll the rings on a dedicated thread (costs a core)"),
        OptionSpec::Uint("spin-us", "N", 0, 1000, "keep serving N us past the last request before sleeping")
            .Default(20)},
       [](EndpointContext& ctx, const OptionValues& o) -> absl::StatusOr<std::unique_ptr<DeviceEndpoint>> {
         auto s = ShmServer::Create(ctx.io, ctx.device,
                                    {o.str("path"), ctx.name, o.flag("poll"), static_cast<uint32_t>(o.num("spin-us"))});
         if (!s.ok()) return s.status();
         return std::unique_ptr<DeviceEndpoint>(std::move(*s));
       }});
  RegisterGuestTransport({"shm", "SOCKET",
                          "hypervisor-less shared memory: this process's memory is a sealed memfd the\n"
                          "device maps (vios --attach ...,transport=shm)",
                          {},
                          {},
                          64 << 20,
                          [](const GuestContext& ctx, const std::string& socket,
                             const OptionValues&) -> absl::StatusOr<GuestLink> {
                            auto t = ShmDriverTransport::Connect({socket, *ctx.memory_bytes});
                            if (!t.ok()) return t.status();
                            GuestLink link;
                            link.transport = std::move(*t);
                            return link;
                          }});
}

}  // namespace vioport
