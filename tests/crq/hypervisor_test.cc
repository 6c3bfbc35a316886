// SPDX-License-Identifier: Apache-2.0
// Conformance tests for vioport::crq::Hypervisor: each hypercall and return
// code of docs/reference/crq.md, checked on the bytes in the partitions'
// memories.

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "vioport/transports/crq_hcall.h"
#include "vioport/emulators/crq_hypervisor.h"

namespace vioport::crq {
namespace {

constexpr PartitionId kClient = 1;
constexpr PartitionId kServer = 2;
constexpr PartitionId kOtherClient = 3;
constexpr UnitAddress kClientUnit = 0x30000000;
constexpr UnitAddress kServerUnit = 0x30000001;
constexpr UnitAddress kOtherClientUnit = 0x30000002;
constexpr UnitAddress kOtherServerUnit = 0x30000003;
constexpr Liobn kClientLiobn = 0x10000001;
constexpr Liobn kServerLiobn = 0x10000002;
constexpr Liobn kOtherClientLiobn = 0x10000003;
constexpr Liobn kOtherServerLiobn = 0x10000004;
constexpr uint64_t kMemBytes = 8 << 20;
constexpr uint64_t kWindowBytes = 16 << 20;
constexpr uint64_t kPage = kTcePageSize;
// Queue: IOBA 0 -> real address 0 in each partition.
constexpr uint64_t kQueueIoba = 0;
constexpr uint64_t kQueueRa = 0;

class CrqTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (auto* m : {&client_mem_, &server_mem_, &other_mem_}) m->assign(kMemBytes, 0);
    ASSERT_TRUE(hv_.AddPartition(kClient, client_mem_.data(), kMemBytes).ok());
    ASSERT_TRUE(hv_.AddPartition(kServer, server_mem_.data(), kMemBytes).ok());
    ASSERT_TRUE(hv_.AddPartition(kOtherClient, other_mem_.data(), kMemBytes).ok());
    ASSERT_TRUE(hv_.AddAdapterPair({kClient, kClientUnit, kClientLiobn, kWindowBytes, kServer, kServerUnit,
                                    kServerLiobn, kWindowBytes})
                    .ok());
    ASSERT_TRUE(hv_.AddAdapterPair({kOtherClient, kOtherClientUnit, kOtherClientLiobn, kWindowBytes, kServer,
                                    kOtherServerUnit, kOtherServerLiobn, kWindowBytes})
                    .ok());
  }

  // Maps [ioba, ioba+bytes) -> [ra, ra+bytes) with one H_PUT_TCE per page.
  void Map(PartitionId p, Liobn liobn, uint64_t ioba, uint64_t ra, uint64_t bytes, uint64_t perms) {
    for (uint64_t off = 0; off < bytes; off += kPage) {
      ASSERT_EQ(hv_.PutTce(p, liobn, ioba + off, MakeTce(ra + off, perms)), kHSuccess);
    }
  }
  void MapQueues() {
    Map(kClient, kClientLiobn, kQueueIoba, kQueueRa, kPage, kTceRead | kTceWrite);
    Map(kServer, kServerLiobn, kQueueIoba, kQueueRa, kPage, kTceRead | kTceWrite);
  }
  void Connect() {
    MapQueues();
    ASSERT_EQ(hv_.RegCrq(kClient, kClientUnit, kQueueIoba, kPage), kHClosed);
    ASSERT_EQ(hv_.RegCrq(kServer, kServerUnit, kQueueIoba, kPage), kHSuccess);
  }
  static CrqMessage Slot(const std::vector<uint8_t>& mem, uint64_t index) {
    return DecodeEntry(std::span<const uint8_t, 16>(mem.data() + kQueueRa + 16 * index, 16));
  }
  static void Fill(std::vector<uint8_t>& mem, uint64_t ra, uint64_t bytes, uint32_t seed) {
    for (uint64_t i = 0; i < bytes; ++i) mem[ra + i] = static_cast<uint8_t>((i * 131 + seed) >> 3 ^ i);
  }

  Hypervisor hv_;
  std::vector<uint8_t> client_mem_, server_mem_, other_mem_;
};

TEST(CrqEntryTest, BigEndianLayout) {
  const auto b = EncodeEntry({0x8001020304050607, 0x08090A0B0C0D0E0F});
  for (int i = 0; i < 16; ++i) EXPECT_EQ(b[i], i == 0 ? 0x80 : i) << i;
  EXPECT_EQ(DecodeEntry(b), (CrqMessage{0x8001020304050607, 0x08090A0B0C0D0E0F}));
  EXPECT_EQ(TransportEventHi(kEventPartnerDeregistered), 0xFF02000000000000u);
  EXPECT_EQ(HiFromBytes({0xC0, 0x01, 0, 0, 0, 0, 0, 0}), kInitHi);
  EXPECT_EQ(HeaderByte(kInitHi), kCrqInit);
  EXPECT_EQ(SecondByte(kInitCompleteHi), kCrqInitComplete);
  EXPECT_EQ(HcallName(kHCopyRdma), "H_COPY_RDMA");
  EXPECT_EQ(ReturnCodeName(kHDropped), "H_DROPPED");
  EXPECT_TRUE(IsLongBusy(9903));
}

// ---- H_REG_CRQ -------------------------------------------------------------------

TEST_F(CrqTest, RegCrqClosedBeforePartnerThenSuccessThenResource) {
  MapQueues();
  EXPECT_EQ(hv_.RegCrq(kClient, kClientUnit, kQueueIoba, kPage), kHClosed);  // registered anyway
  EXPECT_TRUE(hv_.QueueRegistered(kClient, kClientUnit));
  EXPECT_EQ(hv_.RegCrq(kServer, kServerUnit, kQueueIoba, kPage), kHSuccess);
  EXPECT_EQ(hv_.RegCrq(kClient, kClientUnit, kQueueIoba, kPage), kHResource);
  // Registration posts nothing to the partner.
  EXPECT_EQ(Slot(client_mem_, 0), CrqMessage{});
  EXPECT_EQ(Slot(server_mem_, 0), CrqMessage{});
}

TEST_F(CrqTest, RegCrqParameterChecks) {
  Map(kClient, kClientLiobn, 0, 0, 2 * kPage, kTceRead | kTceWrite);
  EXPECT_EQ(hv_.RegCrq(kClient, kClientUnit, 0, 0), kHParameter);
  EXPECT_EQ(hv_.RegCrq(kClient, kClientUnit, 0, 100), kHParameter);
  EXPECT_EQ(hv_.RegCrq(kClient, kClientUnit, 0, kPage + 16), kHParameter);
  EXPECT_EQ(hv_.RegCrq(kClient, kClientUnit, 16, kPage), kHParameter);              // not page aligned
  EXPECT_EQ(hv_.RegCrq(kClient, kClientUnit, 0, 3 * kPage), kHParameter);           // third page unmapped
  EXPECT_EQ(hv_.RegCrq(kClient, kClientUnit, kWindowBytes, kPage), kHParameter);    // outside the window
  EXPECT_EQ(hv_.RegCrq(kClient, kServerUnit, 0, kPage), kHParameter);               // another partition's unit
  EXPECT_EQ(hv_.RegCrq(kClient, 0x1234, 0, kPage), kHParameter);                    // unknown unit
  EXPECT_EQ(hv_.RegCrq(99, kClientUnit, 0, kPage), kHParameter);                    // unknown caller
  EXPECT_FALSE(hv_.QueueRegistered(kClient, kClientUnit));
  EXPECT_EQ(hv_.RegCrq(kClient, kClientUnit, 0, 2 * kPage), kHClosed);              // two pages is fine
}

// ---- H_SEND_CRQ ------------------------------------------------------------------

TEST_F(CrqTest, SendWritesBigEndianEntriesInOrder) {
  Connect();
  ASSERT_EQ(hv_.SendCrq(kClient, kClientUnit, 0x8011223344556677, 0x8899AABBCCDDEEFF), kHSuccess);
  ASSERT_EQ(hv_.SendCrq(kClient, kClientUnit, kInitHi, 0), kHSuccess);
  const uint8_t want[16] = {0x80, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
                            0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF};
  EXPECT_EQ(std::memcmp(server_mem_.data() + kQueueRa, want, 16), 0);
  EXPECT_EQ(server_mem_[kQueueRa + 16], 0xC0);
  EXPECT_EQ(server_mem_[kQueueRa + 17], 0x01);
  EXPECT_EQ(Slot(server_mem_, 2), CrqMessage{});
  EXPECT_EQ(Slot(client_mem_, 0), CrqMessage{});  // nothing went to the sender's own queue
  // The server answers into the client's queue.
  ASSERT_EQ(hv_.SendCrq(kServer, kServerUnit, kInitCompleteHi, 7), kHSuccess);
  EXPECT_EQ(Slot(client_mem_, 0), (CrqMessage{kInitCompleteHi, 7}));
}

TEST_F(CrqTest, SendClosedUntilPartnerRegisters) {
  MapQueues();
  ASSERT_EQ(hv_.RegCrq(kServer, kServerUnit, kQueueIoba, kPage), kHClosed);
  EXPECT_EQ(hv_.SendCrq(kServer, kServerUnit, kInitHi, 0), kHClosed);
  ASSERT_EQ(hv_.RegCrq(kClient, kClientUnit, kQueueIoba, kPage), kHSuccess);
  EXPECT_EQ(hv_.SendCrq(kServer, kServerUnit, kInitHi, 0), kHSuccess);
  EXPECT_EQ(Slot(client_mem_, 0), (CrqMessage{kInitHi, 0}));
}

TEST_F(CrqTest, SendRejectsForgedAndInvalidHeaders) {
  Connect();
  EXPECT_EQ(hv_.SendCrq(kClient, kClientUnit, TransportEventHi(kEventPartnerFailed), 0), kHParameter);
  EXPECT_EQ(hv_.SendCrq(kClient, kClientUnit, 0x4000000000000000, 0), kHParameter);
  EXPECT_EQ(hv_.SendCrq(kClient, kClientUnit, 0, 0), kHParameter);
  EXPECT_EQ(hv_.SendCrq(kClient, 0x1234, kInitHi, 0), kHParameter);
  EXPECT_EQ(Slot(server_mem_, 0), CrqMessage{});
  EXPECT_EQ(hv_.SendCrq(kClient, kClientUnit, 0xFE00000000000000, 0), kHSuccess);  // 0x80 bit, not 0xFF
}

TEST_F(CrqTest, FullQueueDropsAndDiscards) {
  Connect();
  for (uint64_t i = 0; i < kPage / 16; ++i) {
    ASSERT_EQ(hv_.SendCrq(kClient, kClientUnit, 0x8000000000000000 | i, i), kHSuccess) << i;
  }
  EXPECT_EQ(hv_.SendCrq(kClient, kClientUnit, 0x80000000DEADBEEF, 1), kHDropped);
  EXPECT_EQ(Slot(server_mem_, 0), (CrqMessage{0x8000000000000000, 0}));  // untouched
  // The consumer returns slot 0; the producer cursor wrapped to it.
  server_mem_[kQueueRa] = 0;
  ASSERT_EQ(hv_.SendCrq(kClient, kClientUnit, 0x80000000CAFE0000, 2), kHSuccess);
  EXPECT_EQ(Slot(server_mem_, 0), (CrqMessage{0x80000000CAFE0000, 2}));
  EXPECT_EQ(hv_.SendCrq(kClient, kClientUnit, 0x80000000CAFE0001, 3), kHDropped);  // slot 1 still busy
  EXPECT_EQ(Slot(server_mem_, 1), (CrqMessage{0x8000000000000001, 1}));
}

TEST_F(CrqTest, InjectedDropLosesMessageSilently) {
  Connect();
  ASSERT_TRUE(hv_.InjectDropMessages(kServer, kServerUnit, 1).ok());
  EXPECT_EQ(hv_.SendCrq(kClient, kClientUnit, 0x8000000000000001, 0), kHSuccess);
  EXPECT_EQ(Slot(server_mem_, 0), CrqMessage{});
  EXPECT_EQ(hv_.SendCrq(kClient, kClientUnit, 0x8000000000000002, 0), kHSuccess);
  EXPECT_EQ(Slot(server_mem_, 0), (CrqMessage{0x8000000000000002, 0}));
  EXPECT_EQ(hv_.Stats().messages_lost, 1u);
  EXPECT_EQ(hv_.Stats().messages_delivered, 1u);
}

TEST_F(CrqTest, InjectedFullQueueAnswersDroppedAndLandsNothing) {
  Connect();
  ASSERT_TRUE(hv_.InjectFullQueue(kServer, kServerUnit, 2).ok());
  EXPECT_EQ(hv_.SendCrq(kClient, kClientUnit, 0x8000000000000001, 0), kHDropped);
  EXPECT_EQ(hv_.SendCrq(kClient, kClientUnit, 0x8000000000000002, 0), kHDropped);
  EXPECT_EQ(Slot(server_mem_, 0), CrqMessage{});
  EXPECT_EQ(hv_.SendCrq(kClient, kClientUnit, 0x8000000000000003, 7), kHSuccess);
  EXPECT_EQ(Slot(server_mem_, 0), (CrqMessage{0x8000000000000003, 7}));
  EXPECT_EQ(hv_.Stats().messages_delivered, 1u);
  EXPECT_FALSE(hv_.InjectFullQueue(kServer, 0x9999, 1).ok());
}

// ---- H_FREE_CRQ, partner failure, migration ----------------------------------------

TEST_F(CrqTest, FreePostsDeregisteredEventToPartner) {
  Connect();
  ASSERT_TRUE(hv_.InjectFreeBusy(kClient, kClientUnit, 2).ok());
  EXPECT_EQ(hv_.FreeCrq(kClient, kClientUnit), kHBusy);
  EXPECT_EQ(hv_.FreeCrq(kClient, kClientUnit), kHBusy);
  EXPECT_TRUE(hv_.QueueRegistered(kClient, kClientUnit));
  EXPECT_EQ(Slot(server_mem_, 0), CrqMessage{});
  EXPECT_EQ(hv_.FreeCrq(kClient, kClientUnit), kHSuccess);
  EXPECT_FALSE(hv_.QueueRegistered(kClient, kClientUnit));
  const uint8_t ff02[16] = {0xFF, 0x02};
  EXPECT_EQ(std::memcmp(server_mem_.data() + kQueueRa, ff02, 16), 0);
  EXPECT_EQ(Slot(server_mem_, 1), CrqMessage{});
  EXPECT_EQ(hv_.SendCrq(kServer, kServerUnit, kInitHi, 0), kHClosed);
  EXPECT_EQ(hv_.FreeCrq(kClient, kClientUnit), kHSuccess);  // nothing registered: no second event
  EXPECT_EQ(Slot(server_mem_, 1), CrqMessage{});
  // Re-registration resets the producer cursor (the client zeroed its page).
  std::memset(client_mem_.data() + kQueueRa, 0, kPage);
  ASSERT_EQ(hv_.SendCrq(kClient, kClientUnit, kInitHi, 0), kHSuccess);  // client sends regardless
  EXPECT_EQ(hv_.RegCrq(kClient, kClientUnit, kQueueIoba, kPage), kHSuccess);
  ASSERT_EQ(hv_.SendCrq(kServer, kServerUnit, kInitHi, 0), kHSuccess);
  EXPECT_EQ(Slot(client_mem_, 0), (CrqMessage{kInitHi, 0}));
  EXPECT_EQ(hv_.FreeCrq(kClient, 0x1234), kHParameter);
}

TEST_F(CrqTest, RemovedPartitionPostsPartnerFailedAndRevokesWindow) {
  Connect();
  Map(kClient, kClientLiobn, 0x10000, 0x10000, kPage, kTceRead | kTceWrite);
  Map(kServer, kServerLiobn, 0x10000, 0x10000, kPage, kTceRead | kTceWrite);
  ASSERT_EQ(hv_.CopyRdma(kServer, 64, kClientLiobn, 0x10000, kServerLiobn, 0x10000), kHSuccess);
  ASSERT_TRUE(hv_.RemovePartition(kClient).ok());
  EXPECT_EQ(Slot(server_mem_, 0), (CrqMessage{TransportEventHi(kEventPartnerFailed), 0}));
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kClientLiobn, 0x10000, kServerLiobn, 0x10000), kHPermission);
  EXPECT_EQ(hv_.SendCrq(kServer, kServerUnit, kInitHi, 0), kHClosed);
  EXPECT_EQ(hv_.RegCrq(kClient, kClientUnit, kQueueIoba, kPage), kHParameter);  // caller gone
  EXPECT_FALSE(hv_.RemovePartition(kClient).ok());
  // Restart: same adapter, empty TCE table, no queue.
  std::vector<uint8_t> fresh(kMemBytes, 0);
  ASSERT_TRUE(hv_.AddPartition(kClient, fresh.data(), kMemBytes).ok());
  uint64_t tce = 1;
  EXPECT_EQ(hv_.GetTce(kClient, kClientLiobn, 0x10000, &tce), kHSuccess);
  EXPECT_EQ(tce, 0u);
  EXPECT_EQ(hv_.RegCrq(kClient, kClientUnit, kQueueIoba, kPage), kHParameter);  // queue page unmapped now
  ASSERT_EQ(hv_.PutTce(kClient, kClientLiobn, 0, MakeTce(0, kTceRead | kTceWrite)), kHSuccess);
  EXPECT_EQ(hv_.RegCrq(kClient, kClientUnit, kQueueIoba, kPage), kHSuccess);
  EXPECT_EQ(hv_.SendCrq(kServer, kServerUnit, kInitHi, 0), kHSuccess);
  EXPECT_EQ(fresh[0], 0xC0);
  ASSERT_TRUE(hv_.RemovePartition(kClient).ok());  // `fresh` dies with this scope
}

TEST_F(CrqTest, InjectedPartnerFailurePostsFF01) {
  Connect();
  ASSERT_TRUE(hv_.InjectPartnerFailed(kServer, kServerUnit).ok());
  EXPECT_EQ(Slot(client_mem_, 0), (CrqMessage{TransportEventHi(kEventPartnerFailed), 0}));
  EXPECT_EQ(Slot(server_mem_, 0), CrqMessage{});
  ASSERT_TRUE(hv_.PostTransportEvent(kServer, kServerUnit, kEventPrepareSuspend).ok());
  EXPECT_EQ(Slot(server_mem_, 0), (CrqMessage{TransportEventHi(kEventPrepareSuspend), 0}));
  EXPECT_FALSE(hv_.InjectPartnerFailed(kServer, 0x1234).ok());
}

TEST_F(CrqTest, MigrationThenEnableCrqInProgress) {
  Connect();
  EXPECT_EQ(hv_.EnableCrq(kClient, kClientUnit), kHSuccess);  // nothing pending
  ASSERT_TRUE(hv_.InjectMigration(kClient, kClientUnit, 2).ok());
  EXPECT_EQ(Slot(client_mem_, 0), (CrqMessage{TransportEventHi(kEventMigrated), 0}));
  EXPECT_EQ(hv_.SendCrq(kServer, kServerUnit, 0x8000000000000001, 0), kHClosed);
  EXPECT_EQ(hv_.EnableCrq(kClient, kClientUnit), kHInProgress);
  EXPECT_EQ(hv_.EnableCrq(kClient, kClientUnit), kHInProgress);
  EXPECT_EQ(hv_.EnableCrq(kClient, kClientUnit), kHSuccess);
  EXPECT_EQ(hv_.SendCrq(kServer, kServerUnit, 0x8000000000000001, 0), kHSuccess);
  EXPECT_EQ(Slot(client_mem_, 1), (CrqMessage{0x8000000000000001, 0}));
  EXPECT_EQ(hv_.EnableCrq(kClient, 0x1234), kHParameter);
}

// ---- H_VIO_SIGNAL and interrupts ------------------------------------------------------

TEST_F(CrqTest, InterruptsOnlyWhenEnabled) {
  Connect();
  const int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  ASSERT_TRUE(hv_.SetInterruptEventfd(kServer, efd).ok());
  std::atomic<int> callbacks{0};
  ASSERT_TRUE(hv_.SetInterruptCallback(kServer, [&](PartitionId p, UnitAddress u) {
                   EXPECT_EQ(p, kServer);
                   EXPECT_EQ(u, kServerUnit);
                   ++callbacks;
                 }).ok());
  uint64_t v = 0;
  EXPECT_EQ(hv_.VioSignal(kServer, kServerUnit, 2), kHParameter);
  EXPECT_EQ(hv_.VioSignal(kServer, kServerUnit, 3), kHParameter);
  EXPECT_EQ(hv_.VioSignal(kServer, 0x1234, 1), kHParameter);
  ASSERT_EQ(hv_.SendCrq(kClient, kClientUnit, 0x8000000000000001, 0), kHSuccess);  // mode 0
  EXPECT_LT(read(efd, &v, sizeof v), 0);
  EXPECT_EQ(hv_.InterruptCount(kServer, kServerUnit), 0u);
  ASSERT_EQ(hv_.VioSignal(kServer, kServerUnit, 1), kHSuccess);
  EXPECT_EQ(hv_.SignalMode(kServer, kServerUnit), 1);
  ASSERT_EQ(hv_.SendCrq(kClient, kClientUnit, 0x8000000000000002, 0), kHSuccess);
  ASSERT_EQ(hv_.SendCrq(kClient, kClientUnit, 0x8000000000000003, 0), kHSuccess);
  ASSERT_EQ(read(efd, &v, sizeof v), 8);
  EXPECT_EQ(v, 2u);  // one edge per entry
  EXPECT_EQ(callbacks.load(), 2);
  EXPECT_EQ(hv_.InterruptCount(kServer, kServerUnit), 2u);
  // Transport events interrupt too; a dropped (full) send does not.
  ASSERT_EQ(hv_.FreeCrq(kClient, kClientUnit), kHSuccess);
  ASSERT_EQ(read(efd, &v, sizeof v), 8);
  EXPECT_EQ(v, 1u);
  ASSERT_EQ(hv_.VioSignal(kServer, kServerUnit, 0), kHSuccess);
  ASSERT_TRUE(hv_.PostTransportEvent(kServer, kServerUnit, kEventResume).ok());
  EXPECT_LT(read(efd, &v, sizeof v), 0);
  EXPECT_EQ(callbacks.load(), 3);
  close(efd);
}

// ---- TCE hypercalls --------------------------------------------------------------------

TEST_F(CrqTest, PutGetTce) {
  uint64_t tce = 0;
  EXPECT_EQ(hv_.PutTce(kClient, kClientLiobn, 0x5123, MakeTce(0x7000, kTceRead)), kHSuccess);  // ioba truncated
  EXPECT_EQ(hv_.GetTce(kClient, kClientLiobn, 0x5000, &tce), kHSuccess);
  EXPECT_EQ(tce, 0x7000u | kTceRead);
  EXPECT_EQ(hv_.PutTce(kClient, kClientLiobn, kWindowBytes, MakeTce(0x7000, kTceRead)), kHParameter);
  EXPECT_EQ(hv_.GetTce(kClient, kClientLiobn, kWindowBytes, &tce), kHParameter);
  EXPECT_EQ(hv_.PutTce(kClient, 0x777, 0, MakeTce(0x7000, kTceRead)), kHParameter);             // unknown LIOBN
  EXPECT_EQ(hv_.PutTce(kClient, kServerLiobn, 0, MakeTce(0x7000, kTceRead)), kHParameter);      // not its window
  EXPECT_EQ(hv_.PutTce(kServer, kClientLiobn, 0, MakeTce(0x7000, kTceRead)), kHParameter);      // REMOTE: unmappable
  EXPECT_EQ(hv_.GetTce(kServer, kClientLiobn, 0x5000, &tce), kHParameter);
  EXPECT_EQ(hv_.PutTce(kClient, kClientLiobn, 0, MakeTce(kMemBytes, kTceWrite)), kHParameter);  // past its RAM
  EXPECT_EQ(hv_.PutTce(kClient, kClientLiobn, 0, MakeTce(kMemBytes - kPage, kTceWrite)), kHSuccess);
  EXPECT_EQ(hv_.PutTce(kClient, kClientLiobn, 0x5000, 0x7000), kHSuccess);  // no permission bits = invalid
  EXPECT_EQ(hv_.GetTce(kClient, kClientLiobn, 0x5000, &tce), kHSuccess);
  EXPECT_EQ(tce, 0u);
}

TEST_F(CrqTest, StuffTce) {
  EXPECT_EQ(hv_.StuffTce(kClient, kClientLiobn, 0x3000, MakeTce(0x9000, kTceRead | kTceWrite), 10), kHSuccess);
  for (uint64_t i = 0; i < 12; ++i) {
    uint64_t tce = 0;
    ASSERT_EQ(hv_.GetTce(kClient, kClientLiobn, i * kPage + 0x2000, &tce), kHSuccess);
    EXPECT_EQ(tce, i < 1 || i > 10 ? 0u : 0x9003u) << i;
  }
  const uint64_t last = kWindowBytes - kPage;
  EXPECT_EQ(hv_.StuffTce(kClient, kClientLiobn, last, 0, 2), kHParameter);
  EXPECT_EQ(hv_.StuffTce(kClient, kClientLiobn, last, 0, 1), kHSuccess);
  EXPECT_EQ(hv_.StuffTce(kClient, kClientLiobn, 0, MakeTce(kMemBytes + kPage, kTceRead), 1), kHParameter);
  EXPECT_EQ(hv_.StuffTce(kServer, kClientLiobn, 0, 0, 1), kHParameter);
}

TEST_F(CrqTest, PutTceIndirect512AndStopAtFirstFailure) {
  constexpr uint64_t kList = 0x200000;
  for (uint64_t i = 0; i < kMaxIndirectTces; ++i) {
    StoreBe64(client_mem_.data() + kList + 8 * i, MakeTce(0x100000 + i * kPage, i % 2 ? kTceRead : kTceWrite));
  }
  EXPECT_EQ(hv_.PutTceIndirect(kClient, kClientLiobn, 0x400000, kList, kMaxIndirectTces), kHSuccess);
  for (uint64_t i = 0; i < kMaxIndirectTces; ++i) {
    uint64_t tce = 0;
    ASSERT_EQ(hv_.GetTce(kClient, kClientLiobn, 0x400000 + i * kPage, &tce), kHSuccess);
    ASSERT_EQ(tce, MakeTce(0x100000 + i * kPage, i % 2 ? kTceRead : kTceWrite)) << i;
  }
  EXPECT_EQ(hv_.PutTceIndirect(kClient, kClientLiobn, 0, kList, kMaxIndirectTces + 1), kHParameter);
  EXPECT_EQ(hv_.PutTceIndirect(kClient, kClientLiobn, 0, kList + 8, 1), kHParameter);        // list misaligned
  EXPECT_EQ(hv_.PutTceIndirect(kClient, kClientLiobn, 0, kMemBytes, 1), kHParameter);        // list outside RAM
  EXPECT_EQ(hv_.PutTceIndirect(kServer, kClientLiobn, 0, kList, 1), kHParameter);            // REMOTE
  // Entry 5 points past the partition's memory: 0-4 written, 5.. not.
  StoreBe64(client_mem_.data() + kList + 8 * 5, MakeTce(kMemBytes, kTceRead));
  EXPECT_EQ(hv_.PutTceIndirect(kClient, kClientLiobn, 0, kList, 10), kHParameter);
  for (uint64_t i = 0; i < 10; ++i) {
    uint64_t tce = 0;
    ASSERT_EQ(hv_.GetTce(kClient, kClientLiobn, i * kPage, &tce), kHSuccess);
    EXPECT_EQ(tce, i < 5 ? MakeTce(0x100000 + i * kPage, i % 2 ? kTceRead : kTceWrite) : 0u) << i;
  }
  // A list running past the window's end stops at the end.
  EXPECT_EQ(hv_.PutTceIndirect(kClient, kClientLiobn, kWindowBytes - 2 * kPage, kList, 3), kHParameter);
  uint64_t tce = 0;
  ASSERT_EQ(hv_.GetTce(kClient, kClientLiobn, kWindowBytes - kPage, &tce), kHSuccess);
  EXPECT_EQ(tce, MakeTce(0x100000 + kPage, kTceRead));
}

// ---- H_COPY_RDMA ---------------------------------------------------------------------

class CrqCopyTest : public CrqTest {
 protected:
  // Client buffers: IOBA 0x100000.. -> RA 0x100000.., server: IOBA 0x100000 -> RA 0x400000.
  static constexpr uint64_t kCIoba = 0x100000, kCRa = 0x100000;
  static constexpr uint64_t kSIoba = 0x100000, kSRa = 0x400000;
  void SetUp() override {
    CrqTest::SetUp();
    Connect();
  }
};

TEST_F(CrqCopyTest, BothDirectionsUnalignedAcrossPages) {
  Map(kClient, kClientLiobn, kCIoba, kCRa, 4 * kPage, kTceRead | kTceWrite);
  Map(kServer, kServerLiobn, kSIoba, kSRa, 4 * kPage, kTceRead | kTceWrite);
  Fill(client_mem_, kCRa, 4 * kPage, 1);
  // Pull (REMOTE -> LOCAL), 5000 bytes from client offset 100 to server offset 3000.
  ASSERT_EQ(hv_.CopyRdma(kServer, 5000, kClientLiobn, kCIoba + 100, kServerLiobn, kSIoba + 3000), kHSuccess);
  EXPECT_EQ(std::memcmp(server_mem_.data() + kSRa + 3000, client_mem_.data() + kCRa + 100, 5000), 0);
  EXPECT_EQ(server_mem_[kSRa + 2999], 0);
  EXPECT_EQ(server_mem_[kSRa + 8000], 0);
  // Push (LOCAL -> REMOTE).
  Fill(server_mem_, kSRa + 2 * kPage, kPage, 7);
  ASSERT_EQ(hv_.CopyRdma(kServer, 300, kServerLiobn, kSIoba + 2 * kPage + 4000, kClientLiobn, kCIoba + 3 * kPage + 10),
            kHSuccess);
  EXPECT_EQ(std::memcmp(client_mem_.data() + kCRa + 3 * kPage + 10, server_mem_.data() + kSRa + 2 * kPage + 4000, 300),
            0);
  // The client owns its own window, so it may copy too (ibmvmc style).
  ASSERT_EQ(hv_.CopyRdma(kClient, 16, kServerLiobn, kSIoba, kClientLiobn, kCIoba), kHSuccess);
  EXPECT_EQ(std::memcmp(client_mem_.data() + kCRa, server_mem_.data() + kSRa, 16), 0);
  const auto stats = hv_.Stats().per_hcall.at(kHCopyRdma);
  EXPECT_EQ(stats.calls, 3u);
  EXPECT_EQ(stats.bytes_copied, 5000u + 300u + 16u);
}

TEST_F(CrqCopyTest, PermissionPerDirection) {
  // Client: page 0 device-writable only (a read buffer for the device to fill), page 1 device-readable only.
  Map(kClient, kClientLiobn, kCIoba, kCRa, kPage, kTceWrite);
  Map(kClient, kClientLiobn, kCIoba + kPage, kCRa + kPage, kPage, kTceRead);
  Map(kServer, kServerLiobn, kSIoba, kSRa, 2 * kPage, kTceRead | kTceWrite);
  Fill(client_mem_, kCRa, 2 * kPage, 3);
  Fill(server_mem_, kSRa, 2 * kPage, 5);
  const std::vector<uint8_t> before(server_mem_.begin() + kSRa, server_mem_.begin() + kSRa + 2 * kPage);
  const std::vector<uint8_t> client_before(client_mem_.begin() + kCRa, client_mem_.begin() + kCRa + 2 * kPage);
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kClientLiobn, kCIoba, kServerLiobn, kSIoba), kHPermission);
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kServerLiobn, kSIoba, kClientLiobn, kCIoba + kPage), kHPermission);
  // Crossing from the readable page into the write-only page: refused as a whole.
  EXPECT_EQ(hv_.CopyRdma(kServer, 2 * kPage, kClientLiobn, kCIoba, kServerLiobn, kSIoba), kHPermission);
  EXPECT_TRUE(std::equal(before.begin(), before.end(), server_mem_.begin() + kSRa));
  EXPECT_TRUE(std::equal(client_before.begin(), client_before.end(), client_mem_.begin() + kCRa));
  // The allowed directions work.
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kClientLiobn, kCIoba + kPage, kServerLiobn, kSIoba), kHSuccess);
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kServerLiobn, kSIoba, kClientLiobn, kCIoba), kHSuccess);
  EXPECT_EQ(hv_.Stats().per_hcall.at(kHCopyRdma).errors, 3u);
}

TEST_F(CrqCopyTest, UnmappedAndBadArguments) {
  Map(kClient, kClientLiobn, kCIoba, kCRa, kPage, kTceRead | kTceWrite);  // page 1 after it stays unmapped
  Map(kServer, kServerLiobn, kSIoba, kSRa, 2 * kPage, kTceRead | kTceWrite);
  Fill(client_mem_, kCRa, 2 * kPage, 9);
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kClientLiobn, kCIoba + kPage, kServerLiobn, kSIoba), kHSourceParm);
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kServerLiobn, kSIoba, kClientLiobn, kCIoba + kPage), kHDestParm);
  // Crossing from a mapped into an unmapped page: nothing is copied, not even the first part.
  EXPECT_EQ(hv_.CopyRdma(kServer, kPage + 16, kClientLiobn, kCIoba, kServerLiobn, kSIoba), kHSourceParm);
  EXPECT_EQ(server_mem_[kSRa], 0);
  const std::vector<uint8_t> tail(client_mem_.begin() + kCRa + kPage - 16, client_mem_.begin() + kCRa + kPage);
  EXPECT_EQ(hv_.CopyRdma(kServer, 32, kServerLiobn, kSIoba, kClientLiobn, kCIoba + kPage - 16), kHDestParm);
  EXPECT_TRUE(std::equal(tail.begin(), tail.end(), client_mem_.begin() + kCRa + kPage - 16));  // untouched
  EXPECT_EQ(hv_.CopyRdma(kServer, 0, kClientLiobn, kCIoba, kServerLiobn, kSIoba), kHParameter);
  EXPECT_EQ(hv_.CopyRdma(kServer, Hypervisor::kMaxCopyBytes + 1, kClientLiobn, 0, kServerLiobn, 0), kHParameter);
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, 0x777, 0, kServerLiobn, kSIoba), kHSourceParm);
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kClientLiobn, kCIoba, 0x777, 0), kHDestParm);
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kClientLiobn, kWindowBytes, kServerLiobn, kSIoba), kHSourceParm);
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kClientLiobn, kCIoba, kServerLiobn, kWindowBytes - 32), kHDestParm);
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kClientLiobn, ~uint64_t{0} - 8, kServerLiobn, kSIoba), kHSourceParm);
}

TEST_F(CrqCopyTest, RevokedAfterClientFreedQueue) {
  Map(kClient, kClientLiobn, kCIoba, kCRa, kPage, kTceRead | kTceWrite);
  Map(kServer, kServerLiobn, kSIoba, kSRa, kPage, kTceRead | kTceWrite);
  Fill(client_mem_, kCRa, kPage, 11);
  ASSERT_EQ(hv_.FreeCrq(kClient, kClientUnit), kHSuccess);
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kClientLiobn, kCIoba, kServerLiobn, kSIoba), kHPermission);
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kServerLiobn, kSIoba, kClientLiobn, kCIoba), kHPermission);
  EXPECT_EQ(server_mem_[kSRa], 0);
  // A revoked (reset) TCE in a live window is an unmapped page: H_SOURCE_PARM.
  ASSERT_EQ(hv_.RegCrq(kClient, kClientUnit, kQueueIoba, kPage), kHSuccess);
  ASSERT_EQ(hv_.PutTce(kClient, kClientLiobn, kCIoba, 0), kHSuccess);
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kClientLiobn, kCIoba, kServerLiobn, kSIoba), kHSourceParm);
}

TEST_F(CrqCopyTest, LargeCopies) {
  for (uint64_t len : {uint64_t{128} << 10, uint64_t{1} << 20, uint64_t{3} << 20}) {
    SCOPED_TRACE(len);
    Map(kClient, kClientLiobn, kCIoba, kCRa, len, kTceRead | kTceWrite);
    Map(kServer, kServerLiobn, kSIoba, kSRa, len, kTceRead | kTceWrite);
    Fill(client_mem_, kCRa, len, static_cast<uint32_t>(len >> 10));
    ASSERT_EQ(hv_.CopyRdma(kServer, len, kClientLiobn, kCIoba, kServerLiobn, kSIoba), kHSuccess);
    EXPECT_EQ(std::memcmp(server_mem_.data() + kSRa, client_mem_.data() + kCRa, len), 0);
    std::memset(client_mem_.data() + kCRa, 0, len);
    ASSERT_EQ(hv_.CopyRdma(kServer, len, kServerLiobn, kSIoba, kClientLiobn, kCIoba), kHSuccess);
    EXPECT_EQ(std::memcmp(server_mem_.data() + kSRa, client_mem_.data() + kCRa, len), 0);
  }
}

TEST_F(CrqCopyTest, CrossPairRefused) {
  Map(kClient, kClientLiobn, kCIoba, kCRa, kPage, kTceRead | kTceWrite);
  Map(kServer, kServerLiobn, kSIoba, kSRa, kPage, kTceRead | kTceWrite);
  Map(kServer, kOtherServerLiobn, kSIoba, kSRa, kPage, kTceRead | kTceWrite);
  Map(kOtherClient, kOtherClientLiobn, kCIoba, kCRa, kPage, kTceRead | kTceWrite);
  Map(kOtherClient, kOtherClientLiobn, kQueueIoba, kQueueRa, kPage, kTceRead | kTceWrite);
  ASSERT_EQ(hv_.RegCrq(kOtherClient, kOtherClientUnit, kQueueIoba, kPage), kHClosed);
  Fill(other_mem_, kCRa, kPage, 13);
  // The server owns windows in both pairs, but one copy may not span two pairs.
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kOtherClientLiobn, kCIoba, kServerLiobn, kSIoba), kHParameter);
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kClientLiobn, kCIoba, kOtherServerLiobn, kSIoba), kHParameter);
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kOtherClientLiobn, kCIoba, kClientLiobn, kCIoba), kHParameter);
  // A client naming another pair's windows owns neither.
  EXPECT_EQ(hv_.CopyRdma(kClient, 64, kOtherClientLiobn, kCIoba, kOtherServerLiobn, kSIoba), kHParameter);
  EXPECT_EQ(hv_.CopyRdma(kOtherClient, 64, kOtherClientLiobn, kCIoba, kClientLiobn, kCIoba), kHParameter);
  EXPECT_EQ(server_mem_[kSRa], 0);
  EXPECT_EQ(client_mem_[kCRa], 0);
  // Within its own pair it works.
  EXPECT_EQ(hv_.CopyRdma(kServer, 64, kOtherClientLiobn, kCIoba, kOtherServerLiobn, kSIoba), kHSuccess);
  EXPECT_EQ(std::memcmp(server_mem_.data() + kSRa, other_mem_.data() + kCRa, 64), 0);
}

// ---- Dispatch, counters, delay, concurrency ----------------------------------------

TEST_F(CrqTest, HcallDispatchAndCounters) {
  const uint64_t put[] = {kClientLiobn, 0x2000, MakeTce(0x3000, kTceRead)};
  EXPECT_EQ(hv_.Hcall(kClient, kHPutTce, put).rc, kHSuccess);
  const uint64_t get[] = {kClientLiobn, 0x2000};
  const HcallResult r = hv_.Hcall(kClient, kHGetTce, get);
  EXPECT_EQ(r.rc, kHSuccess);
  EXPECT_EQ(r.r4, 0x3001u);
  EXPECT_EQ(hv_.Hcall(kClient, 0x2A8 /* H_VIOCTL */, {}).rc, kHFunction);
  EXPECT_EQ(hv_.Hcall(kClient, kHRegCrq, {}).rc, kHParameter);  // unit 0 unknown
  const auto stats = hv_.Stats();
  EXPECT_EQ(stats.per_hcall.at(kHPutTce).calls, 1u);
  EXPECT_EQ(stats.per_hcall.at(kHGetTce).errors, 0u);
  EXPECT_EQ(stats.per_hcall.at(0x2A8).errors, 1u);
  EXPECT_EQ(stats.per_hcall.at(kHRegCrq).not_success, 1u);
}

// A partition calling every opcode number must not grow the statistics
// without bound: beyond kMaxTrackedOpcodes entries, unknown opcodes share
// one counter, and known opcodes still get their own.
TEST_F(CrqTest, UnknownOpcodesKeepTheStatisticsBounded) {
  for (uint64_t op = 0x10000; op < 0x10000 + 1000; ++op) EXPECT_EQ(hv_.Hcall(kClient, op, {}).rc, kHFunction);
  const uint64_t get[] = {kClientLiobn, 0};
  EXPECT_EQ(hv_.Hcall(kClient, kHGetTce, get).rc, kHSuccess);
  const auto stats = hv_.Stats();
  EXPECT_EQ(stats.per_hcall.size(), Hypervisor::kMaxTrackedOpcodes - 10 + 1);
  EXPECT_EQ(stats.per_hcall.at(0x10000).calls, 1u);
  EXPECT_EQ(stats.per_hcall.at(kHGetTce).calls, 1u);
  EXPECT_EQ(stats.untracked_hcalls.calls, 1000u - (Hypervisor::kMaxTrackedOpcodes - 10));
  EXPECT_EQ(stats.untracked_hcalls.errors, stats.untracked_hcalls.calls);
}

// RemovePartition forgets the partition's record (ids come from HELLOs: one
// per id ever seen would grow without bound); a restart adds it anew, with
// other memory, and TCEs are checked against the new size.
TEST_F(CrqTest, RemovedPartitionMayReturnWithOtherMemory) {
  ASSERT_TRUE(hv_.RemovePartition(kClient).ok());
  EXPECT_FALSE(hv_.RemovePartition(kClient).ok());
  const uint64_t get[] = {kClientLiobn, 0};
  EXPECT_EQ(hv_.Hcall(kClient, kHGetTce, get).rc, kHParameter);
  std::vector<uint8_t> other(2 * kTcePageSize);
  ASSERT_TRUE(hv_.AddPartition(kClient, other.data(), other.size()).ok());
  EXPECT_EQ(hv_.PutTce(kClient, kClientLiobn, 0, MakeTce(kTcePageSize, kTceRead)), kHSuccess);
  EXPECT_EQ(hv_.PutTce(kClient, kClientLiobn, 0, MakeTce(2 * kTcePageSize, kTceRead)), kHParameter);  // beyond its memory
  ASSERT_TRUE(hv_.RemovePartition(kClient).ok());
}

TEST_F(CrqTest, HcallDelay) {
  for (DelayMode mode : {DelayMode::kBusyWait, DelayMode::kSleep}) {
    hv_.SetHcallDelay(2'000'000, mode);
    const auto t0 = std::chrono::steady_clock::now();
    uint64_t tce;
    EXPECT_EQ(hv_.GetTce(kClient, kClientLiobn, 0, &tce), kHSuccess);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(2));
  }
  hv_.SetHcallDelay(0);
}

TEST_F(CrqTest, ConcurrentProducerConsumerSeesWholeEntriesInOrder) {
  Connect();
  constexpr uint64_t kCount = 200000;
  std::thread consumer([&] {
    uint64_t next = 0, cursor = 0;
    while (next < kCount) {
      uint8_t* slot = server_mem_.data() + kQueueRa + cursor;
      if (std::atomic_ref<uint8_t>(slot[0]).load(std::memory_order_acquire) == 0) continue;
      const CrqMessage m = DecodeEntry(std::span<const uint8_t, 16>(slot, 16));
      ASSERT_EQ(m.hi, 0x8000000000000000 | next);
      ASSERT_EQ(m.lo, ~next);
      std::atomic_ref<uint8_t>(slot[0]).store(0, std::memory_order_release);
      cursor = (cursor + 16) % kPage;
      ++next;
    }
  });
  uint64_t dropped = 0;
  for (uint64_t i = 0; i < kCount;) {
    const int64_t rc = hv_.SendCrq(kClient, kClientUnit, 0x8000000000000000 | i, ~i);
    if (rc == kHDropped) {
      ++dropped;
      std::this_thread::yield();
      continue;
    }
    ASSERT_EQ(rc, kHSuccess);
    ++i;
  }
  consumer.join();
  EXPECT_EQ(hv_.Stats().messages_delivered, kCount);
  EXPECT_EQ(hv_.Stats().per_hcall.at(kHSendCrq).errors, dropped);
}

}  // namespace
}  // namespace vioport::crq
