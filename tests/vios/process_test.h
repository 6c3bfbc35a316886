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
#include "process.h"
#include "tool_output.h"

namespace vioport::testproc {

// Polls `pred` every 10 ms until it holds (true) or `seconds` pass (false).
template <typename Pred>
inline bool WaitFor(Pred pred, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

inline std::vector<uint8_t> ReadAll(const std::string& path) {
  std::vector<uint8_t> out;
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return out;
  uint8_t buf[65536];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.insert(out.end(), buf, buf + n);
  ::close(fd);
  return out;
}



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
    dir_ = absl::StrCat(base, "/", prefix_, "-", ::getpid(), "-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
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

}  // namespace vioport::testproc
