// SPDX-License-Identifier: Apache-2.0
// vios's vsock hub with real Unix sockets on the host side. The guests are
// played in the test by vsock::Endpoint (a full connection end: credit,
// SHUTDOWN, RST) over the hub's PacketSink and the guests' inboxes, as
// their devices would carry them:
//   - socat as a host process speaking the hybrid protocol (CONNECT/OK)
//     to a guest that echoes: 1 MiB there and back, verified;
//   - a guest connecting to a host listener at uds_path_PORT: 256 KiB
//     each way within credit, verified, and the host's close reaching it;
//   - 4 MiB offered in place and in packets, mixed, to a slow host: in
//     order, what waits copied;
//   - routes between guests only within a group; no listener, no route,
//     a connection flood and a garbage CONNECT line each refused and counted;
//   - an RST storm and stray packets from a guest that never reads: no RST
//     for an RST, bounded, the hub still answering.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "vioport/testing/process.h"
#include "vsock_hub.h"

namespace vioport::vios {
namespace {

using vsock::Endpoint;
using vsock::Hdr;
using vsock::Packet;

std::vector<uint8_t> Bytes(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) {
    x = x * 1103515245u + 12345u;
    b = static_cast<uint8_t>(x >> 16);
  }
  return v;
}

// A guest on the hub: its inbox (what its device would deliver) and a way
// to send (what its device would hand the hub).
struct FakeGuest {
  FakeGuest(VsockHub& h, uint64_t c, std::string uds = "", std::vector<std::string> groups = {}) : hub(h), cid(c) {
    VsockHub::Guest g;
    g.id = absl::StrCat("g", c);
    g.cid = c;
    g.inbox = inbox;
    g.uds_path = std::move(uds);
    g.groups = std::move(groups);
    const absl::Status s = hub.AddGuest(std::move(g));
    EXPECT_TRUE(s.ok()) << s;
  }
  ~FakeGuest() { hub.RemoveGuest(cid); }
  void Send(std::vector<Packet> p) { hub.Send(cid, p); }
  void Send(Packet p) { Send(std::vector<Packet>{std::move(p)}); }
  // The next packet for this guest, or false after `ms`.
  bool Next(Packet* out, int ms = 5000) {
    if (head < got.size()) {
      *out = std::move(got[head++]);
      return true;
    }
    got.clear();
    head = 0;
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (inbox->Take(&got, 256) == 0) {
      const int left = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()).count());
      if (left <= 0) return false;
      pollfd p{inbox->event_fd(), POLLIN, 0};
      ::poll(&p, 1, std::min(left, 50));
    }
    *out = std::move(got[head++]);
    return true;
  }
  VsockHub& hub;
  uint64_t cid;
  std::shared_ptr<vsock::Inbox> inbox = std::make_shared<vsock::Inbox>();
  std::vector<Packet> got;
  size_t head = 0;
};

// A host process's listening socket at `path` (a guest's uds_path_PORT);
// -1 if it could not be made.
int ListenAt(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (fd < 0 || path.size() >= sizeof addr.sun_path) return -1;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 || ::listen(fd, SOMAXCONN) < 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

Hdr Request(uint64_t src, uint32_t sport, uint64_t dst, uint32_t dport, uint16_t type = vsock::kTypeStream) {
  Hdr h{};
  h.src_cid = src;
  h.dst_cid = dst;
  h.src_port = sport;
  h.dst_port = dport;
  h.type = type;
  h.op = vsock::kOpRequest;
  h.buf_alloc = 64 * 1024;
  return h;
}

class VsockHubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/tmp/vioport-vsockhub-" + std::to_string(::getpid());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::shared_ptr<VsockHub> Hub(VsockHub::Options o = {}) {
    auto h = VsockHub::Create(o);
    EXPECT_TRUE(h.ok()) << h.status();
    return *h;
  }
  static uint64_t Counter(VsockHub& h, uint64_t cid, const std::string& name) {
    std::vector<std::pair<std::string, uint64_t>> c;
    h.AppendCounters(cid, &c);
    for (auto& [n, v] : c)
      if (n == name) return v;
    ADD_FAILURE() << "no counter " << name;
    return 0;
  }
  std::string dir_;
};

// socat as the host end: CONNECT 5000, then 1 MiB; the guest echoes every
// byte back and closes once the host has.
TEST_F(VsockHubTest, SocatSpeaksTheHybridProtocolToAnEchoingGuest) {
  auto hub = Hub();
  const std::string uds = dir_ + "/v3.sock";
  FakeGuest g(*hub, 3, uds);
  const std::vector<uint8_t> data = Bytes(1 << 20, 1);
  {
    std::ofstream in(dir_ + "/in.bin", std::ios::binary);
    in << "CONNECT 5000\n";
    in.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  }
  // socat: its stdin to the socket, the socket to its stdout; after stdin's
  // end it shuts down writing and waits (-t) for the other side to close.
  auto socat = testproc::Spawn({"/bin/sh", "-c",
                                "exec socat -t 30 - UNIX-CONNECT:" + uds + " <" + dir_ + "/in.bin >" + dir_ + "/out.bin"},
                               dir_, "socat");
  std::unique_ptr<Endpoint> ep;
  std::vector<uint8_t> pending;  // received, not yet echoed
  uint64_t echoed = 0;
  bool host_done = false, closed = false;
  Packet p;
  while (!closed && g.Next(&p, 20000)) {
    std::vector<Packet> reply;
    if (p.hdr.op == vsock::kOpRequest) {
      ASSERT_EQ(p.hdr.src_cid, vsock::kCidHost);
      ASSERT_EQ(p.hdr.dst_port, 5000u);
      EXPECT_EQ(p.hdr.src_port, 1u << 30) << "the first host port";
      Endpoint::Limits l;
      l.buf_alloc = 128 * 1024;
      l.max_packet = 4096;  // Linux's receive buffers
      ep = std::make_unique<Endpoint>(3, 5000, vsock::kCidHost, p.hdr.src_port, vsock::kTypeStream, l);
      reply.push_back(ep->Accept(p.hdr));
    } else {
      ASSERT_TRUE(ep);
      Endpoint::Output o;
      ep->OnPacket(p.hdr, p.payload, &o);
      ASSERT_EQ(o.refused, vsock::Refusal::kNone);
      // Echo what arrived (the hub's credit allows it: it advertised 256 KiB
      // and writes to socat as fast as socat reads).
      pending.insert(pending.end(), o.to_host.begin(), o.to_host.end());
      if (!pending.empty()) {
        const size_t took = ep->Send(pending, false, &o);
        pending.erase(pending.begin(), pending.begin() + static_cast<ptrdiff_t>(took));
        echoed += took;
        ep->Consumed(static_cast<uint32_t>(took), &o);
      }
      if (o.host_eof) host_done = true;
      if (host_done && pending.empty() && !ep->closed()) ep->Shutdown(vsock::kShutdownBoth, &o);
      for (Packet& q : o.to_peer) reply.push_back(std::move(q));
      closed = ep->closed();
    }
    g.Send(std::move(reply));
  }
  ASSERT_EQ(socat.Wait(30), 0) << socat.err();
  std::ifstream out(dir_ + "/out.bin", std::ios::binary);
  const std::string got((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
  const std::string ok = "OK 1073741824\n";
  ASSERT_GE(got.size(), ok.size());
  EXPECT_EQ(got.substr(0, ok.size()), ok);
  EXPECT_EQ(got.size(), ok.size() + data.size());
  const std::vector<uint8_t> echoed_bytes(got.begin() + static_cast<ptrdiff_t>(std::min(ok.size(), got.size())), got.end());
  EXPECT_TRUE(echoed_bytes == data) << "the echoed bytes differ";
  EXPECT_EQ(echoed, data.size());
  EXPECT_EQ(Counter(*hub, 3, "hub.from_host_bytes"), data.size());
  EXPECT_EQ(Counter(*hub, 3, "hub.to_host_bytes"), data.size());
  for (int i = 0; i < 100 && hub->host_connections() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(hub->host_connections(), 0u);
}

// The guest connects to host port 7000: a process listening on
// uds_path_7000 gets the stream.
TEST_F(VsockHubTest, GuestReachesAHostListener) {
  auto hub = Hub();
  const std::string uds = dir_ + "/v3.sock";
  FakeGuest g(*hub, 3, uds);
  const int ls = ListenAt(uds + "_7000");
  ASSERT_GE(ls, 0);
  const std::vector<uint8_t> up = Bytes(256 * 1024, 2), down = Bytes(100 * 1024, 3);
  // The host: reads everything, checks it, answers, closes.
  std::vector<uint8_t> host_got;
  std::thread host([&] {
    const int s = ::accept(ls, nullptr, nullptr);
    ASSERT_GE(s, 0);
    std::vector<uint8_t> buf(65536);
    while (host_got.size() < up.size()) {
      const ssize_t r = ::read(s, buf.data(), buf.size());
      if (r <= 0) break;
      host_got.insert(host_got.end(), buf.begin(), buf.begin() + r);
    }
    size_t off = 0;
    while (off < down.size()) {
      const ssize_t w = ::write(s, down.data() + off, down.size() - off);
      if (w <= 0) break;
      off += static_cast<size_t>(w);
    }
    ::close(s);
  });
  Endpoint::Limits l;
  l.buf_alloc = 64 * 1024;
  l.max_packet = 4096;
  Endpoint ep(3, 40000, vsock::kCidHost, 7000, vsock::kTypeStream, l);
  g.Send(ep.Connect());
  size_t sent = 0;
  std::vector<uint8_t> guest_got;
  bool eof = false;
  Packet p;
  while (!(eof && sent == up.size()) && g.Next(&p, 20000)) {
    Endpoint::Output o;
    ep.OnPacket(p.hdr, p.payload, &o);
    ASSERT_EQ(o.refused, vsock::Refusal::kNone) << vsock::OpName(p.hdr.op);
    ASSERT_FALSE(ep.closed() && sent < up.size()) << "closed early, op " << vsock::OpName(p.hdr.op);
    guest_got.insert(guest_got.end(), o.to_host.begin(), o.to_host.end());
    if (!o.to_host.empty()) ep.Consumed(static_cast<uint32_t>(o.to_host.size()), &o);
    if (sent < up.size()) sent += ep.Send(std::span(up).subspan(sent), false, &o);
    eof |= o.host_eof;
    g.Send(std::move(o.to_peer));
  }
  host.join();
  ::close(ls);
  EXPECT_EQ(host_got, up);
  EXPECT_EQ(guest_got, down);
  EXPECT_TRUE(eof) << "the host's close reached the guest as SHUTDOWN";
  EXPECT_EQ(Counter(*hub, 3, "hub.conns_total"), 1u);
}

// Guests do not wait for each other: while one guest's lock is held (as a
// thread busy with its connections holds it), another guest connects to a
// host listener, sends 256 KiB and gets it echoed back; the held guest's
// REQUEST, sent meanwhile from its own thread, waits, and goes through
// once the lock is let go. (With one lock for every guest, as the hub had,
// the second guest's connection would wait too.)
TEST_F(VsockHubTest, OneGuestHeldDoesNotHoldUpAnother) {
  auto hub = Hub();
  FakeGuest a(*hub, 3, dir_ + "/v3.sock"), b(*hub, 4, dir_ + "/v4.sock");
  const int la = ListenAt(dir_ + "/v3.sock_7000"), lb = ListenAt(dir_ + "/v4.sock_7000");
  ASSERT_GE(la, 0);
  ASSERT_GE(lb, 0);
  const std::vector<uint8_t> up = Bytes(256 * 1024, 5);
  std::thread echo([&] {  // b's host end: echoes until the guest's end goes
    const int s = ::accept(lb, nullptr, nullptr);
    ASSERT_GE(s, 0);
    std::vector<uint8_t> buf(65536);
    for (ssize_t r; (r = ::read(s, buf.data(), buf.size())) > 0;)
      for (ssize_t off = 0; off < r;) {
        const ssize_t w = ::write(s, buf.data() + off, static_cast<size_t>(r - off));
        if (w <= 0) break;
        off += w;
      }
    ::close(s);
  });
  auto hold = hub->HoldGuestForTesting(3);
  ASSERT_NE(hold, nullptr);
  std::atomic<bool> a_sent{false};
  std::thread ta([&] {
    a.Send(Packet{Request(3, 41000, vsock::kCidHost, 7000), {}});
    a_sent = true;
  });
  Endpoint::Limits l;
  l.buf_alloc = 64 * 1024;
  l.max_packet = 4096;
  Endpoint ep(4, 40000, vsock::kCidHost, 7000, vsock::kTypeStream, l);
  b.Send(ep.Connect());
  size_t sent = 0;
  std::vector<uint8_t> back;
  Packet p;
  while (back.size() < up.size() && b.Next(&p, 10000)) {
    Endpoint::Output o;
    ep.OnPacket(p.hdr, p.payload, &o);
    ASSERT_FALSE(ep.closed()) << "b's connection ended, op " << vsock::OpName(p.hdr.op);
    back.insert(back.end(), o.to_host.begin(), o.to_host.end());
    if (!o.to_host.empty()) ep.Consumed(static_cast<uint32_t>(o.to_host.size()), &o);
    if (sent < up.size()) sent += ep.Send(std::span(up).subspan(sent), false, &o);
    b.Send(std::move(o.to_peer));
  }
  EXPECT_EQ(back, up) << "b's bytes came back while a was held";
  // a is still waiting: nothing reached a's host listener, nothing came back.
  EXPECT_FALSE(a_sent.load());
  pollfd pa{la, POLLIN, 0};
  EXPECT_EQ(::poll(&pa, 1, 0), 0) << "a's REQUEST went through while its guest was held";
  hold.reset();
  ta.join();
  ASSERT_TRUE(a.Next(&p, 5000)) << "a's REQUEST was answered once let go";
  EXPECT_EQ(p.hdr.op, vsock::kOpResponse) << vsock::OpName(p.hdr.op);
  EXPECT_EQ(::poll(&pa, 1, 5000), 1) << "a's host listener has the connection";
  Endpoint::Output o;
  ep.Reset(&o);
  b.Send(std::move(o.to_peer));
  hub->RemoveGuest(4);  // b's host socket closes: the echo ends
  echo.join();
  ::close(la);
  ::close(lb);
}

// Data offered in place (SendInPlace, as a device offers a payload still
// in guest memory) mixed with data handed over in packets (Send), to a
// host that reads slowly: its socket fills, what it does not take yet is
// copied (the test scribbles over each buffer as soon as the hub returns),
// and the host gets every byte in order; the guest's credit comes back as
// the host reads.
TEST_F(VsockHubTest, InPlaceDataReachesASlowHostInOrder) {
  VsockHub::Options o;
  o.limits.buf_alloc = 1 << 20;
  auto hub = Hub(o);
  const std::string uds = dir_ + "/v3.sock";
  FakeGuest g(*hub, 3, uds);
  const int ls = ListenAt(uds + "_7000");
  ASSERT_GE(ls, 0);
  const std::vector<uint8_t> up = Bytes(4 << 20, 7);
  std::vector<uint8_t> host_got;
  std::thread host([&] {
    const int s = ::accept(ls, nullptr, nullptr);
    ASSERT_GE(s, 0);
    std::vector<uint8_t> buf(16384);
    while (host_got.size() < up.size()) {
      const ssize_t r = ::read(s, buf.data(), buf.size());
      if (r <= 0) break;
      host_got.insert(host_got.end(), buf.begin(), buf.begin() + r);
      if (host_got.size() < 1 << 20) std::this_thread::sleep_for(std::chrono::microseconds(200));  // slow at first
    }
    ::close(s);
  });
  Endpoint::Limits l;
  l.buf_alloc = 64 * 1024;
  l.max_packet = 16384;
  Endpoint ep(3, 40000, vsock::kCidHost, 7000, vsock::kTypeStream, l);
  g.Send(ep.Connect());
  Packet p;
  ASSERT_TRUE(g.Next(&p));
  {
    Endpoint::Output out;
    ep.OnPacket(p.hdr, p.payload, &out);
    ASSERT_EQ(ep.state(), Endpoint::State::kEstablished);
  }
  size_t sent = 0, in_place = 0, packets = 0;
  std::vector<uint8_t> scratch;
  while (sent < up.size()) {
    Endpoint::Output out;
    const size_t took = ep.Send(std::span(up).subspan(sent), false, &out);
    sent += took;
    for (Packet& q : out.to_peer) {
      if (q.hdr.op == vsock::kOpRw && (packets++ % 3) != 2) {
        scratch = q.payload;
        ASSERT_TRUE(hub->SendInPlace(3, q.hdr, scratch));
        std::fill(scratch.begin(), scratch.end(), 0xee);  // the hub has what it keeps
        ++in_place;
      } else {
        g.Send(std::move(q));
      }
    }
    if (took == 0) {  // no credit: wait for the host to read
      ASSERT_TRUE(g.Next(&p, 20000)) << "no credit update after " << sent << " bytes";
      Endpoint::Output o2;
      ep.OnPacket(p.hdr, p.payload, &o2);
      ASSERT_FALSE(ep.closed());
    }
  }
  host.join();
  ::close(ls);
  EXPECT_GT(in_place, 100u);
  EXPECT_EQ(host_got.size(), up.size());
  EXPECT_TRUE(host_got == up) << "the host's bytes differ";
  EXPECT_EQ(Counter(*hub, 3, "hub.to_host_bytes"), up.size());
  // A packet for no connection is not taken in place (Send refuses it).
  Hdr stray = Request(3, 40001, vsock::kCidHost, 7000);
  stray.op = vsock::kOpRw;
  stray.len = 4;
  const uint8_t four[4] = {1, 2, 3, 4};
  EXPECT_FALSE(hub->SendInPlace(3, stray, four));
}

// A guest's host budget: each new host connection's window is the budget
// split across the connections open, never above buf_alloc nor below one
// packet; a closed connection gives its share back.
TEST_F(VsockHubTest, HostBudgetSplitsTheWindowAcrossConnections) {
  auto hub = Hub();
  const std::string uds = dir_ + "/v3.sock";
  VsockHub::Guest gs;
  auto inbox = std::make_shared<vsock::Inbox>();
  gs.id = "g3";
  gs.cid = 3;
  gs.inbox = inbox;
  gs.uds_path = uds;
  gs.buf_alloc = 1 << 20;
  gs.budget = 2 << 20;
  ASSERT_TRUE(hub->AddGuest(std::move(gs)).ok());
  const int ls = ListenAt(uds + "_9");
  ASSERT_GE(ls, 0);
  std::vector<Packet> got;
  auto window_of_next = [&](uint32_t port) -> uint32_t {
    std::vector<Packet> req{Packet{Request(3, port, vsock::kCidHost, 9), {}}};
    hub->Send(3, req);
    got.clear();
    for (int i = 0; i < 200 && inbox->Take(&got, 16) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (got.size() != 1 || got[0].hdr.op != vsock::kOpResponse) {
      ADD_FAILURE() << "no RESPONSE for port " << port;
      return 0;
    }
    return got[0].hdr.buf_alloc;
  };
  // 2 MiB over 1, 2, 3, ... open connections: 1 MiB (buf_alloc caps the
  // first two), then 2M/3, 2M/4, ...; 64 KiB at the least.
  EXPECT_EQ(window_of_next(100), 1u << 20);
  EXPECT_EQ(window_of_next(101), 1u << 20);
  EXPECT_EQ(window_of_next(102), (2u << 20) / 3);
  EXPECT_EQ(window_of_next(103), (2u << 20) / 4);
  for (uint32_t p = 104; p < 140; ++p) window_of_next(p);
  EXPECT_EQ(window_of_next(140), vsock::kMaxPayload) << "one packet at the least";
  // The guest resets one: the next connection's share is computed anew.
  Hdr rst = Request(3, 100, vsock::kCidHost, 9);
  rst.op = vsock::kOpRst;
  std::vector<Packet> reset{Packet{rst, {}}};
  hub->Send(3, reset);
  for (int i = 0; i < 200 && hub->host_connections() != 40; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(hub->host_connections(), 40u);
  EXPECT_EQ(window_of_next(141), std::max<uint32_t>((2u << 20) / 41, vsock::kMaxPayload));
  ::close(ls);
  hub->RemoveGuest(3);
}

TEST_F(VsockHubTest, RoutesBetweenGuestsOnlyWithinAGroup) {
  auto hub = Hub();
  FakeGuest a(*hub, 4, "", {"blue", "red"}), b(*hub, 5, "", {"red"}), c(*hub, 6);
  // 4 -> 5 share "red": the REQUEST arrives as sent.
  const Hdr req = Request(4, 1000, 5, 2000);
  a.Send(Packet{req, {}});
  Packet p;
  ASSERT_TRUE(b.Next(&p));
  EXPECT_EQ(std::memcmp(&p.hdr, &req, sizeof req), 0);
  // 4 -> 6 (no group) and 4 -> 99 (nobody): RSTs, counted.
  a.Send(Packet{Request(4, 1001, 6, 2000), {}});
  ASSERT_TRUE(a.Next(&p));
  EXPECT_EQ(p.hdr.op, vsock::kOpRst);
  EXPECT_EQ(p.hdr.dst_port, 1001u);
  EXPECT_EQ(Counter(*hub, 4, "hub.refused_group"), 1u);
  a.Send(Packet{Request(4, 1002, 99, 2000), {}});
  ASSERT_TRUE(a.Next(&p));
  EXPECT_EQ(p.hdr.op, vsock::kOpRst);
  EXPECT_EQ(Counter(*hub, 4, "hub.refused_no_route"), 1u);
  EXPECT_FALSE(c.Next(&p, 100)) << "nothing leaked to guest 6";
  // 6 reaches no sibling at all (default: host only).
  c.Send(Packet{Request(6, 1, 5, 2), {}});
  ASSERT_TRUE(c.Next(&p));
  EXPECT_EQ(p.hdr.op, vsock::kOpRst);
  EXPECT_FALSE(b.Next(&p, 100));
}

// An RST storm and packets for connections that do not exist, from a
// guest that never reads: no RST answers an RST, every other packet is
// refused and counted, what waits for the guest stays bounded (its inbox,
// then the hub's backlog; the rest is counted), and the hub still answers
// once the guest reads again.
TEST_F(VsockHubTest, RstStormFromAGuestThatNeverReads) {
  auto hub = Hub();
  FakeGuest g(*hub, 3, dir_ + "/v3.sock");
  FakeGuest other(*hub, 4);  // no shared group: a route the storm may not take
  constexpr uint32_t kRsts = 30000, kStrays = 30000;
  std::vector<Packet> batch;
  auto flush = [&] {
    g.Send(std::move(batch));
    batch.clear();
  };
  for (uint32_t i = 0; i < kRsts; ++i) {
    Hdr h = Request(3, 1 + i, i % 2 ? vsock::kCidHost : 4, 80);
    h.op = vsock::kOpRst;
    batch.push_back(Packet{h, {}});
    if (batch.size() == 64) flush();
  }
  for (uint32_t i = 0; i < kStrays; ++i) {
    Hdr h = Request(3, 100000 + i, vsock::kCidHost, 80);
    h.op = vsock::kOpRw;
    h.len = 16;
    batch.push_back(Packet{h, std::vector<uint8_t>(16, 7)});
    if (batch.size() == 64) flush();
  }
  flush();
  // Every stray packet was refused (no connection, or no room on the way
  // to the hub's thread: then counted as no route), and so were the RSTs
  // that found no room; the RSTs to a guest outside the group are counted
  // there. None of the RSTs is answered (below).
  EXPECT_TRUE(testproc::WaitFor(
      [&] {
        return Counter(*hub, 3, "hub.refused_no_connection") + Counter(*hub, 3, "hub.refused_no_route") >= kStrays;
      },
      20))
      << Counter(*hub, 3, "hub.refused_no_connection") << " + " << Counter(*hub, 3, "hub.refused_no_route");
  EXPECT_EQ(Counter(*hub, 3, "hub.refused_group"), kRsts / 2);
  // Drain: only RSTs, none for an RST, at most the inbox and the backlog.
  Packet p;
  uint64_t got = 0;
  while (g.Next(&p, 1000)) {
    ++got;
    ASSERT_EQ(p.hdr.op, vsock::kOpRst);
    ASSERT_GE(p.hdr.dst_port, 100000u) << "an RST answered an RST";
  }
  EXPECT_GT(got, 0u);
  EXPECT_LE(got, kStrays);
  EXPECT_LE(got, 1024u + 16384u + 64u) << "held for a guest that did not read";
  // The hub still answers.
  g.Send(Packet{Request(3, 7, vsock::kCidHost, 1), {}});
  ASSERT_TRUE(g.Next(&p));
  EXPECT_EQ(p.hdr.op, vsock::kOpRst);
  EXPECT_EQ(p.hdr.dst_port, 7u);
  Packet none;
  EXPECT_FALSE(other.Next(&none, 200)) << "nothing crossed to a guest outside the group";
}

TEST_F(VsockHubTest, RefusalsAreCountedAndAnswered) {
  VsockHub::Options o;
  o.max_conns = 3;
  auto hub = Hub(o);
  const std::string uds = dir_ + "/v3.sock";
  FakeGuest g(*hub, 3, uds);
  Packet p;
  // Nobody listens on port 1.
  g.Send(Packet{Request(3, 500, vsock::kCidHost, 1), {}});
  ASSERT_TRUE(g.Next(&p));
  EXPECT_EQ(p.hdr.op, vsock::kOpRst);
  EXPECT_EQ(Counter(*hub, 3, "hub.refused_no_listener"), 1u);
  // A packet for a connection that does not exist.
  Hdr rw = Request(3, 501, vsock::kCidHost, 1);
  rw.op = vsock::kOpRw;
  g.Send(Packet{rw, {}});
  ASSERT_TRUE(g.Next(&p));
  EXPECT_EQ(p.hdr.op, vsock::kOpRst);
  EXPECT_EQ(Counter(*hub, 3, "hub.refused_no_connection"), 1u);
  // A host that does not speak the protocol is disconnected.
  const int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, uds.c_str(), uds.size() + 1);
  ASSERT_EQ(::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const std::string junk = "HELLO 5\n";
  ASSERT_EQ(::write(s, junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));
  char c;
  EXPECT_EQ(::read(s, &c, 1), 0) << "closed";
  ::close(s);
  EXPECT_EQ(Counter(*hub, 3, "hub.bad_connect"), 1u);
  // A guest that refuses a host's CONNECT: the host's socket is closed, no OK.
  const int h = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_EQ(::connect(h, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const std::string conn = "connect 77\n";  // the verb in any case, as vhost-device-vsock takes it
  ASSERT_EQ(::write(h, conn.data(), conn.size()), static_cast<ssize_t>(conn.size()));
  ASSERT_TRUE(g.Next(&p));
  EXPECT_EQ(p.hdr.op, vsock::kOpRequest);
  EXPECT_EQ(p.hdr.dst_port, 77u);
  g.Send(Packet{vsock::RstFor(p.hdr), {}});
  EXPECT_EQ(::read(h, &c, 1), 0) << "closed without OK";
  ::close(h);
  // A connection flood: a listener takes them, the fourth is refused.
  const int ls = ListenAt(uds + "_9");
  ASSERT_GE(ls, 0);
  for (uint32_t i = 0; i < 4; ++i) {
    g.Send(Packet{Request(3, 600 + i, vsock::kCidHost, 9), {}});
    ASSERT_TRUE(g.Next(&p));
    EXPECT_EQ(p.hdr.op, i < 3 ? vsock::kOpResponse : vsock::kOpRst) << i;
  }
  EXPECT_EQ(Counter(*hub, 3, "hub.refused_too_many_conns"), 1u);
  EXPECT_EQ(Counter(*hub, 3, "hub.conns_open"), 3u);
  ::close(ls);
}

}  // namespace
}  // namespace vioport::vios
