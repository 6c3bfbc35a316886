// SPDX-License-Identifier: Apache-2.0
// virtio over Xen grants across processes: xenemud (the Xen emulator: grant
// tables, event channels, xenstored), vios serving devices as dom0
// (--attach ...,transport=xen,channel=emu:SOCKET,domid=F) and vioguest as
// frontend domain F (--transport xen:emu:SOCKET,domid=F). What is Xen's own:
// persistent grant maps against grant copy, pages mapped and released when
// a frontend dies, a driver-domain backend and grant isolation, real Xen
// missing. (blk, rng and console data, vios killed and the frontend
// reconnecting, a hostile ring and the counters are the conformance suite's,
// tests/conformance, with a rig that starts xenemud the same way.)
// Assertions are on data (the writer's, reader's and file's checksums agree
// and the file holds the seeded pattern byte for byte) and on vios's
// counters and log lines. Faults are injected at points found by watching
// vios's counters, never after a sleep; every wait is bounded.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "vioport/testing/process.h"
#include "vioport/testing/process_test.h"
#include "vioport/testing/tool_output.h"
#include "vioport/emulators/xen_emu_channel.h"
#include "vioport/transports/xen_channel.h"
#include "vioport/transports/xen_protocol.h"
#include "vioport/transports/xs_client.h"

#ifndef VIOPORT_BIG_MIB
#define VIOPORT_BIG_MIB 256
#endif

namespace vioport {
namespace {

using testproc::CheckFile;
using testproc::Proc;
using testproc::WaitFor;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kBig = uint64_t{VIOPORT_BIG_MIB} * kMiB;

// A device vios serves and the frontend domain that drives it.
struct Dev {
  const char* id;
  uint32_t domid;
  uint32_t devid = 0;
};
constexpr Dev kBlk{"d0", 1};

class XenProcess : public testproc::ViosProcessTest {
 protected:
  XenProcess() : ViosProcessTest("vioport-xenproc", VIOS_BIN, VIOSCTL_BIN, VIOGUEST_BIN) {}

  void StartXenemud(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {XENEMUD_BIN, "--xenstore", Path("xs.sock"), "--domains", Path("xen.sock")};
    argv.insert(argv.end(), extra.begin(), extra.end());
    xenemud_ = &Start(argv, "xenemud");
    ASSERT_GT(xenemud_->pid, 0);
    ASSERT_TRUE(WaitForPaths({Path("xs.sock"), Path("xen.sock")}, *xenemud_)) << xenemud_->err();
  }
  // vios (dom0) with `devices`, each attached for its frontend; `grants` map or copy.
  void StartVios(const std::vector<std::string>& devices, const std::vector<Dev>& attach,
                 const std::string& grants = "map") {
    vios_args_.clear();
    for (const std::string& d : devices) vios_args_.insert(vios_args_.end(), {"--device", d});
    for (const Dev& d : attach)
      vios_args_.insert(vios_args_.end(),
                        {"--attach", absl::StrFormat("%s,transport=xen,channel=emu:%s,domid=%u,devid=%u,grants=%s",
                                                     d.id, Path("xen.sock"), d.domid, d.devid, grants)});
    SpawnVios();
  }
  std::string Transport(const Dev& d) const {
    return absl::StrFormat("xen:emu:%s,domid=%u,devid=%u", Path("xen.sock"), d.domid, d.devid);
  }
  Proc& StartGuest(const Dev& d, const std::vector<std::string>& cmd) { return StartVioguest(Transport(d), cmd); }
  Proc& Guest(const Dev& d, const std::vector<std::string>& cmd) { return RunVioguest(Transport(d), cmd, 180); }
  void WriteAndVerify(const Dev& d, const std::string& disk, uint64_t seed, uint64_t offset, uint64_t length) {
    WriteAndVerifyOver(Transport(d), disk, seed, offset, length, 180);
  }
  void StopAll() {
    vios_->Signal(SIGTERM);
    EXPECT_EQ(vios_->Wait(30), 0) << vios_->err();
    xenemud_->Signal(SIGTERM);
    EXPECT_EQ(xenemud_->Wait(30), 0) << xenemud_->err();
  }

  Proc* xenemud_ = nullptr;
};

// ---- Data ------------------------------------------------------------------------

// 256 MiB written and verified with persistent mappings; the rest of the
// disk stays zero; every buffer was mapped once and kept.
TEST_F(XenProcess, BlkWriteVerifyWithPersistentMaps) {
  const uint64_t disk_bytes = kBig + 16 * kMiB;
  const std::string disk = Path("disk.img");
  MakeDisk(disk, disk_bytes);
  StartXenemud();
  StartVios({"blk,id=d0,path=" + disk}, {kBlk}, "map");

  WriteAndVerify(kBlk, disk, 7, 0, kBig);
  EXPECT_GE(Stat("d0", "bytes_written"), kBig);
  EXPECT_GE(Stat("d0", "bytes_read"), kBig);
  EXPECT_EQ(Stat("d0", "xen.ring_errors"), 0u);
  EXPECT_EQ(Stat("d0", "xen.connections"), 2u);  // the writer and the reader
  EXPECT_EQ(Stat("d0", "xen.map_cache_overflow"), 0u);
  EXPECT_GT(Stat("d0", "xen.grant_maps"), 0u);
  // Persistent: far fewer maps than requests (each 1 MiB chunk is 8+ requests).
  EXPECT_LT(Stat("d0", "xen.grant_maps"), kBig / (128 * 1024));
  std::vector<uint8_t> tail(disk_bytes - kBig), zeros(disk_bytes - kBig);
  const int fd = ::open(disk.c_str(), O_RDONLY);
  ASSERT_EQ(::pread(fd, tail.data(), tail.size(), static_cast<off_t>(kBig)), static_cast<ssize_t>(tail.size()));
  ::close(fd);
  EXPECT_TRUE(tail == zeros) << "bytes past the written range changed";
  StopAll();
}

// The same through grant copy: nothing is mapped, everything copied.
TEST_F(XenProcess, BlkWriteVerifyWithGrantCopy) {
  const std::string disk = Path("disk.img");
  MakeDisk(disk, kBig / 4);
  StartXenemud();
  StartVios({"blk,id=d0,path=" + disk}, {kBlk}, "copy");
  WriteAndVerify(kBlk, disk, 11, 4096, kBig / 4 - 8192);
  EXPECT_EQ(Stat("d0", "xen.grant_maps"), 0u);
  EXPECT_GE(Stat("d0", "xen.grant_copy_bytes"), 2 * (kBig / 4 - 8192));
  EXPECT_EQ(Stat("d0", "xen.grant_copy_failures"), 0u);
  EXPECT_EQ(Stat("d0", "xen.ring_errors"), 0u);
  StopAll();
}

// vios's maptrack is full but for the control page (one live map): the
// rings and the buffers are reached by grant copy instead, and every byte
// arrives. (With many domains at once, a full maptrack once broke their
// rings: "address outside guest memory" right after DRIVER_OK.)
TEST_F(XenProcess, AFullMaptrackLeavesRingsAndBuffersToGrantCopy) {
  const std::string disk = Path("disk.img");
  MakeDisk(disk, 32 * kMiB);
  StartXenemud({"--max-maptrack", "1"});
  StartVios({"blk,id=d0,path=" + disk}, {kBlk}, "map");
  WriteAndVerify(kBlk, disk, 13, 4096, 16 * kMiB);
  // And over packed rings.
  std::vector<std::string> w = BlkCmd("write", 14, 20 * kMiB, 4 * kMiB), v = BlkCmd("verify", 14, 20 * kMiB, 4 * kMiB);
  w.insert(w.begin(), "--packed");
  v.insert(v.begin(), "--packed");
  Proc& pw = Guest(kBlk, w);
  ASSERT_EQ(pw.status, 0) << pw.err();
  ExpectWrittenAndVerified(pw, Guest(kBlk, v), disk, 14, 20 * kMiB, 4 * kMiB);
  EXPECT_EQ(Stat("d0", "xen.ring_errors"), 0u);
  EXPECT_EQ(Stat("d0", "xen.grant_maps"), 0u) << "only the control page fits, and it is not a buffer map";
  EXPECT_GE(Stat("d0", "xen.grant_copy_bytes"), 2 * 20 * kMiB);
  EXPECT_EQ(Stat("d0", "xen.grant_copy_failures"), 0u);
  EXPECT_EQ(Stat("d0", "xen.connections"), 4u);  // two writers and two readers
  StopAll();
}

// ---- Faults ------------------------------------------------------------------------

// The frontend SIGKILLed mid-write while vios maps its pages: xenemud drops
// the domain, vios disconnects (and unmaps), and a new frontend process as
// the same domain writes and verifies.
TEST_F(XenProcess, FrontendKilledWithPagesMapped) {
  const std::string disk = Path("disk.img");
  MakeDisk(disk, kBig / 2);
  StartXenemud();
  StartVios({"blk,id=d0,path=" + disk}, {kBlk});
  Proc& w = StartGuest(kBlk, BlkCmd("write", 1, 0, kBig / 2));
  ASSERT_TRUE(WaitForBytesWritten("d0", kBig / 16, w)) << w.err() << w.out();
  EXPECT_GT(Stat("d0", "xen.mapped_pages"), 0u);
  w.Signal(SIGKILL);
  EXPECT_EQ(w.Wait(10), 128 + SIGKILL);
  EXPECT_TRUE(ViosLogHas("disconnected")) << vios_->err();
  EXPECT_TRUE(WaitFor([&] { return Stat("d0", "xen.mapped_pages") == 0; }, 10)) << Viosctl("stats d0");
  EXPECT_TRUE(xenemud_->Running()) << xenemud_->err();
  EXPECT_TRUE(vios_->Running()) << vios_->err();
  // What vios acknowledged before the kill is in the file.
  int64_t bad;
  CheckFile(disk, 1, 0, kBig / 32, &bad);
  EXPECT_EQ(bad, -1) << "acknowledged data of the killed frontend differ at byte " << bad;
  WriteAndVerify(kBlk, disk, 29, kBig / 8, kBig / 8);
  EXPECT_EQ(Stat("d0", "xen.ring_errors"), 0u);
  StopAll();
}

// Isolation. Frontend 1 is served by vios in dom0; frontend 2 by a second
// vios running as driver domain 5 (the test plays the toolstack and points
// frontend 2's device at it). Both write and verify at once. Meanwhile this
// process, as yet another backend domain (6), tries to reach frontend 1's
// pages: every map and every copy of its grants fails, and xenstore keeps
// its device directory from us.
TEST_F(XenProcess, GrantsNamingOtherBackendsAreUnreachable) {
  const std::string disk1 = Path("disk1.img"), disk2 = Path("disk2.img");
  MakeDisk(disk1, kBig / 4);
  MakeDisk(disk2, kBig / 4);
  StartXenemud();
  StartVios({"blk,id=d0,path=" + disk1}, {kBlk});
  // The toolstack's part for a driver-domain backend: frontend 2's device
  // directory (owned by 2, readable by 5) names domain 5's backend.
  auto dom0 = xen::XsClient::Open(Path("xs.sock"));
  ASSERT_TRUE(dom0.ok()) << dom0.status();
  const std::string fe2 = xen::FrontendDir(2, 0), be2 = xen::BackendDir(5, 2, 0);
  // (Again for each new domain 2: its directory goes when the domain dies.)
  auto make_fe2 = [&] {
    ASSERT_TRUE(WaitFor([&] { return !(*dom0)->Read("/local/domain/2").ok(); }, 10));
    ASSERT_TRUE((*dom0)->Mkdir(fe2).ok());
    ASSERT_TRUE((*dom0)->SetPermissions(fe2, {{2, 'n'}, {5, 'r'}}).ok());
    ASSERT_TRUE((*dom0)->Write(fe2 + "/backend", be2).ok());
    ASSERT_TRUE((*dom0)->Write(fe2 + "/backend-id", "5").ok());
    ASSERT_TRUE((*dom0)->Write(fe2 + "/state", "1").ok());
  };
  make_fe2();
  ASSERT_TRUE((*dom0)->Mkdir("/local/domain/5/backend").ok());
  ASSERT_TRUE((*dom0)->SetPermissions("/local/domain/5/backend", {{5, 'n'}}).ok());
  Proc& vios5 = Start({VIOS_BIN, "--device", "blk,id=d1,path=" + disk2, "--attach",
                       absl::StrFormat("d1,transport=xen,channel=emu:%s,self=5,domid=2", Path("xen.sock")),
                       "--control", Path("vios5.ctl")},
                      "vios5");
  ASSERT_TRUE(WaitForPaths({Path("vios5.ctl")}, vios5)) << vios5.err();

  const Dev blk2{"d1", 2};
  // Frontend 1 keeps its grants live for a while (random reads for 5 s);
  // frontend 2 writes meanwhile.
  Proc& b1 = StartGuest(kBlk, {"blk", "bench", "--pattern", "randread", "--bs", "4K", "--qd", "8", "--time", "5"});
  Proc& w2 = StartGuest(blk2, BlkCmd("write", 52, 0, kBig / 4));
  ASSERT_TRUE(WaitFor([&] { return Stat("d0", "xen.mapped_pages") > 0 || !b1.Running(); }, 10));
  ASSERT_TRUE(b1.Running()) << b1.err() << b1.out();

  xen::ChannelOptions eo;
  eo.address = Path("xen.sock");
  eo.self = 6;
  eo.memory_bytes = kMiB;
  auto ch = xen::OpenEmulatorChannel(eo);
  ASSERT_TRUE(ch.ok()) << ch.status();
  auto xs6 = xen::XsClient::Open((*ch)->xenstore_path());
  ASSERT_TRUE(xs6.ok()) << xs6.status();
  EXPECT_TRUE(absl::IsPermissionDenied((*xs6)->Read(xen::FrontendDir(1, 0) + "/ctrl-ref").status()));
  // Frontend 1's grants are refs 8.. (its control page, rings and buffers).
  int maps_refused = 0, copies_refused = 0;
  std::vector<uint8_t> buf(64);
  for (xen::GrantRef ref = 8; ref < 8 + 600; ++ref) {
    auto m = (*ch)->MapGrant(1, ref, false);
    if (!m.ok()) maps_refused++;
    else (void)(*ch)->UnmapGrant(*m);
    xen::GrantCopySegment seg;
    seg.domid = 1;
    seg.ref = ref;
    seg.local = buf.data();
    seg.len = 64;
    (*ch)->GrantCopy({&seg, 1});
    if (seg.status != 0) copies_refused++;
  }
  EXPECT_EQ(maps_refused, 600);
  EXPECT_EQ(copies_refused, 600);
  EXPECT_TRUE(b1.Running()) << "frontend 1 finished before the probe ended; it proves less";

  EXPECT_EQ(b1.Wait(60), 0) << b1.err() << b1.out();
  EXPECT_EQ(w2.Wait(120), 0) << w2.err() << w2.out();
  make_fe2();
  Proc& v2 = Guest(blk2, BlkCmd("verify", 52, 0, kBig / 4));
  ExpectWrittenAndVerified(w2, v2, disk2, 52, 0, kBig / 4);
  WriteAndVerify(kBlk, disk1, 51, 0, kBig / 4);
  EXPECT_TRUE(absl::StrContains(vios5.err(), "domain 2 connected")) << vios5.err();
  StopAll();
}

// Real Xen on a machine without it: vios and vioguest stop at start with
// the missing device node named (never a crash, never a hang).
TEST_F(XenProcess, RealXenRefusedClearlyWithoutXen) {
  if (std::filesystem::exists("/dev/xen/evtchn")) GTEST_SKIP() << "this machine runs on Xen";
  Proc& v = Start({VIOS_BIN, "--device", "rng,id=r0", "--attach", "r0,transport=xen,channel=xen,domid=1"}, "vios");
  EXPECT_EQ(v.Wait(30), 2) << v.err();
  EXPECT_TRUE(absl::StrContains(v.err(), "/dev/xen/evtchn is missing")) << v.err();
  Proc& g = RunVioguest("xen:xen", {"rng", "--length", "4K"}, 30);
  EXPECT_EQ(g.status, 2) << g.err();
  EXPECT_TRUE(absl::StrContains(g.err(), "/dev/xen/evtchn is missing")) << g.err();
}

}  // namespace
}  // namespace vioport
