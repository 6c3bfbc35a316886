// SPDX-License-Identifier: Apache-2.0
// vioguest net tap: real tools over vioport's virtio-net. Two network
// namespaces of the test's own, each with a vioguest joining a tap to its
// own net device (over shm) on one vios switch; ping and a TCP stream
// (socat) cross from one namespace to the other through the devices and
// the switch, and the bytes arrive intact.
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "vioport/guest/pattern.h"
#include "vioport/testing/process.h"
#include "vioport/testing/process_test.h"
#include "vioport/testing/tool_output.h"

namespace vioport {
namespace {

using testproc::Proc;
using testproc::WaitFor;

std::string Which(const std::string& name) {
  for (const char* d : {"/usr/sbin/", "/usr/bin/", "/sbin/", "/bin/"})
    if (::access((std::string(d) + name).c_str(), X_OK) == 0) return std::string(d) + name;
  return "";
}

class NetTap : public testproc::ViosProcessTest {
 protected:
  NetTap() : ViosProcessTest("vioport-nettap", VIOS_BIN, VIOSCTL_BIN, VIOGUEST_BIN) {}

  void SetUp() override {
    ViosProcessTest::SetUp();
    if (::geteuid() != 0) GTEST_SKIP() << "needs root: network namespaces and tap devices";
    ip_ = Which("ip");
    socat_ = Which("socat");
    ASSERT_FALSE(ip_.empty()) << "ip (iproute2) not found";
    ASSERT_FALSE(socat_.empty()) << "socat not found: scripts/install-deps.sh installs it";
    for (const char* n : {"a", "b"}) {
      const std::string ns = absl::StrCat("vioport-nt", ::getpid(), n);
      ASSERT_EQ(Run({ip_, "netns", "add", ns}), 0);
      ns_.push_back(ns);
    }
  }
  void TearDown() override {
    // The vioguests and socats live in the namespaces: stop them first, then
    // delete the namespaces while the test's directory (where Run writes the
    // commands' output) still exists; the base TearDown removes it.
    for (Proc& p : procs_)
      if (p.pid > 0 && p.Running()) {
        p.Signal(SIGKILL);
        p.Wait(10);
      }
    for (const std::string& ns : ns_) Run({ip_, "netns", "del", ns});
    ViosProcessTest::TearDown();
  }

  int Run(const std::vector<std::string>& argv) {
    Proc p = testproc::Spawn(argv, Path(""), "cmd");
    const int st = p.Wait(30);
    if (st != 0) ADD_FAILURE() << absl::StrJoin(argv, " ") << ": exit " << st << "\n" << p.err();
    return st;
  }
  std::vector<std::string> In(int i, std::vector<std::string> cmd) {
    std::vector<std::string> v = {ip_, "netns", "exec", ns_[i]};
    v.insert(v.end(), cmd.begin(), cmd.end());
    return v;
  }

  std::string ip_, socat_;
  std::vector<std::string> ns_;
};

TEST_F(NetTap, PingAndTcpBetweenNamespacesThroughTheSwitch) {
  vios_args_ = {"--netdev", "switch,id=sw0",
                "--device", "net,id=n0,switch=sw0,mac=52:54:00:00:0a:01",
                "--device", "net,id=n1,switch=sw0,mac=52:54:00:00:0a:02",
                "--attach", "n0,transport=shm,path=" + Path("n0.sock"),
                "--attach", "n1,transport=shm,path=" + Path("n1.sock")};
  ASSERT_NO_FATAL_FAILURE(SpawnVios());
  const std::string addr[2] = {"10.88.0.1", "10.88.0.2"};
  std::vector<Proc*> taps;
  for (int i = 0; i < 2; ++i) {
    taps.push_back(&Start(In(i, {VIOGUEST_BIN, "--transport", "shm:" + Path(absl::StrCat("n", i, ".sock")), "net", "tap",
                                 "--ifname", "vt0"}),
                          "vioguest-tap"));
    ASSERT_TRUE(WaitFor([&] { return absl::StrContains(taps[i]->err(), "joined to the device") || !taps[i]->Running(); }, 20))
        << taps[i]->err();
    ASSERT_TRUE(taps[i]->Running()) << taps[i]->err();
    ASSERT_EQ(Run(In(i, {ip_, "link", "set", "lo", "up"})), 0);
    ASSERT_EQ(Run(In(i, {ip_, "addr", "add", addr[i] + "/24", "dev", "vt0"})), 0);
    // The tap's MAC must be the device's: mac-lock-style switches and the
    // guest's own filter expect it.
    ASSERT_EQ(Run(In(i, {ip_, "link", "set", "vt0", "address", i == 0 ? "52:54:00:00:0a:01" : "52:54:00:00:0a:02"})), 0);
    ASSERT_EQ(Run(In(i, {ip_, "link", "set", "vt0", "up"})), 0);
  }
  // ping (ARP first) from a to b, through two virtio-net devices and the switch.
  // busybox's ping (busybox-static is installed for the Linux-guest tests).
  Proc& ping = Start(In(0, {Which("busybox"), "ping", "-c", "5", "-i", "0.2", "-W", "2", addr[1]}), "ping");
  ASSERT_EQ(ping.Wait(60), 0) << ping.out() << ping.err();
  EXPECT_TRUE(absl::StrContains(ping.out(), "5 packets received")) << ping.out();

  // 8 MiB over TCP from a to b (offloads on: TSO frames cross whole).
  constexpr uint64_t kBytes = 8 << 20;
  {
    std::vector<uint8_t> data(kBytes);
    pattern::Fill(0x7a9, 0, data);
    FILE* f = std::fopen(Path("send.bin").c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fwrite(data.data(), 1, data.size(), f), data.size());
    std::fclose(f);
  }
  Proc& sink = Start(In(1, {socat_, "-u", "TCP-LISTEN:7001,reuseaddr", "OPEN:" + Path("recv.bin") + ",creat,trunc"}),
                     "socat-in");
  ::usleep(300 * 1000);
  Proc& src = Start(In(0, {socat_, "-u", "OPEN:" + Path("send.bin"), absl::StrCat("TCP:", addr[1], ":7001")}), "socat-out");
  ASSERT_EQ(src.Wait(60), 0) << src.err();
  ASSERT_EQ(sink.Wait(60), 0) << sink.err();
  ASSERT_EQ(std::filesystem::file_size(Path("recv.bin")), kBytes);
  int64_t mismatch = 0;
  testproc::CheckFile(Path("recv.bin"), 0x7a9, 0, kBytes, &mismatch);
  EXPECT_EQ(mismatch, -1) << "first byte that differs";
  EXPECT_GT(Stat("n0", "tx_bytes"), kBytes);
  EXPECT_GT(Stat("n1", "rx_bytes"), kBytes);
  EXPECT_EQ(Stat("n1", "drop_rx_full") + Stat("n1", "drop_rx_no_buffer"), 0u);
}

}  // namespace
}  // namespace vioport
