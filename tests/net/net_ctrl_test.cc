// SPDX-License-Identifier: Apache-2.0
// HandleNetCtrl (net_ctrl.cc): every class and command of the control
// queue (§5.1.6.5), their feature bits, their lengths, and that a refused
// command changes nothing.
#include <gtest/gtest.h>

#include <cstring>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "vioport/backends/net_device.h"

namespace vioport {
namespace {

namespace f = net::feature;
namespace c = net::ctrl;

constexpr uint64_t kAllCtrl = f::Bit(f::kCtrlVq) | f::Bit(f::kCtrlRx) | f::Bit(f::kCtrlRxExtra) |
                              f::Bit(f::kCtrlVlan) | f::Bit(f::kGuestAnnounce) | f::Bit(f::kMq) |
                              f::Bit(f::kCtrlMacAddr) | f::Bit(f::kCtrlGuestOffloads) | f::Bit(f::kGuestCsum) |
                              f::Bit(f::kGuestTso4) | f::Bit(f::kGuestTso6) | f::Bit(f::kGuestEcn) |
                              f::Bit(f::kCsum) | f::Bit(f::kHostTso4);

std::vector<uint8_t> Cmd(uint8_t cls, uint8_t op, std::initializer_list<uint8_t> data = {}) {
  std::vector<uint8_t> v;
  v.push_back(cls);
  v.push_back(op);
  for (uint8_t b : data) v.push_back(b);
  return v;
}

void PutLe32(std::vector<uint8_t>& v, uint32_t x) {
  for (int i = 0; i < 4; ++i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
}
void PutMac(std::vector<uint8_t>& v, net::Mac m) {
  uint8_t b[6];
  net::MacToBytes(m, b);
  v.insert(v.end(), b, b + 6);
}

// MAC_TABLE_SET with `uni` and `multi`; the counts may say otherwise.
std::vector<uint8_t> MacTable(const std::vector<net::Mac>& uni, const std::vector<net::Mac>& multi,
                              int64_t uni_count = -1, int64_t multi_count = -1) {
  std::vector<uint8_t> v{c::kClassMac, c::kMacTableSet};
  PutLe32(v, static_cast<uint32_t>(uni_count >= 0 ? uni_count : static_cast<int64_t>(uni.size())));
  for (net::Mac m : uni) PutMac(v, m);
  PutLe32(v, static_cast<uint32_t>(multi_count >= 0 ? multi_count : static_cast<int64_t>(multi.size())));
  for (net::Mac m : multi) PutMac(v, m);
  return v;
}

NetCtrlState Fresh(uint64_t features = kAllCtrl) {
  NetCtrlState s;
  s.features = features;
  s.max_pairs = 4;
  s.pairs = 1;
  s.filter.mac = 0x525400123456ULL;
  s.filter.vlan_filtering = f::Has(features, f::kCtrlVlan);
  return s;
}

// Everything a command may change.
std::string Dump(const NetCtrlState& s) {
  std::ostringstream d;
  d << s.features << "/" << s.max_pairs << "/" << s.pairs << "/" << s.guest_offloads << "/" << s.announce
    << s.mac_locked;
  const net::RxFilter& r = s.filter;
  d << "/" << r.promisc << r.allmulti << r.alluni << r.nomulti << r.nouni << r.nobcast << "/" << std::hex << r.mac;
  for (net::Mac m : r.uni_table) d << " u" << m;
  for (net::Mac m : r.multi_table) d << " m" << m;
  d << std::dec << "/" << r.alluni_overflow << r.allmulti_overflow << r.vlan_filtering << "/";
  for (size_t v = 0; v < r.vlans.size(); ++v)
    if (r.vlans[v]) d << v << ",";
  return d.str();
}

// The command is refused and the state is as it was.
void ExpectRefused(NetCtrlState& s, const std::vector<uint8_t>& cmd, const std::string& what) {
  const std::string before = Dump(s);
  EXPECT_EQ(HandleNetCtrl(s, cmd), net::kCtrlErr) << what;
  EXPECT_EQ(Dump(s), before) << what;
}

std::vector<uint8_t> Frame(net::Mac dst, int vlan = -1) {
  std::vector<uint8_t> fr(60, 0);
  net::MacToBytes(dst, fr.data());
  net::MacToBytes(0x020000000099ULL, fr.data() + 6);
  if (vlan >= 0) {
    fr[12] = 0x81;
    fr[14] = static_cast<uint8_t>(vlan >> 8);
    fr[15] = static_cast<uint8_t>(vlan);
  }
  return fr;
}

TEST(NetCtrl, RxModes) {
  NetCtrlState s = Fresh();
  bool net::RxFilter::*fields[] = {&net::RxFilter::promisc, &net::RxFilter::allmulti, &net::RxFilter::alluni,
                                   &net::RxFilter::nomulti, &net::RxFilter::nouni,    &net::RxFilter::nobcast};
  for (uint8_t op = c::kRxPromisc; op <= c::kRxNoBcast; ++op) {
    SCOPED_TRACE("op " + std::to_string(op));
    ASSERT_EQ(HandleNetCtrl(s, Cmd(c::kClassRx, op, {1})), net::kCtrlOk);
    EXPECT_TRUE(s.filter.*fields[op]);
    ASSERT_EQ(HandleNetCtrl(s, Cmd(c::kClassRx, op, {0})), net::kCtrlOk);
    EXPECT_FALSE(s.filter.*fields[op]);
    ASSERT_EQ(HandleNetCtrl(s, Cmd(c::kClassRx, op, {1})), net::kCtrlOk);
    ExpectRefused(s, Cmd(c::kClassRx, op, {2}), "on must be 0 or 1");
    ExpectRefused(s, Cmd(c::kClassRx, op, {0xff}), "on must be 0 or 1");
    ExpectRefused(s, Cmd(c::kClassRx, op), "no data");
    ExpectRefused(s, Cmd(c::kClassRx, op, {0, 0}), "two data bytes");
  }
  ExpectRefused(s, Cmd(c::kClassRx, 6, {1}), "unknown RX command");
  ExpectRefused(s, Cmd(c::kClassRx, 0xff, {0}), "unknown RX command");
}

TEST(NetCtrl, RxModesNeedTheirFeatures) {
  // CTRL_RX: PROMISC and ALLMULTI; CTRL_RX_EXTRA: the other four.
  NetCtrlState basic = Fresh(kAllCtrl & ~f::Bit(f::kCtrlRxExtra));
  EXPECT_EQ(HandleNetCtrl(basic, Cmd(c::kClassRx, c::kRxPromisc, {0})), net::kCtrlOk);
  EXPECT_EQ(HandleNetCtrl(basic, Cmd(c::kClassRx, c::kRxAllMulti, {1})), net::kCtrlOk);
  for (uint8_t op : {c::kRxAllUni, c::kRxNoMulti, c::kRxNoUni, c::kRxNoBcast})
    ExpectRefused(basic, Cmd(c::kClassRx, op, {1}), "without CTRL_RX_EXTRA: " + std::to_string(op));

  NetCtrlState extra = Fresh(kAllCtrl & ~f::Bit(f::kCtrlRx));
  for (uint8_t op : {c::kRxPromisc, c::kRxAllMulti})
    ExpectRefused(extra, Cmd(c::kClassRx, op, {0}), "without CTRL_RX: " + std::to_string(op));
  EXPECT_EQ(HandleNetCtrl(extra, Cmd(c::kClassRx, c::kRxNoBcast, {1})), net::kCtrlOk);

  NetCtrlState none = Fresh(f::Bit(f::kCtrlVq));
  for (uint8_t op = 0; op <= c::kRxNoBcast; ++op) ExpectRefused(none, Cmd(c::kClassRx, op, {1}), "no RX features");
}

TEST(NetCtrl, RxModesReachTheFilter) {
  NetCtrlState s = Fresh();
  EXPECT_TRUE(s.filter.Accepts(Frame(0x020000000001ULL))) << "promiscuous at first";
  ASSERT_EQ(HandleNetCtrl(s, Cmd(c::kClassRx, c::kRxPromisc, {0})), net::kCtrlOk);
  EXPECT_FALSE(s.filter.Accepts(Frame(0x020000000001ULL)));
  EXPECT_TRUE(s.filter.Accepts(Frame(0x525400123456ULL)));
  ASSERT_EQ(HandleNetCtrl(s, Cmd(c::kClassRx, c::kRxNoBcast, {1})), net::kCtrlOk);
  EXPECT_FALSE(s.filter.Accepts(Frame(net::kBroadcast)));
}

TEST(NetCtrl, MacTableSet) {
  NetCtrlState s = Fresh();
  ASSERT_EQ(HandleNetCtrl(s, Cmd(c::kClassRx, c::kRxPromisc, {0})), net::kCtrlOk);
  const std::vector<net::Mac> uni = {0x020000000001ULL, 0x0a1b2c3d4e5fULL};
  const std::vector<net::Mac> multi = {0x01005e000001ULL, 0x333300000001ULL, 0x01005e7f0203ULL};
  ASSERT_EQ(HandleNetCtrl(s, MacTable(uni, multi)), net::kCtrlOk);
  EXPECT_EQ(s.filter.uni_table, uni);
  EXPECT_EQ(s.filter.multi_table, multi);
  EXPECT_FALSE(s.filter.alluni_overflow);
  EXPECT_FALSE(s.filter.allmulti_overflow);
  EXPECT_TRUE(s.filter.Accepts(Frame(0x0a1b2c3d4e5fULL)));
  EXPECT_TRUE(s.filter.Accepts(Frame(0x333300000001ULL)));
  EXPECT_FALSE(s.filter.Accepts(Frame(0x333300000002ULL)));

  // Lengths that do not add up.
  ExpectRefused(s, MacTable(uni, multi, 3), "unicast count past the payload");
  ExpectRefused(s, MacTable(uni, multi, -1, 4), "multicast count past the payload");
  ExpectRefused(s, MacTable(uni, multi, 0xffffffff), "a huge count");
  ExpectRefused(s, MacTable(uni, multi, -1, 0x80000000), "a huge count");
  std::vector<uint8_t> trailing = MacTable(uni, multi);
  trailing.push_back(0);
  ExpectRefused(s, trailing, "a trailing byte");
  std::vector<uint8_t> no_multi{c::kClassMac, c::kMacTableSet};
  PutLe32(no_multi, 0);
  ExpectRefused(s, no_multi, "no multicast table");
  ExpectRefused(s, Cmd(c::kClassMac, c::kMacTableSet, {0, 0, 0}), "a cut count");
  ExpectRefused(s, Cmd(c::kClassMac, c::kMacTableSet), "nothing");
  std::vector<uint8_t> cut = MacTable(uni, multi);
  cut.pop_back();
  ExpectRefused(s, cut, "a cut entry");

  // Empty tables clear them.
  ASSERT_EQ(HandleNetCtrl(s, MacTable({}, {})), net::kCtrlOk);
  EXPECT_TRUE(s.filter.uni_table.empty());
  EXPECT_TRUE(s.filter.multi_table.empty());
  EXPECT_FALSE(s.filter.Accepts(Frame(0x0a1b2c3d4e5fULL)));

  NetCtrlState no_rx = Fresh(kAllCtrl & ~f::Bit(f::kCtrlRx));
  ExpectRefused(no_rx, MacTable(uni, multi), "MAC_TABLE_SET needs CTRL_RX");
}

TEST(NetCtrl, MacTableOverflow) {
  NetCtrlState s = Fresh();
  ASSERT_EQ(HandleNetCtrl(s, Cmd(c::kClassRx, c::kRxPromisc, {0})), net::kCtrlOk);
  std::vector<net::Mac> many;
  for (uint32_t i = 0; i < kMacTableEntries; ++i) many.push_back(0x020000000000ULL + i);
  std::vector<net::Mac> many_multi;
  for (uint32_t i = 0; i < kMacTableEntries; ++i) many_multi.push_back(0x01005e000000ULL + i);

  ASSERT_EQ(HandleNetCtrl(s, MacTable(many, many_multi)), net::kCtrlOk);
  EXPECT_EQ(s.filter.uni_table.size(), kMacTableEntries) << "64 are kept";
  EXPECT_EQ(s.filter.multi_table.size(), kMacTableEntries);
  EXPECT_FALSE(s.filter.alluni_overflow);
  EXPECT_FALSE(s.filter.allmulti_overflow);
  EXPECT_FALSE(s.filter.Accepts(Frame(0x020000000100ULL)));

  many.push_back(0x020000000100ULL);
  ASSERT_EQ(HandleNetCtrl(s, MacTable(many, {0x01005e000001ULL})), net::kCtrlOk);
  EXPECT_TRUE(s.filter.alluni_overflow) << "65 unicast entries: every unicast passes";
  EXPECT_TRUE(s.filter.uni_table.empty());
  EXPECT_FALSE(s.filter.allmulti_overflow);
  EXPECT_EQ(s.filter.multi_table, std::vector<net::Mac>{0x01005e000001ULL});
  EXPECT_TRUE(s.filter.Accepts(Frame(0x02ffffffffffULL)));
  EXPECT_FALSE(s.filter.Accepts(Frame(0x01005e000002ULL)));

  many_multi.push_back(0x01005e000100ULL);
  ASSERT_EQ(HandleNetCtrl(s, MacTable({}, many_multi)), net::kCtrlOk);
  EXPECT_FALSE(s.filter.alluni_overflow) << "a new table replaces the overflow";
  EXPECT_TRUE(s.filter.allmulti_overflow);
  EXPECT_TRUE(s.filter.multi_table.empty());
  EXPECT_TRUE(s.filter.Accepts(Frame(0x01005e123456ULL)));
  EXPECT_FALSE(s.filter.Accepts(Frame(0x02ffffffffffULL)));

  // 256 + 256 entries: the largest command the device reads.
  std::vector<net::Mac> u256(256, 0x020000000001ULL), m256(256, 0x01005e000001ULL);
  const std::vector<uint8_t> big = MacTable(u256, m256);
  EXPECT_EQ(big.size(), kMaxCtrlCommand);
  ASSERT_EQ(HandleNetCtrl(s, big), net::kCtrlOk);
  EXPECT_TRUE(s.filter.alluni_overflow);
  EXPECT_TRUE(s.filter.allmulti_overflow);
}

TEST(NetCtrl, MacAddrSet) {
  NetCtrlState s = Fresh();
  std::vector<uint8_t> cmd{c::kClassMac, c::kMacAddrSet};
  PutMac(cmd, 0x02aabbccddeeULL);
  ASSERT_EQ(HandleNetCtrl(s, cmd), net::kCtrlOk);
  EXPECT_EQ(s.filter.mac, 0x02aabbccddeeULL);

  std::vector<uint8_t> multi{c::kClassMac, c::kMacAddrSet};
  PutMac(multi, 0x03aabbccddeeULL);
  ExpectRefused(s, multi, "a multicast address");
  std::vector<uint8_t> bcast{c::kClassMac, c::kMacAddrSet};
  PutMac(bcast, net::kBroadcast);
  ExpectRefused(s, bcast, "broadcast");
  ExpectRefused(s, Cmd(c::kClassMac, c::kMacAddrSet, {0, 0, 0, 0, 0, 0}), "zero");
  ExpectRefused(s, Cmd(c::kClassMac, c::kMacAddrSet, {2, 0, 0, 0, 0}), "five bytes");
  ExpectRefused(s, Cmd(c::kClassMac, c::kMacAddrSet, {2, 0, 0, 0, 0, 1, 0}), "seven bytes");
  ExpectRefused(s, Cmd(c::kClassMac, 2, {2, 0, 0, 0, 0, 1}), "unknown MAC command");

  NetCtrlState no_feature = Fresh(kAllCtrl & ~f::Bit(f::kCtrlMacAddr));
  ExpectRefused(no_feature, cmd, "MAC_ADDR_SET needs CTRL_MAC_ADDR");

  // mac-lock: only the address it has.
  NetCtrlState locked = Fresh();
  locked.mac_locked = true;
  ExpectRefused(locked, cmd, "mac-locked");
  std::vector<uint8_t> same{c::kClassMac, c::kMacAddrSet};
  PutMac(same, 0x525400123456ULL);
  EXPECT_EQ(HandleNetCtrl(locked, same), net::kCtrlOk);
  EXPECT_EQ(locked.filter.mac, 0x525400123456ULL);
}

TEST(NetCtrl, Vlan) {
  NetCtrlState s = Fresh();
  ASSERT_EQ(HandleNetCtrl(s, Cmd(c::kClassRx, c::kRxPromisc, {0})), net::kCtrlOk);
  EXPECT_FALSE(s.filter.Accepts(Frame(0x525400123456ULL, 0x102)));
  ASSERT_EQ(HandleNetCtrl(s, Cmd(c::kClassVlan, c::kVlanAdd, {0x02, 0x01})), net::kCtrlOk);  // le16 0x0102
  EXPECT_TRUE(s.filter.vlans[0x102]);
  EXPECT_FALSE(s.filter.vlans[0x201]);
  EXPECT_TRUE(s.filter.Accepts(Frame(0x525400123456ULL, 0x102)));
  ASSERT_EQ(HandleNetCtrl(s, Cmd(c::kClassVlan, c::kVlanAdd, {0xff, 0x0f})), net::kCtrlOk);
  EXPECT_TRUE(s.filter.vlans[4095]);
  ASSERT_EQ(HandleNetCtrl(s, Cmd(c::kClassVlan, c::kVlanDel, {0x02, 0x01})), net::kCtrlOk);
  EXPECT_FALSE(s.filter.vlans[0x102]);
  EXPECT_FALSE(s.filter.Accepts(Frame(0x525400123456ULL, 0x102)));
  ASSERT_EQ(HandleNetCtrl(s, Cmd(c::kClassVlan, c::kVlanDel, {0x02, 0x01})), net::kCtrlOk) << "deleting twice";

  ExpectRefused(s, Cmd(c::kClassVlan, c::kVlanAdd, {0x00, 0x10}), "VID 4096");
  ExpectRefused(s, Cmd(c::kClassVlan, c::kVlanAdd, {0xff, 0xff}), "VID 65535");
  ExpectRefused(s, Cmd(c::kClassVlan, c::kVlanAdd, {5}), "one byte");
  ExpectRefused(s, Cmd(c::kClassVlan, c::kVlanAdd, {5, 0, 0}), "three bytes");
  ExpectRefused(s, Cmd(c::kClassVlan, 2, {5, 0}), "unknown VLAN command");
  NetCtrlState no_vlan = Fresh(kAllCtrl & ~f::Bit(f::kCtrlVlan));
  ExpectRefused(no_vlan, Cmd(c::kClassVlan, c::kVlanAdd, {5, 0}), "VLAN needs CTRL_VLAN");
}

TEST(NetCtrl, AnnounceAck) {
  NetCtrlState s = Fresh();
  s.announce = true;
  ExpectRefused(s, Cmd(c::kClassAnnounce, c::kAnnounceAck, {0}), "data");
  ExpectRefused(s, Cmd(c::kClassAnnounce, 1), "unknown ANNOUNCE command");
  ASSERT_EQ(HandleNetCtrl(s, Cmd(c::kClassAnnounce, c::kAnnounceAck)), net::kCtrlOk);
  EXPECT_FALSE(s.announce);
  NetCtrlState no = Fresh(kAllCtrl & ~f::Bit(f::kGuestAnnounce));
  no.announce = true;
  ExpectRefused(no, Cmd(c::kClassAnnounce, c::kAnnounceAck), "ANNOUNCE needs GUEST_ANNOUNCE");
}

TEST(NetCtrl, VqPairsSet) {
  NetCtrlState s = Fresh();
  ASSERT_EQ(s.max_pairs, 4);
  ASSERT_EQ(HandleNetCtrl(s, Cmd(c::kClassMq, c::kMqVqPairsSet, {4, 0})), net::kCtrlOk);
  EXPECT_EQ(s.pairs, 4);
  ASSERT_EQ(HandleNetCtrl(s, Cmd(c::kClassMq, c::kMqVqPairsSet, {1, 0})), net::kCtrlOk);
  EXPECT_EQ(s.pairs, 1);
  ASSERT_EQ(HandleNetCtrl(s, Cmd(c::kClassMq, c::kMqVqPairsSet, {3, 0})), net::kCtrlOk);
  EXPECT_EQ(s.pairs, 3);
  ExpectRefused(s, Cmd(c::kClassMq, c::kMqVqPairsSet, {0, 0}), "0 pairs");
  ExpectRefused(s, Cmd(c::kClassMq, c::kMqVqPairsSet, {5, 0}), "above max_virtqueue_pairs");
  ExpectRefused(s, Cmd(c::kClassMq, c::kMqVqPairsSet, {4, 1}), "260 pairs");
  ExpectRefused(s, Cmd(c::kClassMq, c::kMqVqPairsSet, {0x01, 0x80}), "0x8001");
  ExpectRefused(s, Cmd(c::kClassMq, c::kMqVqPairsSet, {2}), "one byte");
  ExpectRefused(s, Cmd(c::kClassMq, c::kMqVqPairsSet, {2, 0, 0}), "three bytes");
  ExpectRefused(s, Cmd(c::kClassMq, 1, {2, 0}), "RSS_CONFIG is not offered");
  ExpectRefused(s, Cmd(c::kClassMq, 2, {2, 0}), "HASH_CONFIG is not offered");
  NetCtrlState no = Fresh(kAllCtrl & ~f::Bit(f::kMq));
  ExpectRefused(no, Cmd(c::kClassMq, c::kMqVqPairsSet, {1, 0}), "MQ needs the MQ feature");

  NetCtrlState wide = Fresh();
  wide.max_pairs = c::kMqPairsMax;
  ASSERT_EQ(HandleNetCtrl(wide, Cmd(c::kClassMq, c::kMqVqPairsSet, {0x00, 0x80})), net::kCtrlOk);
  EXPECT_EQ(wide.pairs, 0x8000);
}

std::vector<uint8_t> Offloads(uint64_t v) {
  std::vector<uint8_t> cmd{c::kClassGuestOffloads, c::kGuestOffloadsSet};
  for (int i = 0; i < 8; ++i) cmd.push_back(static_cast<uint8_t>(v >> (8 * i)));
  return cmd;
}

TEST(NetCtrl, GuestOffloadsSet) {
  NetCtrlState s = Fresh();
  const uint64_t csum_tso4 = f::Bit(f::kGuestCsum) | f::Bit(f::kGuestTso4);
  ASSERT_EQ(HandleNetCtrl(s, Offloads(csum_tso4)), net::kCtrlOk);
  EXPECT_EQ(s.guest_offloads, csum_tso4);
  const uint64_t all = f::Bit(f::kGuestCsum) | f::Bit(f::kGuestTso4) | f::Bit(f::kGuestTso6) | f::Bit(f::kGuestEcn);
  ASSERT_EQ(HandleNetCtrl(s, Offloads(all)), net::kCtrlOk);
  EXPECT_EQ(s.guest_offloads, all);
  ASSERT_EQ(HandleNetCtrl(s, Offloads(0)), net::kCtrlOk);
  EXPECT_EQ(s.guest_offloads, 0u);
  ASSERT_EQ(HandleNetCtrl(s, Offloads(csum_tso4)), net::kCtrlOk);

  ExpectRefused(s, Offloads(f::Bit(f::kGuestUfo)), "GUEST_UFO was not negotiated");
  ExpectRefused(s, Offloads(f::Bit(f::kGuestUso4)), "GUEST_USO4 was not negotiated");
  ExpectRefused(s, Offloads(f::Bit(f::kCsum)), "CSUM is negotiated but not a guest offload");
  ExpectRefused(s, Offloads(f::Bit(f::kCtrlRx)), "CTRL_RX is not a guest offload");
  ExpectRefused(s, Offloads(uint64_t{1} << 63), "bit 63");
  std::vector<uint8_t> seven = Offloads(csum_tso4);
  seven.pop_back();
  ExpectRefused(s, seven, "seven bytes");
  std::vector<uint8_t> nine = Offloads(csum_tso4);
  nine.push_back(0);
  ExpectRefused(s, nine, "nine bytes");
  std::vector<uint8_t> op1 = Offloads(csum_tso4);
  op1[1] = 1;
  ExpectRefused(s, op1, "unknown GUEST_OFFLOADS command");
  NetCtrlState no = Fresh(kAllCtrl & ~f::Bit(f::kCtrlGuestOffloads));
  ExpectRefused(no, Offloads(0), "needs CTRL_GUEST_OFFLOADS");
}

TEST(NetCtrl, UnknownClassesAndRunts) {
  NetCtrlState s = Fresh(~uint64_t{0});
  ExpectRefused(s, {}, "empty");
  ExpectRefused(s, {c::kClassRx}, "class only");
  for (uint8_t cls : {uint8_t{6}, uint8_t{7}, uint8_t{0x80}, uint8_t{0xff}})
    ExpectRefused(s, Cmd(cls, 0, {0, 0, 0, 0, 0, 0, 0, 0}), "class " + std::to_string(cls));
}

}  // namespace
}  // namespace vioport
