#pragma once

// The base of the whole-system tests that run vios, vioguest and emulators
// as child processes: a scratch directory in tmpfs named after the test
// (kept, and printed, when the test failed), the children kept until
// TearDown kills whatever still runs, and a sparse disk file.

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "process.h"

namespace vioport::testproc {

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

  std::string dir_;
  std::deque<Proc> procs_;

 private:
  std::string prefix_;
};

}  // namespace vioport::testproc
