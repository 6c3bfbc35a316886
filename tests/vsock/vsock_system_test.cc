// SPDX-License-Identifier: Apache-2.0
// Whole-system vsock tests: one real vios with vsock devices on its hub,
// attached over every transport (shm, vhost-user, crq through crqd, Xen
// through xenemud), vioguest processes as the guests and vsock-peer as the
// host's processes on the devices' Unix sockets. Every byte that crosses
// is seeded test data the receiver checks (a SEQPACKET message's size too);
// vios's counters must agree.
//
//  - AcrossTransports: per transport a listening guest and a connecting
//    one; each connector reaches two listeners over other transports and a
//    host listener, the host reaches every listener; a guest outside the
//    group is refused.
//  - SeqpacketBoundaries: message boundaries guest to host and guest to
//    guest.
//  - SiblingKilledMidStreamResetsThePeer: the other guest's connection ends.
//  - ConnectionFloodIsRefusedAtTheLimit: 1100 connections from one guest.
//  - SlotBoundSenderIsWokenByTheDevice: a 4 MiB window, a guest that waits
//    for transmit slots; its waits end with the device's interrupt.
//  - ViosRestartedUnder{Crq,Xen}Guest: vios killed under a connected guest;
//    its connection ends, the host's socket closes, its listener survives
//    the restart and takes a new connection.
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "vioport/testing/emulated_ports.h"
#include "vioport/testing/process.h"
#include "vioport/testing/process_test.h"
#include "vioport/testing/tool_output.h"

namespace vioport {
namespace {

using testproc::Field;
using testproc::Proc;

struct Dev {
  std::string id;
  uint64_t cid = 0;
  testproc::PortAttach at;
  std::string uds_path;  // the host side
};

class VsockSystem : public testproc::ViosProcessTest {
 protected:
  VsockSystem() : ViosProcessTest("vioport-vsock", VIOS_BIN, VIOSCTL_BIN, VIOGUEST_BIN) {}

  // A vsock device `id` for guest `cid` attached over `transport`; `extra`
  // goes after its options (",group=g").
  Dev Add(const std::string& id, uint64_t cid, const std::string& transport, const std::string& extra) {
    Dev d{id, cid, ports_.Attach(id, transport), Path(id + ".vsock")};
    EXPECT_FALSE(d.at.attach.empty()) << "no such transport " << transport;
    vios_args_.insert(vios_args_.end(),
                      {"--device", absl::StrCat("vsock,id=", id, ",cid=", cid, ",uds-path=", d.uds_path, extra), "--attach",
                       testproc::EmulatedPorts::AttachArg(id, d.at)});
    return d;
  }
  void StartAll() {
#ifdef VSOCK_SYSTEM_EMULATORS
    ASSERT_NO_FATAL_FAILURE(StartEmulators(ports_, CRQD_BIN, XENEMUD_BIN));
#else
    ASSERT_NO_FATAL_FAILURE(StartEmulators(ports_, nullptr, nullptr));
#endif
    SpawnVios();
  }
  Proc& Guest(const Dev& d, std::vector<std::string> cmd) {
    std::vector<std::string> argv = {VIOGUEST_BIN, "--quiet", "--transport", d.at.guest, "vsock"};
    argv.insert(argv.end(), cmd.begin(), cmd.end());
    return Start(argv, "vioguest-" + d.id);
  }
  Proc& Peer(std::vector<std::string> cmd, const std::string& tag) {
    cmd.insert(cmd.begin(), VSOCK_PEER_BIN);
    return Start(cmd, tag);
  }
  // Waits for a listener (vioguest or vsock-peer) to say it listens.
  static bool Listening(Proc& p) {
    return testproc::WaitFor([&] { return absl::StrContains(p.out(), "listening on") || !p.Running(); }, 30) &&
           p.Running();
  }
  // A finished exchange: exit 0, every byte checked, as many as expected.
  static void ExpectVerified(Proc& p, uint64_t sent, uint64_t received, const std::string& what) {
    p.Wait(120);
    EXPECT_EQ(p.status, 0) << what << ": " << p.out() << p.err();
    EXPECT_EQ(Field(p.out(), "verified"), "yes") << what << ": " << p.out();
    EXPECT_EQ(Field(p.out(), "sent"), absl::StrCat(sent)) << what << ": " << p.out();
    EXPECT_EQ(Field(p.out(), "received"), absl::StrCat(received)) << what << ": " << p.out();
  }
  // Every refusal counter of device `id`'s hub that is not 0.
  std::string Refusals(const std::string& id) {
    std::vector<std::string> moved;
    for (absl::string_view line : absl::StrSplit(Viosctl("stats " + id), '\n')) {
      std::vector<std::string> kv = absl::StrSplit(line, ' ');
      if (kv.size() == 2 && absl::StrContains(kv[0], "refused_") && kv[1] != "0") moved.push_back(std::string(line));
    }
    return absl::StrJoin(moved, ", ");
  }

  void RestartUnder(const std::string& transport);

  testproc::EmulatedPorts ports_{[this](const std::string& n) { return Path(n); }};
};

constexpr uint64_t kKiB = 1024;

TEST_F(VsockSystem, AcrossTransports) {
  const std::vector<std::string> transports = {"shm", "vhost-user", "crq", "xen"};
  std::vector<Dev> l, c;
  for (size_t t = 0; t < transports.size(); ++t) l.push_back(Add(absl::StrCat("l", t), 10 + t, transports[t], ",group=g"));
  for (size_t t = 0; t < transports.size(); ++t) c.push_back(Add(absl::StrCat("c", t), 20 + t, transports[t], ",group=g"));
  const Dev iso = Add("iso", 30, "shm", "");  // in no group: reaches the host only
  ASSERT_NO_FATAL_FAILURE(StartAll());

  // Listener t takes port 5000 from connector t-1, 5001 from connector t-2
  // (so every pair of transports meets) and 5002 from the host. Connection
  // k of a listener and connection j of a connector use seed base+k (+j):
  // a connector's j-th target is a listener's j-th port.
  const uint64_t kLsend = 512 * kKiB, kCsend = 256 * kKiB;
  auto data = [](uint64_t seed, uint64_t len, uint64_t eseed, uint64_t elen) {
    return std::vector<std::string>{"--seed", absl::StrCat(seed), "--length", absl::StrCat(len), "--expect-seed",
                                    absl::StrCat(eseed), "--expect-length", absl::StrCat(elen)};
  };
  std::vector<Proc*> listeners, hosts, connectors;
  for (const Dev& d : l) {
    std::vector<std::string> cmd = {"listen", "--port", "5000,5001,5002", "--timeout", "90"};
    for (const std::string& s : data(100, kLsend, 200, kCsend)) cmd.push_back(s);
    listeners.push_back(&Guest(d, cmd));
  }
  for (size_t t = 0; t < l.size(); ++t) ASSERT_TRUE(Listening(*listeners[t])) << l[t].id << ": " << listeners[t]->err();
  // The host listens for each connector (its port 6000), then connects to
  // each listener's port 5002 (CONNECT 5002).
  for (const Dev& d : c) {
    std::vector<std::string> cmd = {"exchange", "--listen", d.uds_path + "_6000", "--timeout", "90"};
    for (const std::string& s : data(102, kLsend, 202, kCsend)) cmd.push_back(s);
    hosts.push_back(&Peer(cmd, "peer-" + d.id));
    ASSERT_TRUE(Listening(*hosts.back())) << hosts.back()->err();
  }
  for (const Dev& d : l) {
    std::vector<std::string> cmd = {"exchange", "--connect", d.uds_path, "--port", "5002"};
    for (const std::string& s : data(202, kCsend, 102, kLsend)) cmd.push_back(s);
    hosts.push_back(&Peer(cmd, "peer-" + d.id));
  }
  for (size_t t = 0; t < c.size(); ++t) {
    const Dev& a = l[(t + 1) % l.size()];
    const Dev& b = l[(t + 2) % l.size()];
    // 1 KiB writes: more packets in the ring at once than the device takes
    // in one turn.
    std::vector<std::string> cmd = {"connect", "--cid", absl::StrCat(a.cid, ",", b.cid, ",2"), "--port", "5000,5001,6000",
                                    "--size", "1024", "--timeout", "90"};
    for (const std::string& s : data(200, kCsend, 100, kLsend)) cmd.push_back(s);
    connectors.push_back(&Guest(c[t], cmd));
  }
  // A guest outside the group reaches no guest: its REQUEST is refused.
  Proc& lone = Guest(iso, {"connect", "--cid", absl::StrCat(l[0].cid), "--port", "5000"});
  lone.Wait(60);
  EXPECT_NE(lone.status, 0) << lone.out();
  EXPECT_TRUE(absl::StrContains(lone.err(), "refused")) << lone.err();

  for (size_t t = 0; t < c.size(); ++t) ExpectVerified(*connectors[t], 3 * kCsend, 3 * kLsend, "connector " + c[t].id);
  for (size_t t = 0; t < l.size(); ++t) ExpectVerified(*listeners[t], 3 * kLsend, 3 * kCsend, "listener " + l[t].id);
  for (size_t i = 0; i < c.size(); ++i) ExpectVerified(*hosts[i], kLsend, kCsend, "host listener of " + c[i].id);
  for (size_t i = 0; i < l.size(); ++i) ExpectVerified(*hosts[c.size() + i], kCsend, kLsend, "host connecting to " + l[i].id);

  // vios saw the same: every connection closed, nothing refused but the
  // lone guest's REQUEST, the host bytes counted at the hub.
  for (const std::vector<Dev>* set : {&l, &c}) {
    for (const Dev& d : *set) {
      EXPECT_TRUE(testproc::WaitFor([&] { return Stat(d.id, "hub.conns_open") == 0; }, 10)) << Viosctl("stats " + d.id);
      EXPECT_EQ(Refusals(d.id), "") << d.id;
      EXPECT_EQ(Stat(d.id, "hub.conns_total"), 1u) << d.id << ": one host connection each";
      EXPECT_EQ(Stat(d.id, "hub.to_host_bytes"), set == &l ? kLsend : kCsend) << d.id;
      EXPECT_EQ(Stat(d.id, "hub.from_host_bytes"), set == &l ? kCsend : kLsend) << d.id;
    }
  }
  EXPECT_EQ(Stat("iso", "hub.refused_group"), 1u) << Viosctl("stats iso");
}

TEST_F(VsockSystem, SeqpacketBoundaries) {
  const Dev a = Add("a", 3, "shm", ",group=g");
  const Dev b = Add("b", 4, "xen", ",group=g");
  ASSERT_NO_FATAL_FAILURE(StartAll());
  // Guest to host: a SOCK_SEQPACKET listener on the host checks each
  // message's size; messages up to 100000 bytes, larger than one packet.
  const std::vector<std::string> sizes = {"--size", "100000", "--seqpacket"};
  std::vector<std::string> host = {"exchange", "--listen", a.uds_path + "_7000", "--seed", "8", "--length", "2097152",
                                   "--expect-seed", "7", "--expect-length", "3145728"};
  host.insert(host.end(), sizes.begin(), sizes.end());
  Proc& h = Peer(host, "peer");
  ASSERT_TRUE(Listening(h)) << h.err();
  std::vector<std::string> g = {"connect", "--cid", "2", "--port", "7000", "--seed", "7", "--length", "3145728",
                                "--expect-seed", "8", "--expect-length", "2097152"};
  g.insert(g.end(), sizes.begin(), sizes.end());
  Proc& ga = Guest(a, g);
  ExpectVerified(ga, 3145728, 2097152, "guest a to the host");
  ExpectVerified(h, 2097152, 3145728, "the host's SEQPACKET listener");
  // Guest to guest (shm to Xen): the listener echoes message by message,
  // the connector checks every message comes back whole.
  // Guest b (Xen) posts more receive buffers than vios can keep mapped
  // (4,096 pages, the attachment's cache-pages): past that, grant copy.
  Proc& lb = Guest(b, {"listen", "--port", "7001", "--echo", "--seqpacket", "--size", "100000", "--rx-buffers", "250"});
  ASSERT_TRUE(Listening(lb)) << lb.err();
  std::vector<std::string> ga2 = {"connect", "--cid", "4", "--port", "7001", "--seed", "9", "--length", "8388608",
                                  "--expect-seed", "9", "--expect-length", "8388608"};
  ga2.insert(ga2.end(), sizes.begin(), sizes.end());
  // Device a has one driver at a time: the first guest on it is gone.
  std::string list;
  ASSERT_TRUE(WaitDeviceWaiting("a", &list)) << list;
  Proc& ga_again = Guest(a, ga2);
  ExpectVerified(ga_again, 8388608, 8388608, "guest a through guest b's echo");
  lb.Wait(30);
  EXPECT_EQ(lb.status, 0) << lb.out() << lb.err();
  EXPECT_EQ(Refusals("a"), "");
  EXPECT_EQ(Refusals("b"), "");
}

// A window far larger than the guest driver's transmit slots (4 MiB each
// way): vioguest keeps waiting for slots while vios writes to the host's
// socket, and each wait must end with the device's interrupt, not the
// driver's 1 ms timeout with buffers back and no interrupt for them. (A
// driver that took used buffers in the re-check after arming the
// interrupt, and slept anyway, missed its wake-up in three waits of four
// and sent at a fifth of the rate.)
TEST_F(VsockSystem, SlotBoundSenderIsWokenByTheDevice) {
  const Dev a = Add("a", 3, "shm", ",buf-alloc=4M");
  ASSERT_NO_FATAL_FAILURE(StartAll());
  Proc& h = Peer({"serve", "--listen", a.uds_path + "_5000"}, "peer");
  ASSERT_TRUE(testproc::WaitFor([&] { return std::filesystem::exists(a.uds_path + "_5000") || !h.Running(); }, 30));
  Proc& g = Guest(a, {"bench", "--cid", "2", "--port", "5000", "--mode", "tx", "--size", "4096", "--time", "2",
                      "--buf-alloc", "4M"});
  g.Wait(60);
  ASSERT_EQ(g.status, 0) << g.out() << g.err();
  EXPECT_EQ(Field(g.out(), "verified"), "yes") << g.out();  // the server counted every byte
  uint64_t waits = 0, missed = 0;
  ASSERT_TRUE(absl::SimpleAtoi(Field(g.out(), "tx_waits"), &waits)) << g.out();
  ASSERT_TRUE(absl::SimpleAtoi(Field(g.out(), "tx_wait_missed"), &missed)) << g.out();
  EXPECT_GT(waits, 20u) << "the guest never waited for a slot: the test tests nothing. " << g.out();
  // Timeouts alone prove nothing (a loaded machine leaves the device's
  // thread off a core past 1 ms); one after which buffers were back with no
  // interrupt is a lost wake-up. An interrupt still on its way as the wait
  // ends looks the same: rare.
  EXPECT_LE(missed * 20, waits) << g.out();
}

// A guest killed mid-stream with a sibling: the hub tells the other end
// (the RST its peer can no longer send), so it does not wait for ever.
TEST_F(VsockSystem, SiblingKilledMidStreamResetsThePeer) {
  const Dev a = Add("a", 3, "shm", ",group=g");
  const Dev b = Add("b", 4, "crq", ",group=g");
  ASSERT_NO_FATAL_FAILURE(StartAll());
  Proc& la = Guest(a, {"listen", "--port", "7003", "--seed", "1", "--length", "1073741824", "--expect-seed", "2",
                       "--expect-length", "1073741824", "--timeout", "120"});
  ASSERT_TRUE(Listening(la)) << la.err();
  Proc& cb = Guest(b, {"connect", "--cid", "3", "--port", "7003", "--seed", "2", "--length", "1073741824", "--expect-seed",
                       "1", "--expect-length", "1073741824", "--timeout", "120"});
  ASSERT_TRUE(testproc::WaitFor([&] { return Stat("a", "rx_bytes") > (4u << 20) || !cb.Running(); }, 60))
      << cb.out() << cb.err();
  ASSERT_TRUE(cb.Running()) << cb.out() << cb.err();
  la.Signal(SIGKILL);
  la.Wait(10);
  const auto t0 = std::chrono::steady_clock::now();
  cb.Wait(60);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(cb.status, 1) << cb.out() << cb.err();
  EXPECT_TRUE(absl::StrContains(cb.err(), "reset")) << cb.err();
  EXPECT_LT(secs, 20) << "the connector waited for a peer that was gone";
}

// A guest opening connections in a loop: the hub takes 1024 per guest and
// refuses the next (counted); when the guest goes, every one is closed and
// vios holds nothing.
TEST_F(VsockSystem, ConnectionFloodIsRefusedAtTheLimit) {
  const Dev a = Add("a", 3, "shm", "");
  ASSERT_NO_FATAL_FAILURE(StartAll());
  Proc& host = Peer({"serve", "--listen", a.uds_path + "_9000"}, "peer");
  ASSERT_TRUE(testproc::WaitFor([&] { return std::filesystem::exists(a.uds_path + "_9000"); }, 10)) << host.err();
  Proc& g = Guest(a, {"connect", "--cid", "2", "--port", "9000", "--connections", "1100", "--timeout", "60"});
  g.Wait(120);
  EXPECT_EQ(g.status, 2) << g.out() << g.err();
  EXPECT_TRUE(absl::StrContains(g.err(), "vsock connect to 2:9000")) << g.err();
  EXPECT_TRUE(absl::StrContains(g.err(), "refused")) << g.err();
  EXPECT_EQ(Stat("a", "hub.refused_too_many_conns"), 1u) << Viosctl("stats a");
  EXPECT_EQ(Stat("a", "hub.conns_total"), 1024u);
  EXPECT_TRUE(testproc::WaitFor([&] { return Stat("a", "hub.conns_open") == 0; }, 20)) << Viosctl("stats a");
}

// Over crq and Xen: their guest sides find a restarted vios again (the
// driver's reset reconnects); shm's cannot (its memory went with vios), nor
// can vioguest's vhost-user (docs/transports/vhost-user.md).
void VsockSystem::RestartUnder(const std::string& transport) {
  const Dev a = Add("a", 3, transport, "");
  ASSERT_NO_FATAL_FAILURE(StartAll());
  Proc& g = Guest(a, {"listen", "--port", "7000", "--reconnect-timeout", "60", "--seed", "5", "--length", "1048576",
                      "--expect-seed", "6", "--expect-length", "524288", "--timeout", "120"});
  ASSERT_TRUE(Listening(g)) << g.err();
  // A host connection that reads nothing: the guest's 1 MiB waits for credit.
  const int held = testproc::ConnectUnixStream(a.uds_path, 10);
  ASSERT_GE(held, 0);
  ASSERT_EQ(::write(held, "CONNECT 7000\n", 13), 13);
  const std::string ok = testproc::ReadUntil(held, "\n", 20);
  ASSERT_TRUE(absl::StartsWith(ok, "OK ")) << ok;
  ASSERT_TRUE(testproc::WaitFor([&] { return Stat("a", "hub.conns_open") == 1; }, 10));
  // vios dies under the connected guest and comes back.
  vios_->Signal(SIGKILL);
  vios_->Wait(10);
  // The host's socket ends with vios (its bytes never all came).
  std::string rest = testproc::ReadUntil(held, "never", 10);
  EXPECT_LT(rest.size(), 1048576u);
  ::close(held);
  ASSERT_NO_FATAL_FAILURE(SpawnVios());
  // The same vioguest, still listening, takes a new connection.
  Proc& h = Peer({"exchange", "--connect", a.uds_path, "--port", "7000", "--seed", "6", "--length", "524288",
                  "--expect-seed", "5", "--expect-length", "1048576", "--timeout", "60"},
                 "peer");
  ExpectVerified(h, 524288, 1048576, "the host after the restart");
  ExpectVerified(g, 1048576, 524288, "the guest's listener across the restart");
  EXPECT_EQ(Field(g.out(), "resets"), "1") << g.out() << g.err();
  EXPECT_TRUE(testproc::WaitFor([&] { return Stat("a", "hub.conns_open") == 0; }, 10));
}

TEST_F(VsockSystem, ViosRestartedUnderACrqGuest) { RestartUnder("crq"); }
TEST_F(VsockSystem, ViosRestartedUnderAXenGuest) { RestartUnder("xen"); }

}  // namespace
}  // namespace vioport
