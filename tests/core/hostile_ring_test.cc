// SPDX-License-Identifier: Apache-2.0
// One test per hostile-driver case of virtio.md §1/§2: each must give its
// typed RingError, report it once (the controller turns that into
// DEVICE_NEEDS_RESET), leave the ring untouched afterwards, and never reach
// memory outside the guest's (guard zones checked; ASan in CI).
#include <gtest/gtest.h>

#include "vioport/core/device_controller.h"
#include "vioport/core/device_queue.h"
#include "vioport/core/spec.h"
#include "vioport/testing/echo_device.h"
#include "vioport/testing/raw_ring.h"

namespace vioport {
namespace {

using testing::FlatGuest;
using testing::RawPackedRing;
using testing::RawSplitRing;

constexpr uint16_t kN = desc_flag::kNext;
constexpr uint16_t kW = desc_flag::kWrite;
constexpr uint16_t kI = desc_flag::kIndirect;
const uint64_t kAll = feature::Bit(feature::kIndirectDesc) | feature::Bit(feature::kEventIdx) |
                      feature::Bit(feature::kVersion1);

// Runs a device queue over a FlatGuest, mapped or copy-only, with the error
// handler of a real DeviceController that has reached DRIVER_OK, so each case
// can check DEVICE_NEEDS_RESET and the config interrupt too.
class Harness {
 public:
  struct Irq : InterruptSink {
    int config = 0;
    void QueueInterrupt(uint16_t) override {}
    void ConfigInterrupt() override { config++; }
  };
  Harness(FlatGuest& g, bool copy_only) : g_(g) {
    if (copy_only) {
      copy_ = std::make_shared<CopyOnlyMemory>(g.memory());
      mem_ = copy_;
    } else {
      mem_ = g.memory();
    }
    irq_ = std::make_shared<Irq>();
    ctl_ = std::make_unique<DeviceController>(std::make_shared<testing::EchoDevice>(), mem_, irq_);
    const uint8_t s = status::kAcknowledge | status::kDriver | status::kFeaturesOk;
    EXPECT_TRUE(ctl_->SetStatus(status::kAcknowledge | status::kDriver).ok());
    EXPECT_TRUE(ctl_->SetDriverFeatures(feature::Bit(feature::kVersion1)).ok());
    EXPECT_TRUE(ctl_->SetStatus(s).ok());
    EXPECT_TRUE(ctl_->SetStatus(s | status::kDriverOk).ok());  // no queue enabled: nothing to validate
    EXPECT_EQ(ctl_->status(), s | status::kDriverOk);
  }
  RingError Create(const QueueConfig& cfg) {
    QueueErrorHandler to_controller = ctl_->MakeQueueErrorHandler();
    return DeviceQueue::Create(cfg, mem_.get(),
                               [this, to_controller](uint16_t q, RingError e) {
                                 reports_++;
                                 reported_ = e;
                                 to_controller(q, e);
                               },
                               &q_);
  }
  // Drains the ring and checks the whole contract of a hostile-input break.
  void ExpectBreak(RingError want) {
    PopStatus st;
    Drain(&st);
    EXPECT_EQ(st, PopStatus::kError);
    EXPECT_EQ(q_->error(), want) << RingErrorName(q_->error());
    EXPECT_EQ(reported_, want);
    EXPECT_TRUE(q_->broken());
    ExpectNeedsReset();
    ExpectNoFurtherAccess();
    EXPECT_TRUE(g_.GuardsIntact());
  }
  void ExpectNeedsReset() {
    EXPECT_TRUE(ctl_->status() & status::kDeviceNeedsReset);
    EXPECT_EQ(irq_->config, 1) << "one config interrupt for NEEDS_RESET";
    EXPECT_EQ(ctl_->counters().ring_errors.load(), 1u);
    EXPECT_NE(ctl_->last_error().find(RingErrorName(reported_)), std::string::npos) << ctl_->last_error();
  }
  DeviceQueue& q() { return *q_; }
  int reports() const { return reports_; }
  RingError reported() const { return reported_; }
  // Pops until empty or error; returns the chains' count.
  int Drain(PopStatus* last) {
    int n = 0;
    DescriptorChain c;
    while ((*last = q_->Pop(c)) == PopStatus::kChain) {
      q_->AddUsed(std::move(c), 0);
      n++;
    }
    return n;
  }
  // After a break nothing may touch memory: checked on copy-only memory by
  // the copy counters, on mapped memory by a snapshot of the whole guest.
  void ExpectNoFurtherAccess() {
    std::vector<uint8_t> before(g_.host_begin(), g_.host_begin() + g_.size());
    uint64_t r = copy_ ? copy_->reads() : 0, w = copy_ ? copy_->writes() : 0;
    DescriptorChain c;
    EXPECT_EQ(q_->Pop(c), PopStatus::kError);
    EXPECT_FALSE(q_->Publish());
    EXPECT_FALSE(q_->EnableNotifications());
    q_->DisableNotifications();
    if (copy_) {
      EXPECT_EQ(copy_->reads(), r);
      EXPECT_EQ(copy_->writes(), w);
    }
    EXPECT_EQ(0, std::memcmp(before.data(), g_.host_begin(), before.size()));
    EXPECT_EQ(reports_, 1) << "an error is reported exactly once";
  }

 private:
  FlatGuest& g_;
  std::shared_ptr<CopyOnlyMemory> copy_;
  std::shared_ptr<GuestMemory> mem_;
  std::shared_ptr<Irq> irq_;
  std::unique_ptr<DeviceController> ctl_;
  std::unique_ptr<DeviceQueue> q_;
  int reports_ = 0;
  RingError reported_ = RingError::kNone;
};

class SplitHostile : public ::testing::TestWithParam<bool> {
 protected:
  SplitHostile() : g_(256 << 10), ring_(g_, 8), h_(g_, GetParam()) {}
  void Start(uint64_t features = kAll) { ASSERT_EQ(h_.Create(ring_.config(features)), RingError::kNone); }
  void ExpectBreak(RingError want) { h_.ExpectBreak(want); }
  uint64_t Buf(uint32_t len) { return g_.Alloc(len); }

  FlatGuest g_;
  RawSplitRing ring_;
  Harness h_;
};

TEST_P(SplitHostile, DescriptorLoop) {
  Start();
  ring_.SetDesc(0, Buf(16), 16, kN, 1);
  ring_.SetDesc(1, Buf(16), 16, kN, 0);  // back to 0
  ring_.PushAvail(0);
  ExpectBreak(RingError::kChainTooLong);
}

TEST_P(SplitHostile, ChainLongerThanQueue) {
  Start();
  // Through all 8 descriptors, then the last one points at itself.
  for (uint16_t i = 0; i < 8; ++i) ring_.SetDesc(i, Buf(4), 4, kN, static_cast<uint16_t>(i == 7 ? 7 : i + 1));
  ring_.PushAvail(0);
  ExpectBreak(RingError::kChainTooLong);
}

TEST_P(SplitHostile, IndirectInsideIndirect) {
  Start();
  uint64_t inner = Buf(32), outer = Buf(32);
  VirtqDesc t[2] = {};
  t[0].addr = inner;
  t[0].len = 32;
  t[0].flags = kI;
  g_.Write(outer, t, 16);
  ring_.SetDesc(0, outer, 16, kI);
  ring_.PushAvail(0);
  ExpectBreak(RingError::kNestedIndirect);
}

TEST_P(SplitHostile, IndirectWithNext) {
  Start();
  uint64_t table = Buf(16);
  ring_.SetDesc(0, table, 16, kI | kN, 1);
  ring_.SetDesc(1, Buf(8), 8, 0);
  ring_.PushAvail(0);
  ExpectBreak(RingError::kIndirectWithNext);
}

TEST_P(SplitHostile, IndirectLengthZero) {
  Start();
  ring_.SetDesc(0, Buf(16), 0, kI);
  ring_.PushAvail(0);
  ExpectBreak(RingError::kIndirectBadLength);
}

TEST_P(SplitHostile, IndirectLengthNotMultipleOf16) {
  Start();
  ring_.SetDesc(0, Buf(32), 24, kI);
  ring_.PushAvail(0);
  ExpectBreak(RingError::kIndirectBadLength);
}

TEST_P(SplitHostile, IndirectWithoutFeature) {
  Start(kAll & ~feature::Bit(feature::kIndirectDesc));
  ring_.SetDesc(0, Buf(16), 16, kI);
  ring_.PushAvail(0);
  ExpectBreak(RingError::kIndirectNotNegotiated);
}

TEST_P(SplitHostile, IndirectTableLoop) {
  Start();
  uint64_t table = Buf(32);
  VirtqDesc t[2] = {};
  t[0].addr = Buf(4);
  t[0].len = 4;
  t[0].flags = kN;
  t[0].next = 1;
  t[1].addr = Buf(4);
  t[1].len = 4;
  t[1].flags = kN;
  t[1].next = 0;
  g_.Write(table, t, 32);
  ring_.SetDesc(0, table, 32, kI);
  ring_.PushAvail(0);
  ExpectBreak(RingError::kChainTooLong);
}

TEST_P(SplitHostile, IndirectTableOutsideMemory) {
  Start();
  ring_.SetDesc(0, g_.end() - 16, 64, kI);  // runs past the end
  ring_.PushAvail(0);
  ExpectBreak(RingError::kAddressOutOfRange);
}

TEST_P(SplitHostile, LengthSumOverflows32Bits) {
  Start();
  ring_.SetDesc(0, g_.base(), 0x80000000u, kN, 1);
  ring_.SetDesc(1, g_.base(), 0x80000000u, 0);  // sum = 2^32
  ring_.PushAvail(0);
  // Copy-only memory checks addresses at access, so the sum is what breaks;
  // mapped memory refuses the first 2 GiB buffer as outside memory first.
  ExpectBreak(GetParam() ? RingError::kLengthOverflow : RingError::kAddressOutOfRange);
}

TEST_P(SplitHostile, IndirectLengthSumOverflows) {
  Start();
  uint64_t table = Buf(3 * 16);
  VirtqDesc t[3] = {};
  for (int i = 0; i < 3; ++i) {
    t[i].addr = g_.base();
    t[i].len = 0x60000000u;  // 3 x 1.5 GiB
    t[i].flags = static_cast<uint16_t>(i < 2 ? kN : 0);
    t[i].next = static_cast<uint16_t>(i + 1);
  }
  g_.Write(table, t, sizeof t);
  ring_.SetDesc(0, table, sizeof t, kI);
  ring_.PushAvail(0);
  ExpectBreak(GetParam() ? RingError::kLengthOverflow : RingError::kAddressOutOfRange);
}

TEST_P(SplitHostile, BufferOutsideMemory) {
  Start();
  ring_.SetDesc(0, g_.end() + 0x1000, 64, kW);
  ring_.PushAvail(0);
  if (GetParam()) {
    // Copy-only memory cannot check at pop; the first access faults and the
    // chain's return breaks the queue.
    DescriptorChain c;
    ASSERT_EQ(h_.q().Pop(c), PopStatus::kChain);
    uint8_t b[64] = {};
    EXPECT_EQ(c.Write(0, b, 64), RingError::kAddressOutOfRange);
    h_.q().AddUsed(std::move(c), 64);
    EXPECT_EQ(h_.q().error(), RingError::kAddressOutOfRange);
    h_.ExpectNeedsReset();
    h_.ExpectNoFurtherAccess();
  } else {
    ExpectBreak(RingError::kAddressOutOfRange);
  }
  EXPECT_TRUE(g_.GuardsIntact());
}

TEST_P(SplitHostile, BufferStraddlesEndOfMemory) {
  Start();
  ring_.SetDesc(0, g_.end() - 8, 64, kW);
  ring_.PushAvail(0);
  DescriptorChain c;
  PopStatus st = h_.q().Pop(c);
  if (st == PopStatus::kChain) {
    uint8_t b[64];
    std::memset(b, 0x77, sizeof b);
    EXPECT_NE(c.Write(0, b, 64), RingError::kNone);
    h_.q().AddUsed(std::move(c), 64);
  }
  EXPECT_EQ(h_.q().error(), RingError::kAddressOutOfRange);
  h_.ExpectNeedsReset();
  EXPECT_TRUE(g_.GuardsIntact());
}

TEST_P(SplitHostile, AvailIndexJump) {
  Start();
  ring_.SetDesc(0, Buf(8), 8, 0);
  ring_.SetAvailIdx(9);  // 9 new entries in a queue of 8
  ExpectBreak(RingError::kAvailIndexJump);
}

TEST_P(SplitHostile, AvailIndexMovesBackwards) {
  Start();
  ring_.SetDesc(0, Buf(8), 8, 0);
  ring_.PushAvail(0);
  PopStatus st;
  EXPECT_EQ(h_.Drain(&st), 1);
  ring_.SetAvailIdx(0);  // back by one: 65535 "new" entries
  ExpectBreak(RingError::kAvailIndexJump);
}

TEST_P(SplitHostile, ReadableAfterWritable) {
  Start();
  ring_.SetDesc(0, Buf(8), 8, kW | kN, 1);
  ring_.SetDesc(1, Buf(8), 8, 0);
  ring_.PushAvail(0);
  ExpectBreak(RingError::kReadableAfterWritable);
}

TEST_P(SplitHostile, HeadOutOfRange) {
  Start();
  ring_.PushAvail(8);
  ExpectBreak(RingError::kHeadOutOfRange);
}

TEST_P(SplitHostile, NextOutOfRange) {
  Start();
  ring_.SetDesc(0, Buf(8), 8, kN, 8);
  ring_.PushAvail(0);
  ExpectBreak(RingError::kNextOutOfRange);
}

TEST_P(SplitHostile, IndirectNextOutOfRange) {
  Start();
  uint64_t table = Buf(16);
  VirtqDesc t{};
  t.addr = Buf(8);
  t.len = 8;
  t.flags = kN;
  t.next = 1;  // table has one entry
  g_.Write(table, &t, 16);
  ring_.SetDesc(0, table, 16, kI);
  ring_.PushAvail(0);
  ExpectBreak(RingError::kNextOutOfRange);
}

TEST_P(SplitHostile, ValidChainsStillWorkBeforeTheBadOne) {
  Start();
  uint64_t a = Buf(8);
  ring_.SetDesc(0, a, 8, kW);
  ring_.SetDesc(1, Buf(8), 8, kN, 9);  // bad next
  ring_.PushAvail(0);
  ring_.PushAvail(1);
  DescriptorChain c;
  ASSERT_EQ(h_.q().Pop(c), PopStatus::kChain);
  EXPECT_EQ(c.id(), 0);
  uint8_t msg[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  ASSERT_EQ(c.Write(0, msg, 8), RingError::kNone);
  h_.q().AddUsed(std::move(c), 8);
  h_.q().Publish();
  EXPECT_EQ(ring_.used_idx(), 1);
  EXPECT_EQ(0, std::memcmp(g_.host(a), msg, 8));
  ExpectBreak(RingError::kNextOutOfRange);
}

TEST_P(SplitHostile, MisalignedOrUnreachableRingRejectedAtCreate) {
  QueueConfig cfg = ring_.config(kAll);
  cfg.desc_addr += 8;
  EXPECT_EQ(h_.Create(cfg), RingError::kRingMisaligned);
  cfg = ring_.config(kAll);
  cfg.size = 6;
  EXPECT_EQ(h_.Create(cfg), RingError::kBadQueueSize);
  cfg.size = 65536;
  EXPECT_EQ(h_.Create(cfg), RingError::kBadQueueSize);
  if (!GetParam()) {
    cfg = ring_.config(kAll);
    cfg.device_addr = g_.end() - 16;
    EXPECT_EQ(h_.Create(cfg), RingError::kAddressOutOfRange);
  }
}

TEST_P(SplitHostile, UsedLengthNeverOverReports) {
  Start();
  ring_.SetDesc(0, Buf(8), 8, kN, 1);
  ring_.SetDesc(1, Buf(16), 16, kW);
  ring_.PushAvail(0);
  DescriptorChain c;
  ASSERT_EQ(h_.q().Pop(c), PopStatus::kChain);
  h_.q().AddUsed(std::move(c), 1000);  // backend claims more than offered
  h_.q().Publish();
  EXPECT_EQ(uint32_t(ring_.used(0).len), 16u);
  EXPECT_FALSE(h_.q().broken());
}

TEST_P(SplitHostile, StaleChainAfterRecreateIsDropped) {
  Start();
  ring_.SetDesc(0, Buf(8), 8, kW);
  ring_.PushAvail(0);
  DescriptorChain c;
  ASSERT_EQ(h_.q().Pop(c), PopStatus::kChain);
  ASSERT_EQ(h_.Create(ring_.config(kAll)), RingError::kNone);  // "reset": a new queue object
  h_.q().AddUsed(std::move(c), 8);
  EXPECT_FALSE(h_.q().Publish());
  EXPECT_EQ(ring_.used_idx(), 0);
}

INSTANTIATE_TEST_SUITE_P(Memory, SplitHostile, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "CopyOnly" : "Mapped"; });

class PackedHostile : public ::testing::TestWithParam<bool> {
 protected:
  PackedHostile() : g_(256 << 10), ring_(g_, 8), h_(g_, GetParam()) {}
  void Start(uint64_t features = kAll) { ASSERT_EQ(h_.Create(ring_.config(features)), RingError::kNone); }
  void ExpectBreak(RingError want) { h_.ExpectBreak(want); }
  uint64_t Buf(uint32_t len) { return g_.Alloc(len); }
  FlatGuest g_;
  RawPackedRing ring_;
  Harness h_;
};

TEST_P(PackedHostile, ChainLongerThanRing) {
  Start();
  for (uint16_t s = 0; s < 8; ++s) ring_.SetDesc(s, Buf(4), 4, 0, kN);  // every slot says NEXT
  ExpectBreak(RingError::kChainTooLong);
}

TEST_P(PackedHostile, BufferIdOutOfRange) {
  Start();
  ring_.SetDesc(0, Buf(8), 8, /*id=*/8, 0);
  ExpectBreak(RingError::kBadBufferId);
}

TEST_P(PackedHostile, BufferIdAlreadyInFlight) {
  Start();
  ring_.SetDesc(0, Buf(8), 8, 3, 0);
  ring_.SetDesc(1, Buf(8), 8, 3, 0);
  DescriptorChain c;
  ASSERT_EQ(h_.q().Pop(c), PopStatus::kChain);
  DescriptorChain d;
  EXPECT_EQ(h_.q().Pop(d), PopStatus::kError);
  EXPECT_EQ(h_.q().error(), RingError::kBadBufferId);
  h_.ExpectNeedsReset();
}

TEST_P(PackedHostile, NestedIndirect) {
  Start();
  uint64_t table = Buf(16);
  PackedDesc t{};
  t.addr = Buf(16);
  t.len = 16;
  t.flags = kI;
  g_.Write(table, &t, 16);
  ring_.SetDesc(0, table, 16, 0, kI);
  ExpectBreak(RingError::kNestedIndirect);
}

TEST_P(PackedHostile, IndirectWithNext) {
  Start();
  ring_.SetDesc(0, Buf(16), 16, 0, kI | kN);
  ring_.SetDesc(1, Buf(8), 8, 0, 0);
  ExpectBreak(RingError::kIndirectWithNext);
}

TEST_P(PackedHostile, IndirectAfterDirectInChain) {
  Start();
  ring_.SetDesc(0, Buf(8), 8, 0, kN);
  ring_.SetDesc(1, Buf(16), 16, 0, kI);
  ExpectBreak(RingError::kIndirectWithNext);
}

TEST_P(PackedHostile, IndirectBadLength) {
  Start();
  ring_.SetDesc(0, Buf(32), 20, 0, kI);
  ExpectBreak(RingError::kIndirectBadLength);
}

TEST_P(PackedHostile, IndirectZeroLength) {
  Start();
  ring_.SetDesc(0, Buf(32), 0, 0, kI);
  ExpectBreak(RingError::kIndirectBadLength);
}

TEST_P(PackedHostile, IndirectWithoutFeature) {
  Start(kAll & ~feature::Bit(feature::kIndirectDesc));
  ring_.SetDesc(0, Buf(16), 16, 0, kI);
  ExpectBreak(RingError::kIndirectNotNegotiated);
}

TEST_P(PackedHostile, ReadableAfterWritable) {
  Start();
  ring_.SetDesc(0, Buf(8), 8, 0, kW | kN);
  ring_.SetDesc(1, Buf(8), 8, 0, 0);
  ExpectBreak(RingError::kReadableAfterWritable);
}

TEST_P(PackedHostile, LengthOverflow) {
  Start();
  uint64_t table = Buf(2 * 16);
  PackedDesc t[2] = {};
  t[0].addr = g_.base();
  t[0].len = 0xFFFFFFF0u;
  t[1].addr = g_.base();
  t[1].len = 0x100;
  g_.Write(table, t, 32);
  ring_.SetDesc(0, table, 32, 0, kI);
  ExpectBreak(GetParam() ? RingError::kLengthOverflow : RingError::kAddressOutOfRange);
}

TEST_P(PackedHostile, BufferOutsideMemory) {
  Start();
  ring_.SetDesc(0, g_.end() + 64, 64, 0, 0);
  DescriptorChain c;
  if (GetParam()) {
    ASSERT_EQ(h_.q().Pop(c), PopStatus::kChain);
    uint8_t b[64];
    EXPECT_EQ(c.Read(0, b, 64), RingError::kAddressOutOfRange);
    h_.q().AddUsed(std::move(c), 0);
    EXPECT_EQ(h_.q().error(), RingError::kAddressOutOfRange);
    h_.ExpectNeedsReset();
  } else {
    ExpectBreak(RingError::kAddressOutOfRange);
  }
  EXPECT_TRUE(g_.GuardsIntact());
}

TEST_P(PackedHostile, NotAvailableIsEmptyNotError) {
  Start();
  ring_.SetDesc(0, Buf(8), 8, 0, 0, /*avail=*/false);
  DescriptorChain c;
  EXPECT_EQ(h_.q().Pop(c), PopStatus::kEmpty);
  ring_.SetDesc(0, Buf(8), 8, 0, 0, /*avail=*/true, /*wrap=*/false);  // wrong wrap
  EXPECT_EQ(h_.q().Pop(c), PopStatus::kEmpty);
  EXPECT_FALSE(h_.q().broken());
}

INSTANTIATE_TEST_SUITE_P(Memory, PackedHostile, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "CopyOnly" : "Mapped"; });

}  // namespace
}  // namespace vioport
