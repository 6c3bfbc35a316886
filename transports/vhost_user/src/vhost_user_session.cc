// SPDX-License-Identifier: Apache-2.0
#include "vhost_user_session.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <optional>
#include <thread>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "vioport/core/guest_memory.h"
#include "vioport/core/log.h"
#include "vioport/core/net_control.h"
#include "vioport/core/interrupt_coalescer.h"
#include "vioport/core/packed_device_queue.h"
#include "vioport/core/split_device_queue.h"
#include "vioport/transports/fd.h"

namespace vioport::vhost_user {
namespace {

absl::Status Bad(const std::string& why) { return absl::InvalidArgumentError(why); }
absl::Status WrongState(const std::string& why) { return absl::FailedPreconditionError(why); }

void CloseFd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

bool Has(uint64_t bits, unsigned b) { return (bits >> b) & 1; }

// Marks every queue's in-flight log as never used: the next ring start
// begins a new one instead of resubmitting requests from before a device
// reset (whose descriptors the reset ring no longer holds). Called while no
// queue is built, so no queue writes the logs.
void ForgetInflight(uint8_t* map, uint16_t queues, size_t stride) {
  if (!map) return;
  for (uint16_t q = 0; q < queues; ++q) std::memset(map + q * stride, 0, PackedInflightLog::kHeaderBytes);
}

// Bytes per queue in an in-flight area this back-end creates: room for the
// split or the packed layout, as the front-end asks before features are set
// (QEMU's vhost-user-blk does).
size_t InflightQueueBytes(uint16_t queue_size) {
  return std::max(SplitInflightLog::RegionBytes(queue_size), PackedInflightLog::RegionBytes(queue_size));
}

}  // namespace

// One mmap of a front-end memory region. The mapping lives as long as any
// GuestMemory built on it (the device may hold one until it is reset).
struct Session::Mapping {
  MemRegion r{};
  uint32_t refs = 1;  // ADD_MEM_REGs of this very region not yet removed
  uint8_t* base = nullptr;
  size_t len = 0;
  int fd = -1;  // the region's fd, kept for a live upgrade
  uint8_t* host() const { return base + r.mmap_offset; }
  ~Mapping() {
    if (base) ::munmap(base, len);
    if (fd >= 0) ::close(fd);
  }
};

struct Session::Vring {
  uint32_t num = 0;
  bool addr_set = false;
  VringAddr addr{};
  uint32_t base = 0;
  int kick = -1, err = -1;
  bool started = false, enabled = false;
  std::unique_ptr<DeviceQueue> queue;  // built, not held by the device
  DeviceQueue* running = nullptr;      // held by the active device
};

// Used-buffer interrupts: the ring's call eventfd, which the front-end may
// replace at any time (QEMU swaps it when the guest masks the vector).
//
// Coalescing (DeviceStats::coalesce_*, set at run time): an interrupt raised
// on the device thread while the session serves (a Pass: OnKick, Serve,
// OnDeviceEvents, or the host's BeginPass/EndPass around a kick or a device
// event and the Serve after it) may be held; whatever is held goes out when
// the outermost pass ends, so nothing
// is held while the session sleeps. Interrupts from other threads go at once.
class Session::Interrupts final : public InterruptSink {
 public:
  Interrupts(size_t n, DeviceStats* stats) : call_(n), stats_(stats), coalescer_(stats) {
    for (auto& c : call_) c.store(-1);
  }
  ~Interrupts() override {
    for (auto& c : call_) {
      int fd = c.exchange(-1);
      if (fd >= 0) ::close(fd);
    }
    if (backend_fd_ >= 0) ::close(backend_fd_);
  }
  // The back-end request channel (SET_BACKEND_REQ_FD), for config changes.
  void SetBackendFd(int fd) {
    absl::MutexLock l(&backend_mu_);
    if (backend_fd_ >= 0) ::close(backend_fd_);
    backend_fd_ = fd;
  }
  int backend_fd() {
    absl::MutexLock l(&backend_mu_);
    return backend_fd_;
  }
  int call(uint16_t q) const { return call_[q].load(); }
  void SetCall(uint16_t q, int fd) {
    int old = call_[q].exchange(fd);
    if (old >= 0) ::close(old);
  }
  void QueueInterrupt(uint16_t q) override {
    if (q >= call_.size()) return;
    if (pass_depth_.load(std::memory_order_relaxed) &&
        std::this_thread::get_id() == pass_thread_.load(std::memory_order_relaxed) && coalescer_.Hold(q))
      return;
    Send(q);
  }
  // A serving pass on this (the device) thread; passes nest.
  void BeginPass() {
    if (pass_depth_.load(std::memory_order_relaxed) == 0)
      pass_thread_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    pass_depth_.fetch_add(1, std::memory_order_relaxed);
  }
  void EndPass() {
    if (pass_depth_.fetch_sub(1, std::memory_order_relaxed) > 1) return;
    pass_thread_.store(std::thread::id(), std::memory_order_relaxed);
    coalescer_.Flush(true, [this](uint16_t q) { Send(q); });
  }
  // A config change goes to the front-end as BACKEND_CONFIG_CHANGE_MSG on
  // the back-end request channel (the front-end then reads the config with
  // GET_CONFIG and interrupts the guest). No reply is asked for: the
  // front-end's GET_CONFIG arrives on the main channel, which this session
  // must be free to answer. Without the channel it is only counted.
  void ConfigInterrupt() override {
    config_.fetch_add(1, std::memory_order_relaxed);
    absl::MutexLock l(&backend_mu_);
    if (backend_fd_ < 0) return;
    Header h{};
    h.request = kBackendConfigChangeMsg;
    h.flags = kVersion;
    h.size = 0;
    if (::send(backend_fd_, &h, sizeof h, MSG_DONTWAIT | MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof h))
      config_lost_.fetch_add(1, std::memory_order_relaxed);
  }
  uint64_t sent() const { return sent_.load(std::memory_order_relaxed); }
  uint64_t config_sent() const { return config_.load(std::memory_order_relaxed); }

 private:
  void Send(uint16_t q) {
    sent_.fetch_add(1, std::memory_order_relaxed);
    stats_->interrupts_sent.fetch_add(1, std::memory_order_relaxed);
    SignalForeignEventFd(call_[q].load(std::memory_order_acquire));
  }

  std::vector<std::atomic<int>> call_;
  DeviceStats* stats_;
  InterruptCoalescer coalescer_;       // device thread only
  // Written by the device thread, read by any (a worker's interrupt is never held).
  std::atomic<uint32_t> pass_depth_{0};
  std::atomic<std::thread::id> pass_thread_{};
  std::atomic<uint64_t> sent_{0}, config_{0}, config_lost_{0};
  absl::Mutex backend_mu_;
  int backend_fd_ ABSL_GUARDED_BY(backend_mu_) = -1;
};

Session::Session(std::shared_ptr<VirtioDevice> device, Host* host, SessionOptions options)
    : device_(std::move(device)), host_(host), opts_(std::move(options)) {
  const uint16_t nq = device_->num_queues();
  vrings_.resize(nq);
  active_set_.assign(nq, false);
  irq_ = std::make_shared<Interrupts>(nq, &device_->stats());
  // The device's own config changes (a blk resize, a link change) go to the
  // front-end on the back-end request channel (QEMU then re-reads the
  // config and interrupts the guest).
  device_->set_config_changed_hook([irq = irq_] { irq->ConfigInterrupt(); });
  offered_ = feature::Offer(device_->device_features(), opts_.transport_features) | (1ull << kFeatureProtocolFeatures);
  offered_proto_ = (1ull << proto::kMq) | (1ull << proto::kReplyAck) | (1ull << proto::kConfig) |
                   (1ull << proto::kResetDevice) | (1ull << proto::kConfigureMemSlots) |
                   (1ull << proto::kBackendReq);
  if (opts_.inflight) offered_proto_ |= 1ull << proto::kInflightShmfd;
  // A network device behind a VMM that keeps the control queue: the net
  // messages (RARP after migration, the MTU the VMM configured).
  net_ = dynamic_cast<NetControl*>(device_.get());
  if (net_) offered_proto_ |= (1ull << proto::kRarp) | (1ull << proto::kMtu);
}

Session::~Session() {
  *alive_ = false;
  StopDevice();
  device_->set_config_changed_hook(nullptr);
  for (uint16_t q = 0; q < vrings_.size(); ++q) {
    if (vrings_[q].kick >= 0) host_->UnwatchKick(q);
    CloseFd(vrings_[q].kick);
    CloseFd(vrings_[q].err);
    Retire(vrings_[q].queue);
  }
  logs_.clear();
  packed_logs_.clear();
  if (inflight_map_) ::munmap(inflight_map_, inflight_len_);
  CloseFd(inflight_fd_);
}

uint8_t Session::emulated_status() const {
  if (!owner_) return 0;
  uint8_t s = status::kAcknowledge | status::kDriver;
  if (features_set_) s |= status::kFeaturesOk;
  if (active_) s |= status::kDriverOk;
  if (needs_reset_) s |= status::kDeviceNeedsReset;
  return s;
}

absl::Status Session::Handle(Message& m) {
  counters_.messages++;
  bool replied = false;
  absl::Status s = Dispatch(m, &replied);
  if (!s.ok()) {
    s = absl::Status(s.code(), absl::StrCat(ReqName(m.header.request), ": ", s.message()));
    last_error_ = std::string(s.message());
    return s;
  }
  if (m.need_reply() && Has(acked_proto_, proto::kReplyAck) && !replied) {
    const uint64_t ok = 0;
    return host_->Reply(m.header.request, Bytes(ok), {});
  }
  return absl::OkStatus();
}

absl::Status Session::CheckQueue(uint32_t index, const char* what) const {
  if (index >= vrings_.size())
    return Bad(absl::StrCat(what, " index ", index, " out of range (the device has ", vrings_.size(), " queues)"));
  return absl::OkStatus();
}

absl::Status Session::Dispatch(Message& m, bool* replied) {
  const Req req = m.req();
  const bool needs_owner = !(req == Req::kGetFeatures || req == Req::kGetProtocolFeatures ||
                             req == Req::kSetProtocolFeatures || req == Req::kGetQueueNum ||
                             req == Req::kGetMaxMemSlots || req == Req::kSetOwner || req == Req::kGetConfig ||
                             req == Req::kSetBackendReqFd);  // QEMU sends it right after the protocol features
  if (needs_owner && !owner_) return WrongState("before SET_OWNER");
  // Requests without fds must not carry any (they would leak otherwise; a
  // front-end sending them is confused).
  const bool takes_fds = req == Req::kSetMemTable || req == Req::kAddMemReg || req == Req::kRemMemReg ||
                         req == Req::kSetVringKick || req == Req::kSetVringCall || req == Req::kSetVringErr ||
                         req == Req::kSetInflightFd || req == Req::kSetBackendReqFd;
  if (!takes_fds && !m.fds.empty()) return Bad(absl::StrCat("carries ", m.fds.size(), " unexpected fds"));
  auto u64 = [&](uint64_t* v) -> absl::Status {
    return m.As(v) ? absl::OkStatus() : Bad(absl::StrCat("payload of ", m.payload.size(), " bytes, expected 8"));
  };
  auto state = [&](VringState* v) -> absl::Status {
    return m.As(v) ? absl::OkStatus() : Bad(absl::StrCat("payload of ", m.payload.size(), " bytes, expected 8"));
  };
  auto Need = [&](unsigned bit, const char* name) {
    return Has(acked_proto_, bit) ? absl::OkStatus() : WrongState(absl::StrCat(name, " not negotiated"));
  };
  auto reply_u64 = [&](uint64_t v) {
    *replied = true;
    return host_->Reply(m.header.request, Bytes(v), {});
  };
  switch (req) {
    case Req::kGetFeatures:
      return reply_u64(offered_);
    case Req::kSetFeatures: {
      uint64_t v = 0;
      if (auto s = u64(&v); !s.ok()) return s;
      if (v & ~offered_) {
        counters_.features_refused++;
        return Bad(absl::StrFormat("features 0x%x include bits not offered (0x%x)", v, v & ~offered_));
      }
      if (active_ && v != acked_) return WrongState("features changed while the device runs");
      acked_ = v;
      features_set_ = true;
      if (!Has(v, kFeatureProtocolFeatures))
        for (auto& vr : vrings_) vr.enabled = true;  // no SET_VRING_ENABLE without protocol features
      return Reconcile();
    }
    case Req::kSetOwner:
      if (!m.payload.empty()) return Bad("unexpected payload");
      if (owner_) return WrongState("the session already has an owner");
      owner_ = true;
      return absl::OkStatus();
    case Req::kResetOwner:
      return ResetRings();
    case Req::kGetProtocolFeatures:
      return reply_u64(offered_proto_);
    case Req::kSetProtocolFeatures: {
      uint64_t v = 0;
      if (auto s = u64(&v); !s.ok()) return s;
      if (v & ~offered_proto_)
        return Bad(absl::StrFormat("protocol features 0x%x include bits not offered (0x%x)", v, v & ~offered_proto_));
      acked_proto_ = v;
      return absl::OkStatus();
    }
    case Req::kGetQueueNum:
      // For a network device the front-end counts queue pairs (QEMU's
      // net/vhost-user.c compares its queues= with this).
      return reply_u64(net_ ? net_->max_queue_pairs() : vrings_.size());
    case Req::kSendRarp: {
      if (auto s = Need(proto::kRarp, "RARP"); !s.ok()) return s;
      if (!net_) return Bad("not a network device");
      if (m.payload.size() != 8) return Bad(absl::StrCat("payload of ", m.payload.size(), " bytes, expected 8"));
      net_->SendRarp(m.payload.data());  // the MAC in the first 6 bytes
      return absl::OkStatus();
    }
    case Req::kNetSetMtu: {
      if (auto s = Need(proto::kMtu, "NET_MTU"); !s.ok()) return s;
      if (!net_) return Bad("not a network device");
      uint64_t v = 0;
      if (auto s = u64(&v); !s.ok()) return s;
      absl::Status set = v > 0xffff ? absl::InvalidArgumentError(absl::StrCat("MTU ", v)) : net_->SetMtu(static_cast<uint16_t>(v));
      if (set.ok()) return set;
      last_error_ = std::string(set.message());
      if (m.need_reply() && Has(acked_proto_, proto::kReplyAck)) {
        // REPLY_ACK: the front-end hears the refusal and keeps the connection.
        *replied = true;
        const uint64_t fail = 1;
        return host_->Reply(m.header.request, Bytes(fail), {});
      }
      return Bad(std::string(set.message()));
    }
    case Req::kGetMaxMemSlots:
      return reply_u64(kMaxMemSlots);
    case Req::kSetMemTable:
      return SetMemTable(m);
    case Req::kAddMemReg:
      if (auto s = Need(proto::kConfigureMemSlots, "CONFIGURE_MEM_SLOTS"); !s.ok()) return s;
      return AddMemReg(m);
    case Req::kRemMemReg:
      if (auto s = Need(proto::kConfigureMemSlots, "CONFIGURE_MEM_SLOTS"); !s.ok()) return s;
      return RemMemReg(m);
    case Req::kSetVringNum: {
      VringState v{};
      if (auto s = state(&v); !s.ok()) return s;
      if (auto s = CheckQueue(v.index, "queue"); !s.ok()) return s;
      Vring& vr = vrings_[v.index];
      if (vr.started) return WrongState(absl::StrCat("queue ", v.index, " is running"));
      const bool packed = Has(acked_, feature::kRingPacked);
      if (v.num == 0 || v.num > device_->max_queue_size())
        return Bad(absl::StrCat("queue ", v.index, " size ", v.num, " is above the device's maximum ",
                                device_->max_queue_size()));
      if (!packed && (v.num & (v.num - 1)))
        return Bad(absl::StrCat("queue ", v.index, " size ", v.num, " is not a power of 2 (split ring)"));
      vr.num = v.num;
      Retire(vr.queue);
      return absl::OkStatus();
    }
    case Req::kSetVringAddr: {
      VringAddr a{};
      if (!m.As(&a)) return Bad(absl::StrCat("payload of ", m.payload.size(), " bytes, expected 40"));
      if (auto s = CheckQueue(a.index, "queue"); !s.ok()) return s;
      if (a.flags & 1) return Bad("dirty logging requested (LOG_SHMFD not negotiated)");
      Vring& vr = vrings_[a.index];
      if (vr.started) {
        if (a.desc == vr.addr.desc && a.avail == vr.addr.avail && a.used == vr.addr.used) return absl::OkStatus();
        return WrongState(absl::StrCat("queue ", a.index, " is running; its ring cannot move"));
      }
      vr.addr = a;
      vr.addr_set = true;
      Retire(vr.queue);
      if (memory_) {
        uint64_t d, av, u;
        return TranslateRing(a.index, &d, &av, &u);
      }
      return absl::OkStatus();
    }
    case Req::kSetVringBase: {
      VringState v{};
      if (auto s = state(&v); !s.ok()) return s;
      if (auto s = CheckQueue(v.index, "queue"); !s.ok()) return s;
      Vring& vr = vrings_[v.index];
      if (vr.started) return WrongState(absl::StrCat("queue ", v.index, " is running"));
      vr.base = v.num;
      Retire(vr.queue);
      return absl::OkStatus();
    }
    case Req::kGetVringBase:
      *replied = true;
      return GetVringBase(m);
    case Req::kSetVringKick:
      return SetVringFd(m, 0);
    case Req::kSetVringCall:
      return SetVringFd(m, 1);
    case Req::kSetVringErr:
      return SetVringFd(m, 2);
    case Req::kSetVringEnable: {
      VringState v{};
      if (auto s = state(&v); !s.ok()) return s;
      if (auto s = CheckQueue(v.index, "queue"); !s.ok()) return s;
      if (!Has(acked_, kFeatureProtocolFeatures) && features_set_)
        return WrongState("SET_VRING_ENABLE without PROTOCOL_FEATURES");
      if (v.num > 1) return Bad(absl::StrCat("enable value ", v.num));
      vrings_[v.index].enabled = v.num == 1;
      return Reconcile();
    }
    case Req::kGetConfig:
      *replied = true;
      return GetConfig(m);
    case Req::kSetConfig:
      return SetConfig(m);
    case Req::kGetInflightFd:
      if (auto s = Need(proto::kInflightShmfd, "INFLIGHT_SHMFD"); !s.ok()) return s;
      *replied = true;
      return GetInflight(m);
    case Req::kSetInflightFd:
      if (auto s = Need(proto::kInflightShmfd, "INFLIGHT_SHMFD"); !s.ok()) return s;
      return SetInflight(m);
    case Req::kResetDevice:
      if (auto s = Need(proto::kResetDevice, "RESET_DEVICE"); !s.ok()) return s;
      return ResetRings();
    case Req::kSetBackendReqFd:
      if (auto s = Need(proto::kBackendReq, "BACKEND_REQ"); !s.ok()) return s;
      if (!m.payload.empty()) return Bad(absl::StrCat("payload of ", m.payload.size(), " bytes, expected none"));
      if (m.fds.size() != 1) return Bad(absl::StrCat(m.fds.size(), " fds, expected 1 (a socket)"));
      irq_->SetBackendFd(m.TakeFd(0));
      return absl::OkStatus();
    default:
      return Bad(absl::StrCat("request ", m.header.request, " is not supported by this back-end"));
  }
}

absl::Status Session::ResetRings() {
  StopDevice();
  for (uint16_t q = 0; q < vrings_.size(); ++q) {
    Vring& vr = vrings_[q];
    if (vr.kick >= 0) host_->UnwatchKick(q);
    CloseFd(vr.kick);
    CloseFd(vr.err);
    irq_->SetCall(q, -1);
    vr = Vring();
  }
  acked_ = 0;
  features_set_ = false;
  needs_reset_ = false;
  ForgetInflight(inflight_map_, inflight_queues_, inflight_stride_);  // a reset device has nothing in flight
  return absl::OkStatus();
}

// ---- memory ----------------------------------------------------------------

namespace {

// Maps one region after checking everything the front-end claims about it.
absl::Status MapRegion(const MemRegion& r, int fd, bool unsealed_ok, uint8_t** base, size_t* len) {
  if (r.memory_size == 0) return Bad("region of size 0");
  if (r.guest_phys_addr + r.memory_size < r.guest_phys_addr || r.userspace_addr + r.memory_size < r.userspace_addr ||
      r.mmap_offset + r.memory_size < r.mmap_offset)
    return Bad(absl::StrFormat("region at guest 0x%x size 0x%x wraps around", r.guest_phys_addr, r.memory_size));
  // The device reads and writes ring fields in place (16-bit atomics), so a
  // guest address must keep its alignment in the mapping (which starts at a
  // page): guest address and fd offset must agree modulo the largest ring
  // alignment (16, the descriptor table's). Front-ends send page-aligned regions.
  if ((r.mmap_offset - r.guest_phys_addr) % 16 != 0)
    return Bad(absl::StrFormat("region at guest 0x%x starts at fd offset 0x%x: misaligned in the mapping",
                               r.guest_phys_addr, r.mmap_offset));
  if (fd < 0) return Bad("region without an fd");
  struct stat st;
  if (::fstat(fd, &st) != 0) return Bad(absl::StrCat("region fd: ", std::strerror(errno)));
  if (!S_ISREG(st.st_mode)) return Bad("region fd is not a memory file");
  if (static_cast<uint64_t>(st.st_size) < r.mmap_offset + r.memory_size)
    return Bad(absl::StrFormat("region [0x%x, +0x%x) of its fd lies past the file's end (0x%x)", r.mmap_offset,
                               r.memory_size, st.st_size));
  // A memfd the front-end could still shrink would SIGBUS us later.
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals >= 0 && !(seals & F_SEAL_SHRINK) && !unsealed_ok)
    return Bad("region memfd is not sealed against shrinking (F_SEAL_SHRINK; memory=any takes it from a trusted front-end)");
  const size_t l = r.mmap_offset + r.memory_size;
  void* p = ::mmap(nullptr, l, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("mmap of a region: ", std::strerror(errno)));
  *base = static_cast<uint8_t*>(p);
  *len = l;
  return absl::OkStatus();
}

// The guest memory the device sees, owning the mappings it points into.
struct OwnedMemory {
  std::vector<std::shared_ptr<void>> keep;
  RegionMemory mem;
};

}  // namespace

absl::Status Session::SetMemTable(Message& m) {
  MemTableHeader h;
  if (!m.AtLeast(&h)) return Bad("payload shorter than its region count");
  if (h.nregions == 0 || h.nregions > kMaxMemRegions)
    return Bad(absl::StrCat(h.nregions, " regions (1 to ", kMaxMemRegions, ")"));
  if (m.payload.size() != sizeof h + h.nregions * sizeof(MemRegion))
    return Bad(absl::StrCat("payload of ", m.payload.size(), " bytes for ", h.nregions, " regions"));
  if (m.fds.size() != h.nregions) return Bad(absl::StrCat(m.fds.size(), " fds for ", h.nregions, " regions"));
  std::vector<std::shared_ptr<Mapping>> maps;
  for (uint32_t i = 0; i < h.nregions; ++i) {
    auto mp = std::make_shared<Mapping>();
    std::memcpy(&mp->r, m.payload.data() + sizeof h + i * sizeof(MemRegion), sizeof(MemRegion));
    absl::Status s = MapRegion(mp->r, m.fds[i], opts_.unsealed_memory, &mp->base, &mp->len);
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat("region ", i, ": ", s.message()));
    mp->fd = m.TakeFd(i);
    maps.push_back(std::move(mp));
  }
  return InstallMemory(std::move(maps));
}

absl::Status Session::AddMemReg(Message& m) {
  SingleMemRegion r;
  if (!m.As(&r)) return Bad(absl::StrCat("payload of ", m.payload.size(), " bytes, expected ", sizeof r));
  if (m.fds.size() != 1) return Bad(absl::StrCat(m.fds.size(), " fds, expected 1"));
  // QEMU 7.2 sends the regions once per vhost device, and a multiqueue net
  // device is one vhost device per queue pair on one connection: the same
  // region again is a reference, not an overlap.
  for (const auto& mp : maps_) {
    if (mp->r.guest_phys_addr == r.region.guest_phys_addr && mp->r.memory_size == r.region.memory_size &&
        mp->r.userspace_addr == r.region.userspace_addr && mp->r.mmap_offset == r.region.mmap_offset) {
      if (mp->refs >= kMaxMemSlots) return Bad("the same region added too many times");
      mp->refs++;
      counters_.duplicate_regions++;
      return absl::OkStatus();
    }
  }
  if (maps_.size() >= kMaxMemSlots) return Bad(absl::StrCat("more than ", kMaxMemSlots, " memory slots"));
  auto mp = std::make_shared<Mapping>();
  mp->r = r.region;
  if (absl::Status s = MapRegion(mp->r, m.fds[0], opts_.unsealed_memory, &mp->base, &mp->len); !s.ok()) return s;
  mp->fd = m.TakeFd(0);
  auto maps = maps_;
  maps.push_back(std::move(mp));
  return InstallMemory(std::move(maps));
}

absl::Status Session::RemMemReg(Message& m) {
  SingleMemRegion r;
  if (!m.As(&r)) return Bad(absl::StrCat("payload of ", m.payload.size(), " bytes, expected ", sizeof r));
  if (m.fds.size() > 1) return Bad(absl::StrCat(m.fds.size(), " fds, expected at most 1"));
  auto maps = maps_;
  for (auto it = maps.begin(); it != maps.end(); ++it) {
    const MemRegion& x = (*it)->r;
    if (x.guest_phys_addr == r.region.guest_phys_addr && x.memory_size == r.region.memory_size &&
        x.userspace_addr == r.region.userspace_addr) {
      if ((*it)->refs > 1) {
        (*it)->refs--;
        return absl::OkStatus();
      }
      maps.erase(it);
      return InstallMemory(std::move(maps));
    }
  }
  return Bad(absl::StrFormat("no region at guest 0x%x size 0x%x to remove", r.region.guest_phys_addr,
                             r.region.memory_size));
}

absl::Status Session::InstallMemory(std::vector<std::shared_ptr<Mapping>> maps) {
  auto owned = std::make_shared<OwnedMemory>();
  for (size_t i = 0; i < maps.size(); ++i) {
    const MemRegion& r = maps[i]->r;
    for (size_t j = 0; j < i; ++j) {
      const MemRegion& o = maps[j]->r;
      if (r.userspace_addr < o.userspace_addr + o.memory_size && o.userspace_addr < r.userspace_addr + r.memory_size)
        return Bad(absl::StrFormat("regions %d and %d overlap in the front-end's address space", j, i));
    }
    if (absl::Status s = owned->mem.AddRegion({r.guest_phys_addr, r.memory_size, maps[i]->host(), Access::kReadWrite});
        !s.ok())
      return Bad(absl::StrCat("region ", i, ": ", s.message()));
    owned->keep.push_back(maps[i]);
  }
  // The device keeps using the old memory until it is stopped.
  DropQueues();
  maps_ = std::move(maps);
  memory_ = std::shared_ptr<GuestMemory>(owned, &owned->mem);
  for (uint16_t q = 0; q < vrings_.size(); ++q) {
    if (!vrings_[q].addr_set) continue;
    uint64_t d, a, u;
    if (absl::Status s = TranslateRing(q, &d, &a, &u); !s.ok()) return s;
  }
  return Reconcile();
}

absl::Status Session::TranslateRing(uint16_t q, uint64_t* desc, uint64_t* avail, uint64_t* used) const {
  const VringAddr& a = vrings_[q].addr;
  auto tr = [&](uint64_t va, const char* what, uint64_t* out) -> absl::Status {
    for (const auto& mp : maps_) {
      const MemRegion& r = mp->r;
      if (va >= r.userspace_addr && va - r.userspace_addr < r.memory_size) {
        *out = va - r.userspace_addr + r.guest_phys_addr;
        return absl::OkStatus();
      }
    }
    return Bad(absl::StrFormat("queue %d: %s ring address 0x%x is outside every memory region", q, what, va));
  };
  if (auto s = tr(a.desc, "descriptor", desc); !s.ok()) return s;
  if (auto s = tr(a.avail, "available", avail); !s.ok()) return s;
  return tr(a.used, "used", used);
}

// ---- rings ---------------------------------------------------------------

absl::Status Session::SetVringFd(Message& m, int which) {
  uint64_t v = 0;
  if (!m.As(&v)) return Bad(absl::StrCat("payload of ", m.payload.size(), " bytes, expected 8"));
  if (v & ~(kVringIndexMask | kVringNoFd)) return Bad(absl::StrFormat("unknown bits in 0x%x", v));
  const uint32_t q = static_cast<uint32_t>(v & kVringIndexMask);
  if (auto s = CheckQueue(q, "queue"); !s.ok()) return s;
  const bool nofd = v & kVringNoFd;
  if (m.fds.size() != (nofd ? 0u : 1u))
    return Bad(absl::StrCat(m.fds.size(), " fds with ", nofd ? "the no-fd flag" : "an fd request"));
  Vring& vr = vrings_[q];
  const int fd = nofd ? -1 : m.TakeFd(0);
  switch (which) {
    case 0:  // kick: the first one starts the ring
      if (nofd) return Bad("rings without a kick fd (polling) are not supported");
      if (vr.kick >= 0) host_->UnwatchKick(static_cast<uint16_t>(q));
      CloseFd(vr.kick);
      vr.kick = fd;
      host_->WatchKick(static_cast<uint16_t>(q), fd);
      vr.started = true;
      return Reconcile();
    case 1:
      irq_->SetCall(static_cast<uint16_t>(q), fd);
      return absl::OkStatus();
    default:
      CloseFd(vr.err);
      vr.err = fd;
      return absl::OkStatus();
  }
}

absl::Status Session::GetVringBase(Message& m) {
  VringState v{};
  if (!m.As(&v)) return Bad(absl::StrCat("payload of ", m.payload.size(), " bytes, expected 8"));
  if (auto s = CheckQueue(v.index, "queue"); !s.ok()) return s;
  Vring& vr = vrings_[v.index];
  if (vr.started) {
    // Stopping a ring: every request it has in flight completes first, so
    // the base we return is exact and nothing is lost.
    StopDevice();
    if (vr.queue) vr.base = vr.queue->GetBase();
    Retire(vr.queue);
    vr.started = false;
    host_->UnwatchKick(static_cast<uint16_t>(v.index));
    CloseFd(vr.kick);
  }
  VringState out{v.index, vr.base};
  if (absl::Status s = host_->Reply(m.header.request, Bytes(out), {}); !s.ok()) return s;
  bool any = false;
  for (const auto& r : vrings_) any |= r.started;
  if (!any && needs_reset_) {
    // The front-end is restarting the device after a ring error: the driver
    // resets, so the requests the broken rings had in flight are void.
    needs_reset_ = false;
    ForgetInflight(inflight_map_, inflight_queues_, inflight_stride_);
  }
  return Reconcile();
}

absl::Status Session::GetConfig(Message& m) {
  ConfigHeader h;
  if (!m.AtLeast(&h)) return Bad("payload shorter than the config header");
  if (h.size > kMaxConfigSize) return Bad(absl::StrCat("config size ", h.size, " (limit ", kMaxConfigSize, ")"));
  if (m.payload.size() != sizeof h + h.size)
    return Bad(absl::StrCat("payload of ", m.payload.size(), " bytes for ", h.size, " config bytes"));
  std::vector<uint8_t> out(sizeof h + h.size, 0);
  const uint32_t cs = device_->config_size();
  if (h.offset > cs) {
    h.size = 0;  // "size 0 means error"
    out.resize(sizeof h);
  } else {
    const uint32_t n = std::min(h.size, cs - h.offset);
    if (n) device_->ReadConfig(h.offset, {out.data() + sizeof h, n});
  }
  std::memcpy(out.data(), &h, sizeof h);
  return host_->Reply(m.header.request, out, {});
}

absl::Status Session::SetConfig(Message& m) {
  ConfigHeader h;
  if (!m.AtLeast(&h)) return Bad("payload shorter than the config header");
  if (h.size > kMaxConfigSize) return Bad(absl::StrCat("config size ", h.size, " (limit ", kMaxConfigSize, ")"));
  if (m.payload.size() != sizeof h + h.size)
    return Bad(absl::StrCat("payload of ", m.payload.size(), " bytes for ", h.size, " config bytes"));
  if (h.flags > kConfigFlagMigration) return Bad(absl::StrCat("config flags ", h.flags));
  if (!Has(acked_proto_, proto::kConfig)) return WrongState("CONFIG not negotiated");
  const uint32_t cs = device_->config_size();
  if (h.offset > cs || h.size > cs - h.offset) {
    VIOPORT_LOG(kWarning, opts_.name, ": SET_CONFIG at ", h.offset, "+", h.size, " past the config space ignored");
    return absl::OkStatus();
  }
  if (h.size) device_->WriteConfig(h.offset, {m.payload.data() + sizeof h, h.size});
  return absl::OkStatus();
}

// ---- in-flight log ---------------------------------------------------------

absl::Status Session::GetInflight(Message& m) {
  Inflight in;
  if (!m.As(&in)) return Bad(absl::StrCat("payload of ", m.payload.size(), " bytes, expected ", sizeof in));
  if (in.num_queues == 0 || in.num_queues > vrings_.size())
    return Bad(absl::StrCat(in.num_queues, " queues (the device has ", vrings_.size(), ")"));
  if (in.queue_size == 0 || in.queue_size > kMaxQueueSize) return Bad(absl::StrCat("queue size ", in.queue_size));
  const size_t size = in.num_queues * InflightQueueBytes(in.queue_size);
  const int fd = ::memfd_create("vios-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return absl::ResourceExhaustedError(absl::StrCat("memfd_create: ", std::strerror(errno)));
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0 ||
      ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    const int e = errno;
    ::close(fd);
    return absl::ResourceExhaustedError(absl::StrCat("in-flight memfd: ", std::strerror(e)));
  }
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    const int e = errno;
    ::close(fd);
    return absl::ResourceExhaustedError(absl::StrCat("in-flight mmap: ", std::strerror(e)));
  }
  DropQueues();
  logs_.clear();
  packed_logs_.clear();
  if (inflight_map_) ::munmap(inflight_map_, inflight_len_);
  inflight_map_ = static_cast<uint8_t*>(p);
  inflight_len_ = size;
  inflight_stride_ = InflightQueueBytes(in.queue_size);
  inflight_queues_ = in.num_queues;
  inflight_qsize_ = in.queue_size;
  inflight_offset_ = 0;
  CloseFd(inflight_fd_);
  inflight_fd_ = fd;
  Inflight out{size, 0, in.num_queues, in.queue_size};
  const int fds[1] = {fd};
  absl::Status s = host_->Reply(m.header.request, Bytes(out), fds);
  if (!s.ok()) return s;
  return Reconcile();
}

absl::Status Session::SetInflight(Message& m) {
  Inflight in;
  if (!m.As(&in)) return Bad(absl::StrCat("payload of ", m.payload.size(), " bytes, expected ", sizeof in));
  if (m.fds.size() != 1) return Bad(absl::StrCat(m.fds.size(), " fds, expected 1"));
  if (in.num_queues == 0 || in.num_queues > vrings_.size())
    return Bad(absl::StrCat(in.num_queues, " queues (the device has ", vrings_.size(), ")"));
  if (in.queue_size == 0 || in.queue_size > kMaxQueueSize) return Bad(absl::StrCat("queue size ", in.queue_size));
  const size_t need = in.num_queues * SplitInflightLog::RegionBytes(in.queue_size);
  if (in.mmap_size < need || in.mmap_size > (uint64_t{1} << 32))
    return Bad(absl::StrCat("in-flight area of ", in.mmap_size, " bytes for ", in.num_queues, " queues of ",
                            in.queue_size, " (needs ", need, ")"));
  if (in.mmap_offset % 4096) return Bad("in-flight area offset not page aligned");
  const int fd = m.fds[0];
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
      static_cast<uint64_t>(st.st_size) < in.mmap_offset + in.mmap_size || in.mmap_offset + in.mmap_size < in.mmap_offset)
    return Bad("in-flight fd is not a memory file that large");
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals >= 0 && !(seals & F_SEAL_SHRINK)) return Bad("in-flight memfd is not sealed against shrinking");
  void* p = ::mmap(nullptr, in.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(in.mmap_offset));
  if (p == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("in-flight mmap: ", std::strerror(errno)));
  DropQueues();
  logs_.clear();
  packed_logs_.clear();
  if (inflight_map_) ::munmap(inflight_map_, inflight_len_);
  inflight_map_ = static_cast<uint8_t*>(p);
  inflight_len_ = in.mmap_size;
  // The area may come from a back-end that sized it for split rings only
  // (an older vios): each queue's share is what divides evenly.
  inflight_stride_ = (in.mmap_size / in.num_queues) & ~uint64_t{63};
  inflight_queues_ = in.num_queues;
  inflight_qsize_ = in.queue_size;
  inflight_offset_ = in.mmap_offset;
  CloseFd(inflight_fd_);
  inflight_fd_ = m.TakeFd(0);
  return Reconcile();
}

// ---- the device ------------------------------------------------------------

void Session::StopDevice(bool flush) {
  if (!active_) return;
  if (absl::Status s = flush ? device_->Quiesce() : device_->Drain(); !s.ok())
    VIOPORT_LOG(kWarning, opts_.name, ": completing in-flight requests: ", s.message());
  ActivateContext ctx = device_->Reset();
  for (size_t q = 0; q < ctx.queues.size() && q < vrings_.size(); ++q) {
    if (ctx.queues[q]) vrings_[q].queue = std::move(ctx.queues[q]);
    vrings_[q].running = nullptr;
  }
  active_ = false;
  active_set_.assign(vrings_.size(), false);
  counters_.device_resets++;
}

void Session::DropQueues() {
  StopDevice();
  for (auto& vr : vrings_) {
    if (vr.queue) vr.base = vr.queue->GetBase();
    Retire(vr.queue);
  }
}

absl::Status Session::BuildQueue(uint16_t q) {
  Vring& vr = vrings_[q];
  if (!memory_) return WrongState(absl::StrCat("queue ", q, " started before SET_MEM_TABLE"));
  if (vr.num == 0) return WrongState(absl::StrCat("queue ", q, " started without SET_VRING_NUM"));
  if (!vr.addr_set) return WrongState(absl::StrCat("queue ", q, " started without SET_VRING_ADDR"));
  QueueConfig cfg;
  cfg.index = q;
  cfg.size = vr.num;
  if (absl::Status s = TranslateRing(q, &cfg.desc_addr, &cfg.driver_addr, &cfg.device_addr); !s.ok()) return s;
  cfg.features = acked_ & ~(1ull << kFeatureProtocolFeatures);
  std::weak_ptr<bool> alive = alive_;
  QueueErrorHandler on_error = [this, alive](uint16_t idx, RingError e) {
    if (auto a = alive.lock(); a && *a) OnRingError(idx, e);
  };
  std::unique_ptr<DeviceQueue> dq;
  if (RingError e = DeviceQueue::Create(cfg, memory_.get(), on_error, &dq); e != RingError::kNone)
    return Bad(absl::StrCat("queue ", q, ": ", RingErrorName(e)));
  dq->SetBase(vr.base);
  device_->AttachStats(*dq);
  if (inflight_map_ && q < inflight_queues_ && vr.num <= inflight_qsize_) {
    uint8_t* region = inflight_map_ + q * inflight_stride_;
    const uint16_t num = static_cast<uint16_t>(vr.num);
    absl::Status s;
    if (logs_.size() < vrings_.size()) logs_.resize(vrings_.size());
    if (packed_logs_.size() < vrings_.size()) packed_logs_.resize(vrings_.size());
    if (auto* split = dynamic_cast<SplitDeviceQueue*>(dq.get())) {
      logs_[q] = std::make_unique<SplitInflightLog>(region, num);
      s = split->UseInflightLog(logs_[q].get());
    } else if (auto* packed = dynamic_cast<PackedDeviceQueue*>(dq.get());
               packed && inflight_stride_ >= PackedInflightLog::RegionBytes(num)) {
      packed_logs_[q] = std::make_unique<PackedInflightLog>(region, num);
      s = packed->UseInflightLog(packed_logs_[q].get());
    } else if (packed) {
      VIOPORT_LOG(kWarning, opts_.name, ": queue ", q, ": the in-flight area (", inflight_stride_,
                  " bytes a queue) is too small for a packed ring of ", num, "; running without the log");
    }
    if (!s.ok())
      VIOPORT_LOG(kWarning, opts_.name, ": queue ", q, ": in-flight log not recovered (", s.message(), "); starting afresh");
    else if (dq->GetBase() != vr.base)
      VIOPORT_LOG(kInfo, opts_.name, ": queue ", q, ": the in-flight log puts the ring at base 0x", absl::Hex(dq->GetBase()),
                  " (the front-end sent 0x", absl::Hex(vr.base), ")");
    if (dq->resubmit_pending())
      VIOPORT_LOG(kInfo, opts_.name, ": queue ", q, ": resubmitting ", dq->resubmit_pending(),
                  " requests left in flight by an earlier vios");
  }
  vr.queue = std::move(dq);
  return absl::OkStatus();
}

absl::Status Session::Reconcile() {
  std::vector<bool> want(vrings_.size(), false);
  bool any = false;
  if (features_set_ && !needs_reset_) {
    for (size_t q = 0; q < vrings_.size(); ++q) {
      want[q] = vrings_[q].started && vrings_[q].enabled;
      any |= want[q];
    }
  }
  if (active_ && want == active_set_) return absl::OkStatus();
  StopDevice();
  if (!any) return absl::OkStatus();
  ActivateContext ctx;
  ctx.features = acked_ & ~(1ull << kFeatureProtocolFeatures);
  ctx.memory = memory_;
  ctx.interrupt = irq_;
  ctx.queues.resize(vrings_.size());
  for (uint16_t q = 0; q < vrings_.size(); ++q) {
    if (!want[q]) continue;
    if (!vrings_[q].queue)
      if (absl::Status s = BuildQueue(q); !s.ok()) {
        // Give back what was built so far; the connection is closed anyway.
        for (uint16_t k = 0; k < q; ++k)
          if (ctx.queues[k]) vrings_[k].queue = std::move(ctx.queues[k]);
        return s;
      }
    // Everything is completed and published here, so the base is exact: if
    // the device refuses to start, the queue is rebuilt from it later.
    vrings_[q].base = vrings_[q].queue->GetBase();
    vrings_[q].running = vrings_[q].queue.get();
    ctx.queues[q] = std::move(vrings_[q].queue);
  }
  if (absl::Status s = device_->Activate(std::move(ctx)); !s.ok()) {
    // Rings start one message at a time; a device that needs several (a
    // console's receive and transmit queues) refuses until the last one runs.
    // Not an error yet: wait for the front-end to start more rings.
    for (auto& vr : vrings_) vr.running = nullptr;
    counters_.activation_refusals++;
    last_error_ = absl::StrCat("device not started: ", s.message());
    VIOPORT_LOG(kDebug, opts_.name, ": ", last_error_, " (waiting for more rings)");
    return absl::OkStatus();
  }
  last_error_.clear();
  // Counted once the device runs: a refused start rebuilds and recovers again.
  for (uint16_t q = 0; q < vrings_.size(); ++q)
    if (vrings_[q].running) counters_.resubmitted += vrings_[q].running->resubmit_pending();
  active_ = true;
  active_set_ = want;
  counters_.activations++;
  // Kicks may have come before the ring ran, and recovered requests wait.
  std::weak_ptr<bool> alive = alive_;
  host_->Defer([this, alive] {
    if (auto a = alive.lock(); a && *a) Serve(0);
  });
  return absl::OkStatus();
}

void Session::OnRingError(uint16_t q, RingError e) {
  counters_.ring_errors++;
  if (needs_reset_) return;
  needs_reset_ = true;
  last_error_ = absl::StrCat("queue ", q, ": ", RingErrorName(e));
  VIOPORT_LOG(kWarning, opts_.name, ": ", last_error_, " - device stopped until the front-end resets it");
  if (q < vrings_.size()) SignalForeignEventFd(vrings_[q].err);
  // Not from inside the device's call stack: stop it once it has returned.
  std::weak_ptr<bool> alive = alive_;
  host_->Defer([this, alive] {
    if (auto a = alive.lock(); a && *a) StopDevice();
  });
}

// Brackets a serving pass: interrupts raised in it may be held (coalescing)
// and go out when it ends.
class Session::Pass {
 public:
  explicit Pass(Interrupts& irq) : irq_(irq) { irq_.BeginPass(); }
  ~Pass() { irq_.EndPass(); }
  Pass(const Pass&) = delete;
  Pass& operator=(const Pass&) = delete;

 private:
  Interrupts& irq_;
};

void Session::BeginPass() { irq_->BeginPass(); }
void Session::EndPass() { irq_->EndPass(); }

void Session::OnKick(uint16_t q) {
  counters_.kicks++;
  if (!active_ || needs_reset_ || q >= active_set_.size() || !active_set_[q]) return;
  Pass pass(*irq_);  // the device may complete requests right here
  device_->QueueNotify(q);
}

bool Session::OnDeviceEvents() {
  if (!active_) return false;
  Pass pass(*irq_);
  return device_->ProcessEvents();
}

void Session::Serve(uint32_t spin_us) {
  Pass pass(*irq_);
  using Clock = std::chrono::steady_clock;
  const auto window = std::chrono::microseconds(spin_us);
  const auto start = Clock::now();
  auto idle_until = start + window;
  const auto hard_stop = start + 20 * window;
  std::optional<BusyPollEpisode> episode;
  if (spin_us) episode.emplace(device_->stats(), spin_us);
  for (;;) {
    if (!active_ || needs_reset_) return;
    bool progress = device_->ProcessEvents();
    for (uint16_t i = 0; i < vrings_.size(); ++i) {
      const DeviceQueue* dq = active_set_[i] ? vrings_[i].running : nullptr;
      if (!dq) continue;
      const uint64_t before = dq->counters().popped;
      device_->QueueNotify(i);
      if (!active_) return;
      progress |= dq->counters().popped != before || dq->in_flight() != 0;
    }
    if (!spin_us) return;
    episode->Pass(progress);
    const auto now = Clock::now();
    if (progress) idle_until = now + window;
    if (now >= idle_until || now >= hard_stop) return;
  }
}

SessionCounters Session::counters() const {
  SessionCounters c = counters_;
  c.queue_interrupts = irq_->sent();
  return c;
}

void Session::Retire(std::unique_ptr<DeviceQueue>& q) {
  if (!q) return;
  retired_.requests += q->counters().completed;
  retired_.bytes_in += q->counters().bytes_in;
  retired_.bytes_out += q->counters().bytes_out;
  q.reset();
}

TransportCounters Session::transport_counters() const {
  TransportCounters t = retired_;
  for (const Vring& vr : vrings_) {
    const DeviceQueue* q = vr.running ? vr.running : vr.queue.get();
    if (!q) continue;
    t.requests += q->counters().completed;
    t.bytes_in += q->counters().bytes_in;
    t.bytes_out += q->counters().bytes_out;
  }
  t.ring_errors = counters_.ring_errors;
  t.device_resets = counters_.device_resets;
  t.activations = counters_.activations;
  t.features_refused = counters_.features_refused;
  t.notifications = counters_.kicks;
  t.interrupts = irq_->sent() + irq_->config_sent();
  return t;
}

absl::Status Session::Quiesce() {
  if (!active_) return absl::OkStatus();
  return device_->Quiesce();
}

// ---- live upgrade ----------------------------------------------------------

absl::Status Session::Freeze() {
  if (active_) {
    if (absl::Status s = device_->Drain(); !s.ok()) return s;
    for (const auto& vr : vrings_)
      if (vr.running && vr.running->in_flight())
        return absl::FailedPreconditionError(absl::StrCat("queue still has ", vr.running->in_flight(), " requests in flight"));
  }
  StopDevice(/*flush=*/false);
  for (auto& vr : vrings_) {
    if (vr.queue) vr.base = vr.queue->GetBase();
    Retire(vr.queue);
  }
  return absl::OkStatus();
}

void Session::Save(HandoverWriter* out) const {
  struct Synth {
    Req req;
    std::vector<uint8_t> payload;
    std::vector<int> fds;
  };
  std::vector<Synth> msgs;
  auto add = [&](Req r, std::span<const uint8_t> payload, std::vector<int> fds = {}) {
    msgs.push_back({r, std::vector<uint8_t>(payload.begin(), payload.end()), std::move(fds)});
  };
  if (owner_) add(Req::kSetOwner, {});
  add(Req::kSetProtocolFeatures, Bytes(acked_proto_));
  if (features_set_) add(Req::kSetFeatures, Bytes(acked_));
  if (const int fd = irq_->backend_fd(); fd >= 0) add(Req::kSetBackendReqFd, {}, {fd});
  if (Has(acked_proto_, proto::kConfigureMemSlots)) {
    for (const auto& mp : maps_)
      for (uint32_t i = 0; i < mp->refs; ++i) add(Req::kAddMemReg, Bytes(SingleMemRegion{0, mp->r}), {mp->fd});
  } else if (!maps_.empty()) {
    std::vector<uint8_t> p;
    const MemTableHeader h{static_cast<uint32_t>(maps_.size()), 0};
    p.insert(p.end(), Bytes(h).begin(), Bytes(h).end());
    std::vector<int> fds;
    for (const auto& mp : maps_) {
      p.insert(p.end(), Bytes(mp->r).begin(), Bytes(mp->r).end());
      fds.push_back(mp->fd);
    }
    add(Req::kSetMemTable, p, fds);
  }
  if (inflight_map_ && inflight_fd_ >= 0)
    add(Req::kSetInflightFd, Bytes(Inflight{inflight_len_, inflight_offset_, inflight_queues_, inflight_qsize_}),
        {inflight_fd_});
  for (uint32_t q = 0; q < vrings_.size(); ++q) {
    const Vring& vr = vrings_[q];
    if (vr.num) add(Req::kSetVringNum, Bytes(VringState{q, vr.num}));
    if (vr.addr_set) add(Req::kSetVringAddr, Bytes(vr.addr));
    add(Req::kSetVringBase, Bytes(VringState{q, vr.base}));
    if (const int call = irq_->call(static_cast<uint16_t>(q)); call >= 0)
      add(Req::kSetVringCall, Bytes(uint64_t{q}), {call});
    if (vr.err >= 0) add(Req::kSetVringErr, Bytes(uint64_t{q}), {vr.err});
    if (Has(acked_, kFeatureProtocolFeatures)) add(Req::kSetVringEnable, Bytes(VringState{q, vr.enabled ? 1u : 0u}));
    if (vr.started && vr.kick >= 0) add(Req::kSetVringKick, Bytes(uint64_t{q}), {vr.kick});
  }
  out->U64(msgs.size());
  for (const Synth& m : msgs) {
    out->U64(static_cast<uint32_t>(m.req));
    out->Str(absl::string_view(reinterpret_cast<const char*>(m.payload.data()), m.payload.size()));
    out->U64(m.fds.size());
    for (int fd : m.fds) out->Fd(fd);
  }
  out->U64(needs_reset_ ? 1 : 0);
  out->Str(last_error_);
}

absl::Status Session::Restore(HandoverReader& in) {
  uint64_t n = 0;
  if (absl::Status s = in.U64(&n, 4096, "message count"); !s.ok()) return s;
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t req = 0, nfds = 0;
    std::string payload;
    if (absl::Status s = in.U64(&req, UINT32_MAX, "request"); !s.ok()) return s;
    if (absl::Status s = in.Str(&payload, kMaxPayload, "payload"); !s.ok()) return s;
    if (absl::Status s = in.U64(&nfds, kMaxFds, "fd count"); !s.ok()) return s;
    Message m;
    m.header = Header{static_cast<uint32_t>(req), kVersion, static_cast<uint32_t>(payload.size())};
    m.payload.assign(payload.begin(), payload.end());
    for (uint64_t k = 0; k < nfds; ++k) {
      UniqueFd fd;
      if (absl::Status s = in.Fd(&fd, "message fd"); !s.ok()) return s;
      m.fds.push_back(fd.release());
    }
    const Req r = m.req();
    // Only what a front-end sets: nothing that asks for a reply.
    if (r == Req::kGetFeatures || r == Req::kGetProtocolFeatures || r == Req::kGetVringBase || r == Req::kGetConfig ||
        r == Req::kGetInflightFd || r == Req::kGetQueueNum || r == Req::kGetMaxMemSlots)
      return absl::InvalidArgumentError(absl::StrCat("handed-over message ", ReqName(m.header.request), " asks for a reply"));
    if (absl::Status s = Handle(m); !s.ok()) return s;
  }
  uint64_t reset = 0;
  if (absl::Status s = in.U64(&reset, 1, "needs reset"); !s.ok()) return s;
  if (absl::Status s = in.Str(&last_error_, 4096, "last error"); !s.ok()) return s;
  if (reset) {
    needs_reset_ = true;
    StopDevice(/*flush=*/false);
  }
  return absl::OkStatus();
}

absl::Status Session::Resume() { return Reconcile(); }

}  // namespace vioport::vhost_user
