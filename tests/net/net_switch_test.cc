// SPDX-License-Identifier: Apache-2.0
// vios::Switch (vios/src/net_switch.cc): learning, flooding, no hairpin,
// table limits and aging, mac-lock, VLAN access ports and 802.1Q trunks,
// port removal, and the receive-offload union an uplink hears. Every check
// looks at what each port's inbox received, byte for byte.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "net_switch.h"

namespace vioport::vios {
namespace {

using net::Frame;
using net::Mac;

constexpr Mac kA = 0x020000000001ULL, kB = 0x020000000002ULL, kC = 0x020000000003ULL, kD = 0x020000000004ULL,
              kE = 0x020000000005ULL;
constexpr Mac kMulticast = 0x01005e000001ULL;

uint16_t Be16(const std::vector<uint8_t>& v, size_t at) { return static_cast<uint16_t>((v.at(at) << 8) | v.at(at + 1)); }

// An Ethernet frame from `src` to `dst`, optionally tagged, with a payload
// that tells frames apart.
Frame Eth(Mac dst, Mac src, uint8_t mark, int vlan = -1, size_t size = 80) {
  Frame f;
  f.data.assign(size, 0);
  net::MacToBytes(dst, f.data.data());
  net::MacToBytes(src, f.data.data() + 6);
  std::vector<uint8_t> rest;  // from byte 12 on, cut to `size`
  if (vlan >= 0) rest = {0x81, 0x00, static_cast<uint8_t>(vlan >> 8), static_cast<uint8_t>(vlan)};
  rest.insert(rest.end(), {0x08, 0x00});  // IPv4, as far as the switch cares
  for (size_t i = 0; i < size; ++i) rest.push_back(static_cast<uint8_t>(mark + i));
  for (size_t i = 12; i < size; ++i) f.data[i] = rest[i - 12];
  return f;
}

// The same frame with a tag inserted after the MAC addresses.
std::vector<uint8_t> WithTag(const std::vector<uint8_t>& d, uint16_t tci) {
  std::vector<uint8_t> v(d.begin(), d.begin() + 12);
  v.insert(v.end(), {0x81, 0x00, static_cast<uint8_t>(tci >> 8), static_cast<uint8_t>(tci)});
  v.insert(v.end(), d.begin() + 12, d.end());
  return v;
}

struct Net {
  explicit Net(Switch::Options o = Switch::Options{"sw0"}) : sw(std::move(o)) {}
  uint32_t Add(Mac mac, uint16_t vlan = 0, bool trunk = false, bool lock = false) {
    Switch::PortOptions p;
    p.name = absl::StrCat("p", boxes.size());
    p.inbox = std::make_shared<net::Inbox>();
    p.mac = mac;
    p.mac_lock = lock;
    p.vlan = vlan;
    p.trunk = trunk;
    boxes.push_back(p.inbox);
    const uint32_t id = sw.AddPort(std::move(p));
    EXPECT_EQ(id, boxes.size() - 1);
    return id;
  }
  void Send(uint32_t from, Frame f) {
    std::vector<Frame> v;
    v.push_back(std::move(f));
    sw.Send(from, v);
  }
  std::vector<Frame> Take(uint32_t port) {
    std::vector<Frame> got;
    boxes[port]->Take(&got, 1000);
    return got;
  }
  // What every port received since the last look, as counts.
  std::vector<size_t> Counts() {
    std::vector<size_t> n;
    for (size_t p = 0; p < boxes.size(); ++p) n.push_back(Take(static_cast<uint32_t>(p)).size());
    return n;
  }
  Switch sw;
  std::vector<std::shared_ptr<net::Inbox>> boxes;
};

using Sizes = std::vector<size_t>;

TEST(NetSwitch, LearnsThenForwardsUnicastToOnePort) {
  Net n;
  const uint32_t a = n.Add(kA), b = n.Add(kB), c = n.Add(kC);
  const Frame ab = Eth(kB, kA, 1);
  n.Send(a, ab);
  std::vector<Frame> at_b = n.Take(b), at_c = n.Take(c);
  ASSERT_EQ(at_b.size(), 1u) << "unknown destination: flooded";
  ASSERT_EQ(at_c.size(), 1u);
  EXPECT_EQ(at_b[0].data, ab.data);
  EXPECT_EQ(at_c[0].data, ab.data);
  EXPECT_TRUE(n.Take(a).empty()) << "never back to the sender";
  EXPECT_EQ(n.sw.Stats(a).flooded, 1u);
  EXPECT_EQ(n.sw.learnt(), 1u);

  const Frame ba = Eth(kA, kB, 2);
  n.Send(b, ba);
  std::vector<Frame> at_a = n.Take(a);
  ASSERT_EQ(at_a.size(), 1u);
  EXPECT_EQ(at_a[0].data, ba.data);
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0})) << "A was learnt: only A gets it";
  EXPECT_EQ(n.sw.Stats(b).unicast, 1u);
  EXPECT_EQ(n.sw.Stats(b).flooded, 0u);

  const Frame ab2 = Eth(kB, kA, 3);
  n.Send(a, ab2);
  at_b = n.Take(b);
  ASSERT_EQ(at_b.size(), 1u);
  EXPECT_EQ(at_b[0].data, ab2.data);
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0}));
  EXPECT_EQ(n.sw.learnt(), 2u);

  // C is still unknown: to C floods to B and C.
  n.Send(a, Eth(kC, kA, 4));
  EXPECT_EQ(n.Counts(), (Sizes{0, 1, 1}));
}

// Ports on different reactors send at once: once their addresses are
// learnt, a batch needs only the table's reader lock. While another
// holder (as another port's batch in flight) holds it, known traffic
// flows both ways from two threads; a new address waits for the writer
// lock and is learnt once the table is let go. (With one exclusive lock
// per batch, as the switch had, the known traffic would wait too.)
TEST(NetSwitch, KnownAddressesFlowWhileTheTableIsRead) {
  Net n;
  const uint32_t a = n.Add(kA), b = n.Add(kB), c = n.Add(kC);
  n.Send(a, Eth(net::kBroadcast, kA, 1));
  n.Send(b, Eth(net::kBroadcast, kB, 2));
  n.Counts();
  ASSERT_EQ(n.sw.learnt(), 2u);
  auto hold = n.sw.HoldTableForTesting();
  std::thread ab([&] {
    for (int i = 0; i < 100; ++i) n.Send(a, Eth(kB, kA, static_cast<uint8_t>(i)));
  });
  std::thread ba([&] {
    for (int i = 0; i < 100; ++i) n.Send(b, Eth(kA, kB, static_cast<uint8_t>(i)));
  });
  ab.join();
  ba.join();
  EXPECT_EQ(n.Counts(), (Sizes{100, 100, 0})) << "known unicast, each to its one port, while the table was held";
  std::atomic<bool> learnt{false};
  std::thread cn([&] {
    n.Send(c, Eth(kA, kC, 3));  // C is new: learnt under the writer lock
    learnt = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(learnt.load()) << "a new address was learnt while the table was held";
  hold.reset();
  cn.join();
  EXPECT_EQ(n.sw.learnt(), 3u);
  n.Counts();
  n.Send(a, Eth(kC, kA, 4));
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 1})) << "C learnt: unicast";
}

TEST(NetSwitch, FloodsBroadcastAndMulticastToEveryOtherPort) {
  Net n;
  for (Mac m : {kA, kB, kC, kD}) n.Add(m);
  for (uint32_t from = 0; from < 4; ++from) n.Send(from, Eth(kB, kA + from, 9));  // everyone learnt
  n.Counts();
  const Frame bc = Eth(net::kBroadcast, kC, 5);
  n.Send(2, bc);
  for (uint32_t p = 0; p < 4; ++p) {
    std::vector<Frame> got = n.Take(p);
    if (p == 2) {
      EXPECT_TRUE(got.empty());
    } else {
      ASSERT_EQ(got.size(), 1u) << p;
      EXPECT_EQ(got[0].data, bc.data);
    }
  }
  n.Send(0, Eth(kMulticast, kA, 6));
  EXPECT_EQ(n.Counts(), (Sizes{0, 1, 1, 1}));
  EXPECT_EQ(n.sw.Stats(0).flooded, 2u);
  EXPECT_EQ(n.sw.Stats(2).flooded, 1u);
}

TEST(NetSwitch, NoHairpinAndStationMoves) {
  Net n;
  const uint32_t a = n.Add(kA), b = n.Add(kB), c = n.Add(kC);
  n.Send(a, Eth(net::kBroadcast, kA, 1));
  n.Counts();
  n.Send(a, Eth(kA, kA, 2));  // to itself: learnt on the sending port
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0})) << "not sent back, not flooded";
  EXPECT_EQ(n.sw.Stats(a).flooded, 1u);

  // kA now sends from port B (no mac-lock): frames for it follow.
  n.Send(b, Eth(net::kBroadcast, kA, 3));
  n.Counts();
  n.Send(c, Eth(kA, kC, 4));
  EXPECT_EQ(n.Counts(), (Sizes{0, 1, 0}));
}

TEST(NetSwitch, FullTableFloodsNewAddresses) {
  Switch::Options o{"sw0"};
  o.max_macs = 2;
  Net n(o);
  const uint32_t a = n.Add(kA), b = n.Add(kB), c = n.Add(kC);
  n.Send(a, Eth(net::kBroadcast, kA, 1));
  n.Send(b, Eth(net::kBroadcast, kB, 2));
  n.Send(c, Eth(net::kBroadcast, kC, 3));
  EXPECT_EQ(n.sw.learnt(), 2u) << "max_macs";
  n.Counts();
  n.Send(a, Eth(kC, kA, 4));
  EXPECT_EQ(n.Counts(), (Sizes{0, 1, 1})) << "C was not learnt: flooded";
  n.Send(c, Eth(kB, kC, 5));
  EXPECT_EQ(n.Counts(), (Sizes{0, 1, 0})) << "B was: unicast";
}

TEST(NetSwitch, AgedEntriesAreNotUsedAndMakeRoom) {
  Switch::Options o{"sw0"};
  o.max_macs = 2;
  o.aging = absl::Milliseconds(1);
  Net n(o);
  const uint32_t a = n.Add(kA), b = n.Add(kB), c = n.Add(kC);
  n.Send(a, Eth(net::kBroadcast, kA, 1));
  n.Send(b, Eth(net::kBroadcast, kB, 2));
  n.Counts();
  // Only the direction that cannot flake is checked: after the sleep, both
  // entries are older than the aging time.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  n.Send(c, Eth(kA, kC, 3));
  EXPECT_EQ(n.Counts(), (Sizes{1, 1, 0})) << "an aged entry is not used: flooded";
  EXPECT_EQ(n.sw.learnt(), 1u) << "the full table dropped its aged entries to learn C";
}

TEST(NetSwitch, MacLockCountsSpoofedFrames) {
  Net n;
  const uint32_t a = n.Add(kA, 0, false, true), b = n.Add(kB);
  n.Send(a, Eth(net::kBroadcast, kE, 1));
  n.Send(a, Eth(kB, kD, 2));
  EXPECT_EQ(n.Counts(), (Sizes{0, 0}));
  EXPECT_EQ(n.sw.Stats(a).spoofed, 2u);
  EXPECT_EQ(n.sw.learnt(), 0u) << "a spoofed source is not learnt";
  const Frame ok = Eth(kB, kA, 3);
  n.Send(a, ok);
  std::vector<Frame> got = n.Take(b);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, ok.data);
  EXPECT_EQ(n.sw.Stats(a).spoofed, 2u);
  // No lock: any source.
  n.Send(b, Eth(kA, kE, 4));
  EXPECT_EQ(n.Counts(), (Sizes{1, 0}));
  EXPECT_EQ(n.sw.Stats(b).spoofed, 0u);
}

TEST(NetSwitch, BadSourcesAreCounted) {
  Net n;
  const uint32_t a = n.Add(kA);
  n.Add(kB);
  n.Send(a, Eth(kB, kMulticast, 1));
  n.Send(a, Eth(kB, 0, 2));
  n.Send(a, Eth(kB, kA, 3, -1, 13));
  EXPECT_EQ(n.Counts(), (Sizes{0, 0}));
  EXPECT_EQ(n.sw.Stats(a).bad_source, 3u);
  EXPECT_EQ(n.sw.learnt(), 0u);
  n.Send(a, Eth(kB, kA, 4, -1, 14));
  EXPECT_EQ(n.Counts(), (Sizes{0, 1})) << "a bare Ethernet header is a frame";
  n.Send(99, Eth(kB, kA, 5));
  EXPECT_EQ(n.Counts(), (Sizes{0, 0})) << "an unknown port sends nothing";
}

TEST(NetSwitch, AccessPortsKeepTheirVlans) {
  Net n;
  const uint32_t a = n.Add(kA, 10), b = n.Add(kB, 10), c = n.Add(kC, 20), d = n.Add(kD, 0), e = n.Add(kE, 0);
  const Frame bc = Eth(net::kBroadcast, kA, 1);
  n.Send(a, bc);
  std::vector<Frame> got = n.Take(b);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, bc.data) << "untagged on an access port";
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0, 0, 0}));
  n.Send(c, Eth(net::kBroadcast, kC, 2));
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0, 0, 0})) << "alone in VLAN 20";
  n.Send(d, Eth(net::kBroadcast, kD, 3));
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0, 0, 1}));
  // B is learnt in VLAN 10 only: from VLAN 0 its MAC is unknown.
  n.Send(b, Eth(kA, kB, 4));
  EXPECT_EQ(n.Counts(), (Sizes{1, 0, 0, 0, 0}));
  n.Send(d, Eth(kB, kD, 5));
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0, 0, 1})) << "flooded within VLAN 0";
  // An access port's guest does not pick a VLAN with a tag.
  n.Send(a, Eth(net::kBroadcast, kA, 6, 20));
  n.Send(a, Eth(net::kBroadcast, kA, 7, 10));
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0, 0, 0}));
  EXPECT_EQ(n.sw.Stats(a).vlan_drops, 2u);
  // The same MAC in two VLANs is two entries.
  n.Send(e, Eth(net::kBroadcast, kA, 8));
  n.Counts();
  n.Send(b, Eth(kA, kB, 9));
  EXPECT_EQ(n.Counts(), (Sizes{1, 0, 0, 0, 0}));
  n.Send(d, Eth(kA, kD, 10));
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0, 0, 1}));
}

Frame Partial(Frame f, uint16_t csum_start) {
  f.hdr.flags = net::kHdrFlagNeedsCsum;
  f.hdr.csum_start = csum_start;
  f.hdr.csum_offset = 16;
  f.hdr.gso_type = net::kGsoTcpV4;
  f.hdr.gso_size = 1448;
  return f;
}

TEST(NetSwitch, TrunkTagsAndStrips) {
  Net n;
  const uint32_t t = n.Add(0, 0, true), a = n.Add(kA, 10), c = n.Add(kC, 20), d = n.Add(kD, 0),
                 t2 = n.Add(0, 0, true);
  // Access VLAN 10 -> trunk: tagged with VID 10, csum_start moved by 4.
  const Frame from_a = Partial(Eth(net::kBroadcast, kA, 1), 34);
  n.Send(a, from_a);
  for (uint32_t trunk : {t, t2}) {
    std::vector<Frame> got = n.Take(trunk);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].data, WithTag(from_a.data, 10));
    EXPECT_EQ(got[0].hdr.csum_start, 38);
    EXPECT_EQ(got[0].hdr.csum_offset, 16);
    EXPECT_EQ(got[0].hdr.flags, net::kHdrFlagNeedsCsum);
    EXPECT_EQ(got[0].hdr.gso_type, net::kGsoTcpV4);
    EXPECT_EQ(got[0].hdr.gso_size, 1448);
  }
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0, 0, 0}));

  // Without NEEDS_CSUM the offsets mean nothing and stay.
  Frame plain = Eth(net::kBroadcast, kA, 2);
  plain.hdr.csum_start = 7;
  n.Send(a, plain);
  std::vector<Frame> got = n.Take(t);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, WithTag(plain.data, 10));
  EXPECT_EQ(got[0].hdr.csum_start, 7);
  n.Counts();

  // VLAN 0 -> trunk: untagged.
  const Frame from_d = Partial(Eth(net::kBroadcast, kD, 3), 34);
  n.Send(d, from_d);
  got = n.Take(t);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, from_d.data);
  EXPECT_EQ(got[0].hdr.csum_start, 34);
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0, 0, 1}));

  // Trunk, tagged VID 10 (with a priority) -> access port: stripped,
  // csum_start back by 4; to the other trunk: tagged again.
  const Frame inner = Eth(net::kBroadcast, 0x020000000077ULL, 4);
  Frame tagged = Partial(inner, 38);
  tagged.data = WithTag(inner.data, 0xa00a);
  n.Send(t, tagged);
  got = n.Take(a);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, inner.data);
  EXPECT_EQ(got[0].hdr.csum_start, 34);
  got = n.Take(t2);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, WithTag(inner.data, 10)) << "retagged with the VID (the priority is not kept)";
  EXPECT_EQ(got[0].hdr.csum_start, 38);
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0, 0, 0})) << "not to VLAN 20, not to VLAN 0";

  // Learnt through the trunk: unicast back to it, tagged.
  n.Send(a, Eth(0x020000000077ULL, kA, 5));
  got = n.Take(t);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(Be16(got[0].data, 12), net::kEtherTypeVlan);
  EXPECT_EQ(Be16(got[0].data, 14), 10);
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0, 0, 0}));
  EXPECT_EQ(n.sw.Stats(a).unicast, 1u);

  // Trunk, untagged -> VLAN 0.
  n.Send(t, Eth(net::kBroadcast, 0x020000000078ULL, 6));
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0, 1, 1}));
  // Trunk, VID 20 -> C.
  const Frame v20 = Eth(net::kBroadcast, 0x020000000079ULL, 7);
  n.Send(t, Frame{{}, WithTag(v20.data, 20)});
  got = n.Take(c);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, v20.data);
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0, 0, 1}));

  // VID 0 (priority-tagged) is the untagged VLAN: stripped, to VLAN 0 and
  // the other trunk untagged.
  const Frame prio = Eth(net::kBroadcast, 0x020000000078ULL, 8);
  n.Send(t, Frame{{}, WithTag(prio.data, 0x6000)});
  got = n.Take(d);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, prio.data);
  got = n.Take(t2);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, prio.data);
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0, 0, 0}));
  // VID 4095 is refused on a trunk, and a tag cut short.
  n.Send(t, Eth(net::kBroadcast, 0x020000000078ULL, 9, 0xfff));
  n.Send(t, Eth(net::kBroadcast, 0x020000000078ULL, 10, 10, 16));
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0, 0, 0}));
  EXPECT_EQ(n.sw.Stats(t).vlan_drops, 2u);

  // A guest on the untagged VLAN tagging its own frames reaches the other
  // untagged ports as it sent them, but not a trunk (no VLAN hopping).
  const uint32_t e = n.Add(0x020000000099ULL);
  const Frame hop = Eth(net::kBroadcast, 0x020000000099ULL, 11, 20);
  n.Send(e, hop);
  got = n.Take(d);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, hop.data);
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0, 0, 0, 0})) << "neither trunk, nor VLAN 20's port";
  EXPECT_EQ(n.sw.Stats(e).vlan_drops, 2u) << "one per trunk";
}

TEST(NetSwitch, RemovedPortsAreForgotten) {
  Net n;
  const uint32_t a = n.Add(kA), b = n.Add(kB), c = n.Add(kC);
  n.Send(b, Eth(net::kBroadcast, kB, 1));
  n.Send(c, Eth(net::kBroadcast, kC, 2));
  n.Send(b, Eth(net::kBroadcast, 0x020000000042ULL, 3));
  n.Counts();
  ASSERT_EQ(n.sw.learnt(), 3u);
  ASSERT_EQ(n.sw.num_ports(), 3u);
  n.sw.RemovePort(b);
  EXPECT_EQ(n.sw.learnt(), 1u) << "both MACs learnt on B are gone";
  EXPECT_EQ(n.sw.num_ports(), 2u);
  n.Send(a, Eth(kB, kA, 4));
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 1})) << "flooded, and not to the removed port";
  EXPECT_EQ(n.sw.Stats(a).flooded, 1u);
  n.Send(b, Eth(net::kBroadcast, kB, 5));
  EXPECT_EQ(n.Counts(), (Sizes{0, 0, 0})) << "a removed port sends nothing";
  const uint32_t d = n.Add(kD);
  EXPECT_EQ(d, 3u) << "numbers are not reused";
  n.sw.RemovePort(b);  // twice
  n.sw.RemovePort(77);
  EXPECT_EQ(n.sw.num_ports(), 3u);
}

TEST(NetSwitch, UplinkHearsTheUnionOfCaps) {
  Net n;
  const uint32_t up = n.Add(0, 0, true), a = n.Add(kA), b = n.Add(kB);
  std::vector<net::RxCaps> heard;
  auto last = [&] {
    EXPECT_FALSE(heard.empty());
    return heard.empty() ? net::RxCaps{} : heard.back();
  };
  net::RxCaps ca;
  ca.csum = true;
  ca.tso4 = true;
  n.sw.SetPortCaps(a, &ca);  // before the uplink listens: remembered
  n.sw.SetUplink(up, [&](const net::RxCaps& c) { heard.push_back(c); });
  ASSERT_EQ(heard.size(), 1u) << "told at once";
  EXPECT_TRUE(last().csum);
  EXPECT_TRUE(last().tso4);
  EXPECT_FALSE(last().tso6);
  EXPECT_FALSE(last().ecn);

  net::RxCaps cb;
  cb.csum = true;
  cb.tso6 = true;
  cb.ecn = true;
  n.sw.SetPortCaps(b, &cb);
  EXPECT_TRUE(last().csum);
  EXPECT_TRUE(last().tso4);
  EXPECT_TRUE(last().tso6);
  EXPECT_TRUE(last().ecn);

  n.sw.SetPortCaps(a, nullptr);  // A reset
  EXPECT_TRUE(last().csum);
  EXPECT_FALSE(last().tso4);
  EXPECT_TRUE(last().tso6);
  EXPECT_TRUE(last().ecn);

  n.sw.SetPortCaps(a, &ca);
  EXPECT_TRUE(last().tso4);
  n.sw.RemovePort(b);
  EXPECT_TRUE(last().csum);
  EXPECT_TRUE(last().tso4);
  EXPECT_FALSE(last().tso6) << "a removed port's caps leave the union";
  EXPECT_FALSE(last().ecn);

  const size_t told = heard.size();
  n.sw.SetPortCaps(b, &cb);
  EXPECT_EQ(heard.size(), told) << "a removed port's caps are ignored";
  n.sw.SetPortCaps(a, nullptr);
  EXPECT_FALSE(last().csum);
  EXPECT_FALSE(last().tso4);
  EXPECT_FALSE(last().tso6);
  EXPECT_FALSE(last().ecn);
  n.sw.RemovePort(up);
  const size_t after = heard.size();
  n.sw.SetPortCaps(a, &ca);
  EXPECT_EQ(heard.size(), after) << "a removed uplink hears nothing";
}

TEST(NetSwitch, FullInboxDropsAreTheReceiversAndPerSender) {
  // The receiving inbox bounds each sender: a flooding port fills only its
  // share of a third port's inbox, so another sender still gets through.
  Switch sw(Switch::Options{"sw0"});
  net::Inbox::Limits lim;
  lim.per_source = 4;
  auto box_a = std::make_shared<net::Inbox>(), box_b = std::make_shared<net::Inbox>(),
       box_c = std::make_shared<net::Inbox>(lim);
  const uint32_t a = sw.AddPort({"a", box_a, kA, false, 0, false});
  const uint32_t b = sw.AddPort({"b", box_b, kB, false, 0, false});
  const uint32_t c = sw.AddPort({"c", box_c, kC, false, 0, false});
  ASSERT_EQ(c, 2u);
  std::vector<Frame> learn{Eth(net::kBroadcast, kC, 0)};
  sw.Send(c, learn);
  std::vector<Frame> flood;
  for (int i = 0; i < 50; ++i) flood.push_back(Eth(kC, kA, static_cast<uint8_t>(i)));
  sw.Send(a, flood);
  std::vector<Frame> one{Eth(kC, kB, 99)};
  sw.Send(b, one);
  std::vector<Frame> got;
  box_c->Take(&got, 1000);
  ASSERT_EQ(got.size(), 5u);
  int from_b = 0;
  for (const Frame& f : got) from_b += net::MacFromBytes(f.data.data() + 6) == kB;
  EXPECT_EQ(from_b, 1);
  EXPECT_EQ(box_c->drops(), 46u);
}

}  // namespace
}  // namespace vioport::vios
