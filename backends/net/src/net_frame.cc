// SPDX-License-Identifier: Apache-2.0
#include "vioport/backends/net_frame.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"

namespace vioport::net {
namespace {

uint16_t Be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
uint32_t Be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
void PutBe16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
void PutBe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (24 - 8 * i));
}

constexpr uint8_t kIpProtoTcp = 6;
constexpr uint8_t kIpProtoUdp = 17;
constexpr uint8_t kTcpFin = 0x01, kTcpPsh = 0x08, kTcpCwr = 0x80;

// Where the layers of a frame start, as far as segmentation needs them.
struct Layers {
  uint32_t l3 = 0;  // after Ethernet (and one VLAN tag)
  uint16_t ethertype = 0;
  uint32_t l4 = 0;  // 0: not found
  uint8_t proto = 0;
  uint32_t payload = 0;  // after the TCP/UDP header
};

bool ParseL2(std::span<const uint8_t> f, Layers* l) {
  if (f.size() < kEthHeader) return false;
  l->ethertype = Be16(&f[12]);
  l->l3 = kEthHeader;
  if (l->ethertype == kEtherTypeVlan) {
    if (f.size() < kEthHeader + kVlanTagLen) return false;
    l->ethertype = Be16(&f[16]);
    l->l3 += kVlanTagLen;
  }
  return true;
}

// IPv4 (no fragments) or IPv6 (no extension headers) carrying TCP or UDP.
bool ParseL3L4(std::span<const uint8_t> f, Layers* l) {
  if (!ParseL2(f, l)) return false;
  const uint32_t n = static_cast<uint32_t>(f.size());
  if (l->ethertype == kEtherTypeIpv4) {
    if (n < l->l3 + 20 || (f[l->l3] >> 4) != 4) return false;
    const uint32_t ihl = (f[l->l3] & 0xf) * 4u;
    if (ihl < 20 || n < l->l3 + ihl) return false;
    if (Be16(&f[l->l3 + 6]) & 0x3fff) return false;  // MF or a fragment offset
    l->proto = f[l->l3 + 9];
    l->l4 = l->l3 + ihl;
  } else if (l->ethertype == kEtherTypeIpv6) {
    if (n < l->l3 + 40 || (f[l->l3] >> 4) != 6) return false;
    l->proto = f[l->l3 + 6];
    l->l4 = l->l3 + 40;
  } else {
    return false;
  }
  if (l->proto == kIpProtoTcp) {
    if (n < l->l4 + 20) return false;
    const uint32_t doff = (f[l->l4 + 12] >> 4) * 4u;
    if (doff < 20 || n < l->l4 + doff) return false;
    l->payload = l->l4 + doff;
  } else if (l->proto == kIpProtoUdp) {
    if (n < l->l4 + 8) return false;
    l->payload = l->l4 + 8;
  } else {
    return false;
  }
  return true;
}

// The pseudo-header sum (RFC 793/768/8200) for a layer-4 length.
uint32_t PseudoSum(std::span<const uint8_t> f, const Layers& l, uint32_t l4_len) {
  uint32_t sum = 0;
  if (l.ethertype == kEtherTypeIpv4) {
    sum = CsumAdd(f.subspan(l.l3 + 12, 8));
  } else {
    sum = CsumAdd(f.subspan(l.l3 + 8, 32));
  }
  sum += l.proto;
  sum += l4_len & 0xffff;
  sum += l4_len >> 16;
  return sum;
}

void SetIpv4Checksum(uint8_t* ip) {
  const uint32_t ihl = (ip[0] & 0xf) * 4u;
  ip[10] = ip[11] = 0;
  PutBe16(ip + 10, static_cast<uint16_t>(~CsumFold(CsumAdd({ip, ihl}))));
}

}  // namespace

const char* DropName(Drop d) {
  switch (d) {
    case Drop::kNone: return "none";
    case Drop::kShort: return "short";
    case Drop::kOversize: return "oversize";
    case Drop::kGsoType: return "gso_type";
    case Drop::kGsoNotNegotiated: return "gso_not_negotiated";
    case Drop::kGsoBad: return "gso_bad";
    case Drop::kCsumBad: return "csum_bad";
    case Drop::kHdrFlags: return "hdr_flags";
    case Drop::kSpoofed: return "spoofed";
    case Drop::kRxFull: return "rx_full";
    case Drop::kRxNoBuffer: return "rx_no_buffer";
    case Drop::kFiltered: return "filtered";
    case Drop::kSegment: return "segment";
    case Drop::kCount: break;
  }
  return "?";
}

uint32_t CsumAdd(std::span<const uint8_t> bytes, uint32_t sum) {
  uint64_t s = sum;
  size_t i = 0;
  for (; i + 1 < bytes.size(); i += 2) s += (uint32_t{bytes[i]} << 8) | bytes[i + 1];
  if (i < bytes.size()) s += uint32_t{bytes[i]} << 8;
  while (s >> 32) s = (s & 0xffffffff) + (s >> 32);
  return static_cast<uint32_t>(s);
}

uint16_t CsumFold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}

Drop CheckTxHeader(Hdr& hdr, uint64_t features, uint32_t mtu, std::span<const uint8_t> frame) {
  using feature::Has;
  if (frame.size() < kEthHeader) return Drop::kShort;
  // §5.1.6.2 has the driver set num_buffers to 0 on transmit; DPDK's
  // virtio-user leaves whatever was there. The field means nothing on
  // transmit, so it is ignored, as Linux's tun and QEMU ignore it.
  hdr.num_buffers = 0;
  if (hdr.flags & ~kHdrFlagNeedsCsum) return Drop::kHdrFlags;
  if (hdr.flags & kHdrFlagNeedsCsum) {
    if (!Has(features, feature::kCsum)) return Drop::kCsumBad;
    if (uint32_t{hdr.csum_start} + hdr.csum_offset + 2 > frame.size()) return Drop::kCsumBad;
  }
  const uint8_t gso = hdr.gso_type & ~kGsoEcn;
  if (gso == kGsoNone) {
    if (hdr.gso_type & kGsoEcn) return Drop::kGsoType;
    if (frame.size() > mtu + kEthHeader + kVlanTagLen) return Drop::kOversize;
    return Drop::kNone;
  }
  unsigned need;
  switch (gso) {
    case kGsoTcpV4: need = feature::kHostTso4; break;
    case kGsoTcpV6: need = feature::kHostTso6; break;
    case kGsoUdp: need = feature::kHostUfo; break;
    case kGsoUdpL4: need = feature::kHostUso; break;
    default: return Drop::kGsoType;
  }
  if (!Has(features, need)) return Drop::kGsoNotNegotiated;
  if ((hdr.gso_type & kGsoEcn) && !Has(features, feature::kHostEcn)) return Drop::kGsoNotNegotiated;
  if (!(hdr.flags & kHdrFlagNeedsCsum) || hdr.gso_size == 0) return Drop::kGsoBad;
  if (frame.size() > kMaxGsoFrame) return Drop::kOversize;
  return Drop::kNone;
}

RxCaps RxCaps::FromFeatures(uint64_t f, uint32_t mtu) {
  using feature::Has;
  RxCaps c;
  c.csum = Has(f, feature::kGuestCsum);
  c.tso4 = c.csum && Has(f, feature::kGuestTso4);
  c.tso6 = c.csum && Has(f, feature::kGuestTso6);
  c.ecn = Has(f, feature::kGuestEcn);
  c.uso = c.csum && Has(f, feature::kGuestUso4) && Has(f, feature::kGuestUso6);
  c.mtu = mtu;
  return c;
}

bool CompleteChecksum(Frame& f) {
  if (!(f.hdr.flags & kHdrFlagNeedsCsum)) return true;
  const uint32_t start = f.hdr.csum_start, off = f.hdr.csum_offset;
  if (start + off + 2 > f.data.size()) return false;
  // The field holds the pseudo-header sum (§5.1.6.2): summing from
  // csum_start to the end and folding completes it.
  uint16_t c = static_cast<uint16_t>(~CsumFold(CsumAdd({f.data.data() + start, f.data.size() - start})));
  // A computed 0 goes out as 0xffff (the same in one's complement): for UDP
  // 0 would mean "no checksum", and over IPv6 the packet would be dropped
  // (RFC 768, RFC 8200 §8.1; Linux's skb_checksum_help does the same).
  if (c == 0) c = 0xffff;
  PutBe16(&f.data[start + off], c);
  f.hdr.flags = 0;
  f.hdr.csum_start = 0;
  f.hdr.csum_offset = 0;
  return true;
}

namespace {

// Cuts a TCP or UDP (USO) GSO frame into segments of gso_size payload.
Drop Segment(const Frame& in, bool partial, std::vector<Frame>* out) {
  Layers l;
  std::span<const uint8_t> f(in.data);
  if (!ParseL3L4(f, &l)) return Drop::kSegment;
  const uint8_t gso = in.hdr.gso_type & ~kGsoEcn;
  const bool tcp = l.proto == kIpProtoTcp;
  // Only what the frame is: TCPV4, TCPV6 or UDP_L4 (an unknown gso_type
  // is not cut as whatever the frame happens to carry; UFO is not cut).
  const bool known = (gso == kGsoTcpV4 && tcp && l.ethertype == kEtherTypeIpv4) ||
                     (gso == kGsoTcpV6 && tcp && l.ethertype == kEtherTypeIpv6) || (gso == kGsoUdpL4 && !tcp);
  if (!known) return Drop::kSegment;
  const uint32_t mss = in.hdr.gso_size;
  const uint32_t hdrs = l.payload;
  const uint32_t total = static_cast<uint32_t>(f.size()) - hdrs;
  if (mss == 0 || total == 0) return Drop::kSegment;
  const uint32_t nseg = (total + mss - 1) / mss;
  if (nseg > 4096) return Drop::kSegment;  // a tiny gso_size would multiply the frame
  const uint32_t seq0 = tcp ? Be32(&f[l.l4 + 4]) : 0;
  const uint16_t id0 = l.ethertype == kEtherTypeIpv4 ? Be16(&f[l.l3 + 4]) : 0;
  const uint8_t flags0 = tcp ? f[l.l4 + 13] : 0;
  for (uint32_t i = 0; i < nseg; ++i) {
    const uint32_t off = i * mss;
    const uint32_t len = std::min(mss, total - off);
    Frame s;
    s.data.resize(hdrs + len);
    std::memcpy(s.data.data(), f.data(), hdrs);
    std::memcpy(s.data.data() + hdrs, f.data() + hdrs + off, len);
    uint8_t* d = s.data.data();
    const uint32_t l4_len = hdrs - l.l4 + len;
    if (l.ethertype == kEtherTypeIpv4) {
      PutBe16(d + l.l3 + 2, static_cast<uint16_t>(hdrs - l.l3 + len));
      PutBe16(d + l.l3 + 4, static_cast<uint16_t>(id0 + i));
      SetIpv4Checksum(d + l.l3);
    } else {
      PutBe16(d + l.l3 + 4, static_cast<uint16_t>(l4_len));
    }
    uint32_t csum_off;
    if (tcp) {
      PutBe32(d + l.l4 + 4, seq0 + off);
      uint8_t fl = flags0;
      if (i + 1 < nseg) fl &= static_cast<uint8_t>(~(kTcpFin | kTcpPsh));
      if (i > 0) fl &= static_cast<uint8_t>(~kTcpCwr);
      d[l.l4 + 13] = fl;
      csum_off = 16;
    } else {
      PutBe16(d + l.l4 + 4, static_cast<uint16_t>(l4_len));
      csum_off = 6;
    }
    // The pseudo-header sum, then either left partial or completed.
    d[l.l4 + csum_off] = d[l.l4 + csum_off + 1] = 0;
    const uint32_t pseudo = PseudoSum({d, s.data.size()}, l, l4_len);
    if (partial) {
      PutBe16(d + l.l4 + csum_off, CsumFold(pseudo));
      s.hdr.flags = kHdrFlagNeedsCsum;
      s.hdr.csum_start = static_cast<uint16_t>(l.l4);
      s.hdr.csum_offset = static_cast<uint16_t>(csum_off);
    } else {
      uint16_t c = static_cast<uint16_t>(~CsumFold(CsumAdd({d + l.l4, l4_len}, pseudo)));
      if (!tcp && c == 0) c = 0xffff;  // RFC 768: 0 means "no checksum"
      PutBe16(d + l.l4 + csum_off, c);
    }
    out->push_back(std::move(s));
  }
  return Drop::kNone;
}

}  // namespace

Drop AdaptForReceiver(const Frame& in, const RxCaps& caps, std::vector<Frame>* out) {
  const uint8_t gso = in.hdr.gso_type & ~kGsoEcn;
  if (gso != kGsoNone) {
    const bool ecn_ok = !(in.hdr.gso_type & kGsoEcn) || caps.ecn;
    const bool takes = caps.csum && ecn_ok &&
                       ((gso == kGsoTcpV4 && caps.tso4) || (gso == kGsoTcpV6 && caps.tso6) ||
                        (gso == kGsoUdpL4 && caps.uso));
    if (takes) {
      out->push_back(in);
      out->back().hdr.num_buffers = 0;
      return Drop::kNone;
    }
    return Segment(in, caps.csum, out);
  }
  out->push_back(in);
  Frame& f = out->back();
  f.hdr.num_buffers = 0;
  f.hdr.hdr_len = 0;
  f.hdr.gso_size = 0;
  if ((f.hdr.flags & kHdrFlagNeedsCsum) && !caps.csum) {
    if (!CompleteChecksum(f)) {
      out->pop_back();
      return Drop::kCsumBad;
    }
  }
  if (!caps.csum) f.hdr.flags = 0;
  return Drop::kNone;
}

bool RxFilter::Accepts(std::span<const uint8_t> frame) const {
  if (frame.size() < kEthHeader) return false;
  // QEMU's order (receive_filter): promiscuous takes everything, tagged
  // frames of VLANs the driver did not add included.
  if (promisc) return true;
  if (vlan_filtering && Be16(&frame[12]) == kEtherTypeVlan) {
    if (frame.size() < kEthHeader + kVlanTagLen) return false;
    if (!vlans[Be16(&frame[14]) & 0xfff]) return false;
  }
  const Mac dst = MacFromBytes(frame.data());
  if (dst == kBroadcast) return !nobcast;
  if (IsMulticast(dst)) {
    if (nomulti) return false;
    if (allmulti || allmulti_overflow) return true;
    return std::find(multi_table.begin(), multi_table.end(), dst) != multi_table.end();
  }
  if (nouni) return false;
  if (alluni || alluni_overflow || dst == mac) return true;
  return std::find(uni_table.begin(), uni_table.end(), dst) != uni_table.end();
}

uint32_t FlowHash(std::span<const uint8_t> f) {
  Layers l;
  if (!ParseL2(f, &l)) return 0;
  uint32_t a = 0, b = 0, ports = 0;
  const uint32_t n = static_cast<uint32_t>(f.size());
  uint32_t l4 = 0;
  uint8_t proto = 0;
  if (l.ethertype == kEtherTypeIpv4 && n >= l.l3 + 20) {
    a = Be32(&f[l.l3 + 12]);
    b = Be32(&f[l.l3 + 16]);
    proto = f[l.l3 + 9];
    l4 = l.l3 + (f[l.l3] & 0xf) * 4u;
  } else if (l.ethertype == kEtherTypeIpv6 && n >= l.l3 + 40) {
    for (int i = 0; i < 4; ++i) {
      a ^= Be32(&f[l.l3 + 8 + 4 * i]);
      b ^= Be32(&f[l.l3 + 24 + 4 * i]);
    }
    proto = f[l.l3 + 6];
    l4 = l.l3 + 40;
  } else {
    // Not IP: the MAC pair.
    a = static_cast<uint32_t>(MacFromBytes(f.data()));
    b = static_cast<uint32_t>(MacFromBytes(f.data() + 6));
  }
  if ((proto == kIpProtoTcp || proto == kIpProtoUdp) && l4 >= l.l3 && n >= l4 + 4)
    ports = uint32_t{Be16(&f[l4])} + Be16(&f[l4 + 2]);
  // Symmetric: a flow and its replies hash alike.
  uint32_t h = (a + b) * 0x9e3779b1u ^ (a ^ b) ^ (ports * 0x85ebca6bu) ^ proto;
  h ^= h >> 16;
  h *= 0x7feb352d;
  h ^= h >> 15;
  return h;
}

}  // namespace vioport::net
