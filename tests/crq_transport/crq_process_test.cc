// virtio over CRQ across three processes: crqd (the PowerVM hypervisor
// emulator), vios serving a blk device over a server adapter
// (--attach ...,transport=crq) and vioguest driving the client adapter
// (--transport crq:...). Assertions are on data: the writer's, the reader's
// and the backing file's checksums agree and the file holds the seeded
// pattern byte for byte.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "process.h"
#include "tool_output.h"
#include "vioport/guest/pattern.h"

namespace vioport {
namespace {

using testproc::Proc;
using testproc::Spawn;
using testproc::CheckFile;
using testproc::Field;


bool WaitForPath(const std::string& p, Proc& owner, double seconds = 10) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  struct stat st;
  while (std::chrono::steady_clock::now() < end) {
    if (::stat(p.c_str(), &st) == 0) return true;
    if (!owner.Running()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

class CrqProcess : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/vioport-crqproc-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (Proc* p : {&vios_, &crqd_})
      if (p->pid > 0 && p->Running()) {
        p->Signal(SIGKILL);
        p->Wait(10);
      }
    if (!HasFailure()) std::filesystem::remove_all(dir_);
    else std::fprintf(stderr, "logs kept in %s\n", dir_.c_str());
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  Proc Guest(const std::vector<std::string>& cmd) {
    std::vector<std::string> argv = {VIOGUEST_BIN, "--transport",
                                     "crq:" + Path("crqd.sock") + ",partition=1,unit=0x1000,liobn=0x1000",
                                     "--memory", "64", "--quiet"};
    argv.insert(argv.end(), cmd.begin(), cmd.end());
    Proc p = Spawn(argv, dir_, "vioguest");
    p.Wait(120);
    return p;
  }

  std::string dir_;
  Proc crqd_, vios_;
};

TEST_F(CrqProcess, BlkWriteVerifyOverCrqd) {
  const uint64_t bytes = 16 << 20;
  const std::string disk = Path("disk.img");
  {
    const int fd = ::open(disk.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, 64 << 20), 0);
    ::close(fd);
  }
  // One adapter pair: client partition 1 (64 MiB window), server partition 2.
  crqd_ = Spawn({CRQD_BIN, "--socket", Path("crqd.sock"), "--control", Path("crqd.ctl"), "--pair",
                 "client=1:0x1000:0x1000:64,server=2:0x2000:0x2000:1"},
                dir_, "crqd");
  ASSERT_GT(crqd_.pid, 0);
  ASSERT_TRUE(WaitForPath(Path("crqd.sock"), crqd_)) << crqd_.err();
  vios_ = Spawn({VIOS_BIN, "--device", "blk,id=d0,path=" + disk, "--attach",
                 "d0,transport=crq,crqd=" + Path("crqd.sock") +
                     ",partition=2,unit=0x2000,liobn=0x2000,remote-liobn=0x1000,remote-window-mib=64",
                 "--control", Path("vios.ctl")},
                dir_, "vios");
  ASSERT_GT(vios_.pid, 0);
  // The control socket is bound once every attachment exists (the server
  // adapter is registered).
  ASSERT_TRUE(WaitForPath(Path("vios.ctl"), vios_)) << vios_.err();

  Proc w = Guest({"blk", "write", "--seed", "7", "--length", "16M"});
  ASSERT_EQ(w.status, 0) << w.err() << w.out();
  Proc v = Guest({"blk", "verify", "--seed", "7", "--length", "16M"});
  ASSERT_EQ(v.status, 0) << v.err() << v.out();
  EXPECT_EQ(Field(v.out(), "verified"), "yes");
  EXPECT_EQ(Field(w.out(), "bytes"), absl::StrCat(bytes));
  EXPECT_EQ(Field(v.out(), "bytes"), absl::StrCat(bytes));

  vios_.Signal(SIGTERM);
  EXPECT_EQ(vios_.Wait(30), 0) << vios_.err();

  int64_t bad;
  const std::string file_sum = CheckFile(disk, 7, 0, bytes, &bad);
  EXPECT_EQ(bad, -1) << "backing file differs from the seeded data at byte " << bad;
  EXPECT_FALSE(Field(w.out(), "checksum").empty());
  EXPECT_EQ(Field(w.out(), "checksum"), file_sum);
  EXPECT_EQ(Field(v.out(), "checksum"), file_sum);

  crqd_.Signal(SIGTERM);
  EXPECT_EQ(crqd_.Wait(30), 0) << crqd_.err();
}

}  // namespace
}  // namespace vioport
