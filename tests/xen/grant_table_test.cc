// SPDX-License-Identifier: Apache-2.0
// Conformance tests for vioport::xen::GrantTables (v1 grant tables): each
// check and GNTST code of docs/reference/xen.md sections 1, 2 and 8, asserted
// on the status codes and on the bytes of the domains' memories (the grant
// table lives in the granter's own memory, so its flags are read there).

#include "vioport/emulators/xen_grants.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace vioport::xen {
namespace {

constexpr DomId kFront = 1;   // granter
constexpr DomId kBack = 2;    // grantee
constexpr DomId kOther = 3;   // a third domain
constexpr DomId kUnknown = 9;
constexpr uint64_t kPages = 64;
constexpr uint64_t kBytes = kPages * kXenPageSize;
constexpr uint64_t kTableFrame = 0;
constexpr uint32_t kTableFrames = 4;  // 2048 refs
constexpr uint32_t kDataFrame = 8;    // first data page

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};
using Memory = std::unique_ptr<uint8_t, FreeDeleter>;
Memory NewMemory() {
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(kXenPageSize, kBytes));
  std::memset(p, 0, kBytes);
  return Memory(p);
}

class GrantTest : public ::testing::Test {
 protected:
  explicit GrantTest(GrantTablesConfig config = {}) : gt_(config) {}
  void SetUp() override {
    ASSERT_TRUE(gt_.AddDomain(kFront, front_.get(), kBytes).ok());
    ASSERT_TRUE(gt_.AddDomain(kBack, back_.get(), kBytes).ok());
    ASSERT_TRUE(gt_.AddDomain(kOther, other_.get(), kBytes).ok());
    ASSERT_EQ(gt_.SetupTable(kFront, kTableFrame, kTableFrames), gntst::kOkay);
    w_ = gt_.Writer(kFront);
    ASSERT_EQ(w_.size(), kTableFrames * kGrantEntriesPerFrame);
  }
  uint8_t* FrontPage(uint32_t frame) { return front_.get() + uint64_t{frame} * kXenPageSize; }
  uint8_t* BackPage(uint32_t frame) { return back_.get() + uint64_t{frame} * kXenPageSize; }
  uint16_t FlagsOf(GrantRef ref) { return w_.Read(ref).flags; }

  Memory front_ = NewMemory(), back_ = NewMemory(), other_ = NewMemory();
  GrantTables gt_;
  GrantTableWriter w_{nullptr, 0};
};

constexpr uint16_t kPinFlags = gtf::kReading | gtf::kWriting;

// ---- table and entry layout ------------------------------------------------------

TEST_F(GrantTest, GrantAccessWritesV1EntryLittleEndianInGranterMemory) {
  ASSERT_TRUE(w_.GrantAccess(10, 0x1234, 0xA0B0C0D0u, /*readonly=*/true));
  const uint8_t* e = FrontPage(kTableFrame) + 10 * 8;
  const uint8_t want[8] = {gtf::kPermitAccess | gtf::kReadonly, 0, 0x34, 0x12, 0xD0, 0xC0, 0xB0, 0xA0};
  EXPECT_EQ(std::memcmp(e, want, 8), 0);
  EXPECT_FALSE(w_.GrantAccess(w_.size(), kBack, 1, false));
}

TEST_F(GrantTest, SetupTableChecks) {
  EXPECT_EQ(gt_.SetupTable(kUnknown, 0, 1), gntst::kBadDomain);
  EXPECT_EQ(gt_.SetupTable(kBack, 0, 65), gntst::kGeneralError);  // > max_grant_frames (64)
  EXPECT_EQ(gt_.SetupTable(kBack, kPages - 1, 2), gntst::kGeneralError);  // outside memory
  EXPECT_EQ(gt_.SetupTable(kBack, kPages + 5, 0), gntst::kGeneralError);
  EXPECT_EQ(gt_.SetupTable(kBack, 0, 64), gntst::kOkay);
  EXPECT_EQ(gt_.TableEntries(kBack), 32768u);
  EXPECT_EQ(gt_.TableEntries(kOther), 0u);
  EXPECT_EQ(gt_.TableEntries(kUnknown), 0u);
  // A domain with no table: every ref is out of range.
  EXPECT_EQ(gt_.Map(kBack, kOther, 0, true).status, gntst::kBadGntref);
}

TEST_F(GrantTest, RefsBeyondTableAreBadGntref) {
  const GrantRef last = kTableFrames * kGrantEntriesPerFrame - 1;
  ASSERT_TRUE(w_.GrantAccess(last, kBack, kDataFrame, false));
  MapResult m = gt_.Map(kBack, kFront, last, false);
  EXPECT_EQ(m.status, gntst::kOkay);
  EXPECT_EQ(gt_.Map(kBack, kFront, last + 1, true).status, gntst::kBadGntref);
  EXPECT_EQ(gt_.Map(kBack, kFront, 0xFFFFFFFFu, true).status, gntst::kBadGntref);
  EXPECT_EQ(gt_.Unmap(kBack, m.handle), gntst::kOkay);
}

TEST_F(GrantTest, ReservedRefsAreOrdinaryEntries) {
  for (GrantRef ref = 0; ref < kGrantReservedEntries; ++ref) {
    ASSERT_TRUE(w_.GrantAccess(ref, kBack, kDataFrame + ref, false));
    MapResult m = gt_.Map(kBack, kFront, ref, false);
    ASSERT_EQ(m.status, gntst::kOkay) << ref;
    EXPECT_EQ(m.addr, FrontPage(kDataFrame + ref));
    EXPECT_EQ(gt_.Unmap(kBack, m.handle), gntst::kOkay);
    EXPECT_TRUE(w_.EndAccess(ref));
  }
}

// ---- map ------------------------------------------------------------------------------

TEST_F(GrantTest, MapReadWriteSharesTheGranterPage) {
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame, false));
  MapResult m = gt_.Map(kBack, kFront, 8, /*readonly=*/false);
  ASSERT_EQ(m.status, gntst::kOkay);
  EXPECT_EQ(m.frame, kDataFrame);
  ASSERT_EQ(m.addr, FrontPage(kDataFrame));
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess | gtf::kReading | gtf::kWriting);
  EXPECT_EQ(gt_.Pins(kFront, 8), (PinCounts{0, 1, 0, 0, kBack}));
  std::memcpy(m.addr + 100, "backend", 7);
  EXPECT_EQ(std::memcmp(FrontPage(kDataFrame) + 100, "backend", 7), 0);
  std::memcpy(FrontPage(kDataFrame) + 4000, "front", 5);
  EXPECT_EQ(std::memcmp(m.addr + 4000, "front", 5), 0);
  EXPECT_EQ(gt_.LiveHandles(kBack), 1u);
  EXPECT_EQ(gt_.ForeignMappingsOf(kFront), 1u);
  EXPECT_EQ(gt_.Unmap(kBack, m.handle), gntst::kOkay);
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess);
  EXPECT_EQ(gt_.Pins(kFront, 8), PinCounts{});
  EXPECT_EQ(gt_.LiveHandles(kBack), 0u);
  EXPECT_EQ(gt_.ForeignMappingsOf(kFront), 0u);
}

TEST_F(GrantTest, ReadonlyGrantRefusesWriteMapWithGeneralError) {
  ASSERT_TRUE(w_.GrantAccess(9, kBack, kDataFrame, /*readonly=*/true));
  EXPECT_EQ(gt_.Map(kBack, kFront, 9, false).status, gntst::kGeneralError);
  EXPECT_EQ(FlagsOf(9), gtf::kPermitAccess | gtf::kReadonly);  // nothing pinned
  MapResult m = gt_.Map(kBack, kFront, 9, true);
  ASSERT_EQ(m.status, gntst::kOkay);
  EXPECT_EQ(FlagsOf(9), gtf::kPermitAccess | gtf::kReadonly | gtf::kReading);
  // Upgrading while read-pinned re-checks the entry: still refused.
  EXPECT_EQ(gt_.Map(kBack, kFront, 9, false).status, gntst::kGeneralError);
  EXPECT_EQ(gt_.Pins(kFront, 9), (PinCounts{1, 0, 0, 0, kBack}));
  EXPECT_EQ(gt_.Unmap(kBack, m.handle), gntst::kOkay);
  EXPECT_EQ(FlagsOf(9), gtf::kPermitAccess | gtf::kReadonly);
}

TEST_F(GrantTest, MapChecksAndCodes) {
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame, false));
  // Wrong grantee.
  EXPECT_EQ(gt_.Map(kOther, kFront, 8, true).status, gntst::kGeneralError);
  // Invalid entry, transfer and transitive types.
  EXPECT_EQ(gt_.Map(kBack, kFront, 20, true).status, gntst::kGeneralError);
  w_.WriteRaw(21, {gtf::kAcceptTransfer, kBack, kDataFrame});
  EXPECT_EQ(gt_.Map(kBack, kFront, 21, true).status, gntst::kGeneralError);
  w_.WriteRaw(22, {gtf::kTransitive, kBack, kDataFrame});
  EXPECT_EQ(gt_.Map(kBack, kFront, 22, true).status, gntst::kGeneralError);
  EXPECT_EQ(FlagsOf(21), gtf::kAcceptTransfer);
  // Unknown domains; DOMID_SELF is not a granter for map.
  EXPECT_EQ(gt_.Map(kBack, kUnknown, 8, true).status, gntst::kBadDomain);
  EXPECT_EQ(gt_.Map(kBack, kDomidSelf, 8, true).status, gntst::kBadDomain);
  EXPECT_EQ(gt_.Map(kUnknown, kFront, 8, true).status, gntst::kBadDomain);
  // Frame outside the granter's memory: bad_page, and the flags set for the
  // attempt are cleared again.
  ASSERT_TRUE(w_.GrantAccess(23, kBack, kPages, false));
  EXPECT_EQ(gt_.Map(kBack, kFront, 23, false).status, gntst::kBadPage);
  EXPECT_EQ(FlagsOf(23), gtf::kPermitAccess);
  EXPECT_EQ(gt_.Pins(kFront, 23), PinCounts{});
  ASSERT_TRUE(w_.GrantAccess(24, kBack, 0xFFFFFFFFu, true));
  EXPECT_EQ(gt_.Map(kBack, kFront, 24, true).status, gntst::kBadPage);
  EXPECT_EQ(FlagsOf(24), gtf::kPermitAccess | gtf::kReadonly);
  EXPECT_EQ(gt_.LiveHandles(kBack), 0u);
}

TEST_F(GrantTest, MultipleMapsOfOneRefCountPins) {
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame, false));
  MapResult r1 = gt_.Map(kBack, kFront, 8, true);
  MapResult r2 = gt_.Map(kBack, kFront, 8, true);
  MapResult rw = gt_.Map(kBack, kFront, 8, false);
  ASSERT_EQ(r1.status, gntst::kOkay);
  ASSERT_EQ(r2.status, gntst::kOkay);
  ASSERT_EQ(rw.status, gntst::kOkay);
  EXPECT_NE(r1.handle, r2.handle);
  EXPECT_EQ(r1.addr, r2.addr);
  EXPECT_EQ(r1.addr, rw.addr);
  EXPECT_EQ(gt_.Pins(kFront, 8), (PinCounts{2, 1, 0, 0, kBack}));
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess | kPinFlags);
  EXPECT_EQ(gt_.Unmap(kBack, rw.handle), gntst::kOkay);
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess | gtf::kReading);  // writing cleared with the last write pin
  EXPECT_FALSE(w_.EndAccess(8));
  EXPECT_EQ(gt_.Unmap(kBack, r1.handle), gntst::kOkay);
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess | gtf::kReading);
  EXPECT_EQ(gt_.Unmap(kBack, r2.handle), gntst::kOkay);
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess);
  EXPECT_EQ(gt_.ForeignMappingsOf(kFront), 0u);
}

TEST_F(GrantTest, PinnedFrameIsCachedWhileGranterRewritesEntry) {
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame, true));
  MapResult a = gt_.Map(kBack, kFront, 8, true);
  ASSERT_EQ(a.status, gntst::kOkay);
  // A misbehaving granter rewrites the frame of a pinned entry (keeping flags).
  w_.WriteRaw(8, {gtf::kPermitAccess | gtf::kReadonly | gtf::kReading, kBack, kDataFrame + 1});
  MapResult b = gt_.Map(kBack, kFront, 8, true);
  ASSERT_EQ(b.status, gntst::kOkay);
  EXPECT_EQ(b.frame, kDataFrame);  // Xen uses the active entry's frame
  EXPECT_EQ(gt_.Unmap(kBack, a.handle), gntst::kOkay);
  EXPECT_EQ(gt_.Unmap(kBack, b.handle), gntst::kOkay);
}

TEST_F(GrantTest, UnmapBadHandles) {
  EXPECT_EQ(gt_.Unmap(kBack, 0), gntst::kBadHandle);
  EXPECT_EQ(gt_.Unmap(kBack, kInvalidGrantHandle), gntst::kBadHandle);
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame, false));
  MapResult m = gt_.Map(kBack, kFront, 8, false);
  ASSERT_EQ(m.status, gntst::kOkay);
  EXPECT_EQ(gt_.Unmap(kOther, m.handle), gntst::kBadHandle);  // handles are per grantee
  EXPECT_EQ(gt_.Unmap(kUnknown, m.handle), gntst::kBadHandle);
  EXPECT_EQ(gt_.Unmap(kBack, m.handle), gntst::kOkay);
  EXPECT_EQ(gt_.Unmap(kBack, m.handle), gntst::kBadHandle);  // stale
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess);
}

// ---- revocation ----------------------------------------------------------------------

TEST_F(GrantTest, EndAccessFailsWhileMappedAndSucceedsAfterUnmap) {
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame, false));
  MapResult m = gt_.Map(kBack, kFront, 8, false);
  ASSERT_EQ(m.status, gntst::kOkay);
  EXPECT_FALSE(w_.EndAccess(8));
  EXPECT_FALSE(w_.MakeReadonly(8));  // RW->RO refused while write-mapped
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess | kPinFlags);
  ASSERT_EQ(gt_.Unmap(kBack, m.handle), gntst::kOkay);
  EXPECT_TRUE(w_.EndAccess(8));
  EXPECT_EQ(FlagsOf(8), 0);
  // Revoked: no new mapping can be created.
  EXPECT_EQ(gt_.Map(kBack, kFront, 8, true).status, gntst::kGeneralError);
  // The ref reused for another page: a new map sees the new frame only.
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame + 3, true));
  MapResult n = gt_.Map(kBack, kFront, 8, true);
  ASSERT_EQ(n.status, gntst::kOkay);
  EXPECT_EQ(n.addr, FrontPage(kDataFrame + 3));
  EXPECT_EQ(gt_.Unmap(kBack, n.handle), gntst::kOkay);
  EXPECT_TRUE(w_.EndAccess(8));
}

TEST_F(GrantTest, MakeReadonlyThenWriteMapRefused) {
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame, false));
  MapResult r = gt_.Map(kBack, kFront, 8, true);
  ASSERT_EQ(r.status, gntst::kOkay);
  EXPECT_TRUE(w_.MakeReadonly(8));  // only read-pinned: allowed
  EXPECT_EQ(gt_.Map(kBack, kFront, 8, false).status, gntst::kGeneralError);
  EXPECT_EQ(gt_.Unmap(kBack, r.handle), gntst::kOkay);
}

// ---- maptrack -------------------------------------------------------------------------

class SmallMaptrackTest : public GrantTest {
 protected:
  SmallMaptrackTest() : GrantTest(GrantTablesConfig{64, 4}) {}
};

TEST_F(SmallMaptrackTest, ExhaustionIsNoSpaceAndRecoversAfterUnmap) {
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame, false));
  std::vector<GrantHandle> handles;
  for (int i = 0; i < 4; ++i) {
    MapResult m = gt_.Map(kBack, kFront, 8, true);
    ASSERT_EQ(m.status, gntst::kOkay);
    handles.push_back(m.handle);
  }
  EXPECT_EQ(gt_.Map(kBack, kFront, 8, true).status, gntst::kNoSpace);
  // Xen takes the handle before checking the ref.
  EXPECT_EQ(gt_.Map(kBack, kFront, 999999, true).status, gntst::kNoSpace);
  // Another grantee has its own maptrack.
  ASSERT_TRUE(w_.GrantAccess(9, kOther, kDataFrame, false));
  MapResult o = gt_.Map(kOther, kFront, 9, true);
  EXPECT_EQ(o.status, gntst::kOkay);
  EXPECT_EQ(gt_.Unmap(kOther, o.handle), gntst::kOkay);
  // Free one: the freed handle is reused.
  EXPECT_EQ(gt_.Unmap(kBack, handles[1]), gntst::kOkay);
  MapResult again = gt_.Map(kBack, kFront, 8, true);
  ASSERT_EQ(again.status, gntst::kOkay);
  EXPECT_EQ(again.handle, handles[1]);
  EXPECT_EQ(gt_.LiveHandles(kBack), 4u);
  EXPECT_EQ(gt_.UnmapAll(kBack), 4u);
  EXPECT_EQ(gt_.LiveHandles(kBack), 0u);
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess);
  EXPECT_EQ(gt_.Pins(kFront, 8), PinCounts{});
}

// ---- copy -------------------------------------------------------------------------------

CopySegment GrefToLocal(GrantRef ref, DomId granter, uint16_t src_off, uint32_t gmfn, uint16_t dst_off, uint16_t len) {
  return CopySegment{{ref, granter, src_off}, {gmfn, kDomidSelf, dst_off}, len, kGntcopySourceGref, 99};
}
CopySegment LocalToGref(uint32_t gmfn, uint16_t src_off, GrantRef ref, DomId granter, uint16_t dst_off, uint16_t len) {
  return CopySegment{{gmfn, kDomidSelf, src_off}, {ref, granter, dst_off}, len, kGntcopyDestGref, 99};
}

TEST_F(GrantTest, CopyBothDirections) {
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame, false));
  std::memcpy(FrontPage(kDataFrame) + 10, "from-front", 10);
  std::memcpy(BackPage(5) + 3000, "from-back", 9);
  CopySegment segs[] = {GrefToLocal(8, kFront, 10, 4, 20, 10), LocalToGref(5, 3000, 8, kFront, 2000, 9)};
  gt_.Copy(kBack, segs);
  EXPECT_EQ(segs[0].status, gntst::kOkay);
  EXPECT_EQ(segs[1].status, gntst::kOkay);
  EXPECT_EQ(std::memcmp(BackPage(4) + 20, "from-front", 10), 0);
  EXPECT_EQ(std::memcmp(FrontPage(kDataFrame) + 2000, "from-back", 9), 0);
  // Pins were released: flags clear, end access possible.
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess);
  EXPECT_EQ(gt_.Pins(kFront, 8), PinCounts{});
  GrantStats s = gt_.Stats();
  EXPECT_EQ(s.copy.calls, 2u);
  EXPECT_EQ(s.copy.by_status[gntst::kOkay], 2u);
  EXPECT_EQ(s.copy_bytes, 19u);
  EXPECT_TRUE(w_.EndAccess(8));
}

TEST_F(GrantTest, CopyBetweenTwoForeignGrants) {
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame, true));
  GrantTableWriter ow(other_.get(), kGrantEntriesPerFrame);
  ASSERT_EQ(gt_.SetupTable(kOther, 0, 1), gntst::kOkay);
  ASSERT_TRUE(ow.GrantAccess(8, kBack, 12, false));
  std::memcpy(FrontPage(kDataFrame), "third-party", 11);
  CopySegment seg{{8, kFront, 0}, {8, kOther, 100}, 11, kGntcopySourceGref | kGntcopyDestGref, 99};
  gt_.Copy(kBack, std::span(&seg, 1));
  EXPECT_EQ(seg.status, gntst::kOkay);
  EXPECT_EQ(std::memcmp(other_.get() + 12 * kXenPageSize + 100, "third-party", 11), 0);
}

TEST_F(GrantTest, CopyChecksAndCodes) {
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame, false));
  ASSERT_TRUE(w_.GrantAccess(9, kBack, kDataFrame + 1, /*readonly=*/true));
  ASSERT_TRUE(w_.GrantAccess(10, kOther, kDataFrame + 2, false));
  ASSERT_TRUE(w_.GrantAccess(11, kBack, kPages + 1, false));
  std::vector<CopySegment> segs = {
      GrefToLocal(8, kFront, 0, 4, 0, 16),  // 0 ok
      CopySegment{{8, kFront, 0}, {4, kBack, 0}, 16, kGntcopySourceGref, 99},  // 1 local side names own id, not SELF
      CopySegment{{4, kFront, 0}, {8, kFront, 0}, 16, kGntcopyDestGref, 99},  // 2 local side names another domain
      GrefToLocal(8, kUnknown, 0, 4, 0, 16),  // 3 unknown granter
      GrefToLocal(8, kFront, 4090, 4, 0, 16),  // 4 source crosses page end
      LocalToGref(4, 0, 8, kFront, 4081, 16),  // 5 dest crosses page end
      LocalToGref(4, 0, 9, kFront, 0, 16),  // 6 readonly grant as dest
      GrefToLocal(10, kFront, 0, 4, 0, 16),  // 7 grant for another domid
      GrefToLocal(5000, kFront, 0, 4, 0, 16),  // 8 ref beyond table
      GrefToLocal(8, kFront, 0, kPages, 0, 16),  // 9 local frame outside memory
      GrefToLocal(11, kFront, 0, 4, 0, 16),  // 10 granted frame outside memory
      GrefToLocal(9, kFront, 0, 4, 100, 16),  // 11 readonly grant as source: ok
      GrefToLocal(8, kFront, 0, 4, 0, 4096),  // 12 whole page: ok
      GrefToLocal(20, kFront, 0, 4, 0, 16),  // 13 invalid entry
  };
  gt_.Copy(kBack, segs);
  const int16_t want[] = {gntst::kOkay,         gntst::kPermissionDenied, gntst::kPermissionDenied,
                          gntst::kBadDomain,    gntst::kBadCopyArg,       gntst::kBadCopyArg,
                          gntst::kGeneralError, gntst::kGeneralError,     gntst::kBadGntref,
                          gntst::kBadPage,      gntst::kBadPage,          gntst::kOkay,
                          gntst::kOkay,         gntst::kGeneralError};
  ASSERT_EQ(segs.size(), std::size(want));
  for (size_t i = 0; i < segs.size(); ++i) EXPECT_EQ(segs[i].status, want[i]) << "segment " << i;
  // No pin survives, whatever the outcome.
  for (GrantRef ref : {8u, 9u, 10u, 11u}) EXPECT_EQ(gt_.Pins(kFront, ref), PinCounts{}) << ref;
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess);
  EXPECT_EQ(FlagsOf(9), gtf::kPermitAccess | gtf::kReadonly);
  EXPECT_EQ(FlagsOf(11), gtf::kPermitAccess);
  // Unknown caller: every segment bad_domain.
  CopySegment s = GrefToLocal(8, kFront, 0, 4, 0, 16);
  gt_.Copy(kUnknown, std::span(&s, 1));
  EXPECT_EQ(s.status, gntst::kBadDomain);
}

TEST_F(GrantTest, CopyDoesNotDisturbMapPins) {
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame, false));
  MapResult m = gt_.Map(kBack, kFront, 8, true);
  ASSERT_EQ(m.status, gntst::kOkay);
  CopySegment seg = LocalToGref(4, 0, 8, kFront, 0, 8);
  gt_.Copy(kBack, std::span(&seg, 1));
  EXPECT_EQ(seg.status, gntst::kOkay);
  EXPECT_EQ(gt_.Pins(kFront, 8), (PinCounts{1, 0, 0, 0, kBack}));
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess | gtf::kReading);  // writing came and went with the copy
  EXPECT_EQ(gt_.Unmap(kBack, m.handle), gntst::kOkay);
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess);
}

// The pins a copy holds are visible in the granter's table while it runs:
// grant the table page itself and copy entries out of it during the copy.
TEST_F(GrantTest, CopyPinsAreVisibleToTheGranterDuringTheCopy) {
  const GrantRef table_ref = 12, data_ref = 13;
  ASSERT_TRUE(w_.GrantAccess(table_ref, kBack, kTableFrame, /*readonly=*/true));
  ASSERT_TRUE(w_.GrantAccess(data_ref, kBack, kDataFrame, false));
  CopySegment segs[] = {
      // Entry table_ref, read through table_ref itself (read-pinned now).
      GrefToLocal(table_ref, kFront, table_ref * 8, 4, 0, 8),
      // Entry data_ref copied into data_ref's own page while write-pinned.
      CopySegment{{table_ref, kFront, data_ref * 8}, {data_ref, kFront, 0}, 8,
                  kGntcopySourceGref | kGntcopyDestGref, 99},
  };
  gt_.Copy(kBack, segs);
  ASSERT_EQ(segs[0].status, gntst::kOkay);
  ASSERT_EQ(segs[1].status, gntst::kOkay);
  uint16_t seen0, seen1;
  std::memcpy(&seen0, BackPage(4), 2);
  std::memcpy(&seen1, FrontPage(kDataFrame), 2);
  EXPECT_EQ(seen0, gtf::kPermitAccess | gtf::kReadonly | gtf::kReading);
  EXPECT_EQ(seen1, gtf::kPermitAccess | gtf::kReading | gtf::kWriting);
  EXPECT_EQ(FlagsOf(table_ref), gtf::kPermitAccess | gtf::kReadonly);
  EXPECT_EQ(FlagsOf(data_ref), gtf::kPermitAccess);
}

// ---- domain death ---------------------------------------------------------------------

TEST_F(GrantTest, GranterDeathKeepsExistingMappings) {
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame, false));
  MapResult m = gt_.Map(kBack, kFront, 8, false);
  ASSERT_EQ(m.status, gntst::kOkay);
  ASSERT_TRUE(gt_.RemoveDomain(kFront).ok());
  EXPECT_FALSE(gt_.RemoveDomain(kFront).ok());
  std::memcpy(m.addr, "still", 5);  // the page is still the granter's memory
  EXPECT_EQ(std::memcmp(FrontPage(kDataFrame), "still", 5), 0);
  EXPECT_EQ(gt_.ForeignMappingsOf(kFront), 1u);
  EXPECT_EQ(gt_.Pins(kFront, 8), (PinCounts{0, 1, 0, 0, kBack}));
  EXPECT_EQ(gt_.Map(kBack, kFront, 8, false).status, gntst::kBadDomain);
  CopySegment seg = GrefToLocal(8, kFront, 0, 4, 0, 8);
  gt_.Copy(kBack, std::span(&seg, 1));
  EXPECT_EQ(seg.status, gntst::kBadDomain);
  EXPECT_EQ(gt_.Unmap(kBack, m.handle), gntst::kOkay);
  EXPECT_EQ(gt_.ForeignMappingsOf(kFront), 0u);
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess);
  // The id can come back (a restarted domain), with no table yet.
  ASSERT_TRUE(gt_.AddDomain(kFront, front_.get(), kBytes).ok());
  EXPECT_EQ(gt_.Map(kBack, kFront, 8, false).status, gntst::kBadGntref);
}

TEST_F(GrantTest, GranteeDeathReleasesItsMappings) {
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame, false));
  ASSERT_TRUE(w_.GrantAccess(9, kBack, kDataFrame + 1, true));
  ASSERT_EQ(gt_.Map(kBack, kFront, 8, false).status, gntst::kOkay);
  ASSERT_EQ(gt_.Map(kBack, kFront, 9, true).status, gntst::kOkay);
  EXPECT_FALSE(w_.EndAccess(8));
  ASSERT_TRUE(gt_.RemoveDomain(kBack).ok());
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess);
  EXPECT_EQ(FlagsOf(9), gtf::kPermitAccess | gtf::kReadonly);
  EXPECT_EQ(gt_.ForeignMappingsOf(kFront), 0u);
  EXPECT_TRUE(w_.EndAccess(8));
  EXPECT_TRUE(w_.EndAccess(9));
}

TEST_F(GrantTest, AddDomainValidation) {
  EXPECT_FALSE(gt_.AddDomain(kFront, front_.get(), kBytes).ok());  // exists
  EXPECT_FALSE(gt_.AddDomain(kDomidSelf, front_.get(), kBytes).ok());
  EXPECT_FALSE(gt_.AddDomain(20, front_.get(), 100).ok());
  EXPECT_FALSE(gt_.AddDomain(20, nullptr, kBytes).ok());
  EXPECT_FALSE(gt_.RemoveDomain(kUnknown).ok());
}

// ---- fault injection and stats ----------------------------------------------------------

TEST_F(GrantTest, InjectedMapFailuresAndStats) {
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame, false));
  gt_.InjectMapFailures(2, gntst::kEagain);
  EXPECT_EQ(gt_.Map(kBack, kFront, 8, false).status, gntst::kEagain);
  EXPECT_EQ(gt_.Map(kBack, kFront, 8, false).status, gntst::kEagain);
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess);
  gt_.SetMapDelay(1000);
  gt_.SetUnmapDelay(1000);
  MapResult m = gt_.Map(kBack, kFront, 8, false);
  ASSERT_EQ(m.status, gntst::kOkay);
  EXPECT_EQ(gt_.Unmap(kBack, m.handle), gntst::kOkay);
  EXPECT_EQ(gt_.Unmap(kBack, m.handle), gntst::kBadHandle);
  GrantStats s = gt_.Stats();
  EXPECT_EQ(s.map.calls, 3u);
  EXPECT_EQ(s.map.by_status[gntst::kEagain], 2u);
  EXPECT_EQ(s.map.by_status[gntst::kOkay], 1u);
  EXPECT_EQ(s.unmap.calls, 2u);
  EXPECT_EQ(s.unmap.by_status[gntst::kBadHandle], 1u);
  EXPECT_EQ(s.injected, 2u);
  EXPECT_EQ(s.setup.by_status[gntst::kOkay], 1u);
}

// ---- hostile granter ----------------------------------------------------------------------

// One thread rewrites entries 8..15 with arbitrary flags (including the
// Xen-owned reading/writing bits), grantees and frames (some outside memory)
// while two others map/unmap and copy through them. The model must never
// hand out a page outside the granter's memory, never hang, and end with no
// pins once every handle is unmapped; afterwards the entries work normally.
TEST_F(GrantTest, HostileGranterCannotBreakInvariants) {
  constexpr GrantRef kFirst = 8, kCount = 8;
  constexpr int kIterations = 20000;
  std::atomic<bool> stop{false};
  std::thread flipper([&] {
    std::mt19937 rng(1);
    while (!stop.load(std::memory_order_relaxed)) {
      const GrantRef ref = kFirst + rng() % kCount;
      const uint16_t flags = static_cast<uint16_t>(rng() & 0x1F);
      const DomId domid = (rng() & 3) == 0 ? kOther : kBack;
      const uint32_t frame = kDataFrame + rng() % (2 * kPages);
      w_.WriteRaw(ref, {flags, domid, frame});
    }
  });
  std::atomic<int> bad{0};
  std::thread mapper([&] {
    std::mt19937 rng(2);
    std::vector<GrantHandle> held;
    for (int i = 0; i < kIterations; ++i) {
      MapResult m = gt_.Map(kBack, kFront, kFirst + rng() % kCount, (rng() & 1) != 0);
      if (m.status == gntst::kOkay) {
        if (m.frame >= kPages || m.addr != FrontPage(m.frame)) bad.fetch_add(1);
        held.push_back(m.handle);
      } else if (m.status != gntst::kGeneralError && m.status != gntst::kBadPage) {
        bad.fetch_add(1);
      }
      if (held.size() > 6 || (rng() & 3) == 0) {
        while (!held.empty()) {
          if (gt_.Unmap(kBack, held.back()) != gntst::kOkay) bad.fetch_add(1);
          held.pop_back();
        }
      }
    }
    for (GrantHandle h : held)
      if (gt_.Unmap(kBack, h) != gntst::kOkay) bad.fetch_add(1);
  });
  std::thread copier([&] {
    std::mt19937 rng(3);
    for (int i = 0; i < kIterations; ++i) {
      CopySegment segs[] = {GrefToLocal(kFirst + rng() % kCount, kFront, 0, 4, 0, 64),
                            LocalToGref(5, 0, kFirst + rng() % kCount, kFront, 64, 64)};
      gt_.Copy(kBack, segs);
      for (const CopySegment& s : segs)
        if (s.status != gntst::kOkay && s.status != gntst::kGeneralError && s.status != gntst::kBadPage)
          bad.fetch_add(1);
    }
  });
  mapper.join();
  copier.join();
  stop.store(true);
  flipper.join();
  EXPECT_EQ(bad.load(), 0);
  const GrantStats stats = gt_.Stats();  // how hostile it was (informational, not asserted)
  const auto ok = stats.map.by_status.find(gntst::kOkay);
  RecordProperty("maps_ok", std::to_string(ok == stats.map.by_status.end() ? 0 : ok->second));
  RecordProperty("cas_retries", std::to_string(stats.cas_retries));
  RecordProperty("unstable", std::to_string(stats.unstable));
  EXPECT_EQ(gt_.LiveHandles(kBack), 0u);
  EXPECT_EQ(gt_.ForeignMappingsOf(kFront), 0u);
  for (GrantRef ref = kFirst; ref < kFirst + kCount; ++ref) EXPECT_EQ(gt_.Pins(kFront, ref), PinCounts{}) << ref;
  // Back to a well-behaved granter: the usual protocol works on every entry.
  for (GrantRef ref = kFirst; ref < kFirst + kCount; ++ref) {
    w_.WriteRaw(ref, {});
    ASSERT_TRUE(w_.GrantAccess(ref, kBack, kDataFrame, false));
    MapResult m = gt_.Map(kBack, kFront, ref, false);
    ASSERT_EQ(m.status, gntst::kOkay) << ref;
    EXPECT_FALSE(w_.EndAccess(ref));
    ASSERT_EQ(gt_.Unmap(kBack, m.handle), gntst::kOkay);
    EXPECT_TRUE(w_.EndAccess(ref)) << ref;
  }
}

// Many grantee threads on one well-behaved entry: pin counts stay exact.
TEST_F(GrantTest, ConcurrentGranteesKeepPinsConsistent) {
  ASSERT_TRUE(w_.GrantAccess(8, kBack, kDataFrame, false));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5000; ++i) {
        MapResult m = gt_.Map(kBack, kFront, 8, (t & 1) != 0);
        ASSERT_EQ(m.status, gntst::kOkay);
        CopySegment seg = GrefToLocal(8, kFront, 0, 4 + t, 0, 32);
        gt_.Copy(kBack, std::span(&seg, 1));
        ASSERT_EQ(seg.status, gntst::kOkay);
        ASSERT_EQ(gt_.Unmap(kBack, m.handle), gntst::kOkay);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(gt_.Pins(kFront, 8), PinCounts{});
  EXPECT_EQ(FlagsOf(8), gtf::kPermitAccess);
  EXPECT_TRUE(w_.EndAccess(8));
}

}  // namespace
}  // namespace vioport::xen
