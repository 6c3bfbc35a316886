// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/xen_guest.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "vioport/core/dma.h"
#include "vioport/core/log.h"
#include "vioport/transports/xen_protocol.h"

namespace vioport::xen {

namespace reg = mmio::reg;

namespace {

const char kBackendStateToken[] = "vioport-fe-backend-state";

}  // namespace

// DMA memory: pages granted to the backend, read-only when the device only
// reads them; a buffer sits on consecutive refs so address + 4096 names the
// next page.
class XenDriverTransport::Dma final : public DmaAllocator {
 public:
  explicit Dma(XenDriverTransport& t) : t_(t) {}
  ~Dma() override {
    absl::MutexLock l(&mu_);
    for (auto& [addr, pages] : live_) t_.ch_.UnsharePages(pages);
  }
  absl::StatusOr<DmaBuffer> Allocate(size_t size, size_t align, Access access) override {
    if (size == 0) size = 1;
    if (align > kPageSize) return absl::InvalidArgumentError(absl::StrCat("alignment ", align, " beyond a page"));
    const uint32_t n = static_cast<uint32_t>((size + kPageSize - 1) / kPageSize);
    auto pages = t_.ch_.SharePages(t_.backend_, n, Allows(access, Access::kWrite));
    if (!pages.ok()) return pages.status();
    for (uint32_t i = 1; i < n; ++i) {
      if (pages->refs[i] != pages->refs[0] + i) {
        t_.ch_.UnsharePages(*pages);
        return absl::ResourceExhaustedError(
            "grant references of a multi-page buffer are not consecutive (the device address of the next page "
            "would be wrong)");
      }
    }
    DmaBuffer b{pages->addr, EncodeGrant(pages->refs[0]), size};
    absl::MutexLock l(&mu_);
    live_[pages->addr] = std::move(*pages);
    return b;
  }
  void Free(const DmaBuffer& b) override {
    absl::MutexLock l(&mu_);
    auto it = live_.find(b.host);
    if (it == live_.end()) return;
    t_.ch_.UnsharePages(it->second);
    live_.erase(it);
  }

 private:
  XenDriverTransport& t_;
  absl::Mutex mu_;
  std::map<uint8_t*, SharedPages> live_ ABSL_GUARDED_BY(mu_);
};

XenDriverTransport::XenDriverTransport(XenChannel& ch, const XenGuestOptions& o) : ch_(ch), o_(o) {}

absl::StatusOr<std::unique_ptr<XenDriverTransport>> XenDriverTransport::Connect(XenChannel& ch,
                                                                               const XenGuestOptions& o) {
  std::unique_ptr<XenDriverTransport> t(new XenDriverTransport(ch, o));
  auto xs = XsClient::Open(ch.xenstore_path());
  if (!xs.ok()) return xs.status();
  t->xs_ = std::move(*xs);
  t->dir_ = FrontendDir(ch.self(), o.devid);
  // The toolstack (vios as dom0, or libxl) writes our device directory; on
  // the emulator that happens when this domain appears, so wait for it.
  if (absl::Status s = t->xs_->Watch(t->dir_ + "/backend-id", kBackendStateToken); !s.ok()) return s;
  absl::StatusOr<std::string> be = t->xs_->Read(t->dir_ + "/backend-id");
  for (const absl::Time end = absl::Now() + o.timeout; !be.ok() && absl::Now() < end;
       be = t->xs_->Read(t->dir_ + "/backend-id")) {
    pollfd p{t->xs_->fd(), POLLIN, 0};
    (void)::poll(&p, 1, 50);
    while (t->xs_->ReadWatch()) {
    }
  }
  (void)t->xs_->Unwatch(t->dir_ + "/backend-id", kBackendStateToken);
  if (!be.ok())
    return absl::NotFoundError(absl::StrCat("no virtio device ", o.devid, " for domain ", ch.self(), " (",
                                            be.status().message(), "): is the backend attached?"));
  const auto be_id = ParseDecimal(*be, 0x7fef);
  if (!be_id) return absl::InvalidArgumentError(absl::StrCat(t->dir_, "/backend-id is not a domain id: '", *be, "'"));
  t->backend_ = static_cast<DomId>(*be_id);
  auto bdir = t->xs_->Read(t->dir_ + "/backend");
  if (!bdir.ok()) return bdir.status();
  if (bdir->empty() || bdir->front() != '/' || bdir->size() > 256)
    return absl::InvalidArgumentError(absl::StrCat(t->dir_, "/backend is not a path: '", *bdir, "'"));
  t->backend_dir_ = *bdir;
  if (absl::Status s = t->xs_->Watch(t->backend_dir_ + "/state", kBackendStateToken); !s.ok()) return s;
  t->wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (t->wake_fd_ < 0) return absl::ResourceExhaustedError("eventfd");
  t->dma_ = std::make_unique<Dma>(*t);
  if (absl::Status s = t->Handshake(); !s.ok()) return s;
  return t;
}

XenDriverTransport::~XenDriverTransport() {
  if (xs_) {
    (void)xs_->Write(dir_ + "/state", std::to_string(static_cast<int>(XenbusState::kClosing)));
    if (!gone() && ctrl_port_) (void)WaitBackend({XenbusState::kClosed, XenbusState::kInitWait});
    dma_.reset();
    for (EvtchnPort p : queue_ports_) (void)ch_.Unbind(p);
    if (ctrl_port_) (void)ch_.Unbind(ctrl_port_);
    if (ctrl_.addr) ch_.UnsharePages(ctrl_);
    (void)xs_->Write(dir_ + "/state", std::to_string(static_cast<int>(XenbusState::kClosed)));
  }
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

absl::StatusOr<XenbusState> XenDriverTransport::BackendState() {
  auto v = xs_->Read(backend_dir_ + "/state");
  if (!v.ok()) return v.status();
  const auto n = ParseDecimal(*v, 8);
  if (!n) return absl::InvalidArgumentError(absl::StrCat(backend_dir_, "/state is '", *v, "'"));
  return static_cast<XenbusState>(*n);
}

absl::StatusOr<XenbusState> XenDriverTransport::WaitBackend(std::initializer_list<XenbusState> wanted) {
  const absl::Time deadline = absl::Now() + o_.timeout;
  for (;;) {
    while (xs_->ReadWatch()) {
    }
    auto st = BackendState();
    if (st.ok())
      for (XenbusState w : wanted)
        if (*st == w) return *st;
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration())
      return absl::DeadlineExceededError(absl::StrCat("backend ", backend_dir_, " state ",
                                                      st.ok() ? std::to_string(static_cast<int>(*st))
                                                              : std::string(st.status().message()),
                                                      " after ", absl::FormatDuration(o_.timeout)));
    pollfd p{xs_->fd(), POLLIN, 0};
    (void)::poll(&p, 1, static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 100)));
  }
}

absl::Status XenDriverTransport::Handshake() {
  const auto num = [](XenbusState s) { return std::to_string(static_cast<int>(s)); };
  if (absl::Status s = xs_->Write(dir_ + "/state", num(XenbusState::kInitialising)); !s.ok()) return s;
  if (auto st = WaitBackend({XenbusState::kInitWait}); !st.ok()) return st.status();
  // The backend's keys: untrusted, parsed strictly.
  auto key = [&](const char* k, uint64_t max) -> absl::StatusOr<uint64_t> {
    auto v = xs_->Read(backend_dir_ + "/" + k);
    if (!v.ok()) return v.status();
    auto n = ParseDecimal(*v, max);
    if (!n) return absl::InvalidArgumentError(absl::StrCat(backend_dir_, "/", k, " is '", *v, "'"));
    return *n;
  };
  auto type = key("device-type", 0xffff);
  auto nq = key("max-queues", kMaxQueues);
  auto qsize = key("max-queue-size", kMaxQueueSize);
  if (!type.ok()) return type.status();
  if (!nq.ok()) return nq.status();
  if (!qsize.ok()) return qsize.status();
  auto versions = xs_->Read(backend_dir_ + "/protocol-versions");
  if (!versions.ok() || *versions != std::to_string(kProtocolVersion))
    return absl::FailedPreconditionError(absl::StrCat("backend speaks protocol versions '",
                                                      versions.ok() ? *versions : "?", "', this frontend 1"));
  if (*nq == 0) return absl::InvalidArgumentError("backend offers no queues");
  if (num_queues_ && *nq != num_queues_)
    return absl::FailedPreconditionError("the backend came back with a different number of queues");
  num_queues_ = static_cast<uint32_t>(*nq);
  device_id_ = static_cast<uint32_t>(*type);
  if (!ctrl_.addr) {  // first connection; a reconnection keeps page and ports
    auto page = ch_.SharePages(backend_, 1, true);
    if (!page.ok()) return page.status();
    ctrl_ = std::move(*page);
    auto port = ch_.BindUnboundPort(backend_);
    if (!port.ok()) return port.status();
    ctrl_port_ = *port;
    for (uint32_t q = 0; q < num_queues_; ++q) {
      auto qp = ch_.BindUnboundPort(backend_);
      if (!qp.ok()) return qp.status();
      queue_ports_.push_back(*qp);
    }
    fired_ = std::vector<std::atomic<bool>>(1 + num_queues_);
  }
  std::memset(ctrl_.addr, 0, kPageSize);
  seq_ = 0;
  for (int attempt = 0;; ++attempt) {
    auto tx = xs_->Begin();
    if (!tx.ok()) return tx.status();
    absl::Status s = xs_->Write(dir_ + "/protocol-version", std::to_string(kProtocolVersion), *tx);
    if (s.ok()) s = xs_->Write(dir_ + "/ctrl-ref", std::to_string(ctrl_.refs[0]), *tx);
    if (s.ok()) s = xs_->Write(dir_ + "/ctrl-evtchn", std::to_string(ctrl_port_), *tx);
    if (s.ok()) s = xs_->Write(dir_ + "/num-queues", std::to_string(num_queues_), *tx);
    for (uint32_t q = 0; s.ok() && q < num_queues_; ++q)
      s = xs_->Write(absl::StrCat(dir_, "/queue-", q, "/evtchn"), std::to_string(queue_ports_[q]), *tx);
    if (s.ok()) s = xs_->Write(dir_ + "/state", num(XenbusState::kInitialised), *tx);
    if (!s.ok()) {
      xs_->Abort(*tx);
      return s;
    }
    s = xs_->Commit(*tx);
    if (s.ok()) break;
    if (!absl::IsAborted(s) || attempt > 16) return s;
  }
  auto st = WaitBackend({XenbusState::kConnected, XenbusState::kClosing, XenbusState::kClosed});
  if (!st.ok()) return st.status();
  if (*st != XenbusState::kConnected)
    return absl::UnavailableError(absl::StrCat("backend refused the connection (state ", static_cast<int>(*st),
                                               "); its log names the reason"));
  SetMirror(ctrl_.addr, static_cast<uint16_t>(num_queues_));
  if (ReadRegister(reg::kMagic) != mmio::kMagicValue || ReadRegister(reg::kVersion) != 2)
    return absl::InvalidArgumentError("control page has no virtio-mmio signature");
  ClearGone();
  (void)xs_->Write(dir_ + "/state", num(XenbusState::kConnected));
  return absl::OkStatus();
}

void XenDriverTransport::BackendGone(const std::string& why) {
  if (!MarkGone(why)) return;
  VIOPORT_LOG(kWarning, "xen frontend: device ", o_.devid, ": backend gone: ", why);
  const uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
}

void XenDriverTransport::SetStatus(uint8_t s) {
  if (s == 0 && gone()) {
    absl::MutexLock l(&reg_mu_);
    if (gone()) {
      if (absl::Status h = Handshake(); !h.ok()) {
        VIOPORT_LOG(kWarning, "xen frontend: device ", o_.devid, ": reconnect: ", h.message());
        return;
      }
      reconnects_++;
    }
  }
  WriteRegister(reg::kStatus, s);
}

bool XenDriverTransport::WriteRegister(uint32_t offset, uint32_t value, uint32_t size) {
  absl::MutexLock l(&reg_mu_);
  if (gone() || !ctrl_.addr) return false;
  auto* req = reinterpret_cast<ControlRequest*>(ctrl_.addr + kRequestOffset);
  auto* ans = reinterpret_cast<ControlAnswer*>(ctrl_.addr + kAnswerOffset);
  req->offset = offset;
  req->size = size;
  req->value = value;
  const uint32_t seq = ++seq_;
  req->seq.store(seq, std::memory_order_release);
  if (absl::Status s = ch_.Notify(ctrl_port_); !s.ok()) {
    BackendGone(std::string(s.message()));
    return false;
  }
  using Clock = std::chrono::steady_clock;
  const auto spin_until = Clock::now() + std::chrono::microseconds(o_.spin_us);
  const absl::Time deadline = absl::Now() + o_.timeout;
  for (uint32_t i = 0;; ++i) {
    if (ans->seq.load(std::memory_order_acquire) == seq) {
      fired_[0].store(false);  // the answer's event, if it came, is consumed
      return ans->result == 0;
    }
    if (Clock::now() < spin_until) continue;
    CollectEvents();
    if (gone()) return false;
    if (absl::Now() > deadline) {
      BackendGone(absl::StrCat("no answer to a register write at 0x", absl::Hex(offset)));
      return false;
    }
    UnmaskAll();
    if (ans->seq.load(std::memory_order_acquire) == seq) continue;
    pollfd p[2] = {{ch_.event_fd(), POLLIN, 0}, {xs_->fd(), POLLIN, 0}};
    (void)::poll(p, 2, 10);
  }
}

void XenDriverTransport::UnmaskAll() {
  std::vector<EvtchnPort> ports;
  {
    absl::MutexLock l(&ev_mu_);
    ports.swap(masked_);
  }
  // A port that became pending while masked is delivered again here.
  for (EvtchnPort p : ports) (void)ch_.Unmask(p);
}

void XenDriverTransport::CollectEvents() {
  absl::MutexLock l(&ev_mu_);
  std::vector<EvtchnPort> ports;
  ch_.PendingPorts(ports);
  bool others = false;
  for (EvtchnPort p : ports) {
    if (p == ctrl_port_) {
      fired_[0].store(true);
      others = true;
    } else {
      for (uint32_t q = 0; q < queue_ports_.size(); ++q)
        if (queue_ports_[q] == p) fired_[1 + q].store(true);
      others = true;
    }
    masked_.push_back(p);  // unmasked before we next sleep (UnmaskAll)
  }
  if (others) {
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
  }
  // The backend leaving Connected ends the connection.
  bool watch = false;
  while (xs_->ReadWatch()) watch = true;
  if (watch && !gone()) {
    auto st = BackendState();
    if (!st.ok() || *st != XenbusState::kConnected)
      BackendGone(st.ok() ? absl::StrCat("backend state ", static_cast<int>(*st)) : std::string(st.status().message()));
  }
}

void XenDriverTransport::Notify(uint16_t q, uint32_t) {
  if (q >= queue_ports_.size() || gone()) return;
  if (absl::Status s = ch_.Notify(queue_ports_[q]); !s.ok()) BackendGone(std::string(s.message()));
}

DmaAllocator& XenDriverTransport::dma() { return *dma_; }


bool XenDriverTransport::WaitForInterrupt(uint16_t q, absl::Duration timeout) {
  if (gone()) return true;  // NEEDS_RESET is showing: let the caller look
  const absl::Time deadline = absl::Now() + timeout;
  const size_t slot = 1 + static_cast<size_t>(q);
  for (bool collected = false;;) {
    uint32_t seen = 0;
    if (slot < fired_.size() && fired_[slot].exchange(false)) seen |= mmio::kIntUsedBuffer;
    if (fired_[0].exchange(false)) seen |= mmio::kIntConfig;
    if (seen) {
      AckInterrupt(seen);
      return true;
    }
    if (gone()) return true;
    if (!collected) {
      // Ports stay masked while the driver works and polls its rings; only
      // before sleeping are they unmasked (a pending one comes back now).
      UnmaskAll();
      CollectEvents();
      collected = true;
      continue;
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    pollfd p[3] = {{ch_.event_fd(), POLLIN, 0}, {xs_->fd(), POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    const timespec ts = absl::ToTimespec(left);
    if (::ppoll(p, 3, &ts, nullptr) <= 0) return false;
    if (p[2].revents & POLLIN) {
      uint64_t v;
      (void)!::read(wake_fd_, &v, sizeof v);
    }
    collected = false;
  }
}

}  // namespace vioport::xen
