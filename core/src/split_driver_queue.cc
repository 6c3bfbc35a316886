// SPDX-License-Identifier: Apache-2.0
// Driver side of a split virtqueue (§2.7). Built from the same layout as the
// device side (SplitLayout, VirtqDesc); only the driver's own shadow state is
// trusted, never what the device could have written.
#include <atomic>
#include <cstring>

#include "ring_access.h"
#include "vioport/core/driver_queue.h"
#include "vioport/core/spec.h"

namespace vioport {
namespace {
using namespace internal;
using L = SplitLayout;

class SplitDriverQueue final : public DriverQueue {
 public:
  SplitDriverQueue(const DriverQueueOptions& o, DmaAllocator& dma) : DriverQueue(o, dma) {}
  ~SplitDriverQueue() override {
    for (const DmaBuffer* b : {&ring_, &used_, &indirect_pool_})
      if (b->host) dma_.Free(*b);
  }

  absl::Status Init() {
    const uint32_t n = opts_.size;
    if (n == 0 || n > kMaxQueueSize || (n & (n - 1)))
      return absl::InvalidArgumentError("split queue size must be a power of 2 in 1..32768");
    auto ring = dma_.Allocate(L::DescBytes(n) + L::AvailBytes(n), 16, Access::kRead);
    if (!ring.ok()) return ring.status();
    ring_ = *ring;
    auto used = dma_.Allocate(L::UsedBytes(n), 4, Access::kReadWrite);
    if (!used.ok()) return used.status();
    used_ = *used;
    indirect_ = feature::Has(opts_.features, feature::kIndirectDesc) && opts_.indirect_max > 1;
    if (indirect_) {
      auto pool = dma_.Allocate(size_t{n} * opts_.indirect_max * 16, 16, Access::kRead);
      if (!pool.ok()) return pool.status();
      indirect_pool_ = *pool;
    }
    event_idx_ = feature::Has(opts_.features, feature::kEventIdx);
    desc_ = reinterpret_cast<VirtqDesc*>(ring_.host);
    avail_ = ring_.host + L::DescBytes(n);
    desc_addr_ = ring_.device_addr;
    driver_addr_ = ring_.device_addr + L::DescBytes(n);
    device_addr_ = used_.device_addr;
    state_.resize(n);
    next_.resize(n);
    for (uint32_t i = 0; i < n; ++i) next_[i] = static_cast<uint16_t>(i + 1);
    free_head_ = 0;
    num_free_ = n;
    return absl::OkStatus();
  }

  AddStatus Add(std::span<const DriverBuffer> bufs, uint64_t token) override {
    if (broken()) return AddStatus::kBroken;
    if (bufs.empty()) return AddStatus::kInvalid;
    uint32_t writable = 0;
    bool seen_w = false;
    for (const auto& b : bufs) {
      if (!b.device_writable && seen_w) return AddStatus::kInvalid;
      seen_w |= b.device_writable;
      if (b.device_writable) writable += b.len;
    }
    const bool use_indirect = indirect_ && bufs.size() > 1 && bufs.size() <= opts_.indirect_max;
    const uint32_t need = use_indirect ? 1 : static_cast<uint32_t>(bufs.size());
    if (need > num_free_) return AddStatus::kFull;

    const uint16_t head = free_head_;
    if (use_indirect) {
      VirtqDesc* t = reinterpret_cast<VirtqDesc*>(indirect_pool_.host) + size_t{head} * opts_.indirect_max;
      for (size_t i = 0; i < bufs.size(); ++i) {
        t[i].addr = bufs[i].addr;
        t[i].len = bufs[i].len;
        t[i].flags = static_cast<uint16_t>((bufs[i].device_writable ? desc_flag::kWrite : 0) |
                                           (i + 1 < bufs.size() ? desc_flag::kNext : 0));
        t[i].next = static_cast<uint16_t>(i + 1);
      }
      VirtqDesc& d = desc_[head];
      d.addr = indirect_pool_.device_addr + uint64_t{head} * opts_.indirect_max * 16;
      d.len = static_cast<uint32_t>(bufs.size() * 16);
      d.flags = desc_flag::kIndirect;
      free_head_ = next_[head];
    } else {
      uint16_t i = head;
      for (size_t k = 0; k < bufs.size(); ++k) {
        VirtqDesc& d = desc_[i];
        d.addr = bufs[k].addr;
        d.len = bufs[k].len;
        uint16_t flags = bufs[k].device_writable ? desc_flag::kWrite : 0;
        if (k + 1 < bufs.size()) flags |= desc_flag::kNext;
        d.flags = flags;
        d.next = next_[i];
        i = next_[i];
      }
      free_head_ = i;
    }
    num_free_ -= need;
    in_flight_++;
    state_[head] = {token, need, writable, true};
    // The avail entry now; the idx store (which publishes it) in KickPrepare.
    const uint16_t slot = avail_idx_ & (opts_.size - 1);
    const le16 entry = head;
    std::memcpy(avail_ + L::AvailRing(slot), &entry, 2);
    avail_idx_++;
    added_++;
    return AddStatus::kOk;
  }

  bool KickPrepare() override {
    if (broken() || added_ == 0) return false;
    const uint16_t old = static_cast<uint16_t>(avail_idx_ - added_);
    StoreLe16(avail_ + L::kAvailIdx, avail_idx_, std::memory_order_release);
    added_ = 0;
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (event_idx_) {
      uint16_t avail_event = LoadLe16(used_.host + L::AvailEvent(opts_.size), std::memory_order_relaxed);
      return VringNeedEvent(avail_event, avail_idx_, old);
    }
    return !(LoadLe16(used_.host + L::kUsedFlags, std::memory_order_relaxed) & kUsedFlagNoNotify);
  }

  UsedStatus GetUsed(uint64_t* token, uint32_t* len) override {
    if (broken()) return UsedStatus::kBroken;
    if (last_used_ == used_idx_shadow_) {
      used_idx_shadow_ = LoadLe16(used_.host + L::kUsedIdx, std::memory_order_acquire);
      if (last_used_ == used_idx_shadow_) return UsedStatus::kNone;
      if (static_cast<uint16_t>(used_idx_shadow_ - last_used_) > in_flight_)
        return Break(RingError::kUsedIdOutOfRange);
    }
    const uint8_t* e = used_.host + L::UsedRing(last_used_ & (opts_.size - 1));
    uint32_t id, l;  // device-controlled
    std::memcpy(&id, e, 4);
    std::memcpy(&l, e + 4, 4);
    id = boost::endian::little_to_native(id);
    l = boost::endian::little_to_native(l);
    if (id >= opts_.size || !state_[id].in_use) return Break(RingError::kUsedIdOutOfRange);
    Head& h = state_[id];
    if (l > h.writable) return Break(RingError::kUsedLengthTooLarge);
    // Free the chain by walking our own shadow of the next links.
    uint16_t tail = static_cast<uint16_t>(id);
    for (uint32_t k = 1; k < h.ndesc; ++k) tail = next_[tail];
    next_[tail] = free_head_;
    free_head_ = static_cast<uint16_t>(id);
    num_free_ += h.ndesc;
    h.in_use = false;
    in_flight_--;
    last_used_++;
    *token = h.token;
    *len = l;
    return UsedStatus::kUsed;
  }

  void DisableInterrupts() override {
    if (event_idx_) {
      // Far behind: no interrupt until 32768 more completions.
      StoreLe16(avail_ + L::UsedEvent(opts_.size), static_cast<uint16_t>(last_used_ + 0x8000),
                std::memory_order_relaxed);
    } else {
      StoreLe16(avail_ + L::kAvailFlags, kAvailFlagNoInterrupt, std::memory_order_relaxed);
    }
  }

  bool EnableInterrupts() override {
    if (event_idx_) {
      StoreLe16(avail_ + L::UsedEvent(opts_.size), last_used_, std::memory_order_relaxed);
    } else {
      StoreLe16(avail_ + L::kAvailFlags, 0, std::memory_order_relaxed);
    }
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return LoadLe16(used_.host + L::kUsedIdx, std::memory_order_acquire) != last_used_;
  }

  std::vector<uint64_t> DetachUnused() override {
    std::vector<uint64_t> out;
    for (uint32_t i = 0; i < opts_.size; ++i)
      if (state_[i].in_use) out.push_back(state_[i].token);
    return out;
  }

  uint32_t NotificationData() const override {
    return uint32_t{opts_.index} | (uint32_t{static_cast<uint16_t>(avail_idx_ & 0x7fff)} << 16);
  }

 private:
  struct Head {
    uint64_t token = 0;
    uint32_t ndesc = 0;
    uint32_t writable = 0;
    bool in_use = false;
  };
  DmaBuffer ring_, used_, indirect_pool_;
  VirtqDesc* desc_ = nullptr;
  uint8_t* avail_ = nullptr;
  bool indirect_ = false;
  bool event_idx_ = false;
  std::vector<Head> state_;
  std::vector<uint16_t> next_;  // free list and chain links, the driver's own copy
  uint16_t free_head_ = 0;
  uint32_t in_flight_ = 0;  // chains
  uint16_t avail_idx_ = 0;
  uint16_t added_ = 0;
  uint16_t last_used_ = 0;
  uint16_t used_idx_shadow_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DriverQueue>> MakePackedDriverQueue(const DriverQueueOptions& opts,
                                                                   DmaAllocator& dma);

absl::StatusOr<std::unique_ptr<DriverQueue>> DriverQueue::Create(const DriverQueueOptions& opts,
                                                                 DmaAllocator& dma) {
  if (feature::Has(opts.features, feature::kRingPacked)) return MakePackedDriverQueue(opts, dma);
  auto q = std::make_unique<SplitDriverQueue>(opts, dma);
  if (absl::Status s = q->Init(); !s.ok()) return s;
  return std::unique_ptr<DriverQueue>(std::move(q));
}

}  // namespace vioport
