// SPDX-License-Identifier: Apache-2.0
// Live upgrade: one vios hands its devices, their guests and its control
// socket to a new vios, and exits; the guests see no reset, no error and no
// reconnect. docs/upgrade.md has the protocol; in short, over one
// SOCK_SEQPACKET connection the new vios listens on:
//
//   old -> new  HELLO   magic, version, pid, device count, the control socket
//   old -> new  DEVICE  one per device: its spec, its attachment's, what
//                       the endpoint's Freeze() wrote (the device is frozen
//                       from here: nothing popped, nothing read), and the
//                       device's own host side (a console's sockets)
//   new -> old  READY   everything restored (frozen), or ABORT with why
//   old -> new  COMMIT  the old vios lets go of everything and exits
//
// Until COMMIT either side can give up and the old vios thaws: nothing the
// guests see changed.
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <poll.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "boost/asio/steady_timer.hpp"
#include "control.h"
#include "metrics.h"
#include "reactor.h"
#include "server.h"
#include "upgrade_records.h"
#include "vioport/core/log.h"
#include "vioport/transports/handover.h"

namespace vioport::vios {

namespace {

constexpr size_t kMaxText = kMaxRecordText;
// How long one side waits for the other's next record.
constexpr absl::Duration kStepTimeout = absl::Seconds(30);

uint64_t NowNs() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}


absl::Status SendKind(int sock, RecordKind k, const std::string& text = "") {
  HandoverWriter w;
  w.U64(k);
  w.Str(text);
  return SendHandoverRecord(sock, w);
}

// A READY/ABORT/COMMIT record: OK for `want`, the peer's reason for ABORT.
absl::Status ExpectKind(int sock, RecordKind want, absl::Duration timeout) {
  auto r = RecvHandoverRecord(sock, timeout);
  if (!r.ok()) return r.status();
  uint64_t kind = 0;
  std::string text;
  if (absl::Status s = r->U64(&kind, "record kind"); !s.ok()) return s;
  if (absl::Status s = r->Str(&text, kMaxText, "reason"); !s.ok()) return s;
  if (kind == kAbort) return absl::AbortedError(absl::StrCat("the other vios gave up: ", text));
  if (kind != want) return absl::InvalidArgumentError(absl::StrCat("unexpected record kind ", kind));
  return r->Done();
}

}  // namespace

// ---- the running vios -------------------------------------------------------------------

absl::StatusOr<rpc::json> Server::HandOver(const std::string& socket) {
  if (handed_over_) return absl::FailedPreconditionError("this vios has already handed over");
  if (!control_) return absl::FailedPreconditionError("no control socket to hand over");
  if (!netdevs_.empty())
    return absl::FailedPreconditionError(absl::StrCat("netdev '", netdevs_.begin()->first,
                                                 "': switches and tap uplinks cannot be handed over yet"));
  // Everything is checked before anything is frozen.
  for (const auto& [id, e] : devices_) {
    if (e.sw || e.vsock_cid)
      return absl::FailedPreconditionError(absl::StrCat("device '", id, "' (", e.spec.type,
                                                        "): net and vsock devices cannot be handed over yet"));
    if (e.attachment && e.attachment->connected())
      if (absl::Status s = e.device->CanHandOver(); !s.ok())
        return absl::FailedPreconditionError(
            absl::StrCat("device '", id, "' (", e.spec.type, ") has a guest: ", s.message()));
  }
  auto sock = ConnectUnix(socket, SOCK_SEQPACKET, absl::Seconds(5));
  if (!sock.ok()) return sock.status();
  const int fd = sock->get();

  std::vector<Entry*> frozen;
  auto thaw = [&](absl::Status why) -> absl::Status {
    if (absl::IsUnimplemented(why)) why = absl::FailedPreconditionError(why.message());  // -32003: not this vios
    (void)SendKind(fd, kAbort, std::string(why.message()));  // the new vios says why it stops
    for (Entry* e : frozen) OnDeviceThread(*e, [e] { e->attachment->Thaw(); });
    if (control_ && control_->acceptor.is_open()) AcceptControl();
    VIOPORT_LOG(kWarning, "upgrade: not handed over, serving on: ", why.message());
    return why;
  };

  HandoverWriter hello;
  PutHello(hello, static_cast<uint64_t>(::getpid()), devices_.size(), control_->acceptor.native_handle());
  if (absl::Status s = SendHandoverRecord(fd, hello); !s.ok()) return s;
  // No new control client from here until we know who serves it.
  boost::system::error_code ec;
  control_->acceptor.cancel(ec);

  size_t guests = 0;
  for (auto& kv : devices_) {
    const std::string& id = kv.first;
    Entry& e = kv.second;
    HandoverWriter w;
    PutDeviceHead(w, {id, e.spec.type, e.spec.options.all()});
    PutStats(w, e.device->stats_if_any());
    AttachHead a;
    a.attached = e.attachment != nullptr;
    if (a.attached) {
      a.transport = e.transport;
      a.options = e.attach_options;
      if (e.reactor >= 0) a.options["reactor"] = absl::StrCat(e.reactor);
      a.frozen_ns = NowNs();
    }
    PutAttachHead(w, a);
    if (e.attachment) {
      guests += e.attachment->connected() ? 1 : 0;
      frozen.push_back(&e);
      absl::Status s = OnDeviceThread(e, [&] { return e.attachment->Freeze(&w); });
      if (!s.ok()) return thaw(absl::Status(s.code(), absl::StrCat("device '", id, "': ", s.message())));
    }
    // The device's own host side (a console's listener and client), now
    // that it is drained; its descriptors stay ours until the commit.
    std::string host;
    std::vector<int> host_fds;
    if (absl::Status s = OnDeviceThread(e, [&] { return e.device->SaveHostState(&host, &host_fds); }); !s.ok())
      return thaw(absl::Status(s.code(), absl::StrCat("device '", id, "': ", s.message())));
    PutHostState(w, host, host_fds);
    if (absl::Status s = SendHandoverRecord(fd, w); !s.ok())
      return thaw(absl::Status(s.code(), absl::StrCat("device '", id, "': ", s.message())));
  }
  if (absl::Status s = ExpectKind(fd, kReady, kStepTimeout); !s.ok()) return thaw(s);
  // The metrics port goes first, so the new vios can bind it.
  metrics_.reset();
  if (absl::Status s = SendKind(fd, kCommit); !s.ok()) return thaw(s);

  // Committed: the new vios serves. Let go of everything without a word to
  // the guests, and of the control socket without unlinking it.
  for (Entry* e : frozen) {
    OnDeviceThread(*e, [e] {
      e->attachment->Abandon();
      e->attachment.reset();
    });
  }
  for (auto& kv : devices_) {
    Entry& e = kv.second;
    OnDeviceThread(e, [&e] { e.device->ReleaseHostState(); });
  }
  if (control_->acceptor.is_open()) {
    const int cfd = control_->acceptor.release(ec);
    if (cfd >= 0) ::close(cfd);
  }
  handed_over_ = true;
  VIOPORT_LOG(kInfo, "upgrade: handed ", devices_.size(), " device(s) and ", guests, " guest(s) over; exiting");
  // The caller's reply goes out first, then this vios stops.
  auto timer = std::make_shared<boost::asio::steady_timer>(io_, std::chrono::milliseconds(50));
  timer->async_wait([this, timer](const boost::system::error_code&) { io_.stop(); });
  return rpc::json{{"devices", devices_.size()}, {"guests", guests}};
}

// ---- the new vios -----------------------------------------------------------------------

absl::StatusOr<Server::TakeOverResult> Server::TakeOver(const std::string& control, absl::Duration timeout) {
  // Where the old vios reaches us: next to its control socket, owner only.
  const std::string path = absl::StrCat(control, ".upgrade-", ::getpid());
  if (path.size() >= sizeof(sockaddr_un{}.sun_path))
    return absl::InvalidArgumentError(absl::StrCat("--upgrade-from ", control, ": path too long for a socket beside it"));
  if (absl::Status s = ClaimSocketPath(path); !s.ok()) return s;
  UniqueFd listener(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!listener.valid()) return ErrnoStatus("socket");
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  const mode_t old_mask = ::umask(0177);
  const int bound = ::bind(listener.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  ::umask(old_mask);
  if (bound != 0 || ::listen(listener.get(), 1) != 0) return ErrnoStatus(absl::StrCat("listen on ", path));
  struct Unlink {
    std::string p;
    ~Unlink() { ::unlink(p.c_str()); }
  } unlink{path};

  // Ask over the control API; the reply comes once it is all over (or not).
  auto ctl = ConnectUnix(control, SOCK_STREAM, absl::Seconds(2));
  if (!ctl.ok()) return absl::Status(ctl.status().code(), absl::StrCat("--upgrade-from ", control, ": ", ctl.status().message()));
  const std::string request =
      rpc::json{{"jsonrpc", "2.0"}, {"id", 1}, {"method", "upgrade"}, {"params", {{"socket", path}}}}.dump() + "\n";
  if (::send(ctl->get(), request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size()))
    return ErrnoStatus(absl::StrCat("--upgrade-from ", control, ": send"));
  // The old vios either connects to us or answers with an error.
  pollfd p[2] = {{listener.get(), POLLIN, 0}, {ctl->get(), POLLIN, 0}};
  if (::poll(p, 2, static_cast<int>(absl::ToInt64Milliseconds(timeout))) <= 0 || !(p[0].revents & POLLIN)) {
    char buf[1024] = {};
    const ssize_t n = (p[1].revents & POLLIN) ? ::recv(ctl->get(), buf, sizeof buf - 1, 0) : 0;
    if (n > 0) {
      auto reply = rpc::json::parse(std::string(buf, static_cast<size_t>(n)), nullptr, false);
      if (reply.is_object() && reply.contains("error") && reply["error"].is_object() &&
          reply["error"].contains("message") && reply["error"]["message"].is_string())
        return absl::FailedPreconditionError(
            absl::StrCat("the running vios refused: ", reply["error"]["message"].get<std::string>()));
    }
    return absl::DeadlineExceededError(absl::StrCat("--upgrade-from ", control, ": no answer within ",
                                                    absl::FormatDuration(timeout)));
  }
  UniqueFd sock(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!sock.valid()) return ErrnoStatus("accept");
  const int fd = sock.get();

  TakeOverResult result;
  std::vector<Entry*> restored;
  std::vector<std::string> added;
  auto give_up = [&](const absl::Status& why) -> absl::Status {
    (void)SendKind(fd, kAbort, std::string(why.message()));
    // Nothing we restored ever served: let go without touching any guest.
    for (Entry* e : restored)
      OnDeviceThread(*e, [e] {
        e->attachment->Abandon();
        e->attachment.reset();
      });
    // Host sides taken over go back untouched (the old vios keeps them).
    for (const std::string& id : added) {
      Entry& e = devices_.at(id);
      OnDeviceThread(e, [&e] { e.device->ReleaseHostState(); });
    }
    for (const std::string& id : added) devices_.erase(id);
    adopted_control_.reset();
    return why;
  };

  auto hello_record = RecvHandoverRecord(fd, kStepTimeout);
  if (!hello_record.ok()) return give_up(hello_record.status());
  HelloRecord hello;
  if (absl::Status s = GetHello(*hello_record, &hello); !s.ok()) return give_up(s);
  adopted_control_ = std::move(hello.control);
  const uint64_t version = hello.version, pid = hello.pid, count = hello.devices;
  result.old_pid = static_cast<int>(pid);

  uint64_t first_frozen = 0;
  for (uint64_t i = 0; i < count; ++i) {
    auto r = RecvHandoverRecord(fd, kStepTimeout);
    if (!r.ok()) return give_up(r.status());
    DeviceHead head;
    if (absl::Status s = GetDeviceHead(*r, &head); !s.ok()) {
      if (absl::IsAborted(s)) return give_up(absl::FailedPreconditionError(s.message()));
      return give_up(absl::Status(s.code(), absl::StrCat("record ", i, ": ", s.message())));
    }
    const std::string id = head.id, type = head.type;
    std::map<std::string, std::string> kv = std::move(head.options);
    kv["id"] = id;
    auto spec = MakeDeviceSpec(type, std::move(kv), absl::StrCat("handed-over device ", id));
    if (!spec.ok()) return give_up(spec.status());
    if (devices_.count(id)) return give_up(absl::AlreadyExistsError(absl::StrCat("device '", id, "' twice")));
    if (absl::Status s = AddDevice(std::move(*spec), /*adopt_host=*/version >= 3); !s.ok()) return give_up(s);
    added.push_back(id);
    if (version >= 2) {
      if (absl::Status s = GetStats(*r, devices_.at(id).device->stats()); !s.ok())
        return give_up(absl::Status(s.code(), absl::StrCat("device '", id, "': ", s.message())));
    }
    AttachHead at;
    if (absl::Status s = GetAttachHead(*r, &at); !s.ok())
      return give_up(absl::Status(s.code(), absl::StrCat("device '", id, "': ", s.message())));
    if (at.attached) {
      if (!first_frozen || at.frozen_ns < first_frozen) first_frozen = at.frozen_ns;
      AttachSpec a{id, at.transport, Options(absl::StrCat("handed-over attachment of ", id), std::move(at.options))};
      absl::Status s = Attach(std::move(a), &*r);
      if (!s.ok()) return give_up(absl::Status(s.code(), absl::StrCat("device '", id, "': ", s.message())));
      restored.push_back(&devices_.at(id));
      result.guests += restored.back()->attachment->connected() ? 1 : 0;
    }
    if (version >= 3) {
      std::string host;
      std::vector<int> host_fds;
      if (absl::Status s = GetHostState(*r, &host, &host_fds); !s.ok())
        return give_up(absl::Status(s.code(), absl::StrCat("device '", id, "': ", s.message())));
      Entry& e = devices_.at(id);
      absl::Status s = OnDeviceThread(e, [&] { return e.device->RestoreHostState(host, host_fds); });
      for (int f : host_fds)
        if (f >= 0) ::close(f);
      if (!s.ok()) return give_up(absl::Status(s.code(), absl::StrCat("device '", id, "': ", s.message())));
    }
    if (absl::Status s = r->Done(); !s.ok())
      return give_up(absl::Status(s.code(), absl::StrCat("device '", id, "': ", s.message())));
  }
  if (absl::Status s = SendKind(fd, kReady); !s.ok()) return give_up(s);
  if (absl::Status s = ExpectKind(fd, kCommit, kStepTimeout); !s.ok()) {
    // No commit: the old vios still has every guest (it thaws on its own).
    return give_up(s);
  }
  for (Entry* e : restored) OnDeviceThread(*e, [e] { e->attachment->Thaw(); });
  result.devices = count;
  if (first_frozen) result.pause_ms = static_cast<double>(NowNs() - first_frozen) / 1e6;
  VIOPORT_LOG(kInfo, "upgrade: took over ", count, " device(s) and ", result.guests, " guest(s) from pid ", pid,
              "; guests waited ", result.pause_ms, " ms at most");
  return result;
}

}  // namespace vioport::vios
