// SPDX-License-Identifier: Apache-2.0
// The CRQ transport in vios and vioguest (docs/transports/crq.md): the
// endpoint vios serves a device with (one server adapter of a shared
// partition, served from vios's Asio loop), the guest connector, and their
// registration. The partition comes from the channel registry ("crqd" when
// the build has the emulator), so nothing here links a hypervisor model.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "boost/asio/posix/stream_descriptor.hpp"
#include "boost/asio/steady_timer.hpp"
#include "vioport/transports/crq_guest.h"
#include "vioport/transports/crq_server.h"
#include "vioport/transports/registry.h"

namespace vioport::crq {
namespace {

namespace asio = boost::asio;

// vios is ONE partition per (channel, partition id), as a VIO server is one
// partition with many server adapters: every crq endpoint naming the same
// pair shares a CrqPartitionHost, which owns the Partition, hands each adapter its
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
  static absl::StatusOr<std::shared_ptr<CrqPartitionHost>> Get(asio::io_context& io, const std::string& channel,
                                                               const PartitionSpec& po) {
    const std::string key = absl::StrCat(channel, ":", po.address, "#", po.id);
    if (auto h = Registry()[key].lock()) return h;
    const PartitionFactory* open = PartitionChannels::Find(channel);
    if (!open)
      return absl::FailedPreconditionError(absl::StrCat("this build has no crq channel '", channel,
                                                        "' (it has: ", PartitionChannels::Names(), ")"));
    auto p = (*open)(po);
    if (!p.ok()) return absl::Status(p.status().code(), absl::StrCat(channel, " ", po.address, ": ", p.status().message()));
    std::shared_ptr<CrqPartitionHost> h(new CrqPartitionHost(io, std::move(*p), key));
    h->Start();
    Registry()[key] = h;
    return h;
  }
  // Live upgrade, the new vios: the partition the old one exported (the
  // first adapter's record carries it), frozen until Thaw().
  static absl::StatusOr<std::shared_ptr<CrqPartitionHost>> Adopt(asio::io_context& io, const std::string& channel,
                                                                 const PartitionSpec& po, HandoverReader& in) {
    const std::string key = absl::StrCat(channel, ":", po.address, "#", po.id);
    uint64_t carried = 0;
    if (absl::Status s = in.U64(&carried, 1, "partition carried"); !s.ok()) return s;
    if (!carried) {
      if (auto h = Registry()[key].lock()) return h;
      return absl::InvalidArgumentError(absl::StrCat("crq partition ", key, " was not handed over before its adapter"));
    }
    if (Registry()[key].lock()) return absl::AlreadyExistsError(absl::StrCat("crq partition ", key, " handed over twice"));
    uint64_t next_area = 0, spin_ns = 0;
    if (absl::Status s = in.U64(&next_area, "adapter areas"); !s.ok()) return s;
    if (absl::Status s = in.U64(&spin_ns, 1000000000, "spin"); !s.ok()) return s;
    const PartitionAdopter* adopt = PartitionAdopters::Find(channel);
    if (!adopt) return absl::FailedPreconditionError(absl::StrCat("this build cannot take over crq channel '", channel, "'"));
    auto p = (*adopt)(in);
    if (!p.ok()) return p.status();
    if (next_area > (*p)->memory_size()) return absl::InvalidArgumentError("handed-over adapter areas exceed the memory");
    std::shared_ptr<CrqPartitionHost> h(new CrqPartitionHost(io, std::move(*p), key));
    h->next_area_ = next_area;
    h->spin_ = absl::Nanoseconds(static_cast<int64_t>(spin_ns));
    h->frozen_ = true;
    h->Start();
    Registry()[key] = h;
    return h;
  }
  // Live upgrade, the old vios: no interrupt, completion or timer serves
  // any adapter from here; the first adapter's record carries the partition.
  absl::Status Freeze(HandoverWriter* out) {
    if (!frozen_) {
      frozen_ = true;
      boost::system::error_code ec;
      timer_.cancel();
      irq_.cancel(ec);
      for (auto& [s, w] : device_watch_) w->cancel(ec);
    }
    if (exported_) {
      out->U64(0);
      return absl::OkStatus();
    }
    exported_ = true;
    out->U64(1);
    out->U64(next_area_);
    out->U64(static_cast<uint64_t>(absl::ToInt64Nanoseconds(spin_)));
    return p_->Export(out);
  }
  void Thaw() {
    if (!frozen_) return;
    frozen_ = false;
    exported_ = false;
    WaitIrq();
    for (auto& [s, w] : device_watch_) WaitDev(w.get());
    Poll();
  }
  ~CrqPartitionHost() {
    Stop();
    Registry().erase(key_);
    p_.reset();  // closes the connection to crqd
  }

  Partition& partition() { return *p_; }
  // The next free area of `bytes` (page multiple) in the partition's memory.
  absl::StatusOr<uint64_t> AllocateArea(uint64_t bytes) {
    if (bytes > p_->memory_size() - next_area_)
      return absl::ResourceExhaustedError(absl::StrFormat(
          "crq partition %s: no room for another adapter (%u of %u bytes used; raise memory-mib on its first attachment)",
          key_, next_area_, p_->memory_size()));
    const uint64_t at = next_area_;
    next_area_ += bytes;
    return at;
  }
  void Add(CrqServer* s, int device_fd) {
    dispatcher_.Add(s);
    if (device_fd >= 0) {
      auto w = std::make_unique<asio::posix::stream_descriptor>(io_);
      w->assign(device_fd);
      WaitDev(w.get());
      device_watch_[s] = std::move(w);
    }
    Poll();
  }
  void Remove(CrqServer* s) {
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
    if (stopped_ || frozen_) return;
    dispatcher_.Poll(absl::ZeroDuration());
    // Keep serving spin_ past the last work before sleeping: a NOTIFY lands
    // in our own queue page and a completion on the device's eventfd, both
    // cheap to look at, while a blocking wake-up costs tens of microseconds.
    // Bounded like DeviceController::ServeWhileBusy (20 windows): a partition
    // that always has work must not keep the loop from every other device.
    if (spin_ > absl::ZeroDuration()) {
      const absl::Time start = absl::Now();
      const absl::Time hard_stop = start + 20 * spin_;
      absl::Time until = start + spin_;
      for (uint32_t i = 1;; ++i) {
        if (dispatcher_.Work() > 0) until = absl::Now() + spin_;
        if ((i & 7) == 0) {
          const absl::Time now = absl::Now();
          if (now >= until || now >= hard_stop) break;
        }
      }
    }
    dispatcher_.FlushInterrupts();  // nothing stays held while the loop sleeps
    // Next: a retry deadline, else the safety tick.
    const absl::Time next = std::min(dispatcher_.NextDeadline(), absl::Now() + absl::Milliseconds(100));
    const auto in = std::chrono::nanoseconds(absl::ToInt64Nanoseconds(std::max(next - absl::Now(), absl::ZeroDuration())));
    timer_.expires_after(in);
    timer_.async_wait([self = weak_from_this()](const boost::system::error_code& ec) {
      auto h = self.lock();
      if (ec || !h || h->stopped_ || h->frozen_) return;
      h->Poll();
    });
  }
  uint64_t wakeups() const { return wakeups_; }
  // The longest spin asked for by any of the partition's attachments.
  void SpinAtLeast(absl::Duration d) { spin_ = std::max(spin_, d); }

 private:
  CrqPartitionHost(asio::io_context& io, std::unique_ptr<Partition> p, std::string key)
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
    if (frozen_) return;
    irq_.async_wait(asio::posix::stream_descriptor::wait_read,
                    [self = weak_from_this()](const boost::system::error_code& ec) {
                      auto h = self.lock();
                      if (ec || !h || h->stopped_ || h->frozen_) return;
                      ++h->wakeups_;
                      h->WaitIrq();
                      uint64_t v;
                      while (::read(h->p_->interrupt_fd(), &v, sizeof v) == sizeof v) {
                      }
                      h->Poll();
                    });
  }
  void WaitDev(asio::posix::stream_descriptor* w) {
    if (frozen_) return;
    w->async_wait(asio::posix::stream_descriptor::wait_read,
                  [self = weak_from_this(), w](const boost::system::error_code& ec) {
                    auto h = self.lock();
                    if (ec || !h || h->stopped_ || h->frozen_) return;
                    ++h->wakeups_;
                    h->WaitDev(w);
                    h->Poll();
                  });
  }

  asio::io_context& io_;
  std::unique_ptr<Partition> p_;
  std::string key_;
  CrqDispatcher dispatcher_;
  asio::posix::stream_descriptor irq_;
  asio::steady_timer timer_;
  std::map<CrqServer*, std::unique_ptr<asio::posix::stream_descriptor>> device_watch_;
  uint64_t next_area_ = 0;
  absl::Duration spin_ = absl::ZeroDuration();
  bool stopped_ = false;
  bool frozen_ = false;    // live upgrade: nothing served until Thaw
  bool exported_ = false;  // this upgrade's records already carry the partition
  uint64_t wakeups_ = 0;
};

// One server adapter of a shared CrqPartitionHost.
class CrqEndpoint final : public DeviceEndpoint {
 public:
  static absl::StatusOr<std::unique_ptr<CrqEndpoint>> Create(asio::io_context& io, std::shared_ptr<VirtioDevice> dev,
                                                             const std::string& channel, const PartitionSpec& po,
                                                             CrqServerOptions so, absl::Duration spin,
                                                             std::string where) {
    auto host = CrqPartitionHost::Get(io, channel, po);
    if (!host.ok()) return host.status();
    (*host)->SpinAtLeast(spin);
    // This adapter's area: one queue page, then the bounce buffer, mapped at
    // IOBA 0 of its own LIOBN.
    auto area = (*host)->AllocateArea(AreaBytes(so));
    if (!area.ok()) return area.status();
    so.memory_offset = *area;
    so.window_ioba = 0;
    auto s = CrqServer::Create((*host)->partition(), dev, so);
    if (!s.ok()) return s.status();
    std::unique_ptr<CrqEndpoint> a(new CrqEndpoint(std::move(*host), std::move(*s), std::move(dev), std::move(where)));
    a->offset_ = so.memory_offset;
    a->host_->Add(a->s_.get(), a->dev_->event_fd());
    return a;
  }
  // Live upgrade, the new vios: this adapter from the old one's record.
  static absl::StatusOr<std::unique_ptr<CrqEndpoint>> Restore(asio::io_context& io, std::shared_ptr<VirtioDevice> dev,
                                                              const std::string& channel, const PartitionSpec& po,
                                                              CrqServerOptions so, absl::Duration spin,
                                                              std::string where, HandoverReader& in) {
    auto host = CrqPartitionHost::Adopt(io, channel, po, in);
    if (!host.ok()) return host.status();
    (*host)->SpinAtLeast(spin);
    uint64_t offset = 0;
    if (absl::Status s = in.U64(&offset, "adapter area"); !s.ok()) return s;
    so.memory_offset = offset;
    so.window_ioba = 0;
    auto s = CrqServer::Create((*host)->partition(), dev, so, &in);
    if (!s.ok()) return s.status();
    std::unique_ptr<CrqEndpoint> a(new CrqEndpoint(std::move(*host), std::move(*s), std::move(dev), std::move(where)));
    a->offset_ = offset;
    a->host_->Add(a->s_.get(), a->dev_->event_fd());
    return a;
  }
  absl::Status Freeze(HandoverWriter* out) override {
    if (absl::Status s = host_->Freeze(out); !s.ok()) return s;
    // Completions publish (H_COPY_RDMA) and send USED or keep it pending.
    if (absl::Status s = dev_->Drain(); !s.ok()) return s;
    out->U64(offset_);
    return s_->Save(out);
  }
  void Thaw() override {
    s_->controller().Resume();
    host_->Thaw();
    host_->Poll();
  }
  void Abandon() override {
    s_->Abandon();
    Stop();
    stopped_ = true;
  }
  ~CrqEndpoint() override {
    Stop();
    s_.reset();     // H_FREE_CRQ: the client sees FF 02
    host_.reset();  // the last adapter of the partition leaves the hypervisor
  }
  std::string mode() const override { return "crq"; }
  std::string where() const override { return where_; }
  bool connected() const override { return s_->state() == CrqServer::State::kConnected; }
  uint8_t device_status() const override { return s_->controller().status(); }
  std::string last_error() const override {
    if (!host_->partition().connected()) return "hypervisor connection lost";
    return s_->last_close_reason();
  }
  void AppendCounters(CounterList* out) const override {
    const CrqServerCounters& c = s_->counters();
    CrqCopyMemory& m = s_->memory();
    TransportCounters t = s_->controller().transport_counters();
    t.reconnects = c.connections.load() > 0 ? c.connections.load() - 1 : 0;
    t.AppendTo(out);
    out->insert(out->end(), {{"messages", c.messages.load()},
                             {"control_requests", c.requests.load()},
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
                             {"partition_wakeups", host_->wakeups()},
                             {"memory_faults", s_->controller().counters().memory_faults.load()}});
  }
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
  CrqEndpoint(std::shared_ptr<CrqPartitionHost> host, std::unique_ptr<CrqServer> s, std::shared_ptr<VirtioDevice> dev,
              std::string where)
      : host_(std::move(host)), s_(std::move(s)), dev_(std::move(dev)), where_(std::move(where)) {}
  void Stop() {
    if (stopped_) return;
    stopped_ = true;
    host_->Remove(s_.get());
  }

  std::shared_ptr<CrqPartitionHost> host_;
  std::unique_ptr<CrqServer> s_;
  std::shared_ptr<VirtioDevice> dev_;
  std::string where_;
  uint64_t offset_ = 0;  // this adapter's area of the partition's memory
  bool stopped_ = false;
};

absl::StatusOr<std::unique_ptr<DeviceEndpoint>> MakeEndpoint(EndpointContext& ctx, const OptionValues& o) {
  PartitionSpec po;
  po.address = o.str("crqd");
  po.id = static_cast<PartitionId>(o.num("partition"));
  po.memory_bytes = o.num("memory-mib") << 20;
  CrqServerOptions so;
  so.unit = static_cast<UnitAddress>(o.num("unit"));
  so.liobn = static_cast<Liobn>(o.num("liobn"));
  so.remote_liobn = static_cast<Liobn>(o.num("remote-liobn"));
  so.remote_window_bytes = o.num("remote-window-mib") << 20;
  so.max_transfer = static_cast<uint32_t>(o.num("max-transfer"));
  so.staging_slots = static_cast<uint32_t>(o.num("staging"));
  so.read_ahead = o.flag("read-ahead");
  so.name = ctx.name;
  std::string where = absl::StrFormat("%s p%u u%#x", po.address, po.id, o.num("unit"));
  if (ctx.handover) {
    auto r = CrqEndpoint::Restore(ctx.io, ctx.device, "crqd", po, std::move(so), absl::Microseconds(o.num("spin-us")),
                                  std::move(where), *ctx.handover);
    if (!r.ok()) return r.status();
    return std::unique_ptr<DeviceEndpoint>(std::move(*r));
  }
  auto a = CrqEndpoint::Create(ctx.io, ctx.device, "crqd", po, std::move(so), absl::Microseconds(o.num("spin-us")),
                               std::move(where));
  if (!a.ok()) return a.status();
  return std::unique_ptr<DeviceEndpoint>(std::move(*a));
}

// The guest's partition outlives its transport (GuestLink::channel).
absl::StatusOr<GuestLink> ConnectGuest(const GuestContext& ctx, const std::string& socket, const OptionValues& o) {
  const PartitionFactory* open = PartitionChannels::Find("crqd");
  if (!open)
    return absl::FailedPreconditionError(
        absl::StrCat("this build has no crqd channel (it has: ", PartitionChannels::Names(), ")"));
  const uint64_t mem = *ctx.memory_bytes;
  auto p = (*open)(PartitionSpec{socket, static_cast<PartitionId>(o.num("partition")), mem});
  if (!p.ok()) return p.status();
  std::shared_ptr<Partition> partition = std::move(*p);
  CrqGuestOptions g;
  g.unit = static_cast<UnitAddress>(o.num("unit"));
  g.liobn = static_cast<Liobn>(o.num("liobn"));
  g.window_bytes = o.given("window-mib") ? o.num("window-mib") << 20 : mem;
  g.memory_offset = 0;
  g.memory_bytes = std::min(mem, g.window_bytes);
  return LinkOf(CrqDriverTransport::Connect(*partition, g), partition);
}

}  // namespace
}  // namespace vioport::crq

namespace vioport {

void RegisterCrqTransport() {
  using O = OptionSpec;
  RegisterDeviceTransport(
      {"crq",
       "PowerVM: serve a client partition over a CRQ adapter pair\n"
       "(docs/transports/crq.md). vios joins the hypervisor (the crqd emulator on\n"
       "SOCKET) as partition PID, once for all its crq endpoints naming PID (a VIO\n"
       "server partition with many adapters; memory-mib of RAM from the first),\n"
       "registers server adapter UNIT, maps its queue page, bounce buffer and\n"
       "staging buffers in its window LIOBN, and copies to and from the client's\n"
       "window RLIOBN with H_COPY_RDMA; it never maps the client's memory.\n"
       "Numbers take 0x",
       {O::String("crqd", "SOCKET", "the crqd emulator's partition socket").Required(),
        O::Uint("partition", "PID", 1, 0xffffffffu, "vios's partition id").Required(),
        O::Uint("unit", "UNIT", 0, 0xffffffffu, "the server adapter's unit address").Required(),
        O::Uint("liobn", "LIOBN", 0, 0xffffffffu, "the server adapter's own DMA window").Required(),
        O::Uint("remote-liobn", "RLIOBN", 0, 0xffffffffu, "the client's window").Required(),
        O::Uint("remote-window-mib", "N", 1, 1 << 20, "the client's window size, as in crqd --pair").Required(),
        O::Uint("memory-mib", "N", 1, 1 << 16, "vios's partition RAM (the first crq endpoint's counts)").Default(64),
        O::Uint("max-transfer", "B", 4096, crq::kMaxTransfer, "bytes per H_COPY_RDMA").Default(crq::kMaxTransfer),
        O::Uint("staging", "N", 0, 1024, "256 KiB staging buffers (as many as fit)").Default(32),
        O::Bool("read-ahead", true, "copy every small read on its own (by default request headers copy their page once a batch)"),
        O::Uint("spin-us", "N", 0, 1000, "keep serving the partition N us past the last work before sleeping")
            .Default(20)},
       crq::MakeEndpoint,
       // One CrqPartitionHost per (crqd, partition) serves all its adapters: one thread.
       [](const OptionValues& o) { return absl::StrCat(o.str("crqd"), "#", o.num("partition")); }});
  RegisterGuestTransport(
      {"crq", "SOCKET",
       "PowerVM CRQ over the crqd emulator: this process joins crqd on SOCKET as\n"
       "client partition PID (--memory MiB of RAM) and drives client adapter UNIT,\n"
       "mapping buffers in its DMA window LIOBN; the server is vios --attach\n"
       "...,transport=crq. Numbers take 0x",
       {O::Uint("partition", "PID", 1, 0xffffffffu, "this process's partition id").Required(),
        O::Uint("unit", "UNIT", 0, 0xffffffffu, "the client adapter's unit address").Required(),
        O::Uint("liobn", "LIOBN", 0, 0xffffffffu, "the client adapter's DMA window").Required(),
        O::Uint("window-mib", "N", 1, 1 << 20, "the window's size as in crqd --pair (default --memory)")},
       {},
       64 << 20,
       crq::ConnectGuest});
}

}  // namespace vioport
