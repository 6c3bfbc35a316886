// SPDX-License-Identifier: Apache-2.0
// VhostUserServer end to end: a raw front-end (tests/vhost_user/
// vhost_user_test_support.h) connects to the server's socket, walks through
// the set-up QEMU performs, and drives a real BlkDevice on a temp file through
// split and packed rings that core's driver queues build in a sealed memfd.
// Every request is checked on the data: in the file behind the device and in
// the guest's read buffers.
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <gtest/gtest.h>

#include <cstring>

#include "vhost_user_test_support.h"
#include "vioport/backends/blk_device.h"
#include "vioport/core/inflight_log.h"
#include "vioport/core/ring_error.h"
#include "vioport/core/spec.h"
#include "vioport/testing/echo_device.h"

namespace vioport::vutest {
namespace {

constexpr uint64_t kFileBytes = 4 << 20;

std::shared_ptr<BlkDevice> OpenBlk(const TempFile& f, uint16_t queues = 1) {
  BlkOptions bo;
  bo.path = f.path();
  bo.num_queues = queues;
  auto d = BlkDevice::Open(bo);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? *d : nullptr;
}

VhostUserServerOptions ServerOptions(const std::string& tag) {
  VhostUserServerOptions o;
  o.socket_path = TempPath(tag);
  o.name = tag + "@vhost-user";
  return o;
}

constexpr uint8_t kRunning = status::kAcknowledge | status::kDriver | status::kFeaturesOk | status::kDriverOk;
constexpr uint8_t kStopped = status::kAcknowledge | status::kDriver | status::kFeaturesOk;

// ---- the happy path ----------------------------------------------------------

TEST(VhostUserServer, QemuSessionSplitRings) {
  TempFile file(kFileBytes);
  auto dev = OpenBlk(file, 2);
  ASSERT_TRUE(dev);
  Loop loop;
  VhostUserServer* srv = loop.AddServer(dev, ServerOptions("qemu"));
  ASSERT_TRUE(srv);

  GuestOptions go;
  go.queues = 2;
  Guest g(srv->options().socket_path, go);
  ASSERT_TRUE(loop.WaitFor([&] { return srv->connected(); }));
  EXPECT_EQ(loop.Status(srv), 0);
  ASSERT_TRUE(g.Negotiate());

  // What the back-end offers: the device's bits, the ring bits, protocol features.
  for (unsigned b : {feature::kVersion1, feature::kIndirectDesc, feature::kEventIdx, feature::kRingPacked,
                     vu::kFeatureProtocolFeatures, blk::feature::kFlush, blk::feature::kMq})
    EXPECT_TRUE(feature::Has(g.offered(), b)) << "feature bit " << b;
  for (unsigned b : {vu::proto::kMq, vu::proto::kReplyAck, vu::proto::kConfig, vu::proto::kInflightShmfd,
                     vu::proto::kResetDevice, vu::proto::kConfigureMemSlots, vu::proto::kBackendReq})
    EXPECT_TRUE(feature::Has(g.offered_proto(), b)) << "protocol bit " << b;
  for (unsigned b : {vu::proto::kLogShmfd, vu::proto::kHostNotifier, vu::proto::kStatus})
    EXPECT_FALSE(feature::Has(g.offered_proto(), b)) << "protocol bit " << b;
  EXPECT_EQ(g.fe().GetU64(Req::kGetQueueNum), 2u);
  EXPECT_EQ(loop.Status(srv), status::kAcknowledge | status::kDriver);

  // GET_CONFIG, as QEMU's vhost-user-blk does at realize time.
  {
    vu::ConfigHeader h{0, blk::kConfigSize, 0};
    std::vector<uint8_t> p = AsBytes(h);
    p.resize(sizeof h + blk::kConfigSize);
    ASSERT_TRUE(g.fe().Send(Req::kGetConfig, p));
    auto r = g.fe().ReadReply(Req::kGetConfig);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->payload.size(), p.size());
    blk::Config c{};  // the config space is its first kConfigSize bytes
    std::memcpy(&c, r->payload.data() + sizeof h, blk::kConfigSize);
    EXPECT_EQ(c.capacity, kFileBytes / 512);
    EXPECT_EQ(c.num_queues, 2);
  }

  ASSERT_TRUE(g.Start());
  EXPECT_EQ(loop.Status(srv), kRunning);

  // A batch of writes on each ring in one kick, then reads of the same sectors.
  std::map<uint64_t, std::vector<uint8_t>> written;  // sector -> data
  for (uint16_t q = 0; q < 2; ++q) {
    std::vector<uint64_t> toks;
    for (int i = 0; i < 8; ++i) {
      const uint64_t sector = 64 * (q * 8 + i) + 3;
      const size_t len = 512 * (1 + i);
      written[sector] = RandomBytes(len, 100 + q * 8 + i);
      toks.push_back(g.AddBlk(q, blk::req::kOut, sector, written[sector], len));
    }
    auto done = g.Complete(q, toks.size());
    ASSERT_EQ(done.size(), toks.size());
    for (uint64_t t : toks) {
      EXPECT_EQ(g.BlkStatus(t), blk::status::kOk);
      EXPECT_EQ(done[t], 1u);
      g.FreeBlk(t);
    }
  }
  for (auto& [sector, data] : written) EXPECT_EQ(file.Pread(sector * 512, data.size()), data) << "sector " << sector;
  for (uint16_t q = 0; q < 2; ++q) {
    std::map<uint64_t, uint64_t> tok_sector;
    for (auto& [sector, data] : written)
      if ((sector / 64) / 8 == q) tok_sector[g.AddBlk(q, blk::req::kIn, sector, {}, data.size())] = sector;
    auto done = g.Complete(q, tok_sector.size());
    ASSERT_EQ(done.size(), tok_sector.size());
    for (auto& [t, sector] : tok_sector) {
      EXPECT_EQ(g.BlkStatus(t), blk::status::kOk);
      EXPECT_EQ(done[t], written[sector].size() + 1);
      EXPECT_EQ(g.BlkData(t), written[sector]) << "sector " << sector;
      g.FreeBlk(t);
    }
  }
  // The base counters every transport reports: 16 writes and 16 reads; the
  // writes carried their data plus a 16-byte header in and a status byte out,
  // the reads a header in and their data plus a status byte out.
  uint64_t data = 0;
  for (auto& [sector, d] : written) data += d.size();
  EXPECT_EQ(loop.Counter(srv, "requests"), 2 * written.size());
  EXPECT_EQ(loop.Counter(srv, "bytes_in"), data + 2 * written.size() * 16);
  EXPECT_EQ(loop.Counter(srv, "bytes_out"), data + 2 * written.size());
  EXPECT_GT(loop.Counter(srv, "notifications"), 0u);
  EXPECT_GT(loop.Counter(srv, "interrupts"), 0u);
  EXPECT_EQ(loop.Counter(srv, "activations"), 2u);  // as each of the two rings started (Reconcile)
  EXPECT_EQ(loop.Counter(srv, "reconnects"), 0u);
  g.DrainCalls();  // after the counter read: the loop has sent what it counted
  EXPECT_GT(g.calls(), 0u);
  EXPECT_EQ(loop.Counter(srv, "protocol_errors"), 0u);
  EXPECT_EQ(loop.Counter(srv, "ring_errors"), 0u);

  // The in-flight area: each queue's log is live, and empty once all completed.
  {
    void* p = ::mmap(nullptr, g.inflight_size(), PROT_READ, MAP_SHARED, g.inflight_fd(), 0);
    ASSERT_NE(p, MAP_FAILED);
    const auto* base = static_cast<const uint8_t*>(p);
    // Each queue's share has room for either ring format's log.
    const size_t stride = g.inflight_size() / 2;
    EXPECT_GE(stride, PackedInflightLog::RegionBytes(go.queue_size));
    for (uint16_t q = 0; q < 2; ++q) {
      const uint8_t* log = base + q * stride;
      uint16_t version, desc_num, used_idx;
      std::memcpy(&version, log + 8, 2);
      std::memcpy(&desc_num, log + 10, 2);
      std::memcpy(&used_idx, log + 14, 2);
      EXPECT_EQ(version, 1);
      EXPECT_EQ(desc_num, go.queue_size);
      EXPECT_EQ(used_idx, 16) << "queue " << q << ": 8 writes + 8 reads completed";
      for (uint32_t i = 0; i < go.queue_size; ++i) EXPECT_EQ(log[16 + 16 * i], 0) << "entry " << i << " in flight";
    }
    ::munmap(p, g.inflight_size());
  }

  // GET_VRING_BASE stops each ring and returns where it stopped; the device
  // runs while any ring does.
  EXPECT_EQ(g.fe().GetVringBase(0), 16u);
  EXPECT_EQ(loop.Status(srv), kRunning);
  EXPECT_EQ(g.fe().GetVringBase(1), 16u);
  EXPECT_EQ(loop.Status(srv), kStopped);
  // A stopped ring is not served: a request stays put (and no call comes).
  g.DrainCalls();
  const uint64_t parked = g.AddBlk(0, blk::req::kIn, 0, {}, 512);
  g.queue(0).KickPrepare();
  g.Kick(0);
  EXPECT_FALSE(WaitEventFd(g.call_fd(0), 100));
  EXPECT_EQ(g.BlkStatus(parked), 0xAA);
  // Restarted where it stopped (the same ring memory and driver state), the
  // ring picks the parked request up and goes on.
  ASSERT_TRUE(g.StartRing(0, /*new_queue=*/false, 16));
  ASSERT_TRUE(g.StartRing(1, /*new_queue=*/false, 16));
  EXPECT_EQ(loop.Status(srv), kRunning);
  auto done = g.Complete(0, 1);
  EXPECT_EQ(done.count(parked), 1u);
  EXPECT_EQ(g.BlkStatus(parked), blk::status::kOk);
  g.FreeBlk(parked);
  EXPECT_EQ(g.VerifiedIo(&file, 7), 8);
  EXPECT_EQ(g.fe().GetVringBase(0), 16u + 1 + 4);
  EXPECT_EQ(g.fe().GetVringBase(1), 16u + 4);
}

TEST(VhostUserServer, WithoutReplyAck) {
  // QEMU without REPLY_ACK: nothing but the GET_* requests may be answered,
  // or every later reply would be read as the wrong one.
  TempFile file(kFileBytes);
  auto dev = OpenBlk(file);
  Loop loop;
  VhostUserServer* srv = loop.AddServer(dev, ServerOptions("noack"));
  Guest g(srv->options().socket_path);
  ASSERT_TRUE(g.Negotiate(~(1ull << vu::proto::kReplyAck)));
  ASSERT_TRUE(g.Start());
  EXPECT_EQ(g.VerifiedIo(&file, 3), 4);
  EXPECT_EQ(g.fe().GetVringBase(0), 4u);
  // need_reply without REPLY_ACK: still no answer (GET_FEATURES's reply comes next).
  ASSERT_TRUE(g.fe().Send(Req::kSetVringEnable, State(0, 1), {}, true));
  EXPECT_EQ(g.fe().GetU64(Req::kGetFeatures), g.offered());
}

TEST(VhostUserServer, ConfigureMemSlotsTwoRegions) {
  // Rings in one region, request buffers in another, both from ADD_MEM_REG.
  TempFile file(kFileBytes);
  auto dev = OpenBlk(file);
  Loop loop;
  VhostUserServer* srv = loop.AddServer(dev, ServerOptions("slots"));
  GuestOptions go;
  go.mem_slots = true;
  Guest g(srv->options().socket_path, go);
  ASSERT_TRUE(g.Negotiate());
  EXPECT_EQ(g.fe().GetU64(Req::kGetMaxMemSlots), vu::kMaxMemSlots);
  ASSERT_TRUE(g.Start());
  EXPECT_EQ(g.VerifiedIo(&file, 11), 4);

  // Memory hot-unplug and re-plug of the data region while the ring runs:
  // the ring is rebuilt at its position and carries on.
  vu::SingleMemRegion m{0, g.data_ram().region()};
  const int fd = g.data_ram().fd();
  ASSERT_TRUE(g.fe().Ack(Req::kRemMemReg, AsBytes(m), {&fd, 1}));
  ASSERT_TRUE(g.fe().Ack(Req::kAddMemReg, AsBytes(m), {&fd, 1}));
  EXPECT_EQ(loop.Status(srv), kRunning);
  EXPECT_EQ(g.VerifiedIo(&file, 12), 4);
  EXPECT_EQ(g.fe().GetVringBase(0), 8u);
  EXPECT_EQ(loop.Counter(srv, "protocol_errors"), 0u);
}

TEST(VhostUserServer, PackedRing) {
  TempFile file(kFileBytes);
  auto dev = OpenBlk(file);
  Loop loop;
  VhostUserServer* srv = loop.AddServer(dev, ServerOptions("packed"));
  GuestOptions go;
  go.packed = true;
  go.queue_size = 16;  // small, so the run wraps the ring twice
  Guest g(srv->options().socket_path, go);
  ASSERT_TRUE(g.Negotiate());
  ASSERT_TRUE(g.Start());
  ASSERT_TRUE(feature::Has(g.features(), feature::kRingPacked));
  EXPECT_EQ(loop.Status(srv), kRunning);
  // 40 requests, one descriptor slot each (indirect): 2.5 times round the ring.
  EXPECT_EQ(g.VerifiedIo(&file, 21, 20), 40);
  // Packed base: avail index | avail wrap << 15 | used index << 16 | used wrap << 31.
  // 40 slots from (0, wrap 1): index 8, wrap flipped twice, back to 1.
  const uint32_t expect = 8 | 1u << 15 | 8u << 16 | 1u << 31;
  EXPECT_EQ(g.fe().GetVringBase(0), expect);
  ASSERT_TRUE(g.StartRing(0, /*new_queue=*/false, expect));
  EXPECT_EQ(g.VerifiedIo(&file, 22, 4), 8);
  EXPECT_EQ(loop.Counter(srv, "ring_errors"), 0u);
}

TEST(VhostUserServer, BlockingEventFds) {
  // Front-ends such as crosvm create their eventfds blocking. The server
  // must serve them without ever waiting on one (a read of an empty blocking
  // eventfd waits for the next kick; HostileFrontend covers the fd flags
  // being changed behind the server's back).
  TempFile file(kFileBytes);
  auto dev = OpenBlk(file);
  Loop loop;
  VhostUserServer* srv = loop.AddServer(dev, ServerOptions("blocking"));
  GuestOptions go;
  go.blocking_eventfds = true;
  Guest g(srv->options().socket_path, go);
  ASSERT_TRUE(g.Negotiate());
  ASSERT_TRUE(g.Start());
  EXPECT_EQ(g.VerifiedIo(&file, 41, 4), 8);
  // The loop still answers (it is not stuck in a read).
  EXPECT_TRUE(loop.Connected(srv));
  EXPECT_EQ(g.fe().GetVringBase(0), 8u);
}

TEST(VhostUserServer, SecondFrontendRefused) {
  TempFile file(kFileBytes);
  auto dev = OpenBlk(file);
  Loop loop;
  VhostUserServer* srv = loop.AddServer(dev, ServerOptions("two"));
  Guest a(srv->options().socket_path);
  ASSERT_TRUE(a.Negotiate());
  ASSERT_TRUE(a.Start());
  auto b = Frontend::Connect(srv->options().socket_path);
  ASSERT_TRUE(b);
  EXPECT_TRUE(b->ExpectClosed());
  EXPECT_EQ(loop.Counter(srv, "connections_refused"), 1u);
  EXPECT_EQ(a.VerifiedIo(&file, 5), 4);
  // Once the first leaves, the next one is served (the device was reset between).
  a.fe().Close();
  ASSERT_TRUE(loop.WaitFor([&] { return !srv->connected(); }));
  EXPECT_EQ(loop.Counter(srv, "protocol_errors"), 0u);
  Guest c(srv->options().socket_path);
  ASSERT_TRUE(c.Negotiate());
  ASSERT_TRUE(c.Start());
  EXPECT_EQ(c.VerifiedIo(&file, 6), 4);
  EXPECT_EQ(loop.Counter(srv, "connections"), 2u);
}

TEST(VhostUserServer, DestroyedAfterItsLoopStopped) {
  // vios's shutdown order: the io_context stops running first, then the
  // servers are destroyed with a front-end still connected and rings
  // running, then the io_context. Nothing may leak (LSan, in the sanitizer
  // build) or touch freed memory, and the data written is in the file.
  TempFile file(kFileBytes);
  auto dev = OpenBlk(file);
  auto io = std::make_unique<boost::asio::io_context>();
  auto guard = boost::asio::make_work_guard(*io);
  VhostUserServerOptions o = ServerOptions("shutdown");
  auto srv = VhostUserServer::Create(*io, dev, o);
  ASSERT_TRUE(srv.ok()) << srv.status();
  std::thread th([&] { io->run(); });
  {
    Guest g(o.socket_path);
    ASSERT_TRUE(g.Negotiate());
    ASSERT_TRUE(g.Start());
    EXPECT_EQ(g.VerifiedIo(&file, 51), 4);
    boost::asio::post(*io, [&] { io->stop(); });
    th.join();
    srv->reset();  // the server goes first, on this thread: the loop no longer runs
    EXPECT_TRUE(g.fe().ExpectClosed());
  }
  guard.reset();
  io.reset();
}

// Destroys `srv` `turns` loop turns from now (on the loop).
void DropLater(Loop* loop, VhostUserServer* srv, int turns) {
  if (turns == 0) return loop->DropOnLoop(srv);
  boost::asio::post(loop->io(), [loop, srv, turns] { DropLater(loop, srv, turns - 1); });
}

TEST(VhostUserServer, DestroyedOnItsLoopWhileFrontendsConnect) {
  // vios removes a device at run time on the loop (viosctl remove), which
  // may be just when front-ends connect: accepts already completed but not
  // yet handled must not touch the destroyed server.
  TempFile file(kFileBytes);
  auto dev = OpenBlk(file);
  Loop loop;
  for (int round = 0; round < 300; ++round) {
    VhostUserServerOptions o = ServerOptions("remove");
    VhostUserServer* srv = loop.AddServer(dev, o);
    ASSERT_TRUE(srv);
    std::vector<UniqueFd> clients;
    loop.Run([&] {
      // Two front-ends connect (both wait in the backlog), then the server
      // goes: from a handler queued behind whatever the connects caused.
      for (int i = 0; i < 2; ++i) {
        UniqueFd c(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, o.socket_path.c_str(), sizeof a.sun_path - 1);
        EXPECT_EQ(::connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
        clients.push_back(std::move(c));
      }
      // 0 to 2 loop turns later (the reactor runs between turns).
      DropLater(&loop, srv, round % 3);
    });
    ASSERT_TRUE(loop.WaitFor([&] { return true; }));
    // The loop runs on: a server accepted later (same device) works.
    ASSERT_TRUE(loop.Responsive());
  }
  VhostUserServer* srv = loop.AddServer(dev, ServerOptions("after"));
  Guest g(srv->options().socket_path);
  ASSERT_TRUE(g.Negotiate());
  ASSERT_TRUE(g.Start());
  EXPECT_EQ(g.VerifiedIo(&file, 71), 4);
}

// ---- a ring the guest breaks ---------------------------------------------------

// A read whose data buffer lies past the end of guest memory (inside the
// memfd's guard bytes, were the region bounds ignored).
struct BrokenRing {
  TempFile file{kFileBytes};
  std::shared_ptr<BlkDevice> dev = OpenBlk(file);
  Loop loop;
  VhostUserServer* srv = loop.AddServer(dev, ServerOptions("broken"));
  Guest g{srv->options().socket_path};
  uint64_t bad = 0;

  void Break() {
    ASSERT_TRUE(g.Negotiate());
    ASSERT_TRUE(g.Start());
    ASSERT_EQ(g.VerifiedIo(&file, 31, 1), 2);
    bad = g.AddBlk(0, blk::req::kIn, 8, {}, 4096, g.ram().gpa() + g.ram().size() + 512);
    g.queue(0).KickPrepare();
    g.Kick(0);
    ASSERT_TRUE(WaitEventFd(g.err_fd(0), 5000)) << "the ERR eventfd was not signalled";
    ASSERT_TRUE(loop.WaitFor([&] { return (srv->device_status() & status::kDriverOk) == 0; }));
    EXPECT_EQ(loop.Status(srv) & status::kDeviceNeedsReset, status::kDeviceNeedsReset);
    EXPECT_EQ(loop.Counter(srv, "ring_errors"), 1u);
    const std::string err = loop.LastError(srv);
    EXPECT_NE(err.find("queue 0: "), std::string::npos) << err;
    EXPECT_NE(err.find(RingErrorName(RingError::kAddressOutOfRange)), std::string::npos) << err;
    // Nothing was written: no used entry, no status, nothing past the region.
    uint64_t tok;
    uint32_t len;
    EXPECT_EQ(g.queue(0).GetUsed(&tok, &len), UsedStatus::kNone);
    EXPECT_EQ(g.BlkStatus(bad), 0xAA);
    EXPECT_TRUE(g.ram().GuardIntact());
    // More kicks do not wake a stopped device, nor count another error.
    g.DrainCalls();
    g.Kick(0);
    EXPECT_FALSE(WaitEventFd(g.call_fd(0), 100));
    EXPECT_EQ(loop.Counter(srv, "ring_errors"), 1u);
    EXPECT_TRUE(loop.Connected(srv));  // a guest's error is not the front-end's
  }
};

TEST(VhostUserServer, BadDescriptorStopsRingGetVringBaseRecovers) {
  BrokenRing t;
  ASSERT_NO_FATAL_FAILURE(t.Break());
  // The front-end stops the ring: the base is the broken chain's position.
  EXPECT_EQ(t.g.fe().GetVringBase(0), 2u);
  EXPECT_EQ(t.loop.Status(t.srv), kStopped);
  // The driver resets its ring and the front-end starts it again: served.
  t.g.FreeBlk(t.bad);
  ASSERT_TRUE(t.g.StartRing(0, /*new_queue=*/true, 0));
  EXPECT_EQ(t.loop.Status(t.srv), kRunning);
  EXPECT_EQ(t.g.VerifiedIo(&t.file, 32), 4);
  EXPECT_EQ(t.loop.Counter(t.srv, "ring_errors"), 1u);
  EXPECT_TRUE(t.g.ram().GuardIntact());
}

TEST(VhostUserServer, BadDescriptorStopsRingResetDeviceRecovers) {
  BrokenRing t;
  ASSERT_NO_FATAL_FAILURE(t.Break());
  ASSERT_TRUE(t.g.fe().Ack(Req::kResetDevice));
  EXPECT_EQ(t.loop.Status(t.srv), status::kAcknowledge | status::kDriver);
  t.g.FreeBlk(t.bad);
  ASSERT_TRUE(t.g.Start());
  EXPECT_EQ(t.loop.Status(t.srv), kRunning);
  EXPECT_EQ(t.g.VerifiedIo(&t.file, 33), 4);
  EXPECT_EQ(t.loop.Counter(t.srv, "ring_errors"), 1u);
}

TEST(VhostUserServer, DriverResetAfterRingErrorResubmitsNothing) {
  // A good request is in flight when the next one breaks the ring: the broken
  // queue drops its completion, so the in-flight log still holds it. The
  // driver then resets its ring (fresh memory, indexes from 0) and the
  // front-end restarts it with the same in-flight area. The old request
  // belongs to the ring before the reset: it must not be "resubmitted" from
  // whatever the new ring has at that descriptor index.
  TempFile file(kFileBytes);
  auto dev = OpenBlk(file);
  Loop loop;
  VhostUserServer* srv = loop.AddServer(dev, ServerOptions("stale"));
  GuestOptions go;
  go.indirect = false;
  Guest g(srv->options().socket_path, go);
  ASSERT_TRUE(g.Negotiate());
  ASSERT_TRUE(g.Start());
  const uint64_t good = g.AddBlk(0, blk::req::kOut, 64, RandomBytes(4096, 5), 4096);
  const uint64_t bad = g.AddBlk(0, blk::req::kIn, 8, {}, 4096, g.ram().gpa() + g.ram().size() + 512);
  g.queue(0).KickPrepare();
  g.Kick(0);
  ASSERT_TRUE(WaitEventFd(g.err_fd(0), 5000));
  ASSERT_TRUE(loop.WaitFor([&] { return (srv->device_status() & status::kDriverOk) == 0; }));
  EXPECT_EQ(loop.Counter(srv, "ring_errors"), 1u);
  auto base = g.fe().GetVringBase(0);
  ASSERT_TRUE(base);
  g.FreeBlk(good);
  g.FreeBlk(bad);
  ASSERT_TRUE(g.StartRing(0, /*new_queue=*/true, 0));
  EXPECT_EQ(g.VerifiedIo(&file, 61), 4);
  EXPECT_EQ(loop.Counter(srv, "ring_errors"), 1u);
  EXPECT_EQ(loop.Counter(srv, "inflight_resubmitted"), 0u);
  EXPECT_EQ(loop.Status(srv), kRunning);
}

TEST(VhostUserServer, ProtocolErrorAfterRingErrorIsTheOneReported) {
  // The connection closes for the front-end's error; last_error() must say
  // so, not repeat the guest's ring error from before.
  BrokenRing t;
  ASSERT_NO_FATAL_FAILURE(t.Break());
  ASSERT_TRUE(t.g.fe().SendRaw(static_cast<uint32_t>(Req::kGetFeatures), 0, {}));  // version 0
  EXPECT_TRUE(t.g.fe().ExpectClosed());
  ASSERT_TRUE(t.loop.WaitFor([&] { return !t.srv->connected(); }));
  EXPECT_EQ(t.loop.Counter(t.srv, "protocol_errors"), 1u);
  const std::string err = t.loop.LastError(t.srv);
  EXPECT_NE(err.find("header version 0"), std::string::npos) << err;
}

// ---- in-flight requests across a reconnect -----------------------------------

// Echo requests (the device XORs the readable bytes into the writable part).
struct Echo {
  DmaBuffer out, in;
  std::vector<uint8_t> data;
};

TEST(VhostUserServer, InflightRequestsResubmittedAfterReconnect) {
  // The back-end pops requests and goes away before completing them (vios
  // killed); the front-end keeps the in-flight area and hands it to the next
  // connection, which must resubmit exactly the requests never completed.
  testing::EchoOptions eo;
  eo.max_queue_size = 64;
  auto dev = std::make_shared<testing::EchoDevice>(eo);
  Loop loop;
  VhostUserServer* srv = loop.AddServer(dev, ServerOptions("inflight"));
  GuestOptions go;
  go.queue_size = 16;
  go.indirect = false;  // plain chains: heads in the log are descriptor indexes
  auto g1 = std::make_unique<Guest>(srv->options().socket_path, go);
  ASSERT_TRUE(g1->Negotiate());
  ASSERT_TRUE(g1->Start());
  ASSERT_GT(g1->inflight_fd(), 0);

  GuestRam& ram = g1->ram();
  std::map<uint64_t, Echo> echo;
  uint64_t next = 1;
  auto add = [&](Guest& g) {
    Echo e;
    e.data = RandomBytes(256, static_cast<uint32_t>(next));
    e.out = *ram.dma().Allocate(256, 16, Access::kRead);
    e.in = *ram.dma().Allocate(256, 16, Access::kWrite);
    std::memcpy(e.out.host, e.data.data(), 256);
    DriverBuffer b[2] = {{e.out.device_addr, 256, false}, {e.in.device_addr, 256, true}};
    EXPECT_EQ(g.queue(0).Add(b, next), AddStatus::kOk);
    echo[next] = e;
    return next++;
  };
  auto check = [&](uint64_t tok) {
    const Echo& e = echo.at(tok);
    for (size_t i = 0; i < 256; ++i)
      if (e.in.host[i] != (e.data[i] ^ testing::EchoKey(0))) return false;
    return true;
  };

  // Two requests completed normally.
  const uint64_t a = add(*g1), b = add(*g1);
  auto done = g1->Complete(0, 2);
  ASSERT_EQ(done.size(), 2u);
  EXPECT_TRUE(check(a) && check(b));
  // Three more popped and held by the device, never completed.
  dev->set_hold(true);
  std::vector<uint64_t> held = {add(*g1), add(*g1), add(*g1)};
  g1->queue(0).KickPrepare();
  g1->Kick(0);
  ASSERT_TRUE(loop.WaitFor([&] { return dev->held() == 3; }));

  // The back-end loses the connection with them in flight.
  g1->fe().Close();
  ASSERT_TRUE(loop.WaitFor([&] { return !srv->connected(); }));
  dev->set_hold(false);
  for (uint64_t t : held) EXPECT_FALSE(check(t));

  // Reconnect as QEMU does: the same guest RAM and ring, the kept in-flight
  // area, and the ring's base reset to its used index (2).
  Frontend* fe2 = nullptr;
  auto g2 = std::make_unique<Guest>(srv->options().socket_path, go);
  fe2 = &g2->fe();
  ASSERT_TRUE(g2->Negotiate());
  // Hand g1's memory, ring and in-flight area to g2's connection by hand.
  const uint64_t feats = g1->features();
  ASSERT_TRUE(fe2->Ack(Req::kSetFeatures, U64(feats)));
  const int ram_fd = ram.fd();
  ASSERT_TRUE(fe2->Ack(Req::kSetMemTable, MemTable({ram.region()}), {&ram_fd, 1}));
  const int inflight_fd = g1->inflight_fd();
  ASSERT_TRUE(fe2->Ack(Req::kSetInflightFd, AsBytes(g1->inflight_area()), {&inflight_fd, 1}));
  // The driver has interrupts enabled from the used index it has seen.
  DriverQueue& dq = g1->queue(0);
  EXPECT_FALSE(dq.EnableInterrupts());
  vu::VringAddr addr{0, 0, ram.VaOf(dq.desc_addr()), ram.VaOf(dq.device_addr()), ram.VaOf(dq.driver_addr()), 0};
  UniqueFd kick = EventFd(), call = EventFd();
  const int kfd = kick.get(), cfd = call.get();
  ASSERT_TRUE(fe2->Ack(Req::kSetVringNum, State(0, go.queue_size)));
  ASSERT_TRUE(fe2->Ack(Req::kSetVringBase, State(0, 2)));
  ASSERT_TRUE(fe2->Ack(Req::kSetVringAddr, AsBytes(addr)));
  ASSERT_TRUE(fe2->Ack(Req::kSetVringCall, U64(0), {&cfd, 1}));
  ASSERT_TRUE(fe2->Ack(Req::kSetVringKick, U64(0), {&kfd, 1}));
  ASSERT_TRUE(fe2->Ack(Req::kSetVringEnable, State(0, 1)));

  // The three come back without a kick, and nothing else.
  EXPECT_TRUE(WaitEventFd(cfd, 5000));
  std::map<uint64_t, uint32_t> got;
  ASSERT_TRUE(loop.WaitFor([&] { return dev->completed() >= 5; }));
  uint64_t tok;
  uint32_t len;
  while (dq.GetUsed(&tok, &len) == UsedStatus::kUsed) got[tok] = len;
  ASSERT_EQ(got.size(), 3u);
  for (uint64_t t : held) {
    EXPECT_EQ(got.count(t), 1u) << "request " << t << " was not resubmitted";
    EXPECT_EQ(got[t], 256u);
    EXPECT_TRUE(check(t)) << "request " << t;
  }
  EXPECT_EQ(dev->completed(), 5u) << "a completed request was done again";
  EXPECT_EQ(loop.Counter(srv, "inflight_resubmitted"), 3u);

  // New requests go on from there.
  const uint64_t c = add(*g1);
  EXPECT_FALSE(dq.EnableInterrupts());
  dq.KickPrepare();
  const uint64_t one = 1;
  ASSERT_EQ(::write(kfd, &one, 8), 8);
  ASSERT_TRUE(WaitEventFd(cfd, 5000));
  ASSERT_EQ(dq.GetUsed(&tok, &len), UsedStatus::kUsed);
  EXPECT_EQ(tok, c);
  EXPECT_TRUE(check(c));
  EXPECT_EQ(fe2->GetVringBase(0), 6u);
  EXPECT_EQ(loop.Counter(srv, "protocol_errors"), 0u);
  for (auto& [t, e] : echo) {
    ram.dma().Free(e.out);
    ram.dma().Free(e.in);
  }
  g2.reset();
}

}  // namespace
}  // namespace vioport::vutest
