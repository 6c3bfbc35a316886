// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/xen_server.h"

#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "boost/asio/posix/stream_descriptor.hpp"
#include "vioport/core/device_controller.h"
#include "vioport/core/log.h"
#include "vioport/core/mmio.h"
#include "vioport/transports/xen_protocol.h"

namespace vioport::xen {

namespace asio = boost::asio;

namespace {

// Grant-encoded memory: the copy path both strategies share.
class GrantMemoryBase : public GuestMemory {
 public:
  GrantMemoryBase(bool zero_copy, XenChannel& ch, DomId fe) : GuestMemory(zero_copy), ch_(ch), fe_(fe) {}
  GrantMemoryStats stats() const {
    GrantMemoryStats s;
    s.maps = maps_.load();
    s.map_failures = map_failures_.load();
    s.cached_pages = cached_pages_.load();
    s.copies = copies_.load();
    s.copy_bytes = copy_bytes_.load();
    s.copy_failures = copy_failures_.load();
    s.overflow = overflow_.load();
    return s;
  }

 protected:
  // GNTTABOP_copy of [addr, addr+len) (split at the grant's pages) to or
  // from `local`.
  absl::Status CopyRange(uint64_t addr, uint8_t* local, uint64_t len, bool to_foreign) {
    uint32_t ref, off;
    if (!DecodeGrant(addr, &ref, &off))
      return absl::OutOfRangeError(absl::StrFormat("address %#x is not grant-encoded (bit 63 clear)", addr));
    segs_.clear();
    uint64_t done = 0;
    while (done < len) {
      const uint64_t page = (off + done) / kPageSize;
      if (ref + page > 0xffffffffull) return absl::OutOfRangeError("grant range wraps");
      const uint32_t in_page = static_cast<uint32_t>((off + done) % kPageSize);
      const uint64_t n = std::min<uint64_t>(len - done, kPageSize - in_page);
      GrantCopySegment sg;
      sg.to_foreign = to_foreign;
      sg.domid = fe_;
      sg.ref = static_cast<GrantRef>(ref + page);
      sg.offset = static_cast<uint16_t>(in_page);
      sg.local = local + done;
      sg.len = static_cast<uint16_t>(n);
      segs_.push_back(sg);
      done += n;
    }
    if (segs_.empty()) return absl::OkStatus();
    ch_.GrantCopy(segs_);
    copies_ += segs_.size();
    for (const GrantCopySegment& sg : segs_) {
      if (sg.status == 0) continue;
      copy_failures_++;
      const std::string why = absl::StrCat("grant ", sg.ref, " of domain ", fe_, ": ", GntstName(sg.status), " (",
                                           sg.status, ") on ", to_foreign ? "write" : "read");
      if (sg.status == gntst::kBadGntref) return absl::OutOfRangeError(why);
      return absl::PermissionDeniedError(why);
    }
    copy_bytes_ += len;
    return absl::OkStatus();
  }

  XenChannel& ch_;
  const DomId fe_;
  std::vector<GrantCopySegment> segs_;
  std::atomic<uint64_t> maps_{0}, map_failures_{0}, cached_pages_{0}, copies_{0}, copy_bytes_{0}, copy_failures_{0},
      overflow_{0};
};

// grants=copy: every access is a grant copy; staging buffers are the
// channel's copy buffers (no bounce on the emulator).
class GrantCopyMemory final : public GrantMemoryBase {
 public:
  GrantCopyMemory(XenChannel& ch, DomId fe) : GrantMemoryBase(false, ch, fe) {}
  absl::Status Read(uint64_t addr, void* dst, uint64_t len) override {
    return CopyRange(addr, static_cast<uint8_t*>(dst), len, false);
  }
  absl::Status Write(uint64_t addr, const void* src, uint64_t len) override {
    return CopyRange(addr, const_cast<uint8_t*>(static_cast<const uint8_t*>(src)), len, true);
  }
  bool Accessible(uint64_t addr, uint64_t, Access) override {
    uint32_t ref, off;
    return DecodeGrant(addr, &ref, &off);  // the copies report the rest
  }
  uint8_t* AcquireStaging(size_t bytes) override { return ch_.AllocCopyBuffer(bytes); }
  void ReleaseStaging(uint8_t* b) override { ch_.FreeCopyBuffer(b); }
};

// grants=map: ranges are mapped (consecutive refs contiguously) and kept,
// like blkback's persistent grants, until the memory goes (device reset or
// disconnect). Pointers handed out stay valid that long, as GuestMemory
// promises, so nothing is evicted: past `cache_pages`, buffers go through
// grant copy instead (Map answers nullptr and the queues copy).
class GrantMapMemory final : public GrantMemoryBase {
 public:
  GrantMapMemory(XenChannel& ch, DomId fe, uint32_t cap) : GrantMemoryBase(true, ch, fe), cap_(cap) {}
  ~GrantMapMemory() override {
    for (auto& [ref, e] : cache_) (void)ch_.UnmapGrants(e.addr, e.pages);
    for (auto& e : retired_) (void)ch_.UnmapGrants(e.addr, e.pages);
  }
  absl::Status Read(uint64_t addr, void* dst, uint64_t len) override {
    if (uint8_t* p = DoMap(addr, len, Access::kRead)) {
      std::memcpy(dst, p, len);
      return absl::OkStatus();
    }
    return CopyRange(addr, static_cast<uint8_t*>(dst), len, false);
  }
  absl::Status Write(uint64_t addr, const void* src, uint64_t len) override {
    if (uint8_t* p = DoMap(addr, len, Access::kWrite)) {
      std::memcpy(p, src, len);
      return absl::OkStatus();
    }
    return CopyRange(addr, const_cast<uint8_t*>(static_cast<const uint8_t*>(src)), len, true);
  }
  bool Accessible(uint64_t addr, uint64_t len, Access access) override {
    if (DoMap(addr, len, access)) return true;
    // Not cached (the cache is full) or not mappable: try it once.
    uint32_t ref, off;
    if (!DecodeGrant(addr, &ref, &off)) return false;
    const uint64_t pages = Pages(ref, off, len);
    if (pages == 0) return false;
    const std::vector<GrantRef> refs = Refs(ref, pages);
    auto m = ch_.MapGrants(fe_, refs, Allows(access, Access::kWrite));
    if (!m.ok()) return false;
    (void)ch_.UnmapGrants(*m, static_cast<uint32_t>(refs.size()));
    return true;
  }

 protected:
  uint8_t* DoMap(uint64_t addr, uint64_t len, Access access) override {
    uint32_t ref, off;
    if (!DecodeGrant(addr, &ref, &off)) return nullptr;
    const uint64_t pages = Pages(ref, off, len);
    if (pages == 0) return nullptr;
    const bool write = Allows(access, Access::kWrite);
    auto it = cache_.upper_bound(ref);
    if (it != cache_.begin()) {
      --it;
      const Entry& e = it->second;
      if (ref + pages <= uint64_t{it->first} + e.pages && (!write || e.writable))
        return e.addr + uint64_t{ref - it->first} * kPageSize + off;
    }
    if (cached_pages_.load() + pages > cap_) {
      overflow_++;
      return nullptr;
    }
    auto m = ch_.MapGrants(fe_, Refs(ref, pages), write);
    if (!m.ok()) {
      map_failures_++;
      if (map_failures_.load() <= 8 || (map_failures_.load() & 1023) == 0)
        VIOPORT_LOG(kWarning, "xen: domain ", fe_, " grant ", ref, "+", pages, ": ", m.status().message());
      return nullptr;
    }
    maps_++;
    cached_pages_ += pages;
    auto [pos, inserted] = cache_.try_emplace(ref, Entry{*m, static_cast<uint32_t>(pages), write});
    if (!inserted) {  // a narrower or read-only mapping of the same first ref: keep it alive, use the new one
      retired_.push_back(pos->second);
      pos->second = Entry{*m, static_cast<uint32_t>(pages), write};
    }
    return *m + off;
  }

 private:
  struct Entry {
    uint8_t* addr;
    uint32_t pages;
    bool writable;
  };
  // Grant pages [offset, offset + len) spans from `ref` (at least one);
  // 0 when more than 1024 or past the last ref.
  static uint64_t Pages(uint32_t ref, uint32_t off, uint64_t len) {
    const uint64_t pages = (off + std::max<uint64_t>(len, 1) + kPageSize - 1) / kPageSize;
    return pages > 1024 || ref + pages - 1 > 0xffffffffull ? 0 : pages;
  }
  static std::vector<GrantRef> Refs(uint32_t ref, uint64_t pages) {
    std::vector<GrantRef> refs;
    for (uint64_t i = 0; i < pages; ++i) refs.push_back(static_cast<GrantRef>(ref + i));
    return refs;
  }
  const uint32_t cap_;
  std::map<GrantRef, Entry> cache_;
  std::vector<Entry> retired_;
};

}  // namespace

std::shared_ptr<GuestMemory> MakeGrantMapMemory(XenChannel& ch, DomId fe, uint32_t cache_pages) {
  return std::make_shared<GrantMapMemory>(ch, fe, cache_pages);
}
std::shared_ptr<GuestMemory> MakeGrantCopyMemory(XenChannel& ch, DomId fe) {
  return std::make_shared<GrantCopyMemory>(ch, fe);
}
GrantMemoryStats GrantMemoryStatsOf(const GuestMemory& m) {
  const auto* g = dynamic_cast<const GrantMemoryBase*>(&m);
  return g ? g->stats() : GrantMemoryStats{};
}

// ---- XenBackendHost ---------------------------------------------------------

struct XenBackendHost::Watcher {
  asio::posix::stream_descriptor events, watches;
  explicit Watcher(asio::io_context& io) : events(io), watches(io) {}
  ~Watcher() {
    (void)events.release();  // the channel and libxenstore own the fds
    (void)watches.release();
  }
};

absl::StatusOr<std::shared_ptr<XenBackendHost>> XenBackendHost::Create(asio::io_context& io,
                                                                      std::unique_ptr<XenChannel> ch) {
  std::shared_ptr<XenBackendHost> h(new XenBackendHost(io, std::move(ch)));
  auto xs = XsClient::Open(h->ch_->xenstore_path());
  if (!xs.ok()) return xs.status();
  h->xs_ = std::move(*xs);
  h->w_ = std::make_shared<Watcher>(io);
  boost::system::error_code ec;
  h->w_->events.assign(h->ch_->event_fd(), ec);
  if (!ec) h->w_->watches.assign(h->xs_->fd(), ec);
  if (ec) return absl::InternalError(absl::StrCat("xen: watching the channel: ", ec.message()));
  h->WaitEvents();
  h->WaitWatches();
  return h;
}

XenBackendHost::~XenBackendHost() {
  boost::system::error_code ec;
  w_->events.cancel(ec);
  w_->watches.cancel(ec);
}

void XenBackendHost::OnPort(EvtchnPort port, std::function<void()> fn) { ports_[port] = std::move(fn); }
void XenBackendHost::RemovePort(EvtchnPort port) { ports_.erase(port); }

absl::Status XenBackendHost::OnWatch(const std::string& path, const std::string& token, std::function<void()> fn) {
  watches_[token] = std::move(fn);
  absl::Status s = xs_->Watch(path, token);
  if (!s.ok()) watches_.erase(token);
  return s;
}

void XenBackendHost::RemoveWatch(const std::string& path, const std::string& token) {
  (void)xs_->Unwatch(path, token);
  watches_.erase(token);
}

void XenBackendHost::WaitEvents() {
  w_->events.async_wait(asio::posix::stream_descriptor::wait_read,
                        [self = weak_from_this()](const boost::system::error_code& ec) {
                          auto h = self.lock();
                          if (ec || !h) return;
                          h->wakeups_++;
                          h->pending_.clear();
                          h->ch_->PendingPorts(h->pending_);
                          // Each port stays masked while its handler runs (and
                          // spins): sends meanwhile only mark it pending, with
                          // no wake-up. Unmasking a pending port delivers it
                          // again, so nothing is lost; the hypercall is paid
                          // once per wake-up, after the work.
                          for (EvtchnPort p : h->pending_) {
                            auto it = h->ports_.find(p);
                            if (it != h->ports_.end()) {
                              auto fn = it->second;  // the handler may remove itself
                              fn();
                            }
                          }
                          for (EvtchnPort p : h->pending_) (void)h->ch_->Unmask(p);
                          h->WaitEvents();
                        });
}

void XenBackendHost::WaitWatches() {
  w_->watches.async_wait(asio::posix::stream_descriptor::wait_read,
                         [self = weak_from_this()](const boost::system::error_code& ec) {
                           auto h = self.lock();
                           if (ec || !h) return;
                           while (auto w = h->xs_->ReadWatch()) {
                             auto it = h->watches_.find(w->second);
                             if (it != h->watches_.end()) {
                               auto fn = it->second;
                               fn();
                             }
                           }
                           h->WaitWatches();
                         });
}

// ---- XenServer ----------------------------------------------------------------

namespace {

std::string Num(XenbusState s) { return std::to_string(static_cast<int>(s)); }

}  // namespace

struct XenServer::Impl : std::enable_shared_from_this<Impl> {
  XenServer* self = nullptr;
  std::shared_ptr<XenBackendHost> host;
  std::shared_ptr<VirtioDevice> device;
  XenServerOptions o;
  std::string fe_dir, be_dir, fe_token, intro_token;
  XenServerCounters counters;
  std::string last_error;
  // The connection.
  bool connected = false;
  uint8_t* ctrl = nullptr;
  EvtchnPort ctrl_port = 0;
  std::vector<EvtchnPort> queue_ports;
  std::shared_ptr<GuestMemory> mem;
  std::shared_ptr<mmio::MirrorInterrupts> irq;
  std::unique_ptr<DeviceController> ctl;
  std::unique_ptr<mmio::MmioMirror> mirror;
  uint32_t last_seq = 0;
  std::unique_ptr<asio::posix::stream_descriptor> event_watch;
  TransportCounters past;  // connections that ended
  GrantMemoryStats past_mem;

  XsClient& xs() { return host->xs(); }
  XenChannel& ch() { return host->channel(); }
  void SetState(XenbusState s) { (void)xs().Write(be_dir + "/state", Num(s)); }
  void Fail(const std::string& why) {
    last_error = why;
    VIOPORT_LOG(kWarning, o.name, ": ", why);
  }
  absl::Status Setup();
  void EnsureFrontendDir();
  void OnFrontendState();
  absl::Status Connect();
  void Disconnect(const std::string& why);
  void OnControl();
  void OnKick(uint16_t q);
  void WatchDeviceEvents();
  void Publish() {
    if (!mirror) return;
    mirror->Publish();
    self->status_.store(ctl->status());
  }
};

absl::StatusOr<std::unique_ptr<XenServer>> XenServer::Create(std::shared_ptr<XenBackendHost> host,
                                                           std::shared_ptr<VirtioDevice> device,
                                                           XenServerOptions options) {
  if (!device) return absl::InvalidArgumentError("no device");
  if (device->num_queues() == 0 || device->num_queues() > kMaxQueues)
    return absl::InvalidArgumentError(absl::StrCat("xen carries 1 to ", kMaxQueues, " queues"));
  if (device->config_size() > kRequestOffset - mmio::kConfigOffset)
    return absl::InvalidArgumentError("device config space does not fit the control page");
  if (options.frontend == host->channel().self() || options.frontend >= 0x7ff0)
    return absl::InvalidArgumentError(absl::StrCat("frontend domain ", options.frontend, " is not another domain"));
  std::unique_ptr<XenServer> s(new XenServer(std::move(options)));
  auto impl = std::make_shared<Impl>();
  impl->self = s.get();
  impl->host = std::move(host);
  impl->device = std::move(device);
  impl->o = s->o_;
  if (absl::Status st = impl->Setup(); !st.ok()) return st;
  s->impl_ = std::move(impl);
  return s;
}

XenServer::~XenServer() {
  if (!impl_) return;
  Impl& im = *impl_;
  im.host->RemoveWatch(im.fe_dir + "/state", im.fe_token);
  im.host->RemoveWatch("@introduceDomain", im.intro_token);
  im.Disconnect("backend stopping");
  im.SetState(XenbusState::kClosed);
}

absl::Status XenServer::Impl::Setup() {
  const DomId me = ch().self();
  fe_dir = FrontendDir(o.frontend, o.devid);
  be_dir = BackendDir(me, o.frontend, o.devid);
  fe_token = absl::StrCat("vioport-be-", o.frontend, "-", o.devid);
  intro_token = absl::StrCat("vioport-intro-", o.frontend, "-", o.devid);
  // As the toolstack (libxl): the backend directory, ours, the frontend may read.
  (void)xs().Rm(be_dir);
  absl::Status s = xs().Mkdir(be_dir);
  if (s.ok()) s = xs().SetPermissions(be_dir, {{me, 'n'}, {o.frontend, 'r'}});
  const std::pair<const char*, std::string> keys[] = {
      {"frontend", fe_dir},
      {"frontend-id", std::to_string(o.frontend)},
      {"online", "1"},
      {"state", Num(XenbusState::kInitialising)},
      {"device-type", std::to_string(static_cast<uint32_t>(device->device_id()))},
      {"max-queues", std::to_string(device->num_queues())},
      {"max-queue-size", std::to_string(device->max_queue_size())},
      {"protocol-versions", std::to_string(kProtocolVersion)},
  };
  for (const auto& [k, v] : keys)
    if (s.ok()) s = xs().Write(be_dir + "/" + k, v);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(o.name, ": creating ", be_dir, ": ", s.message()));
  SetState(XenbusState::kInitWait);
  EnsureFrontendDir();
  std::weak_ptr<Impl> weak = weak_from_this();
  s = host->OnWatch(fe_dir + "/state", fe_token, [weak] {
    if (auto im = weak.lock()) im->OnFrontendState();
  });
  if (s.ok())
    s = host->OnWatch("@introduceDomain", intro_token, [weak] {
      if (auto im = weak.lock()) im->EnsureFrontendDir();
    });
  if (!s.ok()) return s;
  VIOPORT_LOG(kInfo, o.name, ": waiting for domain ", o.frontend, " at ", fe_dir, " (grants=", o.copy ? "copy" : "map",
              ")");
  return absl::OkStatus();
}

void XenServer::Impl::EnsureFrontendDir() {
  // The frontend's directory, its own, we may read; made when the domain
  // exists (again) and the directory does not.
  const std::string home = "/local/domain/" + std::to_string(o.frontend);
  if (!xs().Read(home).ok() && !xs().Directory(home).ok()) return;
  if (xs().Read(fe_dir + "/state").ok()) return;
  const DomId me = ch().self();
  absl::Status s = xs().Mkdir(fe_dir);
  if (s.ok()) s = xs().SetPermissions(fe_dir, {{o.frontend, 'n'}, {me, 'r'}});
  if (s.ok()) s = xs().Write(fe_dir + "/backend", be_dir);
  if (s.ok()) s = xs().Write(fe_dir + "/backend-id", std::to_string(me));
  if (s.ok()) s = xs().Write(fe_dir + "/state", Num(XenbusState::kInitialising));
  if (!s.ok()) Fail(absl::StrCat("creating ", fe_dir, ": ", s.message()));
}

void XenServer::Impl::OnFrontendState() {
  auto v = xs().Read(fe_dir + "/state");
  std::optional<uint64_t> st = v.ok() ? ParseDecimal(*v, 8) : std::nullopt;
  if (!v.ok() || !st) {
    if (connected) Disconnect(v.ok() ? absl::StrCat("frontend state '", *v, "'") : "frontend gone");
    if (v.ok()) Fail(absl::StrCat(fe_dir, "/state is '", *v, "'"));
    SetState(XenbusState::kClosed);
    return;
  }
  switch (static_cast<XenbusState>(*st)) {
    case XenbusState::kInitialising:
      if (connected) Disconnect("frontend re-initialising");
      SetState(XenbusState::kInitWait);
      break;
    case XenbusState::kInitialised:
      // Watches fire more than once per change: act on the value. A
      // frontend starts a new handshake with Initialising, which we see
      // before its Initialised (it waits for our InitWait), so Initialised
      // while connected is the same handshake seen again.
      if (connected) break;
      if (absl::Status s = Connect(); !s.ok()) {
        counters.refused++;
        Fail(absl::StrCat("connection refused: ", s.message()));
        Disconnect("refused");
        SetState(XenbusState::kClosed);
      } else {
        SetState(XenbusState::kConnected);
      }
      break;
    case XenbusState::kClosing:
    case XenbusState::kClosed:
      if (connected) Disconnect("frontend closed");
      SetState(XenbusState::kClosed);
      break;
    default:
      break;
  }
}

absl::Status XenServer::Impl::Connect() {
  // The frontend's keys: untrusted, parsed strictly, each failure named.
  auto key = [&](const std::string& k, uint64_t max) -> absl::StatusOr<uint64_t> {
    auto v = xs().Read(fe_dir + "/" + k);
    if (!v.ok()) return absl::InvalidArgumentError(absl::StrCat("key ", k, ": ", v.status().message()));
    auto n = ParseDecimal(*v, max);
    if (!n) return absl::InvalidArgumentError(absl::StrCat("key ", k, " = '", v->substr(0, 64), "' (not a number <= ", max, ")"));
    return *n;
  };
  auto ver = key("protocol-version", 0xffffffff);
  if (!ver.ok()) return ver.status();
  if (*ver != kProtocolVersion) return absl::InvalidArgumentError(absl::StrCat("key protocol-version = ", *ver));
  auto ref = key("ctrl-ref", 0xffffffff);
  if (!ref.ok()) return ref.status();
  auto cport = key("ctrl-evtchn", 0xffffffff);
  if (!cport.ok()) return cport.status();
  auto nq = key("num-queues", device->num_queues());
  if (!nq.ok()) return nq.status();
  if (*nq == 0) return absl::InvalidArgumentError("key num-queues = 0");
  std::vector<uint64_t> qports;
  for (uint64_t q = 0; q < *nq; ++q) {
    auto p = key(absl::StrCat("queue-", q, "/evtchn"), 0xffffffff);
    if (!p.ok()) return p.status();
    qports.push_back(*p);
  }
  const GrantRef r = static_cast<GrantRef>(*ref);
  auto page = ch().MapGrants(o.frontend, {&r, 1}, true);
  if (!page.ok()) return absl::Status(page.status().code(), absl::StrCat("ctrl-ref ", r, ": ", page.status().message()));
  ctrl = *page;
  auto lp = ch().BindInterdomain(o.frontend, static_cast<EvtchnPort>(*cport));
  if (!lp.ok()) return absl::Status(lp.status().code(), absl::StrCat("ctrl-evtchn ", *cport, ": ", lp.status().message()));
  ctrl_port = *lp;
  for (uint64_t q = 0; q < qports.size(); ++q) {
    auto qp = ch().BindInterdomain(o.frontend, static_cast<EvtchnPort>(qports[q]));
    if (!qp.ok())
      return absl::Status(qp.status().code(), absl::StrCat("queue-", q, "/evtchn ", qports[q], ": ", qp.status().message()));
    queue_ports.push_back(*qp);
  }
  mem = o.copy ? MakeGrantCopyMemory(ch(), o.frontend) : MakeGrantMapMemory(ch(), o.frontend, o.cache_pages);
  irq = std::make_shared<mmio::MirrorInterrupts>(
      ctrl,
      [ch = &ch(), ctrl = ctrl_port, queues = queue_ports](int q) {
        if (q == mmio::MirrorInterrupts::kConfig) (void)ch->Notify(ctrl);
        else if (static_cast<size_t>(q) < queues.size()) (void)ch->Notify(queues[q]);
      },
      [this] { Publish(); });
  ctl = std::make_unique<DeviceController>(device, mem, irq, o.transport_features);
  std::memset(ctrl, 0, kRequestOffset);
  reinterpret_cast<ControlAnswer*>(ctrl + kAnswerOffset)->seq.store(0, std::memory_order_relaxed);
  last_seq = reinterpret_cast<ControlRequest*>(ctrl + kRequestOffset)->seq.load(std::memory_order_acquire);
  mirror = std::make_unique<mmio::MmioMirror>(*ctl, 2, ctrl);
  Publish();
  std::weak_ptr<Impl> weak = weak_from_this();
  host->OnPort(ctrl_port, [weak] {
    if (auto im = weak.lock()) im->OnControl();
  });
  for (uint16_t q = 0; q < queue_ports.size(); ++q)
    host->OnPort(queue_ports[q], [weak, q] {
      if (auto im = weak.lock()) im->OnKick(q);
    });
  WatchDeviceEvents();
  connected = true;
  self->connected_.store(true);
  counters.connections++;
  VIOPORT_LOG(kInfo, o.name, ": domain ", o.frontend, " connected (ctrl-ref ", r, ", ", queue_ports.size(),
              " queue(s), grants=", o.copy ? "copy" : "map", ")");
  return absl::OkStatus();
}

void XenServer::Impl::Disconnect(const std::string& why) {
  if (ctrl_port) host->RemovePort(ctrl_port);
  for (EvtchnPort p : queue_ports) host->RemovePort(p);
  if (event_watch) {
    boost::system::error_code ec;
    event_watch->cancel(ec);
    event_watch.reset();
  }
  if (ctl) {
    past += ctl->transport_counters();
    if (!ctl->last_error().empty()) last_error = ctl->last_error();
  }
  if (mem) {
    GrantMemoryStats s = GrantMemoryStatsOf(*mem);
    past_mem.maps += s.maps;
    past_mem.map_failures += s.map_failures;
    past_mem.copies += s.copies;
    past_mem.copy_bytes += s.copy_bytes;
    past_mem.copy_failures += s.copy_failures;
    past_mem.overflow += s.overflow;
  }
  // Device first: its reset waits for in-flight requests; then nothing
  // touches the frontend's pages and the mappings can go.
  mirror.reset();
  ctl.reset();
  if (irq) irq->Disconnect();
  mem.reset();
  if (ctrl) (void)ch().UnmapGrants(ctrl, 1);
  ctrl = nullptr;
  if (ctrl_port) (void)ch().Unbind(ctrl_port);
  for (EvtchnPort p : queue_ports) (void)ch().Unbind(p);
  ctrl_port = 0;
  queue_ports.clear();
  if (connected) {
    counters.disconnects++;
    VIOPORT_LOG(kInfo, o.name, ": domain ", o.frontend, " disconnected: ", why);
  }
  connected = false;
  self->connected_.store(false);
  self->status_.store(0);
}

void XenServer::Impl::OnControl() {
  if (!ctrl) return;
  auto* req = reinterpret_cast<ControlRequest*>(ctrl + kRequestOffset);
  auto* ans = reinterpret_cast<ControlAnswer*>(ctrl + kAnswerOffset);
  const uint32_t seq = req->seq.load(std::memory_order_acquire);
  if (seq == last_seq) return;  // nothing new (a spurious or merged event)
  last_seq = seq;
  // Read once: the frontend may change the fields under us.
  const uint32_t off = std::atomic_ref<uint32_t>(req->offset).load(std::memory_order_relaxed);
  const uint32_t size = std::atomic_ref<uint32_t>(req->size).load(std::memory_order_relaxed);
  const uint64_t value = std::atomic_ref<uint64_t>(req->value).load(std::memory_order_relaxed);
  counters.register_writes++;
  absl::Status s = off < kRequestOffset ? mirror->Write(off, size, static_cast<uint32_t>(value))
                                        : absl::OutOfRangeError(absl::StrFormat("register 0x%x is past the mirror", off));
  if (!s.ok()) {
    counters.register_writes_ignored++;
    VIOPORT_LOG(kInfo, o.name, ": register write ignored: ", s.message());
  }
  if (!ctrl) return;  // the write reset a device whose reset disconnected us
  std::atomic_ref<uint32_t>(ans->result).store(s.ok() ? 0 : 1, std::memory_order_relaxed);
  ans->seq.store(seq, std::memory_order_release);
  self->status_.store(ctl->status());
  (void)ch().Notify(ctrl_port);
}

void XenServer::Impl::OnKick(uint16_t q) {
  if (!ctl) return;
  ctl->NotifyQueue(q);
  ctl->ServeWhileBusy(o.spin_us);
  self->status_.store(ctl->status());
}

void XenServer::Impl::WatchDeviceEvents() {
  const int fd = device->event_fd();
  if (fd < 0) return;
  if (!event_watch) event_watch = std::make_unique<asio::posix::stream_descriptor>(host->io(), ::dup(fd));
  event_watch->async_wait(asio::posix::stream_descriptor::wait_read,
                          [weak = weak_from_this()](const boost::system::error_code& ec) {
                            auto im = weak.lock();
                            if (ec || !im || !im->ctl) return;
                            if (im->device->ProcessEvents()) im->ctl->ServeWhileBusy(im->o.spin_us);
                            if (im->ctl) im->WatchDeviceEvents();
                          });
}

std::string XenServer::last_error() const { return impl_->last_error; }

std::string XenServer::where() const { return o_.where; }

void XenServer::AppendCounters(CounterList* out) const {
  const Impl& im = *impl_;
  const XenServerCounters& c = im.counters;
  TransportCounters t = im.past;
  if (im.ctl) t += im.ctl->transport_counters();
  t.reconnects = c.connections.load() > 0 ? c.connections.load() - 1 : 0;
  t.AppendTo(out);
  GrantMemoryStats m = im.past_mem;
  if (im.mem) {
    GrantMemoryStats s = GrantMemoryStatsOf(*im.mem);
    m.maps += s.maps;
    m.map_failures += s.map_failures;
    m.cached_pages = s.cached_pages;
    m.copies += s.copies;
    m.copy_bytes += s.copy_bytes;
    m.copy_failures += s.copy_failures;
    m.overflow += s.overflow;
  }
  out->insert(out->end(), {{"connections", c.connections.load()},
                           {"connections_refused", c.refused.load()},
                           {"disconnects", c.disconnects.load()},
                           {"register_writes", c.register_writes.load()},
                           {"register_writes_ignored", c.register_writes_ignored.load()},
                           {"grant_maps", m.maps},
                           {"grant_map_failures", m.map_failures},
                           {"mapped_pages", m.cached_pages},
                           {"grant_copies", m.copies},
                           {"grant_copy_bytes", m.copy_bytes},
                           {"grant_copy_failures", m.copy_failures},
                           {"map_cache_overflow", m.overflow},
                           {"domain_wakeups", im.host->wakeups()}});
}

absl::Status XenServer::Quiesce() { return impl_->device->Quiesce(); }

}  // namespace vioport::xen
