// SPDX-License-Identifier: Apache-2.0
// RegionMemory: region table checks, bounds, permissions, copies that span
// regions, and the copy-only adapter.
#include <gtest/gtest.h>

#include <numeric>

#include "vioport/core/guest_memory.h"

namespace vioport {
namespace {

TEST(RegionMemory, RejectsBadRegions) {
  std::vector<uint8_t> a(4096), b(4096);
  RegionMemory m;
  EXPECT_FALSE(m.AddRegion({0x1000, 0, a.data()}).ok());
  EXPECT_FALSE(m.AddRegion({~uint64_t{0} - 10, 4096, a.data()}).ok()) << "wraps";
  ASSERT_TRUE(m.AddRegion({0x1000, 4096, a.data()}).ok());
  EXPECT_FALSE(m.AddRegion({0x1800, 4096, b.data()}).ok()) << "overlaps";
  EXPECT_FALSE(m.AddRegion({0x0800, 4096, b.data()}).ok()) << "overlaps from below";
  EXPECT_TRUE(m.AddRegion({0x2000, 4096, b.data()}).ok()) << "adjacent is fine";
}

TEST(RegionMemory, MapIsContiguousOnly) {
  std::vector<uint8_t> a(4096), b(4096);
  RegionMemory m;
  ASSERT_TRUE(m.AddRegion({0x1000, 4096, a.data()}).ok());
  ASSERT_TRUE(m.AddRegion({0x2000, 4096, b.data()}).ok());
  EXPECT_EQ(m.Map(0x1000, 4096, Access::kRead), a.data());
  EXPECT_EQ(m.Map(0x1ff0, 16, Access::kRead), a.data() + 0xff0);
  EXPECT_EQ(m.Map(0x1ff0, 32, Access::kRead), nullptr) << "spans two host buffers";
  EXPECT_TRUE(m.Accessible(0x1ff0, 32, Access::kRead)) << "but copies can span them";
  EXPECT_EQ(m.Map(0x3000, 1, Access::kRead), nullptr);
  EXPECT_EQ(m.Map(0xfff, 1, Access::kRead), nullptr);
  EXPECT_EQ(m.Map(0x2ff0, 17, Access::kRead), nullptr);
  EXPECT_EQ(m.Map(0x1000, ~uint64_t{0}, Access::kRead), nullptr) << "huge length";
}

TEST(RegionMemory, CopiesSpanRegionsAndStopAtHoles) {
  std::vector<uint8_t> a(4096), b(4096);
  RegionMemory m;
  ASSERT_TRUE(m.AddRegion({0x1000, 4096, a.data()}).ok());
  ASSERT_TRUE(m.AddRegion({0x2000, 4096, b.data()}).ok());
  std::vector<uint8_t> src(64);
  std::iota(src.begin(), src.end(), 1);
  ASSERT_TRUE(m.Write(0x1fe0, src.data(), 64).ok());
  EXPECT_EQ(a[0xfe0], 1);
  EXPECT_EQ(b[0x1f], 64);
  std::vector<uint8_t> back(64);
  ASSERT_TRUE(m.Read(0x1fe0, back.data(), 64).ok());
  EXPECT_EQ(back, src);
  EXPECT_EQ(m.Read(0x2fe0, back.data(), 64).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(m.Write(~uint64_t{0} - 8, src.data(), 64).code(), absl::StatusCode::kOutOfRange);
}

TEST(RegionMemory, Permissions) {
  std::vector<uint8_t> a(4096);
  RegionMemory m;
  ASSERT_TRUE(m.AddRegion({0x1000, 4096, a.data(), Access::kRead}).ok());
  EXPECT_NE(m.Map(0x1000, 8, Access::kRead), nullptr);
  EXPECT_EQ(m.Map(0x1000, 8, Access::kWrite), nullptr);
  uint8_t x = 1;
  EXPECT_EQ(m.Write(0x1000, &x, 1).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(a[0], 0);
}

TEST(CopyOnlyMemory, NeverMapsAndCountsCopies) {
  std::vector<uint8_t> a(4096);
  auto inner = std::make_shared<RegionMemory>();
  ASSERT_TRUE(inner->AddRegion({0, 4096, a.data()}).ok());
  CopyOnlyMemory m(inner);
  EXPECT_FALSE(m.zero_copy());
  EXPECT_EQ(m.Map(0, 8, Access::kRead), nullptr);
  uint32_t v = 0xdeadbeef, w = 0;
  ASSERT_TRUE(m.Write(16, &v, 4).ok());
  ASSERT_TRUE(m.Read(16, &w, 4).ok());
  EXPECT_EQ(w, v);
  EXPECT_EQ(m.reads(), 1u);
  EXPECT_EQ(m.writes(), 1u);
}

}  // namespace
}  // namespace vioport
