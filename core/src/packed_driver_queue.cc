// SPDX-License-Identifier: Apache-2.0
// Driver side of a packed virtqueue (§2.8), sharing PackedDesc and the event
// suppression layout with the device side.
#include <atomic>
#include <cstring>

#include "ring_access.h"
#include "vioport/core/driver_queue.h"
#include "vioport/core/spec.h"

namespace vioport {
namespace {
using namespace internal;


class PackedDriverQueue final : public DriverQueue {
 public:
  PackedDriverQueue(const DriverQueueOptions& o, DmaAllocator& dma) : DriverQueue(o, dma) {}
  ~PackedDriverQueue() override {
    for (const DmaBuffer* b : {&ring_, &events_, &indirect_pool_})
      if (b->host) dma_.Free(*b);
  }

  absl::Status Init() {
    const uint32_t n = opts_.size;
    if (n == 0 || n > kMaxQueueSize) return absl::InvalidArgumentError("packed queue size must be 1..32768");
    auto ring = dma_.Allocate(16ull * n, 16, Access::kReadWrite);
    if (!ring.ok()) return ring.status();
    ring_ = *ring;
    // Driver area (read by the device) and device area (written by it).
    auto ev = dma_.Allocate(8, 4, Access::kReadWrite);
    if (!ev.ok()) return ev.status();
    events_ = *ev;
    indirect_ = feature::Has(opts_.features, feature::kIndirectDesc) && opts_.indirect_max > 1;
    if (indirect_) {
      auto pool = dma_.Allocate(size_t{n} * opts_.indirect_max * 16, 16, Access::kRead);
      if (!pool.ok()) return pool.status();
      indirect_pool_ = *pool;
    }
    event_idx_ = feature::Has(opts_.features, feature::kEventIdx);
    desc_addr_ = ring_.device_addr;
    driver_addr_ = events_.device_addr;
    device_addr_ = events_.device_addr + 4;
    ids_.resize(n);
    free_ids_.resize(n);
    for (uint32_t i = 0; i < n; ++i) free_ids_[i] = static_cast<uint16_t>(n - 1 - i);
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
    if (need > num_free_ || free_ids_.empty()) return AddStatus::kFull;
    const uint16_t id = free_ids_.back();
    free_ids_.pop_back();

    const uint16_t head_slot = next_avail_;
    const bool head_wrap = avail_wrap_;
    uint16_t head_flags = 0;
    auto* ring = reinterpret_cast<PackedDesc*>(ring_.host);
    auto avail_bits = [](bool wrap) {
      return static_cast<uint16_t>(wrap ? desc_flag::kAvail : desc_flag::kUsed);
    };
    auto advance = [&] {
      if (++next_avail_ == opts_.size) {
        next_avail_ = 0;
        avail_wrap_ = !avail_wrap_;
      }
    };
    if (use_indirect) {
      auto* t = reinterpret_cast<PackedDesc*>(indirect_pool_.host) + size_t{id} * opts_.indirect_max;
      for (size_t i = 0; i < bufs.size(); ++i) {
        t[i].addr = bufs[i].addr;
        t[i].len = bufs[i].len;
        t[i].id = 0;
        t[i].flags = bufs[i].device_writable ? desc_flag::kWrite : 0;
      }
      PackedDesc& d = ring[head_slot];
      d.addr = indirect_pool_.device_addr + uint64_t{id} * opts_.indirect_max * 16;
      d.len = static_cast<uint32_t>(bufs.size() * 16);
      d.id = id;
      head_flags = desc_flag::kIndirect | avail_bits(head_wrap);
      advance();
    } else {
      for (size_t k = 0; k < bufs.size(); ++k) {
        const uint16_t slot = next_avail_;
        uint16_t flags = static_cast<uint16_t>((bufs[k].device_writable ? desc_flag::kWrite : 0) |
                                               (k + 1 < bufs.size() ? desc_flag::kNext : 0) |
                                               avail_bits(avail_wrap_));
        PackedDesc& d = ring[slot];
        d.addr = bufs[k].addr;
        d.len = bufs[k].len;
        d.id = id;
        if (k == 0) {
          head_flags = flags;  // written last, below
        } else {
          StoreLe16(reinterpret_cast<uint8_t*>(&d) + 14, flags, std::memory_order_relaxed);
        }
        advance();
      }
    }
    // §2.8.6: the head's flags last, after a write barrier.
    StoreLe16(reinterpret_cast<uint8_t*>(&ring[head_slot]) + 14, head_flags, std::memory_order_release);
    ids_[id] = {token, need, writable, true};
    num_free_ -= need;
    added_ += need;
    return AddStatus::kOk;
  }

  bool KickPrepare() override {
    if (broken() || added_ == 0) return false;
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const uint16_t now = next_avail_;
    const uint16_t old = static_cast<uint16_t>(now - added_);
    added_ = 0;
    const uint8_t* dev = events_.host + 4;  // device event suppression
    const uint16_t flags = LoadLe16(dev + 2, std::memory_order_acquire);  // device-controlled
    const uint16_t off_wrap = LoadLe16(dev, std::memory_order_relaxed);
    if ((flags & 3) != packed_event::kDesc || !event_idx_) return (flags & 3) != packed_event::kDisable;
    uint16_t event = off_wrap & 0x7fff;
    if (bool(off_wrap >> 15) != avail_wrap_) event = static_cast<uint16_t>(event - opts_.size);
    return VringNeedEvent(event, now, old);
  }

  UsedStatus GetUsed(uint64_t* token, uint32_t* len) override {
    if (broken()) return UsedStatus::kBroken;
    const uint8_t* slot = ring_.host + 16ull * next_used_;
    const uint16_t flags = LoadLe16(slot + 14, std::memory_order_acquire);  // device-controlled
    const bool avail = flags & desc_flag::kAvail, used = flags & desc_flag::kUsed;
    if (avail != used_wrap_ || used != used_wrap_) return UsedStatus::kNone;
    uint16_t id;
    uint32_t l;
    std::memcpy(&id, slot + 12, 2);
    std::memcpy(&l, slot + 8, 4);
    id = boost::endian::little_to_native(id);
    l = (flags & desc_flag::kWrite) ? boost::endian::little_to_native(l) : 0;
    if (id >= opts_.size || !ids_[id].in_use) return Break(RingError::kUsedIdOutOfRange);
    Id& s = ids_[id];
    if (l > s.writable) return Break(RingError::kUsedLengthTooLarge);
    uint32_t next = uint32_t{next_used_} + s.slots;
    if (next >= opts_.size) {
      next -= opts_.size;
      used_wrap_ = !used_wrap_;
    }
    next_used_ = static_cast<uint16_t>(next);
    num_free_ += s.slots;
    s.in_use = false;
    free_ids_.push_back(id);
    *token = s.token;
    *len = l;
    return UsedStatus::kUsed;
  }

  void DisableInterrupts() override {
    StoreLe16(events_.host + 2, packed_event::kDisable, std::memory_order_relaxed);
  }

  bool EnableInterrupts() override {
    if (event_idx_) {
      StoreLe16(events_.host, static_cast<uint16_t>(next_used_ | (used_wrap_ ? 0x8000 : 0)),
                std::memory_order_relaxed);
      StoreLe16(events_.host + 2, packed_event::kDesc, std::memory_order_release);
    } else {
      StoreLe16(events_.host + 2, packed_event::kEnable, std::memory_order_release);
    }
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const uint16_t flags = LoadLe16(ring_.host + 16ull * next_used_ + 14, std::memory_order_acquire);
    return bool(flags & desc_flag::kAvail) == used_wrap_ && bool(flags & desc_flag::kUsed) == used_wrap_;
  }

  std::vector<uint64_t> DetachUnused() override {
    std::vector<uint64_t> out;
    for (const Id& s : ids_)
      if (s.in_use) out.push_back(s.token);
    return out;
  }

  uint32_t NotificationData() const override {
    return uint32_t{opts_.index} | (uint32_t{next_avail_} << 16) | (avail_wrap_ ? 1u << 31 : 0);
  }

 private:
  struct Id {
    uint64_t token = 0;
    uint32_t slots = 0;
    uint32_t writable = 0;
    bool in_use = false;
  };
  DmaBuffer ring_, events_, indirect_pool_;
  bool indirect_ = false;
  bool event_idx_ = false;
  std::vector<Id> ids_;
  std::vector<uint16_t> free_ids_;
  uint16_t next_avail_ = 0;
  bool avail_wrap_ = true;
  uint16_t next_used_ = 0;
  bool used_wrap_ = true;
  uint32_t added_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DriverQueue>> MakePackedDriverQueue(const DriverQueueOptions& opts,
                                                                   DmaAllocator& dma) {
  auto q = std::make_unique<PackedDriverQueue>(opts, dma);
  if (absl::Status s = q->Init(); !s.ok()) return s;
  return std::unique_ptr<DriverQueue>(std::move(q));
}

}  // namespace vioport
