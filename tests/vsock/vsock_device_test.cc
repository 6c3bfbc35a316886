// SPDX-License-Identifier: Apache-2.0
// VsockDevice at the ring: a driver that writes each chain by hand (the
// loopback transport; split and packed, mapped and copy-only) sends good
// packets (they reach the hub byte for byte) and hostile ones (each counted
// by cause and answered with an RST to the guest's own address, never to
// the one it spoofed, never one for an RST); packets for the guest are cut
// to its receive buffers with SEQPACKET's EOM on the last piece; transmit
// keeps flowing with no receive buffers (the device's own RSTs wait,
// bounded); TRANSPORT_RESET reaches the event queue.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "vioport/backends/vsock_device.h"
#include "vioport/testing/raw_loopback.h"

namespace vioport::vsock {
namespace {

using vioport::testing::RawBuf;
using vioport::testing::RawLoopback;

struct Mode {
  bool packed, copy_only;
};
std::string ModeName(const ::testing::TestParamInfo<Mode>& i) {
  return std::string(i.param.packed ? "Packed" : "Split") + (i.param.copy_only ? "CopyOnly" : "Mapped");
}

class CaptureSink : public PacketSink {
 public:
  void Send(uint64_t from_cid, std::vector<Packet>& packets) override {
    absl::MutexLock l(&mu_);
    for (Packet& p : packets) {
      EXPECT_EQ(from_cid, 3u);
      got_.push_back(std::move(p));
      in_place_.push_back(false);
    }
  }
  // Takes RW packets in place when told to (copying them, as a sink must).
  bool SendInPlace(uint64_t from_cid, const Hdr& h, std::span<const uint8_t> payload) override {
    absl::MutexLock l(&mu_);
    ++offered_;
    if (!take_in_place_) return false;
    EXPECT_EQ(from_cid, 3u);
    EXPECT_EQ(h.len, payload.size());
    got_.push_back(Packet{h, std::vector<uint8_t>(payload.begin(), payload.end())});
    in_place_.push_back(true);
    return true;
  }
  void TakeInPlace(bool on) {
    absl::MutexLock l(&mu_);
    take_in_place_ = on;
  }
  std::vector<Packet> Take(std::vector<bool>* in_place = nullptr) {
    absl::MutexLock l(&mu_);
    if (in_place) *in_place = std::move(in_place_);
    in_place_.clear();
    return std::move(got_);
  }
  int offered() {
    absl::MutexLock l(&mu_);
    return offered_;
  }

 private:
  absl::Mutex mu_;
  std::vector<Packet> got_;
  std::vector<bool> in_place_;
  bool take_in_place_ = false;
  int offered_ = 0;
};

std::vector<uint8_t> Bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 13);
  return v;
}

Hdr H(uint16_t op, uint32_t len = 0, uint16_t type = kTypeStream) {
  Hdr h{};
  h.src_cid = 3;
  h.dst_cid = kCidHost;
  h.src_port = 40000;
  h.dst_port = 1234;
  h.len = len;
  h.type = type;
  h.op = op;
  h.buf_alloc = 65536;
  return h;
}
std::vector<uint8_t> HdrBytes(const Hdr& h) {
  std::vector<uint8_t> v(kHdrSize);
  std::memcpy(v.data(), &h, kHdrSize);
  return v;
}
Hdr HdrAt(const uint8_t* p) {
  Hdr h;
  std::memcpy(&h, p, kHdrSize);
  return h;
}

class RawVsock : public RawLoopback {
 public:
  RawVsock(Mode mode, VsockOptions o = {}, bool plug = true) : RawVsock(*VsockDevice::Create(o), mode, plug) {}
  ~RawVsock() { dev->Plug(nullptr); }

  // One packet from the guest, header and payload in separate buffers;
  // waits for the device to give it back.
  Used Transmit(const Hdr& h, const std::vector<uint8_t>& payload = {}) {
    std::vector<RawBuf> bufs = {{HdrBytes(h), false}};
    if (!payload.empty()) bufs.push_back({payload, false});
    Add(kTxQueue, bufs, 1);
    return Wait(kTxQueue);
  }
  // A receive buffer of `bytes`; returns its DMA buffer.
  DmaBuffer PostRx(size_t bytes, uint64_t token) { return Add(kRxQueue, {{std::vector<uint8_t>(bytes), true}}, token)[0]; }
  void Deliver(std::vector<Packet> packets) { dev->inbox().Push(9, packets); }

  std::shared_ptr<VsockDevice> dev;
  std::shared_ptr<CaptureSink> sink = std::make_shared<CaptureSink>();

 private:
  static DriverOptions Options(Mode mode) {
    DriverOptions o;
    o.device_id = static_cast<uint32_t>(DeviceId::kVsock);
    o.wanted_features = vioport::feature::Bit(feature::kSeqpacket) |
                        (mode.packed ? vioport::feature::Bit(vioport::feature::kRingPacked) : 0);
    o.num_queues = kNumQueues;
    o.queue_size = 64;
    return o;
  }
  RawVsock(std::shared_ptr<VsockDevice> d, Mode mode, bool plug)
      : RawLoopback(d, mode.copy_only, Options(mode)), dev(std::move(d)) {
    if (plug) dev->Plug(sink);
    Init();
  }
};

TEST(VsockConfig, CidAndFeatures) {
  VsockOptions o;
  o.guest_cid = 0x1234567;
  auto d = VsockDevice::Create(o);
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(vioport::feature::Has((*d)->device_features(), feature::kStream));
  EXPECT_TRUE(vioport::feature::Has((*d)->device_features(), feature::kSeqpacket));
  RawVsock raw({false, false}, o);
  auto cid = raw.drv->ReadConfigValue<uint64_t>(0);
  ASSERT_TRUE(cid.ok());
  EXPECT_EQ(*cid, 0x1234567u);
  EXPECT_TRUE(raw.drv->has_feature(feature::kSeqpacket));
  o.seqpacket = false;
  EXPECT_FALSE(vioport::feature::Has((*VsockDevice::Create(o))->device_features(), feature::kSeqpacket));
  for (uint64_t bad : {uint64_t{0}, uint64_t{1}, uint64_t{2}, uint64_t{0xffffffff}, uint64_t{1} << 32}) {
    o.guest_cid = bad;
    EXPECT_FALSE(VsockDevice::Create(o).ok()) << bad;
  }
}

class VsockRing : public ::testing::TestWithParam<Mode> {};

TEST_P(VsockRing, PacketsReachTheHubByteForByte) {
  RawVsock raw(GetParam());
  const std::vector<uint8_t> data = Bytes(3000, 1);
  ASSERT_TRUE(raw.Transmit(H(kOpRequest)).used);
  // Header and payload in one buffer, too.
  std::vector<uint8_t> one = HdrBytes(H(kOpRw, 3000));
  one.insert(one.end(), data.begin(), data.end());
  raw.Add(kTxQueue, {{one, false}}, 2);
  ASSERT_TRUE(raw.Wait(kTxQueue).used);
  std::vector<Packet> got = raw.sink->Take();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].hdr.op, kOpRequest);
  EXPECT_EQ(got[1].hdr.op, kOpRw);
  EXPECT_EQ(got[1].payload, data);
  EXPECT_EQ(std::memcmp(&got[1].hdr, one.data(), kHdrSize), 0);
  EXPECT_EQ(raw.Counter("tx_packets"), 2u);
  EXPECT_EQ(raw.Counter("tx_bytes"), 3000u);
  EXPECT_FALSE(raw.NeedsReset());
}

TEST_P(VsockRing, MappedPayloadsAreOfferedInPlaceInOrder) {
  RawVsock raw(GetParam());
  raw.sink->TakeInPlace(true);
  const std::vector<uint8_t> a = Bytes(3000, 1), b = Bytes(700, 2), c = Bytes(900, 3);
  // REQUEST (no payload: batched), an RW with header and payload in one
  // buffer, an RW with them in two, an RW whose payload spans two buffers
  // (not one piece: batched), a CREDIT_UPDATE (batched), back to back.
  std::vector<uint8_t> one = HdrBytes(H(kOpRw, 3000));
  one.insert(one.end(), a.begin(), a.end());
  raw.Add(kTxQueue, {{HdrBytes(H(kOpRequest)), false}}, 1);
  raw.Add(kTxQueue, {{one, false}}, 2);
  raw.Add(kTxQueue, {{HdrBytes(H(kOpRw, 700)), false}, {b, false}}, 3);
  raw.Add(kTxQueue, {{HdrBytes(H(kOpRw, 900)), false},
                     {std::vector<uint8_t>(c.begin(), c.begin() + 400), false},
                     {std::vector<uint8_t>(c.begin() + 400, c.end()), false}},
          4);
  raw.Add(kTxQueue, {{HdrBytes(H(kOpCreditUpdate)), false}}, 5);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(raw.Wait(kTxQueue).used);
  std::vector<bool> in_place;
  std::vector<Packet> got = raw.sink->Take(&in_place);
  ASSERT_EQ(got.size(), 5u);
  const uint16_t ops[] = {kOpRequest, kOpRw, kOpRw, kOpRw, kOpCreditUpdate};
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i].hdr.op, ops[i]) << i;
  EXPECT_EQ(got[1].payload, a);
  EXPECT_EQ(got[2].payload, b);
  EXPECT_EQ(got[3].payload, c);
  // Only a mapped memory has payloads to offer in place.
  const bool mapped = !GetParam().copy_only;
  EXPECT_EQ(in_place, (std::vector<bool>{false, mapped, mapped, false, false}));
  EXPECT_EQ(raw.Counter("tx_in_place"), mapped ? 2u : 0u);
  EXPECT_EQ(raw.Counter("tx_packets"), 5u);
  EXPECT_EQ(raw.Counter("tx_bytes"), 4600u);
  // A sink that declines gets them through Send, bytes unchanged.
  raw.sink->TakeInPlace(false);
  raw.Add(kTxQueue, {{one, false}}, 6);
  ASSERT_TRUE(raw.Wait(kTxQueue).used);
  got = raw.sink->Take(&in_place);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].payload, a);
  EXPECT_EQ(in_place, std::vector<bool>{false});
  EXPECT_EQ(raw.sink->offered(), mapped ? 3 : 0);
  EXPECT_FALSE(raw.NeedsReset());
}

TEST_P(VsockRing, HostilePacketsAreCountedAndAnsweredWithRst) {
  RawVsock raw(GetParam());
  std::vector<DmaBuffer> rx;
  for (uint64_t i = 0; i < 8; ++i) rx.push_back(raw.PostRx(kHdrSize + 4096, 100 + i));
  struct Case {
    const char* name;
    Hdr h;
    std::vector<uint8_t> payload;
    const char* counter;
  };
  Hdr spoofed = H(kOpRequest);
  spoofed.src_cid = 4;
  Hdr own = H(kOpRequest);
  own.dst_cid = 3;
  const std::vector<Case> cases = {
      {"another guest's src_cid", spoofed, {}, "refused_spoofed_src"},
      {"op 9", H(9), {}, "refused_bad_op"},
      {"len beyond the chain", H(kOpRw, 500), Bytes(100, 2), "refused_len_beyond_buffer"},
      {"type 3", H(kOpRequest, 0, 3), {}, "refused_bad_type"},
      {"to itself", own, {}, "refused_bad_dst"},
      {"payload on SHUTDOWN", H(kOpShutdown, 4), Bytes(4, 3), "refused_len_not_rw"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    SCOPED_TRACE(c.name);
    const RawLoopback::Used t = raw.Transmit(c.h, c.payload);
    ASSERT_TRUE(t.used);
    EXPECT_EQ(raw.Counter(c.counter), 1u);
    // The RST, to the guest's own address and port, from where it wrote to.
    const RawLoopback::Used u = raw.Wait(kRxQueue);
    ASSERT_TRUE(u.used);
    ASSERT_EQ(u.len, kHdrSize);
    const Hdr r = HdrAt(rx[u.token - 100].host);
    EXPECT_EQ(r.op, kOpRst);
    EXPECT_EQ(r.dst_cid, 3u);
    EXPECT_EQ(r.dst_port, c.h.src_port);
    EXPECT_EQ(r.src_port, c.h.dst_port);
    EXPECT_EQ(r.len, 0u);
  }
  EXPECT_EQ(raw.Counter("rst_sent"), cases.size());
  // An RST that is refused is not answered; a chain shorter than a header
  // has nothing to answer.
  Hdr rst = H(kOpRst);
  rst.src_cid = 99;
  ASSERT_TRUE(raw.Transmit(rst).used);
  EXPECT_EQ(raw.Counter("refused_spoofed_src"), 2u);
  raw.Add(kTxQueue, {{Bytes(10, 4), false}}, 3);
  ASSERT_TRUE(raw.Wait(kTxQueue).used);
  EXPECT_EQ(raw.Counter("drop_short_chain"), 1u);
  EXPECT_FALSE(raw.Wait(kRxQueue, absl::Milliseconds(50)).used);
  EXPECT_EQ(raw.Counter("rst_sent"), cases.size());
  // Nothing reached the hub, and the device is fine.
  EXPECT_TRUE(raw.sink->Take().empty());
  EXPECT_EQ(raw.Counter("tx_packets"), 0u);
  EXPECT_FALSE(raw.NeedsReset());
  ASSERT_TRUE(raw.Transmit(H(kOpRequest)).used);
  EXPECT_EQ(raw.sink->Take().size(), 1u);
}

TEST_P(VsockRing, PacketsAreCutToTheReceiveBuffers) {
  RawVsock raw(GetParam());
  std::vector<DmaBuffer> rx;
  for (uint64_t i = 0; i < 4; ++i) rx.push_back(raw.PostRx(kHdrSize + 1000, i));
  Packet p;
  p.hdr = H(kOpRw, 2500, kTypeSeqpacket);
  p.hdr.src_cid = kCidHost;
  p.hdr.dst_cid = 3;
  p.hdr.flags = kSeqEom | kSeqEor;
  p.payload = Bytes(2500, 5);
  Packet next;
  next.hdr = p.hdr;
  next.hdr.op = kOpCreditUpdate;
  next.hdr.len = 0;
  next.hdr.flags = 0;
  raw.Deliver({p, next});
  std::vector<uint8_t> joined;
  const uint32_t want[3] = {1000, 1000, 500};
  for (uint64_t i = 0; i < 3; ++i) {
    const RawLoopback::Used u = raw.Wait(kRxQueue);
    ASSERT_TRUE(u.used);
    ASSERT_EQ(u.token, i);
    ASSERT_EQ(u.len, kHdrSize + want[i]);
    const Hdr h = HdrAt(rx[i].host);
    EXPECT_EQ(h.len, want[i]);
    EXPECT_EQ(h.op, kOpRw);
    EXPECT_EQ(h.flags, i == 2 ? (kSeqEom | kSeqEor) : 0u) << i;
    EXPECT_EQ(h.src_cid, kCidHost);
    joined.insert(joined.end(), rx[i].host + kHdrSize, rx[i].host + u.len);
  }
  EXPECT_EQ(joined, p.payload);
  const RawLoopback::Used u = raw.Wait(kRxQueue);
  ASSERT_TRUE(u.used);
  EXPECT_EQ(u.len, kHdrSize);
  EXPECT_EQ(HdrAt(rx[3].host).op, kOpCreditUpdate);
  EXPECT_EQ(raw.Counter("rx_packets"), 2u);
  EXPECT_EQ(raw.Counter("rx_bytes"), 2500u);
}

TEST_P(VsockRing, AReceiveBufferSmallerThanAHeaderComesBackEmpty) {
  RawVsock raw(GetParam());
  raw.PostRx(20, 1);
  DmaBuffer good = raw.PostRx(kHdrSize + 64, 2);
  Packet p;
  p.hdr = H(kOpRw, 10);
  p.hdr.src_cid = kCidHost;
  p.hdr.dst_cid = 3;
  p.payload = Bytes(10, 6);
  raw.Deliver({p});
  RawLoopback::Used u = raw.Wait(kRxQueue);
  ASSERT_TRUE(u.used);
  EXPECT_EQ(u.token, 1u);
  EXPECT_EQ(u.len, 0u);
  u = raw.Wait(kRxQueue);
  ASSERT_TRUE(u.used);
  EXPECT_EQ(u.token, 2u);
  ASSERT_EQ(u.len, kHdrSize + 10);
  EXPECT_EQ(std::vector<uint8_t>(good.host + kHdrSize, good.host + u.len), p.payload);
  EXPECT_EQ(raw.Counter("rx_buffers_too_small"), 1u);
}

// §5.10.6.3's deadlock rule: with no receive buffers the guest's transmit
// queue still drains; the RSTs the device makes wait, at most kMaxLocal.
TEST_P(VsockRing, TransmitDrainsWithoutReceiveBuffers) {
  RawVsock raw(GetParam());
  constexpr uint32_t kBad = VsockDevice::kMaxLocal + 40;
  for (uint32_t i = 0; i < kBad; ++i) {
    Hdr h = H(9);
    h.src_port = 1000 + i;
    ASSERT_TRUE(raw.Transmit(h).used) << i;
  }
  EXPECT_EQ(raw.Counter("refused_bad_op"), kBad);
  EXPECT_EQ(raw.Counter("drop_rst"), 40u);
  // Then receive buffers, 64 at a time (the ring's size): the RSTs kept
  // arrive, in order.
  std::vector<DmaBuffer> rx;
  uint32_t got = 0;
  while (got < VsockDevice::kMaxLocal) {
    for (int i = 0; i < 64; ++i) rx.push_back(raw.PostRx(kHdrSize + 64, rx.size()));
    for (int k = 0; k < 64 && got < VsockDevice::kMaxLocal; ++k) {
      const RawLoopback::Used u = raw.Wait(kRxQueue);
      ASSERT_TRUE(u.used) << got;
      ASSERT_LT(u.token, rx.size());
      const Hdr h = HdrAt(rx[u.token].host);
      EXPECT_EQ(h.op, kOpRst);
      EXPECT_EQ(h.dst_port, 1000 + got) << "in order";
      ++got;
    }
  }
  EXPECT_FALSE(raw.Wait(kRxQueue, absl::Milliseconds(50)).used);
  EXPECT_EQ(raw.Counter("rst_sent"), VsockDevice::kMaxLocal);
}

TEST_P(VsockRing, TransportResetReachesTheEventQueue) {
  RawVsock raw(GetParam());
  // Requested before the driver posted an event buffer: sent when it does.
  raw.dev->TransportReset();
  EXPECT_FALSE(raw.Wait(kEventQueue, absl::Milliseconds(50)).used);
  DmaBuffer ev = raw.Add(kEventQueue, {{std::vector<uint8_t>(4, 0xee), true}}, 7)[0];
  const RawLoopback::Used u = raw.Wait(kEventQueue);
  ASSERT_TRUE(u.used);
  EXPECT_EQ(u.token, 7u);
  ASSERT_EQ(u.len, 4u);
  uint32_t id;
  std::memcpy(&id, ev.host, 4);
  EXPECT_EQ(id, kEventTransportReset);
  EXPECT_EQ(raw.Counter("events_sent"), 1u);
  // Once only.
  raw.Add(kEventQueue, {{std::vector<uint8_t>(4), true}}, 8);
  EXPECT_FALSE(raw.Wait(kEventQueue, absl::Milliseconds(50)).used);
}

TEST_P(VsockRing, UnpluggedPacketsGetAnRst) {
  RawVsock raw(GetParam(), {}, /*plug=*/false);
  DmaBuffer rx = raw.PostRx(kHdrSize + 64, 1);
  ASSERT_TRUE(raw.Transmit(H(kOpRequest)).used);
  const RawLoopback::Used u = raw.Wait(kRxQueue);
  ASSERT_TRUE(u.used);
  EXPECT_EQ(HdrAt(rx.host).op, kOpRst);
  EXPECT_EQ(raw.Counter("refused_no_route"), 1u);
}

const Mode kModes[] = {{false, false}, {false, true}, {true, false}, {true, true}};
INSTANTIATE_TEST_SUITE_P(Modes, VsockRing, ::testing::ValuesIn(kModes), ModeName);

}  // namespace
}  // namespace vioport::vsock
