// SPDX-License-Identifier: Apache-2.0
#pragma once

// The base of the whole-system tests that run vios, vioguest and emulators
// as child processes: a scratch directory in tmpfs named after the test
// (kept, and printed, when the test failed), the children kept until
// TearDown kills whatever still runs, and a sparse disk file.

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <algorithm>
#include <cstring>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"

#include "absl/strings/str_cat.h"
#include "vioport/testing/emulated_ports.h"
#include "vioport/testing/process.h"
#include "vioport/testing/tool_output.h"

namespace vioport::testproc {

// A stream connection to the Unix socket `path`, retried for `seconds`
// (the server may still be starting); -1 if it never connected.
inline int ConnectUnixStream(const std::string& path, double seconds) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return -1;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = -1;
  WaitFor(
      [&] {
        fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return true;
        if (fd >= 0) ::close(fd);
        fd = -1;
        return false;
      },
      seconds);
  return fd;
}

// Reads `fd` until what arrived contains `text`, EOF, or `seconds`; returns it all.
inline std::string ReadUntil(int fd, const std::string& text, double seconds) {
  std::string got;
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (!absl::StrContains(got, text) && std::chrono::steady_clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[256];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  return got;
}

class ProcessTest : public ::testing::Test {
 protected:
  // `prefix` names the scratch directory: /dev/shm/PREFIX-PID-TESTNAME.
  explicit ProcessTest(std::string prefix) : prefix_(std::move(prefix)) {}

  void SetUp() override {
    const char* base = std::filesystem::exists("/dev/shm") ? "/dev/shm" : "/tmp";  // tmpfs: fast files
    // A value-parameterized test's name has slashes ("Case/Shm"): one directory level.
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::replace(name.begin(), name.end(), '/', '.');
    dir_ = absl::StrCat(base, "/", prefix_, "-", ::getpid(), "-", name);
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    for (Proc& p : procs_)
      if (p.pid > 0 && p.Running()) {
        p.Signal(SIGKILL);
        p.Wait(10);
      }
    if (!HasFailure()) std::filesystem::remove_all(dir_);
    else std::fprintf(stderr, "test files kept in %s\n", dir_.c_str());
  }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  void MakeDisk(const std::string& path, uint64_t bytes) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(bytes)), 0);
    ::close(fd);
  }

  // Keeps the child; TearDown kills it if it still runs.
  Proc& Keep(Proc p) {
    procs_.push_back(std::move(p));
    return procs_.back();
  }

  Proc& Start(const std::vector<std::string>& argv, const std::string& tag) { return Keep(Spawn(argv, dir_, tag)); }
  // Waits for every path to exist while `owner` runs.
  static bool WaitForPaths(const std::vector<std::string>& paths, Proc& owner, double seconds = 10) {
    return WaitFor(
        [&] {
          if (!owner.Running()) return true;
          return std::all_of(paths.begin(), paths.end(), [](const std::string& p) { return std::filesystem::exists(p); });
        },
        seconds) &&
           owner.Running();
  }

  static std::vector<std::string> BlkCmd(const std::string& op, uint64_t seed, uint64_t offset, uint64_t length,
                                         double reconnect_timeout = 0) {
    std::vector<std::string> cmd = {"blk", op, "--seed", absl::StrCat(seed), "--offset", absl::StrCat(offset),
                                    "--length", absl::StrCat(length)};
    if (reconnect_timeout > 0) cmd.insert(cmd.end(), {"--reconnect-timeout", absl::StrCat(reconnect_timeout)});
    return cmd;
  }

  // A finished `blk write` and a later `blk verify` of [offset, offset+length)
  // with `seed`: both succeeded, the reader saw the seeded data, and the
  // writer's, the reader's and the backing file's checksums are one.
  void ExpectWrittenAndVerified(const Proc& w, const Proc& v, const std::string& disk, uint64_t seed, uint64_t offset,
                                uint64_t length) {
    EXPECT_EQ(w.status, 0) << w.err() << w.out();
    EXPECT_EQ(v.status, 0) << v.err() << v.out();
    EXPECT_EQ(Field(w.out(), "bytes"), absl::StrCat(length)) << w.out();
    EXPECT_EQ(Field(v.out(), "bytes"), absl::StrCat(length)) << v.out();
    EXPECT_EQ(Field(v.out(), "verified"), "yes") << v.out();
    int64_t bad;
    const std::string file_sum = CheckFile(disk, seed, offset, length, &bad);
    EXPECT_EQ(bad, -1) << "backing file differs from the seeded data at byte " << bad;
    EXPECT_EQ(Field(w.out(), "checksum"), file_sum);
    EXPECT_EQ(Field(v.out(), "checksum"), file_sum);
  }
  // A control client (viosctl, crqctl, ...): its output and exit code.
  std::string Ctl(const char* bin, const std::string& ctl, const std::string& cmd, int* code) {
    std::vector<std::string> argv = {bin, "--control", ctl};
    for (absl::string_view w : absl::StrSplit(cmd, ' ', absl::SkipEmpty())) argv.emplace_back(w);
    Proc p = Spawn(argv, dir_, std::filesystem::path(bin).filename().string());
    p.Wait(30);
    if (code) *code = p.status;
    return p.out() + p.err();
  }
  std::string dir_;
  std::deque<Proc> procs_;

 private:
  std::string prefix_;
};

// A ProcessTest around one vios (its control socket at Path("vios.ctl")):
// starting it from vios_args_, viosctl and its counters, its log.
class ViosProcessTest : public ProcessTest {
 protected:
  ViosProcessTest(std::string prefix, std::string vios_bin, std::string viosctl_bin, std::string vioguest_bin)
      : ProcessTest(std::move(prefix)),
        vios_bin_(std::move(vios_bin)),
        viosctl_bin_(std::move(viosctl_bin)),
        vioguest_bin_(std::move(vioguest_bin)) {}

  // vioguest --transport `transport` CMD..., in the background.
  Proc& StartVioguest(const std::string& transport, const std::vector<std::string>& cmd) {
    std::vector<std::string> argv = {vioguest_bin_, "--transport", transport};
    argv.insert(argv.end(), cmd.begin(), cmd.end());
    return Start(argv, "vioguest");
  }
  // The same, waited for (bounded).
  Proc& RunVioguest(const std::string& transport, const std::vector<std::string>& cmd, double timeout) {
    Proc& g = StartVioguest(transport, cmd);
    g.Wait(timeout);
    return g;
  }
  // `blk write`, then `blk verify` by a fresh vioguest, then the file.
  void WriteAndVerifyOver(const std::string& transport, const std::string& disk, uint64_t seed, uint64_t offset,
                          uint64_t length, double timeout) {
    Proc& w = RunVioguest(transport, BlkCmd("write", seed, offset, length), timeout);
    ASSERT_EQ(w.status, 0) << w.err() << w.out();
    Proc& v = RunVioguest(transport, BlkCmd("verify", seed, offset, length), timeout);
    ExpectWrittenAndVerified(w, v, disk, seed, offset, length);
  }

  // vios with vios_args_ (after the binary) plus --control; waits for its
  // control socket, which exists once every attachment does.
  void SpawnVios() {
    std::filesystem::remove(Path("vios.ctl"));  // left behind by a killed vios
    std::vector<std::string> argv = {vios_bin_};
    argv.insert(argv.end(), vios_args_.begin(), vios_args_.end());
    argv.insert(argv.end(), {"--control", Path("vios.ctl")});
    vios_ = &Start(argv, "vios");
    ASSERT_GT(vios_->pid, 0);
    ASSERT_TRUE(WaitForPaths({Path("vios.ctl")}, *vios_)) << vios_->err();
  }
  std::string Viosctl(const std::string& cmd, int* code = nullptr) {
    return Ctl(viosctl_bin_.c_str(), Path("vios.ctl"), cmd, code);
  }
  // viosctl stats: counter `id.name` (e.g. "d0", "crq.closes"); ~0 if absent.
  uint64_t Stat(const std::string& id, const std::string& name) { return StatValue(Viosctl("stats " + id), id, name); }
  // Waits until vios has written `bytes` to device `id` while `writer` runs:
  // the writer has made progress and is mid-way. False if it ended first.
  bool WaitForBytesWritten(const std::string& id, uint64_t bytes, Proc& writer, double seconds = 90) {
    uint64_t got = 0;
    WaitFor(
        [&] {
          got = Stat(id, "bytes_written");
          return (got != ~0ull && got >= bytes) || !writer.Running();
        },
        seconds);
    return got != ~0ull && got >= bytes && writer.Running();
  }
  // The channel emulators `ports` needs (crqd, xenemud), each up once its
  // sockets exist; a null binary: built without that emulator.
  void StartEmulators(const EmulatedPorts& ports, const char* crqd_bin, const char* xenemud_bin) {
    if (ports.needs_crqd()) {
      ASSERT_NE(crqd_bin, nullptr) << "built without crqd";
      Proc& crqd = Start(ports.CrqdArgv(crqd_bin), "crqd");
      ASSERT_TRUE(WaitForPaths(ports.CrqdPaths(), crqd)) << crqd.err();
    }
    if (ports.needs_xen()) {
      ASSERT_NE(xenemud_bin, nullptr) << "built without xenemud";
      Proc& xen = Start(ports.XenemudArgv(xenemud_bin), "xenemud");
      ASSERT_TRUE(WaitForPaths(ports.XenemudPaths(), xen)) << xen.err();
    }
  }
  // Waits until `list` shows device `id` waiting for a guest (the last one
  // left); `*list` gets what vios listed last.
  bool WaitDeviceWaiting(const std::string& id, std::string* list, double seconds = 15) {
    return WaitFor(
        [&] {
          *list = Viosctl("list");
          for (absl::string_view line : absl::StrSplit(*list, '\n')) {
            std::vector<absl::string_view> w = absl::StrSplit(line, ' ', absl::SkipEmpty());
            if (!w.empty() && w[0] == id) return std::find(w.begin(), w.end(), "waiting") != w.end();
          }
          return false;
        },
        seconds);
  }
  // Polls vios's log until it has `text` (bounded).
  bool ViosLogHas(const std::string& text, double seconds = 10) {
    return WaitFor([&] { return absl::StrContains(vios_->err(), text); }, seconds);
  }

  Proc* vios_ = nullptr;
  std::vector<std::string> vios_args_;  // without the binary and --control

 private:
  std::string vios_bin_, viosctl_bin_, vioguest_bin_;
};

}  // namespace vioport::testproc
