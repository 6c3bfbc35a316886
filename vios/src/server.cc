#include "server.h"

#include <fcntl.h>

#include <map>
#include <memory>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "boost/asio/local/stream_protocol.hpp"
#include "boost/asio/posix/stream_descriptor.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/asio/read_until.hpp"
#include "boost/asio/streambuf.hpp"
#include "boost/asio/write.hpp"
#include "vioport/backends/blk_device.h"
#include "vioport/backends/console_device.h"
#include "vioport/backends/rng_device.h"
#include "vioport/core/log.h"
#include "vioport/emulators/crq_remote.h"
#include "vioport/transports/crq_server.h"
#include "vioport/transports/xen_channel.h"
#include "vioport/transports/xen_server.h"
#include "vioport/transports/shm_server.h"
#include "vioport/transports/vhost_user_server.h"

namespace vioport::vios {

namespace asio = boost::asio;

namespace {

absl::StatusOr<std::shared_ptr<VirtioDevice>> MakeDevice(DeviceSpec& spec) {
  Options& o = spec.options;
  std::shared_ptr<VirtioDevice> dev;
  if (spec.type == "blk") {
    BlkOptions b;
    auto path = o.String("path");
    auto ro = o.Bool("readonly", false);
    auto nq = o.Uint("num-queues", 1, 1, 16);
    auto qs = o.Uint("queue-size", 256, 1, 1024);
    auto serial = o.String("serial", "");
    auto seg = o.Uint("seg-max", 126, 1, 1024);
    auto size_max = o.Uint("size-max", 1 << 20, 4096, 1u << 31);
    auto aio = o.String("aio", "auto");
    if (!aio.ok()) return aio.status();
    if (*aio == "auto") b.io = BlkOptions::Io::kAuto;
    else if (*aio == "io_uring") b.io = BlkOptions::Io::kIoUring;
    else if (*aio == "inline") b.io = BlkOptions::Io::kInline;
    else return absl::InvalidArgumentError(absl::StrCat(o.origin(), ": option 'aio=", *aio, "' is not auto, io_uring or inline"));
    for (const absl::Status& s : {path.status(), ro.status(), nq.status(), qs.status(), serial.status(), seg.status(),
                                  size_max.status()})
      if (!s.ok()) return s;
    if (*qs & (*qs - 1)) return absl::InvalidArgumentError(absl::StrCat(o.origin(), ": option 'queue-size=", *qs, "' is not a power of 2"));
    if (serial->size() > 20)
      return absl::InvalidArgumentError(absl::StrCat(o.origin(), ": option 'serial=", *serial, "' is longer than 20 bytes"));
    b.path = *path;
    b.read_only = *ro;
    b.num_queues = static_cast<uint16_t>(*nq);
    b.queue_size = static_cast<uint16_t>(*qs);
    b.serial = *serial;
    b.seg_max = static_cast<uint32_t>(*seg);
    b.size_max = static_cast<uint32_t>(*size_max);
    if (absl::Status s = o.CheckAllUsed(); !s.ok()) return s;
    auto d = BlkDevice::Open(b);
    if (!d.ok()) return absl::Status(d.status().code(), absl::StrCat(o.origin(), ": ", d.status().message()));
    dev = std::move(*d);
  } else if (spec.type == "rng") {
    if (absl::Status s = o.CheckAllUsed(); !s.ok()) return s;
    dev = std::make_shared<RngDevice>();
  } else if (spec.type == "console") {
    ConsoleOptions c;
    auto sock = o.String("socket", "");
    auto stdio = o.Bool("stdio", false);
    if (!sock.ok()) return sock.status();
    if (!stdio.ok()) return stdio.status();
    if (absl::Status s = o.CheckAllUsed(); !s.ok()) return s;
    if (sock->empty() == !*stdio)
      return absl::InvalidArgumentError(absl::StrCat(o.origin(), ": give exactly one of socket=PATH or stdio=on"));
    c.socket_path = *sock;
    if (*stdio) {
      c.in_fd = STDIN_FILENO;
      c.out_fd = STDOUT_FILENO;
    }
    auto d = ConsoleDevice::Create(c);
    if (!d.ok()) return absl::Status(d.status().code(), absl::StrCat(o.origin(), ": ", d.status().message()));
    dev = std::move(*d);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(o.origin(), ": unknown device type '", spec.type, "' (blk, rng or console)"));
  }
  return dev;
}

// An attachment that forwards to a transport server with the common surface
// (ShmServer, VhostUserServer); only the transport's display name differs.
template <typename Server>
class ServerAttachment final : public Attachment {
 public:
  ServerAttachment(std::unique_ptr<Server> s, std::string name) : s_(std::move(s)), name_(std::move(name)) {}
  std::string transport() const override { return name_; }
  std::string where() const override { return s_->options().socket_path; }
  bool connected() const override { return s_->connected(); }
  uint8_t device_status() const override { return s_->device_status(); }
  std::string last_error() const override { return s_->last_error(); }
  std::vector<std::pair<std::string, uint64_t>> Counters() const override { return s_->Counters(); }
  void StopAccepting() override { s_->StopAccepting(); }
  absl::Status Quiesce() override { return s_->Quiesce(); }

 private:
  std::unique_ptr<Server> s_;
  std::string name_;
};

// virtio over CRQ (docs/transports/crq.md). vios is ONE partition of the crqd
// emulator per (crqd socket, partition id), as a VIO server is one partition
// with many server adapters: every crq attachment naming the same pair shares
// a CrqPartitionHost, which owns the RemotePartition, hands each adapter its
// own area of the partition's memory (queue page + bounce buffer) and serves
// them all from the Asio loop with one CrqDispatcher. The partition's
// interrupt eventfd (one for all its adapters) and each device's completion
// eventfd are watched with async_wait; on readiness the interrupt is drained
// and the dispatcher polled with a zero timeout. A steady_timer covers the
// servers' backed-off retries (and a 100 ms safety tick, so nothing ever
// depends on one wake-up alone).
class CrqPartitionHost : public std::enable_shared_from_this<CrqPartitionHost> {
 public:
  // The host of (socket, id), joining crqd the first time (memory_bytes is
  // that first join's size; later attachments share it).
  static absl::StatusOr<std::shared_ptr<CrqPartitionHost>> Get(asio::io_context& io,
                                                               const crq::RemotePartitionOptions& po) {
    const std::string key = absl::StrCat(po.socket_path, "#", po.id);
    if (auto h = Registry()[key].lock()) return h;
    auto p = crq::RemotePartition::Connect(po);
    if (!p.ok()) return absl::Status(p.status().code(), absl::StrCat("crqd ", po.socket_path, ": ", p.status().message()));
    std::shared_ptr<CrqPartitionHost> h(new CrqPartitionHost(io, std::move(*p), key));
    h->Start();
    Registry()[key] = h;
    return h;
  }
  ~CrqPartitionHost() {
    Stop();
    Registry().erase(key_);
    p_.reset();  // closes the connection to crqd
  }

  crq::RemotePartition& partition() { return *p_; }
  // The next free area of `bytes` (page multiple) in the partition's memory.
  absl::StatusOr<uint64_t> AllocateArea(uint64_t bytes) {
    if (bytes > p_->memory_size() - next_area_)
      return absl::ResourceExhaustedError(absl::StrFormat(
          "crq partition %u: no room for another adapter (%u of %u bytes used; raise memory-mib on its first attachment)",
          p_->id(), next_area_, p_->memory_size()));
    const uint64_t at = next_area_;
    next_area_ += bytes;
    return at;
  }
  void Add(crq::CrqServer* s, int device_fd) {
    dispatcher_.Add(s);
    if (device_fd >= 0) {
      auto w = std::make_unique<asio::posix::stream_descriptor>(io_);
      w->assign(device_fd);
      WaitDev(w.get());
      device_watch_[s] = std::move(w);
    }
    Poll();
  }
  void Remove(crq::CrqServer* s) {
    dispatcher_.Remove(s);
    auto it = device_watch_.find(s);
    if (it != device_watch_.end()) {
      boost::system::error_code ec;
      it->second->cancel(ec);
      (void)it->second->release();  // the device owns the fd
      device_watch_.erase(it);
    }
  }
  void Poll() {
    if (stopped_) return;
    dispatcher_.Poll(absl::ZeroDuration());
    // Keep serving spin_ past the last work before sleeping: a NOTIFY lands
    // in our own queue page and a completion on the device's eventfd, both
    // cheap to look at, while a blocking wake-up costs tens of microseconds.
    if (spin_ > absl::ZeroDuration()) {
      absl::Time until = absl::Now() + spin_;
      for (uint32_t i = 1;; ++i) {
        if (dispatcher_.Work() > 0) until = absl::Now() + spin_;
        if ((i & 7) == 0 && absl::Now() >= until) break;
      }
    }
    // Next: a retry deadline, else the safety tick.
    const absl::Time next = std::min(dispatcher_.NextDeadline(), absl::Now() + absl::Milliseconds(100));
    const auto in = std::chrono::nanoseconds(absl::ToInt64Nanoseconds(std::max(next - absl::Now(), absl::ZeroDuration())));
    timer_.expires_after(in);
    timer_.async_wait([self = weak_from_this()](const boost::system::error_code& ec) {
      auto h = self.lock();
      if (ec || !h || h->stopped_) return;
      h->Poll();
    });
  }
  uint64_t wakeups() const { return wakeups_; }
  // The longest spin asked for by any of the partition's attachments.
  void SpinAtLeast(absl::Duration d) { spin_ = std::max(spin_, d); }

 private:
  CrqPartitionHost(asio::io_context& io, std::unique_ptr<crq::RemotePartition> p, std::string key)
      : io_(io), p_(std::move(p)), key_(std::move(key)), dispatcher_(*p_), irq_(io), timer_(io) {}
  static std::map<std::string, std::weak_ptr<CrqPartitionHost>>& Registry() {
    static auto* r = new std::map<std::string, std::weak_ptr<CrqPartitionHost>>;
    return *r;
  }
  void Start() {
    const int irq = p_->interrupt_fd();
    ::fcntl(irq, F_SETFL, ::fcntl(irq, F_GETFL) | O_NONBLOCK);
    irq_.assign(irq);
    WaitIrq();
  }
  void Stop() {
    if (stopped_) return;
    stopped_ = true;
    boost::system::error_code ec;
    timer_.cancel();
    irq_.cancel(ec);
    // Not ours to close: the partition owns it.
    if (irq_.is_open()) (void)irq_.release();
  }
  // Re-armed before the work, in the same handler: an edge that comes while
  // we work is delivered to the new wait.
  void WaitIrq() {
    irq_.async_wait(asio::posix::stream_descriptor::wait_read,
                    [self = weak_from_this()](const boost::system::error_code& ec) {
                      auto h = self.lock();
                      if (ec || !h || h->stopped_) return;
                      ++h->wakeups_;
                      h->WaitIrq();
                      uint64_t v;
                      while (::read(h->p_->interrupt_fd(), &v, sizeof v) == sizeof v) {
                      }
                      h->Poll();
                    });
  }
  void WaitDev(asio::posix::stream_descriptor* w) {
    w->async_wait(asio::posix::stream_descriptor::wait_read,
                  [self = weak_from_this(), w](const boost::system::error_code& ec) {
                    auto h = self.lock();
                    if (ec || !h || h->stopped_) return;
                    ++h->wakeups_;
                    h->WaitDev(w);
                    h->Poll();
                  });
  }

  asio::io_context& io_;
  std::unique_ptr<crq::RemotePartition> p_;
  std::string key_;
  crq::CrqDispatcher dispatcher_;
  asio::posix::stream_descriptor irq_;
  asio::steady_timer timer_;
  std::map<crq::CrqServer*, std::unique_ptr<asio::posix::stream_descriptor>> device_watch_;
  uint64_t next_area_ = 0;
  absl::Duration spin_ = absl::ZeroDuration();
  bool stopped_ = false;
  uint64_t wakeups_ = 0;
};

// One server adapter of a shared CrqPartitionHost.
class CrqAttachment final : public Attachment {
 public:
  static absl::StatusOr<std::unique_ptr<CrqAttachment>> Create(asio::io_context& io, std::shared_ptr<VirtioDevice> dev,
                                                               const crq::RemotePartitionOptions& po,
                                                               crq::CrqServerOptions so, absl::Duration spin,
                                                               std::string where) {
    auto host = CrqPartitionHost::Get(io, po);
    if (!host.ok()) return host.status();
    (*host)->SpinAtLeast(spin);
    // This adapter's area: one queue page, then the bounce buffer, mapped at
    // IOBA 0 of its own LIOBN.
    auto area = (*host)->AllocateArea(crq::AreaBytes(so));
    if (!area.ok()) return area.status();
    so.memory_offset = *area;
    so.window_ioba = 0;
    auto s = crq::CrqServer::Create((*host)->partition(), dev, so);
    if (!s.ok()) return s.status();
    std::unique_ptr<CrqAttachment> a(new CrqAttachment(std::move(*host), std::move(*s), std::move(dev), std::move(where)));
    a->host_->Add(a->s_.get(), a->dev_->event_fd());
    return a;
  }
  ~CrqAttachment() override {
    Stop();
    s_.reset();  // H_FREE_CRQ: the client sees FF 02
    host_.reset();  // the last adapter of the partition closes its crqd connection
  }
  std::string transport() const override { return "crq"; }
  std::string where() const override { return where_; }
  bool connected() const override { return s_->state() == crq::CrqServer::State::kConnected; }
  uint8_t device_status() const override { return s_->controller().status(); }
  std::string last_error() const override {
    if (!host_->partition().connected()) return "crqd connection lost";
    return s_->last_close_reason();
  }
  std::vector<std::pair<std::string, uint64_t>> Counters() const override {
    const crq::CrqServerCounters& c = s_->counters();
    crq::CrqCopyMemory& m = s_->memory();
    return {{"messages", c.messages.load()},
            {"requests", c.requests.load()},
            {"notifies", c.notifies.load()},
            {"used_sent", c.used_sent.load()},
            {"dropped_retries", c.dropped_retries.load()},
            {"stale_generation", c.stale_generation.load()},
            {"protocol_errors", c.protocol_errors.load()},
            {"flow_blocked", c.flow_blocked.load()},
            {"credits_sent", c.credits_sent.load()},
            {"credits_received", c.credits_received.load()},
            {"closes", c.closes.load()},
            {"partner_resets", c.partner_resets.load()},
            {"connections", c.connections.load()},
            {"copy_reads", m.reads()},
            {"copy_writes", m.writes()},
            {"copies", m.copies()},
            {"copy_bytes", m.bytes()},
            {"copy_failures", m.failures()},
            {"copies_direct", m.direct_copies()},
            {"read_ahead_hits", m.read_ahead_hits()},
            {"staging_slots", m.staging_slots()},
            {"partition_wakeups", host_->wakeups()}};
  }
  void StopAccepting() override {}
  absl::Status Quiesce() override {
    // Finish what is in flight: run the servers until the device has nothing
    // outstanding (Quiesce waits for the backend), then flush.
    host_->Poll();
    absl::Status st = dev_->Quiesce();
    host_->Poll();
    Stop();
    return st;
  }

 private:
  CrqAttachment(std::shared_ptr<CrqPartitionHost> host, std::unique_ptr<crq::CrqServer> s,
                std::shared_ptr<VirtioDevice> dev, std::string where)
      : host_(std::move(host)), s_(std::move(s)), dev_(std::move(dev)), where_(std::move(where)) {}
  void Stop() {
    if (stopped_) return;
    stopped_ = true;
    host_->Remove(s_.get());
  }

  std::shared_ptr<CrqPartitionHost> host_;
  std::unique_ptr<crq::CrqServer> s_;
  std::shared_ptr<VirtioDevice> dev_;
  std::string where_;
  bool stopped_ = false;
};

// virtio over Xen grants (docs/transports/xen.md). vios is ONE domain per
// channel (the emulator's socket, or real Xen): every xen attachment naming
// the same channel shares its XenBackendHost - one domain connection, one
// xenstore connection, one event-channel dispatcher on the Asio loop.
std::map<std::string, std::weak_ptr<xen::XenBackendHost>>& XenHosts() {
  static auto* r = new std::map<std::string, std::weak_ptr<xen::XenBackendHost>>;
  return *r;
}

absl::StatusOr<std::shared_ptr<xen::XenBackendHost>> XenHost(asio::io_context& io, const std::string& channel,
                                                             uint32_t self, uint64_t memory_bytes, uint32_t spin_us) {
  const std::string key = absl::StrCat(channel, "#", self);
  if (auto h = XenHosts()[key].lock()) return h;
  absl::StatusOr<std::unique_ptr<xen::XenChannel>> ch;
  if (channel == "xen") {
    ch = xen::OpenLibxenChannel();
  } else if (channel.rfind("emu:", 0) == 0) {
    xen::EmulatorChannelOptions eo;
    eo.socket = channel.substr(4);
    eo.self = static_cast<xen::DomId>(self);
    eo.memory_bytes = memory_bytes;
    eo.spin_us = spin_us;
    ch = xen::OpenEmulatorChannel(eo);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("channel '", channel, "' is not emu:SOCKET or xen"));
  }
  if (!ch.ok()) return ch.status();
  auto h = xen::XenBackendHost::Create(io, std::move(*ch));
  if (!h.ok()) return h.status();
  XenHosts()[key] = *h;
  return *h;
}

class XenAttachment final : public Attachment {
 public:
  XenAttachment(std::shared_ptr<xen::XenBackendHost> host, std::unique_ptr<xen::XenServer> s, std::string where)
      : host_(std::move(host)), s_(std::move(s)), where_(std::move(where)) {}
  ~XenAttachment() override {
    s_.reset();
    host_.reset();  // the last attachment of the domain closes its channel
  }
  std::string transport() const override { return "xen"; }
  std::string where() const override { return where_; }
  bool connected() const override { return s_->connected(); }
  uint8_t device_status() const override { return s_->device_status(); }
  std::string last_error() const override { return s_->last_error(); }
  std::vector<std::pair<std::string, uint64_t>> Counters() const override { return s_->Counters(); }
  void StopAccepting() override {}
  absl::Status Quiesce() override { return s_->Quiesce(); }

 private:
  std::shared_ptr<xen::XenBackendHost> host_;
  std::unique_ptr<xen::XenServer> s_;
  std::string where_;
};

absl::StatusOr<std::unique_ptr<Attachment>> MakeAttachment(asio::io_context& io, AttachSpec& spec,
                                                          std::shared_ptr<VirtioDevice> dev) {
  Options& o = spec.options;
  if (spec.transport == "shm") {
    ShmServerOptions so;
    auto path = o.String("path");
    auto poll = o.Bool("poll", false);
    auto spin = o.Uint("spin-us", 20, 0, 1000);
    if (!path.ok()) return path.status();
    if (!poll.ok()) return poll.status();
    if (!spin.ok()) return spin.status();
    so.spin_us = static_cast<uint32_t>(*spin);
    if (absl::Status s = o.CheckAllUsed(); !s.ok()) return s;
    so.socket_path = *path;
    so.poll = *poll;
    so.name = absl::StrCat(spec.device, "@shm");
    auto s = ShmServer::Create(io, std::move(dev), so);
    if (!s.ok()) return absl::Status(s.status().code(), absl::StrCat(o.origin(), ": ", s.status().message()));
    return std::unique_ptr<Attachment>(new ServerAttachment<ShmServer>(std::move(*s), so.poll ? "shm(poll)" : "shm"));
  }
  if (spec.transport == "vhost-user") {
    VhostUserServerOptions vo;
    auto path = o.String("socket");
    auto spin = o.Uint("spin-us", 20, 0, 1000);
    auto inflight = o.Bool("inflight", true);
    if (!path.ok()) return path.status();
    if (!spin.ok()) return spin.status();
    if (!inflight.ok()) return inflight.status();
    if (absl::Status s = o.CheckAllUsed(); !s.ok()) return s;
    vo.socket_path = *path;
    vo.spin_us = static_cast<uint32_t>(*spin);
    vo.inflight = *inflight;
    vo.name = absl::StrCat(spec.device, "@vhost-user");
    auto s = VhostUserServer::Create(io, std::move(dev), vo);
    if (!s.ok()) return absl::Status(s.status().code(), absl::StrCat(o.origin(), ": ", s.status().message()));
    return std::unique_ptr<Attachment>(new ServerAttachment<VhostUserServer>(std::move(*s), "vhost-user"));
  }
  if (spec.transport == "crq") {
    auto sock = o.String("crqd");
    auto pid = o.Uint("partition", 0, 1, 0xffffffffu);
    auto unit = o.Uint("unit", 0, 0, 0xffffffffu);
    auto liobn = o.Uint("liobn", 0, 0, 0xffffffffu);
    auto rliobn = o.Uint("remote-liobn", 0, 0, 0xffffffffu);
    auto rwin = o.Uint("remote-window-mib", 0, 1, 1 << 20);
    auto mem = o.Uint("memory-mib", 64, 1, 1 << 16);
    auto mt = o.Uint("max-transfer", crq::kMaxTransfer, 4096, crq::kMaxTransfer);
    auto staging = o.Uint("staging", 32, 0, 1024);
    auto spin = o.Uint("spin-us", 20, 0, 1000);
    auto read_ahead = o.Bool("read-ahead", true);
    for (const absl::Status& s : {sock.status(), pid.status(), unit.status(), liobn.status(), rliobn.status(),
                                  rwin.status(), mem.status(), mt.status(), staging.status(), spin.status(), read_ahead.status()})
      if (!s.ok()) return s;
    for (const char* k : {"partition", "unit", "liobn", "remote-liobn", "remote-window-mib"})
      if (!o.Has(k)) return absl::InvalidArgumentError(absl::StrCat(o.origin(), ": option '", k, "' is required"));
    if (absl::Status s = o.CheckAllUsed(); !s.ok()) return s;
    crq::RemotePartitionOptions po;
    po.socket_path = *sock;
    po.id = static_cast<crq::PartitionId>(*pid);
    po.memory_bytes = *mem << 20;
    crq::CrqServerOptions so;
    so.unit = static_cast<crq::UnitAddress>(*unit);
    so.liobn = static_cast<crq::Liobn>(*liobn);
    so.remote_liobn = static_cast<crq::Liobn>(*rliobn);
    so.remote_window_bytes = *rwin << 20;
    so.max_transfer = static_cast<uint32_t>(*mt);
    so.staging_slots = static_cast<uint32_t>(*staging);
    so.read_ahead = *read_ahead;
    so.name = absl::StrCat(spec.device, "@crq");
    auto a = CrqAttachment::Create(io, std::move(dev), po, std::move(so), absl::Microseconds(*spin),
                                   absl::StrFormat("%s p%u u%#x", *sock, *pid, *unit));
    if (!a.ok()) return absl::Status(a.status().code(), absl::StrCat(o.origin(), ": ", a.status().message()));
    return std::unique_ptr<Attachment>(std::move(*a));
  }
  if (spec.transport == "xen") {
    auto channel = o.String("channel");
    auto domid = o.Uint("domid", 0, 1, 0x7fef);
    auto devid = o.Uint("devid", 0, 0, 0xffff);
    auto self = o.Uint("self", 0, 0, 0x7fef);
    auto grants = o.String("grants", "map");
    auto cache = o.Uint("cache-pages", 4096, 0, 1 << 20);
    auto mem = o.Uint("memory-mib", 64, 1, 1 << 16);
    auto spin = o.Uint("spin-us", 100, 0, 1000);
    for (const absl::Status& s : {channel.status(), domid.status(), devid.status(), self.status(), grants.status(),
                                  cache.status(), mem.status(), spin.status()})
      if (!s.ok()) return s;
    if (!o.Has("domid")) return absl::InvalidArgumentError(absl::StrCat(o.origin(), ": option 'domid' is required"));
    if (*grants != "map" && *grants != "copy")
      return absl::InvalidArgumentError(absl::StrCat(o.origin(), ": option 'grants=", *grants, "' is not map or copy"));
    if (absl::Status s = o.CheckAllUsed(); !s.ok()) return s;
    auto host = XenHost(io, *channel, static_cast<uint32_t>(*self), *mem << 20, static_cast<uint32_t>(*spin));
    if (!host.ok()) return absl::Status(host.status().code(), absl::StrCat(o.origin(), ": ", host.status().message()));
    xen::XenServerOptions xo;
    xo.name = absl::StrCat(spec.device, "@xen");
    xo.frontend = static_cast<xen::DomId>(*domid);
    xo.devid = static_cast<uint32_t>(*devid);
    xo.copy = *grants == "copy";
    xo.cache_pages = static_cast<uint32_t>(*cache);
    xo.spin_us = static_cast<uint32_t>(*spin);
    auto s = xen::XenServer::Create(*host, std::move(dev), xo);
    if (!s.ok()) return absl::Status(s.status().code(), absl::StrCat(o.origin(), ": ", s.status().message()));
    return std::unique_ptr<Attachment>(
        new XenAttachment(std::move(*host), std::move(*s), absl::StrFormat("%s dom%u dev%u grants=%s", *channel, *domid, *devid, *grants)));
  }
  return absl::InvalidArgumentError(absl::StrCat(o.origin(), ": unknown transport '", spec.transport,
                                                 "' (this vios serves: shm, vhost-user, crq, xen)"));
}

std::string StatusBits(uint8_t s) {
  if (s == 0) return "reset";
  std::string out;
  auto add = [&](uint8_t bit, const char* name) {
    if (s & bit) absl::StrAppend(&out, out.empty() ? "" : "|", name);
  };
  add(status::kAcknowledge, "ACK");
  add(status::kDriver, "DRIVER");
  add(status::kFeaturesOk, "FEATURES_OK");
  add(status::kDriverOk, "DRIVER_OK");
  add(status::kDeviceNeedsReset, "NEEDS_RESET");
  add(status::kFailed, "FAILED");
  return out;
}

}  // namespace

struct Server::Control {
  asio::local::stream_protocol::acceptor acceptor;
  std::string path;
  explicit Control(asio::io_context& io) : acceptor(io) {}
};

Server::Server(asio::io_context& io) : io_(io) {}

Server::~Server() {
  if (control_) {
    boost::system::error_code ec;
    control_->acceptor.close(ec);
    ::unlink(control_->path.c_str());
  }
  // Attachments first (they reset the devices), then the devices.
  for (auto& [id, e] : devices_) e.attachment.reset();
  devices_.clear();
}

absl::Status Server::AddDevice(DeviceSpec spec) {
  if (devices_.count(spec.id))
    return absl::AlreadyExistsError(absl::StrCat(spec.options.origin(), ": device id '", spec.id, "' already exists"));
  auto dev = MakeDevice(spec);
  if (!dev.ok()) return dev.status();
  VIOPORT_LOG(kInfo, "device ", spec.id, ": ", spec.type, " created");
  const std::string id = spec.id;
  devices_[id] = Entry{std::move(spec), std::move(*dev), nullptr};
  return absl::OkStatus();
}

absl::Status Server::Attach(AttachSpec spec) {
  auto it = devices_.find(spec.device);
  if (it == devices_.end())
    return absl::NotFoundError(absl::StrCat(spec.options.origin(), ": no device with id '", spec.device, "'"));
  if (it->second.attachment)
    return absl::AlreadyExistsError(absl::StrCat(spec.options.origin(), ": device '", spec.device,
                                                 "' is already attached (a device has one driver)"));
  auto a = MakeAttachment(io_, spec, it->second.device);
  if (!a.ok()) return a.status();
  it->second.attachment = std::move(*a);
  return absl::OkStatus();
}

absl::Status Server::Remove(const std::string& id) {
  auto it = devices_.find(id);
  if (it == devices_.end()) return absl::NotFoundError(absl::StrCat("no device with id '", id, "'"));
  it->second.attachment.reset();  // drops the guest: the device is reset first
  devices_.erase(it);
  VIOPORT_LOG(kInfo, "device ", id, ": removed");
  return absl::OkStatus();
}

std::string Server::List() const {
  // WHERE is as wide as the longest (a crq attachment names socket, partition and unit).
  int where = 44;
  for (const auto& [id, e] : devices_)
    if (e.attachment) where = std::max(where, static_cast<int>(e.attachment->where().size()));
  std::string out = absl::StrFormat("%-10s %-8s %-10s %-*s %-10s %s\n", "ID", "TYPE", "TRANSPORT", where, "WHERE",
                                    "GUEST", "STATUS");
  for (const auto& [id, e] : devices_) {
    const Attachment* a = e.attachment.get();
    absl::StrAppendFormat(&out, "%-10s %-8s %-10s %-*s %-10s %s\n", id, e.spec.type, a ? a->transport() : "-", where,
                          a ? a->where() : "-", a ? (a->connected() ? "connected" : "waiting") : "-",
                          a ? StatusBits(a->device_status()) : "-");
  }
  return out;
}

absl::StatusOr<std::string> Server::Stats(const std::string& id) const {
  auto it = devices_.find(id);
  if (it == devices_.end()) return absl::NotFoundError(absl::StrCat("no device with id '", id, "'"));
  std::vector<std::pair<std::string, uint64_t>> c;
  it->second.device->AppendCounters(&c);
  std::string out;
  for (const auto& [k, v] : c) absl::StrAppend(&out, id, ".", k, " ", v, "\n");
  if (const Attachment* a = it->second.attachment.get()) {
    for (const auto& [k, v] : a->Counters()) absl::StrAppend(&out, id, ".", a->transport(), ".", k, " ", v, "\n");
    const std::string err = a->last_error();
    if (!err.empty()) absl::StrAppend(&out, id, ".last_error ", err, "\n");
  }
  return out;
}

std::string Server::Execute(const std::string& line) {
  std::vector<std::string> words = absl::StrSplit(absl::StripAsciiWhitespace(line), ' ', absl::SkipEmpty());
  auto done = [](const absl::Status& s, std::string body = "") {
    if (!s.ok()) return absl::StrCat(body, "error: ", s.message(), "\n");
    return absl::StrCat(body, "ok\n");
  };
  if (words.empty()) return done(absl::InvalidArgumentError("empty command"));
  const std::string& cmd = words[0];
  if (cmd == "list" && words.size() == 1) return done(absl::OkStatus(), List());
  if (cmd == "stats" && words.size() <= 2) {
    if (words.size() == 2) {
      auto s = Stats(words[1]);
      return s.ok() ? done(absl::OkStatus(), *s) : done(s.status());
    }
    std::string all;
    for (const auto& [id, e] : devices_) all += *Stats(id);
    return done(absl::OkStatus(), all);
  }
  if (cmd == "add" && words.size() == 2) {
    auto d = ParseDevice(words[1]);
    return done(d.ok() ? AddDevice(std::move(*d)) : d.status());
  }
  if (cmd == "attach" && words.size() == 2) {
    auto a = ParseAttach(words[1]);
    return done(a.ok() ? Attach(std::move(*a)) : a.status());
  }
  if (cmd == "remove" && words.size() == 2) return done(Remove(words[1]));
  return done(absl::InvalidArgumentError(
      absl::StrCat("unknown command '", line, "' (list, stats [ID], add DEVICE-SPEC, attach ATTACH-SPEC, remove ID)")));
}

absl::Status Server::ListenControl(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return absl::AlreadyExistsError(absl::StrCat("--control ", path, ": exists and is not a socket"));
    ::unlink(path.c_str());
  }
  control_ = std::make_unique<Control>(io_);
  control_->path = path;
  boost::system::error_code ec;
  control_->acceptor.open(asio::local::stream_protocol(), ec);
  if (!ec) control_->acceptor.bind(asio::local::stream_protocol::endpoint(path), ec);
  if (!ec) control_->acceptor.listen(8, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("--control ", path, ": ", ec.message()));
  ::chmod(path.c_str(), 0600);
  AcceptControl();
  return absl::OkStatus();
}

namespace {
struct Session : std::enable_shared_from_this<Session> {
  asio::local::stream_protocol::socket sock;
  asio::streambuf in{4096};  // a command line is short; longer is refused
  std::string out;
  explicit Session(asio::local::stream_protocol::socket s) : sock(std::move(s)) {}
};
}  // namespace

void Server::AcceptControl() {
  control_->acceptor.async_accept([this](const boost::system::error_code& ec, asio::local::stream_protocol::socket sock) {
    if (ec == asio::error::operation_aborted) return;
    if (!ec) {
      auto s = std::make_shared<Session>(std::move(sock));
      asio::async_read_until(s->sock, s->in, '\n', [this, s](const boost::system::error_code& rec, size_t n) {
        if (rec) {
          if (rec != asio::error::not_found) return;
          s->out = "error: command too long\n";
        } else {
          std::string line(asio::buffers_begin(s->in.data()), asio::buffers_begin(s->in.data()) + n);
          s->out = Execute(line);
        }
        asio::async_write(s->sock, asio::buffer(s->out), [s](const boost::system::error_code&, size_t) {
          boost::system::error_code ignored;
          s->sock.shutdown(asio::socket_base::shutdown_both, ignored);
        });
      });
    }
    if (control_->acceptor.is_open()) AcceptControl();
  });
}

absl::Status Server::Shutdown() {
  if (control_) {
    boost::system::error_code ec;
    control_->acceptor.close(ec);
  }
  for (auto& [id, e] : devices_)
    if (e.attachment) e.attachment->StopAccepting();
  absl::Status result = absl::OkStatus();
  for (auto& [id, e] : devices_) {
    absl::Status s = e.attachment ? e.attachment->Quiesce() : e.device->Quiesce();
    if (!s.ok()) {
      VIOPORT_LOG(kError, "device ", id, ": ", s.message());
      result.Update(s);
    }
  }
  return result;
}

}  // namespace vioport::vios
