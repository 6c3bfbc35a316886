// SPDX-License-Identifier: Apache-2.0
// The transport conformance cases. Each runs against a rig (one transport):
// vios serving devices (a process, but for loopback), guests in this process
// through the registry or vioguest processes. Assertions are on data (the
// guest's checksums, the backing file's bytes, bytes through a console
// socket), on counts at both ends, and on vios's log.
#include "conformance.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstring>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "vioport/core/blk_spec.h"
#include "vioport/guest/blk_driver.h"
#include "vioport/guest/console_driver.h"
#include "vioport/guest/pattern.h"
#include "vioport/guest/rng_driver.h"
#include "vioport/testing/raw_ring.h"
#include "vioport/testing/tool_output.h"

namespace vioport::conformance {

using testing::QueueSizeRefusal;
using testing::RawDriverRing;
using testproc::CheckFile;
using testproc::Field;
using testproc::Proc;
using testproc::WaitFor;

namespace {

constexpr uint64_t kMiB = 1 << 20;

uint64_t RingFeatures(bool packed) {
  return feature::Bit(feature::kVersion1) | feature::Bit(feature::kEventIdx) | feature::Bit(feature::kIndirectDesc) |
         (packed ? feature::Bit(feature::kRingPacked) : 0);
}

WaitPolicy Wait() {
  WaitPolicy w;
  w.timeout = absl::Seconds(10);
  return w;
}

BlkDriverOptions BlkOptions(bool packed = false, uint32_t queue_size = 0) {
  BlkDriverOptions o;
  o.ring_features = RingFeatures(packed);
  o.queue_size = queue_size;
  o.wait = Wait();
  return o;
}

std::string Hex(uint64_t v) { return absl::StrFormat("%016x", v); }

// Writes the seeded pattern over [offset, offset+length) in 1 MiB requests
// of the synchronous API; the checksum as the tools print it.
absl::StatusOr<std::string> WriteSeeded(BlkDriver& blk, uint64_t seed, uint64_t offset, uint64_t length) {
  std::vector<uint8_t> buf(kMiB);
  pattern::Checksum64 sum;
  for (uint64_t done = 0; done < length;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), length - done));
    std::span<uint8_t> b(buf.data(), n);
    pattern::Fill(seed, offset + done, b);
    if (absl::Status s = blk.Write((offset + done) / 512, b); !s.ok()) return s;
    sum.Add(b);
    done += n;
  }
  return Hex(sum.Value());
}

// Reads [offset, offset+length) back and compares it with the pattern.
absl::StatusOr<std::string> VerifySeeded(BlkDriver& blk, uint64_t seed, uint64_t offset, uint64_t length) {
  std::vector<uint8_t> buf(kMiB);
  pattern::Checksum64 sum;
  for (uint64_t done = 0; done < length;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), length - done));
    std::span<uint8_t> b(buf.data(), n);
    std::fill(b.begin(), b.end(), 0xEE);
    if (absl::Status s = blk.Read((offset + done) / 512, b); !s.ok()) return s;
    if (const int64_t bad = pattern::FirstMismatch(seed, offset + done, b); bad >= 0)
      return absl::DataLossError(absl::StrCat("read back differs from seed ", seed, " at byte ", bad));
    sum.Add(b);
    done += n;
  }
  return Hex(sum.Value());
}

// The first nonzero byte of `path` outside [offset, offset+length), or -1.
int64_t FirstNonZeroOutside(const std::string& path, uint64_t offset, uint64_t length) {
  const std::vector<uint8_t> all = testproc::ReadAll(path);
  for (size_t i = 0; i < all.size(); ++i) {
    if (i >= offset && i < offset + length) continue;
    if (all[i] != 0) return static_cast<int64_t>(i);
  }
  return -1;
}

std::vector<uint8_t> Pattern(uint64_t seed, size_t n) {
  std::vector<uint8_t> v(n);
  pattern::Fill(seed, 0, {v.data(), v.size()});
  return v;
}

// `blk write|verify` of a vioguest that ended and printed its result line.
uint64_t Reconnects(const Proc& p) {
  uint64_t n = ~0ull;
  if (!absl::SimpleAtoi(Field(p.out(), "reconnects"), &n)) return ~0ull;
  return n;
}

// The device's line of `viosctl list`.
std::string ListLine(const std::string& list, const std::string& id) {
  for (absl::string_view line : absl::StrSplit(list, '\n'))
    if (absl::StartsWith(line, id + " ")) return std::string(line);
  return "";
}

}  // namespace

// ---- The fixture -------------------------------------------------------------------------

void Conformance::SetUp() {
  ProcessTest::SetUp();
  rig_ = GetParam().make(dir_);
  const absl::Status s = rig_->StartChannel();
  ASSERT_TRUE(s.ok()) << s;
}

void Conformance::TearDown() {
  if (HasFailure() && rig_) {
    const std::string log = rig_->DeviceLog();
    std::fprintf(stderr, "---- device side log (last 6000 bytes) ----\n%s\n----\n",
                 log.substr(log.size() > 6000 ? log.size() - 6000 : 0).c_str());
  }
  rig_.reset();
  ProcessTest::TearDown();
}

void Conformance::Start(const std::vector<std::string>& device_specs) {
  const absl::Status s = rig_->StartDevices(device_specs);
  ASSERT_TRUE(s.ok()) << s;
}

#define SKIP_WITHOUT_DEVICE_PROCESS()                                                                       \
  do {                                                                                                     \
    if (traits().device_side_in_process) {                                                                 \
      GTEST_SKIP() << traits().transport << ": the device side runs in this process; there is no vios to kill"; \
    }                                                                                                      \
  } while (0)
#define SKIP_WITHOUT_GUEST_PROCESSES()                                                       \
  do {                                                                                     \
    if (!traits().guest_processes) {                                                       \
      GTEST_SKIP() << traits().transport << ": vioguest cannot reach it (in-process only)"; \
    }                                                                                      \
  } while (0)

// ---- blk ------------------------------------------------------------------------------------

// Seeded data written and flushed by one guest, read back by a second guest
// connection (packed rings where the transport has them): the writer's and
// reader's checksums and the backing file's agree, the file holds the
// pattern byte for byte in the range and zeros elsewhere, the device counted
// exactly what was written, and vios and the channel stop cleanly.
TEST_P(BlkConformance, WriteFlushThenReadBackOnANewConnection) {
  const std::string disk = Path("d0.img");
  const uint64_t disk_bytes = 32 * kMiB, offset = 3 * kMiB + 4096, length = 16 * kMiB;
  MakeDisk(disk, disk_bytes);
  Start({"blk,id=d0,path=" + disk});
  std::string written, read;
  {
    auto link = rig().ConnectGuest("d0", DeviceId::kBlock);
    ASSERT_TRUE(link.ok()) << link.status();
    BlkDriver blk(*link->transport);
    ASSERT_TRUE(blk.Init(BlkOptions()).ok());
    EXPECT_EQ(blk.info().capacity_sectors, disk_bytes / 512);
    EXPECT_TRUE(blk.info().flush);
    auto w = WriteSeeded(blk, 7, offset, length);
    ASSERT_TRUE(w.ok()) << w.status();
    written = *w;
    const absl::Status f = blk.Flush();
    ASSERT_TRUE(f.ok()) << f;
  }
  int64_t bad = 0;
  EXPECT_EQ(CheckFile(disk, 7, offset, length, &bad), written);
  EXPECT_EQ(bad, -1) << "the backing file differs from the seeded data at byte " << bad;
  {
    auto link = rig().ConnectGuest("d0", DeviceId::kBlock);
    ASSERT_TRUE(link.ok()) << link.status();
    BlkDriver blk(*link->transport);
    ASSERT_TRUE(blk.Init(BlkOptions(/*packed=*/true)).ok());
    auto r = VerifySeeded(blk, 7, offset, length);
    ASSERT_TRUE(r.ok()) << r.status();
    read = *r;
  }
  EXPECT_EQ(read, written);
  EXPECT_EQ(FirstNonZeroOutside(disk, offset, length), -1) << "bytes outside the written range changed";
  EXPECT_EQ(rig().Stat("d0", "bytes_written"), length);
  EXPECT_GE(rig().Stat("d0", "bytes_read"), length);
  EXPECT_GE(rig().Stat("d0", "flushes"), 1u);
  EXPECT_EQ(rig().Stat("d0", "errors"), 0u);
  EXPECT_EQ(rig().StopDevices(), 0) << rig().DeviceLog();
  EXPECT_EQ(rig().StopChannel(), 0);
  EXPECT_EQ(CheckFile(disk, 7, offset, length, &bad), written);
}

// A read-only device answers writes with an I/O error and never changes the
// file; reads still work; vioguest reports it.
// Hot-plug: a device removed at run time (vios's device_remove) while its
// guest drives it tells the guest as the transport allows (vhost-user: the
// socket goes; crq: the partner sees FF 02; Xen: the backend goes Closing;
// shm: the connection closes): the guest's next request fails promptly as
// the device needing a reset. Added again in the same place at run time, it
// serves a new guest, data verified.
TEST_P(BlkConformance, HotRemoveTellsTheGuestAndAReAddIsServed) {
  if (traits().device_side_in_process)
    GTEST_SKIP() << traits().transport << ": the guest holds the device in this process; no channel to close";
  const std::string disk = Path("d0.img");
  MakeDisk(disk, 16 * kMiB);
  Start({"blk,id=d0,path=" + disk});
  auto link = rig().ConnectGuest("d0", DeviceId::kBlock);
  ASSERT_TRUE(link.ok()) << link.status();
  auto blk = std::make_unique<BlkDriver>(*link->transport);
  ASSERT_TRUE(blk->Init(BlkOptions()).ok());
  auto w1 = WriteSeeded(*blk, 5, 0, kMiB);
  ASSERT_TRUE(w1.ok()) << w1.status();
  ASSERT_TRUE(rig().RemoveDevice("d0").ok());
  const auto t0 = std::chrono::steady_clock::now();
  const absl::StatusOr<std::string> w = WriteSeeded(*blk, 6, kMiB, kMiB);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_FALSE(w.ok()) << "a write to a removed device succeeded";
  EXPECT_TRUE(blk->driver().NeedsReset()) << w.status();
  EXPECT_LT(seconds, 5.0) << "the guest noticed the removal only after " << seconds << " s";
  blk.reset();
  link = absl::UnavailableError("replaced");
  // The same device again, in the same place.
  const absl::Status add = rig().AddDevice("blk,id=d0,path=" + disk);
  ASSERT_TRUE(add.ok()) << add;
  absl::StatusOr<GuestLink> link2 = absl::UnavailableError("not tried");
  ASSERT_TRUE(WaitFor([&] { return (link2 = rig().ConnectGuest("d0", DeviceId::kBlock)).ok(); }, 30))
      << link2.status();
  auto blk2 = std::make_unique<BlkDriver>(*link2->transport);
  ASSERT_TRUE(blk2->Init(BlkOptions()).ok());
  auto w2 = WriteSeeded(*blk2, 7, kMiB, 4 * kMiB);
  ASSERT_TRUE(w2.ok()) << w2.status();
  auto v = VerifySeeded(*blk2, 7, kMiB, 4 * kMiB);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, *w2);
  int64_t bad = 0;
  EXPECT_EQ(CheckFile(disk, 7, kMiB, 4 * kMiB, &bad), *w2);
  EXPECT_EQ(bad, -1);
  EXPECT_EQ(CheckFile(disk, 5, 0, kMiB, &bad), *w1) << "what the first guest wrote stays";
  EXPECT_EQ(bad, -1);
  EXPECT_EQ(rig().Stat("d0", "bytes_written"), 4 * kMiB) << "the new device counts from zero";
}

TEST_P(BlkConformance, ReadOnlyDeviceRefusesWrites) {
  const std::string disk = Path("ro.img");
  {
    const std::vector<uint8_t> data = Pattern(5, 4 * kMiB);
    const int fd = ::open(disk.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    ::close(fd);
  }
  Start({"blk,id=d0,path=" + disk + ",readonly=on"});
  int64_t bad = 0;
  {
    auto link = rig().ConnectGuest("d0", DeviceId::kBlock);
    ASSERT_TRUE(link.ok()) << link.status();
    BlkDriver blk(*link->transport);
    ASSERT_TRUE(blk.Init(BlkOptions()).ok());
    EXPECT_TRUE(blk.info().read_only);
    std::vector<uint8_t> junk(64 * 1024, 0x5A);
    const absl::Status w = blk.Write(8, junk);
    EXPECT_TRUE(absl::IsDataLoss(w)) << w;
    auto v = VerifySeeded(blk, 5, 0, 4 * kMiB);
    EXPECT_TRUE(v.ok()) << v.status();
    CheckFile(disk, 5, 0, 4 * kMiB, &bad);
    EXPECT_EQ(bad, -1) << "a read-only device changed byte " << bad;
    EXPECT_EQ(rig().Stat("d0", "bytes_written"), 0u);
    EXPECT_GE(rig().Stat("d0", "errors"), 1u);
  }
  if (!traits().guest_processes) return;
  // vioguest says so too: `blk info` shows it, `blk write` fails naming the offset.
  ASSERT_TRUE(rig().WaitGuestGone("d0", testing::GuestExit::kClosed).ok());
  Proc& info = rig().RunGuestProcess("d0", {"blk", "info"});
  EXPECT_EQ(info.status, 0) << info.err();
  EXPECT_TRUE(absl::StrContains(info.out(), "read-only  yes")) << info.out();
  Proc& write = rig().RunGuestProcess("d0", BlkCmd("write", 1, 0, kMiB));
  EXPECT_EQ(write.status, 1) << write.out() << write.err();
  EXPECT_TRUE(absl::StrContains(write.err(), "write at 0")) << write.err();
  CheckFile(disk, 5, 0, 4 * kMiB, &bad);
  EXPECT_EQ(bad, -1) << "a read-only device changed byte " << bad;
}

// ---- rng ------------------------------------------------------------------------------------

TEST_P(RngConformance, TwoReadsOfAMiBAreFullRangeAndDiffer) {
  Start({"rng,id=r0"});
  auto link = rig().ConnectGuest("r0", DeviceId::kEntropy);
  ASSERT_TRUE(link.ok()) << link.status();
  RngDriver rng(*link->transport);
  ASSERT_TRUE(rng.Init(RingFeatures(false), Wait()).ok());
  std::vector<uint8_t> reads[2] = {std::vector<uint8_t>(kMiB), std::vector<uint8_t>(kMiB)};
  for (auto& r : reads) {
    const absl::Status s = rng.Read(r);
    ASSERT_TRUE(s.ok()) << s;
    // Uniform bytes: a value missing from a MiB has probability ~256 e^-4096.
    EXPECT_EQ(std::set<uint8_t>(r.begin(), r.end()).size(), 256u);
  }
  EXPECT_TRUE(reads[0] != reads[1]) << "two reads returned the same MiB";
  EXPECT_GE(rig().Stat("r0", "bytes"), 2 * kMiB);
  EXPECT_GE(rig().TransportStat("r0", "bytes_out"), 2 * kMiB);
}

// ---- console ------------------------------------------------------------------------------------

// Bytes both ways through vios's console socket, exactly: the host end (this
// test) sends first, so the device has accepted it before the guest writes
// (guest output with no host attached is dropped, by design).
TEST_P(ConsoleConformance, BytesBothWaysExactly) {
  const std::string socket = Path("c0.console");
  Start({"console,id=c0,socket=" + socket});
  const std::vector<uint8_t> to_guest = Pattern(21, 40 * 1024 + 17), to_host = Pattern(22, 48 * 1024 + 5);
  const int fd = testproc::ConnectUnixStream(socket, 10);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  ASSERT_EQ(::write(fd, to_guest.data(), to_guest.size()), static_cast<ssize_t>(to_guest.size()));

  std::vector<uint8_t> guest_got;
  std::string guest_error;
  std::thread guest([&] {
    auto link = rig().ConnectGuest("c0", DeviceId::kConsole);
    if (!link.ok()) {
      guest_error = link.status().ToString();
      return;
    }
    ConsoleDriver con(*link->transport);
    if (absl::Status s = con.Init(RingFeatures(false), Wait()); !s.ok()) {
      guest_error = s.ToString();
      return;
    }
    std::vector<uint8_t> buf(8192);
    while (guest_got.size() < to_guest.size()) {
      auto n = con.Read(buf, absl::Seconds(20));
      if (!n.ok()) {
        guest_error = absl::StrCat("after ", guest_got.size(), " bytes: ", n.status().ToString());
        return;
      }
      guest_got.insert(guest_got.end(), buf.begin(), buf.begin() + static_cast<ptrdiff_t>(*n));
    }
    if (absl::Status s = con.Write(to_host); !s.ok()) {
      guest_error = s.ToString();
      return;
    }
    // Nothing more arrives.
    auto extra = con.Read(buf, absl::Milliseconds(300));
    if (extra.ok()) guest_got.insert(guest_got.end(), buf.begin(), buf.begin() + static_cast<ptrdiff_t>(*extra));
  });
  std::vector<uint8_t> host_got;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (host_got.size() <= to_host.size() && std::chrono::steady_clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) {
      if (host_got.size() == to_host.size()) break;  // all arrived, and nothing after it
      continue;
    }
    uint8_t buf[8192];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    host_got.insert(host_got.end(), buf, buf + n);
  }
  guest.join();
  EXPECT_EQ(guest_error, "");
  EXPECT_EQ(guest_got.size(), to_guest.size());
  EXPECT_TRUE(guest_got == to_guest) << "the guest received other bytes than the host sent";
  EXPECT_EQ(host_got.size(), to_host.size());
  EXPECT_TRUE(host_got == to_host) << "the host received other bytes than the guest sent";
  EXPECT_EQ(rig().Stat("c0", "rx_bytes"), to_guest.size());
  EXPECT_EQ(rig().Stat("c0", "tx_bytes"), to_host.size());
  EXPECT_EQ(rig().Stat("c0", "tx_dropped"), 0u);
  EXPECT_EQ(rig().Stat("c0", "clients"), 1u);
}

// ---- A hostile ring --------------------------------------------------------------------------------

namespace {

// A blk request on a hand-written ring: header, one data descriptor at
// `data_addr` (4 KiB, device-readable: a write), status.
struct RawBlk {
  RawDriverRing& ring;
  DmaBuffer header, data, status;

  void Write(uint64_t sector, uint64_t data_addr, bool loop = false) {
    blk::ReqHeader h{};
    h.type = blk::req::kOut;
    h.sector = sector;
    std::memcpy(header.host, &h, sizeof h);
    status.host[0] = 0xff;
    ring.SetDesc(0, header.device_addr, sizeof h, desc_flag::kNext, 1);
    // A loop: the data descriptor's next is the header again.
    ring.SetDesc(1, data_addr, 4096, desc_flag::kNext, loop ? 0 : 2);
    ring.SetDesc(2, status.device_addr, 1, desc_flag::kWrite, 0);
    ring.Publish(0);
  }
};

}  // namespace

// One device is handed descriptors that break the ring while a guest of
// another device on the same vios writes and verifies throughout: a data
// buffer outside guest memory, then a descriptor chain that loops. Each time
// the device needs a reset, completes nothing, counts one ring error and
// vios logs it; after the guest resets, requests are served again; nothing
// reached the victim's disk but the correct writes; the other device saw no
// error and its data verifies.
TEST_P(HostileConformance, BadDescriptorsNeedAResetOthersKeepWorking) {
  MakeDisk(Path("good.img"), 16 * kMiB);
  MakeDisk(Path("victim.img"), 1 * kMiB);
  Start({"blk,id=good,path=" + Path("good.img"), "blk,id=victim,path=" + Path("victim.img")});

  std::atomic<bool> stop{false};
  std::atomic<int> rounds{0};
  std::string good_error;
  std::thread good([&] {
    auto link = rig().ConnectGuest("good", DeviceId::kBlock);
    if (!link.ok()) {
      good_error = link.status().ToString();
      return;
    }
    BlkDriver blk(*link->transport);
    if (absl::Status s = blk.Init(BlkOptions()); !s.ok()) {
      good_error = s.ToString();
      return;
    }
    for (uint64_t seed = 1; (!stop.load() || rounds.load() < 2) && rounds.load() < 500; ++seed) {
      const uint64_t offset = (seed % 4) * 4 * kMiB;
      auto w = WriteSeeded(blk, seed, offset, 2 * kMiB);
      auto v = w.ok() ? VerifySeeded(blk, seed, offset, 2 * kMiB) : w;
      if (!v.ok() || *v != *w) {
        good_error = absl::StrCat("round ", rounds.load(), ": ", v.ok() ? "checksums differ" : v.status().ToString());
        return;
      }
      rounds++;
    }
  });

  auto link = rig().ConnectGuest("victim", DeviceId::kBlock);
  ASSERT_TRUE(link.ok()) << link.status();
  DriverTransport& t = *link->transport;
  auto needs_reset = [&] { return WaitFor([&] { return (t.GetStatus() & status::kDeviceNeedsReset) != 0; }, 10); };
  const std::vector<uint8_t> data = Pattern(11, 4096);
  std::vector<uint8_t> expect_disk(kMiB);  // what the victim's file must hold
  {
    RawDriverRing ring(t);
    auto header = ring.Alloc(4096, Access::kRead), payload = ring.Alloc(4096, Access::kRead),
         st = ring.Alloc(4096, Access::kWrite);
    ASSERT_TRUE(header.ok() && payload.ok() && st.ok());
    std::memcpy(payload->host, data.data(), data.size());
    RawBlk req{ring, *header, *payload, *st};
    auto served = [&] { return WaitFor([&] { return ring.used_idx() == 1; }, 10) && st->host[0] == blk::status::kOk; };
    auto ring_errors = [&](uint64_t n) {
      return rig().WaitForStat("victim", traits().transport + ".ring_errors", [n](uint64_t v) { return v == n; }, 10);
    };

    // Control: a correct request is served, so the refusals below are not vacuous.
    absl::Status s = ring.Start();
    ASSERT_TRUE(s.ok()) << s;
    req.Write(8, payload->device_addr);
    ASSERT_TRUE(served()) << "used " << ring.used_idx() << ", status " << int{st->host[0]};
    std::copy(data.begin(), data.end(), expect_disk.begin() + 8 * 512);

    // 1. The data descriptor names an address outside guest memory.
    s = ring.Start();
    ASSERT_TRUE(s.ok()) << s;
    req.Write(16, rig().AddressOutsideGuestMemory());
    EXPECT_TRUE(needs_reset()) << "status " << int{t.GetStatus()};
    EXPECT_EQ(ring.used_idx(), 0) << "the bad request was completed";
    EXPECT_TRUE(ring_errors(1)) << rig().Stats("victim");
    // (Controller-based transports log "device 2: queue 0: ...; DEVICE_NEEDS_RESET",
    // vhost-user "victim@vhost-user: queue 0: ... - device stopped ...".)
    EXPECT_TRUE(rig().WaitForLog("queue 0: address outside guest memory")) << "the log does not name the fault";
    EXPECT_TRUE(absl::StrContains(ListLine(rig().List(), "victim"), "NEEDS_RESET")) << rig().List();

    // 2. After the reset, a correct request is served again.
    s = ring.Start();
    ASSERT_TRUE(s.ok()) << s;
    req.Write(24, payload->device_addr);
    EXPECT_TRUE(served()) << "used " << ring.used_idx() << ", status " << int{st->host[0]};
    std::copy(data.begin(), data.end(), expect_disk.begin() + 24 * 512);

    // 3. A descriptor chain that loops.
    s = ring.Start();
    ASSERT_TRUE(s.ok()) << s;
    req.Write(32, payload->device_addr, /*loop=*/true);
    EXPECT_TRUE(needs_reset()) << "status " << int{t.GetStatus()};
    EXPECT_EQ(ring.used_idx(), 0) << "the looping request was completed";
    EXPECT_TRUE(ring_errors(2)) << rig().Stats("victim");
    EXPECT_TRUE(rig().WaitForLog("queue 0: descriptor chain loops")) << "the log does not name the fault";
  }
  // 4. The guest resets the device: its driver works again on this connection.
  {
    BlkDriver blk(t);
    const absl::Status s = blk.Init(BlkOptions());
    ASSERT_TRUE(s.ok()) << s;
    auto w = WriteSeeded(blk, 12, 512 * 1024, 256 * 1024);
    ASSERT_TRUE(w.ok()) << w.status();
    auto v = VerifySeeded(blk, 12, 512 * 1024, 256 * 1024);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(*v, *w);
    pattern::Fill(12, 512 * 1024, {expect_disk.data() + 512 * 1024, 256 * 1024});
  }
  stop = true;
  good.join();
  EXPECT_EQ(good_error, "");
  EXPECT_GE(rounds.load(), 2);
  EXPECT_TRUE(testproc::ReadAll(Path("victim.img")) == expect_disk)
      << "the victim's disk holds other bytes than the correct requests wrote";
  EXPECT_EQ(rig().TransportStat("victim", "ring_errors"), 2u);
  EXPECT_EQ(rig().TransportStat("good", "ring_errors"), 0u);
  EXPECT_TRUE(rig().DevicesRunning());
}

// With two blk devices on one vios, the ring error's log line says which
// device broke (DeviceController::set_name: "victim@TRANSPORT").
TEST_P(HostileConformance, RingErrorLogLineNamesTheDevice) {
  MakeDisk(Path("good.img"), kMiB);
  MakeDisk(Path("victim.img"), kMiB);
  Start({"blk,id=good,path=" + Path("good.img"), "blk,id=victim,path=" + Path("victim.img")});
  auto link = rig().ConnectGuest("victim", DeviceId::kBlock);
  ASSERT_TRUE(link.ok()) << link.status();
  RawDriverRing ring(*link->transport);
  auto header = ring.Alloc(4096, Access::kRead), st = ring.Alloc(4096, Access::kWrite);
  ASSERT_TRUE(header.ok() && st.ok());
  ASSERT_TRUE(ring.Start().ok());
  RawBlk{ring, *header, *header, *st}.Write(16, rig().AddressOutsideGuestMemory());
  ASSERT_TRUE(rig().WaitForLog("queue 0: address outside guest memory")) << rig().DeviceLog();
  bool named = false;
  for (absl::string_view line : absl::StrSplit(rig().DeviceLog(), '\n'))
    named |= absl::StrContains(line, "address outside guest memory") && absl::StrContains(line, "victim");
  EXPECT_TRUE(named) << "no log line names both the fault and the device 'victim':\n" << rig().DeviceLog();
}

// A driver asking for a queue larger than the device's maximum (blk: 1024)
// is refused, and vios's log names the size and the maximum; the maximum
// itself is taken, and a guest asking for it is served.
TEST_P(HostileConformance, QueueAboveTheDeviceMaximumIsRefused) {
  MakeDisk(Path("d0.img"), 4 * kMiB);
  Start({"blk,id=d0,path=" + Path("d0.img")});
  const std::string line = "queue 0 size 2048 is above the device's maximum 1024";
  const uint8_t features_ok = status::kAcknowledge | status::kDriver | status::kFeaturesOk;
  // Negotiates VERSION_1, then asks for queue 0 of `size` entries.
  auto setup = [&](DriverTransport& t, uint32_t size, std::vector<DmaBuffer>* areas) -> absl::Status {
    t.SetStatus(0);
    t.SetStatus(status::kAcknowledge | status::kDriver);
    t.SetDriverFeatures(feature::Bit(feature::kVersion1));
    t.SetStatus(features_ok);
    if (!(t.GetStatus() & status::kFeaturesOk)) return absl::FailedPreconditionError("FEATURES_OK refused");
    for (uint64_t bytes : {SplitLayout::DescBytes(size), SplitLayout::AvailBytes(size), SplitLayout::UsedBytes(size)}) {
      auto b = t.dma().Allocate(bytes, 4096, Access::kReadWrite);
      if (!b.ok()) return b.status();
      areas->push_back(*b);
    }
    return t.EnableQueue(0, size, (*areas)[0].device_addr, (*areas)[1].device_addr, (*areas)[2].device_addr);
  };
  {
    auto link = rig().ConnectUncheckedGuest("d0", DeviceId::kBlock);
    ASSERT_TRUE(link.ok()) << link.status();
    DriverTransport& t = *link->transport;
    if (traits().reports_device_queue_max) {
      EXPECT_EQ(t.GetQueueMaxSize(0), 1024u);
    }
    std::vector<DmaBuffer> areas;
    const absl::Status s = setup(t, 2048, &areas);
    switch (traits().queue_size_refusal) {
      case QueueSizeRefusal::kAtEnableQueue:
        EXPECT_FALSE(s.ok()) << "queue size 2048 accepted";
        break;
      case QueueSizeRefusal::kClosesConnectionAtDriverOk:
        ASSERT_TRUE(s.ok()) << s << " (the guest half keeps the size until DRIVER_OK)";
        t.SetStatus(features_ok | status::kDriverOk);
        EXPECT_TRUE(WaitFor([&] { return (t.GetStatus() & status::kDeviceNeedsReset) != 0; }, 10))
            << "the device did not refuse: status " << int{t.GetStatus()};
        break;
    }
    EXPECT_TRUE(rig().WaitForLog(line)) << "no log line '" << line << "'";
    EXPECT_EQ(rig().TransportStat("d0", "activations"), 0u) << "the device started with the refused size";
    for (const DmaBuffer& b : areas) t.dma().Free(b);
  }
  ASSERT_TRUE(rig().WaitGuestGone("d0", testing::GuestExit::kClosed).ok());
  // The device's maximum is taken, and a driver running on it is served.
  auto link = rig().ConnectUncheckedGuest("d0", DeviceId::kBlock);
  ASSERT_TRUE(link.ok()) << link.status();
  DriverTransport& t = *link->transport;
  {
    std::vector<DmaBuffer> areas;
    const absl::Status s = setup(t, 1024, &areas);
    EXPECT_TRUE(s.ok()) << s;
    t.SetStatus(features_ok | status::kDriverOk);
    EXPECT_EQ(t.GetStatus() & (status::kDriverOk | status::kDeviceNeedsReset), status::kDriverOk);
    t.SetStatus(0);
    for (const DmaBuffer& b : areas) t.dma().Free(b);
  }
  BlkDriver blk(t);
  ASSERT_TRUE(blk.Init(BlkOptions(false, 1024)).ok());
  EXPECT_EQ(blk.driver().queue(0).size(), 1024u);
  auto w = WriteSeeded(blk, 3, 0, kMiB);
  ASSERT_TRUE(w.ok()) << w.status();
  auto v = VerifySeeded(blk, 3, 0, kMiB);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, *w);
}

// ---- Partner death ---------------------------------------------------------------------------------------

// vios SIGKILLed in the middle of a write by a guest that reconnects
// (--reconnect-timeout): vios restarted, the write completes and verifies;
// what an earlier guest flushed before the kill is in the file. The kill
// comes as soon as the writer has moved its first MiB and 119 are left, so
// even the fastest transport (Xen maps: about 600 MB/s here) is mid-write.
TEST_P(PartnerDeathConformance, DeviceSideKilledMidWriteGuestReconnects) {
  SKIP_WITHOUT_DEVICE_PROCESS();
  if (!traits().guest_reconnects) {
    GTEST_SKIP() << traits().no_reconnect_reason;
  }
  const std::string disk = Path("d0.img");
  MakeDisk(disk, 128 * kMiB);
  Start({"blk,id=d0,path=" + disk});
  Proc& first = rig().RunGuestProcess("d0", BlkCmd("write", 3, 0, 8 * kMiB));  // ends with a FLUSH
  ASSERT_EQ(first.status, 0) << first.err() << first.out();
  Proc& w = rig().StartGuestProcess("d0", BlkCmd("write", 41, 8 * kMiB, 120 * kMiB, /*reconnect_timeout=*/30));
  ASSERT_TRUE(rig().WaitForStat("d0", "bytes_written", [](uint64_t v) { return v >= 9 * kMiB; }, 60) &&
              w.Running())
      << "the writer ended first: " << w.err() << w.out();
  EXPECT_EQ(rig().KillDevices(SIGKILL), 128 + SIGKILL);
  ASSERT_TRUE(w.Running()) << "the guest did not wait for vios: " << w.err() << w.out();
  int64_t bad = 0;
  CheckFile(disk, 3, 0, 8 * kMiB, &bad);
  EXPECT_EQ(bad, -1) << "flushed data missing from the file at byte " << bad;
  const absl::Status s = rig().RestartDevices();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(w.Wait(90), 0) << w.err() << w.out();
  EXPECT_GE(Reconnects(w), 1u) << w.out();
  EXPECT_NE(Reconnects(w), ~0ull) << w.out();
  Proc& v = rig().RunGuestProcess("d0", BlkCmd("verify", 41, 8 * kMiB, 120 * kMiB));
  ExpectWrittenAndVerified(w, v, disk, 41, 8 * kMiB, 120 * kMiB);
}

// vios SIGKILLed in the middle of a write by a guest that does not wait for
// it: the guest fails promptly (it does not hang, and does not claim
// success); flushed data survived; the restarted vios serves a new guest.
TEST_P(PartnerDeathConformance, DeviceSideKilledMidWriteThenANewGuestIsServed) {
  SKIP_WITHOUT_DEVICE_PROCESS();
  const std::string disk = Path("d0.img");
  // Big enough that the fastest transport is still writing when the kill
  // lands (Xen maps reach 830 MB/s here: 120 MiB were done in 0.15 s).
  MakeDisk(disk, 512 * kMiB);
  Start({"blk,id=d0,path=" + disk});
  Proc& first = rig().RunGuestProcess("d0", BlkCmd("write", 3, 0, 8 * kMiB));  // ends with a FLUSH
  ASSERT_EQ(first.status, 0) << first.err() << first.out();
  Proc& w = rig().StartGuestProcess("d0", BlkCmd("write", 5, 8 * kMiB, 504 * kMiB));
  ASSERT_TRUE(rig().WaitForStat("d0", "bytes_written", [](uint64_t v) { return v >= 9 * kMiB; }, 60) &&
              w.Running())
      << "the writer ended first: " << w.err() << w.out();
  EXPECT_EQ(rig().KillDevices(SIGKILL), 128 + SIGKILL);
  const int status = w.Wait(30);
  EXPECT_TRUE(status == 1 || status == 2) << "vioguest status " << status << ": " << w.err() << w.out();
  int64_t bad = 0;
  CheckFile(disk, 3, 0, 8 * kMiB, &bad);
  EXPECT_EQ(bad, -1) << "flushed data missing from the file at byte " << bad;
  const absl::Status s = rig().RestartDevices();
  ASSERT_TRUE(s.ok()) << s;
  Proc& w2 = rig().RunGuestProcess("d0", BlkCmd("write", 29, 8 * kMiB, 32 * kMiB));
  ASSERT_EQ(w2.status, 0) << w2.err() << w2.out();
  Proc& v = rig().RunGuestProcess("d0", BlkCmd("verify", 29, 8 * kMiB, 32 * kMiB));
  ExpectWrittenAndVerified(w2, v, disk, 29, 8 * kMiB, 32 * kMiB);
  CheckFile(disk, 3, 0, 8 * kMiB, &bad);
  EXPECT_EQ(bad, -1);
}

// A guest in this process whose vios dies: its next request fails as the
// device needing a reset, promptly (not a timeout). With vios back, a guest
// that reconnects re-initialises on the same connection object; otherwise a
// new connection is served.
TEST_P(PartnerDeathConformance, DeviceSideDeathShowsAsNeedsResetInTheGuest) {
  SKIP_WITHOUT_DEVICE_PROCESS();
  const std::string disk = Path("d0.img");
  MakeDisk(disk, 16 * kMiB);
  Start({"blk,id=d0,path=" + disk});
  auto link = rig().ConnectGuest("d0", DeviceId::kBlock);
  ASSERT_TRUE(link.ok()) << link.status();
  auto blk = std::make_unique<BlkDriver>(*link->transport);
  ASSERT_TRUE(blk->Init(BlkOptions()).ok());
  ASSERT_TRUE(WriteSeeded(*blk, 1, 0, kMiB).ok());
  EXPECT_EQ(rig().KillDevices(SIGKILL), 128 + SIGKILL);
  const auto t0 = std::chrono::steady_clock::now();
  const absl::StatusOr<std::string> w = WriteSeeded(*blk, 2, kMiB, kMiB);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(absl::IsUnavailable(w.status())) << w.status() << " (expected the device to need a reset)";
  EXPECT_LT(seconds, 5.0) << "the guest noticed vios's death only after " << seconds << " s";
  EXPECT_TRUE(blk->driver().NeedsReset());
  const absl::Status s = rig().RestartDevices();
  ASSERT_TRUE(s.ok()) << s;
  if (traits().guest_reconnects) {
    // Re-initialising reconnects (vios may take a moment to be reachable).
    absl::Status init;
    ASSERT_TRUE(WaitFor([&] { return (init = blk->Init(BlkOptions())).ok(); }, 30)) << init;
  } else {
    blk.reset();
    link = rig().ConnectGuest("d0", DeviceId::kBlock);
    ASSERT_TRUE(link.ok()) << link.status();
    blk = std::make_unique<BlkDriver>(*link->transport);
    ASSERT_TRUE(blk->Init(BlkOptions()).ok());
  }
  auto w2 = WriteSeeded(*blk, 2, kMiB, 4 * kMiB);
  ASSERT_TRUE(w2.ok()) << w2.status();
  auto v = VerifySeeded(*blk, 2, kMiB, 4 * kMiB);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, *w2);
  int64_t bad = 0;
  EXPECT_EQ(CheckFile(disk, 2, kMiB, 4 * kMiB, &bad), *w2);
  EXPECT_EQ(bad, -1);
}

// Starts a vioguest writing the whole 64 MiB disk of device d0 (seed 1) and
// SIGKILLs it once vios has written 8 MiB of it.
void Conformance::KillGuestMidWrite() {
  Proc& w = rig().StartGuestProcess("d0", BlkCmd("write", 1, 0, 64 * kMiB));
  ASSERT_TRUE(rig().WaitForStat("d0", "bytes_written", [](uint64_t v) { return v >= 8 * kMiB; }, 60) && w.Running())
      << "the writer ended first: " << w.err() << w.out();
  w.Signal(SIGKILL);
  EXPECT_EQ(w.Wait(10), 128 + SIGKILL);
}

// A guest process SIGKILLed in the middle of a write: the device side
// notices (each transport's evidence: the rig's WaitGuestGone), what it
// acknowledged is in the file, and a new guest writes and verifies; the
// counters count three guest connections.
TEST_P(PartnerDeathConformance, GuestKilledMidWriteThenANewGuestIsServed) {
  SKIP_WITHOUT_GUEST_PROCESSES();
  const std::string disk = Path("d0.img");
  MakeDisk(disk, 64 * kMiB);
  Start({"blk,id=d0,path=" + disk});
  KillGuestMidWrite();
  if (HasFatalFailure()) return;
  const absl::Status gone = rig().WaitGuestGone("d0", testing::GuestExit::kKilled);
  EXPECT_TRUE(gone.ok()) << gone;
  ASSERT_TRUE(rig().DevicesRunning()) << rig().DeviceLog();
  // The writer goes in order, 1 MiB at a time: the first half of what vios
  // had written is complete.
  int64_t bad = 0;
  CheckFile(disk, 1, 0, 4 * kMiB, &bad);
  EXPECT_EQ(bad, -1) << "acknowledged data of the killed guest differ at byte " << bad;
  Proc& w2 = rig().RunGuestProcess("d0", BlkCmd("write", 29, 16 * kMiB + 4096, 16 * kMiB));
  ASSERT_EQ(w2.status, 0) << w2.err() << w2.out();
  Proc& v = rig().RunGuestProcess("d0", BlkCmd("verify", 29, 16 * kMiB + 4096, 16 * kMiB));
  ExpectWrittenAndVerified(w2, v, disk, 29, 16 * kMiB + 4096, 16 * kMiB);
  EXPECT_TRUE(rig().WaitGuestGone("d0", testing::GuestExit::kClosed).ok());
  EXPECT_EQ(rig().TransportStat("d0", "connections"), 3u) << rig().Stats("d0");
  EXPECT_EQ(rig().TransportStat("d0", "reconnects"), 2u) << rig().Stats("d0");
}

// A guest killed mid-write broke no ring: over crq, where the hypervisor
// revokes the dead partition's window so vios's next H_COPY_RDMA answers
// H_PERMISSION before the partner-failed event is handled, vios PINGs the
// client as PowerVM's own servers do, learns from H_CLOSED that it is gone,
// and counts a memory fault, not a ring error.
TEST_P(PartnerDeathConformance, GuestKilledMidWriteIsNotARingError) {
  SKIP_WITHOUT_GUEST_PROCESSES();
  MakeDisk(Path("d0.img"), 64 * kMiB);
  Start({"blk,id=d0,path=" + Path("d0.img")});
  KillGuestMidWrite();
  if (HasFatalFailure()) return;
  ASSERT_TRUE(rig().WaitGuestGone("d0", testing::GuestExit::kKilled).ok());
  EXPECT_EQ(rig().TransportStat("d0", "ring_errors"), 0u) << rig().Stats("d0");
  EXPECT_FALSE(absl::StrContains(rig().DeviceLog(), "address outside guest memory")) << rig().DeviceLog();
}

// ---- Counters ---------------------------------------------------------------------------------------------

// After a writer and a reader (two guest connections): every base counter is
// reported, and they agree with the device's own counts and with what the
// guests moved.
TEST_P(CounterConformance, BaseCountersAfterBlkIo) {
  const std::string disk = Path("d0.img");
  MakeDisk(disk, 16 * kMiB);
  Start({"blk,id=d0,path=" + disk});
  const uint64_t written = 8 * kMiB, read = 6 * kMiB;
  {
    auto link = rig().ConnectGuest("d0", DeviceId::kBlock);
    ASSERT_TRUE(link.ok()) << link.status();
    BlkDriver blk(*link->transport);
    ASSERT_TRUE(blk.Init(BlkOptions()).ok());
    ASSERT_TRUE(WriteSeeded(blk, 9, 0, written).ok());
    ASSERT_TRUE(blk.Flush().ok());
  }
  ASSERT_TRUE(rig().WaitGuestGone("d0", testing::GuestExit::kClosed).ok());
  {
    auto link = rig().ConnectGuest("d0", DeviceId::kBlock);
    ASSERT_TRUE(link.ok()) << link.status();
    BlkDriver blk(*link->transport);
    ASSERT_TRUE(blk.Init(BlkOptions()).ok());
    ASSERT_TRUE(VerifySeeded(blk, 9, kMiB, read).ok());
  }
  ASSERT_TRUE(rig().WaitGuestGone("d0", testing::GuestExit::kClosed).ok());
  const std::string stats = rig().Stats("d0");
  auto stat = [&](const std::string& name) { return testproc::StatValue(stats, "d0", name); };
  auto base = [&](const std::string& name) { return stat(traits().transport + "." + name); };
  for (const std::string& name : testing::BaseCounterNames())
    EXPECT_NE(base(name), ~0ull) << "d0." << traits().transport << "." << name << " missing:\n" << stats;
  // Every request the device completed, by its own counts.
  const uint64_t device_requests = stat("reads") + stat("writes") + stat("flushes") + stat("discards") +
                                   stat("write_zeroes") + stat("get_ids") + stat("unsupported");
  EXPECT_GT(base("requests"), 0u);
  EXPECT_EQ(base("requests"), device_requests) << stats;
  EXPECT_EQ(stat("bytes_written"), written);
  EXPECT_GE(stat("bytes_read"), read);
  EXPECT_GE(base("bytes_in"), written + 16 * base("requests")) << "each request also carries a 16-byte header";
  EXPECT_GE(base("bytes_out"), read + base("requests")) << "each request also has a status byte";
  EXPECT_EQ(base("ring_errors"), 0u);
  EXPECT_EQ(base("features_refused"), 0u);
  EXPECT_EQ(base("activations"), 2u) << "one per guest connection";
  EXPECT_GE(base("device_resets"), 2u);
  EXPECT_GE(base("notifications"), 1u);
  EXPECT_GE(base("interrupts"), 1u);
  EXPECT_EQ(base("reconnects"), 1u) << "two guest connections";
  EXPECT_EQ(base("connections"), 2u);
  for (const std::string& name : traits().zero_while_guests_behave) EXPECT_EQ(base(name), 0u) << name;
}

// ---- Live upgrade ---------------------------------------------------------------------------

// Two guests write and verify pass after pass (each pass a new seed, read
// back before the next) while vios is replaced ten times in a row (`vios
// --upgrade-from`), then finish their pass and stop (SIGUSR1). The guests
// see nothing: no I/O error, no NEEDS_RESET (vioguest fails at once on
// either), no reconnect, every pass verified; the backing files hold the
// last pass. The pauses the new vios reports are printed, not asserted.
TEST_P(UpgradeConformance, TenUpgradesUnderVerifiedIo) {
  if (traits().device_side_in_process) GTEST_SKIP() << traits().transport << ": no vios process to replace";
  constexpr uint64_t kLen = 8 * kMiB;
  MakeDisk(Path("d0.img"), 16 * kMiB);
  MakeDisk(Path("d1.img"), 16 * kMiB);
  Start({"blk,id=d0,path=" + Path("d0.img"), "blk,id=d1,path=" + Path("d1.img")});
  std::vector<Proc*> guests;
  for (auto [id, seed] : {std::pair{"d0", 100}, {"d1", 200}})
    guests.push_back(&rig().StartGuestProcess(id, {"blk", "write", "--seed", absl::StrCat(seed), "--length",
                                                   absl::StrCat(kLen), "--passes", "0", "--time", "300"}));
  const std::string connections = traits().transport + ".connections";
  ASSERT_TRUE(WaitFor([&] { return rig().Stat("d0", connections) == 1 && rig().Stat("d1", connections) == 1; }, 30))
      << rig().List();
  std::string pauses;
  for (int i = 0; i < 10; ++i) {
    auto p = rig().UpgradeDevices();
    ASSERT_TRUE(p.ok()) << "upgrade " << i + 1 << ": " << p.status();
    absl::StrAppendFormat(&pauses, " %.2f", *p);
  }
  EXPECT_TRUE(guests[0]->Running() && guests[1]->Running()) << "the guests finished before the tenth upgrade";
  for (Proc* g : guests) g->Signal(SIGUSR1);  // finish the pass under way (read back), then report
  for (size_t g = 0; g < guests.size(); ++g) {
    Proc& p = *guests[g];
    ASSERT_EQ(p.Wait(120), 0) << p.err() << p.out();
    EXPECT_EQ(Field(p.out(), "verified"), "yes") << p.out();
    EXPECT_EQ(Field(p.out(), "reconnects"), "0") << p.out();
    uint64_t last = 0;
    ASSERT_TRUE(absl::SimpleAtoi(Field(p.out(), "last_seed"), &last)) << p.out();
    int64_t bad = 0;
    CheckFile(Path(g == 0 ? "d0.img" : "d1.img"), last, 0, kLen, &bad);
    EXPECT_EQ(bad, -1) << "d" << g << " differs from pass seed " << last << " at byte " << bad;
    EXPECT_EQ(rig().Stat(g == 0 ? "d0" : "d1", traits().transport + ".ring_errors"), 0u);
  }
  std::printf("%s: pause per upgrade (ms):%s\n", traits().transport.c_str(), pauses.c_str());
  RecordProperty("pauses_ms", pauses);
}

}  // namespace vioport::conformance
