// SPDX-License-Identifier: Apache-2.0
// virtio-vsock's byte-level parts: every check on a packet a guest sends,
// and one end of a connection (Endpoint) driven packet by packet as a
// guest's driver would (and as a hostile one would): handshake, credit
// both ways, SEQPACKET message boundaries, the clean close and its RST,
// and each protocol breach ending in a counted refusal and an RST.
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <vector>

#include "vioport/backends/vsock_device.h"
#include "vioport/backends/vsock_packet.h"

namespace vioport::vsock {
namespace {

constexpr uint64_t kGuest = 3;
constexpr uint64_t kSeq = uint64_t{1} << feature::kSeqpacket;

Hdr GuestHdr(uint16_t op, uint32_t len = 0, uint16_t type = kTypeStream) {
  Hdr h{};
  h.src_cid = kGuest;
  h.dst_cid = kCidHost;
  h.src_port = 50000;
  h.dst_port = 1234;
  h.len = len;
  h.type = type;
  h.op = op;
  h.buf_alloc = 64 * 1024;
  return h;
}

// A stream's small packets join in the inbox: a credit window of 1-byte
// writes (far more packets than a source's item share) all arrive, in
// order; SEQPACKET, flagged packets and other connections stay apart.
TEST(VsockInbox, SmallStreamPacketsJoin) {
  Inbox in(Inbox::Limits{64, 1 << 20, 16});
  auto rw = [](uint32_t port, uint16_t type, uint32_t flags, uint8_t byte) {
    Packet p;
    p.hdr.src_cid = 3;
    p.hdr.dst_cid = 2;
    p.hdr.src_port = port;
    p.hdr.dst_port = 80;
    p.hdr.type = type;
    p.hdr.op = kOpRw;
    p.hdr.flags = flags;
    p.hdr.fwd_cnt = byte;
    p.payload = {byte};
    p.hdr.len = 1;
    return p;
  };
  for (int i = 0; i < 1000; ++i) {
    Packet p = rw(1, kTypeStream, 0, static_cast<uint8_t>(i));
    ASSERT_EQ(in.Push(7, {&p, 1}), 1u) << i;
  }
  Packet other = rw(2, kTypeStream, 0, 0xaa), seq1 = rw(1, kTypeSeqpacket, kSeqEom, 1), seq2 = rw(1, kTypeSeqpacket, kSeqEom, 2);
  ASSERT_EQ(in.Push(7, {&other, 1}), 1u);
  ASSERT_EQ(in.Push(7, {&seq1, 1}), 1u);
  ASSERT_EQ(in.Push(7, {&seq2, 1}), 1u);
  std::vector<Packet> got;
  in.Take(&got, 100);
  ASSERT_EQ(got.size(), 4u);
  ASSERT_EQ(got[0].payload.size(), 1000u);
  EXPECT_EQ(got[0].hdr.len, 1000u);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(got[0].payload[i], static_cast<uint8_t>(i)) << i;
  EXPECT_EQ(got[0].hdr.fwd_cnt, static_cast<uint8_t>(999)) << "the later packet's credit";
  EXPECT_EQ(got[1].hdr.src_port, 2u);
  EXPECT_EQ(got[2].payload, std::vector<uint8_t>{1});
  EXPECT_EQ(got[3].payload, std::vector<uint8_t>{2});
  EXPECT_EQ(in.drops(), 0u);
}

TEST(VsockCheck, AcceptsWhatLinuxSends) {
  for (uint16_t op : {kOpRequest, kOpResponse, kOpRst, kOpShutdown, kOpCreditUpdate, kOpCreditRequest})
    EXPECT_EQ(CheckGuestPacket(GuestHdr(op), kGuest, kSeq, 0), Refusal::kNone) << OpName(op);
  EXPECT_EQ(CheckGuestPacket(GuestHdr(kOpRw, 4096), kGuest, kSeq, 4096), Refusal::kNone);
  EXPECT_EQ(CheckGuestPacket(GuestHdr(kOpRw, 100, kTypeSeqpacket), kGuest, kSeq, 100), Refusal::kNone);
  Hdr sibling = GuestHdr(kOpRequest);
  sibling.dst_cid = 4;
  EXPECT_EQ(CheckGuestPacket(sibling, kGuest, 0, 0), Refusal::kNone);
}

TEST(VsockCheck, EveryRefusal) {
  struct Case {
    const char* name;
    Hdr h;
    uint64_t features;
    uint32_t chain;
    Refusal want;
  };
  auto with = [](Hdr h, auto f) {
    f(h);
    return h;
  };
  const std::vector<Case> cases = {
      {"len beyond the chain", GuestHdr(kOpRw, 4097), 0, 4096, Refusal::kLenBeyondBuffer},
      {"len above 64 KiB", GuestHdr(kOpRw, kMaxPayload + 1), 0, 1u << 20, Refusal::kTooBig},
      {"len 4 GiB - 1", GuestHdr(kOpRw, 0xffffffff), 0, 0xffffffff, Refusal::kTooBig},
      {"payload on REQUEST", GuestHdr(kOpRequest, 8), 0, 8, Refusal::kLenNotRw},
      {"payload on CREDIT_UPDATE", GuestHdr(kOpCreditUpdate, 1), 0, 1, Refusal::kLenNotRw},
      {"op 0", GuestHdr(kOpInvalid), 0, 0, Refusal::kBadOp},
      {"op 8", GuestHdr(8), 0, 0, Refusal::kBadOp},
      {"op 0xffff", GuestHdr(0xffff), 0, 0, Refusal::kBadOp},
      {"type 0", GuestHdr(kOpRequest, 0, 0), 0, 0, Refusal::kBadType},
      {"type 3 (DGRAM, never in the spec)", GuestHdr(kOpRequest, 0, 3), 0, 0, Refusal::kBadType},
      {"SEQPACKET not negotiated", GuestHdr(kOpRequest, 0, kTypeSeqpacket), 0, 0, Refusal::kBadType},
      {"STREAM with NO_IMPLIED_STREAM", GuestHdr(kOpRequest),
       kSeq | (uint64_t{1} << feature::kNoImpliedStream), 0, Refusal::kBadType},
      {"another guest's src_cid", with(GuestHdr(kOpRequest), [](Hdr& h) { h.src_cid = 4; }), 0, 0,
       Refusal::kSpoofedSrc},
      {"the host's src_cid", with(GuestHdr(kOpRequest), [](Hdr& h) { h.src_cid = kCidHost; }), 0, 0,
       Refusal::kSpoofedSrc},
      {"dst_cid 0", with(GuestHdr(kOpRequest), [](Hdr& h) { h.dst_cid = 0; }), 0, 0, Refusal::kBadDst},
      {"dst_cid 1", with(GuestHdr(kOpRequest), [](Hdr& h) { h.dst_cid = 1; }), 0, 0, Refusal::kBadDst},
      {"dst_cid 0xffffffff", with(GuestHdr(kOpRequest), [](Hdr& h) { h.dst_cid = kCidAny; }), 0, 0,
       Refusal::kBadDst},
      {"dst_cid above 32 bits", with(GuestHdr(kOpRequest), [](Hdr& h) { h.dst_cid = uint64_t{1} << 32 | 5; }), 0, 0,
       Refusal::kBadDst},
      {"dst_cid its own", with(GuestHdr(kOpRequest), [](Hdr& h) { h.dst_cid = kGuest; }), 0, 0, Refusal::kBadDst},
  };
  for (const Case& c : cases) EXPECT_EQ(CheckGuestPacket(c.h, kGuest, c.features, c.chain), c.want) << c.name;
  // Every cause has a name, for its counter.
  for (int r = 0; r < static_cast<int>(Refusal::kCount); ++r)
    EXPECT_STRNE(RefusalName(static_cast<Refusal>(r)), "?") << r;
}

TEST(VsockCheck, RstSwapsTheAddresses) {
  const Hdr h = GuestHdr(kOpRequest);
  const Hdr r = RstFor(h);
  EXPECT_EQ(r.src_cid, h.dst_cid);
  EXPECT_EQ(r.dst_cid, h.src_cid);
  EXPECT_EQ(r.src_port, h.dst_port);
  EXPECT_EQ(r.dst_port, h.src_port);
  EXPECT_EQ(r.op, kOpRst);
  EXPECT_EQ(r.type, h.type);
  EXPECT_EQ(r.len, 0u);
}

std::vector<uint8_t> Bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

// The host's end (CID 2, port 1234) of a connection the guest opened.
struct Conn {
  explicit Conn(uint16_t type = kTypeStream, Endpoint::Limits l = {}) : e(kCidHost, 1234, kGuest, 50000, type, l) {
    Hdr req = GuestHdr(kOpRequest, 0, type);
    req.buf_alloc = guest_buf_alloc;
    const Packet resp = e.Accept(req);
    EXPECT_EQ(resp.hdr.op, kOpResponse);
    EXPECT_EQ(resp.hdr.src_cid, kCidHost);
    EXPECT_EQ(resp.hdr.dst_cid, kGuest);
    EXPECT_EQ(resp.hdr.src_port, 1234u);
    EXPECT_EQ(resp.hdr.dst_port, 50000u);
    EXPECT_EQ(resp.hdr.buf_alloc, l.buf_alloc);
  }
  // A packet from the guest, carrying its credit.
  Endpoint::Output From(uint16_t op, std::vector<uint8_t> payload = {}, uint32_t flags = 0) {
    Hdr h = GuestHdr(op, static_cast<uint32_t>(payload.size()), e.type());
    h.flags = flags;
    h.buf_alloc = guest_buf_alloc;
    h.fwd_cnt = guest_fwd_cnt;
    Endpoint::Output out;
    e.OnPacket(h, payload, &out);
    return out;
  }
  uint32_t guest_buf_alloc = 16 * 1024;
  uint32_t guest_fwd_cnt = 0;
  Endpoint e;
};

TEST(VsockEndpoint, DataFromTheGuestWithinCreditReachesTheHost) {
  Conn c;
  const std::vector<uint8_t> a = Bytes(3000, 1), b = Bytes(5000, 2);
  Endpoint::Output o1 = c.From(kOpRw, a);
  Endpoint::Output o2 = c.From(kOpRw, b);
  EXPECT_EQ(o1.to_host, a);
  EXPECT_EQ(o2.to_host, b);
  EXPECT_TRUE(o1.to_peer.empty());
  EXPECT_EQ(c.e.held(), 8000u);
  EXPECT_EQ(o1.refused, Refusal::kNone);
}

TEST(VsockEndpoint, AGuestIgnoringCreditIsReset) {
  Endpoint::Limits l;
  l.buf_alloc = 8192;
  Conn c(kTypeStream, l);
  EXPECT_EQ(c.From(kOpRw, Bytes(8192, 1)).refused, Refusal::kNone);
  // The host has not consumed a byte: one more is beyond the credit.
  Endpoint::Output o = c.From(kOpRw, Bytes(1, 9));
  EXPECT_EQ(o.refused, Refusal::kCredit);
  ASSERT_EQ(o.to_peer.size(), 1u);
  EXPECT_EQ(o.to_peer[0].hdr.op, kOpRst);
  EXPECT_TRUE(o.to_host.empty());
  EXPECT_TRUE(c.e.closed());
  // Nothing more happens on a closed connection.
  Endpoint::Output after = c.From(kOpRw, Bytes(10, 3));
  EXPECT_TRUE(after.to_peer.empty());
  EXPECT_TRUE(after.to_host.empty());
}

TEST(VsockEndpoint, ConsumingSendsCreditUpdatesBeforeThePeerStalls) {
  Endpoint::Limits l;
  l.buf_alloc = 256 * 1024;
  Conn c(kTypeStream, l);
  uint32_t consumed = 0, updates = 0;
  // The guest streams 4 MiB in 4 KiB packets (Linux's receive-buffer size),
  // each sent only within the credit the host's end last advertised; the
  // host consumes everything.
  uint32_t sent = 0, advertised_fwd = 0;
  while (sent < (4u << 20)) {
    const uint32_t free = PeerFree(l.buf_alloc, advertised_fwd, sent);
    ASSERT_GE(free, 1u) << "the guest would stall at " << sent << " bytes";
    const uint32_t n = std::min<uint32_t>(free, 4096);
    Endpoint::Output o = c.From(kOpRw, Bytes(n, static_cast<uint8_t>(sent)));
    ASSERT_EQ(o.refused, Refusal::kNone);
    sent += n;
    Endpoint::Output oc;
    c.e.Consumed(static_cast<uint32_t>(o.to_host.size()), &oc);
    consumed += static_cast<uint32_t>(o.to_host.size());
    for (const Packet& p : oc.to_peer) {
      EXPECT_EQ(p.hdr.op, kOpCreditUpdate);
      EXPECT_EQ(p.hdr.fwd_cnt, consumed);
      advertised_fwd = p.hdr.fwd_cnt;
      ++updates;
    }
  }
  EXPECT_EQ(consumed, 4u << 20);
  // Not one update per packet (1024 of them): one per quarter buffer freed.
  EXPECT_LE(updates, (4u << 20) / (l.buf_alloc / 4) + 1);
  EXPECT_GE(updates, (4u << 20) / (l.buf_alloc / 4) - 1);
}

TEST(VsockEndpoint, CreditRequestIsAnswered) {
  Conn c;
  c.From(kOpRw, Bytes(100, 1));
  Endpoint::Output oc;
  c.e.Consumed(60, &oc);
  Endpoint::Output o = c.From(kOpCreditRequest);
  ASSERT_EQ(o.to_peer.size(), 1u);
  EXPECT_EQ(o.to_peer[0].hdr.op, kOpCreditUpdate);
  EXPECT_EQ(o.to_peer[0].hdr.fwd_cnt, 60u);
  EXPECT_EQ(c.e.held(), 40u);
}

TEST(VsockEndpoint, HostDataGoesOutWithinThePeersCredit) {
  Conn c;  // the guest advertised 16 KiB
  const std::vector<uint8_t> data = Bytes(40000, 5);
  Endpoint::Output o;
  size_t took = c.e.Send(data, false, &o);
  EXPECT_EQ(took, 16u * 1024);
  EXPECT_EQ(c.e.peer_free(), 0u);
  std::vector<uint8_t> got;
  for (const Packet& p : o.to_peer) {
    EXPECT_EQ(p.hdr.op, kOpRw);
    EXPECT_EQ(p.hdr.len, p.payload.size());
    EXPECT_LE(p.payload.size(), kMaxPayload);
    got.insert(got.end(), p.payload.begin(), p.payload.end());
  }
  Endpoint::Output none;
  EXPECT_EQ(c.e.Send(std::span(data).subspan(took), false, &none), 0u);
  EXPECT_TRUE(none.to_peer.empty());
  // The guest consumed 10000 bytes and says so: that much more goes.
  c.guest_fwd_cnt = 10000;
  c.From(kOpCreditUpdate);
  Endpoint::Output o2;
  const size_t more = c.e.Send(std::span(data).subspan(took), false, &o2);
  EXPECT_EQ(more, 10000u);
  for (const Packet& p : o2.to_peer) got.insert(got.end(), p.payload.begin(), p.payload.end());
  EXPECT_EQ(got, std::vector<uint8_t>(data.begin(), data.begin() + static_cast<ptrdiff_t>(took + more)));
}

TEST(VsockEndpoint, LargeSendsAreCutIntoPackets) {
  Endpoint::Limits l;
  l.max_packet = 4096;
  Conn c(kTypeStream, l);
  c.guest_buf_alloc = 1 << 20;
  c.From(kOpCreditUpdate);
  Endpoint::Output o;
  EXPECT_EQ(c.e.Send(Bytes(10000, 1), false, &o), 10000u);
  ASSERT_EQ(o.to_peer.size(), 3u);
  EXPECT_EQ(o.to_peer[0].hdr.len, 4096u);
  EXPECT_EQ(o.to_peer[1].hdr.len, 4096u);
  EXPECT_EQ(o.to_peer[2].hdr.len, 1808u);
}

TEST(VsockEndpoint, CopiedTakenAndPeekedPayloadsAgree) {
  // The same two packets handed over three ways: copied (OnPacket), given
  // up (TakePacket: the buffer itself becomes to_host) and left in place
  // (PeekPacket: a view of the caller's bytes). Same bytes, same credit.
  const std::vector<uint8_t> a = Bytes(3000, 1), b = Bytes(5000, 2);
  for (int how = 0; how < 3; ++how) {
    SCOPED_TRACE(how);
    Endpoint::Limits l;
    l.buf_alloc = 8000;
    Conn c(kTypeStream, l);
    for (const std::vector<uint8_t>* d : {&a, &b}) {
      const Hdr h = GuestHdr(kOpRw, static_cast<uint32_t>(d->size()), kTypeStream);
      Endpoint::Output o;
      std::vector<uint8_t> mine = *d;
      const uint8_t* where = mine.data();
      if (how == 0) {
        c.e.OnPacket(h, mine, &o);
        EXPECT_EQ(o.to_host, *d);
        EXPECT_NE(o.to_host.data(), where);
      } else if (how == 1) {
        c.e.TakePacket(h, std::move(mine), &o);
        EXPECT_EQ(o.to_host, *d);
        EXPECT_EQ(o.to_host.data(), where);  // moved, not copied
      } else {
        c.e.PeekPacket(h, mine, &o);
        EXPECT_TRUE(o.to_host.empty());
        ASSERT_EQ(o.to_host_in_place.size(), d->size());
        EXPECT_EQ(o.to_host_in_place.data(), where);
      }
      EXPECT_EQ(o.refused, Refusal::kNone);
    }
    EXPECT_EQ(c.e.held(), 8000u);
    // One byte more is beyond the credit, however it comes.
    std::vector<uint8_t> one = {7};
    const Hdr h = GuestHdr(kOpRw, 1, kTypeStream);
    Endpoint::Output o;
    if (how == 0) c.e.OnPacket(h, one, &o);
    if (how == 1) c.e.TakePacket(h, std::move(one), &o);
    if (how == 2) c.e.PeekPacket(h, one, &o);
    EXPECT_EQ(o.refused, Refusal::kCredit);
    EXPECT_TRUE(o.to_host.empty());
    EXPECT_TRUE(o.to_host_in_place.empty());
  }
}

TEST(VsockEndpoint, NextRwHeadersCountLikeSend) {
  Endpoint::Limits l;
  l.max_packet = 4096;
  Conn c(kTypeStream, l);
  c.guest_buf_alloc = 10000;
  c.From(kOpCreditUpdate);
  Hdr h{};
  // max_packet, then what is left of the guest's credit, then nothing.
  EXPECT_EQ(c.e.NextRw(100000, &h), 4096u);
  EXPECT_EQ(h.op, kOpRw);
  EXPECT_EQ(h.len, 4096u);
  EXPECT_EQ(h.src_cid, kCidHost);
  EXPECT_EQ(h.dst_cid, kGuest);
  EXPECT_EQ(h.src_port, 1234u);
  EXPECT_EQ(h.dst_port, 50000u);
  EXPECT_EQ(c.e.NextRw(100, &h), 100u);
  EXPECT_EQ(h.len, 100u);
  EXPECT_EQ(c.e.peer_free(), 10000u - 4196u);
  EXPECT_EQ(c.e.NextRw(100000, &h), 4096u);
  EXPECT_EQ(c.e.NextRw(100000, &h), 10000u - 8292u);
  EXPECT_EQ(c.e.NextRw(100000, &h), 0u);
  // Send agrees: no credit left.
  Endpoint::Output o;
  EXPECT_EQ(c.e.Send(Bytes(10, 1), false, &o), 0u);
  // The guest read it all: credit again, until we shut our sending half.
  c.guest_fwd_cnt = 10000;
  c.From(kOpCreditUpdate);
  EXPECT_EQ(c.e.NextRw(10, &h), 10u);
  c.e.Shutdown(kShutdownSend, &o);
  EXPECT_EQ(c.e.NextRw(10, &h), 0u);
  // Not for SEQPACKET (a message is not cut where credit ends).
  Conn s(kTypeSeqpacket, l);
  s.From(kOpCreditUpdate);
  EXPECT_EQ(s.e.NextRw(10, &h), 0u);
}

TEST(VsockEndpoint, SeqpacketKeepsMessageBoundaries) {
  Endpoint::Limits l;
  l.max_packet = 4096;
  Conn c(kTypeSeqpacket, l);
  c.guest_buf_alloc = 1 << 20;
  c.From(kOpCreditUpdate);
  // Host to guest: a 10000-byte message in three packets, EOM (and EOR) on the last only.
  Endpoint::Output o;
  EXPECT_EQ(c.e.Send(Bytes(10000, 1), true, &o), 10000u);
  ASSERT_EQ(o.to_peer.size(), 3u);
  EXPECT_EQ(o.to_peer[0].hdr.flags, 0u);
  EXPECT_EQ(o.to_peer[1].hdr.flags, 0u);
  EXPECT_EQ(o.to_peer[2].hdr.flags, kSeqEom | kSeqEor);
  // An empty message is one packet with EOM.
  Endpoint::Output e;
  EXPECT_EQ(c.e.Send({}, true, &e), 0u);
  ASSERT_EQ(e.to_peer.size(), 1u);
  EXPECT_EQ(e.to_peer[0].hdr.len, 0u);
  EXPECT_EQ(e.to_peer[0].hdr.flags & kSeqEom, kSeqEom);
  // Guest to host: EOM marks where a message ends.
  EXPECT_FALSE(c.From(kOpRw, Bytes(100, 2)).eom);
  EXPECT_TRUE(c.From(kOpRw, Bytes(50, 3), kSeqEom).eom);
}

TEST(VsockEndpoint, CleanCloseFromTheGuestEndsWithOurRst) {
  Conn c;
  Endpoint::Output o1 = c.From(kOpShutdown, {}, kShutdownSend);
  EXPECT_TRUE(o1.host_eof);
  EXPECT_TRUE(o1.to_peer.empty());
  EXPECT_FALSE(c.e.closed());
  // Half-closed: the host may still send.
  Endpoint::Output s;
  EXPECT_EQ(c.e.Send(Bytes(10, 1), false, &s), 10u);
  Endpoint::Output o2 = c.From(kOpShutdown, {}, kShutdownRecv);
  ASSERT_EQ(o2.to_peer.size(), 1u);
  EXPECT_EQ(o2.to_peer[0].hdr.op, kOpRst);
  EXPECT_TRUE(c.e.closed());
  EXPECT_EQ(o2.refused, Refusal::kNone);
}

TEST(VsockEndpoint, CleanCloseFromTheHost) {
  Conn c;
  Endpoint::Output o;
  c.e.Shutdown(kShutdownBoth, &o);
  ASSERT_EQ(o.to_peer.size(), 1u);
  EXPECT_EQ(o.to_peer[0].hdr.op, kOpShutdown);
  EXPECT_EQ(o.to_peer[0].hdr.flags, kShutdownBoth);
  EXPECT_EQ(c.e.state(), Endpoint::State::kClosing);
  // Data still in flight from the guest is dropped (and consumed), not an error.
  Endpoint::Output d = c.From(kOpRw, Bytes(100, 1));
  EXPECT_TRUE(d.to_host.empty());
  EXPECT_EQ(d.refused, Refusal::kNone);
  EXPECT_EQ(c.e.held(), 0u);
  Endpoint::Output r = c.From(kOpRst);
  EXPECT_TRUE(r.to_peer.empty());
  EXPECT_TRUE(c.e.closed());
}

TEST(VsockEndpoint, HalfCloseFromTheHost) {
  Conn c;
  Endpoint::Output o;
  c.e.Shutdown(kShutdownSend, &o);
  ASSERT_EQ(o.to_peer.size(), 1u);
  EXPECT_EQ(o.to_peer[0].hdr.flags, kShutdownSend);
  EXPECT_EQ(c.e.state(), Endpoint::State::kEstablished);
  // The host sends no more, but still receives.
  Endpoint::Output s;
  EXPECT_EQ(c.e.Send(Bytes(10, 1), false, &s), 0u);
  EXPECT_EQ(c.From(kOpRw, Bytes(100, 2)).to_host.size(), 100u);
  // The guest closes its side too: both shut, our RST ends it.
  Endpoint::Output r = c.From(kOpShutdown, {}, kShutdownBoth);
  ASSERT_EQ(r.to_peer.size(), 1u);
  EXPECT_EQ(r.to_peer[0].hdr.op, kOpRst);
  EXPECT_TRUE(c.e.closed());
}

TEST(VsockEndpoint, HostOpensAndTheGuestAnswers) {
  Endpoint e(kCidHost, 1u << 30, kGuest, 5000, kTypeStream, {});
  const Packet req = e.Connect();
  EXPECT_EQ(req.hdr.op, kOpRequest);
  EXPECT_EQ(req.hdr.dst_cid, kGuest);
  EXPECT_EQ(req.hdr.dst_port, 5000u);
  EXPECT_EQ(e.state(), Endpoint::State::kRequestSent);
  Endpoint::Output none;
  EXPECT_EQ(e.Send(Bytes(10, 1), false, &none), 0u);  // not before the RESPONSE
  Hdr resp{};
  resp.src_cid = kGuest;
  resp.dst_cid = kCidHost;
  resp.src_port = 5000;
  resp.dst_port = 1u << 30;
  resp.type = kTypeStream;
  resp.op = kOpResponse;
  resp.buf_alloc = 4096;
  Endpoint::Output o;
  e.OnPacket(resp, {}, &o);
  EXPECT_EQ(e.state(), Endpoint::State::kEstablished);
  EXPECT_EQ(e.peer_free(), 4096u);
  // A guest that answers with an RST: refused connection, closed.
  Endpoint e2(kCidHost, (1u << 30) + 1, kGuest, 5001, kTypeStream, {});
  e2.Connect();
  Hdr rst = resp;
  rst.op = kOpRst;
  Endpoint::Output o2;
  e2.OnPacket(rst, {}, &o2);
  EXPECT_TRUE(e2.closed());
  EXPECT_TRUE(o2.host_eof);
  EXPECT_TRUE(o2.to_peer.empty());
}

TEST(VsockEndpoint, ProtocolBreachesAreResetAndCounted) {
  struct Case {
    const char* name;
    uint16_t op;
    uint16_t type;
    Refusal want;
  };
  for (const Case& k : std::vector<Case>{{"REQUEST on an open connection", kOpRequest, kTypeStream, Refusal::kBadOp},
                                         {"RESPONSE on an open connection", kOpResponse, kTypeStream, Refusal::kBadOp},
                                         {"another type", kOpRw, kTypeSeqpacket, Refusal::kBadType}}) {
    SCOPED_TRACE(k.name);
    Conn c;
    Hdr h = GuestHdr(k.op, 0, k.type);
    Endpoint::Output o;
    c.e.OnPacket(h, {}, &o);
    EXPECT_EQ(o.refused, k.want);
    ASSERT_EQ(o.to_peer.size(), 1u);
    EXPECT_EQ(o.to_peer[0].hdr.op, kOpRst);
    EXPECT_TRUE(c.e.closed());
  }
  // Data after the guest said it would send no more.
  Conn c;
  c.From(kOpShutdown, {}, kShutdownSend);
  EXPECT_EQ(c.From(kOpRw, Bytes(10, 1)).refused, Refusal::kBadOp);
  // Anything but RESPONSE before the handshake ends.
  Endpoint e(kCidHost, 7, kGuest, 8, kTypeStream, {});
  e.Connect();
  Hdr rw = GuestHdr(kOpRw, 4);
  Endpoint::Output o;
  e.OnPacket(rw, Bytes(4, 1), &o);
  EXPECT_EQ(o.refused, Refusal::kBadOp);
  EXPECT_TRUE(o.to_host.empty());
}

TEST(VsockEndpoint, CountersWrapLikeTheSpecsU32s) {
  // fwd_cnt and tx_cnt are free-running: credit survives 4 GiB.
  EXPECT_EQ(PeerFree(65536, 0xfffffff0u, 0x10u), 65536u - 0x20u);
  EXPECT_EQ(PeerFree(65536, 0, 65536), 0u);
  EXPECT_EQ(PeerFree(65536, 5, 0), 0u);  // a peer claiming more than was sent gets nothing
}

}  // namespace
}  // namespace vioport::vsock
