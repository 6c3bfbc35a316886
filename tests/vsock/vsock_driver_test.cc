// SPDX-License-Identifier: Apache-2.0
// The guest driver (guest/vsock) against the real VsockDevice over the
// loopback transport, split and packed rings. The host is played by the
// test: a PacketSink whose connection ends are core's vsock::Endpoint, so
// credit and SHUTDOWN run as they do in vios's hub. Checks: connect,
// accept, data both ways byte for byte past several credit windows,
// SEQPACKET boundaries, RST for no listener, TRANSPORT_RESET (connections
// end, listeners stay), and a device that sends the driver nonsense.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "vioport/backends/vsock_device.h"
#include "vioport/core/vsock_conn.h"
#include "vioport/guest/pattern.h"
#include "vioport/guest/vsock_driver.h"
#include "vioport/transports/loopback.h"

namespace vioport {
namespace {

using vsock::Endpoint;
using vsock::Packet;

constexpr uint64_t kGuest = 3;
constexpr uint32_t kHostPort = 1000;

// The host: accepts REQUESTs to kHostPort (every other port: RST), keeps
// what arrives per connection, sends what the test queues.
class Host : public vsock::PacketSink {
 public:
  void Send(uint64_t, std::vector<Packet>& packets) override {
    for (Packet& p : packets) {
      seen.push_back(p.hdr);
      const Key k{p.hdr.src_port, p.hdr.dst_port};
      auto it = conns.find(k);
      if (it == conns.end()) {
        if (p.hdr.op == vsock::kOpRequest && p.hdr.dst_port == kHostPort) {
          auto c = std::make_unique<Conn>();
          c->ep = std::make_unique<Endpoint>(vsock::kCidHost, p.hdr.dst_port, kGuest, p.hdr.src_port, p.hdr.type,
                                             Endpoint::Limits{64 * 1024, 16 * 1024});
          ToGuest(c->ep->Accept(p.hdr));
          conns[k] = std::move(c);
        } else if (p.hdr.op != vsock::kOpRst) {
          ToGuest({vsock::RstFor(p.hdr), {}});
        }
        continue;
      }
      Endpoint::Output out;
      it->second->ep->OnPacket(p.hdr, p.payload, &out);
      Conn& c = *it->second;
      c.data.insert(c.data.end(), out.to_host.begin(), out.to_host.end());
      c.cur += out.to_host.size();
      if (out.eom) {
        c.msgs.push_back(c.cur);
        c.cur = 0;
      }
      if (out.host_eof) c.eof = true;
      // The host reads at once: credit goes back.
      Endpoint::Output o2;
      c.ep->Consumed(static_cast<uint32_t>(out.to_host.size()), &o2);
      for (Packet& q : out.to_peer) ToGuest(std::move(q));
      for (Packet& q : o2.to_peer) ToGuest(std::move(q));
    }
  }
  void ToGuest(Packet p) {
    std::vector<Packet> v;
    v.push_back(std::move(p));
    dev->inbox().Push(0, std::span<Packet>(v));
  }
  // The host's end of the guest's connection from `guest_port`.
  struct Conn {
    std::unique_ptr<Endpoint> ep;
    std::vector<uint8_t> data;
    std::vector<size_t> msgs;  // SEQPACKET: sizes of whole messages
    size_t cur = 0;
    bool eof = false;
  };
  using Key = std::pair<uint32_t, uint32_t>;  // guest port, host port
  Conn* Only() { return conns.size() == 1 ? conns.begin()->second.get() : nullptr; }
  // Data from the host on `c`, within the guest's credit.
  size_t Write(Conn& c, std::span<const uint8_t> d, bool eom = false) {
    Endpoint::Output out;
    const size_t n = c.ep->Send(d, eom, &out);
    for (Packet& q : out.to_peer) ToGuest(std::move(q));
    return n;
  }

  VsockDevice* dev = nullptr;
  std::map<Key, std::unique_ptr<Conn>> conns;
  std::vector<vsock::Hdr> seen;
};

// A packet header from the host to the guest.
vsock::Hdr FromHost(uint32_t src_port, uint32_t dst_port, uint16_t op) {
  vsock::Hdr h{};
  h.src_cid = vsock::kCidHost;
  h.dst_cid = kGuest;
  h.src_port = src_port;
  h.dst_port = dst_port;
  h.type = vsock::kTypeStream;
  h.op = op;
  h.buf_alloc = 65536;
  return h;
}

class VsockDriverTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    VsockOptions o;
    o.guest_cid = kGuest;
    auto d = VsockDevice::Create(o);
    ASSERT_TRUE(d.ok());
    dev = *d;
    host = std::make_shared<Host>();
    host->dev = dev.get();
    dev->Plug(host);
    lo = std::make_unique<LoopbackTransport>(dev);
    drv = std::make_unique<VsockDriver>(*lo);
    uint64_t ring = feature::Bit(feature::kVersion1) | feature::Bit(feature::kEventIdx);
    if (GetParam()) ring |= feature::Bit(feature::kRingPacked);
    ring_ = ring;
    opts.wait.spin = absl::ZeroDuration();
    ASSERT_TRUE(drv->Init(ring, opts).ok());
  }
  void TearDown() override {
    drv.reset();
    lo.reset();
  }
  // Polls until `pred` holds (bounded).
  template <typename P>
  bool PollUntil(P pred) {
    for (int i = 0; i < 2000 && !pred(); ++i)
      if (!drv->Poll(absl::Milliseconds(1)).ok()) return false;
    return pred();
  }

  std::shared_ptr<VsockDevice> dev;
  std::shared_ptr<Host> host;
  std::unique_ptr<LoopbackTransport> lo;
  std::unique_ptr<VsockDriver> drv;
  VsockDriverOptions opts;
  uint64_t ring_ = 0;
};

TEST_P(VsockDriverTest, StreamBothWaysPastTheCredit) {
  EXPECT_EQ(drv->guest_cid(), kGuest);
  EXPECT_TRUE(drv->seqpacket());
  auto id = drv->Connect(vsock::kCidHost, kHostPort, vsock::kTypeStream, absl::Seconds(5));
  ASSERT_TRUE(id.ok()) << id.status();
  Host::Conn* hc = host->Only();
  ASSERT_NE(hc, nullptr);
  // Guest to host: 1 MiB, sixteen times the host's 64 KiB credit.
  std::vector<uint8_t> out(1 << 20);
  pattern::Fill(1, 0, out);
  auto n = drv->Send(*id, out, false, absl::Seconds(10));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, out.size());
  ASSERT_TRUE(PollUntil([&] { return hc->data.size() == out.size(); })) << hc->data.size();
  EXPECT_EQ(hc->data, out);
  // Host to guest: 1 MiB, four times the guest's 256 KiB credit, written as
  // the credit allows while the guest reads.
  std::vector<uint8_t> in(1 << 20), got;
  pattern::Fill(2, 0, in);
  size_t sent = 0;
  std::vector<uint8_t> buf(100000);
  while (got.size() < in.size()) {
    sent += host->Write(*hc, std::span<const uint8_t>(in).subspan(sent));
    auto r = drv->Recv(*id, buf, absl::Milliseconds(50));
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_FALSE(r->eof);
    got.insert(got.end(), buf.begin(), buf.begin() + static_cast<ptrdiff_t>(r->bytes));
  }
  EXPECT_EQ(got, in);
  // The guest shuts down sending: the host sees EOF; then closes.
  ASSERT_TRUE(drv->Shutdown(*id, vsock::kShutdownSend).ok());
  ASSERT_TRUE(PollUntil([&] { return hc->eof; }));
  drv->Close(*id, absl::Milliseconds(50));
  EXPECT_EQ(drv->open_connections(), 0u);
  EXPECT_EQ(drv->stats().bad_packets, 0u);
}

// More small packets in the ring than the device takes in one turn
// (VsockDevice::kTxBudget): the rest must come on the next turn, without
// another notification from the driver.
TEST_P(VsockDriverTest, ManySmallWritesPastTheDeviceBudget) {
  auto id = drv->Connect(vsock::kCidHost, kHostPort, vsock::kTypeStream, absl::Seconds(5));
  ASSERT_TRUE(id.ok()) << id.status();
  Host::Conn* hc = host->Only();
  ASSERT_NE(hc, nullptr);
  std::vector<uint8_t> all(600 * 100);
  pattern::Fill(4, 0, all);
  for (size_t i = 0; i < 600; ++i) {
    auto n = drv->Send(*id, std::span<const uint8_t>(all).subspan(i * 100, 100), false, absl::ZeroDuration());
    ASSERT_TRUE(n.ok()) << n.status();
    ASSERT_EQ(*n, 100u) << i;
  }
  ASSERT_TRUE(PollUntil([&] { return hc->data.size() == all.size(); })) << hc->data.size();
  EXPECT_EQ(hc->data, all);
}

TEST_P(VsockDriverTest, SeqpacketMessagesKeepTheirBoundaries) {
  auto id = drv->Connect(vsock::kCidHost, kHostPort, vsock::kTypeSeqpacket, absl::Seconds(5));
  ASSERT_TRUE(id.ok()) << id.status();
  Host::Conn* hc = host->Only();
  ASSERT_NE(hc, nullptr);
  const std::vector<size_t> sizes = {1, 100, 16 * 1024, 16 * 1024 + 1, 50000, 0, 7};
  for (size_t i = 0; i < sizes.size(); ++i) {
    std::vector<uint8_t> m(sizes[i]);
    pattern::Fill(10 + i, 0, m);
    auto n = drv->Send(*id, m, true, absl::Seconds(5));
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(*n, m.size());
  }
  ASSERT_TRUE(PollUntil([&] { return hc->msgs.size() >= sizes.size(); }));
  // The host joins pieces until EOM (a message may go in several packets
  // as the credit allows): each message whole, of its size, in order (a
  // 0-byte message is an empty EOM packet).
  EXPECT_EQ(hc->msgs, sizes);
  size_t off = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_EQ(pattern::FirstMismatch(10 + i, 0, std::span<const uint8_t>(hc->data).subspan(off, sizes[i])), -1) << i;
    off += sizes[i];
  }
  // Host to guest: messages larger than the guest's 16 KiB receive buffers
  // arrive whole, one per Recv; one too big for the buffer is cut and said so.
  for (size_t s : {40000ul, 3ul, 70000ul}) {
    std::vector<uint8_t> m(s);
    pattern::Fill(s, 0, m);
    ASSERT_EQ(host->Write(*hc, m, true), s);
  }
  std::vector<uint8_t> buf(65536);
  for (size_t s : {40000ul, 3ul, 70000ul}) {
    auto r = drv->Recv(*id, buf, absl::Seconds(2));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->eom);
    EXPECT_EQ(r->bytes, std::min<size_t>(s, buf.size()));
    EXPECT_EQ(r->truncated, s > buf.size());
    EXPECT_EQ(pattern::FirstMismatch(s, 0, std::span<const uint8_t>(buf.data(), r->bytes)), -1);
  }
}

TEST_P(VsockDriverTest, NoListenerIsARefusal) {
  auto id = drv->Connect(vsock::kCidHost, kHostPort + 1, vsock::kTypeStream, absl::Seconds(5));
  ASSERT_FALSE(id.ok());
  EXPECT_TRUE(absl::IsUnavailable(id.status())) << id.status();
  EXPECT_EQ(drv->open_connections(), 0u);
  // Nobody listens in the guest either: the host's REQUEST gets an RST.
  const vsock::Hdr h = FromHost(77, 9000, vsock::kOpRequest);
  host->seen.clear();
  host->ToGuest({h, {}});
  ASSERT_TRUE(PollUntil([&] { return !host->seen.empty(); }));
  EXPECT_EQ(host->seen[0].op, vsock::kOpRst);
  EXPECT_EQ(host->seen[0].dst_port, 77u);
  EXPECT_EQ(drv->stats().refused, 1u);
}

TEST_P(VsockDriverTest, TransportResetEndsConnectionsListenersStay) {
  ASSERT_TRUE(drv->Listen(9000, vsock::kTypeStream).ok());
  auto id = drv->Connect(vsock::kCidHost, kHostPort, vsock::kTypeStream, absl::Seconds(5));
  ASSERT_TRUE(id.ok());
  dev->TransportReset();
  ASSERT_TRUE(PollUntil([&] { return drv->stats().transport_resets == 1; }));
  std::vector<uint8_t> buf(16);
  auto r = drv->Recv(*id, buf, absl::ZeroDuration());
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->eof);
  EXPECT_TRUE(r->reset);
  drv->Close(*id);
  EXPECT_EQ(drv->guest_cid(), kGuest);
  // The listener survived: a host REQUEST to it is accepted.
  const vsock::Hdr h = FromHost(5555, 9000, vsock::kOpRequest);
  host->seen.clear();
  host->ToGuest({h, {}});
  auto a = drv->Accept(9000, vsock::kTypeStream, absl::Seconds(5));
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(PollUntil([&] { return !host->seen.empty(); }));
  EXPECT_EQ(host->seen[0].op, vsock::kOpResponse);
}

TEST_P(VsockDriverTest, NonsenseFromTheDeviceIsCountedOrReset) {
  auto id = drv->Connect(vsock::kCidHost, kHostPort, vsock::kTypeStream, absl::Seconds(5));
  ASSERT_TRUE(id.ok());
  Host::Conn* hc = host->Only();
  ASSERT_NE(hc, nullptr);
  const uint32_t guest_port = hc->ep->peer_port();
  auto base = [&] { return FromHost(kHostPort, guest_port, vsock::kOpRw); };
  host->seen.clear();
  // Another guest's CID: dropped, counted.
  vsock::Hdr wrong = base();
  wrong.dst_cid = kGuest + 1;
  wrong.op = vsock::kOpRw;
  host->ToGuest({wrong, std::vector<uint8_t>(10, 1)});
  // An unknown type: counted (no RST of that type).
  vsock::Hdr type = base();
  type.type = 9;
  type.op = vsock::kOpRw;
  host->ToGuest({type, {}});
  // Data for a connection that does not exist: an RST.
  vsock::Hdr stray = base();
  stray.src_port = kHostPort + 5;
  stray.op = vsock::kOpRw;
  host->ToGuest({stray, std::vector<uint8_t>(10, 2)});
  ASSERT_TRUE(PollUntil([&] { return drv->stats().bad_packets >= 2 && !host->seen.empty(); }));
  EXPECT_EQ(drv->stats().bad_packets, 2u);
  ASSERT_EQ(host->seen.size(), 1u);
  EXPECT_EQ(host->seen[0].op, vsock::kOpRst);
  EXPECT_EQ(host->seen[0].dst_port, kHostPort + 5);
  // The real connection is untouched...
  EXPECT_FALSE(drv->ended(*id));
  // ...until the host ignores the guest's credit (256 KiB): the driver
  // refuses it with an RST and the connection ends as reset.
  std::vector<uint8_t> flood(64 * 1024, 3);
  for (int i = 0; i < 5; ++i) {
    vsock::Hdr rw = base();
    rw.op = vsock::kOpRw;
    host->ToGuest({rw, flood});
  }
  ASSERT_TRUE(PollUntil([&] { return drv->ended(*id) || drv->readable(*id) > 0; }));
  std::vector<uint8_t> buf(1 << 20);
  bool reset = false;
  for (int i = 0; i < 50 && !reset; ++i) {
    // Read nothing until the flood is in: the credit must overflow.
    if (!drv->Poll(absl::Milliseconds(1)).ok()) break;
    if (drv->ended(*id) || drv->readable(*id) >= 256 * 1024) break;
  }
  auto r = drv->Recv(*id, buf, absl::Milliseconds(100));
  ASSERT_TRUE(r.ok());
  size_t total = r->bytes;
  while (!r->eof) {
    r = drv->Recv(*id, buf, absl::Milliseconds(100));
    ASSERT_TRUE(r.ok());
    total += r->bytes;
    if (r->bytes == 0 && !r->eof) break;
  }
  EXPECT_TRUE(r->eof && r->reset) << "bytes " << total;
  EXPECT_LE(total, 256u * 1024) << "no more than the credit is kept";
  bool rst = false;
  for (const vsock::Hdr& h : host->seen) rst = rst || (h.op == vsock::kOpRst && h.src_port == guest_port);
  EXPECT_TRUE(rst);
}

INSTANTIATE_TEST_SUITE_P(Rings, VsockDriverTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "Packed" : "Split"; });

}  // namespace
}  // namespace vioport
