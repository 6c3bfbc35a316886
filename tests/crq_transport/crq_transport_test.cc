// SPDX-License-Identifier: Apache-2.0
// virtio over CRQ end to end on one in-process crq::Hypervisor: a client
// partition running vioport's unchanged guest drivers (CrqDriverTransport) and
// a server partition running the backends (CrqServer on a polling thread).
// Every payload is compared byte by byte, on the guest and in the backing file.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "vioport/backends/blk_device.h"
#include "vioport/backends/rng_device.h"
#include "vioport/guest/blk_driver.h"
#include "vioport/guest/pattern.h"
#include "vioport/guest/rng_driver.h"
#include "vioport/emulators/crq_partition.h"
#include "vioport/transports/crq_guest.h"
#include "vioport/transports/crq_server.h"

namespace vioport::crq {
namespace {

constexpr PartitionId kClient = 1, kServer = 2, kHostile = 3;
constexpr uint64_t kClientWindow = 4 << 20;

class TempFile {
 public:
  explicit TempFile(uint64_t size) {
    path_ = "/tmp/vioport-crq-XXXXXX";
    fd_ = ::mkstemp(path_.data());
    EXPECT_GE(fd_, 0);
    EXPECT_EQ(::ftruncate(fd_, static_cast<off_t>(size)), 0);
  }
  ~TempFile() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  std::vector<uint8_t> Pread(uint64_t off, size_t len) const {
    std::vector<uint8_t> out(len);
    EXPECT_EQ(::pread(fd_, out.data(), len, static_cast<off_t>(off)), static_cast<ssize_t>(len));
    return out;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

// Two adapter pairs on one server partition: A (client partition 1) and B
// (partition 3, the hostile one in some tests).
struct Rig {
  Rig() {
    client = *LocalPartition::Create(hv, kClient, 8 << 20);
    server = *LocalPartition::Create(hv, kServer, 2 << 20);
    hostile = *LocalPartition::Create(hv, kHostile, 1 << 20);
    EXPECT_TRUE(hv.AddAdapterPair({kClient, 0x1000, 0x1000, kClientWindow, kServer, 0x2000, 0x2000, 1 << 20}).ok());
    EXPECT_TRUE(hv.AddAdapterPair({kHostile, 0x1001, 0x1001, 1 << 20, kServer, 0x2001, 0x2001, 1 << 20}).ok());
  }
  CrqServer* Serve(std::shared_ptr<VirtioDevice> dev, bool second) {
    CrqServerOptions o;
    o.unit = second ? 0x2001 : 0x2000;
    o.liobn = o.unit;
    o.remote_liobn = second ? 0x1001 : 0x1000;
    o.remote_window_bytes = second ? (1 << 20) : kClientWindow;
    o.memory_offset = second ? (512 << 10) : 0;
    o.name = second ? "B" : "A";
    auto s = CrqServer::Create(*server, std::move(dev), o);
    EXPECT_TRUE(s.ok()) << s.status();
    servers.push_back(std::move(*s));
    return servers.back().get();
  }
  std::unique_ptr<CrqDriverTransport> Guest() {
    CrqGuestOptions o;
    o.unit = 0x1000;
    o.liobn = 0x1000;
    o.window_bytes = kClientWindow;
    o.memory_offset = 0;
    o.memory_bytes = kClientWindow;
    auto t = CrqDriverTransport::Connect(*client, o);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? std::move(*t) : nullptr;
  }
  // One polling thread for all of the server partition's adapters (they
  // share its interrupt eventfd). `wait` is how long a Poll may sleep when
  // idle: long waits show whether a wake-up can be lost.
  void Start(std::vector<CrqServer*> servers, absl::Duration wait = absl::Milliseconds(50)) {
    stop = false;
    loop = std::thread([this, servers, wait] {
      CrqDispatcher d(*server);
      for (CrqServer* s : servers) d.Add(s);
      while (!stop) d.Poll(wait);
    });
  }
  void Stop() {
    stop = true;
    if (!loop.joinable()) return;
    const uint64_t one = 1;  // a spurious interrupt: the dispatcher wakes and sees `stop`
    EXPECT_EQ(::write(server->interrupt_fd(), &one, sizeof one), static_cast<ssize_t>(sizeof one));
    loop.join();
  }
  ~Rig() {
    Stop();
    servers.clear();
  }

  Hypervisor hv;
  std::unique_ptr<LocalPartition> client, server, hostile;
  std::vector<std::unique_ptr<CrqServer>> servers;
  std::atomic<bool> stop{false};
  std::thread loop;
};

std::shared_ptr<BlkDevice> OpenBlk(const TempFile& f) {
  BlkOptions bo;
  bo.path = f.path();
  bo.io = BlkOptions::Io::kInline;
  auto d = BlkDevice::Open(bo);
  EXPECT_TRUE(d.ok()) << d.status();
  return *d;
}

BlkDriverOptions DriverOpts() {
  BlkDriverOptions o;
  o.ring_features = feature::Bit(feature::kIndirectDesc) | feature::Bit(feature::kEventIdx);
  o.wait.timeout = absl::Seconds(10);
  return o;
}

void WriteVerify(BlkDriver& drv, const TempFile& file, uint64_t seed, uint64_t sector, size_t bytes) {
  std::vector<uint8_t> data(bytes), back(bytes);
  pattern::Fill(seed, sector * 512, data);
  ASSERT_TRUE(drv.Write(sector, data).ok());
  ASSERT_TRUE(drv.Read(sector, back).ok());
  EXPECT_EQ(pattern::FirstMismatch(seed, sector * 512, back), -1);
  EXPECT_EQ(pattern::FirstMismatch(seed, sector * 512, file.Pread(sector * 512, bytes)), -1);
}

// One blk device on pair A, served; the client connected and its blk driver
// initialised. Members go in reverse: driver, transport, rig (stops the
// server), file.
class CrqBlk : public ::testing::Test {
 protected:
  void SetUp() override {
    srv = rig.Serve(OpenBlk(file), false);
    rig.Start({srv});
    t = rig.Guest();
    ASSERT_TRUE(t);
    drv = std::make_unique<BlkDriver>(*t);
    ASSERT_TRUE(drv->Init(DriverOpts()).ok());
  }
  TempFile file{1 << 20};
  Rig rig;
  CrqServer* srv = nullptr;
  std::unique_ptr<CrqDriverTransport> t;
  std::unique_ptr<BlkDriver> drv;
};

TEST(CrqTransport, BlkWriteReadVerifyAndCopyCounts) {
  Rig rig;
  TempFile file(8 << 20);
  auto srv = rig.Serve(OpenBlk(file), false);
  rig.Start({srv});
  auto t = rig.Guest();
  ASSERT_TRUE(t);
  EXPECT_EQ(t->max_transfer(), kMaxTransfer);
  BlkDriver drv(*t);
  ASSERT_TRUE(drv.Init(DriverOpts()).ok());
  EXPECT_EQ(drv.info().capacity_sectors, (8u << 20) / 512);
  WriteVerify(drv, file, 42, 0, 256 << 10);  // crosses the 128 KiB transfer limit
  WriteVerify(drv, file, 43, 4096, 4096);

  // Copies per synchronous 4 KiB read, one request per batch.
  CrqCopyMemory& m = srv->memory();
  const uint64_t r0 = m.reads(), w0 = m.writes(), c0 = m.copies(), b0 = m.bytes();
  constexpr int kRequests = 32;
  std::vector<uint8_t> buf(4096);
  for (int i = 0; i < kRequests; ++i) {
    // A different sector every time: a stale request header (read ahead
    // before this request existed) would read the wrong data.
    const uint64_t off = 8192 + 4096ull * i;
    ASSERT_TRUE(drv.Read(off / 512, buf).ok());
    ASSERT_EQ(pattern::FirstMismatch(42, off, buf), -1) << i;
  }
  const double reads = double(m.reads() - r0) / kRequests, writes = double(m.writes() - w0) / kRequests;
  const double copies = double(m.copies() - c0) / kRequests, bytes = double(m.bytes() - b0) / kRequests;
  std::printf("per 4 KiB read: %.2f Read() + %.2f Write() = %.2f H_COPY_RDMA, %.0f bytes\n", reads, writes, copies,
              bytes);
  // Batched: avail index + avail run + descriptor table (or chain) + header in;
  // data + status + used entry + used index out. Bounded, not per byte: 8 and
  // 5 per request. On a loaded machine the server may wake once more than
  // the requests need (a notification it finds already served): that pass
  // costs one avail-index read and one avail_event write, so two such passes
  // are allowed over the run, and no more.
  EXPECT_LE(m.reads() - r0, 8u * kRequests + 2);
  EXPECT_LE(m.writes() - w0, 5u * kRequests + 2);
  EXPECT_GE(bytes, 4096.0 + 16 + 1);
  // The whole 256-entry table is one copy; with one request per batch the
  // header's page is read ahead for that request alone.
  EXPECT_LE(bytes, 4096.0 + 4096 + 4096 + 1024);
  EXPECT_EQ(m.failures(), 0u);
}

TEST(CrqTransport, RngReadsEntropy) {
  Rig rig;
  auto dev = std::make_shared<RngDevice>();
  auto srv = rig.Serve(dev, false);
  rig.Start({srv});
  auto t = rig.Guest();
  ASSERT_TRUE(t);
  RngDriver drv(*t);
  ASSERT_TRUE(drv.Init(0).ok());
  std::vector<uint8_t> out(16384, 0);
  ASSERT_TRUE(drv.Read(out).ok());
  size_t zeros = 0;
  for (uint8_t b : out) zeros += b == 0;
  EXPECT_LT(zeros, out.size() / 64);  // ~64 expected for random bytes
  EXPECT_GE(dev->bytes_served(), out.size());
}

TEST(CrqTransport, TcePermissionsAreEnforcedAndNothingIsCopied) {
  Rig rig;
  TempFile file(1 << 20);
  auto srv = rig.Serve(OpenBlk(file), false);
  rig.Start({srv});
  auto t = rig.Guest();
  ASSERT_TRUE(t);
  rig.Stop();  // the test thread uses the server's memory now
  DmaBuffer wo = *t->dma().Allocate(4096, 64, Access::kWrite);
  DmaBuffer ro = *t->dma().Allocate(4096, 64, Access::kRead);
  std::memset(wo.host, 0xAB, 4096);
  std::memset(ro.host, 0xCD, 4096);
  CrqCopyMemory& m = srv->memory();
  std::vector<uint8_t> got(4096, 0x11);
  absl::Status s = m.Read(wo.device_addr, got.data(), got.size());
  EXPECT_TRUE(absl::IsPermissionDenied(s)) << s;
  EXPECT_EQ(got, std::vector<uint8_t>(4096, 0x11));  // nothing copied
  std::vector<uint8_t> in(4096, 0x77);
  s = m.Write(ro.device_addr, in.data(), in.size());
  EXPECT_TRUE(absl::IsPermissionDenied(s)) << s;
  EXPECT_EQ(ro.host[0], 0xCD);
  // The allowed directions work.
  EXPECT_TRUE(m.Read(ro.device_addr, got.data(), got.size()).ok());
  EXPECT_EQ(got[4095], 0xCD);
  EXPECT_TRUE(m.Write(wo.device_addr, in.data(), in.size()).ok());
  EXPECT_EQ(wo.host[100], 0x77);
  // Outside the window; a freed (unmapped) buffer.
  EXPECT_TRUE(absl::IsOutOfRange(m.Read(kClientWindow + 4096, got.data(), 16)));
  t->dma().Free(ro);
  EXPECT_FALSE(m.Read(ro.device_addr, got.data(), 16).ok());
}

TEST_F(CrqBlk, DeviceWriteIntoReadOnlyBufferIsARingError) {
  // A read request whose data buffer the client mapped device-readable only.
  DmaBuffer ro = *t->dma().Allocate(4096, 4096, Access::kRead);
  std::memset(ro.host, 0x5A, 4096);
  ASSERT_TRUE(drv->Submit(0, BlkOp::kRead, 0, &ro, 4096, 7).ok());
  drv->Kick(0);
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (!(t->GetStatus() & status::kDeviceNeedsReset) && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_TRUE(t->GetStatus() & status::kDeviceNeedsReset);
  EXPECT_EQ(ro.host[0], 0x5A);
  EXPECT_EQ(ro.host[4095], 0x5A);
  EXPECT_GE(srv->memory().failures(), 1u);
  // Recovery: re-initialise, I/O works again.
  ASSERT_TRUE(drv->Init(DriverOpts()).ok());
  WriteVerify(*drv, file, 9, 8, 8192);
}

TEST_F(CrqBlk, ClientFreeCrqThenReconnect) {
  WriteVerify(*drv, file, 1, 0, 8192);
  const uint8_t gen = t->generation();
  ASSERT_TRUE(t->Reconnect().ok());  // H_FREE_CRQ: the server sees FF 02
  EXPECT_EQ(t->generation(), static_cast<uint8_t>(gen + 1));
  EXPECT_GE(srv->counters().partner_resets.load(), 1u);
  ASSERT_TRUE(drv->Init(DriverOpts()).ok());
  WriteVerify(*drv, file, 2, 16, 8192);
  EXPECT_GE(srv->counters().connections.load(), 2u);
}

TEST_F(CrqBlk, ServerPartnerFailureShowsNeedsResetAndRecovers) {
  WriteVerify(*drv, file, 3, 0, 4096);
  ASSERT_TRUE(rig.hv.InjectPartnerFailed(kServer, 0x2000).ok());  // FF 01 to the client
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (!(t->GetStatus() & status::kDeviceNeedsReset) && absl::Now() < deadline) {
    t->WaitForInterrupt(0, absl::Milliseconds(1));
  }
  EXPECT_TRUE(drv->driver().NeedsReset());
  ASSERT_TRUE(drv->Init(DriverOpts()).ok());
  WriteVerify(*drv, file, 4, 32, 4096);
}

// A raw client on pair B that speaks whatever it likes.
class RawClient {
 public:
  explicit RawClient(Partition& p) : p_(p), q_(p.memory(), 4096) {
    EXPECT_EQ(p.PutTce(0x1001, 0, MakeTce(0, kTceRead | kTceWrite)), kHSuccess);
    q_.Reset();
    const int64_t rc = p.RegCrq(0x1001, 0, 4096);
    EXPECT_TRUE(rc == kHSuccess || rc == kHClosed);
    p.VioSignal(0x1001, 1);
  }
  void Send(const Message& m) { EXPECT_EQ(p_.SendCrq(0x1001, m.hi(), m.lo()), kHSuccess); }
  // Next entry, or valid == 0 on timeout.
  Message Next(absl::Duration timeout = absl::Seconds(2)) {
    const absl::Time deadline = absl::Now() + timeout;
    Message m;
    for (;;) {
      while (!q_.Pop(&m)) {
        if (absl::Now() > deadline) return Message{0};
        absl::SleepFor(absl::Microseconds(100));
      }
      // The server's flow-control reports (one per 32 messages it consumed).
      if (m.valid == kValidCommand && m.op == static_cast<uint8_t>(Op::kCredit)) {
        credits_++;
        continue;
      }
      return m;
    }
  }
  int credits() const { return credits_; }
  // INIT -> INIT COMPLETE (the server may have sent its own INIT first).
  bool Handshake() {
    Send(Message::Init(kInit));
    for (;;) {
      Message m = Next();
      if (m.valid == 0) return false;
      if (m.valid == kValidInit && m.op == kInitComplete) return true;
      if (m.valid == kValidInit && m.op == kInit) Send(Message::Init(kInitComplete));
    }
  }
  bool Version(uint16_t major, Message* reply, uint16_t entries = 256) {
    Send(Message::Command(Op::kVersion, 1, major << 8, 0, VersionCaps{entries, 4096, 4}.Encode()));
    for (;;) {
      Message m = Next();
      if (m.valid == 0) return false;
      if (m.valid == kValidCommand) {
        *reply = m;
        return true;
      }
    }
  }
  // Waits for the server's reaction to a close: FF 02, then its INIT.
  bool SawClose() {
    bool ff = false;
    for (;;) {
      Message m = Next();
      if (m.valid == 0) return false;
      if (m.valid == kValidEvent && m.op == kEventDeregistered) ff = true;
      if (ff && m.valid == kValidInit && m.op == kInit) return true;
    }
  }

 private:
  Partition& p_;
  CrqQueue q_;
  int credits_ = 0;
};

TEST(CrqTransport, HostileClientIsDisconnectedOthersKeepWorking) {
  Rig rig;
  TempFile file(1 << 20), other(1 << 20);
  auto good = rig.Serve(OpenBlk(file), false);
  auto bad = rig.Serve(OpenBlk(other), true);
  rig.Start({good, bad});
  auto t = rig.Guest();
  ASSERT_TRUE(t);
  // Destroyed (its reset answered) before the servers stop.
  auto drv_owner = std::make_unique<BlkDriver>(*t);
  BlkDriver& drv = *drv_owner;
  ASSERT_TRUE(drv.Init(DriverOpts()).ok());

  RawClient raw(*rig.hostile);
  // 1. A command before INIT is a leftover of a connection that was reset
  // (the client sent it before it saw the event): dropped and counted,
  // unanswered, not a close.
  raw.Send(Message::Command(Op::kGetStatus, 1));
  EXPECT_EQ(raw.Next(absl::Milliseconds(100)).valid, 0);
  EXPECT_EQ(bad->counters().closes.load(), 0u);
  EXPECT_EQ(bad->counters().stale_generation.load(), 1u);
  // A command after INIT but before VERSION is malformed: closed.
  ASSERT_TRUE(raw.Handshake());
  raw.Send(Message::Command(Op::kGetStatus, 1));
  EXPECT_TRUE(raw.SawClose());
  EXPECT_EQ(bad->counters().closes.load(), 1u);
  WriteVerify(drv, file, 10, 0, 4096);

  // 2. Wrong major version: status 3, then closed.
  ASSERT_TRUE(raw.Handshake());
  Message reply;
  ASSERT_TRUE(raw.Version(7, &reply));
  EXPECT_EQ(reply.op, static_cast<uint8_t>(Op::kVersion) | kResponse);
  EXPECT_EQ(reply.status, static_cast<uint8_t>(MsgStatus::kVersionMismatch));
  EXPECT_TRUE(raw.SawClose());
  EXPECT_EQ(bad->counters().closes.load(), 2u);
  WriteVerify(drv, file, 11, 8, 4096);

  // 3. Garbage opcode after a good VERSION.
  ASSERT_TRUE(raw.Handshake());
  ASSERT_TRUE(raw.Version(kVersionMajor, &reply));
  EXPECT_EQ(reply.status, 0);
  raw.Send(Message::Command(static_cast<Op>(0x55), 1, 0xffff, 0xffff, ~0ull));
  EXPECT_TRUE(raw.SawClose());
  EXPECT_EQ(bad->counters().closes.load(), 3u);

  // 4. A ring IOBA outside the client's window.
  ASSERT_TRUE(raw.Handshake());
  ASSERT_TRUE(raw.Version(kVersionMajor, &reply));
  raw.Send(Message::Command(Op::kSetQueue, 1, 0, static_cast<uint16_t>(QueueField::kDesc), 1ull << 40));
  Message r = raw.Next();
  EXPECT_EQ(r.status, static_cast<uint8_t>(MsgStatus::kOutOfRange));
  EXPECT_TRUE(raw.SawClose());
  EXPECT_EQ(bad->counters().closes.load(), 4u);

  // 5. A message of an old generation is dropped, not answered.
  ASSERT_TRUE(raw.Handshake());
  ASSERT_TRUE(raw.Version(kVersionMajor, &reply));
  raw.Send(Message::Command(Op::kGetStatus, 9));
  EXPECT_EQ(raw.Next(absl::Milliseconds(100)).valid, 0);
  raw.Send(Message::Command(Op::kPing, 1));
  EXPECT_EQ(raw.Next().op, static_cast<uint8_t>(Op::kPing) | kResponse);

  WriteVerify(drv, file, 12, 16, 65536);
  const absl::Time t0 = absl::Now();
  drv_owner.reset();  // VirtioDriver::Reset: SET_STATUS 0, answered
  EXPECT_LT(absl::Now() - t0, absl::Seconds(1));
  EXPECT_TRUE(t->errors().empty()) << t->errors().front();
  rig.Stop();  // last_close_reason() is the server thread's
  EXPECT_EQ(good->counters().closes.load(), 0u);
  EXPECT_EQ(good->counters().partner_resets.load(), 0u);
  EXPECT_EQ(bad->counters().closes.load(), 4u);
  EXPECT_GE(bad->counters().stale_generation.load(), 2u);
  EXPECT_NE(bad->last_close_reason().find("outside the client's window"), std::string::npos)
      << bad->last_close_reason();
}

TEST(CrqFlowControl, WindowCreditsAndWraparound) {
  FlowControl f;
  f.Reset(/*partner_entries=*/8, /*my_entries=*/16);
  EXPECT_EQ(f.limit(), 4);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(f.CanSend());
    f.Sent();
  }
  EXPECT_FALSE(f.CanSend());
  EXPECT_FALSE(f.Credit(5));  // more than was sent
  EXPECT_TRUE(f.Credit(3));
  EXPECT_EQ(f.outstanding(), 1);
  EXPECT_TRUE(f.CanSend());
  EXPECT_FALSE(f.Credit(2));  // going backwards is "more than sent" modulo 2^16
  // The receiver reports every eighth of its own queue (16 / 8 = 2).
  f.Consumed();
  EXPECT_FALSE(f.ShouldReport());
  f.Consumed();
  EXPECT_TRUE(f.ShouldReport());
  EXPECT_EQ(f.Report(), 2);
  EXPECT_FALSE(f.ShouldReport());
  // Counters wrap at 2^16: 70000 messages sent and credited one by one.
  f.Reset(256, 256);
  for (uint32_t i = 1; i <= 70000; ++i) {
    ASSERT_TRUE(f.CanSend());
    f.Sent();
    ASSERT_TRUE(f.Credit(static_cast<uint16_t>(i)));
  }
  EXPECT_EQ(f.outstanding(), 0);
}

// Flow control: a client that advertises 8 CRQ entries gets at most 4 of
// the server's messages into its queue until it reports them consumed with
// CREDIT; the rest wait, in order, and go out when the CREDIT comes. A
// request sent while the answer to the previous one is still waiting is a
// second request in flight: answered status 2, not executed.
TEST(CrqTransport, ServerKeepsHalfTheClientQueueAndWaitsForCredit) {
  Rig rig;
  TempFile file(1 << 20);
  auto srv = rig.Serve(OpenBlk(file), true);
  rig.Start({srv});
  RawClient raw(*rig.hostile);
  ASSERT_TRUE(raw.Handshake());
  Message reply;
  ASSERT_TRUE(raw.Version(kVersionMajor, &reply, /*entries=*/8));
  ASSERT_EQ(reply.status, 0);
  for (int i = 0; i < 6; ++i) raw.Send(Message::Command(Op::kPing, 1, static_cast<uint16_t>(i)));
  // Four answers, then nothing: the fifth waits for credit.
  for (int i = 0; i < 4; ++i) {
    const Message m = raw.Next(absl::Seconds(2));
    ASSERT_EQ(m.op, static_cast<uint8_t>(Op::kPing) | kResponse) << i;
    EXPECT_EQ(m.status, 0);
  }
  EXPECT_EQ(raw.Next(absl::Milliseconds(200)).valid, 0);
  EXPECT_GE(srv->counters().flow_blocked.load(), 1u);
  // The sixth came while the fifth's answer was undelivered.
  EXPECT_EQ(srv->counters().protocol_errors.load(), 1u);
  raw.Send(Message::Command(Op::kCredit, 1, 4));
  Message m = raw.Next();
  EXPECT_EQ(m.op, static_cast<uint8_t>(Op::kPing) | kResponse);
  EXPECT_EQ(m.status, 0);
  m = raw.Next();
  EXPECT_EQ(m.op, static_cast<uint8_t>(Op::kPing) | kResponse);
  EXPECT_EQ(m.status, static_cast<uint8_t>(MsgStatus::kBadState));
  // A CREDIT for messages never sent is a protocol error: closed.
  raw.Send(Message::Command(Op::kCredit, 1, 100));
  EXPECT_TRUE(raw.SawClose());
  rig.Stop();
  EXPECT_EQ(srv->counters().closes.load(), 1u);
  EXPECT_NE(srv->last_close_reason().find("CREDIT"), std::string::npos) << srv->last_close_reason();
}

// Two adapters of one server partition share its interrupt eventfd. Served by
// one dispatcher that may sleep 1 s when idle, every message must still be
// handled at once, whichever adapter's edge woke the dispatcher: pair A's
// control requests and I/O interleaved with pair B's pings, timed.
TEST(CrqTransport, SharedInterruptEventfdLosesNoWakeup) {
  Rig rig;
  TempFile file(1 << 20), other(1 << 20);
  auto a = rig.Serve(OpenBlk(file), false);
  auto b = rig.Serve(OpenBlk(other), true);
  rig.Start({a, b}, absl::Seconds(1));
  absl::SleepFor(absl::Milliseconds(20));  // the dispatcher is asleep in its 1 s wait
  auto t = rig.Guest();
  ASSERT_TRUE(t);
  RawClient raw(*rig.hostile);
  ASSERT_TRUE(raw.Handshake());
  Message reply;
  ASSERT_TRUE(raw.Version(kVersionMajor, &reply));
  ASSERT_EQ(reply.status, 0);
  {
    BlkDriver drv(*t);
    ASSERT_TRUE(drv.Init(DriverOpts()).ok());
    absl::Duration slowest = absl::ZeroDuration();
    constexpr int kRounds = 50;
    for (int i = 0; i < kRounds; ++i) {
      const absl::Time t0 = absl::Now();
      raw.Send(Message::Command(Op::kPing, 1));
      EXPECT_EQ(t->GetStatus() & status::kDeviceNeedsReset, 0);  // pair A, while B's ping is pending
      const Message m = raw.Next(absl::Milliseconds(500));
      ASSERT_EQ(m.op, static_cast<uint8_t>(Op::kPing) | kResponse) << "round " << i;
      WriteVerify(drv, file, 100 + i, 8 * (i % 64), 4096);
      slowest = std::max(slowest, absl::Now() - t0);
      absl::SleepFor(absl::Milliseconds(i % 3));  // let the dispatcher fall asleep again sometimes
    }
    // A round is a few ms; a lost wake-up would cost the dispatcher's 1 s wait.
    std::printf("slowest round: %s\n", absl::FormatDuration(slowest).c_str());
    EXPECT_LT(slowest, absl::Milliseconds(500));
  }
  EXPECT_TRUE(t->errors().empty()) << t->errors().front();
  rig.Stop();
  EXPECT_EQ(a->counters().closes.load() + b->counters().closes.load(), 0u);
  EXPECT_GE(b->counters().requests.load(), 51u);  // VERSION + pings
  // 50 pings consumed: the server reported them once (every 32).
  EXPECT_EQ(raw.credits(), 1);
  EXPECT_EQ(b->counters().credits_sent.load(), 1u);
}

}  // namespace
}  // namespace vioport::crq
