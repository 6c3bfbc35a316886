// SPDX-License-Identifier: Apache-2.0
#include "vioport/emulators/crq_hypervisor.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_format.h"

namespace vioport::crq {

namespace {
constexpr uint64_t kMaxWindowBytes = 16ull << 30;
constexpr uint64_t kPageMask = kTcePageSize - 1;

uint64_t NormalizeTce(uint64_t tce) { return (tce & kTcePermMask) == 0 ? 0 : MakeTce(tce, tce); }

// The hypercalls Hcall serves: each keeps a place in the statistics.
constexpr uint64_t kKnownOpcodeList[] = {kHRegCrq, kHFreeCrq, kHSendCrq,  kHEnableCrq, kHVioSignal,
                                         kHPutTce, kHGetTce,  kHStuffTce, kHPutTceIndirect, kHCopyRdma};
constexpr size_t kKnownOpcodes = std::size(kKnownOpcodeList);
bool IsKnownOpcode(uint64_t opcode) {
  return std::find(std::begin(kKnownOpcodeList), std::end(kKnownOpcodeList), opcode) != std::end(kKnownOpcodeList);
}
}  // namespace

Hypervisor::~Hypervisor() = default;

void Hypervisor::Delay() const {
  const uint64_t ns = delay_ns_.load(std::memory_order_relaxed);
  if (ns == 0) return;
  if (delay_mode_.load(std::memory_order_relaxed) == DelayMode::kSleep) {
    std::this_thread::sleep_for(std::chrono::nanoseconds(ns));
    return;
  }
  const auto until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(ns);
  while (std::chrono::steady_clock::now() < until) {
  }
}

void Hypervisor::SetHcallDelay(uint64_t nanoseconds, DelayMode mode) {
  delay_mode_.store(mode, std::memory_order_relaxed);
  delay_ns_.store(nanoseconds, std::memory_order_relaxed);
}

template <typename F>
int64_t Hypervisor::Run(uint64_t opcode, F&& body) {
  Delay();
  Pending pending;
  int64_t rc;
  {
    absl::MutexLock lock(&mu_);
    uint64_t bytes = 0;
    rc = body(pending, bytes);
    Count(opcode, rc, bytes);
  }
  Deliver(pending);
  return rc;
}

void Hypervisor::Count(uint64_t opcode, int64_t rc, uint64_t bytes) {
  // Opcodes come from the partition: a new key per unknown one would let it
  // grow the map without bound. Known opcodes (10) always fit.
  auto it = stats_.per_hcall.find(opcode);
  if (it == stats_.per_hcall.end()) {
    // Room for every known opcode is kept; unknown ones share the rest.
    size_t unknown = 0;
    for (const auto& [op, c] : stats_.per_hcall) unknown += IsKnownOpcode(op) ? 0 : 1;
    if (IsKnownOpcode(opcode) || unknown < kMaxTrackedOpcodes - kKnownOpcodes)
      it = stats_.per_hcall.emplace(opcode, HcallCounters{}).first;
  }
  HcallCounters& c = it != stats_.per_hcall.end() ? it->second : stats_.untracked_hcalls;
  ++c.calls;
  if (rc < 0) ++c.errors;
  if (rc != kHSuccess) ++c.not_success;
  c.bytes_copied += bytes;
}

void Hypervisor::Deliver(Pending& pending) {
  for (auto& irq : pending.irqs) {
    if (irq.callback) irq.callback(irq.partition, irq.unit);
  }
}

// ---- Configuration ------------------------------------------------------------

absl::Status Hypervisor::AddPartition(PartitionId id, uint8_t* memory, uint64_t size) {
  if (memory == nullptr || size == 0) return absl::InvalidArgumentError("partition memory is empty");
  absl::MutexLock lock(&mu_);
  Partition& p = partitions_[id];
  if (p.present) return absl::AlreadyExistsError(absl::StrFormat("partition %u is already present", id));
  p.memory = memory;
  p.size = size;
  p.present = true;
  return absl::OkStatus();
}

absl::Status Hypervisor::RemovePartition(PartitionId id) {
  Pending pending;
  {
    absl::MutexLock lock(&mu_);
    Partition* p = PresentPartition(id);
    if (p == nullptr) return absl::NotFoundError(absl::StrFormat("partition %u is not present", id));
    std::vector<Endpoint*> had_queue;
    for (auto& ep : endpoints_) {
      if (ep->partition != id) continue;
      if (!ep->queue_pages.empty()) had_queue.push_back(ep.get());
      Detach(*ep);
      ep->free_busy = 0;
      ep->drop_next = 0;
      ep->full_next = 0;
      std::fill(ep->window->tces.begin(), ep->window->tces.end(), 0);
    }
    // Forgotten, not just marked absent: ids come from HELLOs, and a record
    // per id ever seen would grow without bound. A restart adds it anew.
    partitions_.erase(id);
    for (Endpoint* ep : had_queue) PostEvent(*ep->partner, kEventPartnerFailed, pending);
  }
  Deliver(pending);
  return absl::OkStatus();
}

absl::Status Hypervisor::AddAdapterPair(const AdapterPairConfig& c) {
  for (uint64_t bytes : {c.client_window_bytes, c.server_window_bytes}) {
    if (bytes == 0 || (bytes & kPageMask) != 0 || bytes > kMaxWindowBytes) {
      return absl::InvalidArgumentError(
          absl::StrFormat("window of %u bytes: must be a non-zero multiple of 4 KiB up to 16 GiB", bytes));
    }
  }
  if (c.client_liobn == c.server_liobn) return absl::InvalidArgumentError("client and server LIOBNs are equal");
  absl::MutexLock lock(&mu_);
  if (by_liobn_.contains(c.client_liobn) || by_liobn_.contains(c.server_liobn)) {
    return absl::AlreadyExistsError("LIOBN already in use");
  }
  const Key ck{c.client_partition, c.client_unit};
  const Key sk{c.server_partition, c.server_unit};
  if (ck == sk || by_unit_.contains(ck) || by_unit_.contains(sk)) {
    return absl::AlreadyExistsError("unit address already in use in that partition");
  }
  const size_t pair = pairs_++;
  auto make = [&](PartitionId part, UnitAddress unit, Liobn liobn, uint64_t bytes) {
    mu_.AssertHeld();
    auto w = std::make_unique<Window>();
    w->liobn = liobn;
    w->tces.assign(bytes / kTcePageSize, 0);
    auto ep = std::make_unique<Endpoint>();
    ep->partition = part;
    ep->unit = unit;
    ep->pair = pair;
    ep->window = w.get();
    w->owner = ep.get();
    by_liobn_[liobn] = w.get();
    by_unit_[Key{part, unit}] = ep.get();
    Endpoint* raw = ep.get();
    windows_.push_back(std::move(w));
    endpoints_.push_back(std::move(ep));
    return raw;
  };
  Endpoint* client = make(c.client_partition, c.client_unit, c.client_liobn, c.client_window_bytes);
  Endpoint* server = make(c.server_partition, c.server_unit, c.server_liobn, c.server_window_bytes);
  client->partner = server;
  server->partner = client;
  server->remote = client->window;
  return absl::OkStatus();
}

absl::Status Hypervisor::SetInterruptEventfd(PartitionId id, int fd) {
  absl::MutexLock lock(&mu_);
  Partition* p = PresentPartition(id);
  if (p == nullptr) return absl::NotFoundError(absl::StrFormat("partition %u is not present", id));
  p->eventfd = fd;
  return absl::OkStatus();
}

absl::Status Hypervisor::SetInterruptCallback(PartitionId id, InterruptCallback callback) {
  absl::MutexLock lock(&mu_);
  Partition* p = PresentPartition(id);
  if (p == nullptr) return absl::NotFoundError(absl::StrFormat("partition %u is not present", id));
  p->callback = std::move(callback);
  return absl::OkStatus();
}

// ---- Helpers ------------------------------------------------------------------

Hypervisor::Partition* Hypervisor::PresentPartition(PartitionId id) {
  auto it = partitions_.find(id);
  return it != partitions_.end() && it->second.present ? &it->second : nullptr;
}

Hypervisor::Endpoint* Hypervisor::FindEndpoint(PartitionId partition, UnitAddress unit) const {
  auto it = by_unit_.find(Key{partition, unit});
  return it == by_unit_.end() ? nullptr : it->second;
}

Hypervisor::Endpoint* Hypervisor::CallerEndpoint(PartitionId caller, uint64_t unit) {
  if (PresentPartition(caller) == nullptr || unit > UINT32_MAX) return nullptr;
  return FindEndpoint(caller, static_cast<UnitAddress>(unit));
}

Hypervisor::Window* Hypervisor::FindWindow(uint64_t liobn) const {
  if (liobn > UINT32_MAX) return nullptr;
  auto it = by_liobn_.find(static_cast<Liobn>(liobn));
  return it == by_liobn_.end() ? nullptr : it->second;
}

Hypervisor::Window* Hypervisor::MappableWindow(PartitionId caller, uint64_t liobn) const {
  Window* w = FindWindow(liobn);
  if (w == nullptr || w->owner->partition != caller) return nullptr;
  auto it = partitions_.find(caller);
  if (it == partitions_.end() || !it->second.present) return nullptr;
  return w;
}

bool Hypervisor::TceValidFor(const Window& w, uint64_t tce) const {
  if ((tce & kTcePermMask) == 0) return true;  // clearing an entry
  auto it = partitions_.find(w.owner->partition);
  if (it == partitions_.end() || !it->second.present) return false;
  const uint64_t ra = tce & kTceRpnMask;
  return it->second.size >= kTcePageSize && ra <= it->second.size - kTcePageSize;
}

bool Hypervisor::WriteEntry(Endpoint& ep, uint64_t hi, uint64_t lo, Pending& pending) {
  if (ep.queue_pages.empty()) return false;
  Partition& p = partitions_.at(ep.partition);
  uint8_t* slot = p.memory + ep.queue_pages[ep.cursor >> kTcePageShift] + (ep.cursor & kPageMask);
  if (std::atomic_ref<uint8_t>(slot[0]).load(std::memory_order_acquire) != 0) return false;
  const auto bytes = EncodeEntry(CrqMessage{hi, lo});
  std::memcpy(slot + 8, bytes.data() + 8, 8);
  std::memcpy(slot + 1, bytes.data() + 1, 7);
  std::atomic_ref<uint8_t>(slot[0]).store(bytes[0], std::memory_order_release);
  ep.cursor = (ep.cursor + kCrqEntryBytes) % ep.queue_bytes;
  if (ep.signal_mode & 1) {
    ++ep.interrupts;
    ++stats_.interrupts;
    if (p.eventfd >= 0) {
      const uint64_t one = 1;
      if (write(p.eventfd, &one, sizeof one) < 0) {
        // eventfd counter saturated or closed: the edge is lost, as on hardware.
      }
    }
    if (p.callback) pending.irqs.push_back({ep.partition, ep.unit, p.callback});
  }
  return true;
}

void Hypervisor::PostEvent(Endpoint& ep, uint8_t reason, Pending& pending) {
  if (ep.queue_pages.empty()) return;
  if (WriteEntry(ep, TransportEventHi(reason), 0, pending)) {
    ++stats_.events_posted;
  } else {
    ++stats_.events_lost;
  }
}

void Hypervisor::Detach(Endpoint& ep) {
  ep.queue_pages.clear();
  ep.queue_bytes = 0;
  ep.cursor = 0;
  ep.enabled = true;
  ep.signal_mode = 0;
  ep.enable_in_progress = 0;
}

int64_t Hypervisor::CheckCopyRange(const Window& w, uint64_t ioba, uint64_t len, uint64_t perm,
                                   int64_t bad_rc) const {
  const uint64_t window_bytes = w.tces.size() * kTcePageSize;
  if (ioba >= window_bytes || len > window_bytes - ioba) return bad_rc;
  for (uint64_t i = ioba >> kTcePageShift; i <= (ioba + len - 1) >> kTcePageShift; ++i) {
    const uint64_t tce = w.tces[i];
    if ((tce & kTcePermMask) == 0) return bad_rc;
    if ((tce & perm) == 0) return kHPermission;
  }
  return kHSuccess;
}

// ---- Hypercalls ---------------------------------------------------------------

int64_t Hypervisor::RegCrq(PartitionId caller, uint64_t unit, uint64_t queue_ioba, uint64_t queue_len) {
  return Run(kHRegCrq, [&](Pending&, uint64_t&) -> int64_t {
    mu_.AssertHeld();
    Endpoint* ep = CallerEndpoint(caller, unit);
    if (ep == nullptr) return kHParameter;
    if (!ep->queue_pages.empty()) return kHResource;
    if (queue_len < kMinCrqBytes || queue_len > kMaxQueueBytes || (queue_len & kPageMask) != 0 ||
        (queue_ioba & kPageMask) != 0) {
      return kHParameter;
    }
    const Window& w = *ep->window;
    const uint64_t window_bytes = w.tces.size() * kTcePageSize;
    if (queue_ioba >= window_bytes || queue_len > window_bytes - queue_ioba) return kHParameter;
    std::vector<uint64_t> pages;
    for (uint64_t off = 0; off < queue_len; off += kTcePageSize) {
      const uint64_t tce = w.tces[(queue_ioba + off) >> kTcePageShift];
      if ((tce & kTcePermMask) == 0) return kHParameter;
      pages.push_back(tce & kTceRpnMask);
    }
    ep->queue_pages = std::move(pages);
    ep->queue_bytes = queue_len;
    ep->cursor = 0;
    ep->enabled = true;
    ep->enable_in_progress = 0;
    return ep->partner->queue_pages.empty() ? kHClosed : kHSuccess;
  });
}

int64_t Hypervisor::FreeCrq(PartitionId caller, uint64_t unit) {
  return Run(kHFreeCrq, [&](Pending& pending, uint64_t&) -> int64_t {
    mu_.AssertHeld();
    Endpoint* ep = CallerEndpoint(caller, unit);
    if (ep == nullptr) return kHParameter;
    if (ep->free_busy > 0) {
      --ep->free_busy;
      return kHBusy;
    }
    if (ep->queue_pages.empty()) return kHSuccess;
    Detach(*ep);
    PostEvent(*ep->partner, kEventPartnerDeregistered, pending);
    return kHSuccess;
  });
}

int64_t Hypervisor::SendCrq(PartitionId caller, uint64_t unit, uint64_t msg_hi, uint64_t msg_lo) {
  return Run(kHSendCrq, [&](Pending& pending, uint64_t&) -> int64_t {
    mu_.AssertHeld();
    Endpoint* ep = CallerEndpoint(caller, unit);
    if (ep == nullptr || !IsSendableHeader(HeaderByte(msg_hi))) return kHParameter;
    Endpoint& to = *ep->partner;
    if (to.queue_pages.empty() || !to.enabled) return kHClosed;
    if (to.full_next > 0) {  // as if its queue were full
      --to.full_next;
      return kHDropped;
    }
    if (to.drop_next > 0) {
      --to.drop_next;
      ++stats_.messages_lost;
      return kHSuccess;
    }
    if (!WriteEntry(to, msg_hi, msg_lo, pending)) return kHDropped;
    ++stats_.messages_delivered;
    return kHSuccess;
  });
}

int64_t Hypervisor::EnableCrq(PartitionId caller, uint64_t unit) {
  return Run(kHEnableCrq, [&](Pending&, uint64_t&) -> int64_t {
    mu_.AssertHeld();
    Endpoint* ep = CallerEndpoint(caller, unit);
    if (ep == nullptr) return kHParameter;
    if (ep->enable_in_progress > 0) {
      --ep->enable_in_progress;
      return kHInProgress;
    }
    ep->enabled = true;
    return kHSuccess;
  });
}

int64_t Hypervisor::VioSignal(PartitionId caller, uint64_t unit, uint64_t mode) {
  return Run(kHVioSignal, [&](Pending&, uint64_t&) -> int64_t {
    mu_.AssertHeld();
    Endpoint* ep = CallerEndpoint(caller, unit);
    if (ep == nullptr || (mode & ~uint64_t{1}) != 0) return kHParameter;
    ep->signal_mode = static_cast<uint8_t>(mode);
    return kHSuccess;
  });
}

int64_t Hypervisor::PutTce(PartitionId caller, uint64_t liobn, uint64_t ioba, uint64_t tce) {
  return Run(kHPutTce, [&](Pending&, uint64_t&) -> int64_t {
    mu_.AssertHeld();
    Window* w = MappableWindow(caller, liobn);
    if (w == nullptr) return kHParameter;
    const uint64_t index = ioba >> kTcePageShift;
    if (index >= w->tces.size() || !TceValidFor(*w, tce)) return kHParameter;
    w->tces[index] = NormalizeTce(tce);
    return kHSuccess;
  });
}

int64_t Hypervisor::GetTce(PartitionId caller, uint64_t liobn, uint64_t ioba, uint64_t* tce) {
  return Run(kHGetTce, [&](Pending&, uint64_t&) -> int64_t {
    mu_.AssertHeld();
    Window* w = MappableWindow(caller, liobn);
    if (w == nullptr) return kHParameter;
    const uint64_t index = ioba >> kTcePageShift;
    if (index >= w->tces.size()) return kHParameter;
    if (tce != nullptr) *tce = w->tces[index];
    return kHSuccess;
  });
}

int64_t Hypervisor::StuffTce(PartitionId caller, uint64_t liobn, uint64_t ioba, uint64_t tce, uint64_t npages) {
  return Run(kHStuffTce, [&](Pending&, uint64_t&) -> int64_t {
    mu_.AssertHeld();
    Window* w = MappableWindow(caller, liobn);
    if (w == nullptr) return kHParameter;
    const uint64_t index = ioba >> kTcePageShift;
    if (index >= w->tces.size() || npages > w->tces.size() - index || !TceValidFor(*w, tce)) return kHParameter;
    std::fill_n(w->tces.begin() + static_cast<std::ptrdiff_t>(index), npages, NormalizeTce(tce));
    return kHSuccess;
  });
}

int64_t Hypervisor::PutTceIndirect(PartitionId caller, uint64_t liobn, uint64_t ioba, uint64_t list_real_addr,
                                   uint64_t npages) {
  return Run(kHPutTceIndirect, [&](Pending&, uint64_t&) -> int64_t {
    mu_.AssertHeld();
    Window* w = MappableWindow(caller, liobn);
    if (w == nullptr || npages > kMaxIndirectTces || (list_real_addr & kPageMask) != 0) return kHParameter;
    const Partition& p = partitions_.at(caller);
    if (p.size < kTcePageSize || list_real_addr > p.size - kTcePageSize) return kHParameter;
    const uint8_t* list = p.memory + list_real_addr;
    const uint64_t first = ioba >> kTcePageShift;
    for (uint64_t i = 0; i < npages; ++i) {
      const uint64_t tce = LoadBe64(list + 8 * i);
      if (first + i >= w->tces.size() || !TceValidFor(*w, tce)) return kHParameter;
      w->tces[first + i] = NormalizeTce(tce);
    }
    return kHSuccess;
  });
}

int64_t Hypervisor::CopyRdma(PartitionId caller, uint64_t len, uint64_t s_liobn, uint64_t s_ioba, uint64_t d_liobn,
                             uint64_t d_ioba) {
  return Run(kHCopyRdma, [&](Pending&, uint64_t& copied) -> int64_t {
    mu_.AssertHeld();
    if (PresentPartition(caller) == nullptr || len == 0 || len > kMaxCopyBytes) return kHParameter;
    Window* sw = FindWindow(s_liobn);
    if (sw == nullptr) return kHSourceParm;
    Window* dw = FindWindow(d_liobn);
    if (dw == nullptr) return kHDestParm;
    if (sw->owner->pair != dw->owner->pair) return kHParameter;
    auto owns = [&](const Window& w) {
      const Endpoint& partner = *w.owner->partner;
      return w.owner->partition == caller || (partner.remote == &w && partner.partition == caller);
    };
    if (!owns(*sw) && !owns(*dw)) return kHParameter;
    auto revoked = [&](const Window& w) {
      mu_.AssertHeld();
      return w.owner->partition != caller &&
             (PresentPartition(w.owner->partition) == nullptr || w.owner->queue_pages.empty());
    };
    if (revoked(*sw) || revoked(*dw)) return kHPermission;
    if (int64_t rc = CheckCopyRange(*sw, s_ioba, len, kTceRead, kHSourceParm); rc != kHSuccess) return rc;
    if (int64_t rc = CheckCopyRange(*dw, d_ioba, len, kTceWrite, kHDestParm); rc != kHSuccess) return rc;
    uint8_t* smem = partitions_.at(sw->owner->partition).memory;
    uint8_t* dmem = partitions_.at(dw->owner->partition).memory;
    uint64_t done = 0;
    while (done < len) {
      const uint64_t s = s_ioba + done;
      const uint64_t d = d_ioba + done;
      const uint64_t chunk =
          std::min({len - done, kTcePageSize - (s & kPageMask), kTcePageSize - (d & kPageMask)});
      const uint8_t* src = smem + (sw->tces[s >> kTcePageShift] & kTceRpnMask) + (s & kPageMask);
      uint8_t* dst = dmem + (dw->tces[d >> kTcePageShift] & kTceRpnMask) + (d & kPageMask);
      std::memmove(dst, src, chunk);
      done += chunk;
    }
    copied = len;
    return kHSuccess;
  });
}

HcallResult Hypervisor::Hcall(PartitionId caller, uint64_t opcode, std::span<const uint64_t> args) {
  uint64_t a[5] = {};
  for (size_t i = 0; i < std::min<size_t>(5, args.size()); ++i) a[i] = args[i];
  HcallResult r;
  switch (opcode) {
    case kHRegCrq: r.rc = RegCrq(caller, a[0], a[1], a[2]); break;
    case kHFreeCrq: r.rc = FreeCrq(caller, a[0]); break;
    case kHSendCrq: r.rc = SendCrq(caller, a[0], a[1], a[2]); break;
    case kHEnableCrq: r.rc = EnableCrq(caller, a[0]); break;
    case kHVioSignal: r.rc = VioSignal(caller, a[0], a[1]); break;
    case kHPutTce: r.rc = PutTce(caller, a[0], a[1], a[2]); break;
    case kHGetTce: r.rc = GetTce(caller, a[0], a[1], &r.r4); break;
    case kHStuffTce: r.rc = StuffTce(caller, a[0], a[1], a[2], a[3]); break;
    case kHPutTceIndirect: r.rc = PutTceIndirect(caller, a[0], a[1], a[2], a[3]); break;
    case kHCopyRdma: r.rc = CopyRdma(caller, a[0], a[1], a[2], a[3], a[4]); break;
    default:
      r.rc = Run(opcode, [](Pending&, uint64_t&) -> int64_t { return kHFunction; });
      break;
  }
  return r;
}

// ---- Control ------------------------------------------------------------------

absl::Status Hypervisor::PostTransportEvent(PartitionId partition, UnitAddress unit, uint8_t reason) {
  Pending pending;
  {
    absl::MutexLock lock(&mu_);
    Endpoint* ep = FindEndpoint(partition, unit);
    if (ep == nullptr) return absl::NotFoundError(absl::StrFormat("no adapter %u:%#x", partition, unit));
    PostEvent(*ep, reason, pending);
  }
  Deliver(pending);
  return absl::OkStatus();
}

absl::Status Hypervisor::InjectPartnerFailed(PartitionId partition, UnitAddress unit) {
  Pending pending;
  {
    absl::MutexLock lock(&mu_);
    Endpoint* ep = FindEndpoint(partition, unit);
    if (ep == nullptr) return absl::NotFoundError(absl::StrFormat("no adapter %u:%#x", partition, unit));
    PostEvent(*ep->partner, kEventPartnerFailed, pending);
  }
  Deliver(pending);
  return absl::OkStatus();
}

absl::Status Hypervisor::InjectMigration(PartitionId partition, UnitAddress unit, uint32_t in_progress_calls) {
  Pending pending;
  {
    absl::MutexLock lock(&mu_);
    Endpoint* ep = FindEndpoint(partition, unit);
    if (ep == nullptr) return absl::NotFoundError(absl::StrFormat("no adapter %u:%#x", partition, unit));
    PostEvent(*ep, kEventMigrated, pending);
    ep->enabled = false;
    ep->enable_in_progress = in_progress_calls;
  }
  Deliver(pending);
  return absl::OkStatus();
}

absl::Status Hypervisor::SetFault(PartitionId partition, UnitAddress unit, uint32_t Endpoint::*counter, uint32_t n) {
  absl::MutexLock lock(&mu_);
  Endpoint* ep = FindEndpoint(partition, unit);
  if (ep == nullptr) return absl::NotFoundError(absl::StrFormat("no adapter %u:%#x", partition, unit));
  ep->*counter = n;
  return absl::OkStatus();
}

absl::Status Hypervisor::InjectFreeBusy(PartitionId partition, UnitAddress unit, uint32_t n) {
  return SetFault(partition, unit, &Endpoint::free_busy, n);
}

absl::Status Hypervisor::InjectFullQueue(PartitionId partition, UnitAddress unit, uint32_t n) {
  return SetFault(partition, unit, &Endpoint::full_next, n);
}

absl::Status Hypervisor::InjectDropMessages(PartitionId partition, UnitAddress unit, uint32_t n) {
  return SetFault(partition, unit, &Endpoint::drop_next, n);
}

// ---- Observation --------------------------------------------------------------

HypervisorStats Hypervisor::Stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

uint64_t Hypervisor::InterruptCount(PartitionId partition, UnitAddress unit) const {
  absl::MutexLock lock(&mu_);
  const Endpoint* ep = FindEndpoint(partition, unit);
  return ep == nullptr ? 0 : ep->interrupts;
}

bool Hypervisor::QueueRegistered(PartitionId partition, UnitAddress unit) const {
  absl::MutexLock lock(&mu_);
  const Endpoint* ep = FindEndpoint(partition, unit);
  return ep != nullptr && !ep->queue_pages.empty();
}

uint8_t Hypervisor::SignalMode(PartitionId partition, UnitAddress unit) const {
  absl::MutexLock lock(&mu_);
  const Endpoint* ep = FindEndpoint(partition, unit);
  return ep == nullptr ? 0 : ep->signal_mode;
}

}  // namespace vioport::crq
