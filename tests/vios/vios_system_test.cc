// SPDX-License-Identifier: Apache-2.0
// Whole-system tests: a real vios process serving guests that are real
// vioguest processes, over shm and vhost-user: vios's own options, TOML
// config and control socket, a polled shm attachment, guest crashes leaking
// nothing, several VMMs at once. What every transport must do (blk data,
// read-only devices, flushes surviving a kill, hostile rings, ...) is the
// conformance suite's (tests/conformance), for every transport.
// Assertions are on data: checksums on both sides and bytes in the backing
// files, read by this test directly.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "vioport/testing/process.h"
#include "vioport/testing/process_test.h"
#include "vioport/testing/tool_output.h"
#include "vioport/guest/pattern.h"

namespace vioport {
namespace {

using testproc::Proc;
using testproc::Spawn;
using testproc::CheckFile;
using testproc::Field;

class ViosSystem : public testproc::ProcessTest {
 protected:
  ViosSystem() : ProcessTest("vioport-sys") {}

  // Starts vios and waits until every socket it was told to listen on exists.
  Proc& StartVios(std::vector<std::string> args, const std::vector<std::string>& sockets) {
    args.insert(args.begin(), VIOS_BIN);
    args.push_back("--control");
    args.push_back(Path("ctl"));
    Proc& p = Keep(Spawn(args, dir_, "vios"));
    std::vector<std::string> wait_for = sockets;
    wait_for.push_back(Path("ctl"));
    for (int i = 0; i < 1000; ++i) {
      bool all = true;
      for (const auto& s : wait_for) all &= std::filesystem::exists(s);
      if (all || !p.Running()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_TRUE(p.Running()) << "vios exited: " << p.err();
    return p;
  }

  Proc Run(std::vector<std::string> argv, double timeout = 300) {
    Proc p = Spawn(argv, dir_, std::filesystem::path(argv[0]).filename().string());
    p.Wait(timeout);
    return p;
  }
  Proc Guest(const std::string& sock, std::vector<std::string> args, double timeout = 300) {
    args.insert(args.begin(), {VIOGUEST_BIN, "--quiet", "--transport", transport_ + ":" + sock});
    return Run(args, timeout);
  }
  // --attach for device `id` on socket `sock` over this fixture's transport.
  std::string Attach(const std::string& id, const std::string& sock, const std::string& extra = "") const {
    return absl::StrCat(id, ",transport=", transport_, transport_ == "shm" ? ",path=" : ",socket=", sock, extra);
  }
  // Counter names carry the transport: shm.ring_errors, vhost-user.ring_errors.
  std::string T(const std::string& counter) const { return transport_ + "." + counter; }

  void GuestCrashMidIoLeaksNothing(int crashes);
  void LiveUpgradeTenTimes();

  std::string transport_ = "shm";
  std::string Ctl(const std::string& cmd, int* code = nullptr) {
    std::vector<std::string> argv = {VIOSCTL_BIN, "--control", Path("ctl")};
    for (auto w : absl::StrSplit(cmd, ' ')) argv.emplace_back(w);
    Proc p = Run(argv, 30);
    if (code) *code = p.status;
    return p.out() + p.err();
  }
  // Counter `id.name` from viosctl stats.
  uint64_t Stat(const std::string& id, const std::string& name) {
    return testproc::StatValue(Ctl("stats " + id), id, name);
  }
};


// The tools' data formula and checksum: any cut of the stream gives the same
// bytes and the same checksum, and a one-bit change shows.
TEST(Pattern, FillAndChecksumDoNotDependOnChunking) {
  std::vector<uint8_t> whole(10000), pieces(10000);
  pattern::Fill(9, 3, {whole.data(), whole.size()});
  std::mt19937 rng(1);
  pattern::Checksum64 a, b;
  a.Add({whole.data(), whole.size()});
  for (size_t off = 0; off < pieces.size();) {
    const size_t n = std::min<size_t>(1 + rng() % 37, pieces.size() - off);
    pattern::Fill(9, 3 + off, {pieces.data() + off, n});
    b.Add({pieces.data() + off, n});
    off += n;
  }
  EXPECT_EQ(whole, pieces);
  EXPECT_EQ(a.Value(), b.Value());
  EXPECT_EQ(pattern::FirstMismatch(9, 3, {whole.data(), whole.size()}), -1);
  whole[4321] ^= 0x10;
  pattern::Checksum64 c;
  c.Add({whole.data(), whole.size()});
  EXPECT_NE(c.Value(), a.Value());
  EXPECT_EQ(pattern::FirstMismatch(9, 3, {whole.data(), whole.size()}), 3 + 4321);
  pattern::Checksum64 shorter;
  shorter.Add({pieces.data(), pieces.size() - 1});
  EXPECT_NE(shorter.Value(), b.Value());
}

// The same whole-system checks over vhost-user, vioguest playing the VMM.
class ViosSystemVhostUser : public ViosSystem {
 protected:
  ViosSystemVhostUser() { transport_ = "vhost-user"; }
};

TEST_F(ViosSystem, PolledAttachmentServesAndStopsOnSigterm) {
  MakeDisk(Path("disk.img"), 16 << 20);
  Proc& vios = StartVios({"--device", "blk,id=d0,path=" + Path("disk.img"), "--attach",
                          "d0,transport=shm,path=" + Path("d0.sock") + ",poll=on"},
                         {Path("d0.sock")});
  // Two guests one after the other, then SIGTERM with no guest attached: the
  // polling thread must still run the shutdown (it once stopped serving its
  // loop when the acceptor closed and hung).
  Proc w = Guest(Path("d0.sock"), {"blk", "write", "--seed", "21"});
  ASSERT_EQ(w.status, 0) << w.err();
  Proc v = Guest(Path("d0.sock"), {"--packed", "blk", "verify", "--seed", "21"});
  EXPECT_EQ(v.status, 0) << v.err();
  EXPECT_EQ(Field(v.out(), "checksum"), Field(w.out(), "checksum"));
  vios.Signal(SIGTERM);
  EXPECT_EQ(vios.Wait(30), 0) << vios.err();
  int64_t bad;
  CheckFile(Path("disk.img"), 21, 0, 16 << 20, &bad);
  EXPECT_EQ(bad, -1);
}

uint64_t FdCount(pid_t pid) {
  uint64_t n = 0;
  for (auto& e : std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"))) {
    (void)e;
    ++n;
  }
  return n;
}

// The fewest descriptors vios holds over half a second: a control connection
// the test just closed, or a guest's socket vios has not yet seen hang up, is
// counted until vios gets to it, while a leaked descriptor stays in every
// sample.
uint64_t SettledFdCount(pid_t pid) {
  uint64_t n = FdCount(pid);
  for (int k = 0; k < 50; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    n = std::min(n, FdCount(pid));
  }
  return n;
}

uint64_t RssKib(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(f, line)) {
    if (absl::StartsWith(line, "VmRSS:")) {
      uint64_t v = 0;
      std::vector<absl::string_view> w = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (w.size() >= 2 && absl::SimpleAtoi(w[1], &v)) return v;
    }
  }
  return 0;
}

TEST_F(ViosSystem, GuestCrashMidIoHundredTimesLeaksNothing) { GuestCrashMidIoLeaksNothing(100); }
// A crashed VMM leaves vios with mapped guest RAM, an in-flight log and
// kick/call fds to drop.
TEST_F(ViosSystemVhostUser, FrontEndCrashMidIoFiftyTimesLeaksNothing) { GuestCrashMidIoLeaksNothing(50); }

void ViosSystem::GuestCrashMidIoLeaksNothing(int crashes) {
  MakeDisk(Path("disk.img"), 64 << 20);
  // Under ASan freed memory waits in a quarantine (256 MiB by default), so
  // resident memory grows with the allocations a connection makes and frees;
  // vios runs without it here to let the RSS check see leaks only (LSan
  // checks for lost memory at its exit either way).
  // (Set whether or not the environment has ASAN_OPTIONS: a binary without
  // ASan ignores it.)
  const char* asan = std::getenv("ASAN_OPTIONS");
  const std::string asan_before = asan ? asan : "";
  ::setenv("ASAN_OPTIONS", (asan_before.empty() ? "" : asan_before + ":").append("quarantine_size_mb=0").c_str(), 1);
  Proc& vios = StartVios({"--device", "blk,id=d0,path=" + Path("disk.img"), "--attach", Attach("d0", Path("d0.sock"))},
                         {Path("d0.sock")});
  if (asan) ::setenv("ASAN_OPTIONS", asan_before.c_str(), 1);
  else ::unsetenv("ASAN_OPTIONS");
  std::mt19937 rng(3);
  uint64_t fds_at_10 = 0, rss_at_half = 0;
  for (int i = 0; i < crashes; ++i) {
    Proc g = Spawn({VIOGUEST_BIN, "--quiet", "--transport", transport_ + ":" + Path("d0.sock"), "blk", "bench", "--pattern",
                    i % 2 ? "randwrite" : "randread", "--qd", "16", "--time", "10"},
                   dir_, "crash");
    // Killed once vios has it (a slow start, under a sanitizer or load, would
    // otherwise be killed before it connected), somewhere in its I/O.
    for (int k = 0; k < 1000 && Stat("d0", T("connections")) < static_cast<uint64_t>(i + 1) && g.Running(); ++k)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 40));
    g.Signal(SIGKILL);
    g.Wait(10);
    // vios notices the hang-up asynchronously; wait until it is ready again.
    for (int k = 0; k < 200 && Ctl("list").find("waiting") == std::string::npos; ++k)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (i == 9) fds_at_10 = SettledFdCount(vios.pid);
    // Resident memory from half-way: under ASan the allocator's caches keep
    // growing for the first few hundred control calls (about 2.5 MiB, then
    // flat), which is not a leak; a leak keeps growing through the second half.
    if (i == crashes / 2 - 1) rss_at_half = RssKib(vios.pid);
  }
  ASSERT_TRUE(vios.Running()) << vios.err();
  const uint64_t fds = SettledFdCount(vios.pid), rss = RssKib(vios.pid);
  EXPECT_EQ(fds, fds_at_10) << "vios fds grew over " << crashes - 10 << " guest crashes";
  EXPECT_LT(rss, rss_at_half + 4096) << "vios RSS grew from " << rss_at_half << " KiB to " << rss << " KiB over the last "
                                     << crashes - crashes / 2 << " guest crashes";
  // Every guest was killed after vios took it.
  EXPECT_EQ(Stat("d0", T("connections")), static_cast<uint64_t>(crashes));
  // And it still serves a guest correctly.
  Proc w = Guest(Path("d0.sock"), {"blk", "write", "--seed", "4", "--length", "4M"});
  ASSERT_EQ(w.status, 0) << w.err();
  Proc v = Guest(Path("d0.sock"), {"blk", "verify", "--seed", "4", "--length", "4M"});
  EXPECT_EQ(v.status, 0) << v.err();
}

// One vios, several VMMs at once, each on its own device and socket.
TEST_F(ViosSystemVhostUser, ManyFrontEndsAtOnce) {
  constexpr int kGuests = 3;
  std::vector<std::string> args;
  std::vector<std::string> socks;
  for (int i = 0; i < kGuests; ++i) {
    MakeDisk(Path(absl::StrCat("d", i, ".img")), 16 << 20);
    socks.push_back(Path(absl::StrCat("d", i, ".sock")));
    args.insert(args.end(), {"--device", absl::StrCat("blk,id=d", i, ",path=", Path(absl::StrCat("d", i, ".img"))),
                             "--attach", Attach(absl::StrCat("d", i), socks.back())});
  }
  StartVios(args, socks);
  std::vector<std::thread> threads;
  std::vector<std::string> sums(kGuests), errs(kGuests);
  for (int i = 0; i < kGuests; ++i)
    threads.emplace_back([&, i] {
      Proc w = Guest(socks[i], {"blk", "write", "--seed", absl::StrCat(40 + i)});
      Proc v = Guest(socks[i], {"blk", "verify", "--seed", absl::StrCat(40 + i)});
      if (w.status != 0 || v.status != 0 || Field(v.out(), "verified") != "yes") errs[i] = w.err() + v.err();
      sums[i] = Field(v.out(), "checksum");
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < kGuests; ++i) {
    EXPECT_EQ(errs[i], "") << "guest " << i;
    int64_t bad;
    EXPECT_EQ(CheckFile(Path(absl::StrCat("d", i, ".img")), 40 + i, 0, 16 << 20, &bad), sums[i]);
    EXPECT_EQ(bad, -1) << "device d" << i;
    EXPECT_EQ(Stat(absl::StrCat("d", i), T("protocol_errors")), 0u);
  }
}

TEST_F(ViosSystem, BadOptionsNameTheOptionAndExitNonZero) {
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  MakeDisk(Path("disk.img"), 1 << 20);
  const std::string disk = Path("disk.img");
  std::ofstream(Path("bad.toml")) << "[[device]]\ntype = \"blk\"\nid = \"d0\"\npath = = 3\n";
  std::ofstream(Path("unknown.toml")) << "[[device]]\ntype = \"blk\"\nid = \"d0\"\npath = \"" << disk
                                      << "\"\nspeed = \"fast\"\n";
  const std::vector<Case> cases = {
      {{"--device", "blk,id=d0"}, "option 'path' is required"},
      {{"--device", "floppy,id=d0"}, "unknown device type 'floppy'"},
      {{"--device", "blk,id=d0,path=" + disk + ",readonly=maybe"}, "readonly=maybe"},
      {{"--device", "blk,id=d0,path=" + disk + ",num-queues=99"}, "num-queues=99"},
      {{"--device", "blk,id=d0,path=/nonexistent/disk.img"}, "/nonexistent/disk.img"},
      {{"--device", "blk,id=d0,path=" + disk + ",colour=red"}, "colour=red"},
      {{"--attach", "d9,transport=shm,path=" + Path("x.sock")}, "no device with id 'd9'"},
      {{"--device", "rng,id=r0", "--attach", "r0,transport=carrier-pigeon"}, "unknown transport 'carrier-pigeon'"},
      {{"--device", "rng,id=r0", "--device", "rng,id=r0"}, "'r0' already exists"},
      {{"--config", Path("bad.toml")}, "bad.toml:4"},
      {{"--config", Path("unknown.toml")}, "speed=fast"},
      {{"--bogus"}, "unknown argument '--bogus'"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {VIOS_BIN};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    Proc p = Run(argv, 20);
    EXPECT_EQ(p.status, 2) << c.expect;
    EXPECT_NE(p.err().find(c.expect), std::string::npos) << "expected '" << c.expect << "' in: " << p.err();
  }
  Proc help = Run({VIOS_BIN, "--help"}, 10);
  EXPECT_EQ(help.status, 0);
  EXPECT_NE(help.out().find("--device"), std::string::npos);
}

TEST_F(ViosSystem, TomlConfigControlSocketAndSigterm) {
  MakeDisk(Path("disk.img"), 8 << 20);
  std::ofstream(Path("vios.toml")) << "log-level = \"info\"\n"
                                   << "[[device]]\ntype = \"blk\"\nid = \"d0\"\npath = \"" << Path("disk.img")
                                   << "\"\nnum-queues = 2\n"
                                   << "[[attach]]\ndevice = \"d0\"\ntransport = \"shm\"\npath = \"" << Path("d0.sock")
                                   << "\"\n";
  Proc& vios = StartVios({"--config", Path("vios.toml")}, {Path("d0.sock")});
  Proc w = Guest(Path("d0.sock"), {"--queues", "2", "blk", "write", "--seed", "12"});
  ASSERT_EQ(w.status, 0) << w.err();
  // Runtime add, attach, use and remove through viosctl.
  int code = -1;
  Ctl("add rng,id=r0", &code);
  EXPECT_EQ(code, 0);
  Ctl("attach r0,transport=shm,path=" + Path("r0.sock"), &code);
  EXPECT_EQ(code, 0);
  Proc r = Guest(Path("r0.sock"), {"rng", "--length", "64K"});
  EXPECT_EQ(r.status, 0) << r.err();
  EXPECT_EQ(Field(r.out(), "verified"), "yes");
  // A blk driver refuses to drive an rng.
  Proc wrong = Guest(Path("r0.sock"), {"blk", "info"});
  EXPECT_EQ(wrong.status, 2);
  EXPECT_NE(wrong.err().find("virtio device id 4, this driver is for id 2"), std::string::npos) << wrong.err();
  const std::string list = Ctl("list");
  EXPECT_NE(list.find("r0"), std::string::npos) << list;
  EXPECT_GE(Stat("r0", "bytes"), 65536u);
  EXPECT_EQ(Stat("d0", "bytes_written"), 8u << 20);
  Ctl("remove r0", &code);
  EXPECT_EQ(code, 0);
  EXPECT_EQ(Ctl("list").find("r0"), std::string::npos);
  const std::string err = Ctl("stats nosuch", &code);
  EXPECT_EQ(code, 1);
  EXPECT_NE(err.find("no device with id 'nosuch'"), std::string::npos) << err;
  // SIGTERM: clean exit 0.
  vios.Signal(SIGTERM);
  EXPECT_EQ(vios.Wait(30), 0) << vios.err();
  EXPECT_NE(vios.err().find("stopping"), std::string::npos);
  int64_t bad;
  CheckFile(Path("disk.img"), 12, 0, 8 << 20, &bad);
  EXPECT_EQ(bad, -1);
}


// ---- Live upgrade (docs/upgrade.md) ------------------------------------------------------

// Two guests write and verify pass after pass (each pass a new seed, read
// back before the next) while vios is replaced ten times in a row by
// `vios --upgrade-from`; one blk device is polled, one idle rng device has no
// guest. Nothing the guests see may change: no I/O error, no NEEDS_RESET (the
// guests fail at once on either), no reconnect, every pass verified, and the
// backing files hold the last pass's data. The pause each upgrade cost the
// guests is what the new vios reports (printed, not asserted).
TEST_F(ViosSystem, LiveUpgradeTenTimesUnderVerifiedIo) { LiveUpgradeTenTimes(); }
// The same with vioguest as the VMM: the front-end's socket, memory regions,
// in-flight area, kick and call eventfds and rings go to the new vios; the
// front-end never reconnects.
TEST_F(ViosSystemVhostUser, LiveUpgradeTenTimesUnderVerifiedIo) { LiveUpgradeTenTimes(); }

void ViosSystem::LiveUpgradeTenTimes() {
  constexpr uint64_t kLen = 8 << 20;
  MakeDisk(Path("d0.img"), 32 << 20);
  MakeDisk(Path("d1.img"), 32 << 20);
  Proc* vios = &StartVios({"--device", "blk,id=d0,path=" + Path("d0.img"), "--device", "blk,id=d1,path=" + Path("d1.img"),
                           "--device", "rng,id=r0", "--attach", Attach("d0", Path("d0.sock")), "--attach",
                           Attach("d1", Path("d1.sock"), transport_ == "shm" ? ",poll=on" : ",spin-us=0"), "--attach",
                           Attach("r0", Path("r0.sock"))},
                          {Path("d0.sock"), Path("d1.sock"), Path("r0.sock")});
  auto writer = [&](const std::string& sock, uint64_t seed) {
    return Spawn({VIOGUEST_BIN, "--quiet", "--transport", transport_ + ":" + sock, "blk", "write", "--seed", absl::StrCat(seed),
                  "--length", absl::StrCat(kLen), "--passes", "0", "--time", "300"},
                 dir_, "writer");
  };
  Proc& g0 = Keep(writer(Path("d0.sock"), 100));
  Proc& g1 = Keep(writer(Path("d1.sock"), 200));
  ASSERT_TRUE(testproc::WaitFor([&] { return Stat("d0", T("connections")) == 1 && Stat("d1", T("connections")) == 1; },
                                30));
  // Settings and life-long counters go with the device: coalescing set on
  // the first vios holds in the last, and a counter read just before an
  // upgrade is not smaller just after it.
  int code = -1;
  ASSERT_EQ(Ctl("coalescing d0 50 100000", &code), "ok\n");
  ASSERT_EQ(code, 0);
  std::vector<double> pauses;
  uint64_t episodes_before = 0, episodes_after = 0;
  for (int i = 0; i < 10; ++i) {
    if (i == 9) episodes_before = Stat("d0", "poll.episodes");
    Proc& next = Keep(Spawn({VIOS_BIN, "--upgrade-from", Path("ctl")}, dir_, absl::StrCat("vios-", i + 1)));
    ASSERT_EQ(vios->Wait(60), 0) << "upgrade " << i + 1 << ": the old vios: " << vios->err() << "\nthe new one: " << next.err();
    ASSERT_TRUE(testproc::WaitFor([&] { return next.err().find("vios ready") != std::string::npos || !next.Running(); }, 30));
    ASSERT_TRUE(next.Running()) << next.err();
    const std::string log = next.err();
    ASSERT_NE(log.find("took over 3 device(s) and 2 guest(s) from pid " + absl::StrCat(vios->pid)), std::string::npos)
        << log;
    const size_t at = log.find("guests waited ");
    ASSERT_NE(at, std::string::npos);
    pauses.push_back(std::stod(log.substr(at + 14)));
    vios = &next;
    if (i == 9) episodes_after = Stat("d0", "poll.episodes");
  }
  EXPECT_GT(episodes_before, 0u);
  EXPECT_GE(episodes_after, episodes_before) << "d0's counters restarted at the upgrade";
  EXPECT_EQ(Stat("d0", "coalescing.delay_base_us"), 50u);
  EXPECT_EQ(Stat("d0", "coalescing.iops_threshold"), 100000u);
  // The upgrades happened under I/O: both guests are still writing.
  EXPECT_TRUE(g0.Running() && g1.Running()) << "the guests finished before the tenth upgrade";
  g0.Signal(SIGUSR1);  // finish the pass under way (read back), then report
  g1.Signal(SIGUSR1);
  for (auto [g, disk] : {std::pair{&g0, "d0.img"}, {&g1, "d1.img"}}) {
    ASSERT_EQ(g->Wait(120), 0) << g->err() << g->out();
    EXPECT_EQ(Field(g->out(), "verified"), "yes") << g->out();
    EXPECT_EQ(Field(g->out(), "reconnects"), "0") << g->out();
    uint64_t last = 0, passes = 0;
    ASSERT_TRUE(absl::SimpleAtoi(Field(g->out(), "last_seed"), &last)) << g->out();
    ASSERT_TRUE(absl::SimpleAtoi(Field(g->out(), "passes"), &passes)) << g->out();
    EXPECT_GE(passes, 2u);
    int64_t bad;
    CheckFile(Path(disk), last, 0, kLen, &bad);
    EXPECT_EQ(bad, -1) << disk << " differs from pass " << last << " at byte " << bad;
  }
  EXPECT_EQ(Stat("d0", T("ring_errors")), 0u);
  EXPECT_EQ(Stat("d1", T("ring_errors")), 0u);
  // The control socket is the same one, served by the last vios.
  EXPECT_NE(Ctl("list").find("r0"), std::string::npos);
  std::string line = "pause per upgrade (ms):";
  for (double p : pauses) line += absl::StrFormat(" %.2f", p);
  std::printf("%s\n", line.c_str());
  RecordProperty("pauses_ms", line);
  vios->Signal(SIGTERM);
  EXPECT_EQ(vios->Wait(30), 0) << vios->err();
}

// A console goes with an upgrade, host side and all: the host's client
// stays connected to the same socket (the new vios has the listener and the
// connection), the guest's console stays up, and text goes both ways across
// the upgrade; afterwards the new vios accepts the next client on the same
// path, and removes it when it stops.
TEST_F(ViosSystem, LiveUpgradeCarriesAConsoleAndItsClient) {
  Proc* vios = &StartVios({"--device", "console,id=c0,socket=" + Path("con.sock"), "--attach",
                           Attach("c0", Path("c0.sock"))},
                          {Path("c0.sock"), Path("con.sock")});
  const int host = testproc::ConnectUnixStream(Path("con.sock"), 10);
  ASSERT_GE(host, 0);
  Proc& guest = Keep(Spawn({VIOGUEST_BIN, "--quiet", "--transport", "shm:" + Path("c0.sock"), "console", "--send",
                            "hello from the guest\n", "--expect", "hello after the upgrade", "--timeout", "120"},
                           dir_, "console"));
  const std::string first = testproc::ReadUntil(host, "hello from the guest", 60);
  ASSERT_NE(first.find("hello from the guest"), std::string::npos) << first << guest.err();
  Proc& next = Keep(Spawn({VIOS_BIN, "--upgrade-from", Path("ctl")}, dir_, "vios-1"));
  ASSERT_EQ(vios->Wait(60), 0) << "the old vios: " << vios->err() << "\nthe new one: " << next.err();
  ASSERT_TRUE(testproc::WaitFor([&] { return next.err().find("vios ready") != std::string::npos || !next.Running(); }, 30));
  ASSERT_TRUE(next.Running()) << next.err();
  EXPECT_NE(next.err().find("took over 1 device(s) and 1 guest(s)"), std::string::npos) << next.err();
  vios = &next;
  // The same connection, now the new vios's: text to the guest...
  const std::string after = "hello after the upgrade\n";
  ASSERT_EQ(::write(host, after.data(), after.size()), static_cast<ssize_t>(after.size()));
  EXPECT_EQ(guest.Wait(120), 0) << guest.err() << guest.out();
  EXPECT_EQ(Field(guest.out(), "verified"), "yes") << guest.out();
  ::close(host);
  // ...and the next client on the same path.
  const int again = testproc::ConnectUnixStream(Path("con.sock"), 10);
  EXPECT_GE(again, 0) << "the new vios does not accept on the handed-over socket";
  if (again >= 0) ::close(again);
  vios->Signal(SIGTERM);
  EXPECT_EQ(vios->Wait(30), 0) << vios->err();
  EXPECT_FALSE(std::filesystem::exists(Path("con.sock"))) << "the last vios leaves its socket behind";
}

// An upgrade that cannot complete leaves the running vios serving as if it
// had not been asked: the new vios failing to restore a device (its backing
// file gone from the path; the devices before it were frozen and sent, the
// console's socket taken over and given back), and a device type that
// cannot be handed over yet (vsock, whose hub holds connections of vios's
// own). The guest's verified I/O goes on through both, and the console
// still serves its socket.
TEST_F(ViosSystem, FailedUpgradesLeaveTheRunningViosServing) {
  constexpr uint64_t kLen = 8 << 20;
  MakeDisk(Path("d0.img"), 32 << 20);
  MakeDisk(Path("d1.img"), 32 << 20);
  Proc& vios = StartVios({"--device", "blk,id=d0,path=" + Path("d0.img"), "--device", "blk,id=d1,path=" + Path("d1.img"),
                          "--device", "console,id=d2,socket=" + Path("con.sock"), "--attach",
                          Attach("d0", Path("d0.sock")), "--attach", Attach("d1", Path("d1.sock")), "--attach",
                          Attach("d2", Path("d2.sock"))},
                         {Path("d0.sock"), Path("d1.sock"), Path("d2.sock")});
  Proc& g = Keep(Spawn({VIOGUEST_BIN, "--quiet", "--transport", "shm:" + Path("d0.sock"), "blk", "write", "--seed", "300",
                        "--length", absl::StrCat(kLen), "--passes", "0", "--time", "300"},
                       dir_, "writer"));
  ASSERT_TRUE(testproc::WaitFor([&] { return Stat("d0", T("connections")) == 1; }, 30));
  // 1. The new vios cannot open d1's file: it gives up; the old one thaws.
  ASSERT_EQ(::rename(Path("d1.img").c_str(), Path("d1.moved").c_str()), 0);
  Proc bad = Run({VIOS_BIN, "--upgrade-from", Path("ctl")}, 60);
  EXPECT_EQ(bad.status, 1) << bad.err();
  EXPECT_NE(bad.err().find("d1.img"), std::string::npos) << bad.err();
  ASSERT_EQ(::rename(Path("d1.moved").c_str(), Path("d1.img").c_str()), 0);
  EXPECT_TRUE(vios.Running());
  // The console still has its socket, from the old vios, which answers.
  Proc& fe = Keep(Spawn({VIOGUEST_BIN, "--quiet", "--transport", "shm:" + Path("d2.sock"), "console", "--expect",
                         "from the host", "--timeout", "60"},
                        dir_, "console"));
  ASSERT_TRUE(testproc::WaitFor([&] { return Stat("d2", T("connections")) == 1; }, 30)) << Ctl("stats d2");
  const int host = testproc::ConnectUnixStream(Path("con.sock"), 10);
  ASSERT_GE(host, 0) << "the console's socket is gone after the failed upgrade";
  const std::string hello = "from the host\n";
  ASSERT_EQ(::write(host, hello.data(), hello.size()), static_cast<ssize_t>(hello.size()));
  EXPECT_EQ(fe.Wait(60), 0) << fe.err() << fe.out();
  ::close(host);
  // 2. A vsock device: refused before anything is frozen, named.
  int code = -1;
  ASSERT_EQ(Ctl("add vsock,id=v0,cid=3", &code).find("ok"), 0u);
  Proc refused = Run({VIOS_BIN, "--upgrade-from", Path("ctl")}, 60);
  EXPECT_EQ(refused.status, 1) << refused.err();
  EXPECT_NE(refused.err().find("device 'v0' (vsock)"), std::string::npos) << refused.err();
  EXPECT_TRUE(vios.Running());
  EXPECT_TRUE(g.Running()) << "the guest finished before the upgrades were tried";
  g.Signal(SIGUSR1);
  ASSERT_EQ(g.Wait(120), 0) << g.err() << g.out();
  EXPECT_EQ(Field(g.out(), "verified"), "yes") << g.out();
  EXPECT_EQ(Field(g.out(), "reconnects"), "0") << g.out();
  uint64_t last = 0;
  ASSERT_TRUE(absl::SimpleAtoi(Field(g.out(), "last_seed"), &last)) << g.out();
  int64_t badbyte;
  CheckFile(Path("d0.img"), last, 0, kLen, &badbyte);
  EXPECT_EQ(badbyte, -1);
  // The control socket still answers, from the same vios.
  EXPECT_NE(Ctl("list").find("d0"), std::string::npos);
  vios.Signal(SIGTERM);
  EXPECT_EQ(vios.Wait(30), 0) << vios.err();
}

}  // namespace
}  // namespace vioport
