// SPDX-License-Identifier: Apache-2.0
// net_frame.cc against frames built byte by byte (net_test_frames.h):
// software segmentation of TSO/USO frames, checksum completion, the
// transmit-header check, the receive filter and the flow hash; plus the MAC
// helpers of net_spec.h. Every checksum is verified by the tests' own RFC 1071
// sum over an explicitly built pseudo-header, not by CsumAdd.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "net_test_frames.h"
#include "vioport/backends/net_frame.h"

namespace vioport::net {
namespace {

using namespace vioport::net::testing;

// --- MAC helpers and sums -----------------------------------------------

TEST(NetSpec, ParseAndPrintMac) {
  Mac m = 0;
  ASSERT_TRUE(ParseMac("52:54:00:12:34:56", &m));
  EXPECT_EQ(m, 0x525400123456ULL);
  ASSERT_TRUE(ParseMac("FE:dc:BA:98:76:0f", &m));
  EXPECT_EQ(m, 0xfedcba98760fULL);
  EXPECT_EQ(MacString(m), "fe:dc:ba:98:76:0f");
  EXPECT_EQ(MacString(0x000000000001ULL), "00:00:00:00:00:01");
  m = 7;
  for (const char* bad : {"", "52:54:00:12:34", "52:54:00:12:34:56:", "52-54-00-12-34-56", "52:54:00:12:34:5g",
                          "52:54:00:12:3456 ", " 52:54:00:12:34:5", "525400123456"}) {
    EXPECT_FALSE(ParseMac(bad, &m)) << bad;
    EXPECT_EQ(m, 7u) << "a refused text must leave the output alone: " << bad;
  }
  uint8_t b[6];
  MacToBytes(0x0123456789abULL, b);
  EXPECT_EQ(b[0], 0x01);
  EXPECT_EQ(b[5], 0xab);
  EXPECT_EQ(MacFromBytes(b), 0x0123456789abULL);
  EXPECT_TRUE(IsMulticast(kBroadcast));
  EXPECT_TRUE(IsMulticast(0x01005e000001ULL));
  EXPECT_FALSE(IsMulticast(0x525400123456ULL));
}

TEST(NetSpec, CsumAddMatchesAHandSum) {
  for (size_t n = 0; n < 80; ++n) {
    const std::vector<uint8_t> v = Pattern(n, static_cast<uint32_t>(n) + 1);
    EXPECT_EQ(CsumFold(CsumAdd(v)), OnesSum(v)) << n;
    // Two chunks, the first even-sized, chained.
    const size_t half = (n / 2) & ~size_t{1};
    const uint32_t chained = CsumAdd(std::span(v).subspan(half), CsumAdd(std::span(v).first(half)));
    EXPECT_EQ(CsumFold(chained), OnesSum(v)) << n;
  }
  // Carries: 64 KiB of 0xff.
  const std::vector<uint8_t> ones(65536, 0xff);
  EXPECT_EQ(CsumFold(CsumAdd(ones)), 0xffff);
}

// --- segmentation -----------------------------------------------------------

RxCaps Caps(bool csum, bool tso4 = false, bool tso6 = false, bool ecn = false, bool uso = false) {
  RxCaps c;
  c.csum = csum;
  c.tso4 = tso4;
  c.tso6 = tso6;
  c.ecn = ecn;
  c.uso = uso;
  return c;
}

// Checks every segment on its own, then that their payloads put together
// are the original's. `partial`: the receiver takes NEEDS_CSUM frames.
void VerifySegments(const Packet& p, const Frame& in, const std::vector<Frame>& out, bool partial) {
  const Offsets o = OffsetsOf(p);
  const size_t hdrs = o.payload;
  const uint32_t mss = in.hdr.gso_size;
  ASSERT_GT(mss, 0u);
  const size_t total = p.payload.size();
  const size_t nseg = (total + mss - 1) / mss;
  ASSERT_EQ(out.size(), nseg);
  const uint8_t proto = Proto(p);
  const size_t field = o.l4 + (p.udp ? 6 : 16);
  std::vector<uint8_t> joined;
  uint32_t seq = p.seq;
  for (size_t i = 0; i < nseg; ++i) {
    SCOPED_TRACE("segment " + std::to_string(i) + " of " + std::to_string(nseg));
    const Frame& s = out[i];
    std::vector<uint8_t> d = s.data;
    ASSERT_GT(d.size(), hdrs);
    const size_t len = d.size() - hdrs;
    EXPECT_LE(len, mss);
    if (i + 1 < nseg) {
      EXPECT_EQ(len, mss);
    }
    EXPECT_EQ(s.hdr.gso_type, kGsoNone);
    EXPECT_EQ(s.hdr.gso_size, 0);
    EXPECT_EQ(s.hdr.num_buffers, 0);
    EXPECT_TRUE(std::equal(d.begin(), d.begin() + o.l3, in.data.begin())) << "Ethernet header (and tag) kept";
    if (!p.ipv6) {
      EXPECT_EQ(d[o.l3], 0x45);
      EXPECT_EQ(Get16(d, o.l3 + 2), hdrs - o.l3 + len) << "IPv4 total length";
      EXPECT_EQ(Get16(d, o.l3 + 4), static_cast<uint16_t>(p.ip_id + i)) << "IPv4 id";
      EXPECT_EQ(Get16(d, o.l3 + 6), 0x4000) << "DF kept, no fragment";
      EXPECT_EQ(d[o.l3 + 8], 64);
      EXPECT_EQ(d[o.l3 + 9], proto);
      EXPECT_TRUE(std::equal(d.begin() + o.l3 + 12, d.begin() + o.l3 + 20, in.data.begin() + o.l3 + 12));
      const std::vector<uint8_t> ip(d.begin() + o.l3, d.begin() + o.l3 + 20);
      EXPECT_EQ(OnesSum(ip), 0xffff) << "IPv4 header checksum";
    } else {
      EXPECT_EQ(Get32(d, o.l3), 0x60012345u);
      EXPECT_EQ(Get16(d, o.l3 + 4), d.size() - o.l4) << "IPv6 payload length";
      EXPECT_TRUE(std::equal(d.begin() + o.l3 + 6, d.begin() + o.l3 + 40, in.data.begin() + o.l3 + 6));
    }
    EXPECT_EQ(Get16(d, o.l4), p.sport);
    EXPECT_EQ(Get16(d, o.l4 + 2), p.dport);
    if (!p.udp) {
      EXPECT_EQ(Get32(d, o.l4 + 4), seq) << "TCP sequence numbers follow the payload";
      EXPECT_EQ(Get32(d, o.l4 + 8), p.ack);
      EXPECT_EQ(d[o.l4 + 12], in.data[o.l4 + 12]);
      uint8_t flags = p.tcp_flags;
      if (i + 1 < nseg) flags &= static_cast<uint8_t>(~(kFin | kPsh));
      if (i > 0) flags &= static_cast<uint8_t>(~kCwr);
      EXPECT_EQ(d[o.l4 + 13], flags) << "FIN/PSH only on the last, CWR only on the first";
      EXPECT_EQ(Get16(d, o.l4 + 14), p.window);
      EXPECT_TRUE(std::equal(d.begin() + o.l4 + 18, d.begin() + hdrs, in.data.begin() + o.l4 + 18))
          << "urgent pointer and options";
    } else {
      EXPECT_EQ(Get16(d, o.l4 + 4), d.size() - o.l4) << "UDP length";
    }
    if (partial) {
      EXPECT_EQ(s.hdr.flags, kHdrFlagNeedsCsum);
      EXPECT_EQ(s.hdr.csum_start, o.l4);
      EXPECT_EQ(s.hdr.csum_offset, p.udp ? 6 : 16);
      EXPECT_EQ(Get16(d, field), PseudoSumField(d, o, p.ipv6, proto)) << "the segment's pseudo-header sum";
      // Complete it as the receiver would: sum from csum_start to the end.
      const std::vector<uint8_t> tail(d.begin() + o.l4, d.end());
      Set16(d, field, static_cast<uint16_t>(~OnesSum(tail)));
    } else {
      EXPECT_EQ(s.hdr.flags, 0);
      EXPECT_NE(Get16(d, field), 0) << "a zero would mean no checksum (UDP)";
    }
    EXPECT_TRUE(L4ChecksumValid(d, o, p.ipv6, proto)) << "layer-4 checksum";
    joined.insert(joined.end(), d.begin() + hdrs, d.end());
    seq += static_cast<uint32_t>(len);
  }
  EXPECT_EQ(joined, p.payload) << "the payloads put together";
}

Packet TcpPacket(bool ipv6, size_t payload, uint32_t seed) {
  Packet p;
  if (ipv6) p.UseIpv6();
  p.tcp_flags = kAck | kPsh | kFin | kCwr;
  p.payload = Pattern(payload, seed);
  return p;
}

TEST(NetSegment, TcpV4ForReceiversWithoutTso) {
  Packet p = TcpPacket(false, 10000, 1);
  const Frame in = GsoFrame(p, kGsoTcpV4 | kGsoEcn, 1448);
  // No GUEST_CSUM: every segment complete; GUEST_CSUM alone: partial; TSO4
  // without ECN for an ECN frame, or only TSO6: segmented too.
  const struct {
    RxCaps caps;
    bool partial;
  } receivers[] = {{Caps(false), false},
                   {Caps(false, true, true, true, true), false},
                   {Caps(true), true},
                   {Caps(true, true, false, false), true},
                   {Caps(true, false, true, true), true},
                   {RxCaps::FromFeatures(feature::Bit(feature::kGuestTso4) | feature::Bit(feature::kGuestEcn), 1500),
                    false}};
  for (const auto& r : receivers) {
    SCOPED_TRACE(std::string("csum=") + (r.caps.csum ? "1" : "0") + " tso4=" + (r.caps.tso4 ? "1" : "0") +
                 " ecn=" + (r.caps.ecn ? "1" : "0"));
    std::vector<Frame> out;
    ASSERT_EQ(AdaptForReceiver(in, r.caps, &out), Drop::kNone);
    VerifySegments(p, in, out, r.partial);
  }
}

TEST(NetSegment, TcpV6ForReceiversWithoutTso) {
  Packet p = TcpPacket(true, 9001, 2);
  p.tcp_options = 32;  // NOP NOP TS, NOP NOP TS, NOP * 8
  const Frame in = GsoFrame(p, kGsoTcpV6, 1220);
  for (const RxCaps& caps : {Caps(false), Caps(true), Caps(true, true, false, true)}) {
    std::vector<Frame> out;
    ASSERT_EQ(AdaptForReceiver(in, caps, &out), Drop::kNone);
    VerifySegments(p, in, out, caps.csum);
  }
}

TEST(NetSegment, VlanTaggedTcpV4) {
  Packet p = TcpPacket(false, 4000, 3);
  p.vlan = 0x2000 | 42;  // PCP 1, VID 42
  const Frame in = GsoFrame(p, kGsoTcpV4, 1000);
  for (const RxCaps& caps : {Caps(false), Caps(true)}) {
    std::vector<Frame> out;
    ASSERT_EQ(AdaptForReceiver(in, caps, &out), Drop::kNone);
    ASSERT_EQ(out.size(), 4u);
    for (const Frame& s : out) EXPECT_EQ(Get16(s.data, 14), 0x2000 | 42) << "the tag goes on every segment";
    VerifySegments(p, in, out, caps.csum);
  }
}

TEST(NetSegment, TcpV6VlanTaggedWithoutOptions) {
  Packet p = TcpPacket(true, 3000, 4);
  p.vlan = 7;
  p.tcp_options = 0;
  const Frame in = GsoFrame(p, kGsoTcpV6, 1440);
  std::vector<Frame> out;
  ASSERT_EQ(AdaptForReceiver(in, Caps(false), &out), Drop::kNone);
  VerifySegments(p, in, out, false);
}

TEST(NetSegment, SequenceAndIdWrapAround) {
  Packet p = TcpPacket(false, 5 * 512 + 1, 5);
  p.seq = 0xffffffffu - 700;
  p.ip_id = 0xfffe;
  const Frame in = GsoFrame(p, kGsoTcpV4, 512);
  std::vector<Frame> out;
  ASSERT_EQ(AdaptForReceiver(in, Caps(false), &out), Drop::kNone);
  ASSERT_EQ(out.size(), 6u);
  EXPECT_EQ(Get16(out[2].data, 18), 0x0000) << "the IPv4 id wraps";
  VerifySegments(p, in, out, false);
}

TEST(NetSegment, ExactMultipleAndSingleSegment) {
  {
    Packet p = TcpPacket(false, 3 * 1448, 6);
    const Frame in = GsoFrame(p, kGsoTcpV4, 1448);
    std::vector<Frame> out;
    ASSERT_EQ(AdaptForReceiver(in, Caps(false), &out), Drop::kNone);
    ASSERT_EQ(out.size(), 3u);
    VerifySegments(p, in, out, false);
  }
  {
    Packet p = TcpPacket(true, 100, 7);
    const Frame in = GsoFrame(p, kGsoTcpV6, 1448);
    std::vector<Frame> out;
    ASSERT_EQ(AdaptForReceiver(in, Caps(false), &out), Drop::kNone);
    ASSERT_EQ(out.size(), 1u);
    VerifySegments(p, in, out, false);
  }
}

TEST(NetSegment, UdpL4ForReceiversWithoutUso) {
  for (bool v6 : {false, true}) {
    SCOPED_TRACE(v6 ? "IPv6" : "IPv4");
    Packet p;
    if (v6) p.UseIpv6();
    p.udp = true;
    p.payload = Pattern(7000, v6 ? 8 : 9);
    const Frame in = GsoFrame(p, kGsoUdpL4, 1400);
    for (const RxCaps& caps : {Caps(false), Caps(true), Caps(true, true, true, true, false)}) {
      std::vector<Frame> out;
      ASSERT_EQ(AdaptForReceiver(in, caps, &out), Drop::kNone);
      VerifySegments(p, in, out, caps.csum);
    }
  }
}

TEST(NetSegment, PassedWholeToReceiversThatTakeIt) {
  const struct {
    bool v6;
    bool udp;
    uint8_t gso;
    RxCaps caps;
  } cases[] = {{false, false, kGsoTcpV4, Caps(true, true)},
               {false, false, kGsoTcpV4 | kGsoEcn, Caps(true, true, false, true)},
               {true, false, kGsoTcpV6, Caps(true, false, true)},
               {true, true, kGsoUdpL4, Caps(true, false, false, false, true)},
               {false, false, kGsoTcpV4, RxCaps::All(1500)}};
  for (const auto& c : cases) {
    Packet p = TcpPacket(c.v6, 5000, 10);
    p.udp = c.udp;
    Frame in = GsoFrame(p, c.gso, 1448);
    in.hdr.num_buffers = 5;
    std::vector<Frame> out;
    ASSERT_EQ(AdaptForReceiver(in, c.caps, &out), Drop::kNone);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].data, in.data);
    EXPECT_EQ(out[0].hdr.gso_type, c.gso);
    EXPECT_EQ(out[0].hdr.gso_size, 1448);
    EXPECT_EQ(out[0].hdr.flags, kHdrFlagNeedsCsum);
    EXPECT_EQ(out[0].hdr.csum_start, in.hdr.csum_start);
    EXPECT_EQ(out[0].hdr.csum_offset, in.hdr.csum_offset);
    EXPECT_EQ(out[0].hdr.num_buffers, 0);
  }
}

TEST(NetSegment, AppendsToWhatIsThere) {
  Packet p = TcpPacket(false, 3000, 11);
  const Frame in = GsoFrame(p, kGsoTcpV4, 1448);
  std::vector<Frame> out(2);
  out[0].data = {1, 2, 3};
  ASSERT_EQ(AdaptForReceiver(in, Caps(false), &out), Drop::kNone);
  ASSERT_EQ(out.size(), 5u);
  EXPECT_EQ(out[0].data, (std::vector<uint8_t>{1, 2, 3}));
  std::vector<Frame> segs(out.begin() + 2, out.end());
  VerifySegments(p, in, segs, false);
}

// A bad GSO frame gives a Drop and appends nothing.
void ExpectDropped(const Frame& in, const std::string& what) {
  for (const RxCaps& caps : {Caps(false), Caps(true)}) {
    std::vector<Frame> out(1);
    EXPECT_NE(AdaptForReceiver(in, caps, &out), Drop::kNone) << what;
    EXPECT_EQ(out.size(), 1u) << what;
  }
}

TEST(NetSegment, BadGsoFramesAreDropped) {
  const Packet tcp4 = TcpPacket(false, 3000, 12);
  const Packet tcp6 = TcpPacket(true, 3000, 13);
  Packet udp4 = tcp4;
  udp4.udp = true;
  Packet icmp4 = tcp4;
  icmp4.ip_proto_override = 1;

  ExpectDropped(GsoFrame(udp4, kGsoTcpV4, 1448), "UDP said to be TCPV4");
  ExpectDropped(GsoFrame(icmp4, kGsoTcpV4, 1448), "ICMP said to be TCPV4");
  ExpectDropped(GsoFrame(tcp4, kGsoTcpV6, 1448), "IPv4 said to be TCPV6");
  ExpectDropped(GsoFrame(tcp6, kGsoTcpV4, 1448), "IPv6 said to be TCPV4");
  ExpectDropped(GsoFrame(tcp4, kGsoUdpL4, 1448), "TCP said to be UDP_L4");
  ExpectDropped(GsoFrame(udp4, kGsoUdp, 1448), "UFO is never segmented");
  ExpectDropped(GsoFrame(tcp4, kGsoTcpV4, 0), "gso_size 0");
  ExpectDropped(GsoFrame(tcp4, 2, 1448), "gso_type 2 on TCP");
  ExpectDropped(GsoFrame(udp4, 0x7a, 1448), "gso_type 0x7a on UDP");
  ExpectDropped(GsoFrame(tcp4, 0x80 | 6, 1448), "gso_type 6 with ECN on TCP");

  Packet empty = tcp4;
  empty.payload.clear();
  ExpectDropped(GsoFrame(empty, kGsoTcpV4, 1448), "no payload");

  const Frame good = GsoFrame(tcp4, kGsoTcpV4, 1448);
  const Offsets o = OffsetsOf(tcp4);
  for (size_t cut : {size_t{0}, size_t{5}, size_t{13}, size_t{14}, size_t{14 + 10}, size_t{14 + 19},
                     size_t{14 + 20 + 10}, size_t{14 + 20 + 19}, o.payload - 1, o.payload}) {
    Frame f = good;
    f.data.resize(cut);
    ExpectDropped(f, "cut to " + std::to_string(cut) + " bytes");
  }
  {
    Frame f = good;
    f.data[o.l4 + 12] = 0xf0;  // a 60-byte TCP header in a frame too short for it
    f.data.resize(o.l4 + 50);
    ExpectDropped(f, "TCP data offset past the end");
  }
  {
    Frame f = good;
    f.data[o.l4 + 12] = 0x40;  // data offset 16 bytes
    ExpectDropped(f, "TCP data offset below 20");
  }
  {
    Frame f = good;
    f.data[o.l3] = 0x44;
    ExpectDropped(f, "IPv4 IHL 4");
  }
  {
    Frame f = good;
    f.data[o.l3] = 0x65;
    ExpectDropped(f, "version 6 in an IPv4 ethertype");
  }
  {
    Frame f = good;
    Set16(f.data, o.l3 + 6, 0x2000);
    ExpectDropped(f, "IPv4 MF");
    Set16(f.data, o.l3 + 6, 0x0010);
    ExpectDropped(f, "IPv4 fragment offset");
  }
  {
    Frame f = good;
    Set16(f.data, 12, kEtherTypeArp);
    ExpectDropped(f, "not IP");
  }
  {
    Frame f = good;
    f.data.resize(16);
    Set16(f.data, 12, kEtherTypeVlan);
    ExpectDropped(f, "a cut VLAN tag");
  }
  {
    Packet p = tcp6;
    p.ip_proto_override = 0;  // hop-by-hop options: extension headers are not parsed
    Frame f = GsoFrame(p, kGsoTcpV6, 1448);
    f.data[OffsetsOf(p).l3 + 6] = 0;
    ExpectDropped(f, "IPv6 extension header");
  }
}

TEST(NetSegment, SegmentCountIsBounded) {
  // gso_size 1: 4096 segments are made, 4097 refused.
  Packet p = TcpPacket(false, 4097, 14);
  ExpectDropped(GsoFrame(p, kGsoTcpV4, 1), "4097 segments");
  p.payload.resize(4096);
  const Frame in = GsoFrame(p, kGsoTcpV4, 1);
  std::vector<Frame> out;
  ASSERT_EQ(AdaptForReceiver(in, Caps(true), &out), Drop::kNone);
  VerifySegments(p, in, out, true);
}

// --- checksum completion ----------------------------------------------------

// A frame whose completed checksum is every byte of the original but the
// field, which holds the independently computed checksum.
void ExpectCompleted(const Packet& p) {
  const Frame in = PartialFrame(p);
  const Offsets o = OffsetsOf(p);
  const size_t field = o.l4 + (p.udp ? 6 : 16);
  Frame f = in;
  ASSERT_TRUE(CompleteChecksum(f));
  EXPECT_EQ(f.hdr.flags, 0);
  EXPECT_EQ(f.hdr.csum_start, 0);
  EXPECT_EQ(f.hdr.csum_offset, 0);
  ASSERT_EQ(f.data.size(), in.data.size());
  EXPECT_EQ(Get16(f.data, field), L4Checksum(in.data, o, p.ipv6, Proto(p)));
  EXPECT_TRUE(L4ChecksumValid(f.data, o, p.ipv6, Proto(p)));
  std::vector<uint8_t> a = f.data, b = in.data;
  a[field] = a[field + 1] = b[field] = b[field + 1] = 0;
  EXPECT_EQ(a, b) << "nothing but the field changes";
}

TEST(NetChecksum, CompletesTcpAndUdp) {
  for (bool v6 : {false, true}) {
    for (bool udp : {false, true}) {
      for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{333}, size_t{1400}}) {
        SCOPED_TRACE(std::string(v6 ? "v6" : "v4") + (udp ? " udp " : " tcp ") + std::to_string(n));
        Packet p;
        if (v6) p.UseIpv6();
        p.udp = udp;
        p.payload = Pattern(n, static_cast<uint32_t>(n + 100 * udp + 1000 * v6));
        ExpectCompleted(p);
        p.vlan = 5;
        ExpectCompleted(p);
      }
    }
  }
}

TEST(NetChecksum, UdpZeroIsSentAsAllOnes) {
  // A payload whose checksum comes out 0: RFC 768 sends it as 0xffff (for
  // IPv6 a zero UDP checksum is invalid, RFC 8200 §8.1), as Linux does.
  for (bool v6 : {false, true}) {
    Packet p;
    if (v6) p.UseIpv6();
    p.udp = true;
    p.payload = Pattern(64, 99);
    p.payload[62] = p.payload[63] = 0;
    const std::vector<uint8_t> zeroed = BuildBytes(p, Csum::kZero);
    const Offsets o = OffsetsOf(p);
    std::vector<uint8_t> all = PseudoHeader(zeroed, o, v6, 17, static_cast<uint32_t>(zeroed.size() - o.l4));
    all.insert(all.end(), zeroed.begin() + o.l4, zeroed.end());
    const uint16_t s = OnesSum(all);
    ASSERT_NE(s, 0xffff);
    const uint16_t w = static_cast<uint16_t>(0xffff - s);  // the sum becomes 0xffff, its complement 0
    p.payload[62] = static_cast<uint8_t>(w >> 8);
    p.payload[63] = static_cast<uint8_t>(w);
    Frame f = PartialFrame(p);
    ASSERT_TRUE(CompleteChecksum(f));
    EXPECT_EQ(Get16(f.data, o.l4 + 6), 0xffff) << (v6 ? "IPv6" : "IPv4");
    EXPECT_TRUE(L4ChecksumValid(f.data, o, v6, 17));
  }
}

TEST(NetChecksum, OutOfRangeIsRefused) {
  Packet p;
  p.udp = true;
  p.payload = Pattern(20, 3);
  const Frame in = PartialFrame(p);
  const uint16_t n = static_cast<uint16_t>(in.data.size());
  const struct {
    uint16_t start, offset;
    bool ok;
  } cases[] = {{static_cast<uint16_t>(n - 2), 0, true},  {static_cast<uint16_t>(n - 1), 0, false},
               {34, static_cast<uint16_t>(n - 36), true}, {34, static_cast<uint16_t>(n - 35), false},
               {n, 0, false},                             {0xffff, 0xffff, false},
               {0, 0xffff, false},                        {0xffff, 0, false}};
  for (const auto& c : cases) {
    Frame f = in;
    f.hdr.csum_start = c.start;
    f.hdr.csum_offset = c.offset;
    EXPECT_EQ(CompleteChecksum(f), c.ok) << c.start << "+" << c.offset << " of " << n;
    if (!c.ok) {
      EXPECT_EQ(f.data, in.data);
      EXPECT_EQ(f.hdr.flags, kHdrFlagNeedsCsum);
    }
  }
  Frame plain = in;
  plain.hdr.flags = 0;
  plain.hdr.csum_start = 0xffff;
  EXPECT_TRUE(CompleteChecksum(plain)) << "nothing to do without NEEDS_CSUM";
  EXPECT_EQ(plain.data, in.data);
}

TEST(NetAdapt, SingleFrames) {
  Packet p;
  p.payload = Pattern(1000, 4);
  const Frame in = PartialFrame(p);
  const Offsets o = OffsetsOf(p);
  {
    std::vector<Frame> out;
    ASSERT_EQ(AdaptForReceiver(in, Caps(false), &out), Drop::kNone);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].hdr.flags, 0);
    EXPECT_TRUE(L4ChecksumValid(out[0].data, o, false, 6)) << "completed for a receiver without GUEST_CSUM";
  }
  {
    Frame odd = in;
    odd.hdr.gso_size = 1448;  // meaningless without GSO: cleared
    odd.hdr.hdr_len = 54;
    odd.hdr.num_buffers = 3;
    std::vector<Frame> out;
    ASSERT_EQ(AdaptForReceiver(odd, Caps(true), &out), Drop::kNone);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].data, in.data) << "left partial for a receiver with GUEST_CSUM";
    EXPECT_EQ(out[0].hdr.flags, kHdrFlagNeedsCsum);
    EXPECT_EQ(out[0].hdr.csum_start, o.l4);
    EXPECT_EQ(out[0].hdr.csum_offset, 16);
    EXPECT_EQ(out[0].hdr.gso_size, 0);
    EXPECT_EQ(out[0].hdr.hdr_len, 0);
    EXPECT_EQ(out[0].hdr.num_buffers, 0);
  }
  {
    Frame valid;
    valid.data = BuildBytes(p, Csum::kFull);
    valid.hdr.flags = kHdrFlagDataValid;
    std::vector<Frame> out;
    ASSERT_EQ(AdaptForReceiver(valid, Caps(false), &out), Drop::kNone);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].hdr.flags, 0) << "no flags for a receiver without GUEST_CSUM";
    EXPECT_EQ(out[0].data, valid.data);
  }
  {
    Frame bad = in;
    bad.hdr.csum_start = static_cast<uint16_t>(in.data.size() - 1);
    std::vector<Frame> out(1);
    EXPECT_EQ(AdaptForReceiver(bad, Caps(false), &out), Drop::kCsumBad);
    EXPECT_EQ(out.size(), 1u);
  }
}

// --- the transmit header ----------------------------------------------------

constexpr uint64_t kAllHost = feature::Bit(feature::kCsum) | feature::Bit(feature::kHostTso4) |
                              feature::Bit(feature::kHostTso6) | feature::Bit(feature::kHostEcn) |
                              feature::Bit(feature::kHostUfo) | feature::Bit(feature::kHostUso);

Drop Check(Hdr h, uint64_t features, size_t size, uint32_t mtu = 1500) {
  const std::vector<uint8_t> frame(size, 0);
  return CheckTxHeader(h, features, mtu, frame);
}

Hdr Gso(uint8_t type, uint16_t size = 1448) {
  Hdr h{};
  h.flags = kHdrFlagNeedsCsum;
  h.gso_type = type;
  h.gso_size = size;
  h.csum_start = 34;
  h.csum_offset = 16;
  return h;
}

TEST(NetTxHeader, EveryDropCause) {
  const Hdr plain{};
  EXPECT_EQ(Check(plain, kAllHost, 13), Drop::kShort);
  EXPECT_EQ(Check(plain, kAllHost, 0), Drop::kShort);
  EXPECT_EQ(Check(plain, 0, 14), Drop::kNone);

  Hdr h = plain;
  h.num_buffers = 1;  // DPDK's virtio-user leaves it set; meaningless on transmit
  {
    const std::vector<uint8_t> frame(100, 0);
    EXPECT_EQ(CheckTxHeader(h, kAllHost, 1500, frame), Drop::kNone);
    EXPECT_EQ(h.num_buffers, 0) << "normalised";
  }

  h = plain;
  h.flags = kHdrFlagDataValid;
  EXPECT_EQ(Check(h, kAllHost, 100), Drop::kHdrFlags);
  h.flags = kHdrFlagNeedsCsum | kHdrFlagDataValid;
  h.csum_start = 34;
  h.csum_offset = 16;
  EXPECT_EQ(Check(h, kAllHost, 100), Drop::kHdrFlags);
  h.flags = kHdrFlagRscInfo;
  EXPECT_EQ(Check(h, kAllHost, 100), Drop::kHdrFlags);

  // NEEDS_CSUM without CSUM, or pointing past the frame.
  h = plain;
  h.flags = kHdrFlagNeedsCsum;
  h.csum_start = 34;
  h.csum_offset = 16;
  EXPECT_EQ(Check(h, kAllHost & ~feature::Bit(feature::kCsum), 100), Drop::kCsumBad);
  EXPECT_EQ(Check(h, kAllHost, 52), Drop::kNone);
  EXPECT_EQ(Check(h, kAllHost, 51), Drop::kCsumBad);
  h.csum_start = 0xffff;
  h.csum_offset = 0xffff;
  EXPECT_EQ(Check(h, kAllHost, 1500), Drop::kCsumBad);

  // Oversize without GSO: MTU plus Ethernet and one tag.
  EXPECT_EQ(Check(plain, kAllHost, 1500 + 18), Drop::kNone);
  EXPECT_EQ(Check(plain, kAllHost, 1500 + 19), Drop::kOversize);
  EXPECT_EQ(Check(plain, kAllHost, 9000 + 18, 9000), Drop::kNone);
  EXPECT_EQ(Check(plain, kAllHost, 9000 + 19, 9000), Drop::kOversize);

  // gso_type.
  h = plain;
  h.gso_type = kGsoEcn;
  EXPECT_EQ(Check(h, kAllHost, 100), Drop::kGsoType) << "ECN alone";
  for (uint8_t t : {uint8_t{2}, uint8_t{6}, uint8_t{7}, uint8_t{0x20}, uint8_t{0x40}, uint8_t{0x7f},
                    static_cast<uint8_t>(0x80 | 2)})
    EXPECT_EQ(Check(Gso(t), kAllHost, 3000), Drop::kGsoType) << int{t};

  // Each GSO type needs its HOST_* feature; ECN needs HOST_ECN.
  const struct {
    uint8_t type;
    unsigned bit;
  } need[] = {{kGsoTcpV4, feature::kHostTso4},
              {kGsoTcpV6, feature::kHostTso6},
              {kGsoUdp, feature::kHostUfo},
              {kGsoUdpL4, feature::kHostUso}};
  for (const auto& n : need) {
    EXPECT_EQ(Check(Gso(n.type), kAllHost, 3000), Drop::kNone) << int{n.type};
    EXPECT_EQ(Check(Gso(n.type), kAllHost & ~feature::Bit(n.bit), 3000), Drop::kGsoNotNegotiated) << int{n.type};
  }
  EXPECT_EQ(Check(Gso(kGsoTcpV4 | kGsoEcn), kAllHost, 3000), Drop::kNone);
  EXPECT_EQ(Check(Gso(kGsoTcpV4 | kGsoEcn), kAllHost & ~feature::Bit(feature::kHostEcn), 3000),
            Drop::kGsoNotNegotiated);

  // GSO without NEEDS_CSUM, or with gso_size 0.
  h = Gso(kGsoTcpV4);
  h.flags = 0;
  EXPECT_EQ(Check(h, kAllHost, 3000), Drop::kGsoBad);
  EXPECT_EQ(Check(Gso(kGsoTcpV4, 0), kAllHost, 3000), Drop::kGsoBad);
  EXPECT_EQ(Check(Gso(kGsoTcpV6, 0), kAllHost, 3000), Drop::kGsoBad);

  // Oversize with GSO: 64 KiB of payload plus headers.
  EXPECT_EQ(Check(Gso(kGsoTcpV4), kAllHost, kMaxGsoFrame), Drop::kNone);
  EXPECT_EQ(Check(Gso(kGsoTcpV4), kAllHost, kMaxGsoFrame + 1), Drop::kOversize);
}

TEST(NetTxHeader, AcceptsWhatLinuxSends) {
  Packet p = TcpPacket(false, 20000, 20);
  Frame tso = GsoFrame(p, kGsoTcpV4, 1448);
  tso.hdr.hdr_len = 0;  // only a hint (§5.1.6.2): not relied on
  EXPECT_EQ(CheckTxHeader(tso.hdr, kAllHost, 1500, tso.data), Drop::kNone);
  tso.hdr.hdr_len = 0xffff;
  EXPECT_EQ(CheckTxHeader(tso.hdr, kAllHost, 1500, tso.data), Drop::kNone);

  Packet q = TcpPacket(true, 20000, 21);
  Frame tso6 = GsoFrame(q, kGsoTcpV6 | kGsoEcn, 1428);
  EXPECT_EQ(CheckTxHeader(tso6.hdr, kAllHost, 1500, tso6.data), Drop::kNone);

  Packet r;
  r.udp = true;
  r.payload = Pattern(1472, 22);
  Frame full = PartialFrame(r);
  EXPECT_EQ(full.data.size(), 1514u);
  EXPECT_EQ(CheckTxHeader(full.hdr, feature::Bit(feature::kCsum), 1500, full.data), Drop::kNone);
}

// --- the receive filter -----------------------------------------------------

constexpr Mac kOwn = 0x525400aabbccULL;
constexpr Mac kOther = 0x525400ddeeffULL;
constexpr Mac kMulti = 0x01005e0000fbULL;
constexpr Mac kMulti2 = 0x333300000001ULL;

// A frame to `dst`, optionally tagged, cut to `size` bytes.
std::vector<uint8_t> EthTo(Mac dst, int vlan = -1, size_t size = 60) {
  std::vector<uint8_t> f(std::max<size_t>(size, 18), 0);
  MacToBytes(dst, f.data());
  MacToBytes(0x525400000099ULL, f.data() + 6);
  if (vlan >= 0) {
    Set16(f, 12, kEtherTypeVlan);
    Set16(f, 14, static_cast<uint16_t>(vlan));
    Set16(f, 16, kEtherTypeIpv4);
  } else {
    Set16(f, 12, kEtherTypeIpv4);
  }
  f.resize(size);
  return f;
}

RxFilter Strict() {
  RxFilter r;
  r.promisc = false;
  r.mac = kOwn;
  return r;
}

TEST(NetRxFilter, FreshFilterIsPromiscuous) {
  const RxFilter r;
  for (Mac m : {kOwn, kOther, kMulti, kBroadcast}) EXPECT_TRUE(r.Accepts(EthTo(m))) << MacString(m);
  EXPECT_FALSE(r.Accepts(EthTo(kOwn, -1, 13))) << "a runt";
  EXPECT_TRUE(r.Accepts(EthTo(kOwn, -1, 14)));
  EXPECT_FALSE(r.Accepts({}));
}

TEST(NetRxFilter, Unicast) {
  RxFilter r = Strict();
  EXPECT_TRUE(r.Accepts(EthTo(kOwn)));
  EXPECT_FALSE(r.Accepts(EthTo(kOther)));
  r.uni_table = {0x020000000001ULL, kOther};
  EXPECT_TRUE(r.Accepts(EthTo(kOther)));
  EXPECT_FALSE(r.Accepts(EthTo(0x020000000002ULL)));
  r.uni_table.clear();
  r.alluni = true;
  EXPECT_TRUE(r.Accepts(EthTo(kOther)));
  r.alluni = false;
  r.alluni_overflow = true;
  EXPECT_TRUE(r.Accepts(EthTo(kOther)));
  EXPECT_FALSE(r.Accepts(EthTo(kMulti))) << "unicast overflow is not multicast";
  // NOUNI refuses every unicast, the device's own MAC and ALLUNI included.
  r.alluni = true;
  r.nouni = true;
  EXPECT_FALSE(r.Accepts(EthTo(kOther)));
  EXPECT_FALSE(r.Accepts(EthTo(kOwn)));
  EXPECT_TRUE(r.Accepts(EthTo(kBroadcast)));
  r.promisc = true;
  EXPECT_TRUE(r.Accepts(EthTo(kOther))) << "PROMISC overrides";
}

TEST(NetRxFilter, MulticastAndBroadcast) {
  RxFilter r = Strict();
  EXPECT_FALSE(r.Accepts(EthTo(kMulti)));
  EXPECT_TRUE(r.Accepts(EthTo(kBroadcast)));
  r.multi_table = {kMulti2};
  EXPECT_TRUE(r.Accepts(EthTo(kMulti2)));
  EXPECT_FALSE(r.Accepts(EthTo(kMulti)));
  r.uni_table = {kMulti};
  EXPECT_FALSE(r.Accepts(EthTo(kMulti))) << "the unicast table does not hold multicast";
  r.allmulti = true;
  EXPECT_TRUE(r.Accepts(EthTo(kMulti)));
  EXPECT_FALSE(r.Accepts(EthTo(kOther))) << "ALLMULTI is not ALLUNI";
  r.allmulti = false;
  r.allmulti_overflow = true;
  EXPECT_TRUE(r.Accepts(EthTo(kMulti)));
  r.allmulti = true;
  r.nomulti = true;
  EXPECT_FALSE(r.Accepts(EthTo(kMulti))) << "NOMULTI beats ALLMULTI";
  EXPECT_FALSE(r.Accepts(EthTo(kMulti2)));
  EXPECT_TRUE(r.Accepts(EthTo(kBroadcast))) << "broadcast is not refused by NOMULTI";
  r.nobcast = true;
  EXPECT_FALSE(r.Accepts(EthTo(kBroadcast)));
  EXPECT_TRUE(r.Accepts(EthTo(kOwn)));
  r.promisc = true;
  EXPECT_TRUE(r.Accepts(EthTo(kBroadcast))) << "PROMISC overrides NOBCAST";
  EXPECT_TRUE(r.Accepts(EthTo(kMulti)));
}

TEST(NetRxFilter, VlanFilter) {
  RxFilter r = Strict();
  EXPECT_TRUE(r.Accepts(EthTo(kOwn, 5))) << "no VLAN filtering: tags pass";
  r.vlan_filtering = true;
  EXPECT_TRUE(r.Accepts(EthTo(kOwn))) << "untagged frames are not VLAN filtered";
  EXPECT_FALSE(r.Accepts(EthTo(kOwn, 5)));
  r.vlans[5] = true;
  EXPECT_TRUE(r.Accepts(EthTo(kOwn, 5)));
  EXPECT_TRUE(r.Accepts(EthTo(kOwn, 0xe005))) << "PCP and DEI are not part of the VID";
  EXPECT_FALSE(r.Accepts(EthTo(kOwn, 6)));
  EXPECT_FALSE(r.Accepts(EthTo(kOther, 5))) << "the VID passes, the MAC filter still applies";
  EXPECT_FALSE(r.Accepts(EthTo(kOwn, 5, 16))) << "a tag cut short";
  r.vlans[4095] = true;
  EXPECT_TRUE(r.Accepts(EthTo(kOwn, 4095)));
  EXPECT_TRUE(r.Accepts(EthTo(kBroadcast, 5)));
  EXPECT_FALSE(r.Accepts(EthTo(kBroadcast, 7)));
  r.promisc = true;
  EXPECT_TRUE(r.Accepts(EthTo(kOther, 7))) << "promiscuous takes VLANs not added too (QEMU's order)";
}

// --- the flow hash ----------------------------------------------------------

std::vector<uint8_t> Reply(const Packet& p) {
  Packet q = p;
  std::swap(q.src, q.dst);
  std::swap(q.sport, q.dport);
  for (int i = 0; i < 16; ++i) std::swap(q.src_ip[i], q.dst_ip[i]);
  return BuildBytes(q, Csum::kFull);
}

TEST(NetFlowHash, AFlowAndItsReplyHashAlike) {
  for (bool v6 : {false, true}) {
    for (bool udp : {false, true}) {
      for (int vlan : {-1, 9}) {
        Packet p;
        if (v6) p.UseIpv6();
        p.udp = udp;
        p.vlan = vlan;
        p.payload = Pattern(50, 1);
        const std::vector<uint8_t> f = BuildBytes(p, Csum::kFull);
        EXPECT_EQ(FlowHash(f), FlowHash(Reply(p))) << v6 << udp << vlan;
        Packet untagged = p;
        untagged.vlan = -1;
        EXPECT_EQ(FlowHash(f), FlowHash(BuildBytes(untagged, Csum::kFull))) << "the tag is not part of the flow";
      }
    }
  }
  // Not IP: the MAC pair.
  std::vector<uint8_t> arp = EthTo(kOther);
  Set16(arp, 12, kEtherTypeArp);
  std::vector<uint8_t> back = arp;
  std::copy(arp.begin(), arp.begin() + 6, back.begin() + 6);
  std::copy(arp.begin() + 6, arp.begin() + 12, back.begin());
  EXPECT_EQ(FlowHash(arp), FlowHash(back));
  EXPECT_EQ(FlowHash(std::vector<uint8_t>(5, 0)), 0u);
}

TEST(NetFlowHash, FlowsSpread) {
  std::set<uint32_t> hashes;
  std::set<uint32_t> low_bits;
  for (uint16_t i = 0; i < 64; ++i) {
    Packet p;
    p.sport = static_cast<uint16_t>(40000 + i);
    const uint32_t h = FlowHash(BuildBytes(p, Csum::kFull));
    hashes.insert(h);
    low_bits.insert(h & 0xff);
  }
  EXPECT_EQ(hashes.size(), 64u);
  EXPECT_GE(low_bits.size(), 32u) << "the device steers on the low byte";
}

}  // namespace
}  // namespace vioport::net
