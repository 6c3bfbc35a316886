// SPDX-License-Identifier: Apache-2.0
// Status and negotiation: the spec's init sequence through the driver model
// and the device controller, refused features, forbidden transitions, reset
// with buffers in flight, DEVICE_NEEDS_RESET and its recovery, config reads
// with the generation check.
#include <gtest/gtest.h>

#include "vioport/backends/rng_device.h"
#include "vioport/core/device_controller.h"
#include "vioport/core/driver.h"
#include "vioport/core/guest_memory.h"
#include "vioport/guest/rng_driver.h"
#include "vioport/testing/echo_device.h"
#include "vioport/transports/loopback.h"

namespace vioport {
namespace {

using testing::EchoDevice;
using testing::EchoOptions;

const uint64_t kRing = feature::Bit(feature::kIndirectDesc) | feature::Bit(feature::kEventIdx);

struct Rig {
  explicit Rig(EchoOptions eo = {}, LoopbackOptions lo = {})
      : dev(std::make_shared<EchoDevice>(eo)), t(dev, lo), drv(t) {}
  absl::Status Init(uint64_t features = kRing, uint16_t queues = 1) {
    DriverOptions o;
    o.wanted_features = features;
    o.num_queues = queues;
    o.queue_size = 16;
    return drv.Init(o);
  }
  // One echo request on queue 0; returns the used length or -1.
  int Echo(uint8_t byte) {
    DmaBuffer b = *t.dma().Allocate(2, 2, Access::kReadWrite);
    b.host[0] = byte;
    DriverBuffer bufs[2] = {{b.device_addr, 1, false}, {b.device_addr + 1, 1, true}};
    if (drv.queue(0).Add(bufs, 1) != AddStatus::kOk) return -1;
    drv.Kick(0);
    uint64_t tok;
    uint32_t len;
    int r = drv.queue(0).GetUsed(&tok, &len) == UsedStatus::kUsed && b.host[1] == (byte ^ testing::EchoKey(0))
                ? static_cast<int>(len)
                : -1;
    t.dma().Free(b);
    return r;
  }
  std::shared_ptr<EchoDevice> dev;
  LoopbackTransport t;
  VirtioDriver drv;
};

TEST(Negotiation, InitSequenceReachesDriverOk) {
  Rig r;
  ASSERT_TRUE(r.Init().ok());
  EXPECT_EQ(r.t.GetStatus(), status::kAcknowledge | status::kDriver | status::kFeaturesOk | status::kDriverOk);
  EXPECT_TRUE(r.drv.has_feature(feature::kVersion1));
  EXPECT_TRUE(r.drv.has_feature(feature::kEventIdx));
  EXPECT_EQ(r.Echo(0x42), 1);
  EXPECT_TRUE(r.t.refused().empty());
}

TEST(Negotiation, DeviceRefusesFeaturesOk) {
  EchoOptions eo;
  eo.refuse_features = feature::Bit(feature::kEventIdx);
  Rig r(eo);
  absl::Status s = r.Init();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(r.t.GetStatus() & status::kFailed);
  EXPECT_FALSE(r.t.GetStatus() & status::kFeaturesOk);
  EXPECT_FALSE(r.dev->active());
  EXPECT_EQ(r.t.controller().counters().features_refused.load(), 1u);
  // The same driver succeeds without the refused feature after a reset.
  ASSERT_TRUE(r.Init(feature::Bit(feature::kIndirectDesc)).ok());
  EXPECT_EQ(r.Echo(1), 1);
}

TEST(Negotiation, FeaturesNotOfferedAreRefused) {
  EchoOptions eo;
  eo.features = feature::Bit(feature::kIndirectDesc);  // no EVENT_IDX offered
  Rig r(eo);
  DeviceController& c = r.t.controller();
  ASSERT_TRUE(c.SetStatus(status::kAcknowledge | status::kDriver).ok());
  ASSERT_TRUE(c.SetDriverFeatures(feature::Bit(feature::kVersion1) | feature::Bit(feature::kEventIdx)).ok());
  ASSERT_TRUE(c.SetStatus(status::kAcknowledge | status::kDriver | status::kFeaturesOk).ok());
  EXPECT_FALSE(c.status() & status::kFeaturesOk);
}

TEST(Negotiation, DriverCannotChangeFeaturesAfterFeaturesOk) {
  Rig r;
  ASSERT_TRUE(r.Init().ok());
  DeviceController& c = r.t.controller();
  const uint64_t before = c.driver_features();
  absl::Status s = c.SetDriverFeatures(before & ~feature::Bit(feature::kEventIdx));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(c.driver_features(), before);
  EXPECT_EQ(r.Echo(3), 1);
}

// A live upgrade's snapshot of a driver mid-negotiation: it wrote feature
// bits the device does not offer and has not set FEATURES_OK (legal: they
// are checked then). The snapshot restores into a new controller, which
// then refuses FEATURES_OK as the old one would have; the driver may still
// write offered bits and go on. A snapshot claiming FEATURES_OK with such
// bits (a hostile record) is refused. (fuzz_xen_control found the first
// refused, which made a live upgrade end such a guest's connection.)
TEST(Negotiation, SnapshotMidNegotiationRestoresAndIsCheckedAtFeaturesOk) {
  struct NoIrq : InterruptSink {
    void QueueInterrupt(uint16_t) override {}
    void ConfigInterrupt() override {}
  };
  auto dev = std::make_shared<EchoDevice>(EchoOptions{});
  auto mem = std::make_shared<RegionMemory>();
  DeviceController old(dev, mem, std::make_shared<NoIrq>());
  const uint64_t stray = uint64_t{1} << 55;
  ASSERT_EQ(old.offered_features() & stray, 0u);
  ASSERT_TRUE(old.SetStatus(status::kAcknowledge | status::kDriver).ok());
  ASSERT_TRUE(old.SetDriverFeatures(feature::Bit(feature::kVersion1) | stray).ok());
  auto snap = old.Snapshot();
  ASSERT_TRUE(snap.ok()) << snap.status();
  DeviceController fresh(dev, mem, std::make_shared<NoIrq>());
  ASSERT_TRUE(fresh.Restore(*snap).ok());
  EXPECT_EQ(fresh.driver_features(), feature::Bit(feature::kVersion1) | stray);
  EXPECT_FALSE(fresh.SetStatus(status::kAcknowledge | status::kDriver | status::kFeaturesOk).ok() &&
               (fresh.status() & status::kFeaturesOk))
      << "FEATURES_OK taken with a feature that was not offered";
  DeviceController again(dev, mem, std::make_shared<NoIrq>());
  ASSERT_TRUE(again.Restore(*snap).ok());
  ASSERT_TRUE(again.SetDriverFeatures(feature::Bit(feature::kVersion1)).ok());
  EXPECT_TRUE(again.SetStatus(status::kAcknowledge | status::kDriver | status::kFeaturesOk).ok());
  EXPECT_TRUE(again.status() & status::kFeaturesOk);
  ControllerSnapshot lying = *snap;
  lying.status = status::kAcknowledge | status::kDriver | status::kFeaturesOk;
  DeviceController hostile(dev, mem, std::make_shared<NoIrq>());
  EXPECT_EQ(hostile.Restore(lying).code(), absl::StatusCode::kInvalidArgument);
}

TEST(Negotiation, ForbiddenStatusTransitions) {
  Rig r;
  DeviceController& c = r.t.controller();
  EXPECT_FALSE(c.SetStatus(status::kDriver).ok()) << "DRIVER without ACKNOWLEDGE";
  ASSERT_TRUE(c.SetStatus(status::kAcknowledge | status::kDriver).ok());
  EXPECT_FALSE(c.SetStatus(status::kAcknowledge).ok()) << "clearing DRIVER";
  ASSERT_TRUE(c.SetDriverFeatures(feature::Bit(feature::kVersion1)).ok());
  EXPECT_FALSE(c.SetStatus(status::kAcknowledge | status::kDriver | status::kDriverOk).ok())
      << "DRIVER_OK before FEATURES_OK for a VERSION_1 driver";
  EXPECT_FALSE(c.SetStatus(status::kAcknowledge | status::kDriver | status::kDeviceNeedsReset).ok());
  EXPECT_EQ(c.status(), status::kAcknowledge | status::kDriver);
  EXPECT_GE(c.counters().bad_register_writes.load(), 4u);
}

TEST(Negotiation, NotifyBeforeDriverOkIsIgnored) {
  Rig r;
  r.t.controller().NotifyQueue(0);
  r.t.controller().NotifyQueue(7);
  EXPECT_EQ(r.t.controller().counters().notifies_ignored.load(), 2u);
  ASSERT_TRUE(r.Init().ok());
  r.t.controller().NotifyQueue(7);  // no such queue
  EXPECT_EQ(r.t.controller().counters().notifies_ignored.load(), 3u);
}

TEST(Negotiation, ResetWithBuffersInFlight) {
  Rig r;
  ASSERT_TRUE(r.Init().ok());
  r.dev->set_hold(true);
  DmaBuffer b = *r.t.dma().Allocate(64, 8, Access::kReadWrite);
  for (uint64_t tok = 10; tok < 14; ++tok) {
    DriverBuffer bufs[2] = {{b.device_addr, 8, false}, {b.device_addr + 8, 8, true}};
    ASSERT_EQ(r.drv.queue(0).Add(bufs, tok), AddStatus::kOk);
  }
  r.drv.Kick(0);
  ASSERT_EQ(r.dev->held(), 4u);
  auto lost = r.drv.Reset();
  ASSERT_EQ(lost.size(), 1u);
  std::sort(lost[0].begin(), lost[0].end());
  EXPECT_EQ(lost[0], (std::vector<uint64_t>{10, 11, 12, 13}));
  EXPECT_EQ(r.t.GetStatus(), 0);
  EXPECT_FALSE(r.dev->active());
  EXPECT_EQ(r.dev->held(), 0u);
  r.dev->set_hold(false);
  ASSERT_TRUE(r.Init().ok());
  EXPECT_EQ(r.Echo(9), 1);
  EXPECT_EQ(r.dev->activations(), 2u);
}

TEST(Negotiation, HostileRingSetsNeedsResetAndRecovers) {
  Rig r;
  int config_irqs = 0;
  r.t.OnConfigInterrupt([&] { config_irqs++; });
  ASSERT_TRUE(r.Init().ok());
  ASSERT_EQ(r.Echo(1), 1);
  // The guest corrupts its own ring: the next descriptor's "next" points past the table.
  DriverQueue& q = r.drv.queue(0);
  DmaBuffer b = *r.t.dma().Allocate(16, 8, Access::kReadWrite);
  DriverBuffer bufs[2] = {{b.device_addr, 8, false}, {b.device_addr + 8, 8, true}};
  ASSERT_EQ(q.Add(bufs, 2), AddStatus::kOk);
  uint8_t* table = r.t.host_base() + (q.desc_addr() - LoopbackOptions{}.memory_base);
  for (int i = 0; i < 16; ++i) {  // every descriptor chains to index 999
    le16 bad = 999, flags = desc_flag::kNext;
    std::memcpy(table + 16 * i + 12, &flags, 2);
    std::memcpy(table + 16 * i + 14, &bad, 2);
  }
  r.drv.Kick(0);
  EXPECT_TRUE(r.t.GetStatus() & status::kDeviceNeedsReset);
  EXPECT_EQ(config_irqs, 1) << "config change notification after NEEDS_RESET";
  EXPECT_TRUE(r.drv.NeedsReset());
  EXPECT_NE(r.t.controller().last_error().find("next out of range"), std::string::npos)
      << r.t.controller().last_error();
  EXPECT_EQ(r.t.controller().counters().ring_errors.load(), 1u);
  // Further kicks are ignored; the device does not touch the ring.
  r.drv.Kick(0);
  EXPECT_GE(r.t.controller().counters().notifies_ignored.load(), 0u);
  // Recovery: reset, re-initialise, the lost request is reported.
  auto lost = r.drv.Recover();
  ASSERT_TRUE(lost.ok()) << lost.status();
  EXPECT_EQ((*lost)[0], std::vector<uint64_t>{2});
  EXPECT_FALSE(r.t.GetStatus() & status::kDeviceNeedsReset);
  EXPECT_EQ(r.Echo(7), 1);
}

// A transport whose config generation changes during the first N reads.
class Flapping final : public DriverTransport {
 public:
  Flapping(DriverTransport& inner, int flaps) : in_(inner), flaps_(flaps) {}
  uint32_t GetDeviceId() override { return in_.GetDeviceId(); }
  uint8_t GetStatus() override { return in_.GetStatus(); }
  void SetStatus(uint8_t s) override { in_.SetStatus(s); }
  uint64_t GetDeviceFeatures() override { return in_.GetDeviceFeatures(); }
  void SetDriverFeatures(uint64_t f) override { in_.SetDriverFeatures(f); }
  uint32_t GetConfigGeneration() override { return in_.GetConfigGeneration() + gen_; }
  void ReadConfig(uint32_t o, std::span<uint8_t> out) override {
    if (flaps_ > 0) {
      flaps_--;
      gen_++;
    }
    reads_++;
    in_.ReadConfig(o, out);
  }
  void WriteConfig(uint32_t o, std::span<const uint8_t> in) override { in_.WriteConfig(o, in); }
  uint32_t GetQueueMaxSize(uint16_t q) override { return in_.GetQueueMaxSize(q); }
  absl::Status EnableQueue(uint16_t q, uint32_t s, uint64_t d, uint64_t dr, uint64_t dv) override {
    return in_.EnableQueue(q, s, d, dr, dv);
  }
  void Notify(uint16_t q, uint32_t data) override { in_.Notify(q, data); }
  DmaAllocator& dma() override { return in_.dma(); }
  uint64_t SupportedTransportFeatures() override { return in_.SupportedTransportFeatures(); }
  bool WaitForInterrupt(uint16_t q, absl::Duration t) override { return in_.WaitForInterrupt(q, t); }
  int reads_ = 0;

 private:
  DriverTransport& in_;
  int flaps_;
  uint32_t gen_ = 0;
};

TEST(Negotiation, ConfigReadRetriesOnGenerationChange) {
  Rig r;
  r.dev->ChangeConfig(0xC0FFEE);
  Flapping f(r.t, 3);
  VirtioDriver drv(f);
  DriverOptions o;
  o.queue_size = 8;
  ASSERT_TRUE(drv.Init(o).ok());
  auto v = drv.ReadConfigValue<le32>(0);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(uint32_t(*v), 0xC0FFEEu);
  EXPECT_EQ(f.reads_, 4) << "three torn reads, then a stable one";
}

TEST(Negotiation, ConfigReadGivesUpOnEndlessChange) {
  Rig r;
  Flapping f(r.t, 1000);
  VirtioDriver drv(f);
  DriverOptions o;
  o.queue_size = 8;
  ASSERT_TRUE(drv.Init(o).ok());
  EXPECT_EQ(drv.ReadConfigValue<le32>(0).status().code(), absl::StatusCode::kUnavailable);
}

TEST(Negotiation, DeviceConfigChangeBumpsGenerationAndInterrupts) {
  Rig r;
  ASSERT_TRUE(r.Init().ok());
  const uint32_t g = r.t.GetConfigGeneration();
  r.dev->ChangeConfig(5);
  EXPECT_EQ(r.t.GetConfigGeneration(), g + 1);
  EXPECT_EQ(r.t.config_interrupts(), 1u);
  uint8_t buf[8];
  EXPECT_FALSE(r.t.controller().ReadConfig(12, buf).ok()) << "past config size";
}

TEST(Negotiation, FailedStatusStopsTheDevice) {
  Rig r;
  ASSERT_TRUE(r.Init().ok());
  r.t.SetStatus(r.t.GetStatus() | status::kFailed);
  EXPECT_FALSE(r.dev->active());
  EXPECT_TRUE(r.t.GetStatus() & status::kFailed);
}

TEST(RngOverLoopback, DeliversEntropyOnBothRingFormats) {
  for (bool packed : {false, true}) {
    for (bool copy : {false, true}) {
      auto dev = std::make_shared<RngDevice>();
      LoopbackOptions lo;
      lo.copy_only = copy;
      LoopbackTransport t(dev, lo);
      RngDriver rng(t);
      ASSERT_TRUE(rng.Init(kRing | (packed ? feature::Bit(feature::kRingPacked) : 0)).ok());
      std::vector<uint8_t> out(256 << 10, 0);
      ASSERT_TRUE(rng.Read(out, 4096).ok());
      EXPECT_EQ(dev->bytes_served(), out.size());
      // 256 KiB of getrandom output: every byte value appears, none dominates.
      std::array<int, 256> hist{};
      for (uint8_t b : out) hist[b]++;
      EXPECT_GT(*std::min_element(hist.begin(), hist.end()), 700);
      EXPECT_LT(*std::max_element(hist.begin(), hist.end()), 1400);
    }
  }
}

}  // namespace
}  // namespace vioport
