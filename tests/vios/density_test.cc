// SPDX-License-Identifier: Apache-2.0
// Thousands of idle devices in one vios: 9,000 blk devices (half over shm,
// half over vhost-user; fewer where RLIMIT_NOFILE is lower) from one TOML
// file, on two reactors. Each idle device may hold at most 2 file
// descriptors (its backing file and its listening socket) and 16 KiB of
// resident memory; idle vios uses no CPU; the control API lists them all;
// a guest on the last device still gets verified I/O. Resource bounds, not
// timings: start-up time is measured by scripts/bench-scale.sh.
#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "control_client.h"
#include "nlohmann/json.hpp"
#include "vioport/testing/process.h"
#include "vioport/testing/process_test.h"
#include "vioport/testing/tool_output.h"

namespace vioport {
namespace {

using json = nlohmann::json;
using testproc::Proc;

class Density : public testproc::ProcessTest {
 protected:
  Density() : ProcessTest("vioport-density") {}

  int Fds(pid_t pid) const {
    int n = 0;
    if (DIR* d = ::opendir(absl::StrCat("/proc/", pid, "/fd").c_str())) {
      while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
      ::closedir(d);
    }
    return n;
  }
  static uint64_t StatusKiB(pid_t pid, const char* key) {
    std::ifstream f(absl::StrCat("/proc/", pid, "/status"));
    std::string line;
    while (std::getline(f, line)) {
      uint64_t v;
      if (absl::StartsWith(line, key) &&
          absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::StripSuffix(line.substr(std::strlen(key)), "kB")), &v))
        return v;
    }
    return 0;
  }
  static uint64_t CpuTicks(pid_t pid) {
    std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const size_t p = s.rfind(')');
    if (p == std::string::npos) return 0;
    std::istringstream in(s.substr(p + 2));
    std::string field;
    uint64_t ut = 0, st = 0;
    for (int i = 3; i <= 15 && in >> field; ++i) {
      if (i == 14) ut = std::stoull(field);
      if (i == 15) st = std::stoull(field);
    }
    return ut + st;
  }
  // Starts vios on `toml` and waits for "vios ready".
  Proc& StartVios(const std::string& toml, const std::string& ctl) {
    Proc& p = Start({VIOS_BIN, "--threads", "2", "--config", toml, "--control", ctl}, "vios");
    EXPECT_TRUE(testproc::WaitFor(
        [&] { return !p.Running() || absl::StrContains(p.err(), "vios ready"); }, 60))
        << p.err().substr(0, 2000);
    return p;
  }
};

TEST_F(Density, NineThousandIdleDevices) {
  rlimit rl;
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &rl), 0);
  // 2 per device, plus what a reactor-ful vios and one guest need.
  const uint64_t n = std::min<uint64_t>(9000, (rl.rlim_max - 200) / 2);
  ASSERT_GE(n, 1000u) << "RLIMIT_NOFILE hard limit " << rl.rlim_max;
  MakeDisk(Path("idle.img"), 1 << 20);
  MakeDisk(Path("last.img"), 8 << 20);
  {
    std::ofstream f(Path("vios.toml"));
    for (uint64_t i = 0; i < n; ++i) {
      const bool shm = i % 2 == 0;
      f << "[[device]]\ntype = \"blk\"\nid = \"d" << i << "\"\npath = \""
        << Path(i + 1 == n ? "last.img" : "idle.img") << "\"\n[[attach]]\ndevice = \"d" << i << "\"\ntransport = \""
        << (shm ? "shm\"\npath" : "vhost-user\"\nsocket") << " = \"" << Path(absl::StrCat("d", i, ".sock")) << "\"\n";
    }
  }
  std::ofstream(Path("empty.toml")) << "";
  // The baseline: the same vios with no device.
  Proc& base = StartVios(Path("empty.toml"), Path("base.ctl"));
  ASSERT_TRUE(base.Running()) << base.err();
  const int base_fds = Fds(base.pid);
  const uint64_t base_rss = StatusKiB(base.pid, "VmRSS:");
  base.Signal(SIGTERM);
  ASSERT_EQ(base.Wait(30), 0);

  Proc& vios = StartVios(Path("vios.toml"), Path("ctl"));
  ASSERT_TRUE(vios.Running()) << vios.err().substr(0, 2000);
  const int fds = Fds(vios.pid);
  const uint64_t rss = StatusKiB(vios.pid, "VmRSS:");
  const double fds_per = static_cast<double>(fds - base_fds) / static_cast<double>(n);
  const double kib_per = static_cast<double>(rss - base_rss) / static_cast<double>(n);
  std::printf("%llu idle devices: %.2f fds and %.1f KiB resident each (vios %d fds, %llu KiB; empty %d, %llu KiB)\n",
              static_cast<unsigned long long>(n), fds_per, kib_per, fds, static_cast<unsigned long long>(rss),
              base_fds, static_cast<unsigned long long>(base_rss));
  // (16: what vios opens once, whatever the count: each reactor's epoll,
  // eventfd and timerfd appear with its first socket.)
  EXPECT_LE(fds - base_fds, static_cast<int>(2 * n) + 16) << "at most 2 descriptors per idle device";
#ifndef VIOPORT_SANITIZED
  EXPECT_LE(kib_per, 16.0) << "at most 16 KiB resident per idle device";
#endif
  // Idle: no CPU at all over 2 s (1 tick of slack for the measurement).
  const uint64_t t0 = CpuTicks(vios.pid);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_LE(CpuTicks(vios.pid) - t0, 1u) << "vios uses CPU while every device is idle";
  // The control API answers for all of them.
  auto list = vios::ControlCall(Path("ctl"), "device_list", json::object(), 60);
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ((*list)["result"].size(), n);
  auto reactors = vios::ControlCall(Path("ctl"), "reactor_list", json::object(), 60);
  ASSERT_TRUE(reactors.ok());
  EXPECT_EQ((*reactors)["result"][0]["devices"].size(), (n + 1) / 2);
  // A guest on the last device: verified data, on the same descriptors budget.
  const std::string last = absl::StrCat("d", n - 1);
  const std::string transport = (n - 1) % 2 == 0 ? "shm" : "vhost-user";
  Proc w = testproc::Spawn({VIOGUEST_BIN, "--quiet", "--transport", transport + ":" + Path(last + ".sock"), "blk",
                            "write", "--seed", "9", "--length", "4M"},
                           dir_, "vioguest");
  ASSERT_EQ(w.Wait(120), 0) << w.err();
  int64_t bad = 0;
  const std::string sum = testproc::CheckFile(Path("last.img"), 9, 0, 4 << 20, &bad);
  EXPECT_EQ(bad, -1);
  EXPECT_EQ(testproc::Field(w.out(), "checksum"), sum);
  auto stats = vios::ControlCall(Path("ctl"), "stats", {{"id", last}}, 30);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ((*stats)["result"][last]["bytes_written"], 4 << 20);
  vios.Signal(SIGTERM);
  EXPECT_EQ(vios.Wait(60), 0) << vios.err().substr(0, 2000);
}

// Where the descriptors run out, vios says which limit stopped it and how
// to raise it (here a hard limit of 64, set with prlimit).
TEST_F(Density, RunningOutOfDescriptorsNamesTheLimit) {
#ifdef VIOPORT_SANITIZED
  GTEST_SKIP() << "the sanitizer runtimes open files of their own (/proc/self/maps, a symbolizer) and report "
                  "false errors in a process that has no descriptor left";
#endif
  MakeDisk(Path("d.img"), 1 << 20);
  std::vector<std::string> argv = {"/usr/bin/prlimit", "--nofile=64:64", VIOS_BIN};
  for (int i = 0; i < 40; ++i)
    argv.insert(argv.end(), {"--device", absl::StrCat("blk,id=d", i, ",path=", Path("d.img")), "--attach",
                             absl::StrCat("d", i, ",transport=shm,path=", Path(absl::StrCat("d", i, ".sock")))});
  Proc p = testproc::Spawn(argv, dir_, "vios");
  ASSERT_EQ(p.Wait(30), 2) << p.err();
  EXPECT_TRUE(absl::StrContains(p.err(), "Too many open files")) << p.err();
  EXPECT_TRUE(absl::StrContains(p.err(), "vios may open 64 file descriptors, RLIMIT_NOFILE")) << p.err();
  EXPECT_TRUE(absl::StrContains(p.err(), "raise the hard limit")) << p.err();
}

}  // namespace
}  // namespace vioport
