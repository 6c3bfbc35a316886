// SPDX-License-Identifier: Apache-2.0
// NetDevice at the ring: a driver that writes each chain by hand (the raw
// driver queue over the loopback transport, split and packed, mapped and
// copy-only) sends what a well-behaved driver never does — headers that lie,
// chains too short, receive buffers too small, garbage on the control queue,
// descriptors outside its memory — and checks each ends as the issue says:
// a counted drop, an error ack, or DEVICE_NEEDS_RESET, never a frame that
// reaches the network or a guest it should not, and the device still moves
// verified frames afterwards.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "net_test_frames.h"
#include "vioport/backends/net_device.h"
#include "vioport/core/driver.h"
#include "vioport/guest/wait.h"
#include "vioport/testing/raw_loopback.h"
#include "vioport/transports/loopback.h"

namespace vioport::net {
namespace {

namespace f = feature;

struct Mode {
  bool packed, copy_only;
};
std::string ModeName(const ::testing::TestParamInfo<Mode>& i) {
  return std::string(i.param.packed ? "Packed" : "Split") + (i.param.copy_only ? "CopyOnly" : "Mapped");
}

// What the device sends into the network, kept whole.
class CaptureSink : public FrameSink {
 public:
  void Send(uint32_t from_port, std::vector<Frame>& frames) override {
    absl::MutexLock l(&mu_);
    for (Frame& fr : frames) {
      EXPECT_EQ(from_port, 7u);
      got_.push_back(std::move(fr));
    }
  }
  std::vector<Frame> Take() {
    absl::MutexLock l(&mu_);
    return std::move(got_);
  }

 private:
  absl::Mutex mu_;
  std::vector<Frame> got_;
};

using Buf = vioport::testing::RawBuf;

std::vector<uint8_t> HdrBytes(const Hdr& h) {
  std::vector<uint8_t> out(kHdrSize);
  std::memcpy(out.data(), &h, kHdrSize);
  return out;
}

// An Ethernet frame from the device's MAC to `dst`, `len` bytes in all,
// payload seeded.
std::vector<uint8_t> EthFrame(size_t len, uint32_t seed, Mac dst = 0x525400aabbccULL) {
  std::vector<uint8_t> fr = testing::Pattern(std::max<size_t>(len, kEthHeader), seed);
  MacToBytes(dst, fr.data());
  MacToBytes(0x525400123456ULL, fr.data() + 6);
  fr[12] = 0x08;  // IPv4 by type; the device does not parse it without offloads
  fr[13] = 0x00;
  fr.resize(len);  // a runt keeps what fits
  return fr;
}

std::vector<uint8_t> Cat(std::vector<uint8_t> a, const std::vector<uint8_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

constexpr uint16_t kRx = 0, kTx = 1, kCtrl = 2;

class RawNet : public vioport::testing::RawLoopback {
 public:
  RawNet(Mode mode, uint64_t wanted, NetOptions o = {})
      : RawNet(*NetDevice::Create(o), mode, wanted) {}
  ~RawNet() { dev->Plug(nullptr, 0); }

  // Sends one transmit chain and waits for the device to give it back.
  Used Transmit(const std::vector<Buf>& bufs) {
    Add(kTx, bufs, 1);
    return Wait(kTx);
  }
  // A control command: readable `cmd` (split where `split` says), a
  // writable ack byte. Returns the ack, or -1 if the chain never came back.
  int Control(const std::vector<uint8_t>& cmd, size_t split = 0) {
    std::vector<Buf> bufs;
    if (split > 0 && split < cmd.size()) {
      bufs.push_back({{cmd.begin(), cmd.begin() + static_cast<ptrdiff_t>(split)}, false});
      bufs.push_back({{cmd.begin() + static_cast<ptrdiff_t>(split), cmd.end()}, false});
    } else if (!cmd.empty()) {
      bufs.push_back({cmd, false});
    }
    bufs.push_back({{0xee}, true});
    std::vector<DmaBuffer> dma = Add(kCtrl, bufs, 5);
    const Used u = Wait(kCtrl);
    if (!u.used) return -1;
    EXPECT_EQ(u.len, 1u);
    return dma.back().host[0];
  }
  // Frames into the device's inbox from switch port 3.
  void Deliver(std::vector<std::vector<uint8_t>> frames) {
    std::vector<Frame> v;
    for (auto& b : frames) v.push_back(Frame{Hdr{}, std::move(b)});
    dev->inbox().Push(3, v);
  }

  std::shared_ptr<NetDevice> dev;
  std::shared_ptr<CaptureSink> sink = std::make_shared<CaptureSink>();

 private:
  static DriverOptions Options(Mode mode, uint64_t wanted) {
    DriverOptions o;
    o.device_id = static_cast<uint32_t>(DeviceId::kNet);
    o.wanted_features = wanted | (mode.packed ? vioport::feature::Bit(vioport::feature::kRingPacked) : 0);
    o.num_queues = 3;
    o.queue_size = 64;
    return o;
  }
  RawNet(std::shared_ptr<NetDevice> d, Mode mode, uint64_t wanted)
      : RawLoopback(d, mode.copy_only, Options(mode, wanted)), dev(std::move(d)) {
    dev->Plug(sink, 7);
    Init();
  }
};

constexpr uint64_t kBasic = f::Bit(f::kMac) | f::Bit(f::kStatus) | f::Bit(f::kMtu);
constexpr uint64_t kCtrlAll = f::Bit(f::kCtrlVq) | f::Bit(f::kCtrlRx) | f::Bit(f::kCtrlRxExtra) |
                              f::Bit(f::kCtrlVlan) | f::Bit(f::kCtrlMacAddr) | f::Bit(f::kGuestAnnounce) |
                              f::Bit(f::kCtrlGuestOffloads);

class NetRing : public ::testing::TestWithParam<Mode> {};

// Every malformed transmit header: the chain comes back (len 0), the drop
// is counted by cause, nothing reaches the network, and a good frame after
// them arrives byte for byte.
TEST_P(NetRing, TransmitHeadersThatLieAreDroppedAndCounted) {
  // CSUM and HOST_TSO4 negotiated, HOST_TSO6/UFO/USO/ECN not.
  RawNet raw(GetParam(), kBasic | f::Bit(f::kCsum) | f::Bit(f::kHostTso4));
  const std::vector<uint8_t> frame = EthFrame(200, 1);
  auto hdr = [](uint8_t flags, uint8_t gso, uint16_t gso_size, uint16_t start, uint16_t off) {
    Hdr h{};
    h.flags = flags;
    h.gso_type = gso;
    h.gso_size = gso_size;
    h.csum_start = start;
    h.csum_offset = off;
    return HdrBytes(h);
  };
  struct Case {
    const char* name;
    std::vector<Buf> bufs;
    const char* counter;
  };
  const std::vector<Case> cases = {
      {"shorter than a header", {{std::vector<uint8_t>(5, 0), false}}, "drop_short"},
      {"header and 10 bytes", {{Cat(HdrBytes({}), EthFrame(10, 2)), false}}, "drop_short"},
      {"undefined gso_type", {{Cat(hdr(kHdrFlagNeedsCsum, 7, 100, 34, 16), frame), false}}, "drop_gso_type"},
      {"ECN bit without a GSO type", {{Cat(hdr(0, kGsoEcn, 0, 0, 0), frame), false}}, "drop_gso_type"},
      {"TCPv6 GSO not negotiated", {{Cat(hdr(kHdrFlagNeedsCsum, kGsoTcpV6, 100, 54, 16), frame), false}},
       "drop_gso_not_negotiated"},
      {"UFO not negotiated", {{Cat(hdr(kHdrFlagNeedsCsum, kGsoUdp, 100, 34, 6), frame), false}},
       "drop_gso_not_negotiated"},
      {"USO not negotiated", {{Cat(hdr(kHdrFlagNeedsCsum, kGsoUdpL4, 100, 34, 6), frame), false}},
       "drop_gso_not_negotiated"},
      {"ECN not negotiated", {{Cat(hdr(kHdrFlagNeedsCsum, kGsoTcpV4 | kGsoEcn, 100, 34, 16), frame), false}},
       "drop_gso_not_negotiated"},
      {"GSO with gso_size 0", {{Cat(hdr(kHdrFlagNeedsCsum, kGsoTcpV4, 0, 34, 16), frame), false}}, "drop_gso_bad"},
      {"GSO without NEEDS_CSUM", {{Cat(hdr(0, kGsoTcpV4, 100, 0, 0), frame), false}}, "drop_gso_bad"},
      {"csum_start beyond the frame", {{Cat(hdr(kHdrFlagNeedsCsum, 0, 0, 250, 0), frame), false}}, "drop_csum_bad"},
      {"csum_offset beyond the frame", {{Cat(hdr(kHdrFlagNeedsCsum, 0, 0, 34, 170), frame), false}}, "drop_csum_bad"},
      {"DATA_VALID on transmit", {{Cat(hdr(kHdrFlagDataValid, 0, 0, 0, 0), frame), false}}, "drop_hdr_flags"},
      {"RSC_INFO on transmit", {{Cat(hdr(kHdrFlagRscInfo, 0, 0, 0, 0), frame), false}}, "drop_hdr_flags"},
      {"longer than the MTU", {{Cat(HdrBytes({}), EthFrame(1500 + 14 + 4 + 1, 3)), false}}, "drop_oversize"},
      {"longer than 64 KiB", {{Cat(hdr(kHdrFlagNeedsCsum, kGsoTcpV4, 1000, 34, 16), EthFrame(kMaxGsoFrame + 1, 4)), false}},
       "drop_oversize"},
  };
  uint64_t expected_drops = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const uint64_t before = raw.Counter(c.counter);
    const RawNet::Used u = raw.Transmit(c.bufs);
    ASSERT_TRUE(u.used);
    EXPECT_EQ(u.len, 0u);
    EXPECT_EQ(raw.Counter(c.counter), before + 1);
    EXPECT_TRUE(raw.sink->Take().empty());
    EXPECT_FALSE(raw.NeedsReset());
    ++expected_drops;
  }
  EXPECT_EQ(raw.Counter("tx_packets"), 0u);
  // A good frame with num_buffers set (DPDK leaves garbage there; it means
  // nothing on transmit) and its header split over three descriptors.
  Hdr h{};
  h.num_buffers = 77;
  const std::vector<uint8_t> hb = HdrBytes(h);
  const RawNet::Used u = raw.Transmit({{{hb.begin(), hb.begin() + 3}, false},
                                       {{hb.begin() + 3, hb.end()}, false},
                                       {{frame.begin(), frame.begin() + 1}, false},
                                       {{frame.begin() + 1, frame.end()}, false}});
  ASSERT_TRUE(u.used);
  std::vector<Frame> got = raw.sink->Take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, frame);
  EXPECT_EQ(got[0].hdr.num_buffers, 0);
  EXPECT_EQ(raw.Counter("tx_packets"), 1u);
  EXPECT_EQ(raw.Counter("tx_bytes"), frame.size());
  EXPECT_EQ(expected_drops, cases.size());
}

// Writable descriptors in a transmit chain and descriptors outside the
// driver's memory: the ring is malformed, the device asks for a reset, and
// after one it works again.
TEST_P(NetRing, TransmitOutsideMemoryNeedsResetThenRecovers) {
  RawNet raw(GetParam(), kBasic);
  std::vector<DriverBuffer> ring = {{0x7fff'0000'0000ULL, 200, false}};
  ASSERT_EQ(raw.drv->queue(kTx).Add(ring, 9), AddStatus::kOk);
  raw.drv->Kick(kTx);
  EXPECT_EQ(raw.WaitFor(kTx), WaitResult::kNeedsReset);
  EXPECT_TRUE(raw.NeedsReset());
  EXPECT_TRUE(raw.sink->Take().empty());
  EXPECT_EQ(raw.Counter("tx_packets"), 0u);
  raw.Init();
  EXPECT_FALSE(raw.NeedsReset());
  const std::vector<uint8_t> frame = EthFrame(300, 5);
  ASSERT_TRUE(raw.Transmit({{Cat(HdrBytes({}), frame), false}}).used);
  std::vector<Frame> got = raw.sink->Take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, frame);
}

// A receive buffer smaller than the header comes back empty and counted;
// the frame goes into the next buffer, whole.
TEST_P(NetRing, ReceiveBufferSmallerThanTheHeaderIsReturnedEmpty) {
  RawNet raw(GetParam(), kBasic | f::Bit(f::kMrgRxbuf));
  raw.Add(kRx, {{std::vector<uint8_t>(6), true}}, 1);
  std::vector<DmaBuffer> big = raw.Add(kRx, {{std::vector<uint8_t>(2048), true}}, 2);
  const std::vector<uint8_t> frame = EthFrame(700, 6);
  raw.Deliver({frame});
  RawNet::Used u = raw.Wait(kRx);
  ASSERT_TRUE(u.used);
  EXPECT_EQ(u.token, 1u);
  EXPECT_EQ(u.len, 0u);
  u = raw.Wait(kRx);
  ASSERT_TRUE(u.used);
  EXPECT_EQ(u.token, 2u);
  ASSERT_EQ(u.len, kHdrSize + frame.size());
  Hdr h;
  std::memcpy(&h, big[0].host, kHdrSize);
  EXPECT_EQ(h.num_buffers, 1);
  EXPECT_EQ(std::vector<uint8_t>(big[0].host + kHdrSize, big[0].host + u.len), frame);
  EXPECT_EQ(raw.Counter("drop_rx_no_buffer"), 1u);
  EXPECT_EQ(raw.Counter("rx_packets"), 1u);
  EXPECT_FALSE(raw.NeedsReset());
}

// Without MRG_RXBUF a frame must fit one buffer: one that does not is
// dropped and counted (never truncated), and the buffer takes the next frame.
TEST_P(NetRing, WithoutMergeableBuffersAFrameThatDoesNotFitIsDropped) {
  RawNet raw(GetParam(), kBasic);
  std::vector<DmaBuffer> b = raw.Add(kRx, {{std::vector<uint8_t>(256), true}, {std::vector<uint8_t>(256), true}}, 1);
  const std::vector<uint8_t> big = EthFrame(600, 7), small = EthFrame(400, 8);
  raw.Deliver({big, small});
  const RawNet::Used u = raw.Wait(kRx);
  ASSERT_TRUE(u.used);
  EXPECT_EQ(u.token, 1u);
  ASSERT_EQ(u.len, kHdrSize + small.size());
  // The chain's two descriptors hold header + 400 bytes: 244 in the first, 156 in the second.
  std::vector<uint8_t> got(b[0].host + kHdrSize, b[0].host + 256);
  got.insert(got.end(), b[1].host, b[1].host + (u.len - 256));
  EXPECT_EQ(got, small);
  EXPECT_EQ(raw.Counter("drop_rx_no_buffer"), 1u);
  EXPECT_EQ(raw.Counter("rx_packets"), 1u);
  EXPECT_EQ(raw.Counter("rx_bytes"), small.size());
  // Nothing else was used: the too-big frame left no trace in a buffer.
  EXPECT_FALSE(raw.Wait(kRx, absl::Milliseconds(50)).used);
}

// With MRG_RXBUF a frame spans as many buffers as it needs, num_buffers
// says how many, and the rest stay for the next frame.
TEST_P(NetRing, MergeableBuffersSpanAndCountThemselves) {
  RawNet raw(GetParam(), kBasic | f::Bit(f::kMrgRxbuf));
  std::vector<std::vector<DmaBuffer>> bufs;
  for (uint64_t i = 0; i < 5; ++i) bufs.push_back(raw.Add(kRx, {{std::vector<uint8_t>(512), true}}, 10 + i));
  const std::vector<uint8_t> a = EthFrame(1400, 9), c = EthFrame(100, 10);
  raw.Deliver({a, c});
  std::vector<uint8_t> joined;
  uint32_t total = 0;
  for (uint64_t i = 0; i < 3; ++i) {
    const RawNet::Used u = raw.Wait(kRx);
    ASSERT_TRUE(u.used);
    EXPECT_EQ(u.token, 10 + i);
    joined.insert(joined.end(), bufs[i][0].host, bufs[i][0].host + u.len);
    total += u.len;
  }
  ASSERT_EQ(total, kHdrSize + a.size());
  Hdr h;
  std::memcpy(&h, joined.data(), kHdrSize);
  EXPECT_EQ(h.num_buffers, 3);
  EXPECT_EQ(std::vector<uint8_t>(joined.begin() + kHdrSize, joined.end()), a);
  const RawNet::Used u = raw.Wait(kRx);
  ASSERT_TRUE(u.used);
  EXPECT_EQ(u.token, 13u);
  ASSERT_EQ(u.len, kHdrSize + c.size());
  std::memcpy(&h, bufs[3][0].host, kHdrSize);
  EXPECT_EQ(h.num_buffers, 1);
  EXPECT_EQ(std::vector<uint8_t>(bufs[3][0].host + kHdrSize, bufs[3][0].host + u.len), c);
}

// A receive chain outside the driver's memory breaks the queue: NEEDS_RESET,
// no write anywhere, and frames flow again after the reset.
TEST_P(NetRing, ReceiveBufferOutsideMemoryNeedsReset) {
  RawNet raw(GetParam(), kBasic | f::Bit(f::kMrgRxbuf));
  std::vector<DriverBuffer> ring = {{0x7fff'0000'0000ULL, 2048, true}};
  ASSERT_EQ(raw.drv->queue(kRx).Add(ring, 9), AddStatus::kOk);
  raw.drv->Kick(kRx);
  raw.Deliver({EthFrame(100, 11)});
  EXPECT_EQ(raw.WaitFor(kRx), WaitResult::kNeedsReset);
  EXPECT_EQ(raw.Counter("rx_packets"), 0u);
  raw.Init();
  std::vector<DmaBuffer> b = raw.Add(kRx, {{std::vector<uint8_t>(2048), true}}, 3);
  const std::vector<uint8_t> frame = EthFrame(150, 12);
  raw.Deliver({frame});
  const RawNet::Used u = raw.Wait(kRx);
  ASSERT_TRUE(u.used);
  ASSERT_EQ(u.len, kHdrSize + frame.size());
  EXPECT_EQ(std::vector<uint8_t>(b[0].host + kHdrSize, b[0].host + u.len), frame);
}

// A guest that never posts receive buffers: its inbox fills to its bound,
// the rest is counted, and when it does post, the frames it kept arrive in
// order.
TEST_P(NetRing, AGuestWithoutReceiveBuffersHoldsABoundedBacklog) {
  NetOptions o;
  o.inbox.items = 64;
  o.inbox.per_source = 32;
  RawNet raw(GetParam(), kBasic | f::Bit(f::kMrgRxbuf), o);
  std::vector<std::vector<uint8_t>> frames;
  for (uint32_t i = 0; i < 100; ++i) frames.push_back(EthFrame(64 + i, 100 + i));
  raw.Deliver(frames);
  EXPECT_EQ(raw.dev->inbox().size(), 32u);
  EXPECT_EQ(raw.Counter("drop_rx_full"), 68u);
  // The device looks at its inbox and finds no buffers: nothing is used,
  // nothing more is dropped.
  EXPECT_FALSE(raw.t->WaitForInterrupt(kRx, absl::Milliseconds(20)));
  EXPECT_EQ(raw.Counter("drop_rx_full"), 68u);
  std::vector<std::vector<DmaBuffer>> bufs;
  for (uint64_t i = 0; i < 40; ++i) bufs.push_back(raw.Add(kRx, {{std::vector<uint8_t>(256), true}}, i));
  for (uint32_t i = 0; i < 32; ++i) {
    const RawNet::Used u = raw.Wait(kRx);
    ASSERT_TRUE(u.used) << i;
    ASSERT_EQ(u.token, i);
    ASSERT_EQ(u.len, kHdrSize + frames[i].size());
    EXPECT_EQ(std::vector<uint8_t>(bufs[i][0].host + kHdrSize, bufs[i][0].host + u.len), frames[i]);
  }
  EXPECT_FALSE(raw.Wait(kRx, absl::Milliseconds(50)).used);
  EXPECT_EQ(raw.Counter("rx_packets"), 32u);
}

std::vector<uint8_t> MacTable(uint32_t uni_entries, uint32_t uni_bytes_given, uint32_t multi_entries) {
  std::vector<uint8_t> t = {ctrl::kClassMac, ctrl::kMacTableSet};
  auto put32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) t.push_back(static_cast<uint8_t>(v >> (8 * i)));
  };
  put32(uni_entries);
  for (uint32_t i = 0; i < uni_bytes_given; ++i) t.push_back(static_cast<uint8_t>(0x02 + i));
  put32(multi_entries);
  for (uint32_t i = 0; i < multi_entries; ++i) {
    const uint8_t m[6] = {0x01, 0x00, 0x5e, 0, 0, static_cast<uint8_t>(i)};
    t.insert(t.end(), m, m + 6);
  }
  return t;
}

// Garbage on the control queue gets an error ack, and changes nothing;
// a chain with no room for the ack is a malformed ring.
TEST_P(NetRing, ControlQueueGarbageGetsErrorAcks) {
  RawNet raw(GetParam(), kBasic | kCtrlAll);
  struct Case {
    const char* name;
    std::vector<uint8_t> cmd;
  };
  const std::vector<Case> bad = {
      {"empty", {}},
      {"class only", {ctrl::kClassRx}},
      {"unknown class", {9, 0, 1}},
      {"unknown RX command", {ctrl::kClassRx, 6, 1}},
      {"RX without its byte", {ctrl::kClassRx, ctrl::kRxPromisc}},
      {"RX with two bytes", {ctrl::kClassRx, ctrl::kRxPromisc, 0, 0}},
      {"RX with a value of 2", {ctrl::kClassRx, ctrl::kRxPromisc, 2}},
      {"unknown MAC command", {ctrl::kClassMac, 7}},
      {"MAC_ADDR_SET with 3 bytes", {ctrl::kClassMac, ctrl::kMacAddrSet, 0x02, 0, 0}},
      {"MAC_ADDR_SET multicast", {ctrl::kClassMac, ctrl::kMacAddrSet, 0x01, 0, 0, 0, 0, 1}},
      {"MAC table longer than its bytes", MacTable(1000, 12, 0)},
      {"MAC table entries cut short", MacTable(3, 17, 0)},
      {"MAC table without its multicast half", {ctrl::kClassMac, ctrl::kMacTableSet, 0, 0, 0, 0}},
      {"MAC table with trailing bytes", Cat(MacTable(0, 0, 1), {0xaa})},
      {"VLAN id 4096", {ctrl::kClassVlan, ctrl::kVlanAdd, 0x00, 0x10}},
      {"VLAN short", {ctrl::kClassVlan, ctrl::kVlanAdd, 0x01}},
      {"MQ without MQ", {ctrl::kClassMq, ctrl::kMqVqPairsSet, 1, 0}},
      {"offloads not negotiated", {ctrl::kClassGuestOffloads, ctrl::kGuestOffloadsSet, 0xff, 0xff, 0, 0, 0, 0, 0, 0}},
      {"announce ack with nothing to ack", {ctrl::kClassAnnounce, 9}},
      {"longer than any command", std::vector<uint8_t>(kMaxCtrlCommand + 1, 0)},
  };
  for (const Case& c : bad) {
    SCOPED_TRACE(c.name);
    EXPECT_EQ(raw.Control(c.cmd, c.cmd.size() / 2), kCtrlErr);
    EXPECT_FALSE(raw.NeedsReset());
  }
  EXPECT_EQ(raw.Counter("ctrl_err"), bad.size());
  EXPECT_EQ(raw.Counter("ctrl_ok"), 0u);
  // Still promiscuous (nothing above changed the filter): a frame to any MAC arrives.
  std::vector<DmaBuffer> b = raw.Add(kRx, {{std::vector<uint8_t>(2048), true}}, 1);
  const std::vector<uint8_t> stranger = EthFrame(80, 13, 0x02aabbccddeeULL);
  raw.Deliver({stranger});
  RawNet::Used u = raw.Wait(kRx);
  ASSERT_TRUE(u.used);
  EXPECT_EQ(std::vector<uint8_t>(b[0].host + kHdrSize, b[0].host + u.len), stranger);
  // Good commands split anywhere work: promisc off, then frames to a
  // stranger are filtered and counted, and frames to the device's MAC arrive.
  EXPECT_EQ(raw.Control({ctrl::kClassRx, ctrl::kRxPromisc, 0}, 1), kCtrlOk);
  EXPECT_EQ(raw.Control(MacTable(0, 0, 0), 5), kCtrlOk);
  b = raw.Add(kRx, {{std::vector<uint8_t>(2048), true}}, 2);
  const std::vector<uint8_t> mine = EthFrame(90, 14, 0x525400123456ULL);
  raw.Deliver({stranger, mine});
  u = raw.Wait(kRx);
  ASSERT_TRUE(u.used);
  EXPECT_EQ(u.token, 2u);
  EXPECT_EQ(std::vector<uint8_t>(b[0].host + kHdrSize, b[0].host + u.len), mine);
  EXPECT_EQ(raw.Counter("drop_filtered"), 1u);
  // No writable byte for the ack: NEEDS_RESET.
  raw.Add(kCtrl, {{{ctrl::kClassRx, ctrl::kRxPromisc, 1}, false}}, 6);
  EXPECT_EQ(raw.WaitFor(kCtrl), WaitResult::kNeedsReset);
  EXPECT_TRUE(raw.NeedsReset());
}

// STANDBY (net failover) is offered only on request, and a driver that
// knows it negotiates it.
TEST(NetFeatures, StandbyOnlyOnRequest) {
  NetOptions o;
  auto plain = NetDevice::Create(o);
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(vioport::feature::Has((*plain)->device_features(), f::kStandby));
  o.standby = true;
  auto sby = NetDevice::Create(o);
  ASSERT_TRUE(sby.ok());
  EXPECT_TRUE(vioport::feature::Has((*sby)->device_features(), f::kStandby));
  RawNet raw({false, false}, kBasic | f::Bit(f::kStandby), o);
  EXPECT_TRUE(raw.drv->has_feature(f::kStandby));
  // The device still moves frames as any other.
  const std::vector<uint8_t> frame = EthFrame(120, 21);
  ASSERT_TRUE(raw.Transmit({{Cat(HdrBytes({}), frame), false}}).used);
  std::vector<Frame> got = raw.sink->Take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, frame);
}

const Mode kModes[] = {{false, false}, {false, true}, {true, false}, {true, true}};
INSTANTIATE_TEST_SUITE_P(Modes, NetRing, ::testing::ValuesIn(kModes), ModeName);

}  // namespace
}  // namespace vioport::net
