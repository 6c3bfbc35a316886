// SPDX-License-Identifier: Apache-2.0
// shm's device half as vios serves it: a DeviceEndpoint listening on a Unix
// seqpacket socket, one guest at a time, each connection a shm::Session on
// the device's DeviceLoop; and the transport's registration (device and
// guest halves).
#include "absl/strings/str_cat.h"
#include "boost/asio/generic/seq_packet_protocol.hpp"
#include "shm_session.h"
#include "vioport/core/log.h"
#include "vioport/transports/device_loop.h"
#include "vioport/transports/shm_guest.h"
#include "vioport/transports/unix_listener.h"

namespace vioport {
namespace {

// Boost 1.74 has no local::seq_packet_protocol: the generic protocol with a
// Unix-domain endpoint is the same socket.
using SeqProtocol = boost::asio::generic::seq_packet_protocol;
using SeqSocket = SeqProtocol::socket;
class ShmEndpoint;

// One guest connection on the loop's thread: the socket around a session.
struct Connection : std::enable_shared_from_this<Connection>, shm::Session::Host {
  ShmEndpoint* ep;
  SeqSocket sock;
  std::unique_ptr<shm::Session> session;  // null once closed

  Connection(ShmEndpoint* e, SeqSocket s);
  DeviceController* controller() const { return session ? session->controller() : nullptr; }
  absl::Status Send(const shm::MsgHeader& h, std::span<const int> fds) override {
    return shm::SendMsg(sock.native_handle(), h, {}, fds);
  }
  void Attached(DeviceController& ctl, std::span<const int> kicks) override;
  void Read();
  void Published();
  void Close(const std::string& why, bool tell_guest);
  // The new vios has the connection: drop ours, telling no one.
  void Abandon();
};

class ShmEndpoint final : public LoopEndpoint {
 public:
  ShmEndpoint(EndpointContext& ctx, const OptionValues& o)
      : LoopEndpoint(ctx, {o.flag("poll"), static_cast<uint32_t>(o.num("spin-us"))}), path_(o.str("path")) {
    loop_.set_after_work([this] {
      if (conn_) conn_->Published();
    });
  }
  // Live upgrade: the listening socket and the guest's connection from the
  // record the old vios wrote (Freeze); frozen until Thaw().
  absl::Status Restore(HandoverReader& in) {
    return loop_.Run([&]() -> absl::Status {
      loop_.Freeze();
      uint64_t stage = 0;
      UniqueFd lfd;
      if (absl::Status s = in.Fd(&lfd, "listening socket"); !s.ok()) return s;
      auto l = UnixListener<SeqProtocol>::Adopt(loop_.io(), path_, SeqProtocol(AF_UNIX, 0), std::move(lfd),
                                                [this](SeqSocket s) { Accepted(std::move(s)); });
      if (!l.ok()) return l.status();
      listener_ = std::move(*l);
      if (absl::Status s = in.U64(&stage, 2, "connection stage"); !s.ok()) return s;
      if (stage == 0) return absl::OkStatus();
      UniqueFd sfd;
      if (absl::Status s = in.Fd(&sfd, "guest socket"); !s.ok()) return s;
      SeqSocket sock(loop_.io());
      boost::system::error_code ec;
      sock.assign(SeqProtocol(AF_UNIX, 0), sfd.get(), ec);
      if (ec) return absl::UnavailableError(absl::StrCat("taking over the guest socket: ", ec.message()));
      sfd.release();
      state_.connections++;
      conn_ = std::make_shared<Connection>(this, std::move(sock));
      if (stage == 2) {
        if (absl::Status s = conn_->session->Restore(in); !s.ok()) {
          conn_->Abandon();
          conn_.reset();
          return s;
        }
        conn_->Published();
      }
      return absl::OkStatus();
    });
  }
  absl::Status Freeze(HandoverWriter* out) override {
    return loop_.Run([&]() -> absl::Status {
      listener_->Pause();
      loop_.Freeze();
      boost::system::error_code ec;
      if (conn_ && conn_->session) conn_->sock.cancel(ec);
      DeviceController* c = conn_ ? conn_->controller() : nullptr;
      if (c) {
        if (absl::Status s = device_->Drain(); !s.ok()) return s;
        c->FlushInterrupts(true);
        conn_->Published();
      }
      out->Fd(listener_->native_handle());
      out->U64(!conn_ || !conn_->session ? 0 : c ? 2 : 1);
      if (!conn_ || !conn_->session) return absl::OkStatus();
      out->Fd(conn_->sock.native_handle());
      return c ? conn_->session->Save(out) : absl::OkStatus();
    });
  }
  void Thaw() override {
    loop_.Run([this] {
      listener_->Resume();
      loop_.Thaw();
      if (conn_ && conn_->session) conn_->Read();
    });
  }
  void Abandon() override {
    loop_.Run([this] {
      listener_->Release();
      loop_.Abandon();
      if (conn_) conn_->Abandon();
      conn_.reset();
    });
  }
  absl::Status Listen() {
    auto l = loop_.Run([&] {
      return UnixListener<SeqProtocol>::Listen(loop_.io(), path_, SeqProtocol(AF_UNIX, 0),
                                               [this](SeqSocket s) { Accepted(std::move(s)); });
    });
    if (!l.ok()) return l.status();
    listener_ = std::move(*l);
    VIOPORT_LOG(kInfo, name_, ": listening on ", path_, loop_.poll() ? " (polling)" : "");
    return absl::OkStatus();
  }
  ~ShmEndpoint() override {
    loop_.Run([this] {
      if (conn_) conn_->Close("server stopping", true);
      conn_.reset();
      listener_.reset();
    });
  }
  std::string where() const override { return path_; }
  std::string mode() const override { return loop_.poll() ? "shm(poll)" : "shm"; }
  void StopAccepting() override {
    loop_.Run([this] { listener_->Close(); });
  }

 private:
  void LiveCounters(TransportCounters* base, CounterList* extras) const override {
    if (DeviceController* c = conn_ ? conn_->controller() : nullptr) {
      *base = c->transport_counters();
      conn_->session->AppendCounters(extras);
    }
  }
  std::string LiveError() const override {
    DeviceController* c = conn_ ? conn_->controller() : nullptr;
    return c ? c->last_error() : "";
  }
  friend struct Connection;
  void Accepted(SeqSocket s) {
    if (conn_ && conn_->session) {
      // One guest at a time: the device has one driver.
      state_.refused++;
      (void)shm::SendMsg(s.native_handle(), shm::Header(shm::MsgType::kError), "device busy: another guest is attached");
      VIOPORT_LOG(kWarning, name_, ": refused a second guest");
      return;
    }
    state_.connections++;
    conn_ = std::make_shared<Connection>(this, std::move(s));
    conn_->Read();
  }

  std::string path_;
  std::unique_ptr<UnixListener<SeqProtocol>> listener_;
  std::shared_ptr<Connection> conn_;
};

Connection::Connection(ShmEndpoint* e, SeqSocket s)
    : ep(e), sock(std::move(s)),
      session(std::make_unique<shm::Session>(e->device_, this, e->name_, e->loop_.poll())) {
  boost::system::error_code ec;
  sock.non_blocking(true, ec);
}

void Connection::Attached(DeviceController& ctl, std::span<const int> kicks) {
  for (uint16_t q = 0; q < kicks.size(); ++q) ep->loop_.WatchKick(q, kicks[q]);
  ep->loop_.Serve(&ctl);
  ep->state_.connected = true;
}

void Connection::Read() {
  sock.async_wait(SeqSocket::wait_read, [self = shared_from_this()](const boost::system::error_code& ec) {
    // Frozen (a live upgrade), or cancelled by the freeze: Thaw reads again.
    if (!self->session || self->ep->loop_.frozen() || ec == boost::asio::error::operation_aborted) return;
    if (ec) return self->Close(ec.message(), false);
    for (;;) {
      auto m = shm::RecvMsg(self->sock.native_handle(), self->controller() ? 0 : 1);
      absl::Status s = m.ok() ? self->session->Handle(*m) : m.status();
      if (absl::IsResourceExhausted(s)) break;  // drained
      if (absl::IsUnavailable(s)) return self->Close(std::string(s.message()), false);
      if (!s.ok()) {
        self->ep->state_.protocol_errors++;
        return self->Close(std::string(s.message()), true);
      }
      self->Published();
    }
    self->Read();
  });
}

void Connection::Published() {
  DeviceController* c = controller();
  ep->state_.status = c ? c->status() : 0;
}

void Connection::Close(const std::string& why, bool tell_guest) {
  if (!session) return;
  if (tell_guest) (void)shm::SendMsg(sock.native_handle(), shm::Header(shm::MsgType::kError), why);
  ep->state_.SetError(why);
  if (DeviceController* c = controller()) {
    VIOPORT_LOG(kInfo, ep->name_, ": guest detached: ", why);
    CounterList writes;
    session->AppendCounters(&writes);
    ep->state_.Ended(*c, writes);
  } else {
    VIOPORT_LOG(kWarning, ep->name_, ": connection refused: ", why);
  }
  ep->loop_.Serve(nullptr);
  ep->loop_.UnwatchKicks();
  session.reset();  // the device is reset, then the region unmapped
  boost::system::error_code ec;
  sock.close(ec);
  ep->state_.connected = false;
  ep->state_.status = 0;
}

void Connection::Abandon() {
  if (session) {
    CounterList writes;
    session->AppendCounters(&writes);
    if (DeviceController* c = controller()) ep->state_.Ended(*c, writes);
  }
  session.reset();  // nothing in flight (quiesced); the page is not written again
  if (sock.is_open()) {
    boost::system::error_code ec;
    const int fd = sock.release(ec);  // out of the epoll set, then closed
    if (fd >= 0) ::close(fd);
  }
  ep->state_.connected = false;
}

absl::StatusOr<std::unique_ptr<DeviceEndpoint>> MakeEndpoint(EndpointContext& ctx, const OptionValues& o) {
  const VirtioDevice& d = *ctx.device;
  if (d.num_queues() == 0 || d.num_queues() > shm::kMaxQueues)
    return absl::InvalidArgumentError(absl::StrCat("shm carries 1 to ", shm::kMaxQueues, " queues, the device has ",
                                                   d.num_queues()));
  if (d.config_size() > shm::kMaxConfigSize)
    return absl::InvalidArgumentError("device config space does not fit the register page");
  auto e = std::make_unique<ShmEndpoint>(ctx, o);
  if (ctx.handover) {
    if (absl::Status s = e->Restore(*ctx.handover); !s.ok()) return s;
    return e;
  }
  if (absl::Status s = e->Listen(); !s.ok()) return s;
  return e;
}

absl::StatusOr<GuestLink> ConnectShmGuest(const GuestContext& ctx, const std::string& socket, const OptionValues&) {
  return LinkOf(ShmDriverTransport::Connect({socket, *ctx.memory_bytes}));
}

}  // namespace

void RegisterShmTransport() {
  RegisterDeviceTransport(
      {"shm",
       "hypervisor-less virtio-mmio over shared memory (docs/transports/shm.md): the\n"
       "guest brings a sealed memfd, vios maps it and mirrors the registers in it",
       {OptionSpec::String("path", "SOCKET", "the Unix socket guests connect to").Required(),
        OptionSpec::Bool("poll", false, "busy-poll the rings on a dedicated thread (costs a core)"),
        OptionSpec::Uint("spin-us", "N", 0, 1000, "keep serving N us past the last request before sleeping")
            .Default(20)},
       MakeEndpoint,
       nullptr});
  RegisterGuestTransport({"shm", "SOCKET",
                          "hypervisor-less shared memory: this process's memory is a sealed memfd the\n"
                          "device maps (vios --attach ...,transport=shm)",
                          {}, {}, 64 << 20, ConnectShmGuest});
}

}  // namespace vioport
