// SPDX-License-Identifier: Apache-2.0
#include "vioport/testing/raw_ring.h"

#include <algorithm>
#include <atomic>

#include "absl/strings/str_cat.h"

namespace vioport::testing {

FlatGuest::FlatGuest(size_t size, uint64_t base) : bytes_(size + 2 * kGuard), base_(base), next_(base) {
  std::fill(bytes_.begin(), bytes_.begin() + kGuard, kGuardByte);
  std::fill(bytes_.end() - kGuard, bytes_.end(), kGuardByte);
  mem_ = std::make_shared<RegionMemory>();
  (void)mem_->AddRegion({base_, size, bytes_.data() + kGuard, Access::kReadWrite});
}

bool FlatGuest::GuardsIntact() const {
  for (size_t i = 0; i < kGuard; ++i)
    if (bytes_[i] != kGuardByte || bytes_[bytes_.size() - 1 - i] != kGuardByte) return false;
  return true;
}

uint64_t FlatGuest::Alloc(size_t len, size_t align) {
  uint64_t a = (next_ + align - 1) & ~uint64_t(align - 1);
  next_ = a + len;
  if (next_ > end()) std::abort();  // a test sized its memory wrong
  return a;
}

RawSplitRing::RawSplitRing(FlatGuest& g, uint32_t size) : g_(g), size_(size) {
  desc_ = g.Alloc(SplitLayout::DescBytes(size), 16);
  avail_ = g.Alloc(SplitLayout::AvailBytes(size), 2);
  used_ = g.Alloc(SplitLayout::UsedBytes(size), 4);
}

QueueConfig RawSplitRing::config(uint64_t features, uint16_t index) const {
  return QueueConfig{index, size_, desc_, avail_, used_, features, RingByteOrder::kLittle};
}

void RawSplitRing::SetDesc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
  VirtqDesc d;
  d.addr = addr;
  d.len = len;
  d.flags = flags;
  d.next = next;
  g_.Write(desc_ + 16ull * i, &d, 16);
}

void RawSplitRing::PushAvail(uint16_t head) {
  g_.Put<le16>(avail_ + SplitLayout::AvailRing(avail_idx_ % size_), le16(head));
  SetAvailIdx(static_cast<uint16_t>(avail_idx_ + 1));
}

void RawSplitRing::SetAvailIdx(uint16_t idx) {
  avail_idx_ = idx;
  g_.Put<le16>(avail_ + SplitLayout::kAvailIdx, le16(idx));
}

void RawSplitRing::SetAvailFlags(uint16_t f) { g_.Put<le16>(avail_ + SplitLayout::kAvailFlags, le16(f)); }
void RawSplitRing::SetUsedEvent(uint16_t v) { g_.Put<le16>(avail_ + SplitLayout::UsedEvent(size_), le16(v)); }
uint16_t RawSplitRing::used_idx() { return g_.Get<le16>(used_ + SplitLayout::kUsedIdx); }
uint16_t RawSplitRing::avail_event() { return g_.Get<le16>(used_ + SplitLayout::AvailEvent(size_)); }
uint16_t RawSplitRing::used_flags() { return g_.Get<le16>(used_ + SplitLayout::kUsedFlags); }
VirtqUsedElem RawSplitRing::used(uint16_t slot) {
  return g_.Get<VirtqUsedElem>(used_ + SplitLayout::UsedRing(slot % size_));
}

RawPackedRing::RawPackedRing(FlatGuest& g, uint32_t size) : g_(g), size_(size) {
  ring_ = g.Alloc(16ull * size, 16);
  driver_ = g.Alloc(4, 4);
  device_ = g.Alloc(4, 4);
}

QueueConfig RawPackedRing::config(uint64_t features, uint16_t index) const {
  return QueueConfig{index, size_, ring_, driver_, device_, features | feature::Bit(feature::kRingPacked),
                     RingByteOrder::kLittle};
}

void RawPackedRing::SetDesc(uint16_t slot, uint64_t addr, uint32_t len, uint16_t id, uint16_t flags, bool avail,
                            bool wrap) {
  if (avail) flags |= wrap ? desc_flag::kAvail : desc_flag::kUsed;
  PackedDesc d;
  d.addr = addr;
  d.len = len;
  d.id = id;
  d.flags = flags;
  g_.Write(ring_ + 16ull * slot, &d, 16);
}

PackedDesc RawPackedRing::desc(uint16_t slot) { return g_.Get<PackedDesc>(ring_ + 16ull * slot); }

void RawPackedRing::SetDriverEvent(uint16_t off_wrap, uint16_t flags) {
  PackedEventSuppress e;
  e.off_wrap = off_wrap;
  e.flags = flags;
  g_.Write(driver_, &e, 4);
}

PackedEventSuppress RawPackedRing::device_event() { return g_.Get<PackedEventSuppress>(device_); }

RawDriverRing::RawDriverRing(DriverTransport& t, uint16_t size) : t_(t), size_(size) {
  auto area = [&](uint64_t bytes, Access a) {
    auto b = t_.dma().Allocate(std::max<uint64_t>(bytes, 4096), 4096, a);
    return b.ok() ? *b : DmaBuffer{};
  };
  desc_ = area(SplitLayout::DescBytes(size), Access::kRead);
  avail_ = area(SplitLayout::AvailBytes(size), Access::kRead);
  used_ = area(SplitLayout::UsedBytes(size), Access::kReadWrite);
}

RawDriverRing::~RawDriverRing() {
  for (const DmaBuffer& b : buffers_) t_.dma().Free(b);
  for (const DmaBuffer* b : {&desc_, &avail_, &used_})
    if (b->host) t_.dma().Free(*b);
}

absl::Status RawDriverRing::Start(uint16_t queue) {
  if (!desc_.host || !avail_.host || !used_.host) return absl::ResourceExhaustedError("ring areas: no DMA memory");
  queue_ = queue;
  avail_idx_ = 0;
  t_.SetStatus(0);  // before the ring is rewritten: a live device may still read it
  std::memset(desc_.host, 0, desc_.size);
  std::memset(avail_.host, 0, avail_.size);
  std::memset(used_.host, 0, used_.size);
  const uint8_t base = status::kAcknowledge | status::kDriver;
  t_.SetStatus(base);
  t_.SetDriverFeatures(feature::Bit(feature::kVersion1));
  t_.SetStatus(base | status::kFeaturesOk);
  if (!(t_.GetStatus() & status::kFeaturesOk)) return absl::FailedPreconditionError("FEATURES_OK refused");
  if (absl::Status s = t_.EnableQueue(queue, size_, desc_.device_addr, avail_.device_addr, used_.device_addr); !s.ok())
    return absl::Status(s.code(), absl::StrCat("EnableQueue: ", s.message()));
  t_.SetStatus(base | status::kFeaturesOk | status::kDriverOk);
  const uint8_t st = t_.GetStatus();
  if (!(st & status::kDriverOk) || (st & status::kDeviceNeedsReset))
    return absl::FailedPreconditionError(absl::StrCat("DRIVER_OK: status 0x", absl::Hex(st)));
  return absl::OkStatus();
}

absl::StatusOr<DmaBuffer> RawDriverRing::Alloc(size_t bytes, Access access) {
  auto b = t_.dma().Allocate(bytes, 4096, access);
  if (!b.ok()) return b.status();
  std::memset(b->host, 0, b->size);
  buffers_.push_back(*b);
  return *b;
}

void RawDriverRing::SetDesc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
  VirtqDesc d;
  d.addr = addr;
  d.len = len;
  d.flags = flags;
  d.next = next;
  std::memcpy(desc_.host + 16ull * (i % size_), &d, 16);
}

void RawDriverRing::Publish(uint16_t head) {
  const le16 h(head);
  std::memcpy(avail_.host + SplitLayout::AvailRing(avail_idx_ % size_), &h, 2);
  avail_idx_ = static_cast<uint16_t>(avail_idx_ + 1);
  std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(avail_.host + SplitLayout::kAvailIdx))
      .store(avail_idx_, std::memory_order_release);  // little-endian hosts only, as every ring here
  std::atomic_thread_fence(std::memory_order_seq_cst);
  t_.Notify(queue_, queue_);
}

uint16_t RawDriverRing::used_idx() const {
  return std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(used_.host + SplitLayout::kUsedIdx))
      .load(std::memory_order_acquire);
}

VirtqUsedElem RawDriverRing::used(uint16_t slot) const {
  VirtqUsedElem e;
  std::memcpy(&e, used_.host + SplitLayout::UsedRing(slot % size_), sizeof e);
  return e;
}

}  // namespace vioport::testing
