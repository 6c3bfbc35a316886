// SPDX-License-Identifier: Apache-2.0
// Our vhost-user front-end (emulators/kvm VmmFrontend), the guest-side
// transport over it, and our unchanged virtio-blk driver against
// qemu-storage-daemon: a vhost-user back-end we did not write. Every test
// checks data: what the driver reads back, and the bytes in QSD's backing
// file. QSD is stopped with SIGTERM at the end of each test and must exit 0.

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "vioport/testing/process.h"
#include "vioport/testing/tool_output.h"
#include "vioport/core/blk_spec.h"
#include "vioport/transports/vhost_user_frontend.h"
#include "vioport/guest/blk_driver.h"
#include "vioport/guest/pattern.h"
#include "vioport/transports/vhost_user_guest.h"

namespace vioport {
namespace {

using testproc::Proc;
using vhost_user::VmmFrontend;
using vhost_user::VmmFrontendOptions;
namespace proto = vhost_user::proto;

constexpr uint64_t kDiskBytes = 32 << 20;
constexpr uint64_t kBackgroundSeed = 0xb0b0;  // what the image holds before a test writes

#define ASSERT_OK(expr)                                \
  do {                                                 \
    const absl::Status _s = (expr);                    \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s;       \
  } while (0)

struct QsdOptions {
  bool writable = true;
  int num_queues = 0;      // 0: QSD's default (1)
  int throttle_iops = 0;   // >0: a throttle node in front of the file
};

class QsdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string(QSD_BIN).empty()) GTEST_SKIP() << "qemu-storage-daemon not installed (apt-get install qemu-utils)";
    char tmpl[] = "/tmp/vioport-kvm-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    image_ = dir_ + "/disk.img";
    sock_ = dir_ + "/vub.sock";
    // A known background, so "unchanged" and "exactly these bytes" mean something.
    const int fd = ::open(image_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    std::vector<uint8_t> buf(1 << 20);
    for (uint64_t off = 0; off < kDiskBytes; off += buf.size()) {
      pattern::Fill(kBackgroundSeed, off, buf);
      ASSERT_EQ(::pwrite(fd, buf.data(), buf.size(), static_cast<off_t>(off)), static_cast<ssize_t>(buf.size()));
    }
    ::close(fd);
  }

  void TearDown() override {
    transport_.reset();
    if (qsd_.pid > 0 && qsd_.Running()) {  // a failed test: no clean stop was checked
      qsd_.Signal(SIGKILL);
      qsd_.Wait(10);
    }
    if (!dir_.empty()) {
      if (HasFailure() && qsd_.pid > 0) std::fprintf(stderr, "qemu-storage-daemon stderr:\n%s\n", qsd_.err().c_str());
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  void StartQsd(const QsdOptions& o = {}) {
    std::vector<std::string> argv = {QSD_BIN};
    if (o.throttle_iops > 0) {
      argv.insert(argv.end(), {"--object", absl::StrCat("throttle-group,id=tg0,x-iops-total=", o.throttle_iops),
                               "--blockdev", absl::StrCat("driver=file,node-name=f0,filename=", image_),
                               "--blockdev", "driver=throttle,node-name=d0,throttle-group=tg0,file=f0"});
    } else {
      argv.insert(argv.end(), {"--blockdev", absl::StrCat("driver=file,node-name=d0,filename=", image_)});
    }
    std::string exp = absl::StrCat("type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=", sock_,
                                   ",writable=", o.writable ? "on" : "off");
    if (o.num_queues) absl::StrAppend(&exp, ",num-queues=", o.num_queues);
    argv.insert(argv.end(), {"--export", exp});
    qsd_ = testproc::Spawn(argv, dir_, "qsd");
    ASSERT_GT(qsd_.pid, 0);
    for (int i = 0; i < 500 && !std::filesystem::exists(sock_); ++i) {
      ASSERT_TRUE(qsd_.Running()) << "qemu-storage-daemon exited: " << qsd_.err();
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  // SIGTERM; QSD must exit 0 (as QEMU's own vhost-user-blk test demands).
  // Our front-end may still be connected, as QEMU's is in that test; the
  // transport lives on (the driver may still use it) until TearDown.
  void StopQsd() {
    ASSERT_TRUE(qsd_.Running()) << "qemu-storage-daemon died early: " << qsd_.err();
    qsd_.Signal(SIGTERM);
    EXPECT_EQ(qsd_.Wait(10), 0) << qsd_.err();
  }

  VhostUserGuestOptions GuestOptions() {
    VhostUserGuestOptions o;
    o.frontend.socket_path = sock_;
    o.frontend.memory_bytes = 64 << 20;
    return o;
  }

  VhostUserDriverTransport* Connect(const VhostUserGuestOptions& o) {
    auto t = VhostUserDriverTransport::Connect(o);
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) return nullptr;
    transport_ = std::move(*t);
    return transport_.get();
  }
  VhostUserDriverTransport* Connect() { return Connect(GuestOptions()); }

  std::vector<uint8_t> FileBytes(uint64_t off, uint64_t len) {
    std::vector<uint8_t> b(len);
    const int fd = ::open(image_.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::pread(fd, b.data(), len, static_cast<off_t>(off)), static_cast<ssize_t>(len));
    ::close(fd);
    return b;
  }
  uint64_t FileChecksum() {
    pattern::Checksum64 c;
    c.Add(FileBytes(0, kDiskBytes));
    return c.Value();
  }
  static uint64_t PatternChecksum(uint64_t seed, uint64_t off, uint64_t len) {
    std::vector<uint8_t> b(len);
    pattern::Fill(seed, off, b);
    pattern::Checksum64 c;
    c.Add(b);
    return c.Value();
  }
  // The file holds `seed`'s pattern on [off, off + len) and the background
  // for 64 KiB on either side.
  void ExpectFileHolds(uint64_t seed, uint64_t off, uint64_t len) {
    EXPECT_EQ(pattern::FirstMismatch(seed, off, FileBytes(off, len)), -1) << "seed " << seed << " at " << off;
    const uint64_t before = std::min<uint64_t>(off, 64 << 10);
    EXPECT_EQ(pattern::FirstMismatch(kBackgroundSeed, off - before, FileBytes(off - before, before)), -1);
    const uint64_t after = std::min<uint64_t>(kDiskBytes - off - len, 64 << 10);
    EXPECT_EQ(pattern::FirstMismatch(kBackgroundSeed, off + len, FileBytes(off + len, after)), -1);
  }

  std::string dir_, image_, sock_;
  Proc qsd_;
  std::unique_ptr<VhostUserDriverTransport> transport_;
};

// ---- the protocol itself, with the front-end alone ---------------------------------

TEST_F(QsdTest, FrontendNegotiatesWithQsd) {
  StartQsd();
  VmmFrontendOptions o;
  o.socket_path = sock_;
  o.memory_bytes = 4 << 20;
  auto fe = VmmFrontend::Connect(o);
  ASSERT_TRUE(fe.ok()) << fe.status();
  VmmFrontend& f = **fe;
  std::printf("QSD: features 0x%" PRIx64 ", protocol features offered 0x%" PRIx64 ", negotiated 0x%" PRIx64
              ", %u queue(s), max mem slots %" PRIu64 "\n",
              f.device_features(), f.offered_protocol_features(), f.protocol_features(), f.num_queues(),
              f.max_mem_slots());
  EXPECT_TRUE(feature::Has(f.device_features(), feature::kVersion1));
  EXPECT_TRUE(feature::Has(f.device_features(), vhost_user::kFeatureProtocolFeatures));
  EXPECT_TRUE(f.has_protocol_feature(proto::kConfig));  // QEMU's vhost-user-blk needs it
  EXPECT_TRUE(f.has_protocol_feature(proto::kReplyAck));
  EXPECT_TRUE(f.has_protocol_feature(proto::kMq));
  EXPECT_EQ(f.num_queues(), 1);

  // The config: capacity in 512-byte sectors is the file's size.
  auto cfg = f.GetConfig(0, 60);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  uint64_t cap;
  std::memcpy(&cap, cfg->data(), 8);
  EXPECT_EQ(cap, kDiskBytes / 512);
  uint16_t nq;
  std::memcpy(&nq, cfg->data() + 34, 2);
  EXPECT_EQ(nq, 1);
  // More than the device's config: QSD answers with an empty config (its "error").
  EXPECT_FALSE(f.GetConfig(0, 256).ok());
  // SET_CONFIG: QSD takes only the one writable byte, writeback (offset 32).
  const uint8_t one = 1;
  ASSERT_OK(f.SetConfig(32, {&one, 1}));
  auto after = f.GetConfig(0, 60);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ((*after)[32], 1);
  // Features it did not offer are refused before anything is sent.
  EXPECT_TRUE(absl::IsInvalidArgument(f.SetFeatures(feature::Bit(feature::kRingPacked) | feature::Bit(feature::kVersion1))));
  EXPECT_TRUE(f.alive());
  fe->reset();
  StopQsd();
}

// ---- (a) data through the unchanged blk driver lands in QSD's file ----------------

struct Variant {
  const char* name;
  uint64_t guest_base;
  bool add_mem_reg;
  uint64_t protocol_features = VmmFrontendOptions().wanted_protocol_features;
};

void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

class QsdBlkVariants : public QsdTest, public ::testing::WithParamInterface<Variant> {};

TEST_P(QsdBlkVariants, WritesLandInTheFileAndReadBack) {
  StartQsd();
  VhostUserGuestOptions o = GuestOptions();
  o.frontend.guest_phys_base = GetParam().guest_base;
  o.frontend.add_mem_reg = GetParam().add_mem_reg;
  o.frontend.wanted_protocol_features = GetParam().protocol_features;
  VhostUserDriverTransport* t = Connect(o);
  ASSERT_NE(t, nullptr);
  BlkDriver blk(*t);
  BlkDriverOptions bo;
  bo.ring_features = feature::Bit(feature::kIndirectDesc) | feature::Bit(feature::kEventIdx);
  ASSERT_OK(blk.Init(bo));
  EXPECT_EQ(blk.info().capacity_sectors, kDiskBytes / 512);
  EXPECT_FALSE(blk.info().read_only);
  EXPECT_TRUE(blk.info().flush);
  EXPECT_TRUE(feature::Has(blk.info().features, feature::kEventIdx));
  EXPECT_FALSE(feature::Has(t->GetDeviceFeatures(), vhost_user::kFeatureProtocolFeatures));

  // Not 4 KiB aligned, several requests long.
  const uint64_t seed = 41, off = (3 << 20) + 7 * 512, len = (5 << 20) + 3 * 512;
  std::vector<uint8_t> data(len);
  pattern::Fill(seed, off, data);
  ASSERT_OK(blk.Write(off / 512, data));
  ASSERT_OK(blk.Flush());
  std::vector<uint8_t> back(len);
  ASSERT_OK(blk.Read(off / 512, back));
  EXPECT_EQ(pattern::FirstMismatch(seed, off, back), -1);
  ExpectFileHolds(seed, off, len);
  // Untouched sectors read back as the background through the driver too.
  std::vector<uint8_t> head(1 << 20);
  ASSERT_OK(blk.Read(0, head));
  EXPECT_EQ(pattern::FirstMismatch(kBackgroundSeed, 0, head), -1);
  auto id = blk.GetId();
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*id, "vhost_user_blk");
  blk.driver().Reset();  // GET_VRING_BASE: QSD took some requests off queue 0
  EXPECT_GT(t->last_stopped_base(0), 0);
  EXPECT_TRUE(t->connected());
  StopQsd();
}

INSTANTIATE_TEST_SUITE_P(Frontends, QsdBlkVariants,
                         ::testing::Values(Variant{"SetMemTableAtGpa0", 0, false},
                                           Variant{"SetMemTableAtGpa4G", uint64_t{1} << 32, false},
                                           Variant{"AddMemRegAtGpa1G", uint64_t{1} << 30, true},
                                           // No acks, one queue: the plain message path.
                                           Variant{"ConfigOnlyNoReplyAck", 0, false,
                                                   vhost_user::ProtoBit(proto::kConfig)}),
                         [](const auto& i) { return std::string(i.param.name); });

// GET_VRING_BASE reports exactly how many requests QSD took off the ring.
TEST_F(QsdTest, VringBaseCountsRequests) {
  StartQsd();
  VhostUserDriverTransport* t = Connect();
  ASSERT_NE(t, nullptr);
  BlkDriver blk(*t);
  BlkDriverOptions bo;
  bo.ring_features = feature::Bit(feature::kIndirectDesc);
  ASSERT_OK(blk.Init(bo));
  constexpr int kRequests = 37;
  auto buf = blk.AllocBuffer(4096);
  ASSERT_TRUE(buf.ok());
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_OK(blk.Submit(0, BlkOp::kRead, uint64_t(i) * 8, &*buf, 4096, i));
    blk.Kick(0);
    BlkCompletion c;
    auto n = blk.Reap(0, {&c, 1}, true);
    ASSERT_TRUE(n.ok()) << n.status();
    ASSERT_EQ(*n, 1u);
    EXPECT_EQ(c.status, 0);
    EXPECT_EQ(pattern::FirstMismatch(kBackgroundSeed, uint64_t(i) * 4096, {buf->host, 4096}), -1);
  }
  blk.FreeBuffer(*buf);
  blk.driver().Reset();
  EXPECT_EQ(t->last_stopped_base(0), kRequests);
  StopQsd();
}

// ---- (b) two queues, used at once from two threads ---------------------------------

TEST_F(QsdTest, TwoQueuesBothCarryRequests) {
  StartQsd({.num_queues = 2});
  VhostUserDriverTransport* t = Connect();
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->frontend().num_queues(), 2);
  BlkDriver blk(*t);
  BlkDriverOptions bo;
  bo.ring_features = feature::Bit(feature::kIndirectDesc) | feature::Bit(feature::kEventIdx);
  ASSERT_OK(blk.Init(bo));
  ASSERT_EQ(blk.info().num_queues, 2);
  constexpr uint64_t kRegion = 6 << 20;
  absl::Status st[2];
  std::thread th[2];
  for (uint16_t q = 0; q < 2; ++q) {
    th[q] = std::thread([&, q] {
      const uint64_t off = (1 << 20) + q * (kRegion + (1 << 20)), seed = 100 + q;
      for (int round = 0; round < 3 && st[q].ok(); ++round) {
        std::vector<uint8_t> d(kRegion);
        pattern::Fill(seed + round, off, d);
        st[q] = blk.Write(off / 512, d, q);
        if (!st[q].ok()) return;
        std::vector<uint8_t> back(kRegion);
        st[q] = blk.Read(off / 512, back, q);
        if (st[q].ok() && pattern::FirstMismatch(seed + round, off, back) != -1)
          st[q] = absl::DataLossError(absl::StrCat("queue ", q, " round ", round, ": read back differs"));
      }
    });
  }
  for (auto& x : th) x.join();
  ASSERT_OK(st[0]);
  ASSERT_OK(st[1]);
  ExpectFileHolds(102, 1 << 20, kRegion);
  ExpectFileHolds(103, (1 << 20) + kRegion + (1 << 20), kRegion);
  blk.driver().Reset();
  // Both rings were consumed by QSD.
  EXPECT_GT(t->last_stopped_base(0), 0);
  EXPECT_GT(t->last_stopped_base(1), 0);
  std::printf("GET_VRING_BASE after the run: queue 0 %" PRId64 ", queue 1 %" PRId64 "\n", t->last_stopped_base(0),
              t->last_stopped_base(1));
  StopQsd();
}

// ---- (c) a read-only export ----------------------------------------------------------

TEST_F(QsdTest, ReadOnlyExportFailsWritesWithIoErr) {
  StartQsd({.writable = false});
  const uint64_t before = FileChecksum();
  VhostUserDriverTransport* t = Connect();
  ASSERT_NE(t, nullptr);
  BlkDriver blk(*t);
  ASSERT_OK(blk.Init({}));
  EXPECT_TRUE(blk.info().read_only);  // VIRTIO_BLK_F_RO offered
  std::vector<uint8_t> d(64 << 10);
  pattern::Fill(5, 1 << 20, d);
  // The driver does not refuse on its own: QSD answers VIRTIO_BLK_S_IOERR.
  const absl::Status w = blk.Write((1 << 20) / 512, d);
  EXPECT_TRUE(absl::IsDataLoss(w)) << w;
  auto buf = blk.AllocBuffer(4096);
  ASSERT_TRUE(buf.ok());
  ASSERT_OK(blk.Submit(0, BlkOp::kWrite, 16, &*buf, 4096, 7));
  blk.Kick(0);
  BlkCompletion c;
  auto n = blk.Reap(0, {&c, 1}, true);
  ASSERT_TRUE(n.ok()) << n.status();
  ASSERT_EQ(*n, 1u);
  EXPECT_EQ(c.token, 7u);
  EXPECT_EQ(c.status, blk::status::kIoErr);
  blk.FreeBuffer(*buf);
  // Reads work and show the unchanged background; the file is unchanged.
  std::vector<uint8_t> back(2 << 20);
  ASSERT_OK(blk.Read(0, back));
  EXPECT_EQ(pattern::FirstMismatch(kBackgroundSeed, 0, back), -1);
  EXPECT_EQ(FileChecksum(), before);
  EXPECT_TRUE(t->connected());
  StopQsd();
}

// ---- (d) packed rings ------------------------------------------------------------------

TEST_F(QsdTest, PackedRingIfOfferedElseSplit) {
  StartQsd();
  VhostUserDriverTransport* t = Connect();
  ASSERT_NE(t, nullptr);
  const bool offered = feature::Has(t->GetDeviceFeatures(), feature::kRingPacked);
  std::printf("qemu-storage-daemon %s VIRTIO_F_RING_PACKED: %s\n", offered ? "offers" : "does not offer",
              offered ? "packed rings tested" : "split rings only (the driver falls back)");
  RecordProperty("ring", offered ? "packed" : "split");
  BlkDriver blk(*t);
  BlkDriverOptions bo;
  bo.ring_features = feature::Bit(feature::kRingPacked) | feature::Bit(feature::kIndirectDesc) |
                     feature::Bit(feature::kEventIdx);
  ASSERT_OK(blk.Init(bo));
  EXPECT_EQ(feature::Has(blk.info().features, feature::kRingPacked), offered);
  const uint64_t seed = 77, off = 8 << 20, len = 3 << 20;
  std::vector<uint8_t> d(len);
  pattern::Fill(seed, off, d);
  ASSERT_OK(blk.Write(off / 512, d));
  std::vector<uint8_t> back(len);
  ASSERT_OK(blk.Read(off / 512, back));
  EXPECT_EQ(pattern::FirstMismatch(seed, off, back), -1);
  ExpectFileHolds(seed, off, len);
  StopQsd();
}

// ---- (e) QSD dies while the driver waits --------------------------------------------------

TEST_F(QsdTest, SigkillWhileWaitingGivesNeedsResetNotAHang) {
  // A throttle node holds requests inside QSD: the driver is really waiting.
  StartQsd({.throttle_iops = 2});
  VhostUserDriverTransport* t = Connect();
  ASSERT_NE(t, nullptr);
  BlkDriver blk(*t);
  BlkDriverOptions bo;
  bo.wait.timeout = absl::Seconds(8);  // a hang shows as DeadlineExceeded, never forever
  ASSERT_OK(blk.Init(bo));
  std::vector<DmaBuffer> bufs;
  for (int i = 0; i < 16; ++i) {
    auto b = blk.AllocBuffer(4096);
    ASSERT_TRUE(b.ok());
    bufs.push_back(*b);
    ASSERT_OK(blk.Submit(0, BlkOp::kRead, uint64_t(i) * 8, &bufs.back(), 4096, i));
  }
  blk.Kick(0);
  std::atomic<int64_t> completed{0};
  auto waiter = std::async(std::launch::async, [&]() -> std::pair<absl::Status, absl::Time> {
    for (;;) {
      BlkCompletion c[16];
      auto n = blk.Reap(0, c, true);
      if (!n.ok()) return {n.status(), absl::Now()};
      completed += static_cast<int64_t>(*n);
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  const absl::Time killed = absl::Now();
  qsd_.Signal(SIGKILL);
  ASSERT_EQ(waiter.wait_for(std::chrono::seconds(10)), std::future_status::ready) << "the driver hangs";
  const auto [status, when] = waiter.get();
  const absl::Duration took = when - killed;
  std::printf("driver saw '%s' %.1f ms after SIGKILL (%" PRId64 " of 16 requests had completed)\n",
              std::string(status.message()).c_str(), absl::ToDoubleMilliseconds(took), completed.load());
  EXPECT_TRUE(absl::IsUnavailable(status)) << status;  // NEEDS_RESET, not a timeout
  EXPECT_LT(took, absl::Seconds(1));
  EXPECT_LT(completed.load(), 16);
  EXPECT_TRUE(t->GetStatus() & status::kDeviceNeedsReset);
  EXPECT_FALSE(t->connected());
  EXPECT_FALSE(t->disconnect_reason().empty());
  EXPECT_EQ(qsd_.Wait(10), 128 + SIGKILL);
  // Everything afterwards fails fast.
  const absl::Time t0 = absl::Now();
  std::vector<uint8_t> b(4096);
  EXPECT_FALSE(blk.Read(0, b).ok());
  const absl::Status again = blk.Init(bo);
  EXPECT_TRUE(absl::IsUnavailable(again)) << again;
  EXPECT_LT(absl::Now() - t0, absl::Seconds(1));
}

// An ERR eventfd signal (what a back-end sends on a broken ring) shows
// NEEDS_RESET; the driver recovers: reset (GET_VRING_BASE) and a new start
// against the same QSD, with the data intact.
TEST_F(QsdTest, RingErrorSignalThenRecoveryAndRestarts) {
  StartQsd();
  VhostUserDriverTransport* t = Connect();
  ASSERT_NE(t, nullptr);
  BlkDriver blk(*t);
  BlkDriverOptions bo;
  bo.ring_features = feature::Bit(feature::kIndirectDesc) | feature::Bit(feature::kEventIdx);
  ASSERT_OK(blk.Init(bo));
  const uint64_t off = 2 << 20, len = 1 << 20;
  std::vector<uint8_t> d(len);
  pattern::Fill(1, off, d);
  ASSERT_OK(blk.Write(off / 512, d));
  // The back-end's side of the ERR eventfd is a dup of ours: signal it.
  const uint64_t one = 1;
  ASSERT_EQ(::write(t->frontend().err_fd(0), &one, sizeof one), 8);
  const absl::Time deadline = absl::Now() + absl::Seconds(2);
  while (!(t->GetStatus() & status::kDeviceNeedsReset) && absl::Now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(t->GetStatus() & status::kDeviceNeedsReset);
  EXPECT_TRUE(t->connected());
  // Recovery, then several more restarts, each with I/O.
  for (uint64_t round = 0; round < 4; ++round) {
    ASSERT_OK(blk.Init(bo));
    EXPECT_FALSE(t->GetStatus() & status::kDeviceNeedsReset);
    std::vector<uint8_t> back(len);
    ASSERT_OK(blk.Read(off / 512, back));
    EXPECT_EQ(pattern::FirstMismatch(round == 0 ? 1 : 10 + round - 1, off, back), -1) << "round " << round;
    pattern::Fill(10 + round, off, d);
    ASSERT_OK(blk.Write(off / 512, d));
  }
  ExpectFileHolds(13, off, len);
  StopQsd();
}

// ---- (f) the vioguest tool in its own process -------------------------------------------

using testproc::Field;

TEST_F(QsdTest, VioguestProcessWritesAndVerifies) {
  StartQsd();
  const std::string tr = "vhost-user:" + sock_;
  const uint64_t seed = 2024, off = 1 << 20, len = 8 << 20;
  Proc w = testproc::Spawn({VIOGUEST_BIN, "--quiet", "--transport", tr, "blk", "write", "--seed", std::to_string(seed),
                            "--offset", std::to_string(off), "--length", std::to_string(len)},
                           dir_, "write");
  ASSERT_EQ(w.Wait(60), 0) << w.err();
  Proc v = testproc::Spawn({VIOGUEST_BIN, "--quiet", "--transport", tr, "blk", "verify", "--seed", std::to_string(seed),
                            "--offset", std::to_string(off), "--length", std::to_string(len)},
                           dir_, "verify");
  ASSERT_EQ(v.Wait(60), 0) << v.err();
  const std::string wsum = Field(w.out(), "checksum"), vsum = Field(v.out(), "checksum");
  std::printf("vioguest write checksum=%s verify checksum=%s\n", wsum.c_str(), vsum.c_str());
  ASSERT_FALSE(wsum.empty()) << w.out();
  EXPECT_EQ(wsum, vsum);
  EXPECT_EQ(Field(v.out(), "verified"), "yes");
  EXPECT_EQ(wsum, absl::StrFormat("%016x", PatternChecksum(seed, off, len)));
  ExpectFileHolds(seed, off, len);
  // A wrong seed is a mismatch (exit 1), not a pass.
  Proc bad = testproc::Spawn({VIOGUEST_BIN, "--quiet", "--transport", tr, "blk", "verify", "--seed", "1", "--offset",
                              std::to_string(off), "--length", "4096"},
                             dir_, "bad");
  EXPECT_EQ(bad.Wait(60), 1) << bad.err();
  Proc info = testproc::Spawn({VIOGUEST_BIN, "--transport", tr, "blk", "info"}, dir_, "info");
  ASSERT_EQ(info.Wait(60), 0) << info.err();
  EXPECT_NE(info.out().find(absl::StrCat("capacity   ", kDiskBytes / 512, " sectors")), std::string::npos) << info.out();
  StopQsd();
}

}  // namespace
}  // namespace vioport
