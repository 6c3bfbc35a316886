// SPDX-License-Identifier: Apache-2.0
// Ring semantics between the real driver-side and device-side queues on one
// memory, no transport: event suppression in both directions, out-of-order
// completion, save/restore, legacy byte order, copy batching, and a driver
// that does not trust the device.
#include <gtest/gtest.h>

#include "vioport/core/device_queue.h"
#include "vioport/core/driver_queue.h"
#include "vioport/core/spec.h"
#include "vioport/testing/raw_ring.h"
#include "vioport/transports/loopback.h"

namespace vioport {
namespace {

constexpr uint64_t kBase = 0x100000;

struct Pair {
  Pair(uint64_t features, uint32_t size, bool copy_only = false, uint32_t indirect_max = 8)
      : host(4 << 20), dma(host.data(), kBase, host.size()) {
    mapped = std::make_shared<RegionMemory>();
    EXPECT_TRUE(mapped->AddRegion({kBase, host.size(), host.data(), Access::kReadWrite}).ok());
    if (copy_only) copy = std::make_shared<CopyOnlyMemory>(mapped);
    features |= feature::Bit(feature::kVersion1);
    drv = *DriverQueue::Create({0, size, features, indirect_max}, dma);
    QueueConfig cfg{0, size, drv->desc_addr(), drv->driver_addr(), drv->device_addr(), features};
    EXPECT_EQ(DeviceQueue::Create(cfg, copy ? static_cast<GuestMemory*>(copy.get()) : mapped.get(),
                                  [this](uint16_t, RingError e) { error = e; }, &dev),
              RingError::kNone);
  }
  // One readable and one writable buffer.
  DmaBuffer buf() { return *dma.Allocate(64, 8, Access::kReadWrite); }
  AddStatus Add(uint64_t token, int segs = 2) {
    DmaBuffer b = buf();
    std::vector<DriverBuffer> v;
    for (int i = 0; i < segs; ++i) v.push_back({b.device_addr + 32u * (i % 2), 16, i >= segs / 2 && segs > 1});
    return drv->Add(v, token);
  }
  std::vector<uint8_t> host;
  BufferDmaAllocator dma;
  std::shared_ptr<RegionMemory> mapped;
  std::shared_ptr<CopyOnlyMemory> copy;
  std::unique_ptr<DriverQueue> drv;
  std::unique_ptr<DeviceQueue> dev;
  RingError error = RingError::kNone;
};

TEST(VringNeedEvent, SpecExamples) {
  // Notify iff event lies in [old, new).
  EXPECT_TRUE(VringNeedEvent(0, 1, 0));
  EXPECT_FALSE(VringNeedEvent(1, 1, 0));
  EXPECT_TRUE(VringNeedEvent(4, 10, 2));
  EXPECT_FALSE(VringNeedEvent(10, 10, 2));
  EXPECT_FALSE(VringNeedEvent(1, 10, 2));
  // Across the 16-bit wrap.
  EXPECT_TRUE(VringNeedEvent(65535, 2, 65534));
  EXPECT_TRUE(VringNeedEvent(0, 2, 65534));
  EXPECT_FALSE(VringNeedEvent(2, 2, 65534));
}

class Semantics : public ::testing::TestWithParam<bool> {  // param: packed
 protected:
  uint64_t F(uint64_t extra = 0) const {
    return extra | (GetParam() ? feature::Bit(feature::kRingPacked) : 0);
  }
};

TEST_P(Semantics, DeviceNotificationSuppressionWithoutEventIdx) {
  Pair p(F(), 16);
  ASSERT_EQ(p.Add(1), AddStatus::kOk);
  EXPECT_TRUE(p.drv->KickPrepare()) << "notifications start enabled";
  p.dev->DisableNotifications();
  ASSERT_EQ(p.Add(2), AddStatus::kOk);
  EXPECT_FALSE(p.drv->KickPrepare()) << "device asked for no notifications";
  EXPECT_TRUE(p.dev->EnableNotifications()) << "re-enable must report buffers that arrived meanwhile";
  ASSERT_EQ(p.Add(3), AddStatus::kOk);
  EXPECT_TRUE(p.drv->KickPrepare());
}

TEST_P(Semantics, DeviceNotificationWithEventIdxFiresAtTheEvent) {
  Pair p(F(feature::Bit(feature::kEventIdx)), 16);
  EXPECT_FALSE(p.dev->EnableNotifications());  // event at avail index 0
  ASSERT_EQ(p.Add(1), AddStatus::kOk);
  EXPECT_TRUE(p.drv->KickPrepare());  // crossed 0
  ASSERT_EQ(p.Add(2), AddStatus::kOk);
  EXPECT_FALSE(p.drv->KickPrepare()) << "device has not consumed: no second notification";
  DescriptorChain c;
  ASSERT_EQ(p.dev->Pop(c), PopStatus::kChain);
  p.dev->AddUsed(std::move(c), 0);
  ASSERT_EQ(p.dev->Pop(c), PopStatus::kChain);
  p.dev->AddUsed(std::move(c), 0);
  EXPECT_FALSE(p.dev->EnableNotifications());  // event at index 2 now
  ASSERT_EQ(p.Add(3), AddStatus::kOk);
  EXPECT_TRUE(p.drv->KickPrepare());
}

TEST_P(Semantics, DriverInterruptSuppression) {
  for (bool event_idx : {false, true}) {
    SCOPED_TRACE(event_idx);
    Pair p(F(event_idx ? feature::Bit(feature::kEventIdx) : 0), 16);
    p.drv->DisableInterrupts();
    ASSERT_EQ(p.Add(1), AddStatus::kOk);
    p.drv->KickPrepare();
    DescriptorChain c;
    ASSERT_EQ(p.dev->Pop(c), PopStatus::kChain);
    p.dev->AddUsed(std::move(c), 4);
    EXPECT_FALSE(p.dev->Publish()) << "driver disabled interrupts";
    EXPECT_TRUE(p.drv->EnableInterrupts()) << "used buffer pending";
    uint64_t tok;
    uint32_t len;
    ASSERT_EQ(p.drv->GetUsed(&tok, &len), UsedStatus::kUsed);
    EXPECT_EQ(tok, 1u);
    EXPECT_EQ(len, 4u);
    EXPECT_FALSE(p.drv->EnableInterrupts());
    ASSERT_EQ(p.Add(2), AddStatus::kOk);
    p.drv->KickPrepare();
    ASSERT_EQ(p.dev->Pop(c), PopStatus::kChain);
    p.dev->AddUsed(std::move(c), 0);
    EXPECT_TRUE(p.dev->Publish()) << "interrupts re-enabled";
  }
}

TEST_P(Semantics, OutOfOrderCompletion) {
  Pair p(F(), 8);
  // 2+1+2+1+2 = all 8 descriptors.
  for (uint64_t t = 0; t < 5; ++t) ASSERT_EQ(p.Add(100 + t, t % 2 ? 1 : 2), AddStatus::kOk);
  p.drv->KickPrepare();
  std::vector<DescriptorChain> chains(5);
  for (auto& c : chains) ASSERT_EQ(p.dev->Pop(c), PopStatus::kChain);
  for (int i = 4; i >= 0; --i) p.dev->AddUsed(std::move(chains[i]), 0);
  p.dev->Publish();
  std::vector<uint64_t> got;
  uint64_t tok;
  uint32_t len;
  while (p.drv->GetUsed(&tok, &len) == UsedStatus::kUsed) got.push_back(tok);
  EXPECT_EQ(got, (std::vector<uint64_t>{104, 103, 102, 101, 100}));
  // Everything is free again and reusable across the wrap.
  for (uint64_t t = 0; t < 40; ++t) {
    ASSERT_EQ(p.Add(t, 2), AddStatus::kOk);
    p.drv->KickPrepare();
    DescriptorChain c;
    ASSERT_EQ(p.dev->Pop(c), PopStatus::kChain);
    p.dev->AddUsed(std::move(c), 0);
    p.dev->Publish();
    ASSERT_EQ(p.drv->GetUsed(&tok, &len), UsedStatus::kUsed);
    ASSERT_EQ(tok, t);
  }
}

TEST_P(Semantics, FullQueueReportsFull) {
  Pair p(F(), 4);
  int added = 0;
  while (p.Add(added, 1) == AddStatus::kOk) added++;
  EXPECT_EQ(added, 4);
  EXPECT_EQ(p.Add(99, 1), AddStatus::kFull);
}

TEST_P(Semantics, SaveAndRestoreBase) {
  Pair p(F(), 8);
  for (uint64_t t = 0; t < 11; ++t) {  // past one wrap of the ring
    ASSERT_EQ(p.Add(t, 1), AddStatus::kOk);
    p.drv->KickPrepare();
    DescriptorChain c;
    ASSERT_EQ(p.dev->Pop(c), PopStatus::kChain);
    p.dev->AddUsed(std::move(c), 0);
    p.dev->Publish();
    uint64_t tok;
    uint32_t len;
    ASSERT_EQ(p.drv->GetUsed(&tok, &len), UsedStatus::kUsed);
  }
  const uint32_t base = p.dev->GetBase();
  // A new device-side queue (a restarted backend) continues from the base.
  QueueConfig cfg = p.dev->config();
  std::unique_ptr<DeviceQueue> again;
  ASSERT_EQ(DeviceQueue::Create(cfg, p.mapped.get(), nullptr, &again), RingError::kNone);
  again->SetBase(base);
  EXPECT_EQ(again->GetBase(), base);
  ASSERT_EQ(p.Add(77, 1), AddStatus::kOk);
  p.drv->KickPrepare();
  DescriptorChain c;
  ASSERT_EQ(again->Pop(c), PopStatus::kChain);
  again->AddUsed(std::move(c), 0);
  again->Publish();
  uint64_t tok;
  uint32_t len;
  ASSERT_EQ(p.drv->GetUsed(&tok, &len), UsedStatus::kUsed);
  EXPECT_EQ(tok, 77u);
}

TEST_P(Semantics, CopyOnlyMemoryBatchesCopies) {
  Pair p(F(), 64, /*copy_only=*/true);
  for (uint64_t t = 0; t < 32; ++t) ASSERT_EQ(p.Add(t, 1), AddStatus::kOk);
  p.drv->KickPrepare();
  const uint64_t r0 = p.copy->reads(), w0 = p.copy->writes();
  DescriptorChain c;
  for (int i = 0; i < 32; ++i) {
    ASSERT_EQ(p.dev->Pop(c), PopStatus::kChain);
    p.dev->AddUsed(std::move(c), 0);
  }
  p.dev->Publish();
  // Split: avail idx + avail run + descriptor table (+ used_event/flags read).
  // Packed: two window copies. Never one copy per field or per chain.
  EXPECT_LE(p.copy->reads() - r0, 5u);
  EXPECT_LE(p.copy->writes() - w0, 3u);
  uint64_t tok;
  uint32_t len;
  int n = 0;
  while (p.drv->GetUsed(&tok, &len) == UsedStatus::kUsed) n++;
  EXPECT_EQ(n, 32);
}

TEST_P(Semantics, DriverRejectsUsedIdItNeverGave) {
  Pair p(F(), 8);
  ASSERT_EQ(p.Add(1, 1), AddStatus::kOk);
  p.drv->KickPrepare();
  // A hostile device writes a used entry for id 5, which was never made available.
  if (GetParam()) {
    PackedDesc d{};
    d.id = 5;
    d.flags = desc_flag::kAvail | desc_flag::kUsed;
    std::memcpy(p.host.data() + (p.drv->desc_addr() - kBase), &d, 16);
  } else {
    VirtqUsedElem e{};
    e.id = 5;
    uint8_t* used = p.host.data() + (p.drv->device_addr() - kBase);
    std::memcpy(used + 4, &e, 8);
    le16 idx = 1;
    std::memcpy(used + 2, &idx, 2);
  }
  uint64_t tok;
  uint32_t len;
  EXPECT_EQ(p.drv->GetUsed(&tok, &len), UsedStatus::kBroken);
  EXPECT_EQ(p.drv->error(), RingError::kUsedIdOutOfRange);
  EXPECT_EQ(p.drv->Add({}, 0), AddStatus::kBroken);
}

TEST_P(Semantics, DriverRejectsUsedLengthBeyondWhatItOffered) {
  Pair p(F(), 8);
  ASSERT_EQ(p.Add(1, 2), AddStatus::kOk);  // 16 writable bytes
  p.drv->KickPrepare();
  DescriptorChain c;
  ASSERT_EQ(p.dev->Pop(c), PopStatus::kChain);
  p.dev->AddUsed(std::move(c), 16);
  p.dev->Publish();
  // Now the "device" overwrites the length it reported.
  if (GetParam()) {
    le32 big = 4096;
    std::memcpy(p.host.data() + (p.drv->desc_addr() - kBase) + 8, &big, 4);
  } else {
    le32 big = 4096;
    std::memcpy(p.host.data() + (p.drv->device_addr() - kBase) + 8, &big, 4);
  }
  uint64_t tok;
  uint32_t len;
  EXPECT_EQ(p.drv->GetUsed(&tok, &len), UsedStatus::kBroken);
  EXPECT_EQ(p.drv->error(), RingError::kUsedLengthTooLarge);
}

INSTANTIATE_TEST_SUITE_P(Format, Semantics, ::testing::Values(false, true),
                         [](const auto& i) { return i.param ? "Packed" : "Split"; });

TEST(LegacySplit, BigEndianGuestRing) {
  // A legacy (0.9.5) big-endian guest: ring fields in guest-native order.
  testing::FlatGuest g(64 << 10);
  testing::RawSplitRing ring(g, 4);
  uint64_t buf = g.Alloc(32);
  auto be16put = [&](uint64_t a, uint16_t v) { g.Put<be16>(a, be16(v)); };
  // desc 0: readable 8 bytes -> desc 1: writable 16 bytes
  g.Put<be64>(ring.desc(), be64(buf));
  g.Put<be32>(ring.desc() + 8, be32(8));
  be16put(ring.desc() + 12, desc_flag::kNext);
  be16put(ring.desc() + 14, 1);
  g.Put<be64>(ring.desc() + 16, be64(buf + 16));
  g.Put<be32>(ring.desc() + 24, be32(16));
  be16put(ring.desc() + 28, desc_flag::kWrite);
  be16put(ring.avail() + SplitLayout::AvailRing(0), 0);
  be16put(ring.avail() + SplitLayout::kAvailIdx, 1);
  QueueConfig cfg = ring.config(0);  // no VERSION_1: legacy
  cfg.byte_order = RingByteOrder::kBig;
  std::unique_ptr<DeviceQueue> q;
  ASSERT_EQ(DeviceQueue::Create(cfg, g.memory().get(), nullptr, &q), RingError::kNone);
  DescriptorChain c;
  ASSERT_EQ(q->Pop(c), PopStatus::kChain);
  EXPECT_EQ(c.readable_bytes(), 8u);
  EXPECT_EQ(c.writable_bytes(), 16u);
  EXPECT_EQ(c.readable()[0].addr, buf);
  q->AddUsed(std::move(c), 12);
  q->Publish();
  EXPECT_EQ(uint16_t(g.Get<be16>(ring.used_ring() + SplitLayout::kUsedIdx)), 1);
  EXPECT_EQ(uint32_t(g.Get<be32>(ring.used_ring() + SplitLayout::UsedRing(0) + 4)), 12u);
}

TEST(LegacySplit, LayoutMatchesSpecPadding) {
  // §2.7 legacy layout: used ring at the next QueueAlign boundary.
  EXPECT_EQ(SplitLayout::LegacyUsedOffset(256, 4096), 8192u);  // 4096 + 518 -> 8192
  EXPECT_EQ(SplitLayout::LegacyBytes(256, 4096), 8192u + 4096u);
  EXPECT_EQ(SplitLayout::LegacyUsedOffset(8, 4096), 4096u);
}

}  // namespace
}  // namespace vioport
