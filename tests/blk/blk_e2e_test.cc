// SPDX-License-Identifier: Apache-2.0
// virtio-blk end to end: BlkDriver -> loopback transport -> BlkDevice -> a
// temp file, on split and packed rings, mapped and copy-only memory, with and
// without indirect descriptors and event idx. Every byte read back is
// compared, and the backing file is checked behind the device's back.
#include <gtest/gtest.h>

#include <algorithm>
#include <thread>

#include "blk_test_support.h"
#include "vioport/testing/echo_device.h"

namespace vioport::blktest {
namespace {

constexpr uint32_t kSector = 512;

class BlkEndToEnd : public ::testing::TestWithParam<Mode> {};

TEST_P(BlkEndToEnd, WrittenDataReadsBackAndLandsInTheFile) {
  Rig rig;
  rig.Boot({}, GetParam());
  BlkDriver& d = *rig.drv;
  EXPECT_EQ(d.info().capacity_sectors, (16u << 20) / kSector);
  // Lengths around the driver's 128 KiB request size and the device's 1 MiB
  // size_max, at odd sector offsets.
  struct Piece {
    uint64_t sector;
    size_t bytes;
  };
  const Piece pieces[] = {{0, 512}, {1, 4096}, {77, 128 << 10}, {1000, (1 << 20) + 512}, {9001, 300 << 10},
                          {(16 << 11) - 8, 4096}};
  uint32_t seed = 1;
  for (const Piece& p : pieces) {
    const std::vector<uint8_t> data = RandomBytes(p.bytes, seed++);
    ASSERT_TRUE(d.Write(p.sector, data).ok()) << p.sector;
  }
  seed = 1;
  for (const Piece& p : pieces) {
    const std::vector<uint8_t> want = RandomBytes(p.bytes, seed++);
    std::vector<uint8_t> got(p.bytes, 0xEE);
    absl::Status s = d.Read(p.sector, got);
    ASSERT_TRUE(s.ok()) << s;
    ASSERT_TRUE(got == want) << "read back differs at sector " << p.sector;
    ASSERT_TRUE(rig.file.Pread(p.sector * kSector, p.bytes) == want) << "file differs at sector " << p.sector;
  }
  EXPECT_EQ(rig.Counter("bad_requests"), 0u);
  EXPECT_EQ(rig.Counter("errors"), 0u);
  EXPECT_GT(rig.Counter("bytes_written"), 1u << 20);
  EXPECT_FALSE(rig.NeedsReset());
}

TEST_P(BlkEndToEnd, FlushDiscardWriteZeroesAndGetId) {
  Rig rig;
  rig.Boot({}, GetParam());
  BlkDriver& d = *rig.drv;
  ASSERT_TRUE(d.info().flush && d.info().discard && d.info().write_zeroes);
  const std::vector<uint8_t> data = RandomBytes(4 << 20, 42);
  ASSERT_TRUE(d.Write(0, data).ok());
  ASSERT_TRUE(d.Flush().ok());
  EXPECT_EQ(rig.Counter("flushes"), 1u);
  EXPECT_TRUE(rig.file.Pread(0, data.size()) == data);

  // DISCARD of 1 MiB at 1 MiB, WRITE_ZEROES of 256 KiB at 2 MiB, and with
  // unmap of 128 KiB + 1 sector at 3 MiB; everything else keeps its data.
  ASSERT_TRUE(d.Discard(2048, 2048).ok());
  ASSERT_TRUE(d.WriteZeroes(4096, 512, /*unmap=*/false).ok());
  ASSERT_TRUE(d.WriteZeroes(6144, 257, /*unmap=*/true).ok());
  std::vector<uint8_t> want = data;
  std::fill(want.begin() + (1 << 20), want.begin() + (2 << 20), 0);
  std::fill(want.begin() + (2 << 20), want.begin() + (2 << 20) + (256 << 10), 0);
  std::fill(want.begin() + (3 << 20), want.begin() + (3 << 20) + 257 * kSector, 0);
  std::vector<uint8_t> got(data.size());
  ASSERT_TRUE(d.Read(0, got).ok());
  EXPECT_TRUE(got == want);
  EXPECT_TRUE(rig.file.Pread(0, want.size()) == want);
  if (rig.file.SupportsHoles()) {
    EXPECT_TRUE(rig.file.IsHole(1 << 20)) << "discard left no hole";
  }
  EXPECT_EQ(rig.file.Size(), 16u << 20);  // KEEP_SIZE
  EXPECT_EQ(rig.Counter("discards"), 1u);
  EXPECT_EQ(rig.Counter("write_zeroes"), 2u);

  auto id = d.GetId();
  ASSERT_TRUE(id.ok()) << id.status();
  const std::string base = rig.file.path().substr(rig.file.path().rfind('/') + 1);
  EXPECT_EQ(*id, base.substr(0, 20));
}

TEST_P(BlkEndToEnd, AsyncRequestsCompleteWithTheirTokens) {
  Rig rig;
  rig.Boot({}, GetParam());
  BlkDriver& d = *rig.drv;
  constexpr int kN = 24;
  constexpr uint32_t kLen = 16 << 10;
  std::vector<DmaBuffer> bufs;
  for (int i = 0; i < kN; ++i) {
    auto b = d.AllocBuffer(kLen);
    ASSERT_TRUE(b.ok()) << b.status();
    const std::vector<uint8_t> data = RandomBytes(kLen, 100 + i);
    std::copy(data.begin(), data.end(), b->host);
    bufs.push_back(*b);
  }
  // A batch of writes and a flush behind them: the flush completes last,
  // after every write popped before it.
  for (int i = 0; i < kN; ++i)
    ASSERT_TRUE(d.Submit(0, BlkOp::kWrite, uint64_t(i) * 64, &bufs[i], kLen, 1000 + i).ok());
  ASSERT_TRUE(d.Submit(0, BlkOp::kFlush, 0, nullptr, 0, 7777).ok());
  d.Kick(0);
  std::vector<BlkCompletion> done;
  BlkCompletion c[8];
  while (done.size() < kN + 1) {
    auto n = d.Reap(0, c, /*wait=*/true);
    ASSERT_TRUE(n.ok()) << n.status();
    done.insert(done.end(), c, c + *n);
  }
  EXPECT_EQ(done.back().token, 7777u);
  std::vector<bool> seen(kN);
  for (const BlkCompletion& x : done) {
    EXPECT_EQ(x.status, 0) << x.token;
    if (x.token == 7777) continue;
    ASSERT_GE(x.token, 1000u);
    ASSERT_LT(x.token, 1000u + kN);
    EXPECT_FALSE(seen[x.token - 1000]) << "token completed twice";
    seen[x.token - 1000] = true;
    EXPECT_EQ(x.len, 1u);
  }
  // Read everything back through the async path into cleared buffers.
  for (int i = 0; i < kN; ++i) {
    std::fill(bufs[i].host, bufs[i].host + kLen, 0);
    ASSERT_TRUE(d.Submit(0, BlkOp::kRead, uint64_t(i) * 64, &bufs[i], kLen, i).ok());
  }
  d.Kick(0);
  size_t got = 0;
  while (got < kN) {
    auto n = d.Reap(0, c, /*wait=*/true);
    ASSERT_TRUE(n.ok()) << n.status();
    for (size_t k = 0; k < *n; ++k) {
      EXPECT_EQ(c[k].status, 0);
      EXPECT_EQ(c[k].len, kLen + 1);  // the data and the status byte
    }
    got += *n;
  }
  for (int i = 0; i < kN; ++i) {
    const std::vector<uint8_t> want = RandomBytes(kLen, 100 + i);
    EXPECT_TRUE(std::equal(want.begin(), want.end(), bufs[i].host)) << "buffer " << i;
    EXPECT_TRUE(rig.file.Pread(uint64_t(i) * 64 * kSector, kLen) == want) << "file at request " << i;
    d.FreeBuffer(bufs[i]);
  }
  auto none = d.Reap(0, c, /*wait=*/true);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
}

// One request larger than the device's bounce step and than size_max: several
// data segments, and on copy-only memory several trips through the bounce buffer.
TEST_P(BlkEndToEnd, OneLargeRequestEachWay) {
  Rig rig;
  rig.Boot({}, GetParam());
  BlkDriver& d = *rig.drv;
  constexpr uint32_t kLen = (3 << 20) + 512;
  auto b = d.AllocBuffer(kLen);
  ASSERT_TRUE(b.ok()) << b.status();
  const std::vector<uint8_t> data = RandomBytes(kLen, 21);
  std::copy(data.begin(), data.end(), b->host);
  BlkCompletion c[1];
  ASSERT_TRUE(d.Submit(0, BlkOp::kWrite, 333, &*b, kLen, 1).ok());
  d.Kick(0);
  auto n = d.Reap(0, c, true);
  ASSERT_TRUE(n.ok() && *n == 1) << n.status();
  EXPECT_EQ(c[0].status, 0);
  EXPECT_TRUE(rig.file.Pread(333 * kSector, kLen) == data);
  std::fill(b->host, b->host + kLen, 0);
  ASSERT_TRUE(d.Submit(0, BlkOp::kRead, 333, &*b, kLen, 2).ok());
  d.Kick(0);
  n = d.Reap(0, c, true);
  ASSERT_TRUE(n.ok() && *n == 1) << n.status();
  EXPECT_EQ(c[0].status, 0);
  EXPECT_EQ(c[0].len, kLen + 1);
  EXPECT_TRUE(std::equal(data.begin(), data.end(), b->host));
  d.FreeBuffer(*b);
}

INSTANTIATE_TEST_SUITE_P(Modes, BlkEndToEnd, ::testing::ValuesIn(AllModes()), ModeName);

// Four queues, one thread each, 32 requests in flight per queue, every
// request replaced as soon as it completes.
class BlkMultiQueue : public ::testing::TestWithParam<Mode> {};

TEST_P(BlkMultiQueue, FourQueuesWith32InFlightEach) {
  constexpr uint16_t kQueues = 4;
  constexpr uint32_t kInFlight = 32;
  constexpr uint32_t kOps = 192;       // per queue and phase
  constexpr uint32_t kLen = 8 << 10;   // per request
  constexpr uint64_t kRegion = uint64_t{kOps} * kLen;
  Rig rig(kQueues * kRegion);
  BlkOptions bo;
  bo.num_queues = kQueues;
  rig.Boot(bo, GetParam());
  BlkDriver& d = *rig.drv;
  ASSERT_EQ(d.info().num_queues, kQueues);
  EXPECT_TRUE(feature::Has(d.info().features, blk::feature::kMq));

  auto data_for = [](uint16_t q, uint32_t op) { return RandomBytes(kLen, q * 100000 + op); };
  auto run = [&](uint16_t q, BlkOp op, std::string* failure) {
    std::vector<DmaBuffer> bufs(kInFlight);
    for (auto& b : bufs) b = *d.AllocBuffer(kLen);
    std::vector<uint32_t> owner(kInFlight);  // which op a buffer carries
    std::vector<uint32_t> free_bufs;
    for (uint32_t i = 0; i < kInFlight; ++i) free_bufs.push_back(i);
    uint32_t next = 0, completed = 0;
    BlkCompletion c[kInFlight];
    while (completed < kOps && failure->empty()) {
      bool added = false;
      while (next < kOps && !free_bufs.empty()) {
        const uint32_t b = free_bufs.back();
        if (op == BlkOp::kWrite) {
          const auto data = data_for(q, next);
          std::copy(data.begin(), data.end(), bufs[b].host);
        } else {
          std::fill(bufs[b].host, bufs[b].host + kLen, 0);
        }
        const uint64_t sector = (q * kRegion + uint64_t{next} * kLen) / kSector;
        absl::Status s = d.Submit(q, op, sector, &bufs[b], kLen, b);
        if (!s.ok()) {
          *failure = s.ToString();
          break;
        }
        owner[b] = next++;
        free_bufs.pop_back();
        added = true;
      }
      if (added) d.Kick(q);
      auto n = d.Reap(q, c, /*wait=*/true);
      if (!n.ok()) {
        *failure = n.status().ToString();
        break;
      }
      for (size_t k = 0; k < *n; ++k) {
        const uint32_t b = static_cast<uint32_t>(c[k].token);
        if (c[k].status != 0) *failure = "status " + std::to_string(c[k].status);
        if (op == BlkOp::kRead) {
          const auto want = data_for(q, owner[b]);
          if (!std::equal(want.begin(), want.end(), bufs[b].host))
            *failure = "queue " + std::to_string(q) + " op " + std::to_string(owner[b]) + ": data differs";
        }
        free_bufs.push_back(b);
        completed++;
      }
    }
    for (auto& b : bufs) d.FreeBuffer(b);
  };
  for (BlkOp op : {BlkOp::kWrite, BlkOp::kRead}) {
    std::vector<std::string> failures(kQueues);
    std::vector<std::thread> threads;
    for (uint16_t q = 0; q < kQueues; ++q) threads.emplace_back(run, q, op, &failures[q]);
    for (auto& th : threads) th.join();
    for (uint16_t q = 0; q < kQueues; ++q) ASSERT_EQ(failures[q], "") << "queue " << q;
  }
  for (uint16_t q = 0; q < kQueues; ++q)
    for (uint32_t op = 0; op < kOps; op += 17)
      ASSERT_TRUE(rig.file.Pread(q * kRegion + uint64_t{op} * kLen, kLen) == data_for(q, op)) << q << "/" << op;
  EXPECT_EQ(rig.Counter("writes"), uint64_t{kQueues} * kOps);
  EXPECT_EQ(rig.Counter("reads"), uint64_t{kQueues} * kOps);
  EXPECT_EQ(rig.Counter("errors"), 0u);
}

INSTANTIATE_TEST_SUITE_P(Modes, BlkMultiQueue,
                         ::testing::Values(Mode{false, false, false, false}, Mode{true, true, true, false},
                                           Mode{false, true, true, true}, Mode{true, false, false, true}),
                         ModeName);

// Small size_max / seg_max: the driver splits into many segments and requests.
TEST(BlkLimits, SmallSegmentsAreRespected) {
  for (bool copy : {false, true}) {
    Rig rig;
    BlkOptions bo;
    bo.size_max = 4096;
    bo.seg_max = 4;
    rig.Boot(bo, Mode{false, true, false, copy});
    BlkDriver& d = *rig.drv;
    EXPECT_EQ(d.info().size_max, 4096u);
    EXPECT_EQ(d.info().seg_max, 4u);
    const std::vector<uint8_t> data = RandomBytes(200 << 10, 7);
    ASSERT_TRUE(d.Write(3, data).ok());
    std::vector<uint8_t> got(data.size());
    ASSERT_TRUE(d.Read(3, got).ok());
    EXPECT_TRUE(got == data);
    EXPECT_TRUE(rig.file.Pread(3 * kSector, data.size()) == data);
    // 200 KiB in requests of at most 4 x 4 KiB.
    EXPECT_EQ(rig.Counter("writes"), (200u << 10) / (16u << 10) + 1);
    // An async request beyond size_max * seg_max is refused by the driver.
    auto b = d.AllocBuffer(32 << 10);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(d.Submit(0, BlkOp::kRead, 0, &*b, 32 << 10, 1).code(), absl::StatusCode::kInvalidArgument);
    d.FreeBuffer(*b);
  }
}

TEST(BlkLimits, OutOfRangeAndReadOnly) {
  Rig rig(1 << 20);
  rig.Boot();
  BlkDriver& d = *rig.drv;
  const uint64_t cap = d.info().capacity_sectors;
  ASSERT_EQ(cap, 2048u);
  std::vector<uint8_t> buf(1024);
  EXPECT_EQ(d.Read(cap - 1, buf).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(d.Read(cap, std::span<uint8_t>(buf.data(), 512)).code(), absl::StatusCode::kDataLoss);
  const uint64_t before = rig.file.Checksum();
  absl::Status w = d.Write(cap - 1, buf);
  EXPECT_EQ(w.code(), absl::StatusCode::kDataLoss) << w;
  EXPECT_NE(w.message().find("IOERR"), absl::string_view::npos) << w;
  EXPECT_EQ(d.Discard(cap - 8, 16).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(d.WriteZeroes(UINT64_MAX - 3, 8, false).code(), absl::StatusCode::kDataLoss);  // no wrap
  auto b = d.AllocBuffer(512);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE(d.Submit(0, BlkOp::kRead, UINT64_MAX, &*b, 512, 5).ok());
  d.Kick(0);
  BlkCompletion c[1];
  auto n = d.Reap(0, c, true);
  ASSERT_TRUE(n.ok() && *n == 1);
  EXPECT_EQ(c[0].status, 1);
  d.FreeBuffer(*b);
  EXPECT_EQ(rig.file.Checksum(), before);
  EXPECT_EQ(rig.file.Size(), 1u << 20);
  EXPECT_EQ(rig.Counter("errors"), 6u);
  // Nothing above breaks the device: in-range I/O still works.
  const std::vector<uint8_t> data = RandomBytes(1024, 3);
  ASSERT_TRUE(d.Write(cap - 2, data).ok());
  ASSERT_TRUE(d.Read(cap - 2, buf).ok());
  EXPECT_TRUE(buf == data);
  EXPECT_FALSE(rig.NeedsReset());
}

TEST(BlkReadOnly, RefusesWritesAndLeavesTheFileAlone) {
  Rig rig(1 << 20);
  const std::vector<uint8_t> content = RandomBytes(1 << 20, 99);
  rig.file.Pwrite(0, content);
  BlkOptions bo;
  bo.read_only = true;
  rig.Boot(bo);
  BlkDriver& d = *rig.drv;
  EXPECT_TRUE(d.info().read_only);
  EXPECT_FALSE(d.info().discard);
  EXPECT_FALSE(d.info().write_zeroes);
  const uint64_t before = rig.file.Checksum();
  const std::vector<uint8_t> data = RandomBytes(8192, 5);
  EXPECT_EQ(d.Write(8, data).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(d.Discard(0, 8).code(), absl::StatusCode::kUnimplemented);  // not negotiated
  std::vector<uint8_t> got(64 << 10);
  ASSERT_TRUE(d.Read(16, got).ok());
  EXPECT_TRUE(std::equal(got.begin(), got.end(), content.begin() + 16 * kSector));
  ASSERT_TRUE(d.Flush().ok());
  EXPECT_EQ(rig.file.Checksum(), before);
  EXPECT_EQ(rig.Counter("bytes_written"), 0u);
  EXPECT_FALSE(rig.NeedsReset());
}

// A reset while requests are in flight (popped and submitted to io_uring, or
// only made available) loses neither the device nor the data written after.
TEST(BlkReset, ReinitWithRequestsInFlight) {
  for (bool kicked : {true, false}) {
    Rig rig(32 << 20);
    rig.Boot();
    BlkDriver& d = *rig.drv;
    constexpr int kN = 48;
    constexpr uint32_t kLen = 256 << 10;
    std::vector<DmaBuffer> bufs;
    for (int i = 0; i < kN; ++i) {
      bufs.push_back(*d.AllocBuffer(kLen));
      std::fill(bufs.back().host, bufs.back().host + kLen, static_cast<uint8_t>(i + 1));
      ASSERT_TRUE(d.Submit(0, BlkOp::kWrite, uint64_t(i) * (kLen / kSector), &bufs[i], kLen, i).ok());
    }
    if (kicked) d.Kick(0);
    absl::Status s = d.Init(rig.opts);  // resets the device first
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_FALSE(rig.NeedsReset());
    BlkCompletion c[4];
    auto n = d.Reap(0, c, false);  // the old requests are gone for good
    ASSERT_TRUE(n.ok());
    EXPECT_EQ(*n, 0u);
    for (auto& b : bufs) d.FreeBuffer(b);
    const std::vector<uint8_t> data = RandomBytes(1 << 20, 11);
    ASSERT_TRUE(d.Write(100, data).ok());
    std::vector<uint8_t> got(data.size());
    ASSERT_TRUE(d.Read(100, got).ok());
    EXPECT_TRUE(got == data);
    EXPECT_TRUE(rig.file.Pread(100 * kSector, data.size()) == data);
    if (!kicked) {
      EXPECT_EQ(rig.Counter("writes"), 1u << 20 >> 17);  // only the new ones (128 KiB requests)
    }
  }
}

// tmpfs has no FALLOC_FL_ZERO_RANGE: WRITE_ZEROES falls back to writing
// zeroes (in several writes for a long range), and remembers to.
TEST(BlkFallback, WriteZeroesWithoutZeroRange) {
  struct stat st;
  if (::stat("/dev/shm", &st) != 0 || !S_ISDIR(st.st_mode)) GTEST_SKIP() << "no /dev/shm";
  Rig rig(8 << 20, "/dev/shm");
  rig.Boot();
  BlkDriver& d = *rig.drv;
  const std::vector<uint8_t> data = RandomBytes(8 << 20, 12);
  ASSERT_TRUE(d.Write(0, data).ok());
  std::vector<uint8_t> want = data;
  // 3 MiB + 3 sectors at an odd sector, then a short one, then with unmap.
  ASSERT_TRUE(d.WriteZeroes(1001, 6147, false).ok());
  std::fill(want.begin() + 1001 * kSector, want.begin() + (1001 + 6147) * kSector, 0);
  ASSERT_TRUE(d.WriteZeroes(12000, 5, false).ok());
  std::fill(want.begin() + 12000 * kSector, want.begin() + 12005 * kSector, 0);
  ASSERT_TRUE(d.WriteZeroes(14000, 64, true).ok());
  std::fill(want.begin() + 14000 * kSector, want.begin() + 14064 * kSector, 0);
  std::vector<uint8_t> got(data.size());
  ASSERT_TRUE(d.Read(0, got).ok());
  EXPECT_TRUE(got == want);
  EXPECT_TRUE(rig.file.Pread(0, want.size()) == want);
  EXPECT_EQ(rig.Counter("write_zeroes"), 3u);
  EXPECT_EQ(rig.Counter("errors"), 0u);
}

// The file shrinks behind the device's back: reads past its new end come
// back short (resubmitted) and then empty, which must be an IOERR, not data.
TEST(BlkShortIo, FileShrunkBehindTheDevice) {
  Rig rig(1 << 20);
  rig.file.Pwrite(0, RandomBytes(1 << 20, 8));
  rig.Boot();
  BlkDriver& d = *rig.drv;
  ASSERT_EQ(::ftruncate(rig.file.fd(), 600 << 10), 0);
  std::vector<uint8_t> got(128 << 10, 0xEE);
  EXPECT_EQ(d.Read((512 << 10) / kSector, got).code(), absl::StatusCode::kDataLoss);  // crosses the new end
  EXPECT_EQ(d.Read((768 << 10) / kSector, got).code(), absl::StatusCode::kDataLoss);  // wholly beyond
  ASSERT_TRUE(d.Read(0, got).ok());
  EXPECT_TRUE(got == rig.file.Pread(0, got.size()));
  EXPECT_EQ(rig.Counter("errors"), 2u);
  EXPECT_FALSE(rig.NeedsReset());
}

// The device set DEVICE_NEEDS_RESET (here: a malformed request slipped into
// the driver's queue): synchronous calls say Unavailable; Init recovers.
TEST(BlkDriverErrors, NeedsResetIsUnavailable) {
  Rig rig(1 << 20);
  rig.Boot();
  BlkDriver& d = *rig.drv;
  auto bad = rig.t->dma().Allocate(8, 8, Access::kRead);
  ASSERT_TRUE(bad.ok());
  const DriverBuffer only_8_bytes{bad->device_addr, 8, false};
  ASSERT_EQ(d.driver().queue(0).Add({&only_8_bytes, 1}, 123456), AddStatus::kOk);
  d.driver().Kick(0);
  ASSERT_TRUE(rig.NeedsReset());
  std::vector<uint8_t> buf(4096);
  EXPECT_EQ(d.Read(0, buf).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(d.Flush().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(d.Init(rig.opts).ok());
  rig.t->dma().Free(*bad);
  const std::vector<uint8_t> data = RandomBytes(4096, 2);
  ASSERT_TRUE(d.Write(0, data).ok());
  ASSERT_TRUE(d.Read(0, buf).ok());
  EXPECT_TRUE(buf == data);
}

// Against a device that holds requests, then answers without a status byte
// (the echo test device): a timeout is DeadlineExceeded, the late completion
// of the abandoned call is recognised and dropped, and a status the device
// never wrote is an error, not success.
TEST(BlkDriverErrors, TimeoutsAndUnwrittenStatus) {
  vioport::testing::EchoOptions eo;
  eo.hold = true;
  eo.device_id = DeviceId::kBlock;  // an echo device posing as blk
  auto echo = std::make_shared<vioport::testing::EchoDevice>(eo);
  LoopbackTransport t(echo);
  BlkDriver d(t);
  BlkDriverOptions o;
  o.wait.timeout = absl::Milliseconds(100);
  ASSERT_TRUE(d.Init(o).ok());
  std::vector<uint8_t> buf(4096, 0xAB);
  EXPECT_EQ(d.Read(0, buf).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(echo->held(), 1u);
  echo->set_hold(false);
  echo->ReleaseHeld();
  absl::Status s = d.Read(0, buf);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_NE(s.message().find("status 255"), absl::string_view::npos) << s;
  EXPECT_EQ(echo->completed(), 2u);
}

TEST(BlkQuiesce, CompletesEverythingInFlight) {
  Rig rig;
  rig.Boot();
  BlkDriver& d = *rig.drv;
  constexpr int kN = 16;
  std::vector<DmaBuffer> bufs;
  for (int i = 0; i < kN; ++i) {
    bufs.push_back(*d.AllocBuffer(64 << 10));
    std::fill(bufs.back().host, bufs.back().host + (64 << 10), static_cast<uint8_t>(0x30 + i));
    ASSERT_TRUE(d.Submit(0, BlkOp::kWrite, uint64_t(i) * 128, &bufs[i], 64 << 10, i).ok());
  }
  d.Kick(0);
  ASSERT_TRUE(rig.dev->Quiesce().ok());
  BlkCompletion c[kN];
  auto n = d.Reap(0, c, /*wait=*/false);  // already published: no waiting
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, static_cast<size_t>(kN));
  for (int i = 0; i < kN; ++i) {
    EXPECT_EQ(c[i].status, 0);
    EXPECT_EQ(rig.file.Pread(uint64_t(i) * 128 * kSector, 64 << 10),
              std::vector<uint8_t>(64 << 10, static_cast<uint8_t>(0x30 + i)));
    d.FreeBuffer(bufs[i]);
  }
}

}  // namespace
}  // namespace vioport::blktest
