// SPDX-License-Identifier: Apache-2.0
// Whole-system network tests: one real vios with a learning switch (sw0)
// and virtio-net devices as its ports, and vioguest processes as the
// guests. Every frame a test counts is a seeded test frame (vioguest net
// send) that the receiving vioguest (net recv) checks byte for byte, once
// each; the tests then check vios's counters (viosctl stats) agree.
//
//  - AcrossTransports: four ports, over shm, vhost-user, crq (crqd) and Xen
//    (xenemud), every ordered pair both ways, 64 and 1500 byte frames.
//  - MacLock, StalledReceiver, LinkDown, Vlans: the switch's and the
//    device's policies, over shm.
//
// A device has one driver, so a port runs one vioguest at a time: a
// receiver is started first and waited for (its device activated), then the
// sender; each vioguest exits when done, and the next one on that port
// waits until vios (and crqd, xenemud) saw it go.
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "control_client.h"
#include "vioport/testing/emulated_ports.h"
#include "vioport/testing/process.h"
#include "vioport/testing/process_test.h"
#include "vioport/testing/tool_output.h"

namespace vioport {
namespace {

using testproc::Field;
using testproc::Proc;
using Counters = std::map<std::string, uint64_t>;

// A MAC no port has: frames to it are unknown unicast (flooded).
constexpr char kNobody[] = "02:00:00:00:00:fe";

struct Port {
  std::string id;         // n0
  std::string mac;        // 52:54:00:00:00:01
  std::string transport;  // shm, vhost-user, crq, xen
  std::string guest;      // vioguest --transport
  uint32_t crq_partition = 0;  // crq: the client partition (crqd frees it when the guest left)
};

class NetSystem : public testproc::ViosProcessTest {
 protected:
  NetSystem() : ViosProcessTest("vioport-net", VIOS_BIN, VIOSCTL_BIN, VIOGUEST_BIN) {}

  // ---- Setup ---------------------------------------------------------------------

  // A net device `id` on sw0 with MAC 52:54:00:00:00:NN, attached over
  // `transport`; `extra` goes after the --device options (",vlan=10").
  Port AddPort(const std::string& id, int nn, const std::string& transport, const std::string& extra = "") {
    const testproc::PortAttach at = ports_.Attach(id, transport);
    EXPECT_FALSE(at.attach.empty()) << "no such transport " << transport;
    Port p{id, absl::StrFormat("52:54:00:00:00:%02x", nn), transport, at.guest, at.crq_partition};
    if (vios_args_.empty()) vios_args_ = {"--netdev", "switch,id=sw0"};
    vios_args_.insert(vios_args_.end(), {"--device", absl::StrCat("net,id=", id, ",switch=sw0,mac=", p.mac, extra),
                                         "--attach", testproc::EmulatedPorts::AttachArg(id, at)});
    return p;
  }

  // The channel emulators the ports need (crqd with one adapter pair per
  // crq port, xenemud), then vios.
  void StartAll() {
#ifdef NET_SYSTEM_EMULATORS
    ASSERT_NO_FATAL_FAILURE(StartEmulators(ports_, CRQD_BIN, XENEMUD_BIN));
#else
    ASSERT_NO_FATAL_FAILURE(StartEmulators(ports_, nullptr, nullptr));
#endif
    SpawnVios();
  }

  // ---- vios's counters -----------------------------------------------------------------

  // Every "ID.NAME VALUE" of `stats ID`, keyed by NAME (straight from the
  // control socket, no viosctl process: for polling).
  Counters Stats(const std::string& id) {
    Counters c;
    const std::string prefix = id + ".";
    for (absl::string_view line : absl::StrSplit(vios::StatsText(Path("vios.ctl"), id), '\n')) {
      std::vector<absl::string_view> kv = absl::StrSplit(line, ' ');
      uint64_t v;
      if (kv.size() == 2 && absl::ConsumePrefix(&kv[0], prefix) && absl::SimpleAtoi(kv[1], &v)) c[std::string(kv[0])] = v;
    }
    return c;
  }
  uint64_t Counter(const std::string& id, const std::string& name) {
    const Counters c = Stats(id);
    auto it = c.find(name);
    return it == c.end() ? ~0ull : it->second;
  }
  // after[name] - before[name]; a counter that vanished reads as a huge delta.
  static uint64_t Delta(const Counters& before, const Counters& after, const std::string& name) {
    auto a = after.find(name);
    auto b = before.find(name);
    if (a == after.end()) return ~0ull;
    return a->second - (b == before.end() ? 0 : b->second);
  }
  // Every drop counter of the port (device and switch) that moved.
  static std::string MovedDrops(const Counters& before, const Counters& after) {
    std::vector<std::string> moved;
    for (const auto& [name, v] : after)
      if ((absl::StartsWith(name, "drop_") || absl::StartsWith(name, "switch.drop_")) && Delta(before, after, name) != 0)
        moved.push_back(absl::StrCat(name, " +", Delta(before, after, name)));
    return absl::StrJoin(moved, ", ");
  }

  // ---- Guests --------------------------------------------------------------------

  Proc& Guest(const Port& p, std::vector<std::string> cmd) {
    std::vector<std::string> argv = {VIOGUEST_BIN, "--quiet", "--transport", p.guest};
    argv.insert(argv.end(), cmd.begin(), cmd.end());
    return Start(argv, "vioguest-" + p.id);
  }
  // Waits until `p`'s device is activated by the guest `g` just started
  // (its transport's activations counter passed `before`); false if `g`
  // ended first or it took too long.
  bool WaitActivated(const Port& p, uint64_t before, Proc& g) {
    const std::string name = p.transport + ".activations";
    return testproc::WaitFor(
               [&] {
                 const uint64_t n = Counter(p.id, name);
                 return (n != ~0ull && n > before) || !g.Running();
               },
               20) &&
           g.Running();
  }
  // `net recv`, started and waited for until the device is live: a sender
  // may start then.
  Proc& StartRecv(const Port& p, uint64_t seed, uint64_t count, int timeout_s) {
    const uint64_t before = Counter(p.id, p.transport + ".activations");
    Proc& g = Guest(p, {"net", "recv", "--seed", absl::StrCat(seed), "--count", absl::StrCat(count), "--timeout",
                        absl::StrCat(timeout_s)});
    EXPECT_TRUE(WaitActivated(p, before, g)) << p.id << " (" << p.transport << "): the receiver never activated: "
                                             << g.err() << g.out() << "\nvios:\n" << vios_->err();
    return g;
  }
  Proc& StartSend(const Port& p, uint64_t seed, uint64_t count, size_t size, const std::string& dst, uint64_t rate,
                  const std::vector<std::string>& more = {}) {
    std::vector<std::string> cmd = {"net", "send", "--seed", absl::StrCat(seed), "--count", absl::StrCat(count),
                                    "--size", absl::StrCat(size), "--dst", dst, "--rate", absl::StrCat(rate)};
    cmd.insert(cmd.end(), more.begin(), more.end());
    return Guest(p, cmd);
  }
  // Waits until vios and the channel let `p` take a new guest: vios lists
  // it as waiting, crqd freed the client partition, Xen unmapped its pages.
  void WaitGone(const Port& p) {
    std::string list;
    const bool gone = WaitDeviceWaiting(p.id, &list);
    ASSERT_TRUE(gone) << p.id << " still has a guest:\n" << list;
#ifdef NET_SYSTEM_EMULATORS
    if (p.transport == "crq") {
      std::string parts;
      ASSERT_TRUE(testproc::WaitFor(
          [&] {
            parts = Ctl(CRQCTL_BIN, Path("crqd.ctl"), "partitions", nullptr);
            return !absl::StrContains(parts, absl::StrCat("partition ", p.crq_partition, "\n"));
          },
          15))
          << "crqd still lists partition " << p.crq_partition << ":\n" << parts;
    }
#endif
    if (p.transport == "xen") {
      ASSERT_TRUE(testproc::WaitFor([&] { return Counter(p.id, "xen.mapped_pages") == 0; }, 15))
          << p.id << ": vios still maps the guest's pages:\n" << vios::StatsText(Path("vios.ctl"), p.id);
    }
  }
  // A finished `net recv` got all `count` frames intact, once each.
  static void ExpectVerified(Proc& recv, uint64_t count, const std::string& what) {
    recv.Wait(60);
    EXPECT_EQ(recv.status, 0) << what << ": " << recv.out() << recv.err();
    EXPECT_EQ(Field(recv.out(), "verified"), "yes") << what << ": " << recv.out();
    EXPECT_EQ(Field(recv.out(), "frames"), absl::StrCat(count)) << what << ": " << recv.out();
  }
  // A finished `net recv` that was to get nothing of its seed.
  static void ExpectNothing(Proc& recv, const std::string& what) {
    recv.Wait(60);
    EXPECT_EQ(recv.status, 1) << what << ": " << recv.out() << recv.err();
    EXPECT_EQ(Field(recv.out(), "frames"), "0") << what << ": " << recv.out();
    // Nor anything else: no frame of another seed either.
    EXPECT_TRUE(absl::StrContains(recv.out(), " 0 other frames")) << what << ": " << recv.out();
  }
  // A receiver that is to get nothing still listens once the senders are
  // done (else frames after it left would prove nothing).
  static void ExpectListening(Proc& recv, const std::string& what) {
    EXPECT_TRUE(recv.Running()) << what << ": the receiver left before the senders were done: " << recv.out();
  }
  static void ExpectSent(Proc& send, uint64_t count, const std::string& what) {
    send.Wait(60);
    EXPECT_EQ(send.status, 0) << what << ": " << send.out() << send.err();
    EXPECT_EQ(Field(send.out(), "frames"), absl::StrCat(count)) << what << ": " << send.out();
  }
  // Every port sends one frame to nobody, one at a time while no other port
  // has a guest: the switch learns each MAC (the flooded frames reach only
  // ports without a guest, which keep none of them).
  void LearnAll(const std::vector<Port>& ports) {
    for (const Port& p : ports) {
      Proc& g = StartSend(p, 1, 1, 64, kNobody, 1000);
      ExpectSent(g, 1, p.id + " learning send");
      WaitGone(p);
    }
    EXPECT_EQ(Counter("sw0", "learnt"), ports.size()) << vios::StatsText(Path("vios.ctl"), "sw0");
  }

  testproc::EmulatedPorts ports_{[this](const std::string& n) { return Path(n); }};
};

// ---- 1. Every transport with every other ---------------------------------------------------

// Frames a second per sender (vioguest sends bursts of 32 at that average).
// vios serves every port from one event loop, and a receiving port's switch
// inbox holds 512 frames per sender: while the loop is busy elsewhere (a
// sender's turn, another transport's work, or vios not scheduled on a loaded
// machine), frames wait there, and what does not fit is dropped and counted
// (drop_rx_full). At kRate that takes a stall of over 25 ms. Exchanges with
// a crq port go at kCrqRate, one at a time: a crq port is slower (every
// byte an H_COPY_RDMA through crqd) and holds the loop for as long as it
// has work; TwoPairsAtOnceAtFullRate shows what happens faster.
constexpr uint64_t kRate = 10000;
constexpr uint64_t kCrqRate = 2000;
constexpr uint64_t kFullRate = 40000;

struct Exchange {
  int from, to;
  size_t size;
  uint64_t seed;
};

class NetAcrossTransports : public NetSystem {
 protected:
  void SetUp() override {
    NetSystem::SetUp();
#ifndef NET_SYSTEM_EMULATORS
    GTEST_SKIP() << "built without crqd and xenemud";
#endif
    ports_ = {AddPort("n0", 1, "shm"), AddPort("n1", 2, "vhost-user"), AddPort("n2", 3, "crq"),
              AddPort("n3", 4, "xen")};
    ASSERT_NO_FATAL_FAILURE(StartAll());
    ASSERT_NO_FATAL_FAILURE(LearnAll(ports_));
  }
  uint64_t RateOf(const Exchange& e) const {
    return ports_[e.from].transport == "crq" || ports_[e.to].transport == "crq" ? crq_rate_ : rate_;
  }
  // Exchanges on disjoint ports, at once: every receiver first, then every sender.
  void Round(const std::vector<Exchange>& round, uint64_t count) {
    std::vector<Proc*> recvs, sends;
    for (const Exchange& e : round) recvs.push_back(&StartRecv(ports_[e.to], e.seed, count, 10));
    for (const Exchange& e : round)
      sends.push_back(&StartSend(ports_[e.from], e.seed, count, e.size, ports_[e.to].mac, RateOf(e)));
    for (size_t i = 0; i < round.size(); ++i) {
      const Exchange& e = round[i];
      const std::string what = absl::StrCat(ports_[e.from].id, " (", ports_[e.from].transport, ") -> ",
                                            ports_[e.to].id, " (", ports_[e.to].transport, "), ", e.size, " B");
      ExpectSent(*sends[i], count, what);
      ExpectVerified(*recvs[i], count, what);
    }
    for (const Exchange& e : round) {
      WaitGone(ports_[e.from]);
      WaitGone(ports_[e.to]);
    }
  }
  // Every ordered pair once per size: one pair at a time, or (`concurrent`)
  // six rounds of two disjoint pairs at once.
  void AllPairs(uint64_t count, bool concurrent) {
    const int rounds[6][2][2] = {{{0, 1}, {2, 3}}, {{1, 0}, {3, 2}}, {{0, 2}, {1, 3}},
                                 {{2, 0}, {3, 1}}, {{0, 3}, {1, 2}}, {{3, 0}, {2, 1}}};
    std::vector<Counters> before;
    for (const Port& p : ports_) before.push_back(Stats(p.id));
    for (size_t size : {size_t{64}, size_t{1500}})
      for (const auto& r : rounds) {
        std::vector<Exchange> round;
        for (const auto& pair : r)
          round.push_back({pair[0], pair[1], size,
                           1000 + 100 * static_cast<uint64_t>(pair[0]) + 10 * static_cast<uint64_t>(pair[1]) +
                               (size == 64 ? 0 : 1)});
        if (concurrent) {
          Round(round, count);
        } else {
          for (const Exchange& e : round) Round({e}, count);
        }
        if (HasFatalFailure()) return;
      }
    // Each port sent `count` frames of each size to each of three others,
    // and got as many: all unicast to a learnt port, none dropped.
    const uint64_t frames = 3 * 2 * count;
    const uint64_t bytes = 3 * count * (64 + 1500);
    for (size_t i = 0; i < ports_.size(); ++i) {
      const Counters after = Stats(ports_[i].id);
      const std::string& id = ports_[i].id;
      SCOPED_TRACE(id + " over " + ports_[i].transport);
      EXPECT_EQ(Delta(before[i], after, "rx_packets"), frames);
      EXPECT_EQ(Delta(before[i], after, "rx_bytes"), bytes);
      EXPECT_EQ(Delta(before[i], after, "tx_packets"), frames);
      EXPECT_EQ(Delta(before[i], after, "tx_bytes"), bytes);
      EXPECT_EQ(Delta(before[i], after, "switch.unicast"), frames);
      EXPECT_EQ(Delta(before[i], after, "switch.flooded"), 0u);
      EXPECT_EQ(MovedDrops(before[i], after), "");
      EXPECT_EQ(Delta(before[i], after, ports_[i].transport + ".ring_errors"), 0u);
    }
    EXPECT_EQ(Counter("sw0", "learnt"), ports_.size());
  }

  std::vector<Port> ports_;
  uint64_t rate_ = kRate, crq_rate_ = kCrqRate;
};

TEST_F(NetAcrossTransports, EveryPairBothWaysVerified) { AllPairs(300, /*concurrent=*/false); }

// Two pairs at once, every one at kFullRate, crq included. It failed before
// each port's work per loop turn was bounded (a crq partition's spin is
// capped at 20 windows, a net device delivers at most kRxBudget frames and
// takes at most kTxBudget chains a turn, and a receiver's inbox holds twice
// that per sender): a busy crq port starved its neighbours on vios's one
// event loop (drop_rx_full).
TEST_F(NetAcrossTransports, TwoPairsAtOnceAtFullRate) {
  rate_ = crq_rate_ = kFullRate;
  AllPairs(300, /*concurrent=*/true);
}

// ---- 2. mac-lock ------------------------------------------------------------------------------

TEST_F(NetSystem, MacLockDropsSpoofedFrames) {
  const Port locked = AddPort("n0", 1, "shm", ",mac-lock=on");
  const Port other = AddPort("n1", 2, "shm");
  ASSERT_NO_FATAL_FAILURE(StartAll());
  ASSERT_NO_FATAL_FAILURE(LearnAll({locked, other}));  // the locked port's own MAC passes
  const std::string spoof = "52:54:00:00:00:99";
  constexpr uint64_t kCount = 500;
  const Counters l0 = Stats(locked.id), o0 = Stats(other.id);
  // Spoofed frames to the other port's MAC, then broadcast: none gets through.
  Proc& recv = StartRecv(other, 21, kCount, 2);
  Proc& uni = StartSend(locked, 21, kCount, 64, other.mac, kRate, {"--src", spoof});
  ExpectSent(uni, kCount, "spoofed unicast");
  WaitGone(locked);
  Proc& bcast = StartSend(locked, 21, kCount, 1500, "ff:ff:ff:ff:ff:ff", kRate, {"--src", spoof});
  ExpectSent(bcast, kCount, "spoofed broadcast");
  ExpectListening(recv, "the other port, spoofed frames");
  ExpectNothing(recv, "the other port, spoofed frames");
  WaitGone(locked);
  WaitGone(other);
  const Counters l1 = Stats(locked.id), o1 = Stats(other.id);
  EXPECT_EQ(Delta(l0, l1, "tx_packets"), 2 * kCount);  // the device took them ...
  EXPECT_EQ(Delta(l0, l1, "switch.drop_spoofed"), 2 * kCount);  // ... and the switch dropped each
  EXPECT_EQ(Delta(l0, l1, "switch.unicast") + Delta(l0, l1, "switch.flooded"), 0u);
  EXPECT_EQ(Delta(o0, o1, "rx_packets"), 0u);
  EXPECT_EQ(MovedDrops(o0, o1), "");
  EXPECT_EQ(Counter("sw0", "learnt"), 2u) << "the spoofed source was learnt";

  // The locked port's own MAC still passes.
  Proc& ok_recv = StartRecv(other, 22, kCount, 20);
  Proc& ok_send = StartSend(locked, 22, kCount, 1500, other.mac, kRate);
  ExpectSent(ok_send, kCount, "own MAC");
  ExpectVerified(ok_recv, kCount, "own MAC");
  EXPECT_EQ(Counter(locked.id, "switch.drop_spoofed"), 2 * kCount);
}

// ---- 3. A receiver that never reads ---------------------------------------------------------------

TEST_F(NetSystem, StalledReceiverDoesNotStopTheOthers) {
  const Port tx = AddPort("n0", 1, "shm");
  const Port rx = AddPort("n1", 2, "shm");
  const Port stalled = AddPort("n2", 3, "shm");
  const Port idle = AddPort("n3", 4, "shm");  // attached, never a guest
  ASSERT_NO_FATAL_FAILURE(StartAll());
  ASSERT_NO_FATAL_FAILURE(LearnAll({tx, rx, stalled}));
  constexpr uint64_t kCount = 3000;
  // The stalled guest set its device up (256 receive buffers posted) and
  // then stops: it never reads or posts again.
  Proc& frozen = StartRecv(stalled, 99, 1000000, 60);
  frozen.Signal(SIGSTOP);
  const Counters r0 = Stats(rx.id), s0 = Stats(stalled.id), i0 = Stats(idle.id);
  Proc& recv = StartRecv(rx, 31, kCount, 20);
  Proc& send = StartSend(tx, 31, kCount, 64, "ff:ff:ff:ff:ff:ff", kRate);
  ExpectSent(send, kCount, "broadcast stream");
  ExpectVerified(recv, kCount, "the reading port, beside a stalled one");
  // Everything the stalled port could not take is accounted for: at most
  // its ring (256 buffers) got frames, its inbox holds at most 512 from one
  // sender (Inbox::Limits::per_source) and the device at most a batch (64)
  // waiting for buffers; the rest was dropped and counted.
  constexpr uint64_t kHeld = 512 + 64;
  ASSERT_TRUE(testproc::WaitFor(
      [&] {
        const Counters s = Stats(stalled.id);
        return Delta(s0, s, "rx_packets") + Delta(s0, s, "drop_rx_full") >= kCount - kHeld;
      },
      10))
      << vios::StatsText(Path("vios.ctl"), stalled.id);
  const Counters r1 = Stats(rx.id), s1 = Stats(stalled.id), i1 = Stats(idle.id);
  EXPECT_EQ(Delta(r0, r1, "rx_packets"), kCount);
  EXPECT_EQ(MovedDrops(r0, r1), "");
  EXPECT_LE(Delta(s0, s1, "rx_packets"), 256u);
  EXPECT_LE(Delta(s0, s1, "rx_packets") + Delta(s0, s1, "drop_rx_full"), kCount);
  EXPECT_GE(Delta(s0, s1, "rx_packets") + Delta(s0, s1, "drop_rx_full"), kCount - kHeld);
  EXPECT_GT(Delta(s0, s1, "drop_rx_full"), 0u);
  EXPECT_EQ(Delta(i0, i1, "rx_packets"), 0u);
  // A port with no driver counts what it could not deliver.
  EXPECT_TRUE(testproc::WaitFor([&] { return Delta(i0, Stats(idle.id), "drop_no_driver") == kCount; }, 10))
      << vios::StatsText(Path("vios.ctl"), idle.id);
  std::fprintf(stderr, "stalled port: rx_packets +%llu drop_rx_full +%llu; port without a guest: drop_rx_full +%llu\n",
               static_cast<unsigned long long>(Delta(s0, s1, "rx_packets")),
               static_cast<unsigned long long>(Delta(s0, s1, "drop_rx_full")),
               static_cast<unsigned long long>(Delta(i0, i1, "drop_rx_full")));
  // The stalled guest goes; its port serves the next one as if nothing happened.
  frozen.Signal(SIGKILL);
  frozen.Wait(10);
  WaitGone(stalled);
  Proc& again = StartRecv(stalled, 32, 500, 20);
  Proc& send2 = StartSend(tx, 32, 500, 1500, stalled.mac, kRate);
  ExpectSent(send2, 500, "after the stall");
  ExpectVerified(again, 500, "the formerly stalled port, with a new guest");
}

// ---- 4. Link down -------------------------------------------------------------------------------

TEST_F(NetSystem, LinkDownDropsAndUpRestores) {
  const Port a = AddPort("n0", 1, "shm");
  const Port b = AddPort("n1", 2, "shm");
  ASSERT_NO_FATAL_FAILURE(StartAll());
  ASSERT_NO_FATAL_FAILURE(LearnAll({a, b}));
  constexpr uint64_t kCount = 400;
  int code = -1;
  const std::string out = Viosctl("link n1 down", &code);
  ASSERT_EQ(code, 0) << out;
  Proc& info = Guest(b, {"net", "info"});
  info.Wait(30);
  EXPECT_EQ(info.status, 0) << info.err();
  EXPECT_TRUE(absl::StrContains(info.out(), "link down")) << info.out();
  WaitGone(b);

  // To the port, and from it: nothing passes, every frame is counted.
  const Counters a0 = Stats(a.id), b0 = Stats(b.id);
  {
    Proc& recv = StartRecv(b, 41, kCount, 2);
    Proc& send = StartSend(a, 41, kCount, 64, b.mac, kRate);
    ExpectSent(send, kCount, "to the down port");
    ExpectListening(recv, "the down port");
    ExpectNothing(recv, "the down port");
    WaitGone(a);
    WaitGone(b);
  }
  {
    Proc& recv = StartRecv(a, 42, kCount, 2);
    Proc& send = StartSend(b, 42, kCount, 1500, a.mac, kRate);
    ExpectSent(send, kCount, "from the down port");
    ExpectListening(recv, "from the down port");
    ExpectNothing(recv, "from the down port");
    WaitGone(a);
    WaitGone(b);
  }
  const Counters a1 = Stats(a.id), b1 = Stats(b.id);
  EXPECT_EQ(Delta(b0, b1, "drop_link_down"), 2 * kCount);
  EXPECT_EQ(Delta(b0, b1, "rx_packets"), 0u);
  EXPECT_EQ(Delta(b0, b1, "tx_packets"), 0u);
  EXPECT_EQ(Delta(a0, a1, "rx_packets"), 0u);
  EXPECT_EQ(Delta(a0, a1, "tx_packets"), kCount);

  // Up again: both ways.
  const std::string up = Viosctl("link n1 up", &code);
  ASSERT_EQ(code, 0) << up;
  Proc& info2 = Guest(b, {"net", "info"});
  info2.Wait(30);
  EXPECT_TRUE(absl::StrContains(info2.out(), "link up")) << info2.out();
  WaitGone(b);
  {
    Proc& recv = StartRecv(b, 43, kCount, 20);
    Proc& send = StartSend(a, 43, kCount, 1500, b.mac, kRate);
    ExpectSent(send, kCount, "to the port, up again");
    ExpectVerified(recv, kCount, "the port, up again");
    WaitGone(a);
    WaitGone(b);
  }
  {
    Proc& recv = StartRecv(a, 44, kCount, 20);
    Proc& send = StartSend(b, 44, kCount, 64, a.mac, kRate);
    ExpectSent(send, kCount, "from the port, up again");
    ExpectVerified(recv, kCount, "from the port, up again");
  }
  EXPECT_EQ(Counter(b.id, "drop_link_down"), 2 * kCount);
}

// ---- 5. VLANs -------------------------------------------------------------------------------------

TEST_F(NetSystem, VlansKeepTheirFramesApart) {
  const Port a = AddPort("n0", 1, "shm", ",vlan=10");
  const Port b = AddPort("n1", 2, "shm", ",vlan=10");
  const Port c = AddPort("n2", 3, "shm", ",vlan=20");
  ASSERT_NO_FATAL_FAILURE(StartAll());
  ASSERT_NO_FATAL_FAILURE(LearnAll({a, b, c}));
  constexpr uint64_t kCount = 400;
  const Counters a0 = Stats(a.id), b0 = Stats(b.id), c0 = Stats(c.id);
  {
    // Broadcast in VLAN 10: the other VLAN-10 port, not the VLAN-20 one.
    Proc& in10 = StartRecv(b, 51, kCount, 20);
    Proc& in20 = StartRecv(c, 51, kCount, 2);
    Proc& send = StartSend(a, 51, kCount, 1500, "ff:ff:ff:ff:ff:ff", kRate);
    ExpectSent(send, kCount, "broadcast in VLAN 10");
    ExpectListening(in20, "VLAN 20 port, broadcast in VLAN 10");
    ExpectVerified(in10, kCount, "VLAN 10 port, broadcast");
    ExpectNothing(in20, "VLAN 20 port, broadcast in VLAN 10");
    WaitGone(a);
    WaitGone(b);
    WaitGone(c);
  }
  {
    // Unicast in VLAN 10 to a learnt MAC.
    Proc& in10 = StartRecv(b, 52, kCount, 20);
    Proc& in20 = StartRecv(c, 52, kCount, 2);
    Proc& send = StartSend(a, 52, kCount, 64, b.mac, kRate);
    ExpectSent(send, kCount, "unicast in VLAN 10");
    ExpectListening(in20, "VLAN 20 port, unicast in VLAN 10");
    ExpectVerified(in10, kCount, "VLAN 10 port, unicast");
    ExpectNothing(in20, "VLAN 20 port, unicast in VLAN 10");
    WaitGone(a);
    WaitGone(b);
    WaitGone(c);
  }
  {
    // From VLAN 20, to a VLAN-10 port's MAC and to everyone: nothing crosses.
    Proc& r0 = StartRecv(a, 53, kCount, 2);
    Proc& r1 = StartRecv(b, 53, kCount, 2);
    Proc& uni = StartSend(c, 53, kCount, 64, b.mac, kRate);
    ExpectSent(uni, kCount, "VLAN 20 to a VLAN 10 MAC");
    WaitGone(c);
    Proc& bcast = StartSend(c, 53, kCount, 1500, "ff:ff:ff:ff:ff:ff", kRate);
    ExpectSent(bcast, kCount, "broadcast in VLAN 20");
    ExpectListening(r0, "VLAN 10 port n0, frames from VLAN 20");
    ExpectListening(r1, "VLAN 10 port n1, frames from VLAN 20");
    ExpectNothing(r0, "VLAN 10 port n0, frames from VLAN 20");
    ExpectNothing(r1, "VLAN 10 port n1, frames from VLAN 20");
    WaitGone(a);
    WaitGone(b);
    WaitGone(c);
  }
  const Counters a1 = Stats(a.id), b1 = Stats(b.id), c1 = Stats(c.id);
  EXPECT_EQ(Delta(a0, a1, "tx_packets"), 2 * kCount);
  EXPECT_EQ(Delta(a0, a1, "switch.flooded"), kCount);  // the broadcast
  EXPECT_EQ(Delta(a0, a1, "switch.unicast"), kCount);
  EXPECT_EQ(Delta(a0, a1, "rx_packets"), 0u);
  EXPECT_EQ(Delta(b0, b1, "rx_packets"), 2 * kCount);
  EXPECT_EQ(Delta(c0, c1, "rx_packets"), 0u);
  // VLAN 20 knows no n1: its unicast floods there, to nobody.
  EXPECT_EQ(Delta(c0, c1, "tx_packets"), 2 * kCount);
  EXPECT_EQ(Delta(c0, c1, "switch.flooded"), 2 * kCount);
  for (const auto& [before, after] : {std::pair{&a0, &a1}, std::pair{&b0, &b1}, std::pair{&c0, &c1}})
    EXPECT_EQ(MovedDrops(*before, *after), "");
}

}  // namespace
}  // namespace vioport
