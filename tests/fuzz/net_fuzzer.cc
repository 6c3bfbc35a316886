// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for virtio-net's pure byte-level parts (backends/net):
// the transmit-header check and the adaption to a receiver (software
// segmentation, checksum completion), the control-queue command handler,
// the receive filter, the flow hash and the MAC text helpers.
//
// Input: byte 0 % 4 picks a mode; all integers little-endian.
//   0  TX path. [1..8] negotiated features, [9..10] MTU, [11] receiver caps
//      (bit 0 GUEST_CSUM, 1 TSO4, 2 TSO6, 3 ECN, 4 USO; bit 7: adapt even a
//      frame CheckTxHeader refused, as a hostile uplink could hand it over),
//      [12..23] the virtio_net_hdr, then the frame.
//   1  Control queue. [1..8] features, [9..10] max_virtqueue_pairs (taken
//      into 1..0x8000), [11] bit 0 mac-locked, bit 1 announce pending; then
//      commands, each a le16 length and that many bytes (cut at the end).
//   2  Receive filter and flow hash. [1] PROMISC, ALLMULTI, ALLUNI, NOMULTI,
//      NOUNI, NOBCAST, vlan filtering, unicast overflow (bits 0..7); [2]
//      bit 0 multicast overflow; [3..8] the MAC; [9] unicast entries (% 8),
//      [10] multicast entries (% 8), 6 bytes each; then a count of VIDs
//      (% 16), 2 bytes each; then the frame.
//   3  CompleteChecksum: [1..12] the header, then the frame; the frame's
//      bytes are also given to ParseMac as text.
//
// Checked besides ASan/UBSan: an accepted header is one the spec allows; a
// dropped frame appends nothing; no output frame is larger than the input;
// a frame passed on unsegmented differs at most in its checksum field,
// which is then valid; segments are at most gso_size of payload each (all
// but the last exactly), at most 4096, their payloads put together are the
// original's, IPv4 header checksums and layer-4 checksums are valid
// (computed here independently), partial ones carry the pseudo-header sum;
// a refused control command changes nothing, an accepted one had its
// feature and did what it says; pairs stay within 1..max_pairs and the
// guest offloads within what was negotiated; the filter agrees with a
// restatement of §5.1.6.5.1; the flow hash is symmetric for well-formed
// frames; MAC text round-trips.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vioport/backends/net_device.h"
#include "vioport/backends/net_frame.h"

namespace {

using namespace vioport::net;
using vioport::HandleNetCtrl;
using vioport::kMacTableEntries;
using vioport::NetCtrlState;
namespace feature = vioport::net::feature;

void Check(bool ok) {
  if (!ok) std::abort();
}

struct Reader {
  const uint8_t* p;
  size_t n;
  uint64_t Le(size_t bytes) {
    uint64_t v = 0;
    for (size_t i = 0; i < bytes; ++i) {
      if (n > 0) {
        v |= uint64_t{*p} << (8 * i);
        ++p;
        --n;
      }
    }
    return v;
  }
  std::span<const uint8_t> Take(size_t k) {
    k = std::min(k, n);
    std::span<const uint8_t> s(p, k);
    p += k;
    n -= k;
    return s;
  }
};

uint16_t Be16(const std::vector<uint8_t>& v, size_t at) { return static_cast<uint16_t>((v[at] << 8) | v[at + 1]); }

// RFC 1071 over [from, to) of `v`, not folded (64 bits cannot overflow here).
uint64_t Sum(const std::vector<uint8_t>& v, size_t from, size_t to) {
  uint64_t s = 0;
  for (size_t i = from; i < to; i += 2) s += (uint32_t{v[i]} << 8) | (i + 1 < to ? v[i + 1] : 0);
  return s;
}
uint16_t Fold(uint64_t s) {
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return static_cast<uint16_t>(s);
}

// The layers as the segmentation must have found them.
struct Parsed {
  bool ok = false;
  bool v6 = false;
  uint8_t proto = 0;
  size_t l3 = 0, l4 = 0, payload = 0;
};

Parsed Parse(const std::vector<uint8_t>& f) {
  Parsed r;
  const size_t n = f.size();
  if (n < 14) return r;
  uint16_t et = Be16(f, 12);
  r.l3 = 14;
  if (et == 0x8100) {
    if (n < 18) return r;
    et = Be16(f, 16);
    r.l3 = 18;
  }
  if (et == 0x0800) {
    if (n < r.l3 + 20 || f[r.l3] >> 4 != 4) return r;
    const size_t ihl = (f[r.l3] & 15) * 4u;
    if (ihl < 20 || n < r.l3 + ihl || (Be16(f, r.l3 + 6) & 0x3fff)) return r;
    r.proto = f[r.l3 + 9];
    r.l4 = r.l3 + ihl;
  } else if (et == 0x86dd) {
    if (n < r.l3 + 40 || f[r.l3] >> 4 != 6) return r;
    r.v6 = true;
    r.proto = f[r.l3 + 6];
    r.l4 = r.l3 + 40;
  } else {
    return r;
  }
  if (r.proto == 6) {
    if (n < r.l4 + 20) return r;
    const size_t doff = (f[r.l4 + 12] >> 4) * 4u;
    if (doff < 20 || n < r.l4 + doff) return r;
    r.payload = r.l4 + doff;
  } else if (r.proto == 17) {
    if (n < r.l4 + 8) return r;
    r.payload = r.l4 + 8;
  } else {
    return r;
  }
  r.ok = true;
  return r;
}

// The pseudo-header sum of a segment (the length as 32 bits, which for
// IPv4 lengths below 64 KiB is the 16-bit field).
uint64_t Pseudo(const std::vector<uint8_t>& f, const Parsed& p) {
  const size_t len = f.size() - p.l4;
  uint64_t s = p.v6 ? Sum(f, p.l3 + 8, p.l3 + 40) : Sum(f, p.l3 + 12, p.l3 + 20);
  return s + p.proto + (len >> 16) + (len & 0xffff);
}

bool Takes(const Hdr& h, const RxCaps& c) {
  const uint8_t gso = h.gso_type & ~kGsoEcn;
  const bool ecn_ok = !(h.gso_type & kGsoEcn) || c.ecn;
  return c.csum && ecn_ok &&
         ((gso == kGsoTcpV4 && c.tso4) || (gso == kGsoTcpV6 && c.tso6) || (gso == kGsoUdpL4 && c.uso));
}

void CheckSegments(const Frame& in, const RxCaps& caps, const std::vector<Frame>& out) {
  const Parsed p = Parse(in.data);
  Check(p.ok);
  const uint8_t gso = in.hdr.gso_type & ~kGsoEcn;
  Check(p.proto == (gso == kGsoUdpL4 ? 17 : 6));
  Check(gso != kGsoTcpV4 || !p.v6);
  Check(gso != kGsoTcpV6 || p.v6);
  const size_t mss = in.hdr.gso_size, total = in.data.size() - p.payload;
  Check(mss > 0 && total > 0);
  const size_t nseg = (total + mss - 1) / mss;
  Check(out.size() == nseg && nseg <= 4096);
  const bool tcp = p.proto == 6;
  const uint8_t flags0 = tcp ? in.data[p.l4 + 13] : 0;
  size_t off = 0;
  for (size_t i = 0; i < nseg; ++i) {
    const Frame& s = out[i];
    std::vector<uint8_t> d = s.data;
    Check(d.size() > p.payload && d.size() <= in.data.size());
    const size_t len = d.size() - p.payload;
    Check(len <= mss && (i + 1 == nseg || len == mss));
    Check(std::equal(d.begin() + p.payload, d.end(), in.data.begin() + p.payload + off));
    Check(std::equal(d.begin(), d.begin() + p.l3, in.data.begin()));  // Ethernet and tag
    Check(s.hdr.gso_type == kGsoNone && s.hdr.gso_size == 0 && s.hdr.num_buffers == 0);
    if (!p.v6) {
      Check(Fold(Sum(d, p.l3, p.l4)) == 0xffff);  // the IPv4 header checksum
      Check(Be16(d, p.l3 + 4) == static_cast<uint16_t>(Be16(in.data, p.l3 + 4) + i));  // ids count up
      if (d.size() - p.l3 <= 0xffff) Check(Be16(d, p.l3 + 2) == d.size() - p.l3);
    } else if (d.size() - p.l4 <= 0xffff) {
      Check(Be16(d, p.l3 + 4) == d.size() - p.l4);
    }
    if (tcp) {
      const uint32_t seq = (uint32_t{d[p.l4 + 4]} << 24) | (uint32_t{d[p.l4 + 5]} << 16) |
                           (uint32_t{d[p.l4 + 6]} << 8) | d[p.l4 + 7];
      const uint32_t seq0 = (uint32_t{in.data[p.l4 + 4]} << 24) | (uint32_t{in.data[p.l4 + 5]} << 16) |
                            (uint32_t{in.data[p.l4 + 6]} << 8) | in.data[p.l4 + 7];
      Check(seq == seq0 + static_cast<uint32_t>(off));
      uint8_t fl = flags0;
      if (i + 1 < nseg) fl &= static_cast<uint8_t>(~0x09);  // FIN, PSH
      if (i > 0) fl &= static_cast<uint8_t>(~0x80);         // CWR
      Check(d[p.l4 + 13] == fl);
    }
    const size_t field = p.l4 + (tcp ? 16 : 6);
    // The layer-4 checksum: IPv4 cannot say more than 64 KiB.
    const bool checkable = p.v6 || d.size() - p.l4 <= 0xffff;
    if (caps.csum) {
      Check(s.hdr.flags == kHdrFlagNeedsCsum && s.hdr.csum_start == p.l4 && s.hdr.csum_offset == field - p.l4);
      if (checkable) {
        Check(Be16(d, field) == Fold(Pseudo(d, p)));
        const uint16_t c = static_cast<uint16_t>(~Fold(Sum(d, p.l4, d.size())));
        d[field] = static_cast<uint8_t>(c >> 8);
        d[field + 1] = static_cast<uint8_t>(c);
      }
    } else {
      Check(s.hdr.flags == 0);
      if (!tcp) Check(Be16(d, field) != 0);
    }
    if (checkable) {
      const uint16_t stored = Be16(d, field);
      d[field] = d[field + 1] = 0;
      Check(Fold(Pseudo(d, p) + Sum(d, p.l4, d.size()) + stored) == 0xffff);
    }
    off += len;
  }
  Check(off == total);
}

void TxPath(Reader r) {
  const uint64_t features = r.Le(8);
  const uint32_t mtu = static_cast<uint32_t>(r.Le(2));
  const uint8_t cb = static_cast<uint8_t>(r.Le(1));
  Hdr hdr;
  const std::span<const uint8_t> hb = r.Take(sizeof hdr);
  if (hb.size() < sizeof hdr) return;
  std::memcpy(&hdr, hb.data(), sizeof hdr);
  const std::span<const uint8_t> frame = r.Take(r.n);
  RxCaps caps;
  caps.csum = cb & 1;
  caps.tso4 = cb & 2;
  caps.tso6 = cb & 4;
  caps.ecn = cb & 8;
  caps.uso = cb & 16;

  Hdr h = hdr;
  const Drop why = CheckTxHeader(h, features, mtu, frame);
  Check(why < Drop::kCount);
  if (why == Drop::kNone) {
    // What the spec allows (§5.1.6.2).
    Check(frame.size() >= kEthHeader && h.num_buffers == 0 && !(h.flags & ~kHdrFlagNeedsCsum));
    if (h.flags & kHdrFlagNeedsCsum)
      Check(feature::Has(features, feature::kCsum) && size_t{h.csum_start} + h.csum_offset + 2 <= frame.size());
    const uint8_t gso = h.gso_type & ~kGsoEcn;
    if (gso == kGsoNone) {
      Check(h.gso_type == kGsoNone && frame.size() <= size_t{mtu} + kEthHeader + kVlanTagLen);
    } else {
      const unsigned need = gso == kGsoTcpV4 ? feature::kHostTso4
                            : gso == kGsoTcpV6 ? feature::kHostTso6
                            : gso == kGsoUdp   ? feature::kHostUfo
                                               : feature::kHostUso;
      Check(gso == kGsoTcpV4 || gso == kGsoTcpV6 || gso == kGsoUdp || gso == kGsoUdpL4);
      Check(feature::Has(features, need));
      Check(!(h.gso_type & kGsoEcn) || feature::Has(features, feature::kHostEcn));
      Check((h.flags & kHdrFlagNeedsCsum) && h.gso_size > 0 && frame.size() <= kMaxGsoFrame);
    }
  } else if (!(cb & 0x80)) {
    return;
  }
  (void)FlowHash(frame);

  Frame in;
  in.hdr = h;
  in.data.assign(frame.begin(), frame.end());
  std::vector<Frame> out;
  const Drop d = AdaptForReceiver(in, caps, &out);
  Check(d < Drop::kCount);
  if (d != Drop::kNone) {
    Check(out.empty());
    return;
  }
  Check(!out.empty());
  for (const Frame& f : out) {
    Check(f.data.size() <= in.data.size());
    Check(f.hdr.num_buffers == 0);
    if (!caps.csum) Check(f.hdr.flags == 0);
  }
  const uint8_t gso = in.hdr.gso_type & ~kGsoEcn;
  if (gso == kGsoNone) {
    Check(out.size() == 1);
    const Frame& f = out[0];
    Check(f.data.size() == in.data.size() && f.hdr.gso_size == 0);
    const bool partial = in.hdr.flags & kHdrFlagNeedsCsum;
    const size_t field = size_t{in.hdr.csum_start} + in.hdr.csum_offset;
    if (partial && !caps.csum) {
      // Completed: only the field changed, and the sum over it is valid.
      Check(field + 2 <= in.data.size());
      for (size_t i = 0; i < in.data.size(); ++i)
        if (i != field && i != field + 1) Check(f.data[i] == in.data[i]);
      const uint16_t old = Be16(in.data, field);
      Check(Be16(f.data, field) != 0);
      // (A field at an odd offset from csum_start is no checksum any
      // protocol has; its sum is not checked.)
      if (in.hdr.csum_offset % 2 == 0)
        Check(Fold(Sum(f.data, in.hdr.csum_start, f.data.size()) + old) == 0xffff);
    } else {
      Check(f.data == in.data);
      if (caps.csum)
        Check(f.hdr.flags == in.hdr.flags && f.hdr.csum_start == in.hdr.csum_start &&
              f.hdr.csum_offset == in.hdr.csum_offset);
    }
  } else if (Takes(in.hdr, caps)) {
    Check(out.size() == 1 && out[0].data == in.data && out[0].hdr.gso_type == in.hdr.gso_type &&
          out[0].hdr.gso_size == in.hdr.gso_size);
  } else {
    CheckSegments(in, caps, out);
  }
}

bool SameState(const NetCtrlState& a, const NetCtrlState& b) {
  const RxFilter &x = a.filter, &y = b.filter;
  return a.features == b.features && a.max_pairs == b.max_pairs && a.pairs == b.pairs &&
         a.guest_offloads == b.guest_offloads && a.announce == b.announce && a.mac_locked == b.mac_locked &&
         x.promisc == y.promisc && x.allmulti == y.allmulti && x.alluni == y.alluni && x.nomulti == y.nomulti &&
         x.nouni == y.nouni && x.nobcast == y.nobcast && x.mac == y.mac && x.uni_table == y.uni_table &&
         x.multi_table == y.multi_table && x.alluni_overflow == y.alluni_overflow &&
         x.allmulti_overflow == y.allmulti_overflow && x.vlan_filtering == y.vlan_filtering && x.vlans == y.vlans;
}

uint32_t Le32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}

// An accepted MAC_TABLE_SET: the tables are exactly what the command says.
void CheckTables(const NetCtrlState& s, std::span<const uint8_t> d) {
  const std::vector<Mac>* tables[2] = {&s.filter.uni_table, &s.filter.multi_table};
  const bool overflow[2] = {s.filter.alluni_overflow, s.filter.allmulti_overflow};
  for (int t = 0; t < 2; ++t) {
    Check(d.size() >= 4);
    const uint32_t n = Le32(d.data());
    d = d.subspan(4);
    Check(d.size() >= size_t{n} * 6);
    Check(overflow[t] == (n > kMacTableEntries));
    if (overflow[t]) {
      Check(tables[t]->empty());
    } else {
      Check(tables[t]->size() == n);
      for (uint32_t i = 0; i < n; ++i) Check((*tables[t])[i] == MacFromBytes(d.data() + 6 * i));
    }
    d = d.subspan(size_t{n} * 6);
  }
  Check(d.empty());
}

void Ctrl(Reader r) {
  namespace f = vioport::net::feature;
  namespace c = vioport::net::ctrl;
  NetCtrlState s;
  s.features = r.Le(8);
  s.max_pairs = static_cast<uint16_t>(std::clamp<uint64_t>(r.Le(2), 1, c::kMqPairsMax));
  const uint8_t fl = static_cast<uint8_t>(r.Le(1));
  s.mac_locked = fl & 1;
  s.announce = fl & 2;
  s.pairs = 1;
  s.guest_offloads = s.features & f::kGuestOffloadBits;
  s.filter.mac = 0x525400123456ULL;
  s.filter.vlan_filtering = f::Has(s.features, f::kCtrlVlan);
  const Mac mac0 = s.filter.mac;
  for (int k = 0; k < 256 && r.n > 0; ++k) {
    const size_t len = static_cast<size_t>(r.Le(2));
    const std::span<const uint8_t> cmd = r.Take(len);
    const NetCtrlState before = s;
    const uint8_t ack = HandleNetCtrl(s, cmd);
    Check(ack == kCtrlOk || ack == kCtrlErr);
    if (ack == kCtrlErr) {
      Check(SameState(before, s));
    } else {
      Check(cmd.size() >= 2);
      const uint8_t cls = cmd[0], op = cmd[1];
      const std::span<const uint8_t> d = cmd.subspan(2);
      switch (cls) {
        case c::kClassRx: {
          Check(op <= c::kRxNoBcast && d.size() == 1 && d[0] <= 1);
          Check(f::Has(s.features, op <= c::kRxAllMulti ? f::kCtrlRx : f::kCtrlRxExtra));
          const bool v[] = {s.filter.promisc, s.filter.allmulti, s.filter.alluni,
                            s.filter.nomulti, s.filter.nouni,    s.filter.nobcast};
          Check(v[op] == (d[0] == 1));
          break;
        }
        case c::kClassMac:
          if (op == c::kMacTableSet) {
            Check(f::Has(s.features, f::kCtrlRx));
            CheckTables(s, d);
          } else {
            Check(op == c::kMacAddrSet && f::Has(s.features, f::kCtrlMacAddr) && d.size() == 6);
            Check(s.filter.mac == MacFromBytes(d.data()));
          }
          break;
        case c::kClassVlan: {
          Check(f::Has(s.features, f::kCtrlVlan) && d.size() == 2 && op <= c::kVlanDel);
          const uint16_t vid = static_cast<uint16_t>(d[0] | (d[1] << 8));
          Check(vid <= kMaxVlan && s.filter.vlans[vid] == (op == c::kVlanAdd));
          break;
        }
        case c::kClassAnnounce:
          Check(f::Has(s.features, f::kGuestAnnounce) && op == c::kAnnounceAck && d.empty() && !s.announce);
          break;
        case c::kClassMq:
          Check(f::Has(s.features, f::kMq) && op == c::kMqVqPairsSet && d.size() == 2);
          Check(s.pairs == (d[0] | (d[1] << 8)));
          break;
        case c::kClassGuestOffloads: {
          Check(f::Has(s.features, f::kCtrlGuestOffloads) && op == c::kGuestOffloadsSet && d.size() == 8);
          uint64_t v = 0;
          for (int i = 0; i < 8; ++i) v |= uint64_t{d[i]} << (8 * i);
          Check(s.guest_offloads == v);
          break;
        }
        default:
          Check(false);  // an unknown class was accepted
      }
    }
    // Always.
    Check(s.features == before.features && s.max_pairs == before.max_pairs && s.mac_locked == before.mac_locked);
    Check(s.pairs >= 1 && s.pairs <= s.max_pairs);
    Check((s.guest_offloads & ~(s.features & f::kGuestOffloadBits)) == 0);
    Check(s.filter.uni_table.size() <= kMacTableEntries && s.filter.multi_table.size() <= kMacTableEntries);
    Check(!s.filter.alluni_overflow || s.filter.uni_table.empty());
    Check(!s.filter.allmulti_overflow || s.filter.multi_table.empty());
    Check(s.filter.mac == mac0 || (!IsMulticast(s.filter.mac) && s.filter.mac != 0));
    Check(!s.mac_locked || s.filter.mac == mac0);
    Check(s.filter.vlans.size() == kMaxVlan + 1);
  }
}

// §5.1.6.5.1 restated in QEMU's receive_filter order: promiscuous first,
// then the VLAN filter, then the MAC classes.
bool Reference(const RxFilter& r, const std::vector<uint8_t>& f) {
  if (f.size() < 14) return false;
  if (r.promisc) return true;
  if (r.vlan_filtering && Be16(f, 12) == 0x8100) {
    if (f.size() < 18 || !r.vlans[Be16(f, 14) & 0xfff]) return false;
  }
  const Mac dst = MacFromBytes(f.data());
  auto in = [dst](const std::vector<Mac>& t) { return std::find(t.begin(), t.end(), dst) != t.end(); };
  if (f[0] & 1) {
    if (dst == kBroadcast) return !r.nobcast;
    if (r.nomulti) return false;
    return r.allmulti || r.allmulti_overflow || in(r.multi_table);
  }
  if (r.nouni) return false;
  return r.alluni || r.alluni_overflow || dst == r.mac || in(r.uni_table);
}

void FilterAndHash(Reader r) {
  RxFilter fl;
  const uint8_t a = static_cast<uint8_t>(r.Le(1)), b = static_cast<uint8_t>(r.Le(1));
  fl.promisc = a & 1;
  fl.allmulti = a & 2;
  fl.alluni = a & 4;
  fl.nomulti = a & 8;
  fl.nouni = a & 16;
  fl.nobcast = a & 32;
  fl.vlan_filtering = a & 64;
  fl.alluni_overflow = a & 128;
  fl.allmulti_overflow = b & 1;
  fl.mac = r.Le(6);
  const size_t nu = r.Le(1) % 8, nm = r.Le(1) % 8;
  for (size_t i = 0; i < nu; ++i) fl.uni_table.push_back(r.Le(6));
  for (size_t i = 0; i < nm; ++i) fl.multi_table.push_back(r.Le(6));
  const size_t nv = r.Le(1) % 16;
  for (size_t i = 0; i < nv; ++i) fl.vlans[r.Le(2) & 0xfff] = true;
  const std::span<const uint8_t> fs = r.Take(r.n);
  const std::vector<uint8_t> f(fs.begin(), fs.end());
  Check(fl.Accepts(f) == Reference(fl, f));

  // A flow and its reply hash alike, for frames that are what they say.
  const uint32_t h = FlowHash(f);
  if (f.size() < 14) return;
  std::vector<uint8_t> g = f;
  std::swap_ranges(g.begin(), g.begin() + 6, g.begin() + 6);
  size_t l3 = 14;
  uint16_t et = Be16(f, 12);
  if (et == 0x8100) {
    if (f.size() < 18) return;  // FlowHash gives 0 for both
    et = Be16(f, 16);
    l3 = 18;
  }
  size_t l4 = 0;
  uint8_t proto = 0;
  if (et == 0x0800 && f.size() >= l3 + 20) {
    if ((f[l3] & 15) < 5) return;  // garbage: the "ports" would overlap the addresses
    std::swap_ranges(g.begin() + l3 + 12, g.begin() + l3 + 16, g.begin() + l3 + 16);
    l4 = l3 + (f[l3] & 15) * 4u;
    proto = f[l3 + 9];
  } else if (et == 0x86dd && f.size() >= l3 + 40) {
    std::swap_ranges(g.begin() + l3 + 8, g.begin() + l3 + 24, g.begin() + l3 + 24);
    l4 = l3 + 40;
    proto = f[l3 + 6];
  }
  if ((proto == 6 || proto == 17) && f.size() >= l4 + 4)
    std::swap_ranges(g.begin() + l4, g.begin() + l4 + 2, g.begin() + l4 + 2);
  Check(FlowHash(g) == h);
}

void Checksum(Reader r) {
  Frame f;
  const std::span<const uint8_t> hb = r.Take(sizeof f.hdr);
  if (hb.size() < sizeof f.hdr) return;
  std::memcpy(&f.hdr, hb.data(), sizeof f.hdr);
  const std::span<const uint8_t> data = r.Take(r.n);
  f.data.assign(data.begin(), data.end());
  const Frame in = f;
  const bool ok = CompleteChecksum(f);
  const size_t start = in.hdr.csum_start, field = start + in.hdr.csum_offset;
  if (!(in.hdr.flags & kHdrFlagNeedsCsum)) {
    Check(ok && f.data == in.data);
  } else if (field + 2 > in.data.size()) {
    Check(!ok && f.data == in.data && f.hdr.flags == in.hdr.flags);
  } else {
    Check(ok && f.hdr.flags == 0 && f.data.size() == in.data.size());
    for (size_t i = 0; i < in.data.size(); ++i)
      if (i != field && i != field + 1) Check(f.data[i] == in.data[i]);
    Check(Be16(f.data, field) != 0);
    if (in.hdr.csum_offset % 2 == 0)
      Check(Fold(Sum(f.data, start, f.data.size()) + Be16(in.data, field)) == 0xffff);
  }

  // The same bytes as MAC text.
  const std::string_view text(reinterpret_cast<const char*>(data.data()), data.size());
  Mac m = 0;
  if (ParseMac(text, &m)) {
    Check(m <= 0xffffffffffffULL);
    const std::string back = MacString(m);
    Check(back.size() == 17);
    for (size_t i = 0; i < 17; ++i)
      Check(back[i] == (text[i] >= 'A' && text[i] <= 'F' ? static_cast<char>(text[i] - 'A' + 'a') : text[i]));
    Mac again = 0;
    Check(ParseMac(back, &again) && again == m);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  Reader r{data + 1, size - 1};
  switch (data[0] % 4) {
    case 0: TxPath(r); break;
    case 1: Ctrl(r); break;
    case 2: FilterAndHash(r); break;
    case 3: Checksum(r); break;
  }
  return 0;
}
