// SPDX-License-Identifier: Apache-2.0
// The guest rng driver over the loopback transport and the rng backend, split
// and packed, mapped and copy-only; and its waits when the device misbehaves.
#include <algorithm>
#include <array>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "vioport/backends/rng_device.h"
#include "vioport/guest/rng_driver.h"
#include "vioport/testing/echo_device.h"
#include "vioport/transports/loopback.h"

namespace vioport {
namespace {

struct Mode {
  bool packed, copy_only;
};

std::string ModeName(const ::testing::TestParamInfo<Mode>& i) {
  return std::string(i.param.packed ? "Packed" : "Split") + (i.param.copy_only ? "CopyOnly" : "Mapped");
}

uint64_t RingFeatures(bool packed) {
  return feature::Bit(feature::kIndirectDesc) | feature::Bit(feature::kEventIdx) |
         (packed ? feature::Bit(feature::kRingPacked) : 0);
}

class RngTest : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    dev_ = std::make_shared<RngDevice>();
    LoopbackOptions lo;
    lo.copy_only = GetParam().copy_only;
    t_ = std::make_unique<LoopbackTransport>(dev_, lo);
    drv_ = std::make_unique<RngDriver>(*t_);
    absl::Status s = drv_->Init(RingFeatures(GetParam().packed));
    ASSERT_TRUE(s.ok()) << s;
  }

  std::shared_ptr<RngDevice> dev_;
  std::unique_ptr<LoopbackTransport> t_;
  std::unique_ptr<RngDriver> drv_;
};

TEST_P(RngTest, OneMebibyteOfDistinctEntropy) {
  std::vector<uint8_t> out(1 << 20, 0);
  absl::Status s = drv_->Read(out, 4096);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(dev_->bytes_served(), out.size());
  // No 4 KiB chunk repeats (a stuck or replayed buffer would).
  std::set<std::string> chunks;
  for (size_t off = 0; off < out.size(); off += 4096)
    chunks.emplace(reinterpret_cast<const char*>(out.data() + off), 4096);
  EXPECT_EQ(chunks.size(), out.size() / 4096);
  // 1 MiB of getrandom output: about 4096 of each byte value (sd ~64).
  std::array<int, 256> hist{};
  for (uint8_t b : out) hist[b]++;
  EXPECT_GT(*std::min_element(hist.begin(), hist.end()), 3500);
  EXPECT_LT(*std::max_element(hist.begin(), hist.end()), 4700);
}

TEST_P(RngTest, OddChunksAndLengths) {
  std::vector<uint8_t> out(100003, 0);
  ASSERT_TRUE(drv_->Read(out, 1000).ok());
  EXPECT_EQ(dev_->bytes_served(), out.size());
  // The tail was written too: the last 1000 bytes are not all zero.
  EXPECT_TRUE(std::any_of(out.end() - 1000, out.end(), [](uint8_t b) { return b != 0; }));
  std::vector<uint8_t> big(300 * 1024);
  ASSERT_TRUE(drv_->Read(big, 1 << 20).ok()) << "chunks above the bounce buffer are clamped";
  EXPECT_EQ(dev_->bytes_served(), out.size() + big.size());
  EXPECT_EQ(drv_->Read(out, 0).code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(RngTest, NeedsResetIsUnavailableAndInitRecovers) {
  t_->controller().SetNeedsReset("test");
  std::vector<uint8_t> out(8192);
  absl::Status s = drv_->Read(out);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  ASSERT_TRUE(drv_->Init(RingFeatures(GetParam().packed)).ok());
  EXPECT_TRUE(drv_->Read(out).ok());
}

INSTANTIATE_TEST_SUITE_P(Rings, RngTest,
                         ::testing::Values(Mode{false, false}, Mode{false, true}, Mode{true, false}, Mode{true, true}),
                         ModeName);

TEST(RngDriverWaits, SilentDeviceTimesOutThenLateAnswersAreCollected) {
  testing::EchoOptions eo;
  eo.hold = true;  // pops requests and sits on them
  eo.device_id = DeviceId::kEntropy;
  auto dev = std::make_shared<testing::EchoDevice>(eo);
  LoopbackTransport t(dev);
  RngDriver drv(t);
  ASSERT_TRUE(drv.Init(RingFeatures(false), WaitPolicy{absl::Microseconds(30), absl::Milliseconds(100)}).ok());
  std::vector<uint8_t> out(4096);
  const absl::Time start = absl::Now();
  absl::Status s = drv.Read(out);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(100));
  EXPECT_EQ(dev->held(), 1u);
  // The echo device answers with no bytes (nothing readable to echo): a
  // device that never delivers entropy is an error, not an endless loop.
  dev->set_hold(false);
  dev->ReleaseHeld();
  s = drv.Read(out);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
}

TEST(RngDriverWaits, ReadBeforeInit) {
  auto dev = std::make_shared<RngDevice>();
  LoopbackTransport t(dev);
  RngDriver drv(t);
  std::vector<uint8_t> out(16);
  EXPECT_EQ(drv.Read(out).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace vioport
