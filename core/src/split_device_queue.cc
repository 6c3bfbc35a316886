// SPDX-License-Identifier: Apache-2.0
#include "vioport/core/split_device_queue.h"

#include <atomic>
#include <boost/endian/conversion.hpp>
#include <cstring>

#include "ring_access.h"
#include "vioport/core/spec.h"

namespace vioport {
namespace be = boost::endian;
using L = SplitLayout;
using namespace internal;


SplitDeviceQueue::SplitDeviceQueue(const QueueConfig& cfg, GuestMemory* mem, QueueErrorHandler on_error)
    : DeviceQueue(cfg, mem, std::move(on_error)) {
  event_idx_ = feature::Has(cfg.features, feature::kEventIdx);
  indirect_ = feature::Has(cfg.features, feature::kIndirectDesc);
}

uint16_t SplitDeviceQueue::Ord16(uint16_t v) const {
  return cfg_.byte_order == RingByteOrder::kLittle ? be::little_to_native(v) : be::big_to_native(v);
}
template <typename T>
T SplitDeviceQueue::ToRing(T v) const {
  return cfg_.byte_order == RingByteOrder::kLittle ? be::native_to_little(v) : be::native_to_big(v);
}

void SplitDeviceQueue::EncodeUsedElem(uint8_t* p, uint32_t id, uint32_t len) const {
  const uint32_t rid = ToRing(id), rlen = ToRing(len);
  std::memcpy(p, &rid, 4);
  std::memcpy(p + 4, &rlen, 4);
}

SplitDeviceQueue::RawDesc SplitDeviceQueue::Decode(const uint8_t* p) const {
  // One 16-byte read into a local; the driver cannot change it afterwards.
  RawDesc d;
  std::memcpy(&d, p, sizeof d);
  static_assert(sizeof(RawDesc) == 16);
  if (cfg_.byte_order == RingByteOrder::kLittle) {
    be::little_to_native_inplace(d.addr);
    be::little_to_native_inplace(d.len);
    be::little_to_native_inplace(d.flags);
    be::little_to_native_inplace(d.next);
  } else {
    be::big_to_native_inplace(d.addr);
    be::big_to_native_inplace(d.len);
    be::big_to_native_inplace(d.flags);
    be::big_to_native_inplace(d.next);
  }
  return d;
}

RingError SplitDeviceQueue::Init() {
  const uint32_t n = cfg_.size;
  if (n == 0 || n > kMaxQueueSize || (n & (n - 1)) != 0) return RingError::kBadQueueSize;
  if (cfg_.desc_addr % L::kDescAlign || cfg_.driver_addr % L::kAvailAlign ||
      cfg_.device_addr % L::kUsedAlign)
    return RingError::kRingMisaligned;
  if (mem_->zero_copy()) {
    desc_h_ = mem_->Map(cfg_.desc_addr, L::DescBytes(n), Access::kRead);
    avail_h_ = mem_->Map(cfg_.driver_addr, L::AvailBytes(n), Access::kRead);
    used_h_ = mem_->Map(cfg_.device_addr, L::UsedBytes(n), Access::kReadWrite);
    if (desc_h_ && avail_h_ && used_h_) return RingError::kNone;
    // Reachable but not mappable now (a full grant-map table): the rings are
    // read and written through the memory's copies instead, as below.
    desc_h_ = avail_h_ = used_h_ = nullptr;
    if (!mem_->Accessible(cfg_.desc_addr, L::DescBytes(n), Access::kRead) ||
        !mem_->Accessible(cfg_.driver_addr, L::AvailBytes(n), Access::kRead) ||
        !mem_->Accessible(cfg_.device_addr, L::UsedBytes(n), Access::kReadWrite))
      return RingError::kAddressOutOfRange;
  }
  avail_cache_.resize(n);
  desc_cache_.resize(L::DescBytes(n));
  return RingError::kNone;
}

RingError SplitDeviceQueue::Break(RingError e) {
  Fail(e);
  return e;
}

bool SplitDeviceQueue::Load16(uint8_t* host, uint64_t addr, uint16_t* v) {
  if (host) {
    *v = Ord16(AtomicLoad16(host, std::memory_order_acquire));
    return true;
  }
  uint16_t raw;
  absl::Status s = mem_->Read(addr, &raw, 2);
  if (!s.ok()) {
    Fail(RingErrorFromMemoryStatus(s));
    return false;
  }
  std::atomic_thread_fence(std::memory_order_acquire);
  *v = Ord16(raw);
  return true;
}

bool SplitDeviceQueue::Store16(uint8_t* host, uint64_t addr, uint16_t v) {
  const uint16_t raw = ToRing(v);
  if (host) {
    AtomicStore16(host, raw, std::memory_order_release);
    return true;
  }
  std::atomic_thread_fence(std::memory_order_release);
  absl::Status s = mem_->Write(addr, &raw, 2);
  if (!s.ok()) {
    Fail(RingErrorFromMemoryStatus(s));
    return false;
  }
  return true;
}

bool SplitDeviceQueue::LoadAvailIdx(uint16_t* idx) {
  if (!avail_h_) mem_->NewAvailableBatch();
  return Load16(avail_h_ ? avail_h_ + L::kAvailIdx : nullptr, cfg_.driver_addr + L::kAvailIdx, idx);
}

RingError SplitDeviceQueue::FetchAvail(uint16_t from, uint16_t to) {
  // Copy-only memory: the run of new avail entries in at most two copies.
  const uint32_t n = cfg_.size;
  uint32_t count = static_cast<uint16_t>(to - from);
  uint32_t slot = from & (n - 1);
  while (count) {
    uint32_t run = std::min(count, n - slot);
    absl::Status s = mem_->Read(cfg_.driver_addr + L::AvailRing(slot), &avail_cache_[slot], 2ull * run);
    if (!s.ok()) return Break(RingErrorFromMemoryStatus(s));
    count -= run;
    slot = 0;
  }
  desc_cache_valid_ = false;  // descriptors of the new chains must be re-read
  return RingError::kNone;
}

RingError SplitDeviceQueue::ReadHead(uint16_t slot, uint16_t* head) {
  if (avail_h_) {
    *head = Ord16(AtomicLoad16(avail_h_ + L::AvailRing(slot), std::memory_order_relaxed));
  } else {
    *head = Ord16(avail_cache_[slot]);
  }
  return RingError::kNone;
}

RingError SplitDeviceQueue::ReadDesc(uint16_t i, RawDesc* d) {
  if (desc_h_) {
    *d = Decode(desc_h_ + 16ull * i);
    return RingError::kNone;
  }
  if (!desc_cache_valid_) {
    // One copy for the whole table per batch of new avail entries.
    absl::Status s = mem_->Read(cfg_.desc_addr, desc_cache_.data(), desc_cache_.size());
    if (!s.ok()) return RingErrorFromMemoryStatus(s);
    desc_cache_valid_ = true;
  }
  *d = Decode(desc_cache_.data() + 16ull * i);
  return RingError::kNone;
}

RingError SplitDeviceQueue::WalkIndirect(const RawDesc& d, DescriptorChain& out, uint64_t& total) {
  // §2.7.5.3: table length a non-zero multiple of 16, no nesting, walked at use.
  if (d.len == 0 || d.len % 16 != 0) return RingError::kIndirectBadLength;
  const uint32_t entries = d.len / 16;
  if (entries > 65535) return RingError::kIndirectTooLarge;
  const uint8_t* table = mem_->zero_copy() ? mem_->Map(d.addr, d.len, Access::kRead) : nullptr;
  if (!table) {
    indirect_buf_.resize(d.len);
    absl::Status s = mem_->Read(d.addr, indirect_buf_.data(), d.len);
    if (!s.ok()) return RingErrorFromMemoryStatus(s);
    table = indirect_buf_.data();
  }
  uint32_t j = 0;
  for (uint32_t count = 1;; ++count) {
    if (count > entries) return RingError::kChainTooLong;  // loop inside the table
    RawDesc e = Decode(table + 16ull * j);
    if (e.flags & desc_flag::kIndirect) return RingError::kNestedIndirect;
    RingError r = AppendSegment(out, e.addr, e.len, e.flags & desc_flag::kWrite, total);
    if (r != RingError::kNone) return r;
    if (!(e.flags & desc_flag::kNext)) return RingError::kNone;
    if (e.next >= entries) return RingError::kNextOutOfRange;
    j = e.next;
  }
}

PopStatus SplitDeviceQueue::Pop(DescriptorChain& out) {
  if (broken()) return PopStatus::kError;
  if (resubmit_pos_ < resubmit_.size()) {
    // Recovered from the in-flight log: popped by an earlier device, never completed.
    if (!desc_h_) desc_cache_valid_ = false;
    return WalkChain(resubmit_[resubmit_pos_++], out);
  }
  const uint32_t n = cfg_.size;
  if (next_avail_ == avail_shadow_) {
    uint16_t idx;  // guest-controlled
    if (!LoadAvailIdx(&idx)) return PopStatus::kError;
    uint16_t pending = idx - next_avail_;
    if (pending > n && !avail_h_) {
      // A copy channel may have seen a half-written index; a hostile one
      // reads the same twice.
      if (!LoadAvailIdx(&idx)) return PopStatus::kError;
      pending = idx - next_avail_;
    }
    if (pending > n) {
      Break(RingError::kAvailIndexJump);
      return PopStatus::kError;
    }
    if (pending == 0) return PopStatus::kEmpty;
    if (!avail_h_ && FetchAvail(next_avail_, idx) != RingError::kNone) return PopStatus::kError;
    avail_shadow_ = idx;
  }
  uint16_t head;  // guest-controlled
  ReadHead(next_avail_ & (n - 1), &head);
  const PopStatus st = WalkChain(head, out);
  if (st != PopStatus::kChain) return st;
  next_avail_++;
  return PopStatus::kChain;
}

PopStatus SplitDeviceQueue::WalkChain(uint16_t head, DescriptorChain& out) {
  const uint32_t n = cfg_.size;
  if (head >= n) {
    Break(RingError::kHeadOutOfRange);
    return PopStatus::kError;
  }
  FillChainHeader(out, head, 1);
  uint64_t total = 0;
  uint16_t i = head;
  RingError r = RingError::kNone;
  for (uint32_t count = 1;; ++count) {
    if (count > n) {  // more descriptors than the queue holds: a loop
      r = RingError::kChainTooLong;
      break;
    }
    RawDesc d;  // guest-controlled
    if ((r = ReadDesc(i, &d)) != RingError::kNone) break;
    if (d.flags & desc_flag::kIndirect) {
      if (!indirect_) r = RingError::kIndirectNotNegotiated;
      else if (d.flags & desc_flag::kNext) r = RingError::kIndirectWithNext;
      else r = WalkIndirect(d, out, total);
      break;
    }
    if ((r = AppendSegment(out, d.addr, d.len, d.flags & desc_flag::kWrite, total)) != RingError::kNone)
      break;
    if (!(d.flags & desc_flag::kNext)) break;
    if (d.next >= n) {
      r = RingError::kNextOutOfRange;
      break;
    }
    i = d.next;
  }
  if (r != RingError::kNone) {
    out.Clear();
    Break(r);
    return PopStatus::kError;
  }
  if (log_) log_->Popped(head);
  in_flight_++;
  counters_.popped++;
  MarkPopped(out.id_);
  return PopStatus::kChain;
}

void SplitDeviceQueue::AddUsed(DescriptorChain&& chain, uint32_t written) {
  uint16_t id = chain.id_;
  if (!AcceptUsed(chain, written)) return;
  const uint16_t slot = next_used_ & (cfg_.size - 1);
  if (used_h_) {
    EncodeUsedElem(used_h_ + L::UsedRing(slot), id, written);
  } else {
    PendingUsed& u = used_pending_.emplace_back();
    u.slot = slot;
    u.id = id;
    u.len = written;
  }
  if (log_) batch_heads_.push_back(id);
  next_used_++;
}

bool SplitDeviceQueue::Publish() {
  if (broken() || next_used_ == published_used_) return false;
  if (!used_h_) {
    // Copy-only memory: contiguous runs of used entries in one copy each.
    size_t i = 0;
    std::vector<uint8_t>& buf = run_buf_;
    while (i < used_pending_.size()) {
      size_t j = i + 1;
      while (j < used_pending_.size() && used_pending_[j].slot == used_pending_[j - 1].slot + 1) j++;
      buf.resize(8 * (j - i));
      for (size_t k = i; k < j; ++k) EncodeUsedElem(&buf[8 * (k - i)], used_pending_[k].id, used_pending_[k].len);
      absl::Status s = mem_->Write(cfg_.device_addr + L::UsedRing(used_pending_[i].slot), buf.data(), buf.size());
      if (!s.ok()) {
        Break(RingErrorFromMemoryStatus(s));
        return false;
      }
      i = j;
    }
    used_pending_.clear();
  }
  // §2.7.8: the used entries before the idx; then a full barrier before
  // reading the driver's suppression state, or a wake-up can be lost.
  if (log_) log_->Completing(batch_heads_);
  if (!Store16(used_h_ ? used_h_ + L::kUsedIdx : nullptr, cfg_.device_addr + L::kUsedIdx, next_used_))
    return false;
  if (log_) {
    log_->Completed(batch_heads_, next_used_);
    batch_heads_.clear();
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const uint16_t old = published_used_;
  published_used_ = next_used_;
  counters_.publishes++;
  bool need;
  if (event_idx_) {
    uint16_t used_event;  // guest-controlled
    if (!Load16(avail_h_ ? avail_h_ + L::UsedEvent(cfg_.size) : nullptr,
                cfg_.driver_addr + L::UsedEvent(cfg_.size), &used_event))
      return false;
    need = VringNeedEvent(used_event, next_used_, old);
  } else {
    uint16_t flags;  // guest-controlled
    if (!Load16(avail_h_ ? avail_h_ + L::kAvailFlags : nullptr, cfg_.driver_addr + L::kAvailFlags, &flags))
      return false;
    need = !(flags & kAvailFlagNoInterrupt);
  }
  (need ? counters_.interrupts_wanted : counters_.interrupts_suppressed)++;
  return need;
}

bool SplitDeviceQueue::DoEnableNotifications() {
  if (broken()) return false;
  if (event_idx_) {
    if (!Store16(used_h_ ? used_h_ + L::AvailEvent(cfg_.size) : nullptr,
                 cfg_.device_addr + L::AvailEvent(cfg_.size), next_avail_))
      return false;
  } else {
    if (!Store16(used_h_ ? used_h_ + L::kUsedFlags : nullptr, cfg_.device_addr + L::kUsedFlags, 0))
      return false;
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (next_avail_ != avail_shadow_) return true;
  uint16_t idx;
  if (!LoadAvailIdx(&idx)) return false;
  return idx != next_avail_;
}

void SplitDeviceQueue::DoDisableNotifications() {
  if (broken() || event_idx_) return;  // with EVENT_IDX, avail_event simply stays behind
  Store16(used_h_ ? used_h_ + L::kUsedFlags : nullptr, cfg_.device_addr + L::kUsedFlags, kUsedFlagNoNotify);
}

void SplitDeviceQueue::SetBase(uint32_t base) {
  next_avail_ = avail_shadow_ = static_cast<uint16_t>(base);
  // The used idx lives in the ring: continue from what the driver can see.
  uint16_t used = 0;
  if (Load16(used_h_ ? used_h_ + L::kUsedIdx : nullptr, cfg_.device_addr + L::kUsedIdx, &used))
    next_used_ = published_used_ = used;
  used_pending_.clear();
  desc_cache_valid_ = false;
  resubmit_.clear();
  resubmit_pos_ = 0;
  batch_heads_.clear();
}

absl::Status SplitDeviceQueue::UseInflightLog(SplitInflightLog* log) {
  log_ = nullptr;
  resubmit_.clear();
  resubmit_pos_ = 0;
  batch_heads_.clear();
  if (!log) return absl::OkStatus();
  if (log->fresh()) {
    log->Initialize(published_used_);
    log_ = log;
    return absl::OkStatus();
  }
  absl::StatusOr<SplitInflightLog::Recovery> r = log->Recover(published_used_);
  if (!r.ok()) {
    // Unusable: start afresh from the position we were given.
    log->Initialize(published_used_);
    log_ = log;
    return r.status();
  }
  next_avail_ = avail_shadow_ = r->next_avail;
  resubmit_ = std::move(r->resubmit);
  log_ = log;
  return absl::OkStatus();
}

}  // namespace vioport
