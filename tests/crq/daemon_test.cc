// SPDX-License-Identifier: Apache-2.0
// crqd as its own process: partitions in other processes (a forked child, the
// test process) over RemotePartition, every hypercall a message. Checks the
// bytes that land in the partitions' memories, partition death (SIGKILL),
// crqd's death, the control socket and the HELLO checks.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "vioport/testing/process.h"
#include "gtest/gtest.h"
#include "vioport/transports/crq_hcall.h"
#include "vioport/emulators/crq_remote.h"

namespace vioport::crq {
namespace {

constexpr PartitionId kClient = 1;
constexpr PartitionId kServer = 2;
constexpr UnitAddress kClientUnit = 0x30000000;
constexpr UnitAddress kServerUnit = 0x30000001;
constexpr Liobn kClientLiobn = 0x10000001;
constexpr Liobn kServerLiobn = 0x10000002;
constexpr uint64_t kMemBytes = 4 << 20;
constexpr uint64_t kPage = kTcePageSize;
constexpr uint64_t kRw = kTceRead | kTceWrite;

// Server memory / LOCAL window (IOBA = RA): queue at 0, data to push at
// 0x10000 (2 pages), landing area for the client's data at 0x20000.
constexpr uint64_t kServerData = 0x10000;
constexpr uint64_t kServerLanding = 0x20000;
// Client memory / window (IOBA = RA): queue at 0, device-writable area at
// 0x40000 (2 pages), device-readable data at 0x50000 (1 page).
constexpr uint64_t kClientIn = 0x40000;
constexpr uint64_t kClientOut = 0x50000;

uint8_t PatternA(uint64_t i) { return static_cast<uint8_t>((i * 131 + 7) ^ (i >> 8)); }
uint8_t PatternB(uint64_t i) { return static_cast<uint8_t>((i * 29 + 101) ^ (i >> 5)); }

void MapRange(Partition& p, Liobn liobn, uint64_t ioba, uint64_t bytes, uint64_t perms, int64_t* rc) {
  *rc = kHSuccess;
  for (uint64_t off = 0; off < bytes && *rc == kHSuccess; off += kPage)
    *rc = p.PutTce(liobn, ioba + off, MakeTce(ioba + off, perms));
}

uint8_t Header(const Partition& p, uint64_t slot) {
  return std::atomic_ref<uint8_t>(p.memory()[16 * slot]).load(std::memory_order_acquire);
}

// Waits for slot `slot` of the queue at RA 0 to become valid.
std::optional<CrqMessage> WaitSlot(const Partition& p, uint64_t slot, double seconds = 10) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (Header(p, slot) == kCrqFree) {
    if (std::chrono::steady_clock::now() > end) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return DecodeEntry(std::span<const uint8_t, 16>(p.memory() + 16 * slot, 16));
}

bool Readable(int fd, int ms) {
  pollfd f{fd, POLLIN, 0};
  return ::poll(&f, 1, ms) == 1 && (f.revents & POLLIN);
}

// The server partition in a forked child. Exit code = the failed step (0: all passed).
[[noreturn]] void ServerChild(const std::string& socket, int to_parent, int from_parent) {
  auto fail = [](int code) { ::_exit(code); };
  auto p_or = RemotePartition::Connect({socket, kServer, kMemBytes});
  if (!p_or.ok()) fail(10);
  RemotePartition& p = **p_or;
  int64_t rc;
  MapRange(p, kServerLiobn, 0, kPage, kRw, &rc);
  if (rc != kHSuccess) fail(11);
  if (p.RegCrq(kServerUnit, 0, kPage) != kHClosed) fail(12);  // the client has no queue yet
  if (p.VioSignal(kServerUnit, 1) != kHSuccess) fail(13);
  for (uint64_t i = 0; i < 2 * kPage; ++i) p.memory()[kServerData + i] = PatternA(i);
  MapRange(p, kServerLiobn, kServerData, 2 * kPage, kTceRead, &rc);
  if (rc != kHSuccess) fail(14);
  MapRange(p, kServerLiobn, kServerLanding, kPage, kTceWrite, &rc);
  if (rc != kHSuccess) fail(15);
  if (::write(to_parent, "R", 1) != 1) fail(16);

  // INIT from the client: C0 01 00 .. 00 in slot 0 of our memory.
  if (!WaitSlot(p, 0)) fail(20);
  static constexpr uint8_t kInitBytes[16] = {0xC0, 0x01};
  if (std::memcmp(p.memory(), kInitBytes, 16) != 0) fail(21);
  if (p.SendCrq(kServerUnit, kInitCompleteHi, 0) != kHSuccess) fail(22);

  // "copy": 80 01 .., lo = IOBA of the client's writable area.
  auto req = WaitSlot(p, 1);
  if (!req || HeaderByte(req->hi) != kCrqCommand || SecondByte(req->hi) != 0x01) fail(30);
  // Push 2 pages LOCAL -> REMOTE, pull 1 page REMOTE -> LOCAL.
  if (p.CopyRdma(2 * kPage, kServerLiobn, kServerData, kClientLiobn, req->lo) != kHSuccess) fail(31);
  if (p.CopyRdma(kPage, kClientLiobn, kClientOut, kServerLiobn, kServerLanding) != kHSuccess) fail(32);
  for (uint64_t i = 0; i < kPage; ++i)
    if (p.memory()[kServerLanding + i] != PatternB(i)) fail(33);
  // The client's readable page is not writable by the device.
  if (p.CopyRdma(kPage, kServerLiobn, kServerData, kClientLiobn, kClientOut) != kHPermission) fail(34);
  if (p.SendCrq(kServerUnit, 0x8081000000000000, 0) != kHSuccess) fail(35);
  if (::write(to_parent, "D", 1) != 1) fail(36);
  char c;
  while (::read(from_parent, &c, 1) > 0) {
  }
  ::_exit(0);
}

class CrqDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/crqd-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    socket_ = dir_ + "/crqd.sock";
    control_ = dir_ + "/control.sock";
  }
  void TearDown() override {
    if (crqd_.pid > 0 && crqd_.Running()) {
      crqd_.Signal(SIGTERM);
      EXPECT_EQ(crqd_.Wait(20), 0) << crqd_.err();
    }
    if (HasFailure() && crqd_.pid > 0) std::fprintf(stderr, "--- crqd stderr ---\n%s\n", crqd_.err().c_str());
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  void StartCrqd(std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {CRQD_BIN,
                                     "--socket",
                                     socket_,
                                     "--control",
                                     control_,
                                     "--pair",
                                     "client=1:0x30000000:0x10000001:16,server=2:0x30000001:0x10000002:16"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    crqd_ = testproc::Spawn(argv, dir_, "crqd");
    ASSERT_GT(crqd_.pid, 0);
    // Ready when the partition socket exists (it is bound after the control socket).
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!std::filesystem::exists(socket_)) {
      ASSERT_TRUE(crqd_.Running()) << crqd_.err();
      ASSERT_LT(std::chrono::steady_clock::now(), end) << "crqd did not start";
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  std::unique_ptr<RemotePartition> Connect(PartitionId id) {
    auto p = RemotePartition::Connect({socket_, id, kMemBytes});
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? std::move(*p) : nullptr;
  }

  // One control command; the whole answer.
  std::string Control(const std::string& cmd) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, control_.c_str(), control_.size() + 1);
    const int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(s);
      return "connect failed";
    }
    const std::string line = cmd + "\n";
    EXPECT_EQ(::write(s, line.data(), line.size()), static_cast<ssize_t>(line.size()));
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(s, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    ::close(s);
    return out;
  }

  // Both partitions in this process, queues registered at RA/IOBA 0.
  void ConnectBoth() {
    client_ = Connect(kClient);
    server_ = Connect(kServer);
    ASSERT_TRUE(client_ && server_);
    int64_t rc;
    MapRange(*client_, kClientLiobn, 0, kPage, kRw, &rc);
    ASSERT_EQ(rc, kHSuccess);
    MapRange(*server_, kServerLiobn, 0, kPage, kRw, &rc);
    ASSERT_EQ(rc, kHSuccess);
    ASSERT_EQ(client_->RegCrq(kClientUnit, 0, kPage), kHClosed);
    ASSERT_EQ(server_->RegCrq(kServerUnit, 0, kPage), kHSuccess);
  }

  // Runs the server child and the client (here) through INIT, INIT COMPLETE
  // and the copies; returns with the child still alive (waiting on `go_`).
  void HandshakeWithChild() {
    int up[2], down[2];
    ASSERT_EQ(::pipe2(up, O_CLOEXEC), 0);
    ASSERT_EQ(::pipe2(down, O_CLOEXEC), 0);
    child_ = ::fork();
    ASSERT_GE(child_, 0);
    if (child_ == 0) {
      ::close(up[0]);
      ::close(down[1]);
      ServerChild(socket_, up[1], down[0]);
    }
    ::close(up[1]);
    ::close(down[0]);
    from_child_ = up[0];
    go_ = down[1];
    char c = 0;
    ASSERT_EQ(::read(from_child_, &c, 1), 1) << "server child exited early: " << ChildStatus();
    ASSERT_EQ(c, 'R');

    client_ = Connect(kClient);
    ASSERT_TRUE(client_);
    RemotePartition& p = *client_;
    int64_t rc;
    MapRange(p, kClientLiobn, 0, kPage, kRw, &rc);
    ASSERT_EQ(rc, kHSuccess);
    ASSERT_EQ(p.RegCrq(kClientUnit, 0, kPage), kHSuccess);  // the server's queue is there
    ASSERT_EQ(p.VioSignal(kClientUnit, 1), kHSuccess);
    MapRange(p, kClientLiobn, kClientIn, 2 * kPage, kTceWrite, &rc);
    ASSERT_EQ(rc, kHSuccess);
    for (uint64_t i = 0; i < kPage; ++i) p.memory()[kClientOut + i] = PatternB(i);
    MapRange(p, kClientLiobn, kClientOut, kPage, kTceRead, &rc);
    ASSERT_EQ(rc, kHSuccess);

    ASSERT_EQ(p.SendCrq(kClientUnit, kInitHi, 0), kHSuccess);
    ASSERT_TRUE(WaitSlot(p, 0)) << "no INIT COMPLETE; child: " << ChildStatus();
    static constexpr uint8_t kInitCompleteBytes[16] = {0xC0, 0x02};
    EXPECT_EQ(std::memcmp(p.memory(), kInitCompleteBytes, 16), 0);
    EXPECT_TRUE(Readable(p.interrupt_fd(), 5000)) << "no interrupt for INIT COMPLETE";

    ASSERT_EQ(p.SendCrq(kClientUnit, 0x8001000000000000, kClientIn), kHSuccess);
    auto done = WaitSlot(p, 1);
    ASSERT_TRUE(done) << "no copy response; child: " << ChildStatus();
    EXPECT_EQ(done->hi, 0x8081000000000000u);
    for (uint64_t i = 0; i < 2 * kPage; ++i) ASSERT_EQ(p.memory()[kClientIn + i], PatternA(i)) << "byte " << i;
    ASSERT_EQ(::read(from_child_, &c, 1), 1);
    ASSERT_EQ(c, 'D');
  }

  std::string ChildStatus() {
    int st = 0;
    if (::waitpid(child_, &st, WNOHANG) == child_) {
      reaped_ = true;
      return WIFEXITED(st) ? "exit " + std::to_string(WEXITSTATUS(st)) : "signal " + std::to_string(WTERMSIG(st));
    }
    return "running";
  }

  int WaitChild() {
    int st = 0;
    EXPECT_EQ(::waitpid(child_, &st, 0), child_);
    reaped_ = true;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }

  ~CrqDaemonTest() override {
    if (child_ > 0 && !reaped_) {
      ::kill(child_, SIGKILL);
      ::waitpid(child_, nullptr, 0);
    }
    for (int fd : {from_child_, go_})
      if (fd >= 0) ::close(fd);
  }

  std::string dir_, socket_, control_;
  testproc::Proc crqd_;
  std::unique_ptr<RemotePartition> client_, server_;
  pid_t child_ = -1;
  bool reaped_ = false;
  int from_child_ = -1, go_ = -1;
};

TEST_F(CrqDaemonTest, HelpAndBadArguments) {
  auto help = testproc::Spawn({CRQD_BIN, "--help"}, "/tmp", "crqd-help");
  ASSERT_EQ(help.Wait(10), 0);
  EXPECT_NE(help.out().find("--pair"), std::string::npos);
  auto bad = testproc::Spawn({CRQD_BIN, "--socket", socket_, "--control", control_, "--pair", "client=1:2:3"},
                             "/tmp", "crqd-bad");
  EXPECT_EQ(bad.Wait(10), 2);
  EXPECT_NE(bad.err().find("--pair"), std::string::npos);
}

TEST_F(CrqDaemonTest, TwoProcessesHandshakeAndCopy) {
  StartCrqd();
  HandshakeWithChild();
  ASSERT_FALSE(HasFatalFailure());
  ::close(go_);
  go_ = -1;
  EXPECT_EQ(WaitChild(), 0);
  // Its clean exit closed its connection too: the client's partner is gone.
  auto ev = WaitSlot(*client_, 2);
  ASSERT_TRUE(ev);
  EXPECT_EQ(ev->hi, TransportEventHi(kEventPartnerFailed));
  const std::string stats = Control("stats");
  EXPECT_NE(stats.find("hcall H_COPY_RDMA calls=3 errors=1 not_success=1 bytes_copied=12288"), std::string::npos)
      << stats;
  EXPECT_NE(stats.find("messages_delivered 4"), std::string::npos) << stats;
}

TEST_F(CrqDaemonTest, KilledPartitionGivesPartnerFF01AndRevokesItsWindow) {
  StartCrqd();
  HandshakeWithChild();
  ASSERT_FALSE(HasFatalFailure());
  RemotePartition& p = *client_;
  // While the server lives, the client may read its readable pages.
  ASSERT_EQ(p.CopyRdma(kPage, kServerLiobn, kServerData, kClientLiobn, kClientIn), kHSuccess);
  ASSERT_EQ(::kill(child_, SIGKILL), 0);
  EXPECT_EQ(WaitChild(), 128 + SIGKILL);
  auto ev = WaitSlot(p, 2);
  ASSERT_TRUE(ev) << "no FF 01 after SIGKILL";
  static constexpr uint8_t kFF01[16] = {0xFF, 0x01};
  EXPECT_EQ(std::memcmp(p.memory() + 32, kFF01, 16), 0);
  EXPECT_EQ(p.CopyRdma(kPage, kServerLiobn, kServerData, kClientLiobn, kClientIn), kHPermission);
  EXPECT_EQ(p.SendCrq(kClientUnit, 0x8001000000000000, 0), kHClosed);
  // The server may come back as a new process with the same id.
  auto again = Connect(kServer);
  ASSERT_TRUE(again);
  uint64_t tce = 1;
  EXPECT_EQ(again->GetTce(kServerLiobn, kServerData, &tce), kHSuccess);
  EXPECT_EQ(tce, 0u);  // a restarted partition starts with an empty TCE table
}

TEST_F(CrqDaemonTest, MigrateThroughControlSocket) {
  StartCrqd();
  ConnectBoth();
  ASSERT_FALSE(HasFatalFailure());
  EXPECT_EQ(Control("migrate 1 0x30000000 2"), "ok\n");
  auto ev = WaitSlot(*client_, 0);
  ASSERT_TRUE(ev);
  EXPECT_EQ(ev->hi, TransportEventHi(kEventMigrated));
  EXPECT_EQ(server_->SendCrq(kServerUnit, 0x8001000000000000, 0), kHClosed);  // disabled until re-enabled
  EXPECT_EQ(client_->EnableCrq(kClientUnit), kHInProgress);
  EXPECT_EQ(client_->EnableCrq(kClientUnit), kHInProgress);
  EXPECT_EQ(client_->EnableCrq(kClientUnit), kHSuccess);
  EXPECT_EQ(server_->SendCrq(kServerUnit, 0x8001000000000000, 0x1234), kHSuccess);
  auto msg = WaitSlot(*client_, 1);
  ASSERT_TRUE(msg);
  EXPECT_EQ(msg->lo, 0x1234u);

  // Other injections and errors, through crqctl.
  auto ctl = testproc::Spawn({CRQCTL_BIN, "--control", control_, "drop", "1", "0x30000000", "1"}, dir_, "crqctl");
  EXPECT_EQ(ctl.Wait(10), 0) << ctl.out() << ctl.err();
  EXPECT_EQ(server_->SendCrq(kServerUnit, 0x8001000000000000, 0), kHSuccess);  // lost
  EXPECT_EQ(Header(*client_, 2), kCrqFree);
  EXPECT_EQ(Control("free-busy 2 0x30000001 1"), "ok\n");
  EXPECT_EQ(server_->FreeCrq(kServerUnit), kHBusy);
  EXPECT_EQ(Control("fail 2 0x30000001"), "ok\n");
  auto ff01 = WaitSlot(*client_, 2);
  ASSERT_TRUE(ff01);
  EXPECT_EQ(ff01->hi, TransportEventHi(kEventPartnerFailed));
  EXPECT_EQ(Control("fail 9 9").rfind("error: ", 0), 0u);
  EXPECT_EQ(Control("bogus").rfind("error: ", 0), 0u);
  auto bad = testproc::Spawn({CRQCTL_BIN, "--control", control_, "migrate", "1"}, dir_, "crqctl");
  EXPECT_EQ(bad.Wait(10), 1);
  auto stats = testproc::Spawn({CRQCTL_BIN, "--control", control_, "stats"}, dir_, "crqctl");
  EXPECT_EQ(stats.Wait(10), 0);
  EXPECT_NE(stats.out().find("hcall H_ENABLE_CRQ calls=3"), std::string::npos) << stats.out();
  EXPECT_NE(stats.out().find("messages_lost 1"), std::string::npos) << stats.out();
  EXPECT_NE(stats.out().find("partitions_connected 2"), std::string::npos) << stats.out();
}

TEST_F(CrqDaemonTest, UnsealedMemfdAndDuplicateIdRefused) {
  StartCrqd();
  // A raw HELLO with an unsealed memfd.
  const int memfd = ::memfd_create("unsealed", MFD_CLOEXEC);
  ASSERT_GE(memfd, 0);
  ASSERT_EQ(::ftruncate(memfd, kMemBytes), 0);
  const int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_.c_str(), socket_.size() + 1);
  // The socket's file exists from bind(); until crqd's listen() a connect
  // is refused (seen once in CI): retry that for a while.
  int rc = -1;
  for (int i = 0; i < 1000 && rc != 0; ++i) {
    rc = ::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    if (rc != 0 && errno != ECONNREFUSED) break;
    if (rc != 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(rc, 0) << std::strerror(errno);
  wire::Hello hello;
  hello.partition = kClient;
  hello.memory_bytes = kMemBytes;
  ASSERT_TRUE(wire::SendWithFd(s, &hello, sizeof hello, memfd));
  wire::HelloReply reply;
  int irq = -1;
  ASSERT_TRUE(wire::RecvWithFd(s, &reply, sizeof reply, &irq));
  EXPECT_NE(reply.status, 0);
  EXPECT_EQ(irq, -1);
  EXPECT_NE(std::string(reply.error).find("F_SEAL_SHRINK"), std::string::npos) << reply.error;
  char b;
  EXPECT_EQ(::recv(s, &b, 1, 0), 0);  // then closed
  ::close(s);
  ::close(memfd);

  // The refused id is free: a proper partition connects; a second one with its id is refused.
  auto first = Connect(kClient);
  ASSERT_TRUE(first);
  auto second = RemotePartition::Connect({socket_, kClient, kMemBytes});
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("already connected"), std::string::npos) << second.status();
  first.reset();
  // Once the first has gone (crqd notices asynchronously), the id may connect again.
  absl::StatusOr<std::unique_ptr<RemotePartition>> third = absl::UnavailableError("not tried");
  for (int i = 0; i < 500 && !third.ok(); ++i) {
    third = RemotePartition::Connect({socket_, kClient, kMemBytes});
    if (!third.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(third.ok()) << third.status();
  const std::string stats = Control("stats");
  const size_t at = stats.find("hellos_refused ");
  ASSERT_NE(at, std::string::npos) << stats;
  EXPECT_GE(std::stoi(stats.substr(at + 15)), 2) << stats;
}

TEST_F(CrqDaemonTest, HcallDelayAppliedAndRoundTripCost) {
  StartCrqd({"--hcall-delay-ns", "1000000", "--delay-mode", "sleep"});
  client_ = Connect(kClient);
  ASSERT_TRUE(client_);
  int64_t rc;
  MapRange(*client_, kClientLiobn, 0, kPage, kRw, &rc);
  ASSERT_EQ(rc, kHSuccess);
  constexpr int kDelayed = 200;
  uint64_t tce = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kDelayed; ++i) ASSERT_EQ(client_->GetTce(kClientLiobn, 0, &tce), kHSuccess);
  const auto delayed = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(tce, MakeTce(0, kRw));
  EXPECT_GE(delayed, std::chrono::milliseconds(kDelayed));  // >= 1 ms each; lower bound only

  EXPECT_EQ(Control("delay 0"), "ok\n");
  constexpr int kCalls = 10000;
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kCalls; ++i) ASSERT_EQ(client_->GetTce(kClientLiobn, 0, &tce), kHSuccess);
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ crqd ] H_GET_TCE round trip: %.1f us per call over %d calls\n", ns / kCalls / 1000.0, kCalls);
  const std::string stats = Control("stats");
  EXPECT_NE(stats.find("hcall H_GET_TCE calls=" + std::to_string(kDelayed + kCalls) + " "), std::string::npos)
      << stats;
}

TEST_F(CrqDaemonTest, CrqdDeathFailsHcallsAndWakesWaiters) {
  StartCrqd();
  client_ = Connect(kClient);
  ASSERT_TRUE(client_);
  uint64_t tce;
  ASSERT_EQ(client_->GetTce(kClientLiobn, 0, &tce), kHSuccess);
  EXPECT_FALSE(Readable(client_->interrupt_fd(), 0));
  crqd_.Signal(SIGKILL);
  crqd_.Wait(10);
  // No call in flight: the watcher notices and signals the interrupt eventfd.
  EXPECT_TRUE(Readable(client_->interrupt_fd(), 5000));
  EXPECT_FALSE(client_->connected());
  EXPECT_EQ(client_->GetTce(kClientLiobn, 0, &tce), kHHardware);
  EXPECT_EQ(client_->RegCrq(kClientUnit, 0, kPage), kHHardware);
}

}  // namespace
}  // namespace vioport::crq
