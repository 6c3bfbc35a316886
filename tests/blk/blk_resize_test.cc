// SPDX-License-Identifier: Apache-2.0
// BlkDevice::Resize: capacity changes at run time while a driver is active.
// The driver must see the new capacity through config space after a config
// change (generation bump + config interrupt raised on the device thread),
// requests are checked against the capacity of the moment, and the backing
// file is checked behind the device's back.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <string>
#include <thread>
#include <vector>

#include "blk_test_support.h"

namespace vioport::blktest {
namespace {

constexpr uint32_t kSector = 512;

// The capacity in sectors as the driver reads it: config space through the
// transport, with the generation check.
uint64_t DriverCapacity(BlkDriver& d) {
  auto v = d.driver().ReadConfigValue<le64>(offsetof(blk::Config, capacity));
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? uint64_t{*v} : 0;
}

bool EventFdReadable(const BlkDevice& dev) {
  pollfd p{dev.event_fd(), POLLIN, 0};
  return ::poll(&p, 1, 0) == 1;
}

// What the device's loop (vios's DeviceLoop) does when the eventfd fires:
// ProcessEvents on the device thread, here the test's. True if it did work.
bool RunDeviceLoopOnce(Rig& rig) { return rig.dev->ProcessEvents(); }

class BlkResize : public ::testing::TestWithParam<Mode> {};

TEST_P(BlkResize, GrowWhileActiveIsAnnouncedAndTheNewRegionWorks) {
  constexpr uint64_t kOld = 1 << 20, kNew = 2 << 20;
  Rig rig(kOld);
  rig.Boot({}, GetParam());
  BlkDriver& d = *rig.drv;
  ASSERT_EQ(d.info().capacity_sectors, kOld / kSector);
  const std::vector<uint8_t> a = RandomBytes(64 << 10, 1);
  ASSERT_TRUE(d.Write(kOld / kSector - 128, a).ok());  // the old region's last 64 KiB
  std::vector<uint8_t> got(64 << 10);
  ASSERT_EQ(d.Read(kOld / kSector, got).code(), absl::StatusCode::kDataLoss);  // past the end, for now

  RunDeviceLoopOnce(rig);  // the eventfd reports no earlier I/O completions
  ASSERT_FALSE(EventFdReadable(*rig.dev));
  const uint32_t gen0 = rig.t->GetConfigGeneration();
  const uint64_t irq0 = rig.t->config_interrupts();
  const uint64_t errors0 = rig.Counter("errors");
  std::atomic<int> config_irqs_here{0}, config_irqs_elsewhere{0};
  const std::thread::id device_thread = std::this_thread::get_id();
  rig.t->OnConfigInterrupt([&] {
    (std::this_thread::get_id() == device_thread ? config_irqs_here : config_irqs_elsewhere)++;
  });

  // From another thread, as vios's control thread would.
  absl::Status resized;
  std::thread control([&] { resized = rig.dev->Resize(kNew); });
  control.join();
  ASSERT_TRUE(resized.ok()) << resized;
  EXPECT_EQ(rig.dev->capacity_bytes(), kNew);
  EXPECT_EQ(rig.dev->capacity_sectors(), kNew / kSector);
  EXPECT_EQ(rig.file.Size(), kNew);
  EXPECT_EQ(rig.Counter("resizes"), 1u);
  // The driver is told on the device thread, not by Resize: nothing yet, but
  // the device's eventfd wakes its loop.
  EXPECT_EQ(rig.t->config_interrupts(), irq0);
  EXPECT_TRUE(EventFdReadable(*rig.dev));
  EXPECT_TRUE(RunDeviceLoopOnce(rig));
  EXPECT_EQ(rig.t->config_interrupts(), irq0 + 1);
  EXPECT_EQ(config_irqs_here.load(), 1);
  EXPECT_EQ(config_irqs_elsewhere.load(), 0);
  EXPECT_NE(rig.t->GetConfigGeneration(), gen0);
  EXPECT_EQ(DriverCapacity(d), kNew / kSector);
  // Announced once: another pass raises nothing more.
  EXPECT_FALSE(RunDeviceLoopOnce(rig));
  EXPECT_EQ(rig.t->config_interrupts(), irq0 + 1);

  // Past the old end: the extension reads as zeroes, then takes a write that
  // straddles the old end and one at the new end.
  ASSERT_TRUE(d.Read(kOld / kSector, got).ok());
  EXPECT_TRUE(got == std::vector<uint8_t>(got.size(), 0));
  const std::vector<uint8_t> b = RandomBytes(128 << 10, 2);
  const std::vector<uint8_t> c = RandomBytes(64 << 10, 3);
  ASSERT_TRUE(d.Write(kOld / kSector - 64, b).ok());
  ASSERT_TRUE(d.Write(kNew / kSector - 128, c).ok());
  std::vector<uint8_t> got_b(b.size()), got_c(c.size()), got_a(32 << 10);
  ASSERT_TRUE(d.Read(kOld / kSector - 64, got_b).ok());
  ASSERT_TRUE(d.Read(kNew / kSector - 128, got_c).ok());
  ASSERT_TRUE(d.Read(kOld / kSector - 128, got_a).ok());
  EXPECT_TRUE(got_b == b);
  EXPECT_TRUE(got_c == c);
  EXPECT_TRUE(got_a == std::vector<uint8_t>(a.begin(), a.begin() + (32 << 10)));  // untouched by b
  EXPECT_TRUE(rig.file.Pread(kOld - (32 << 10), b.size()) == b);
  EXPECT_TRUE(rig.file.Pread(kNew - c.size(), c.size()) == c);
  EXPECT_EQ(rig.file.Size(), kNew);
  // The new end is an end.
  EXPECT_EQ(d.Read(kNew / kSector - 8, got).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(rig.Counter("errors"), errors0 + 1);
  // A driver that initialises now reads the new capacity.
  ASSERT_TRUE(d.Init(rig.opts).ok());
  EXPECT_EQ(d.info().capacity_sectors, kNew / kSector);
  EXPECT_FALSE(rig.NeedsReset());
}

TEST_P(BlkResize, ShrinkFailsRequestsPastTheNewEnd) {
  constexpr uint64_t kOld = 2 << 20, kNew = 1 << 20;
  Rig rig(kOld);
  rig.Boot({}, GetParam());
  BlkDriver& d = *rig.drv;
  const std::vector<uint8_t> data = RandomBytes(kOld, 4);
  ASSERT_TRUE(d.Write(0, data).ok());
  const uint32_t gen0 = rig.t->GetConfigGeneration();
  const uint64_t irq0 = rig.t->config_interrupts();
  const uint64_t errors0 = rig.Counter("errors");

  ASSERT_TRUE(rig.dev->Resize(kNew).ok());
  EXPECT_EQ(rig.dev->capacity_bytes(), kNew);
  EXPECT_EQ(rig.file.Size(), kNew);
  EXPECT_TRUE(RunDeviceLoopOnce(rig));
  EXPECT_EQ(rig.t->config_interrupts(), irq0 + 1);
  EXPECT_NE(rig.t->GetConfigGeneration(), gen0);
  EXPECT_EQ(DriverCapacity(d), kNew / kSector);

  std::vector<uint8_t> got(64 << 10, 0xEE);
  EXPECT_EQ(d.Read(kNew / kSector, got).code(), absl::StatusCode::kDataLoss);       // wholly beyond
  EXPECT_EQ(d.Read(kNew / kSector - 64, got).code(), absl::StatusCode::kDataLoss);  // crosses the new end
  EXPECT_EQ(d.Write(kNew / kSector, RandomBytes(4096, 5)).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(rig.Counter("errors"), errors0 + 3);
  EXPECT_EQ(rig.file.Size(), kNew);  // the refused write did not extend it
  // Within: the data written before the shrink.
  std::vector<uint8_t> all(kNew);
  ASSERT_TRUE(d.Read(0, all).ok());
  EXPECT_TRUE(all == std::vector<uint8_t>(data.begin(), data.begin() + kNew));
  ASSERT_TRUE(d.Read(kNew / kSector - 128, got).ok());
  EXPECT_TRUE(got == std::vector<uint8_t>(data.begin() + kNew - got.size(), data.begin() + kNew));
  EXPECT_EQ(rig.Counter("resizes"), 1u);
  EXPECT_FALSE(rig.NeedsReset());
}

// Size 0: the operator resized the file outside (qemu-img resize, truncate);
// the device takes its new size, whole sectors only, and leaves the file alone.
TEST_P(BlkResize, ZeroRereadsTheBackingSize) {
  Rig rig(1 << 20);
  rig.Boot({}, GetParam());
  BlkDriver& d = *rig.drv;
  const uint64_t irq0 = rig.t->config_interrupts();
  constexpr uint64_t kGrown = (3 << 20) + 100;  // and a partial sector
  ASSERT_EQ(::truncate(rig.file.path().c_str(), kGrown), 0);
  EXPECT_EQ(rig.dev->capacity_bytes(), 1u << 20);  // not before Resize
  ASSERT_TRUE(rig.dev->Resize(0).ok());
  EXPECT_EQ(rig.dev->capacity_bytes(), 3u << 20);
  EXPECT_EQ(rig.file.Size(), kGrown);
  EXPECT_TRUE(RunDeviceLoopOnce(rig));
  EXPECT_EQ(rig.t->config_interrupts(), irq0 + 1);
  EXPECT_EQ(DriverCapacity(d), (3u << 20) / kSector);
  const std::vector<uint8_t> data = RandomBytes(64 << 10, 6);
  ASSERT_TRUE(d.Write((3 << 20) / kSector - 128, data).ok());
  std::vector<uint8_t> got(data.size());
  ASSERT_TRUE(d.Read((3 << 20) / kSector - 128, got).ok());
  EXPECT_TRUE(got == data);
  EXPECT_TRUE(rig.file.Pread((3 << 20) - data.size(), data.size()) == data);
  EXPECT_EQ(d.Read((3 << 20) / kSector, std::span<uint8_t>(got.data(), 512)).code(),
            absl::StatusCode::kDataLoss);  // the partial sector is not exposed

  // Nothing changed: OK, and nothing to announce (once the eventfd has no
  // I/O completions left to report).
  RunDeviceLoopOnce(rig);
  ASSERT_FALSE(EventFdReadable(*rig.dev));
  ASSERT_TRUE(rig.dev->Resize(0).ok());
  EXPECT_FALSE(EventFdReadable(*rig.dev));
  RunDeviceLoopOnce(rig);
  EXPECT_EQ(rig.t->config_interrupts(), irq0 + 1);
  EXPECT_EQ(rig.Counter("resizes"), 1u);

  // Shrunk outside: picked up the same way.
  ASSERT_EQ(::truncate(rig.file.path().c_str(), 512 << 10), 0);
  ASSERT_TRUE(rig.dev->Resize(0).ok());
  EXPECT_EQ(rig.dev->capacity_bytes(), 512u << 10);
  EXPECT_TRUE(RunDeviceLoopOnce(rig));
  EXPECT_EQ(DriverCapacity(d), (512u << 10) / kSector);
  EXPECT_EQ(rig.Counter("resizes"), 2u);
  EXPECT_EQ(d.Read((512 << 10) / kSector, got).code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(rig.NeedsReset());
}

INSTANTIATE_TEST_SUITE_P(Modes, BlkResize,
                         ::testing::Values(Mode{false, false, false, false}, Mode{false, true, true, true},
                                           Mode{true, false, false, true}, Mode{true, true, true, false}),
                         ModeName);

TEST(BlkResizeErrors, BadSizesLeaveEverythingAlone) {
  Rig rig(1 << 20);
  rig.Boot();
  auto refused = [&](uint64_t size, absl::StatusCode code, const std::vector<std::string>& words) {
    SCOPED_TRACE(size);
    const absl::Status s = rig.dev->Resize(size);
    EXPECT_EQ(s.code(), code) << s;
    for (const std::string& w : words) EXPECT_NE(s.message().find(w), absl::string_view::npos) << s;
    EXPECT_EQ(rig.dev->capacity_bytes(), 1u << 20);
    EXPECT_EQ(rig.file.Size(), 1u << 20);
    EXPECT_FALSE(EventFdReadable(*rig.dev));
  };
  refused(1000, absl::StatusCode::kInvalidArgument, {"size 1000 is not a multiple of 512", rig.file.path()});
  refused((1 << 20) + 1, absl::StatusCode::kInvalidArgument, {"not a multiple of 512"});
  refused(UINT64_MAX & ~uint64_t{511}, absl::StatusCode::kInvalidArgument, {"too large"});

  // ftruncate refused (here: past RLIMIT_FSIZE, EFBIG): the error names the
  // path and the errno, and the capacity stays.
  struct rlimit old_limit;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct sigaction ign {}, old_action {};
  ign.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGXFSZ, &ign, &old_action), 0);
  struct rlimit low = old_limit;
  low.rlim_cur = 2 << 20;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &low), 0);
  const absl::Status big = rig.dev->Resize(4 << 20);
  ::setrlimit(RLIMIT_FSIZE, &old_limit);
  ::sigaction(SIGXFSZ, &old_action, nullptr);
  EXPECT_EQ(big.code(), absl::StatusCode::kOutOfRange) << big;  // EFBIG
  EXPECT_NE(big.message().find(rig.file.path()), absl::string_view::npos) << big;
  EXPECT_NE(big.message().find("ftruncate"), absl::string_view::npos) << big;
  EXPECT_NE(big.message().find("File too large"), absl::string_view::npos) << big;
  EXPECT_EQ(rig.dev->capacity_bytes(), 1u << 20);
  EXPECT_EQ(rig.file.Size(), 1u << 20);
  EXPECT_FALSE(EventFdReadable(*rig.dev));

  EXPECT_EQ(rig.Counter("resizes"), 0u);
  const std::vector<uint8_t> data = RandomBytes(4096, 7);
  ASSERT_TRUE(rig.drv->Write(2040, data).ok());
  EXPECT_TRUE(rig.file.Pread((1 << 20) - 4096, 4096) == data);
}

TEST(BlkResizeErrors, ReadOnlyDeviceOnlyTakesTheBackingSize) {
  Rig rig(1 << 20);
  const std::vector<uint8_t> data = RandomBytes(1 << 20, 8);
  rig.file.Pwrite(0, data);
  BlkOptions bo;
  bo.read_only = true;
  rig.Boot(bo);
  BlkDriver& d = *rig.drv;
  ASSERT_TRUE(d.info().read_only);
  const uint64_t before = rig.file.Checksum();

  for (uint64_t size : {uint64_t{2} << 20, uint64_t{512} << 10}) {
    const absl::Status s = rig.dev->Resize(size);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find(rig.file.path()), absl::string_view::npos) << s;
    EXPECT_NE(s.message().find("read-only"), absl::string_view::npos) << s;
    EXPECT_NE(s.message().find(std::to_string(size)), absl::string_view::npos) << s;
    EXPECT_NE(s.message().find(std::to_string(1 << 20)), absl::string_view::npos) << s;
    EXPECT_EQ(rig.dev->capacity_bytes(), 1u << 20);
    EXPECT_EQ(rig.file.Size(), 1u << 20);
    EXPECT_EQ(rig.file.Checksum(), before);
  }
  // Its own size: fine, and nothing changed.
  EXPECT_TRUE(rig.dev->Resize(1 << 20).ok());
  EXPECT_EQ(rig.Counter("resizes"), 0u);
  EXPECT_FALSE(EventFdReadable(*rig.dev));

  // Grown outside: the new size, given explicitly, is taken (a re-read).
  ASSERT_EQ(::truncate(rig.file.path().c_str(), 2 << 20), 0);
  ASSERT_TRUE(rig.dev->Resize(2 << 20).ok());
  EXPECT_EQ(rig.dev->capacity_bytes(), 2u << 20);
  EXPECT_TRUE(RunDeviceLoopOnce(rig));
  EXPECT_EQ(DriverCapacity(d), (2u << 20) / kSector);
  std::vector<uint8_t> got(64 << 10, 0xEE);
  ASSERT_TRUE(d.Read((2 << 20) / kSector - 128, got).ok());
  EXPECT_TRUE(got == std::vector<uint8_t>(got.size(), 0));
  ASSERT_TRUE(d.Read((1 << 20) / kSector - 128, got).ok());
  EXPECT_TRUE(got == std::vector<uint8_t>(data.end() - got.size(), data.end()));
  EXPECT_EQ(d.Write(2048, got).code(), absl::StatusCode::kDataLoss);  // still read-only
  EXPECT_EQ(rig.Counter("resizes"), 1u);
}

// A shrink while writes past the new end are in flight (accepted under the
// old capacity): Resize lets them finish first, so they complete OK, are
// published by the time it returns, and cannot extend the file again after
// it was cut. On tmpfs io_uring hands buffered writes to kernel workers, so
// they are still in flight when Resize starts.
TEST(BlkResizeInFlight, ShrinkWaitsForWritesPastTheNewEnd) {
  struct stat st;
  const std::string dir = ::stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "";
  constexpr uint64_t kOld = 16 << 20, kNew = 2 << 20;
  constexpr uint32_t kLen = 512 << 10;
  constexpr int kN = 16;  // 8 MiB from 1 MiB: 2 writes below the new end, 14 past it
  Rig rig(kOld, dir);
  BlkOptions bo;
  bo.io = BlkOptions::Io::kIoUring;
  rig.Boot(bo);
  BlkDriver& d = *rig.drv;
  std::vector<DmaBuffer> bufs;
  for (int i = 0; i < kN; ++i) {
    bufs.push_back(*d.AllocBuffer(kLen));
    std::fill(bufs.back().host, bufs.back().host + kLen, static_cast<uint8_t>(0x40 + i));
    ASSERT_TRUE(d.Submit(0, BlkOp::kWrite, (1 << 20) / kSector + uint64_t(i) * (kLen / kSector), &bufs[i], kLen, i)
                    .ok());
  }
  d.Kick(0);
  absl::Status resized;
  std::thread control([&] { resized = rig.dev->Resize(kNew); });
  control.join();
  ASSERT_TRUE(resized.ok()) << resized;
  EXPECT_EQ(rig.file.Size(), kNew);
  BlkCompletion c[kN];
  auto n = d.Reap(0, c, /*wait=*/false);  // published already: no waiting, no device loop
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, static_cast<size_t>(kN));
  for (size_t i = 0; i < *n; ++i) EXPECT_EQ(c[i].status, 0) << c[i].token;
  // Below the new end the data is there; the file was cut after the rest landed.
  for (int i = 0; i < 2; ++i)
    EXPECT_EQ(rig.file.Pread((1 << 20) + uint64_t(i) * kLen, kLen),
              std::vector<uint8_t>(kLen, static_cast<uint8_t>(0x40 + i)));
  RunDeviceLoopOnce(rig);
  EXPECT_EQ(rig.file.Size(), kNew);
  EXPECT_EQ(DriverCapacity(d), kNew / kSector);
  for (auto& b : bufs) d.FreeBuffer(b);
}

// Resize from a control thread, over and over, while a driver thread keeps
// requests going: inside the smallest capacity they all succeed with the
// right data; across the moving end each one either succeeds with the right
// data or fails with IOERR, never anything else, and both happen; the driver
// only ever reads one of the two capacities; and once it stops, the file has
// exactly the device's capacity.
TEST_P(BlkResize, ResizeFromAnotherThreadWhileRequestsRun) {
  constexpr uint64_t kSmall = 4 << 20, kLarge = 8 << 20;
  constexpr uint32_t kLen = 64 << 10;
  constexpr uint64_t kMinOps = 100;
  Rig rig(kSmall);
  rig.Boot({}, GetParam());
  BlkDriver& d = *rig.drv;

  std::atomic<bool> driver_done{false};
  std::string failure;
  uint64_t ops = 0, edge_ok = 0, edge_ioerr = 0;
  // Until enough requests ran and the edge went both ways (or 20 s passed).
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  std::thread driver_thread([&] {
    std::vector<uint8_t> got(kLen);
    for (uint32_t i = 0; failure.empty(); ++i, ++ops) {
      if ((ops >= kMinOps && edge_ok > 0 && edge_ioerr > 0) || absl::Now() > deadline) break;
      // Inside: 32 slots of kLen below kSmall.
      const uint64_t sector = uint64_t{i % 32} * (kLen / kSector);
      const std::vector<uint8_t> data = RandomBytes(kLen, i);
      if (absl::Status s = d.Write(sector, data); !s.ok()) failure = "write inside: " + s.ToString();
      if (absl::Status s = d.Read(sector, got); !s.ok()) failure = "read inside: " + s.ToString();
      if (got != data) failure = "data differs at sector " + std::to_string(sector);
      // Across the moving end: the small capacity's last 32 KiB and the next 32 KiB.
      const uint64_t edge = kSmall / kSector - 64;
      const std::vector<uint8_t> e = RandomBytes(kLen, 1000000 + i);
      const absl::Status w = d.Write(edge, e);
      if (!w.ok() && w.code() != absl::StatusCode::kDataLoss) failure = "write at the edge: " + w.ToString();
      std::fill(got.begin(), got.end(), 0xEE);
      const absl::Status r = d.Read(edge, got);
      if (r.ok()) {
        // After a good write: its first half, below every capacity, as
        // written; its second half as written, or zeroes if a shrink cut it
        // off since (a grow brings it back as zeroes).
        const size_t half = kLen / 2;
        if (w.ok() && (!std::equal(e.begin(), e.begin() + half, got.begin()) ||
                       (!std::equal(e.begin() + half, e.end(), got.begin() + half) &&
                        std::any_of(got.begin() + half, got.end(), [](uint8_t b) { return b != 0; }))))
          failure = "edge data differs";
        ++edge_ok;
      } else if (r.code() == absl::StatusCode::kDataLoss) {
        ++edge_ioerr;
      } else {
        failure = "read at the edge: " + r.ToString();
      }
      const uint64_t cap = DriverCapacity(d);
      if (cap != kSmall / kSector && cap != kLarge / kSector) failure = "capacity " + std::to_string(cap);
    }
    driver_done.store(true);
  });
  std::string resize_failure;
  uint64_t resizes = 0;
  std::thread control([&] {
    while (!driver_done.load() && resize_failure.empty()) {
      const uint64_t size = resizes % 2 == 0 ? kLarge : kSmall;
      if (absl::Status s = rig.dev->Resize(size); !s.ok()) resize_failure = s.ToString();
      ++resizes;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  driver_thread.join();
  control.join();
  ASSERT_EQ(resize_failure, "");
  ASSERT_EQ(failure, "");
  EXPECT_GE(ops, kMinOps);
  EXPECT_GT(edge_ok, 0u);
  EXPECT_GT(edge_ioerr, 0u);
  EXPECT_GT(resizes, 1u);
  EXPECT_EQ(rig.Counter("resizes"), resizes);
  const uint64_t cap = resizes % 2 == 1 ? kLarge : kSmall;  // the last one
  EXPECT_EQ(rig.dev->capacity_bytes(), cap);
  EXPECT_EQ(rig.file.Size(), cap);
  RunDeviceLoopOnce(rig);  // whatever announcement was still pending
  EXPECT_EQ(DriverCapacity(d), cap / kSector);
  EXPECT_GE(rig.t->config_interrupts(), 1u);
  EXPECT_EQ(rig.Counter("bad_requests"), 0u);
  EXPECT_FALSE(rig.NeedsReset());
}

}  // namespace
}  // namespace vioport::blktest
