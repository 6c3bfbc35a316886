// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/vhost_user_server.h"

#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <functional>

#include "absl/strings/str_cat.h"
#include "boost/asio/local/stream_protocol.hpp"
#include "boost/asio/posix/stream_descriptor.hpp"
#include "vhost_user_session.h"
#include "vioport/transports/vhost_user_guest.h"
#include "vioport/core/log.h"
#include "vioport/transports/fd.h"
#include "vioport/transports/unix_listener.h"

namespace vioport {

namespace asio = boost::asio;
using Stream = asio::local::stream_protocol;
using vhost_user::Message;
using vhost_user::MessageReader;
using vhost_user::Session;

struct VhostUserConnection;

struct VhostUserServer::Impl {
  VhostUserServer* self;
  asio::io_context* io;
  std::shared_ptr<VirtioDevice> device;
  std::unique_ptr<UnixListener<Stream>> listener;
  std::shared_ptr<VhostUserConnection> conn;
  EndpointState state;

  void Accepted(Stream::socket sock);
};

// The session's counters beyond the base vocabulary.
CounterList Extras(const vhost_user::SessionCounters& c) {
  return {{"messages", c.messages},
          {"inflight_resubmitted", c.resubmitted},
          {"activations_refused", c.activation_refusals},
          {"duplicate_regions", c.duplicate_regions}};
}

// One front-end. Lives on the io thread; handlers hold it by shared_ptr and
// return once Close() ran.
struct VhostUserConnection : std::enable_shared_from_this<VhostUserConnection>, Session::Host {
  VhostUserServer::Impl* srv;
  Stream::socket sock;
  MessageReader reader;
  std::unique_ptr<Session> session;
  std::vector<std::unique_ptr<asio::posix::stream_descriptor>> kick_watch;
  std::unique_ptr<asio::posix::stream_descriptor> event_watch;
  std::deque<std::function<void()>> deferred;
  bool closed = false;
  bool frozen = false;  // live upgrade: nothing read, watched or served until Thaw

  VhostUserConnection(VhostUserServer::Impl* s, Stream::socket so) : srv(s), sock(std::move(so)) {}

  const std::string& name() const { return srv->self->options().name; }

  void Make() {
    srv->state.connections++;
    boost::system::error_code ec;
    sock.non_blocking(true, ec);
    vhost_user::SessionOptions so;
    so.name = name();
    so.transport_features = srv->self->options().transport_features;
    so.inflight = srv->self->options().inflight;
    so.unsealed_memory = srv->self->options().unsealed_memory;
    kick_watch.resize(srv->device->num_queues());
    session = std::make_unique<Session>(srv->device, this, so);
  }
  void Start() {
    Make();
    VIOPORT_LOG(kInfo, name(), ": front-end connected");
    ReadMessages();
    WatchEvents();
  }

  // Live upgrade: stop at a message boundary, the device stopped with its
  // rings' positions kept; then what the new vios needs.
  absl::Status Freeze(HandoverWriter* out) {
    frozen = true;
    boost::system::error_code ec;
    sock.cancel(ec);
    for (auto& w : kick_watch)
      if (w) w->cancel(ec);
    if (event_watch) event_watch->cancel(ec);
    if (absl::Status s = session->Freeze(); !s.ok()) return s;
    out->Fd(sock.native_handle());
    const std::vector<uint8_t> partial = reader.PartialBytes();
    out->Str(absl::string_view(reinterpret_cast<const char*>(partial.data()), partial.size()));
    out->U64(reader.PartialFds().size());
    for (int fd : reader.PartialFds()) out->Fd(fd);
    session->Save(out);
    return absl::OkStatus();
  }
  absl::Status Restore(HandoverReader& in) {
    frozen = true;
    Make();
    std::string partial;
    uint64_t nfds = 0;
    if (absl::Status s = in.Str(&partial, vhost_user::kHeaderSize + vhost_user::kMaxPayload, "partial message");
        !s.ok())
      return s;
    if (absl::Status s = in.U64(&nfds, vhost_user::kMaxFds, "partial message fds"); !s.ok()) return s;
    std::vector<int> fds;
    for (uint64_t i = 0; i < nfds; ++i) {
      UniqueFd fd;
      if (absl::Status s = in.Fd(&fd, "partial message fd"); !s.ok()) {
        for (int f : fds) ::close(f);
        return s;
      }
      fds.push_back(fd.release());
    }
    if (absl::Status s = reader.RestorePartial({reinterpret_cast<const uint8_t*>(partial.data()), partial.size()},
                                               std::move(fds));
        !s.ok())
      return s;
    return session->Restore(in);
  }
  void Thaw() {
    frozen = false;
    if (absl::Status s = session->Resume(); !s.ok()) {
      srv->state.protocol_errors++;
      return Close(std::string(s.message()), true);
    }
    for (size_t q = 0; q < kick_watch.size(); ++q)
      if (kick_watch[q]) ArmKick(static_cast<uint16_t>(q), kick_watch[q].get());
    ReadMessages();
    WatchEvents();
    session->Serve(srv->self->options().spin_us);
    RunDeferred();
  }
  // The new vios has it all: let go without a word to the front-end.
  void Abandon() {
    if (closed) return;
    closed = true;
    srv->state.Ended(session->transport_counters(), session->last_error(), Extras(session->counters()));
    session.reset();  // the device is stopped already; nothing is sent
    deferred.clear();
    boost::system::error_code ec;
    for (size_t q = 0; q < kick_watch.size(); ++q) UnwatchKick(static_cast<uint16_t>(q));
    if (event_watch) event_watch->close(ec);
    if (sock.is_open()) {
      const int fd = sock.release(ec);  // out of the epoll set first
      if (fd >= 0) ::close(fd);
    }
  }

  void ReadMessages() {
    if (frozen) return;
    sock.async_wait(Stream::socket::wait_read, [self = shared_from_this()](const boost::system::error_code& ec) {
      if (self->closed || self->frozen || ec == asio::error::operation_aborted) return;
      if (ec) return self->Close(ec.message(), false);
      for (int i = 0; i < 64; ++i) {  // bounded: kicks and other devices get their turn
        Message m;
        absl::StatusOr<bool> r = self->reader.Feed(self->sock.native_handle(), &m);
        if (!r.ok()) {
          const bool eof = absl::IsUnavailable(r.status());
          if (!eof) self->srv->state.protocol_errors++;
          return self->Close(std::string(r.status().message()), !eof);
        }
        if (!*r) break;
        absl::Status s = self->session->Handle(m);
        self->RunDeferred();
        if (self->closed) return;
        if (absl::IsUnavailable(s)) return self->Close(std::string(s.message()), false);  // hung up mid-reply
        if (!s.ok()) {
          self->srv->state.protocol_errors++;
          return self->Close(std::string(s.message()), true);
        }
      }
      self->ReadMessages();
    });
  }

  void RunDeferred() {
    while (!deferred.empty() && !closed && !frozen) {
      auto f = std::move(deferred.front());
      deferred.pop_front();
      f();
    }
  }

  // Session::Host
  void WatchKick(uint16_t q, int fd) override {
    if (q >= kick_watch.size()) return;
    UnwatchKick(q);
    const int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) return;
    kick_watch[q] = std::make_unique<asio::posix::stream_descriptor>(*srv->io, dup);
    ArmKick(q, kick_watch[q].get());
  }
  void ArmKick(uint16_t q, asio::posix::stream_descriptor* w) {
    if (frozen) return;  // Thaw arms it
    w->async_wait(asio::posix::stream_descriptor::wait_read,
                  [self = shared_from_this(), q, w](const boost::system::error_code& ec) {
                    if (ec || self->closed || self->frozen || self->kick_watch[q].get() != w) return;
                    DrainEventFd(w->native_handle());
                    self->session->BeginPass();
                    self->session->OnKick(q);
                    self->session->Serve(self->srv->self->options().spin_us);
                    if (self->session) self->session->EndPass();
                    self->RunDeferred();
                    if (!self->closed && self->kick_watch[q].get() == w) self->ArmKick(q, w);
                  });
  }
  void UnwatchKick(uint16_t q) override {
    if (q >= kick_watch.size() || !kick_watch[q]) return;
    boost::system::error_code ec;
    kick_watch[q]->close(ec);
    // The handler may still be queued: keep the object alive until it ran.
    // The posted handler owns it, so it is freed also when the io_context
    // is destroyed without running it (vios stops the loop, then the servers).
    std::shared_ptr<asio::posix::stream_descriptor> dead(kick_watch[q].release());
    asio::post(*srv->io, [dead] {});
  }
  // Replies are small and follow requests one for one, so a full socket means
  // the front-end stopped reading: drop it at once (timeout 0) rather than
  // stall every device on the loop waiting for it.
  absl::Status Reply(uint32_t request, std::span<const uint8_t> payload, std::span<const int> fds) override {
    return vhost_user::SendMessage(sock.native_handle(), request, vhost_user::kFlagReply, payload, fds,
                                   /*timeout_ms=*/0);
  }
  void Defer(std::function<void()> f) override { deferred.push_back(std::move(f)); }

  void WatchEvents() {
    if (frozen) return;
    const int fd = srv->device->event_fd();
    if (fd < 0) return;
    if (!event_watch) event_watch = std::make_unique<asio::posix::stream_descriptor>(*srv->io, ::dup(fd));
    event_watch->async_wait(asio::posix::stream_descriptor::wait_read,
                            [self = shared_from_this()](const boost::system::error_code& ec) {
                              if (ec || self->closed || self->frozen) return;
                              self->session->BeginPass();
                              if (self->session->OnDeviceEvents()) self->session->Serve(self->srv->self->options().spin_us);
                              if (self->session) self->session->EndPass();
                              self->RunDeferred();
                              if (!self->closed) self->WatchEvents();
                            });
  }

  void Close(const std::string& why, bool protocol_error) {
    if (closed) return;
    if (protocol_error) {
      VIOPORT_LOG(kWarning, name(), ": closing the connection: ", why);
    } else {
      VIOPORT_LOG(kInfo, name(), ": front-end disconnected (", why, ")");
    }
    Teardown();
    // After Teardown, which keeps the session's last error (a ring error
    // from earlier): the reason the connection closed is what to report.
    if (protocol_error) srv->state.SetError(why);
  }

  void Teardown() {
    if (closed) return;
    closed = true;
    if (session) {
      srv->state.Ended(session->transport_counters(), session->last_error(), Extras(session->counters()));
      session.reset();  // completes in-flight requests, resets the device, unmaps
    }
    deferred.clear();
    boost::system::error_code ec;
    for (size_t q = 0; q < kick_watch.size(); ++q) UnwatchKick(static_cast<uint16_t>(q));
    if (event_watch) event_watch->close(ec);
    sock.close(ec);
  }
};

VhostUserServer::VhostUserServer(VhostUserServerOptions o) : opts_(std::move(o)) {}

VhostUserServer::Impl* VhostUserServer::MakeImpl(asio::io_context& io, std::shared_ptr<VirtioDevice> device) {
  impl_ = std::make_unique<Impl>();
  impl_->self = this;
  impl_->io = &io;
  impl_->device = std::move(device);
  return impl_.get();
}

absl::StatusOr<std::unique_ptr<VhostUserServer>> VhostUserServer::Create(asio::io_context& io,
                                                                         std::shared_ptr<VirtioDevice> device,
                                                                         VhostUserServerOptions options) {
  if (!device) return absl::InvalidArgumentError("no device");
  if (device->num_queues() == 0 || device->num_queues() > 256)
    return absl::InvalidArgumentError(absl::StrCat("vhost-user carries 1 to 256 queues, the device has ",
                                                   device->num_queues()));
  if (options.socket_path.empty()) return absl::InvalidArgumentError("vhost-user: no socket path");
  std::unique_ptr<VhostUserServer> s(new VhostUserServer(std::move(options)));
  Impl* im = s->MakeImpl(io, std::move(device));
  auto l = UnixListener<Stream>::Listen(io, s->opts_.socket_path, Stream(),
                                        [im](Stream::socket sock) { im->Accepted(std::move(sock)); });
  if (!l.ok()) return absl::Status(l.status().code(), absl::StrCat("vhost-user: ", l.status().message()));
  im->listener = std::move(*l);
  VIOPORT_LOG(kInfo, s->opts_.name, ": listening on ", s->opts_.socket_path, " (vhost-user)");
  return s;
}

VhostUserServer::~VhostUserServer() {
  if (!impl_) return;
  if (impl_->conn) impl_->conn->Close("server stopping", false);
  impl_->conn.reset();
  impl_->listener.reset();
}

void VhostUserServer::Impl::Accepted(Stream::socket sock) {
  if (conn && !conn->closed) {
    // One front-end at a time: the device has one driver.
    state.refused++;
    VIOPORT_LOG(kWarning, self->opts_.name, ": refused a second front-end (one is connected)");
    return;  // closing `sock`
  }
  conn = std::make_shared<VhostUserConnection>(this, std::move(sock));
  conn->Start();
}

void VhostUserServer::StopAccepting() { impl_->listener->Close(); }

absl::Status VhostUserServer::Freeze(HandoverWriter* out) {
  impl_->listener->Pause();
  out->Fd(impl_->listener->native_handle());
  const bool live = impl_->conn && !impl_->conn->closed;
  out->U64(live ? 1 : 0);
  return live ? impl_->conn->Freeze(out) : absl::OkStatus();
}

void VhostUserServer::Thaw() {
  impl_->listener->Resume();
  if (impl_->conn && !impl_->conn->closed && impl_->conn->frozen) impl_->conn->Thaw();
}

void VhostUserServer::Abandon() {
  impl_->listener->Release();
  if (impl_->conn) impl_->conn->Abandon();
  impl_->conn.reset();
}

absl::StatusOr<std::unique_ptr<VhostUserServer>> VhostUserServer::Restore(asio::io_context& io,
                                                                          std::shared_ptr<VirtioDevice> device,
                                                                          VhostUserServerOptions options,
                                                                          HandoverReader& in) {
  std::unique_ptr<VhostUserServer> s(new VhostUserServer(std::move(options)));
  Impl* im = s->MakeImpl(io, std::move(device));
  UniqueFd lfd;
  uint64_t live = 0;
  if (absl::Status st = in.Fd(&lfd, "listening socket"); !st.ok()) return st;
  auto l = UnixListener<Stream>::Adopt(io, s->opts_.socket_path, Stream(), std::move(lfd),
                                       [im](Stream::socket sock) { im->Accepted(std::move(sock)); });
  if (!l.ok()) return l.status();
  im->listener = std::move(*l);
  if (absl::Status st = in.U64(&live, 1, "connection"); !st.ok()) return st;
  if (!live) return s;
  UniqueFd sfd;
  if (absl::Status st = in.Fd(&sfd, "front-end socket"); !st.ok()) return st;
  Stream::socket sock(io);
  boost::system::error_code ec;
  sock.assign(Stream(), sfd.get(), ec);
  if (ec) return absl::UnavailableError(absl::StrCat("taking over the front-end socket: ", ec.message()));
  sfd.release();
  im->conn = std::make_shared<VhostUserConnection>(im, std::move(sock));
  if (absl::Status st = im->conn->Restore(in); !st.ok()) {
    im->conn->Abandon();
    im->conn.reset();
    return st;
  }
  return s;
}

absl::Status VhostUserServer::Quiesce() {
  if (impl_->conn && !impl_->conn->closed && impl_->conn->session) return impl_->conn->session->Quiesce();
  return impl_->device->Quiesce();
}

bool VhostUserServer::connected() const { return impl_->conn && !impl_->conn->closed; }

uint8_t VhostUserServer::device_status() const {
  return connected() && impl_->conn->session ? impl_->conn->session->emulated_status() : 0;
}

std::string VhostUserServer::last_error() const {
  if (connected() && impl_->conn->session && !impl_->conn->session->last_error().empty())
    return impl_->conn->session->last_error();
  return impl_->state.error();
}

void VhostUserServer::AppendCounters(CounterList* out) const {
  TransportCounters live;
  CounterList extras;
  if (connected() && impl_->conn->session) {
    live = impl_->conn->session->transport_counters();
    extras = Extras(impl_->conn->session->counters());
  }
  impl_->state.AppendCounters(live, extras, out);
}

void RegisterVhostUserTransport() {
  RegisterDeviceTransport(
      {"vhost-user",
       "KVM: serve QEMU (or any vhost-user front-end) on SOCKET, e.g. QEMU's\n"
       "-chardev socket,path=SOCKET,reconnect=1 -device vhost-user-blk-pci\n"
       "(docs/transports/vhost-user.md)",
       {OptionSpec::String("socket", "SOCKET", "the Unix socket the front-end connects to").Required(),
        OptionSpec::Uint("spin-us", "N", 0, 1000, "keep serving N us past the last request before sleeping")
            .Default(20),
        OptionSpec::Bool("inflight", true, "do not offer INFLIGHT_SHMFD (by default requests in flight survive a vios restart)"),
        OptionSpec::String("memory", "sealed|any",
                           "any: take guest memory the front-end could still shrink (DPDK's --no-huge memfds);\n"
                           "a front-end that truncates it then crashes vios, so only for front-ends you trust")
            .Default("sealed")
            .Choices({"sealed", "any"})},
       [](EndpointContext& ctx, const OptionValues& o) -> absl::StatusOr<std::unique_ptr<DeviceEndpoint>> {
         VhostUserServerOptions vo;
         vo.socket_path = o.str("socket");
         vo.spin_us = static_cast<uint32_t>(o.num("spin-us"));
         vo.inflight = o.flag("inflight");
         vo.unsealed_memory = o.str("memory") == "any";
         vo.name = ctx.name;
         if (ctx.handover) {
           auto r = VhostUserServer::Restore(ctx.io, ctx.device, vo, *ctx.handover);
           if (!r.ok()) return r.status();
           return std::unique_ptr<DeviceEndpoint>(std::move(*r));
         }
         auto s = VhostUserServer::Create(ctx.io, ctx.device, vo);
         if (!s.ok()) return s.status();
         return std::unique_ptr<DeviceEndpoint>(std::move(*s));
       },
       nullptr});
  RegisterGuestTransport(
      {"vhost-user", "SOCKET",
       "vhost-user: this process plays the VMM (guest RAM in a memfd) in front of\n"
       "any vhost-user back-end listening on SOCKET (vios --attach\n"
       "...,transport=vhost-user, qemu-storage-daemon --export type=vhost-user-blk);\n"
       "the device type is the command's (vhost-user carries no id)",
       {},
       {OptionSpec::Uint("guest-base", "B", 0, UINT64_MAX, "vhost-user: guest-physical address of the memory")
            .Default(0)},
       64 << 20,
       [](const GuestContext& ctx, const std::string& socket, const OptionValues&) -> absl::StatusOr<GuestLink> {
         VhostUserGuestOptions o;
         o.frontend.socket_path = socket;
         o.frontend.memory_bytes = *ctx.memory_bytes;
         o.frontend.guest_phys_base = ctx.flags ? ctx.flags->num("guest-base") : 0;
         o.device_id = static_cast<uint32_t>(ctx.device);
         o.frontend.net = ctx.device == DeviceId::kNet;
         return LinkOf(VhostUserDriverTransport::Connect(o));
       }});
}

}  // namespace vioport
