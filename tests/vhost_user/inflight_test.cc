// SPDX-License-Identifier: Apache-2.0
// The in-flight log at the core level (SplitInflightLog + SplitDeviceQueue::
// UseInflightLog), which is what lets a vhost-user back-end restarted after a
// crash resubmit exactly the requests it had popped and not completed. A
// "crash" here is dropping the queue (and the chains it handed out) without
// completing them; the ring memory and the log region survive, as the guest
// RAM and the in-flight memfd survive a vios restart. Rings are written by
// hand (testsupport's RawSplitRing), so every head is the test's choice.
// Runs on mapped and on copy-only memory.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "vioport/core/inflight_log.h"
#include "vioport/core/packed_device_queue.h"
#include "vioport/core/split_device_queue.h"
#include "vioport/testing/raw_ring.h"

namespace vioport {
namespace {

using testing::FlatGuest;
using testing::RawPackedRing;
using testing::RawSplitRing;

constexpr uint32_t kSize = 8;
constexpr uint64_t kFeatures = feature::Bit(feature::kVersion1);

class InflightLog : public ::testing::TestWithParam<bool> {
 protected:
  InflightLog() : ring_(guest_, kSize), log_mem_(SplitInflightLog::RegionBytes(kSize) + 64, 0) {
    // Descriptor i: one writable 64-byte buffer, so chains are told apart by head.
    for (uint16_t i = 0; i < kSize; ++i) ring_.SetDesc(i, guest_.Alloc(64), 64, desc_flag::kWrite);
    if (GetParam()) copy_ = std::make_shared<CopyOnlyMemory>(guest_.memory());
  }

  GuestMemory* mem() { return copy_ ? static_cast<GuestMemory*>(copy_.get()) : guest_.memory().get(); }
  uint8_t* log_region() { return log_mem_.data(); }

  // A device (re)start: a new queue over the same ring, at `base`, with the log.
  std::unique_ptr<SplitDeviceQueue> Start(uint32_t base, SplitInflightLog* log, absl::Status* st = nullptr) {
    auto q = std::make_unique<SplitDeviceQueue>(ring_.config(kFeatures), mem(), [this](uint16_t, RingError e) {
      errors_.push_back(e);
    });
    EXPECT_EQ(q->Init(), RingError::kNone);
    q->SetBase(base);
    absl::Status s = q->UseInflightLog(log);
    if (st) {
      *st = s;
    } else {
      EXPECT_TRUE(s.ok()) << s;
    }
    return q;
  }

  std::vector<uint16_t> PopAll(SplitDeviceQueue& q, std::vector<DescriptorChain>* keep) {
    std::vector<uint16_t> heads;
    DescriptorChain c;
    while (q.Pop(c) == PopStatus::kChain) {
      heads.push_back(c.id());
      keep->push_back(std::move(c));
    }
    return heads;
  }

  // Completes the kept chains with these heads, in this order, as one batch.
  void Complete(SplitDeviceQueue& q, std::vector<DescriptorChain>& chains, std::vector<uint16_t> heads) {
    for (uint16_t h : heads)
      for (auto& c : chains)
        if (c.valid() && c.id() == h) q.AddUsed(std::move(c), 1);
    q.Publish();
  }

  // Header fields of the log region.
  uint16_t LogU16(size_t off) {
    uint16_t v;
    std::memcpy(&v, log_region() + off, 2);
    return v;
  }
  uint8_t& Inflight(uint16_t head) { return log_region()[16 + 16 * head]; }

  FlatGuest guest_{1 << 16};
  RawSplitRing ring_;
  std::shared_ptr<CopyOnlyMemory> copy_;
  std::vector<uint8_t> log_mem_;
  std::vector<RingError> errors_;
};

TEST_P(InflightLog, FreshLogStartsEmpty) {
  SplitInflightLog log(log_region(), kSize);
  EXPECT_TRUE(log.fresh());
  auto q = Start(0, &log);
  EXPECT_FALSE(log.fresh());
  EXPECT_EQ(LogU16(8), 1);      // version
  EXPECT_EQ(LogU16(10), kSize);  // desc_num
  EXPECT_EQ(LogU16(14), 0);      // used_idx
  EXPECT_EQ(q->resubmit_pending(), 0u);
}

TEST_P(InflightLog, UncompletedChainsResubmittedInPopOrder) {
  // Heads made available out of index order, so pop order != head order.
  const std::vector<uint16_t> avail = {5, 2, 7, 0, 3, 1};
  for (uint16_t h : avail) ring_.PushAvail(h);
  SplitInflightLog log(log_region(), kSize);
  {
    auto q = Start(0, &log);
    std::vector<DescriptorChain> chains;
    // The device pops five (head 1 stays in the avail ring).
    ring_.SetAvailIdx(5);
    EXPECT_EQ(PopAll(*q, &chains), (std::vector<uint16_t>{5, 2, 7, 0, 3}));
    for (uint16_t h : {5, 2, 7, 0, 3}) EXPECT_EQ(Inflight(h), 1) << h;
    // Completes two of them, out of order, then "crashes".
    Complete(*q, chains, {0, 2});
    EXPECT_EQ(ring_.used_idx(), 2);
    EXPECT_EQ(LogU16(14), 2);
    EXPECT_EQ(Inflight(0), 0);
    EXPECT_EQ(Inflight(2), 0);
  }  // queue and chains gone; ring memory and log survive
  ring_.SetAvailIdx(6);  // the driver made head 1 available meanwhile

  // The restart: base = the ring's used index, as QEMU sends after a reconnect.
  SplitInflightLog log2(log_region(), kSize);
  auto q = Start(ring_.used_idx(), &log2);
  EXPECT_EQ(q->resubmit_pending(), 3u);
  std::vector<DescriptorChain> chains;
  const std::vector<uint16_t> popped = PopAll(*q, &chains);
  // The three never completed, oldest first; then the new avail entry; nothing twice.
  EXPECT_EQ(popped, (std::vector<uint16_t>{5, 7, 3, 1}));
  EXPECT_EQ(q->resubmit_pending(), 0u);
  EXPECT_EQ(q->GetBase(), 6u);
  // The resubmitted chains are whole chains: completing them reaches the driver.
  Complete(*q, chains, {7, 1, 5, 3});
  EXPECT_EQ(ring_.used_idx(), 6);
  std::vector<uint32_t> used_ids;
  for (uint16_t i = 0; i < 6; ++i) used_ids.push_back(ring_.used(i).id);
  EXPECT_EQ(used_ids, (std::vector<uint32_t>{0, 2, 7, 1, 5, 3}));
  for (uint16_t h = 0; h < kSize; ++h) EXPECT_EQ(Inflight(h), 0) << h;
  EXPECT_EQ(LogU16(14), 6);
  EXPECT_TRUE(errors_.empty());
}

TEST_P(InflightLog, SecondCrashAfterRecovery) {
  for (uint16_t h : {4, 6, 1}) ring_.PushAvail(h);
  SplitInflightLog log(log_region(), kSize);
  {
    auto q = Start(0, &log);
    std::vector<DescriptorChain> chains;
    EXPECT_EQ(PopAll(*q, &chains), (std::vector<uint16_t>{4, 6, 1}));
  }
  {
    // Recovered, one of the three completed, crashed again.
    auto q = Start(ring_.used_idx(), &log);
    std::vector<DescriptorChain> chains;
    DescriptorChain c;
    ASSERT_EQ(q->Pop(c), PopStatus::kChain);
    EXPECT_EQ(c.id(), 4);
    chains.push_back(std::move(c));
    Complete(*q, chains, {4});
  }
  ring_.PushAvail(2);
  auto q = Start(ring_.used_idx(), &log);
  std::vector<DescriptorChain> chains;
  EXPECT_EQ(PopAll(*q, &chains), (std::vector<uint16_t>{6, 1, 2}));
  EXPECT_TRUE(errors_.empty());
}

TEST_P(InflightLog, UsedIndexStoredButLogNotClearedCountsAsDone) {
  // The crash window inside Publish(): the batch is linked in the log
  // (Completing) and the used index is in the ring, but the entries were
  // not cleared (Completed never ran). The driver has seen the batch, so it
  // must not be resubmitted.
  for (uint16_t h : {3, 6, 0, 4}) ring_.PushAvail(h);
  SplitInflightLog log(log_region(), kSize);
  {
    auto q = Start(0, &log);
    std::vector<DescriptorChain> chains;
    EXPECT_EQ(PopAll(*q, &chains), (std::vector<uint16_t>{3, 6, 0, 4}));
    // What Publish() would do for the batch {6, 4}, stopped before Completed.
    const std::vector<uint16_t> batch = {6, 4};
    log.Completing(batch);
    VirtqUsedElem e;
    e.len = 1;
    e.id = 6;
    guest_.Put(ring_.used_ring() + SplitLayout::UsedRing(0), e);
    e.id = 4;
    guest_.Put(ring_.used_ring() + SplitLayout::UsedRing(1), e);
    guest_.Put<le16>(ring_.used_ring() + SplitLayout::kUsedIdx, le16(2));
    EXPECT_EQ(Inflight(6), 1);  // still marked
    EXPECT_EQ(Inflight(4), 1);
    EXPECT_EQ(LogU16(14), 0);
    chains.clear();
  }
  SplitInflightLog log2(log_region(), kSize);
  auto q = Start(ring_.used_idx(), &log2);
  EXPECT_EQ(q->resubmit_pending(), 2u);
  EXPECT_EQ(LogU16(14), 2);  // the log caught up with the ring
  EXPECT_EQ(Inflight(6), 0);
  EXPECT_EQ(Inflight(4), 0);
  std::vector<DescriptorChain> chains;
  EXPECT_EQ(PopAll(*q, &chains), (std::vector<uint16_t>{3, 0}));
  EXPECT_EQ(q->GetBase(), 4u);
  EXPECT_TRUE(errors_.empty());
}

TEST_P(InflightLog, LogForAnotherQueueSizeIsRefused) {
  for (uint16_t h : {1, 2}) ring_.PushAvail(h);
  SplitInflightLog log(log_region(), kSize);
  {
    auto q = Start(0, &log);
    std::vector<DescriptorChain> chains;
    EXPECT_EQ(PopAll(*q, &chains).size(), 2u);
  }
  // Someone rewrote desc_num: the log does not describe this ring.
  const uint16_t wrong = 16;
  std::memcpy(log_region() + 10, &wrong, 2);
  absl::Status st;
  auto q = Start(0, &log, &st);
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_NE(st.message().find("16 descriptors"), std::string::npos) << st;
  // A fresh log at the given base: nothing resubmitted, popping goes on from 0.
  EXPECT_EQ(q->resubmit_pending(), 0u);
  EXPECT_EQ(LogU16(10), kSize);
  EXPECT_EQ(LogU16(8), 1);
  for (uint16_t h = 0; h < kSize; ++h) EXPECT_EQ(Inflight(h), 0);
  std::vector<DescriptorChain> chains;
  EXPECT_EQ(PopAll(*q, &chains), (std::vector<uint16_t>{1, 2}));
  EXPECT_EQ(Inflight(1), 1);  // and the new log is kept up to date
}

TEST_P(InflightLog, CorruptEntryIsRefused) {
  for (uint16_t h : {1, 2}) ring_.PushAvail(h);
  SplitInflightLog log(log_region(), kSize);
  {
    auto q = Start(0, &log);
    std::vector<DescriptorChain> chains;
    EXPECT_EQ(PopAll(*q, &chains).size(), 2u);
  }
  Inflight(5) = 7;  // only 0 and 1 are meaningful
  absl::Status st;
  auto q = Start(0, &log, &st);
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_NE(st.message().find("entry 5 is corrupt"), std::string::npos) << st;
  EXPECT_EQ(q->resubmit_pending(), 0u);
  EXPECT_EQ(Inflight(5), 0);
  EXPECT_EQ(Inflight(1), 0);
  std::vector<DescriptorChain> chains;
  EXPECT_EQ(PopAll(*q, &chains), (std::vector<uint16_t>{1, 2}));
}

TEST_P(InflightLog, UsedIndexFarAheadOfLogIsRefused) {
  SplitInflightLog log(log_region(), kSize);
  { auto q = Start(0, &log); }
  // The ring claims more completions since the log's last batch than the
  // queue has entries: the log cannot be for this ring's history.
  guest_.Put<le16>(ring_.used_ring() + SplitLayout::kUsedIdx, le16(100));
  absl::Status st;
  auto q = Start(100, &log, &st);
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_EQ(q->resubmit_pending(), 0u);
  EXPECT_EQ(LogU16(14), 100);
  EXPECT_EQ(q->GetBase(), 100u);
}

TEST_P(InflightLog, HostileHeadsInTheLogAreWalkedAsChains) {
  // A log entry for a head whose descriptors the driver has since rewritten
  // into a loop: resubmitting it breaks the queue like any bad chain, it does
  // not hang or crash.
  ring_.PushAvail(3);
  SplitInflightLog log(log_region(), kSize);
  {
    auto q = Start(0, &log);
    std::vector<DescriptorChain> chains;
    EXPECT_EQ(PopAll(*q, &chains).size(), 1u);
  }
  ring_.SetDesc(3, guest_.base(), 64, desc_flag::kWrite | desc_flag::kNext, 3);
  auto q = Start(0, &log);
  DescriptorChain c;
  EXPECT_EQ(q->Pop(c), PopStatus::kError);
  EXPECT_EQ(errors_, (std::vector<RingError>{RingError::kChainTooLong}));
  EXPECT_TRUE(guest_.GuardsIntact());
}

INSTANTIATE_TEST_SUITE_P(Memory, InflightLog, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "CopyOnly" : "Mapped"; });

// ---- packed rings ---------------------------------------------------------------
//
// The device writes used descriptors over the slots the driver filled, so once
// requests complete out of order the ring no longer holds the descriptors of
// the chains still in flight: the log's copies are what is resubmitted, and
// the log, not SET_VRING_BASE (QEMU re-sends the last start's position after
// a crash), says where the ring stands.

constexpr uint32_t kPSize = 8;
constexpr uint32_t kFreshBase = 0x80008000;  // avail 0 / wrap 1, used 0 / wrap 1: a new ring

class PackedInflight : public ::testing::TestWithParam<bool> {
 protected:
  PackedInflight() : ring_(guest_, kPSize), log_mem_(PackedInflightLog::RegionBytes(kPSize) + 64, 0) {
    if (GetParam()) copy_ = std::make_shared<CopyOnlyMemory>(guest_.memory());
  }
  GuestMemory* mem() { return copy_ ? static_cast<GuestMemory*>(copy_.get()) : guest_.memory().get(); }
  uint8_t* log_region() { return log_mem_.data(); }

  std::unique_ptr<PackedDeviceQueue> Start(uint32_t base, PackedInflightLog* log, absl::Status* st = nullptr) {
    auto q = std::make_unique<PackedDeviceQueue>(ring_.config(kFeatures), mem(), [this](uint16_t, RingError e) {
      errors_.push_back(e);
    });
    EXPECT_EQ(q->Init(), RingError::kNone);
    q->SetBase(base);
    absl::Status s = q->UseInflightLog(log);
    if (st) {
      *st = s;
    } else {
      EXPECT_TRUE(s.ok()) << s;
    }
    return q;
  }

  // The driver offers a two-descriptor chain {8 readable bytes = token}{64
  // writable} with buffer id `id` at `slot` (the head's flags written last).
  void Offer(uint16_t slot, uint16_t id, uint64_t token, bool wrap = true) {
    const uint64_t in = guest_.Alloc(8), out = guest_.Alloc(64);
    guest_.Put(in, token);
    const uint16_t s1 = static_cast<uint16_t>((slot + 1) % kPSize);
    const bool w1 = s1 == 0 ? !wrap : wrap;
    ring_.SetDesc(s1, out, 64, id, desc_flag::kWrite, true, w1);
    ring_.SetDesc(slot, in, 8, id, desc_flag::kNext, true, wrap);
  }
  static uint64_t Token(DescriptorChain& c) {
    uint64_t t = ~uint64_t{0};
    EXPECT_EQ(c.Read(0, &t, 8), RingError::kNone);
    return t;
  }
  std::vector<uint64_t> PopAll(PackedDeviceQueue& q, std::vector<DescriptorChain>* keep) {
    std::vector<uint64_t> tokens;
    DescriptorChain c;
    while (q.Pop(c) == PopStatus::kChain) {
      tokens.push_back(Token(c));
      keep->push_back(std::move(c));
    }
    return tokens;
  }
  // Completes the kept chains with these tokens, in this order, as one batch.
  void Complete(PackedDeviceQueue& q, std::vector<DescriptorChain>& chains, std::vector<uint64_t> tokens) {
    for (uint64_t t : tokens)
      for (auto& c : chains)
        if (c.valid() && Token(c) == t) {
          EXPECT_EQ(c.Write(0, &t, 8), RingError::kNone);
          q.AddUsed(std::move(c), 8);
        }
    q.Publish();
  }
  // The used descriptor at `slot` in wrap `wrap`, if there is one: its id.
  std::optional<uint16_t> UsedAt(uint16_t slot, bool wrap) {
    PackedDesc d = ring_.desc(slot);
    const uint16_t f = d.flags;
    if (bool(f & desc_flag::kAvail) != wrap || bool(f & desc_flag::kUsed) != wrap) return std::nullopt;
    return static_cast<uint16_t>(d.id);
  }
  uint16_t LogU16(size_t off) {
    uint16_t v;
    std::memcpy(&v, log_region() + off, 2);
    return v;
  }
  uint8_t& Entry(uint16_t i, size_t off) { return log_region()[32 + 32 * i + off]; }

  FlatGuest guest_{1 << 16};
  RawPackedRing ring_;
  std::shared_ptr<CopyOnlyMemory> copy_;
  std::vector<uint8_t> log_mem_;
  std::vector<RingError> errors_;
};

TEST_P(PackedInflight, OutOfOrderCompletionsThenCrashResubmitsFromTheLog) {
  // Tokens 10, 11, 12 with ids 0, 1, 2 in slots 0-1, 2-3, 4-5.
  for (uint16_t k = 0; k < 3; ++k) Offer(2 * k, k, 10 + k);
  PackedInflightLog log(log_region(), kPSize);
  {
    auto q = Start(kFreshBase, &log);
    std::vector<DescriptorChain> chains;
    EXPECT_EQ(PopAll(*q, &chains), (std::vector<uint64_t>{10, 11, 12}));
    Complete(*q, chains, {11});  // token 11 first: its used descriptor lands on slot 0, token 10's head
    EXPECT_EQ(UsedAt(0, true), std::optional<uint16_t>(1));
    EXPECT_EQ(LogU16(16), 2);  // used_idx
    EXPECT_EQ(LogU16(18), 2);  // old_used_idx: the batch is settled
  }  // the crash: 10 and 12 in flight, and 10's descriptors are gone from the ring

  // The restart, at the base a VMM re-sends after a crash (the last start's).
  PackedInflightLog log2(log_region(), kPSize);
  auto q = Start(kFreshBase, &log2);
  EXPECT_EQ(q->resubmit_pending(), 2u);
  EXPECT_EQ(q->GetBase(), 6u | 1u << 15 | 2u << 16 | 1u << 31) << "avail 6 and used 2, both in wrap 1";
  Offer(6, 1, 13);  // the driver reuses id 1 in the last two slots
  std::vector<DescriptorChain> chains;
  EXPECT_EQ(PopAll(*q, &chains), (std::vector<uint64_t>{10, 12, 13})) << "in flight first, oldest first, then new";
  Complete(*q, chains, {12, 10, 13});
  EXPECT_EQ(UsedAt(2, true), std::optional<uint16_t>(2));
  EXPECT_EQ(UsedAt(4, true), std::optional<uint16_t>(0));
  EXPECT_EQ(UsedAt(6, true), std::optional<uint16_t>(1));
  EXPECT_EQ(q->GetBase(), 0u | 0u << 15 | 0u << 16 | 0u << 31) << "both positions wrapped";
  for (uint16_t i = 0; i < kPSize; ++i) EXPECT_EQ(Entry(i, 0), 0) << "entry " << i << " still in flight";
  EXPECT_TRUE(errors_.empty());
  EXPECT_TRUE(guest_.GuardsIntact());
}

TEST_P(PackedInflight, ACrashAtEveryStepOfAPublishLosesNothingAndRepeatsNothing) {
  // Tokens 20..23 (ids 0..3) fill the ring; 22 and 20 complete in one batch.
  // The ring and the log are copied at each point a crash can leave them;
  // each copy, recovered, resubmits exactly the chains whose used
  // descriptors are not visible in that copy's ring.
  for (uint16_t k = 0; k < 4; ++k) Offer(2 * k, k, 20 + k);
  struct Snap {
    int step;
    std::vector<uint8_t> ring, log;
  };
  std::vector<Snap> snaps;
  auto snap = [&](int step) {
    Snap s{step, std::vector<uint8_t>(16 * kPSize), log_mem_};
    guest_.Read(ring_.ring(), s.ring.data(), s.ring.size());
    snaps.push_back(std::move(s));
  };
  PackedInflightLog log(log_region(), kPSize);
  {
    auto q = Start(kFreshBase, &log);
    std::vector<DescriptorChain> chains;
    EXPECT_EQ(PopAll(*q, &chains), (std::vector<uint64_t>{20, 21, 22, 23}));
    log.step_hook = snap;
    snap(0);
    Complete(*q, chains, {22, 20});
    snap(4);
    log.step_hook = nullptr;
  }
  ASSERT_EQ(snaps.size(), 5u);
  for (const Snap& s : snaps) {
    SCOPED_TRACE(::testing::Message() << "crash at step " << s.step);
    const bool visible = s.step >= 2;
    guest_.Write(ring_.ring(), s.ring.data(), s.ring.size());
    std::memcpy(log_region(), s.log.data(), s.log.size());
    PackedInflightLog l(log_region(), kPSize);
    errors_.clear();
    auto q = Start(kFreshBase, &l);
    std::vector<DescriptorChain> chains;
    const std::vector<uint64_t> want = visible ? std::vector<uint64_t>{21, 23} : std::vector<uint64_t>{20, 21, 22, 23};
    EXPECT_EQ(q->resubmit_pending(), want.size());
    EXPECT_EQ(PopAll(*q, &chains), want);
    EXPECT_EQ(q->GetBase() >> 16, visible ? (4u | 1u << 15) : (0u | 1u << 15)) << "used position";
    EXPECT_EQ(LogU16(16), LogU16(18)) << "the log settled the batch";
    for (uint16_t i = 0; i < kPSize; ++i) EXPECT_EQ(Entry(i, 1), 0) << "entry " << i << " still marked";
    EXPECT_TRUE(errors_.empty());
  }
}

TEST_P(PackedInflight, VisibleBatchStaysDoneAfterTheDriverRefillsItsSlot) {
  // The crash lands between the ring store and the log's catching up, and
  // the driver then takes the used descriptor and offers slot 0 again in the
  // next lap: the USED bit it leaves there still says the batch was seen.
  for (uint16_t k = 0; k < 4; ++k) Offer(2 * k, k, 30 + k);
  std::vector<uint8_t> ring_at_2(16 * kPSize), log_at_2;
  PackedInflightLog log(log_region(), kPSize);
  {
    auto q = Start(kFreshBase, &log);
    std::vector<DescriptorChain> chains;
    EXPECT_EQ(PopAll(*q, &chains).size(), 4u);
    log.step_hook = [&](int step) {
      if (step != 2) return;
      guest_.Read(ring_.ring(), ring_at_2.data(), ring_at_2.size());
      log_at_2 = log_mem_;
    };
    Complete(*q, chains, {31});
    log.step_hook = nullptr;
  }
  ASSERT_FALSE(log_at_2.empty());
  std::memcpy(log_region(), log_at_2.data(), log_at_2.size());
  guest_.Write(ring_.ring(), ring_at_2.data(), ring_at_2.size());
  const uint64_t next_lap = guest_.Alloc(8);
  guest_.Put(next_lap, uint64_t{34});
  ring_.SetDesc(0, next_lap, 8, 1, 0, true, /*wrap=*/false);  // the next lap's offer
  PackedInflightLog l(log_region(), kPSize);
  auto q = Start(kFreshBase, &l);
  std::vector<DescriptorChain> chains;
  EXPECT_EQ(PopAll(*q, &chains), (std::vector<uint64_t>{30, 32, 33, 34})) << "the refilled slot is new work";
  EXPECT_TRUE(errors_.empty());
}

TEST_P(PackedInflight, ALogOfTheOtherRingFormatIsRefused) {
  // A split ring's log where a packed ring starts (the driver renegotiated
  // after a reset the VMM did not tell of): refused, started afresh.
  SplitInflightLog split(log_region(), kPSize);
  split.Initialize(3);
  absl::Status st;
  PackedInflightLog log(log_region(), kPSize);
  auto q = Start(kFreshBase, &log, &st);
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_NE(st.message().find("split"), std::string::npos) << st;
  EXPECT_EQ(q->GetBase(), kFreshBase);
  // And the other way round.
  SplitInflightLog split2(log_region(), kPSize);
  EXPECT_TRUE(absl::IsInvalidArgument(split2.Recover(0).status()));
}

TEST_P(PackedInflight, CorruptLinksAreRefused) {
  for (uint16_t k = 0; k < 2; ++k) Offer(2 * k, k, 40 + k);
  PackedInflightLog log(log_region(), kPSize);
  {
    auto q = Start(kFreshBase, &log);
    std::vector<DescriptorChain> chains;
    EXPECT_EQ(PopAll(*q, &chains).size(), 2u);
  }
  // The first chain's second entry now links back into the second chain.
  const uint16_t head0 = 0;
  ASSERT_EQ(Entry(head0, 0), 1);
  uint16_t second;
  std::memcpy(&second, &Entry(head0, 2), 2);
  const uint16_t bad = 2;  // the second chain's head
  std::memcpy(&Entry(head0, 2), &bad, 2);
  const uint16_t num = 3;
  std::memcpy(&Entry(head0, 6), &num, 2);
  absl::Status st;
  PackedInflightLog l(log_region(), kPSize);
  auto q = Start(kFreshBase, &l, &st);
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_EQ(q->resubmit_pending(), 0u);
  EXPECT_EQ(q->GetBase(), kFreshBase);
  EXPECT_TRUE(errors_.empty());
  EXPECT_TRUE(guest_.GuardsIntact());
}

TEST_P(PackedInflight, HostileLoggedDescriptorsBreakTheQueueNotTheProcess) {
  Offer(0, 0, 50);
  PackedInflightLog log(log_region(), kPSize);
  {
    auto q = Start(kFreshBase, &log);
    std::vector<DescriptorChain> chains;
    EXPECT_EQ(PopAll(*q, &chains).size(), 1u);
  }
  // The logged writable buffer now points past guest memory.
  const uint64_t far = guest_.end() + 4096;
  std::memcpy(&Entry(1, 24), &far, 8);
  PackedInflightLog l(log_region(), kPSize);
  auto q = Start(kFreshBase, &l);
  DescriptorChain c;
  if (GetParam()) {
    // Copy-only memory checks an address when it is copied: the write
    // faults, and returning the chain breaks the queue.
    ASSERT_EQ(q->Pop(c), PopStatus::kChain);
    const uint64_t t = 50;
    EXPECT_NE(c.Write(0, &t, 8), RingError::kNone);
    q->AddUsed(std::move(c), 8);
  } else {
    EXPECT_EQ(q->Pop(c), PopStatus::kError);
  }
  EXPECT_TRUE(q->broken());
  EXPECT_EQ(errors_.size(), 1u);
  if (!errors_.empty()) {
    EXPECT_EQ(errors_[0], RingError::kAddressOutOfRange) << RingErrorName(errors_[0]);
  }
  EXPECT_TRUE(guest_.GuardsIntact());
}

TEST_P(PackedInflight, MoreInFlightThanTheRingHoldsBreaksTheQueue) {
  // A driver that offers slots the device has not given back: with the log,
  // the device notices once more descriptors are in flight than there are slots.
  for (uint16_t k = 0; k < 4; ++k) Offer(2 * k, k, 60 + k);
  PackedInflightLog log(log_region(), kPSize);
  auto q = Start(kFreshBase, &log);
  std::vector<DescriptorChain> chains;
  EXPECT_EQ(PopAll(*q, &chains).size(), 4u);
  Offer(0, 4, 64, /*wrap=*/false);  // slot 0 again in the next lap, nothing used yet
  DescriptorChain c;
  EXPECT_EQ(q->Pop(c), PopStatus::kError);
  EXPECT_EQ(errors_, (std::vector<RingError>{RingError::kAvailIndexJump}));
}

INSTANTIATE_TEST_SUITE_P(Memory, PackedInflight, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "CopyOnly" : "Mapped"; });

}  // namespace
}  // namespace vioport
