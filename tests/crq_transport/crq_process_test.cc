// SPDX-License-Identifier: Apache-2.0
// virtio over CRQ across processes: crqd (the PowerVM hypervisor emulator),
// vios serving devices over server adapters (--attach ...,transport=crq) and
// vioguest driving client adapters (--transport crq:...), plus, for the
// hostile-client test, this process as a client partition of crqd. What is
// CRQ's own: migrations and full queues mid-write, and the CRQ protocol
// spoken wrong. (blk, rng and console data, a guest or vios killed
// mid-write, reconnects, a hostile ring and the counters are the conformance
// suite's, tests/conformance, with a rig that starts crqd the same way.)
// Assertions are on data: the writer's, the reader's and the backing file's
// checksums agree and the file holds the seeded pattern byte for byte;
// vios's and crqd's counters. Faults are injected at points found by
// watching vios's counters, never after a sleep, and every wait is bounded.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "vioport/testing/process.h"
#include "vioport/testing/process_test.h"
#include "vioport/testing/tool_output.h"
#include "vioport/emulators/crq_remote.h"
#include "vioport/transports/crq_protocol.h"

// Sanitizer builds move a quarter of the data (every byte is ~10x dearer).
#ifndef VIOPORT_BIG_MIB
#define VIOPORT_BIG_MIB 256
#endif

namespace vioport {
namespace {

using testproc::Proc;
using testproc::WaitFor;
using testproc::ReadAll;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kBig = uint64_t{VIOPORT_BIG_MIB} * kMiB;  // 256 MiB in release

// ---- The adapter pairs crqd is configured with ---------------------------------
//
// One pair per device a test serves. A client's LIOBN is its unit address;
// its DMA window is kWindowMib (vioguest's default --memory); a server's
// window is 1 MiB (queue page + 128 KiB bounce buffer + what fits of the
// staging slots). Every server adapter is on vios's one partition (2), as a
// real VIO server is one partition with many adapters.
struct Pair {
  const char* device;  // the vios device served on the pair
  uint32_t client_pid, client_unit;
  uint32_t server_pid, server_unit;
};
constexpr uint32_t kWindowMib = 64;
constexpr Pair kBlkPair{"d0", 1, 0x1000, 2, 0x2000};
constexpr Pair kHostilePair{"bad", 3, 0x1001, 2, 0x2001};  // the hostile client is this process
constexpr uint32_t ServerPid(const Pair& p) { return p.server_pid; }

class CrqProcess : public testproc::ViosProcessTest {
 protected:
  CrqProcess() : ViosProcessTest("vioport-crqproc", VIOS_BIN, VIOSCTL_BIN, VIOGUEST_BIN) {}

  // crqd with one adapter pair per entry.
  void StartCrqd(const std::vector<Pair>& pairs) {
    std::vector<std::string> argv = {CRQD_BIN, "--socket", Path("crqd.sock"), "--control", Path("crqd.ctl")};
    for (const Pair& p : pairs)
      argv.insert(argv.end(), {"--pair", absl::StrFormat("client=%u:%#x:%#x:%u,server=%u:%#x:%#x:1", p.client_pid,
                                                         p.client_unit, p.client_unit, kWindowMib, ServerPid(p),
                                                         p.server_unit, p.server_unit)});
    crqd_ = &Start(argv, "crqd");
    ASSERT_GT(crqd_->pid, 0);
    ASSERT_TRUE(WaitForPaths({Path("crqd.sock"), Path("crqd.ctl")}, *crqd_)) << crqd_->err();
  }

  // vios with `devices` (--device specs), serving each pair's device over it.
  void StartVios(const std::vector<std::string>& devices, const std::vector<Pair>& pairs) {
    vios_args_.clear();
    for (const std::string& d : devices) vios_args_.insert(vios_args_.end(), {"--device", d});
    for (const Pair& p : pairs)
      vios_args_.insert(vios_args_.end(),
                        {"--attach", absl::StrFormat("%s,transport=crq,crqd=%s,partition=%u,unit=%#x,liobn=%#x,"
                                                     "remote-liobn=%#x,remote-window-mib=%u",
                                                     p.device, Path("crqd.sock"), ServerPid(p), p.server_unit,
                                                     p.server_unit, p.client_unit, kWindowMib)});
    SpawnVios();
  }
  std::string Transport(const Pair& p) const {
    return absl::StrFormat("crq:%s,partition=%u,unit=%#x,liobn=%#x", Path("crqd.sock"), p.client_pid, p.client_unit,
                           p.client_unit);
  }
  // vioguest on pair `p`, running in the background.
  Proc& StartGuest(const Pair& p, const std::vector<std::string>& cmd) {
    // crqd frees a partition id only once its thread for the last process
    // with that id has read the EOF: a guest started right after another one
    // exited on the same partition could be refused ("already connected").
    EXPECT_TRUE(WaitFor([&] { return !CrqdPartitions().count(p.client_pid); }, 10)) << Crqctl("partitions");
    return StartVioguest(Transport(p), cmd);
  }
  Proc& Guest(const Pair& p, const std::vector<std::string>& cmd, double timeout = 120) {
    Proc& g = StartGuest(p, cmd);
    g.Wait(timeout);
    return g;
  }
  std::string Crqctl(const std::string& cmd, int* code = nullptr) { return Ctl(CRQCTL_BIN, Path("crqd.ctl"), cmd, code); }
  // crqctl COMMAND, which must answer ok.
  void Inject(const std::string& cmd) {
    int code = -1;
    const std::string out = Crqctl(cmd, &code);
    ASSERT_EQ(code, 0) << "crqctl " << cmd << ": " << out;
  }

  // crqctl stats: `field` of the line "hcall NAME calls=... not_success=...";
  // 0 if there is no such line (never called), ~0 if crqd did not answer.
  uint64_t HcallStat(const std::string& hcall, const std::string& field) {
    int code = -1;
    const std::string out = Crqctl("stats", &code);
    if (code != 0) return ~0ull;
    for (absl::string_view line : absl::StrSplit(out, '\n')) {
      std::vector<absl::string_view> w = absl::StrSplit(line, ' ');
      if (w.size() < 2 || w[0] != "hcall" || w[1] != hcall) continue;
      for (absl::string_view kv : w) {
        uint64_t v;
        if (absl::ConsumePrefix(&kv, field + "=") && absl::SimpleAtoi(kv, &v)) return v;
      }
      return ~0ull;
    }
    return 0;
  }
  // crqctl partitions: the ids connected now.
  std::set<uint32_t> CrqdPartitions() {
    std::set<uint32_t> ids;
    for (absl::string_view line : absl::StrSplit(Crqctl("partitions"), '\n')) {
      uint32_t id;
      if (absl::ConsumePrefix(&line, "partition ") && absl::SimpleAtoi(line, &id)) ids.insert(id);
    }
    return ids;
  }
  void WriteThroughFaults(uint64_t seed, const std::string& fault, uint32_t n, const std::function<void()>& before);
  Proc* crqd_ = nullptr;
};

// ---- Faults --------------------------------------------------------------------

// A write over the blk pair with --reconnect-timeout 30; `fault PID UNIT n`
// injected into the client's side once vios has written 1/8 of it and into
// the server's at 3/8; then a fresh verify and the backing file checked.
// `before` runs once vios is up (baselines of counters).
void CrqProcess::WriteThroughFaults(uint64_t seed, const std::string& fault, uint32_t n,
                                    const std::function<void()>& before) {
  const std::string disk = Path("disk.img");
  const uint64_t bytes = kBig / 2;
  MakeDisk(disk, bytes);
  StartCrqd({kBlkPair});
  StartVios({"blk,id=d0,path=" + disk}, {kBlkPair});
  before();
  Proc& w = StartGuest(kBlkPair, BlkCmd("write", seed, 0, bytes, 30));
  ASSERT_TRUE(WaitForBytesWritten("d0", bytes / 8, w)) << "the writer ended first: " << w.err() << w.out();
  Inject(absl::StrFormat("%s %u %#x %u", fault, kBlkPair.client_pid, kBlkPair.client_unit, n));
  ASSERT_TRUE(WaitForBytesWritten("d0", bytes * 3 / 8, w)) << "the writer ended first: " << w.err() << w.out();
  Inject(absl::StrFormat("%s %u %#x %u", fault, ServerPid(kBlkPair), kBlkPair.server_unit, n));
  EXPECT_EQ(w.Wait(90), 0) << w.err() << w.out();
  Proc& v = Guest(kBlkPair, BlkCmd("verify", seed, 0, bytes));
  ExpectWrittenAndVerified(w, v, disk, seed, 0, bytes);
  EXPECT_TRUE(vios_->Running()) << vios_->err();
}

TEST_F(CrqProcess, BothSidesMigratedMidWrite) {
  uint64_t enable_failed = 0;
  // Each side's adapter migrates in turn: FF 06, H_ENABLE_CRQ busy 5 times.
  WriteThroughFaults(43, "migrate", 5, [&] {
    enable_failed = HcallStat("H_ENABLE_CRQ", "not_success");
    ASSERT_NE(enable_failed, ~0ull) << Crqctl("stats");
  });
  if (HasFatalFailure()) return;
  EXPECT_TRUE(ViosLogHas("migrated")) << vios_->err();
  // Both migrations happened: each side's H_ENABLE_CRQ answered H_IN_PROGRESS 5 times.
  EXPECT_GE(HcallStat("H_ENABLE_CRQ", "not_success") - enable_failed, 10u) << Crqctl("stats");
  EXPECT_GE(Stat("d0", "crq.partner_resets"), 1u);
}

TEST_F(CrqProcess, FullQueuesBothWaysMidWrite) {
  uint64_t send_failed = 0;
  // The next 40 messages to each side answer H_DROPPED, as if its queue were full.
  WriteThroughFaults(47, "full", 40, [&] {
    send_failed = HcallStat("H_SEND_CRQ", "not_success");
    ASSERT_NE(send_failed, ~0ull) << Crqctl("stats");
  });
  if (HasFatalFailure()) return;
  // Every injected H_DROPPED was met (both sides retry until delivered), and
  // vios retried its own.
  EXPECT_GE(HcallStat("H_SEND_CRQ", "not_success") - send_failed, 80u) << Crqctl("stats");
  EXPECT_GE(Stat("d0", "crq.dropped_retries"), 1u) << Viosctl("stats d0");
  EXPECT_EQ(Stat("d0", "crq.closes"), 0u) << vios_->err();
}

// ---- A hostile client partition: this process ------------------------------------

// A client partition that speaks whatever it is told on its adapter: its
// queue is the first page of its memory, mapped at IOBA 0 of its window.
class RawClient {
 public:
  RawClient(std::unique_ptr<crq::RemotePartition> p, uint32_t unit)
      : p_(std::move(p)), unit_(unit), q_(p_->memory(), crq::kTcePageSize) {}
  bool Register() {
    if (p_->PutTce(unit_, 0, crq::MakeTce(0, crq::kTceRead | crq::kTceWrite)) != crq::kHSuccess) return false;
    q_.Reset();
    const int64_t rc = p_->RegCrq(unit_, 0, crq::kTcePageSize);
    if (rc != crq::kHSuccess && rc != crq::kHClosed) return false;
    return p_->VioSignal(unit_, 1) == crq::kHSuccess;
  }
  int64_t Send(const crq::Message& m) { return p_->SendCrq(unit_, m.hi(), m.lo()); }
  // The next entry of our queue, or valid == 0 after `timeout`.
  crq::Message Next(std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    crq::Message m;
    for (;;) {
      while (!q_.Pop(&m)) {
        if (std::chrono::steady_clock::now() > end) return crq::Message{0};
        pollfd fd{p_->interrupt_fd(), POLLIN, 0};
        if (::poll(&fd, 1, 1) > 0) {
          uint64_t v;
          (void)!::read(p_->interrupt_fd(), &v, sizeof v);
        }
      }
      // Skip the server's flow-control reports (CREDIT, one per 32 consumed).
      if (m.valid != crq::kValidCommand || m.op != static_cast<uint8_t>(crq::Op::kCredit)) return m;
    }
  }
  // INIT -> INIT COMPLETE (answering the server's INIT if it sends one).
  bool Handshake() {
    if (Send(crq::Message::Init(crq::kInit)) != crq::kHSuccess) return false;
    for (;;) {
      const crq::Message m = Next();
      if (m.valid == 0) return false;
      if (m.valid == crq::kValidInit && m.op == crq::kInitComplete) return true;
      if (m.valid == crq::kValidInit && m.op == crq::kInit) Send(crq::Message::Init(crq::kInitComplete));
    }
  }
  // VERSION `major`.0 with a new generation; the server's answer.
  crq::Message Version(uint16_t major) {
    generation_ = static_cast<uint8_t>(generation_ + 1);
    if (generation_ == 0) generation_ = 1;
    Send(crq::Message::Command(crq::Op::kVersion, generation_, static_cast<uint16_t>(major << 8), 0,
                               crq::VersionCaps{256, 4096, 4}.Encode()));
    return NextCommand();
  }
  crq::Message NextCommand() {
    for (;;) {
      const crq::Message m = Next();
      if (m.valid == 0 || m.valid == crq::kValidCommand) return m;
    }
  }
  // The server closed the connection: FF 02, then its INIT, which we answer
  // with INIT COMPLETE (the next connection starts at VERSION).
  bool SawClose() {
    bool deregistered = false;
    for (;;) {
      const crq::Message m = Next();
      if (m.valid == 0) return false;
      if (m.valid == crq::kValidEvent && m.op == crq::kEventDeregistered) deregistered = true;
      if (deregistered && m.valid == crq::kValidInit && m.op == crq::kInit)
        return Send(crq::Message::Init(crq::kInitComplete)) == crq::kHSuccess;
    }
  }
  uint8_t generation() const { return generation_; }

 private:
  std::unique_ptr<crq::RemotePartition> p_;
  uint32_t unit_;
  crq::CrqQueue q_;
  uint8_t generation_ = 0;
};

TEST_F(CrqProcess, HostileClientIsClosedEachTimeOthersKeepWorking) {
  const std::string disk = Path("disk.img"), bad_disk = Path("bad.img");
  const uint64_t bytes = kBig / 4;
  MakeDisk(disk, bytes);
  MakeDisk(bad_disk, kMiB);
  StartCrqd({kBlkPair, kHostilePair});
  StartVios({"blk,id=d0,path=" + disk, "blk,id=bad,path=" + bad_disk}, {kBlkPair, kHostilePair});

  crq::RemotePartitionOptions po;
  po.socket_path = Path("crqd.sock");
  po.id = kHostilePair.client_pid;
  po.memory_bytes = kMiB;
  auto partition = crq::RemotePartition::Connect(po);
  ASSERT_TRUE(partition.ok()) << partition.status();
  RawClient raw(std::move(*partition), kHostilePair.client_unit);
  ASSERT_TRUE(raw.Register());
  ASSERT_TRUE(raw.Handshake());

  using crq::Message;
  using crq::Op;
  // Each case starts on a connection waiting for VERSION and makes the server
  // close it, which the log names.
  struct Case {
    std::string reason;
    std::function<void()> run;
  };
  auto version_ok = [&] {
    const Message r = raw.Version(crq::kVersionMajor);
    ASSERT_EQ(r.op, static_cast<uint8_t>(Op::kVersion) | crq::kResponse);
    ASSERT_EQ(r.status, 0);
  };
  const std::vector<Case> cases = {
      {"bad valid byte 90",
       [&] {
         Message m = Message::Command(Op::kGetStatus, 1);
         m.valid = 0x90;
         ASSERT_EQ(raw.Send(m), crq::kHSuccess);
       }},
      {"command 05 before VERSION", [&] { ASSERT_EQ(raw.Send(Message::Command(Op::kGetStatus, 1)), crq::kHSuccess); }},
      {"client protocol version 7.0, server 1.0",
       [&] {
         const Message r = raw.Version(7);
         EXPECT_EQ(r.op, static_cast<uint8_t>(Op::kVersion) | crq::kResponse);
         EXPECT_EQ(r.status, static_cast<uint8_t>(crq::MsgStatus::kVersionMismatch));
         EXPECT_EQ(r.a >> 8, crq::kVersionMajor);
       }},
      // The first IOBA past the window's end.
      {absl::StrFormat("queue 0 ring IOBA %#x outside the client's window", uint64_t{kWindowMib} << 20),
       [&] {
         version_ok();
         ASSERT_EQ(raw.Send(Message::Command(Op::kSetQueue, raw.generation(), 0,
                                             static_cast<uint16_t>(crq::QueueField::kDesc), uint64_t{kWindowMib} << 20)),
                   crq::kHSuccess);
         const Message r = raw.NextCommand();
         EXPECT_EQ(r.op, static_cast<uint8_t>(Op::kSetQueue) | crq::kResponse);
         EXPECT_EQ(r.status, static_cast<uint8_t>(crq::MsgStatus::kOutOfRange));
       }},
      {"READ_CONFIG length 9",
       [&] {
         version_ok();
         ASSERT_EQ(raw.Send(Message::Command(Op::kReadConfig, raw.generation(), 0, 9)), crq::kHSuccess);
       }},
      {"unknown opcode 55",
       [&] {
         version_ok();
         ASSERT_EQ(raw.Send(Message::Command(static_cast<Op>(0x55), raw.generation(), 0xffff, 0xffff, ~0ull)),
                   crq::kHSuccess);
       }},
  };

  // A real guest on the other pair writes while the first half of the cases
  // run, and verifies during the second half.
  Proc& w = StartGuest(kBlkPair, BlkCmd("write", 53, 0, bytes));
  EXPECT_TRUE(WaitForBytesWritten("d0", kMiB, w)) << w.err() << w.out();
  Proc* v = nullptr;
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].reason);
    if (i == cases.size() / 2) {
      ASSERT_EQ(w.Wait(120), 0) << w.err() << w.out();
      v = &StartGuest(kBlkPair, BlkCmd("verify", 53, 0, bytes));
    }
    cases[i].run();
    ASSERT_TRUE(raw.SawClose()) << "no FF 02 + INIT after the case";
    EXPECT_TRUE(ViosLogHas("crq bad@crq: closing the connection: " + cases[i].reason)) << vios_->err();
    ASSERT_FALSE(HasFatalFailure());
  }
  ASSERT_NE(v, nullptr);
  v->Wait(120);
  ExpectWrittenAndVerified(w, *v, disk, 53, 0, bytes);

  // After all that, a well-behaved connection on the hostile adapter works.
  version_ok();
  ASSERT_EQ(raw.Send(Message::Command(Op::kPing, raw.generation())), crq::kHSuccess);
  EXPECT_EQ(raw.NextCommand().op, static_cast<uint8_t>(Op::kPing) | crq::kResponse);

  EXPECT_TRUE(vios_->Running()) << vios_->err();
  EXPECT_EQ(Stat("bad", "crq.closes"), cases.size()) << Viosctl("stats bad");
  EXPECT_EQ(Stat("d0", "crq.closes"), 0u) << Viosctl("stats d0");
  EXPECT_EQ(Stat("bad", "bytes_written"), 0u);
  // Nothing reached the hostile client's disk.
  EXPECT_TRUE(ReadAll(bad_disk) == std::vector<uint8_t>(kMiB)) << "bad.img changed";
}

}  // namespace
}  // namespace vioport
