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
#include "vioport/core/split_device_queue.h"
#include "vioport/testing/raw_ring.h"

namespace vioport {
namespace {

using testing::FlatGuest;
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

}  // namespace
}  // namespace vioport
