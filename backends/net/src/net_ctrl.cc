// SPDX-License-Identifier: Apache-2.0
// The control queue's commands (§5.1.6.5): every length checked against
// what the command needs and every command against the features it needs.
#include <cstring>

#include "vioport/backends/net_device.h"

namespace vioport {
namespace {

using net::feature::Has;

uint32_t Le32(const uint8_t* p) { return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24); }
uint16_t Le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

// One MAC table: le32 entries, then the entries. Advances `p`.
bool ParseMacTable(std::span<const uint8_t>& p, std::vector<net::Mac>* out, bool* overflow) {
  if (p.size() < 4) return false;
  const uint32_t n = Le32(p.data());
  p = p.subspan(4);
  if (n > p.size() / 6) return false;  // a table longer than the command
  out->clear();
  *overflow = n > kMacTableEntries;
  for (uint32_t i = 0; i < n && !*overflow; ++i) out->push_back(net::MacFromBytes(p.data() + 6 * i));
  p = p.subspan(6 * size_t{n});
  return true;
}

}  // namespace

uint8_t HandleNetCtrl(NetCtrlState& s, std::span<const uint8_t> cmd) {
  namespace c = net::ctrl;
  namespace f = net::feature;
  if (cmd.size() < 2) return net::kCtrlErr;
  const uint8_t cls = cmd[0], op = cmd[1];
  std::span<const uint8_t> d = cmd.subspan(2);
  switch (cls) {
    case c::kClassRx: {
      if (d.size() != 1 || d[0] > 1) return net::kCtrlErr;
      const bool on = d[0] == 1;
      const bool basic = Has(s.features, f::kCtrlRx), extra = Has(s.features, f::kCtrlRxExtra);
      switch (op) {
        case c::kRxPromisc: if (!basic) return net::kCtrlErr; s.filter.promisc = on; return net::kCtrlOk;
        case c::kRxAllMulti: if (!basic) return net::kCtrlErr; s.filter.allmulti = on; return net::kCtrlOk;
        case c::kRxAllUni: if (!extra) return net::kCtrlErr; s.filter.alluni = on; return net::kCtrlOk;
        case c::kRxNoMulti: if (!extra) return net::kCtrlErr; s.filter.nomulti = on; return net::kCtrlOk;
        case c::kRxNoUni: if (!extra) return net::kCtrlErr; s.filter.nouni = on; return net::kCtrlOk;
        case c::kRxNoBcast: if (!extra) return net::kCtrlErr; s.filter.nobcast = on; return net::kCtrlOk;
        default: return net::kCtrlErr;
      }
    }
    case c::kClassMac:
      if (op == c::kMacTableSet) {
        if (!Has(s.features, f::kCtrlRx)) return net::kCtrlErr;
        std::vector<net::Mac> uni, multi;
        bool uni_over = false, multi_over = false;
        if (!ParseMacTable(d, &uni, &uni_over) || !ParseMacTable(d, &multi, &multi_over) || !d.empty())
          return net::kCtrlErr;
        s.filter.uni_table = std::move(uni);
        s.filter.multi_table = std::move(multi);
        // Too many to keep: accept the whole class, as QEMU does.
        s.filter.alluni_overflow = uni_over;
        s.filter.allmulti_overflow = multi_over;
        return net::kCtrlOk;
      }
      if (op == c::kMacAddrSet) {
        if (!Has(s.features, f::kCtrlMacAddr) || d.size() != 6) return net::kCtrlErr;
        const net::Mac m = net::MacFromBytes(d.data());
        if (net::IsMulticast(m) || m == 0) return net::kCtrlErr;
        if (s.mac_locked && m != s.filter.mac) return net::kCtrlErr;
        s.filter.mac = m;
        return net::kCtrlOk;
      }
      return net::kCtrlErr;
    case c::kClassVlan: {
      if (!Has(s.features, f::kCtrlVlan) || d.size() != 2) return net::kCtrlErr;
      const uint16_t vid = Le16(d.data());
      if (vid > net::kMaxVlan) return net::kCtrlErr;
      if (op == c::kVlanAdd) s.filter.vlans[vid] = true;
      else if (op == c::kVlanDel) s.filter.vlans[vid] = false;
      else return net::kCtrlErr;
      return net::kCtrlOk;
    }
    case c::kClassAnnounce:
      if (!Has(s.features, f::kGuestAnnounce) || op != c::kAnnounceAck || !d.empty()) return net::kCtrlErr;
      s.announce = false;
      return net::kCtrlOk;
    case c::kClassMq: {
      if (!Has(s.features, f::kMq) || op != c::kMqVqPairsSet || d.size() != 2) return net::kCtrlErr;
      const uint16_t n = Le16(d.data());
      if (n < c::kMqPairsMin || n > s.max_pairs) return net::kCtrlErr;
      s.pairs = n;
      return net::kCtrlOk;
    }
    case c::kClassGuestOffloads: {
      if (!Has(s.features, f::kCtrlGuestOffloads) || op != c::kGuestOffloadsSet || d.size() != 8) return net::kCtrlErr;
      uint64_t v = 0;
      std::memcpy(&v, d.data(), 8);
      v = boost::endian::little_to_native(v);
      if (v & ~(s.features & f::kGuestOffloadBits)) return net::kCtrlErr;  // only what was negotiated
      s.guest_offloads = v;
      return net::kCtrlOk;
    }
    default:
      return net::kCtrlErr;
  }
}

}  // namespace vioport
