// SPDX-License-Identifier: Apache-2.0
// DPDK's testpmd against vios: testpmd's virtio-user PMD is the driver of a
// vios net device over vhost-user (memfd memory, --no-huge), and a vioguest
// on a second port of the same switch (over shm) is the other end. Each
// forwarding mode's packets are counted on both sides: testpmd's own
// forward statistics (typed "stop" into its interactive prompt), vios's
// counters, and what the vioguest sent, received and checked.
//
//  - Macswap: vioguest pingpong frames to testpmd, which swaps the MACs and
//    sends them back; every answer checked byte for byte (split and packed
//    rings, one and two queue pairs).
//  - Txonly: testpmd generates 64 B packets into vios; vios floods them to
//    the vioguest, which sinks them.
//  - Rxonly: the vioguest sends seeded frames; testpmd receives them.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "vioport/testing/process.h"
#include "vioport/testing/process_test.h"
#include "vioport/testing/tool_output.h"

namespace vioport {
namespace {

using testproc::Proc;
using testproc::WaitFor;

constexpr char kTestpmdMac[] = "02:00:00:00:00:aa";
constexpr char kGuestMac[] = "52:54:00:00:00:02";

std::string FindTestpmd() {
  for (const char* p : {"/usr/bin/dpdk-testpmd", "/usr/local/bin/dpdk-testpmd"})
    if (::access(p, X_OK) == 0) return p;
  return "";
}

// testpmd's "Accumulated forward statistics" after `stop`: RX-packets,
// TX-packets, TX-dropped. Absent: ~0.
struct FwdStats {
  uint64_t rx = ~0ull, tx = ~0ull, tx_dropped = ~0ull;
};
FwdStats ParseAccumulated(const std::string& out) {
  FwdStats s;
  const size_t at = out.rfind("Accumulated forward statistics");
  if (at == std::string::npos) return s;
  auto field = [&](const std::string& name) -> uint64_t {
    const size_t p = out.find(name, at);
    if (p == std::string::npos) return ~0ull;
    std::vector<std::string> w = absl::StrSplit(out.substr(p + name.size(), 32), ' ', absl::SkipEmpty());
    uint64_t v;
    return !w.empty() && absl::SimpleAtoi(w[0], &v) ? v : ~0ull;
  };
  s.rx = field("RX-packets:");
  s.tx = field("TX-packets:");
  s.tx_dropped = field("TX-dropped:");
  return s;
}

struct Config {
  std::string name;
  int queues;
  bool packed;
};

class Testpmd : public testproc::ViosProcessTest, public ::testing::WithParamInterface<Config> {
 protected:
  Testpmd() : ViosProcessTest("vioport-dpdk", VIOS_BIN, VIOSCTL_BIN, VIOGUEST_BIN) {}

  void SetUp() override {
    ViosProcessTest::SetUp();
    testpmd_ = FindTestpmd();
    ASSERT_FALSE(testpmd_.empty()) << "dpdk-testpmd not found: scripts/install-deps.sh installs dpdk-dev";
  }
  void TearDown() override {
    if (cmd_fd_ >= 0) ::close(cmd_fd_);
    ViosProcessTest::TearDown();
  }

  // vios: switch sw0; n0 over vhost-user for testpmd (memory=any: DPDK's
  // --no-huge memfds are not sealed), n1 over shm for the vioguest.
  void StartVios(int queues) {
    vios_args_ = {"--netdev", "switch,id=sw0",
                  "--device", absl::StrCat("net,id=n0,switch=sw0,mac=52:54:00:00:00:01,queues=", queues),
                  "--device", absl::StrCat("net,id=n1,switch=sw0,mac=", kGuestMac),
                  "--attach", "n0,transport=vhost-user,socket=" + Path("n0.sock") + ",memory=any",
                  "--attach", "n1,transport=shm,path=" + Path("n1.sock")};
    SpawnVios();
  }

  // testpmd in interactive mode, forwarding from the start; commands go to
  // its stdin through a FIFO.
  void StartTestpmd(const std::string& mode, int queues, bool packed) {
    static std::atomic<int> n{0};
    const std::string fifo = Path("testpmd.in");
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
    std::string vdev = absl::StrCat("net_virtio_user0,path=", Path("n0.sock"), ",queues=", queues, ",mac=", kTestpmdMac);
    if (queues > 1) absl::StrAppend(&vdev, ",cq=1");
    if (packed) absl::StrAppend(&vdev, ",packed_vq=1");
    // stdbuf: testpmd's stdout is a file here, line-buffered so its prompt
    // and statistics can be read while it runs.
    std::vector<std::string> argv = {
        "/usr/bin/stdbuf", "-oL", testpmd_, "--lcores", "0@0,1@1", "--main-lcore", "0", "--no-huge", "-m", "512", "--no-pci", "--file-prefix",
        absl::StrCat("vp", ::getpid(), "-", ++n), "--vdev", vdev, "--log-level", "lib.eal:error", "--", "-i",
        "--auto-start", "--forward-mode=" + mode, "--total-num-mbufs=8192", "--nb-cores=1",
        absl::StrCat("--rxq=", queues), absl::StrCat("--txq=", queues), absl::StrCat("--eth-peer=0,", kGuestMac)};
    // Opened here first (read-write, so without waiting for a reader): the
    // child's open of its stdin then finds a writer and does not block.
    cmd_fd_ = ::open(fifo.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(cmd_fd_, 0) << std::strerror(errno);
    testpmd_proc_ = &Keep(testproc::Spawn(argv, Path(""), "testpmd", fifo));
    ASSERT_TRUE(WaitFor([&] { return absl::StrContains(testpmd_proc_->out(), "Start automatic packet forwarding") ||
                                     !testpmd_proc_->Running(); },
                        60))
        << testpmd_proc_->out() << testpmd_proc_->err();
    ASSERT_TRUE(testpmd_proc_->Running()) << testpmd_proc_->out() << testpmd_proc_->err();
    // Its queues run at vios once the device is active.
    ASSERT_TRUE(WaitFor([&] { return Stat("n0", "vhost-user.activations") >= 1; }, 30)) << vios_->err();
  }

  void Type(const std::string& line) {
    const std::string l = line + "\n";
    ASSERT_EQ(::write(cmd_fd_, l.data(), l.size()), static_cast<ssize_t>(l.size()));
  }

  // "stop": testpmd's forwarding stops and it prints its statistics.
  FwdStats Stop() {
    Type("stop");
    FwdStats s;
    WaitFor([&] { return (s = ParseAccumulated(testpmd_proc_->out())).tx != ~0ull; }, 30);
    return s;
  }

  void Quit() {
    Type("quit");
    EXPECT_EQ(testpmd_proc_->Wait(30), 0) << testpmd_proc_->err();
  }

  std::string testpmd_;
  Proc* testpmd_proc_ = nullptr;
  int cmd_fd_ = -1;
};

// vioguest pingpong over shm -> switch -> vhost-user -> testpmd macswap ->
// back: every frame returns intact, and testpmd, vios and the vioguest
// count the same frames.
TEST_P(Testpmd, Macswap) {
  const Config c = GetParam();
  StartVios(c.queues);
  StartTestpmd("macswap", c.queues, c.packed);
  constexpr int kFrames = 2000;
  Proc& g = RunVioguest("shm:" + Path("n1.sock"),
                        {"net", "pingpong", "--dst", kTestpmdMac, "--seed", "11", "--count", std::to_string(kFrames),
                         "--size", "128"},
                        120);
  ASSERT_EQ(g.status, 0) << g.out() << g.err();
  EXPECT_TRUE(absl::StrContains(g.out(), absl::StrCat("frames=", kFrames, " lost=0 damaged=0"))) << g.out();
  const FwdStats s = Stop();
  EXPECT_EQ(s.rx, uint64_t{kFrames}) << testpmd_proc_->out();
  EXPECT_EQ(s.tx, uint64_t{kFrames}) << testpmd_proc_->out();
  EXPECT_EQ(Stat("n0", "rx_packets"), uint64_t{kFrames});
  EXPECT_EQ(Stat("n0", "tx_packets"), uint64_t{kFrames});
  EXPECT_EQ(Stat("n1", "tx_packets"), uint64_t{kFrames});
  EXPECT_EQ(Stat("n1", "rx_packets"), uint64_t{kFrames});
  Quit();
}

// testpmd txonly: 64 B packets to the vioguest's MAC. After "stop", vios
// has taken exactly what testpmd says it sent, and the vioguest received
// exactly what vios delivered to it (the rest counted as drops).
TEST_P(Testpmd, Txonly) {
  const Config c = GetParam();
  StartVios(c.queues);
  Proc& sink = StartVioguest("shm:" + Path("n1.sock"), {"net", "bench", "--mode", "rx", "--time", "8"});
  ASSERT_TRUE(WaitFor([&] { return Stat("n1", "shm.activations") >= 1; }, 20)) << sink.err();
  StartTestpmd("txonly", c.queues, c.packed);
  ::usleep(1500 * 1000);
  const FwdStats s = Stop();
  ASSERT_NE(s.tx, ~0ull) << testpmd_proc_->out();
  EXPECT_GT(s.tx, 1000u) << testpmd_proc_->out();
  // vios drains the ring after the last kick.
  EXPECT_TRUE(WaitFor([&] { return Stat("n0", "tx_packets") == s.tx; }, 20))
      << "testpmd sent " << s.tx << ", vios took " << Stat("n0", "tx_packets");
  ASSERT_EQ(sink.Wait(60), 0) << sink.err();
  uint64_t got = 0;
  ASSERT_TRUE(absl::SimpleAtoi(testproc::Field(sink.out(), "frames"), &got)) << sink.out();
  const uint64_t delivered = Stat("n1", "rx_packets");
  EXPECT_EQ(got, delivered) << "the vioguest counts what vios delivered";
  EXPECT_GT(delivered, 0u);
  EXPECT_EQ(delivered + Stat("n1", "drop_rx_full") + Stat("n1", "drop_rx_no_buffer") + Stat("n1", "drop_filtered"),
            s.tx)
      << "every packet testpmd sent was delivered or counted as dropped at the receiver";
  Quit();
}

// testpmd rxonly: the vioguest sends seeded frames to testpmd's MAC;
// testpmd receives every one that vios delivered, and vios accounts for
// every frame sent (at 50 kpps none is lost on an idle machine).
TEST_P(Testpmd, Rxonly) {
  const Config c = GetParam();
  StartVios(c.queues);
  StartTestpmd("rxonly", c.queues, c.packed);
  constexpr int kFrames = 5000;
  Proc& g = RunVioguest("shm:" + Path("n1.sock"),
                        {"net", "send", "--dst", kTestpmdMac, "--seed", "12", "--count", std::to_string(kFrames),
                         "--size", "256", "--rate", "50000"},
                        60);
  ASSERT_EQ(g.status, 0) << g.out() << g.err();
  // Every frame is delivered to testpmd's device or counted as dropped
  // there (a receiver that falls behind, as one can on a loaded machine
  // under ASan, loses frames at its bounded inbox, counted); testpmd and
  // vios agree on what was delivered.
  auto accounted = [&] {
    return Stat("n0", "rx_packets") + Stat("n0", "drop_rx_full") + Stat("n0", "drop_rx_no_buffer");
  };
  EXPECT_TRUE(WaitFor([&] { return accounted() == kFrames; }, 10)) << Viosctl("stats n0");
  const uint64_t delivered = Stat("n0", "rx_packets");
  const FwdStats s = Stop();
  EXPECT_EQ(s.rx, delivered) << testpmd_proc_->out();
  // On an idle machine every frame arrives; a busy one (a build beside the
  // test) has cost 11% at the receiver's inbox. Three quarters still shows
  // a receive path that works.
  EXPECT_GE(delivered, uint64_t{kFrames} * 3 / 4) << Viosctl("stats n0");
  EXPECT_EQ(Stat("n1", "tx_packets"), uint64_t{kFrames});
  Quit();
}

INSTANTIATE_TEST_SUITE_P(Rings, Testpmd,
                         ::testing::Values(Config{"Split", 1, false}, Config{"Packed", 1, true},
                                           Config{"TwoPairs", 2, false}),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace vioport
