// SPDX-License-Identifier: Apache-2.0
#include "vioport/guest/net_driver.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace vioport {

namespace f = net::feature;
using f::Bit;

namespace {
constexpr uint64_t kBigToken = uint64_t{1} << 32;
constexpr uint32_t kCtrlBuf = 4096;
}  // namespace

NetDriver::NetDriver(DriverTransport& transport) : drv_(transport) {}

NetDriver::~NetDriver() {
  if (drv_.num_queues() > 0) drv_.Reset();
  FreeAll();
}

void NetDriver::FreeAll() {
  DmaAllocator& dma = drv_.transport().dma();
  for (Pair& p : pairs_state_)
    for (DmaBuffer* b : {&p.tx_small, &p.tx_big, &p.rx})
      if (b->host) dma.Free(*b);
  pairs_state_.clear();
  if (ctrl_buf_.host) dma.Free(ctrl_buf_);
  ctrl_buf_ = {};
}

absl::Status NetDriver::Init(uint64_t ring_features, const NetDriverOptions& o) {
  ready_ = false;
  if (drv_.num_queues() > 0) drv_.Reset();
  FreeAll();
  opts_ = o;
  DriverTransport& t = drv_.transport();
  if (t.GetDeviceId() != static_cast<uint32_t>(DeviceId::kNet))
    return absl::FailedPreconditionError(absl::StrCat("net: the device is type ", t.GetDeviceId(), ", not net (1)"));
  const uint64_t offered = t.GetDeviceFeatures();
  uint64_t want = ring_features | Bit(f::kMac) | Bit(f::kMtu) | Bit(f::kStatus) | Bit(f::kSpeedDuplex);
  if (o.mrg_rxbuf) want |= Bit(f::kMrgRxbuf);
  if (o.offloads)
    want |= Bit(f::kCsum) | Bit(f::kGuestCsum) | Bit(f::kHostTso4) | Bit(f::kHostTso6) | Bit(f::kGuestTso4) |
            Bit(f::kGuestTso6) | Bit(f::kHostEcn) | Bit(f::kGuestEcn);
  const bool ctrl = o.ctrl && f::Has(offered, f::kCtrlVq);
  if (ctrl) {
    want |= Bit(f::kCtrlVq) | Bit(f::kCtrlRx) | Bit(f::kCtrlRxExtra) | Bit(f::kCtrlVlan) | Bit(f::kCtrlMacAddr) |
            Bit(f::kGuestAnnounce);
    if (o.offloads) want |= Bit(f::kCtrlGuestOffloads);
  }
  // MQ needs the control queue to pick the pairs, and its index follows the
  // device's maximum (§5.1.2): read it before the queues are set up.
  max_pairs_ = 1;
  const bool mq = ctrl && o.pairs > 1 && f::Has(offered, f::kMq);
  if (mq) {
    want |= Bit(f::kMq);
    uint8_t b[2];
    t.ReadConfig(offsetof(net::Config, max_virtqueue_pairs), b);
    max_pairs_ = std::clamp<uint16_t>(static_cast<uint16_t>(b[0] | (b[1] << 8)), 1, 16);
  }
  DriverOptions d;
  d.device_id = static_cast<uint32_t>(DeviceId::kNet);
  d.wanted_features = want;
  d.num_queues = static_cast<uint16_t>(2 * max_pairs_ + (ctrl ? 1 : 0));
  d.queue_size = o.queue_size;
  if (absl::Status s = drv_.Init(d); !s.ok()) return s;
  ctrl_q_ = net::CtrlQueue(max_pairs_, mq);
  hdr_size_ = net::kHdrSize;

  uint8_t macb[6] = {};
  if (has(f::kMac)) {
    if (absl::Status s = drv_.ReadConfig(0, macb); !s.ok()) return s;
    mac_ = net::MacFromBytes(macb);
  }
  mtu_ = 1500;
  if (has(f::kMtu)) {
    auto m = drv_.ReadConfigValue<le16>(offsetof(net::Config, mtu));
    if (!m.ok()) return m.status();
    mtu_ = *m;
  }

  // Buffers per pair.
  DmaAllocator& dma = t.dma();
  const uint16_t use = mq ? std::min(o.pairs, max_pairs_) : 1;
  pairs_state_.resize(use);
  for (uint16_t p = 0; p < use; ++p) {
    Pair& ps = pairs_state_[p];
    const uint32_t qsize = drv_.queue(net::TxQueue(p)).size();
    auto small = dma.Allocate(size_t{qsize} * kSmallSlot, 64, Access::kRead);
    if (!small.ok()) return small.status();
    ps.tx_small = *small;
    for (uint32_t i = qsize; i > 0; --i) ps.tx_free_small.push_back(i - 1);
    if (has(f::kHostTso4) || has(f::kHostTso6) || mtu_ + net::kEthHeader + net::kVlanTagLen + hdr_size_ > kSmallSlot) {
      auto big = dma.Allocate(size_t{kBigSlots} * kBigSlot, 64, Access::kRead);
      if (!big.ok()) return big.status();
      ps.tx_big = *big;
      for (uint32_t i = kBigSlots; i > 0; --i) ps.tx_free_big.push_back(i - 1);
    }
    const uint32_t rq = drv_.queue(net::RxQueue(p)).size();
    if (has(f::kMrgRxbuf)) {
      ps.rx_slot_size = kSmallSlot;
      ps.rx_slots = rq;
    } else if (has(f::kGuestTso4) || has(f::kGuestTso6)) {
      ps.rx_slot_size = (net::kBigRxBuffer + 63) & ~63u;
      ps.rx_slots = std::min<uint32_t>(rq, kBigSlots);
    } else {
      ps.rx_slot_size = (hdr_size_ + mtu_ + net::kEthHeader + net::kVlanTagLen + 63) & ~63u;
      ps.rx_slots = rq;
    }
    auto rx = dma.Allocate(size_t{ps.rx_slots} * ps.rx_slot_size, 64, Access::kWrite);
    if (!rx.ok()) return rx.status();
    ps.rx = *rx;
    for (uint32_t i = 0; i < ps.rx_slots; ++i)
      if (absl::Status s = PostRx(p, i); !s.ok()) return s;
    drv_.Kick(net::RxQueue(p));
  }
  if (ctrl) {
    auto c = dma.Allocate(kCtrlBuf, 64, Access::kReadWrite);
    if (!c.ok()) return c.status();
    ctrl_buf_ = *c;
  }
  pairs_ = 1;
  ready_ = true;
  if (use > 1)
    if (absl::Status s = SetPairs(use); !s.ok()) return s;
  return absl::OkStatus();
}

absl::StatusOr<bool> NetDriver::LinkUp() {
  if (!has(f::kStatus)) return true;
  auto s = drv_.ReadConfigValue<le16>(offsetof(net::Config, status));
  if (!s.ok()) return s.status();
  return (*s & net::kStatusLinkUp) != 0;
}

absl::Status NetDriver::PostRx(uint16_t pair, uint32_t slot) {
  Pair& ps = pairs_state_[pair];
  DriverBuffer b{ps.rx.device_addr + uint64_t{slot} * ps.rx_slot_size, ps.rx_slot_size, true};
  const AddStatus a = drv_.queue(net::RxQueue(pair)).Add({&b, 1}, slot);
  if (a == AddStatus::kBroken) return RingErrorStatus(drv_.queue(net::RxQueue(pair)).error(), 0);
  if (a != AddStatus::kOk) return absl::InternalError(absl::StrCat("net: receive buffer ", slot, " not queued"));
  return absl::OkStatus();
}

absl::Status NetDriver::Wait(DriverQueue& q, uint64_t* token, uint32_t* len, absl::Duration timeout) {
  WaitPolicy w = opts_.wait;
  w.timeout = timeout;
  switch (WaitUsed(drv_, q, w, token, len)) {
    case WaitResult::kUsed: return absl::OkStatus();
    case WaitResult::kNeedsReset: return absl::UnavailableError("net: device needs reset");
    case WaitResult::kBroken: return RingErrorStatus(q.error(), 0);
    case WaitResult::kTimeout: return absl::DeadlineExceededError("net: nothing from the device in time");
  }
  return absl::InternalError("net: unexpected wait result");
}

// A transmit buffer the device returned goes back to its pool.
void NetDriver::Reclaim(Pair& ps, uint64_t token) {
  if (token & kBigToken) ps.tx_free_big.push_back(static_cast<uint32_t>(token & 0xffffffff));
  else ps.tx_free_small.push_back(static_cast<uint32_t>(token));
  --ps.tx_in_flight;
}

void NetDriver::ReapTx(uint16_t pair) {
  Pair& ps = pairs_state_[pair];
  DriverQueue& q = drv_.queue(net::TxQueue(pair));
  uint64_t token;
  uint32_t len;
  while (q.GetUsed(&token, &len) == UsedStatus::kUsed) {
    Reclaim(ps, token);
  }
}

absl::StatusOr<size_t> NetDriver::Send(uint16_t pair, std::span<const net::Frame> frames, bool wait) {
  if (!ready_) return absl::FailedPreconditionError("net: Send before a successful Init");
  if (pair >= pairs_state_.size()) return absl::InvalidArgumentError(absl::StrCat("net: pair ", pair, " not in use"));
  Pair& ps = pairs_state_[pair];
  DriverQueue& q = drv_.queue(net::TxQueue(pair));
  ReapTx(pair);
  size_t n = 0;
  for (const net::Frame& fr : frames) {
    const size_t need = hdr_size_ + fr.data.size();
    const bool big = need > kSmallSlot;
    if (big && (!ps.tx_big.host || need > kBigSlot))
      return absl::InvalidArgumentError(absl::StrCat("net: a frame of ", fr.data.size(), " bytes is larger than this device takes"));
    std::vector<uint32_t>& pool = big ? ps.tx_free_big : ps.tx_free_small;
    if (pool.empty()) {
      if (n > 0 || !wait) break;
      drv_.Kick(net::TxQueue(pair));
      uint64_t token;
      uint32_t len;
      while (pool.empty()) {
        if (absl::Status s = Wait(q, &token, &len, opts_.wait.timeout); !s.ok()) return s;
        Reclaim(ps, token);
        ReapTx(pair);
      }
    }
    const uint32_t slot = pool.back();
    uint8_t* dst = big ? ps.tx_big.host + size_t{slot} * kBigSlot : ps.tx_small.host + size_t{slot} * kSmallSlot;
    const uint64_t addr = big ? ps.tx_big.device_addr + uint64_t{slot} * kBigSlot
                              : ps.tx_small.device_addr + uint64_t{slot} * kSmallSlot;
    net::Hdr h = fr.hdr;
    h.num_buffers = 0;
    std::memcpy(dst, &h, hdr_size_);
    std::memcpy(dst + hdr_size_, fr.data.data(), fr.data.size());
    DriverBuffer b{addr, static_cast<uint32_t>(need), false};
    const AddStatus a = q.Add({&b, 1}, big ? (kBigToken | slot) : slot);
    if (a == AddStatus::kFull) break;
    if (a == AddStatus::kBroken) return RingErrorStatus(q.error(), 0);
    if (a != AddStatus::kOk) return absl::InternalError("net: transmit buffer not queued");
    pool.pop_back();
    ++ps.tx_in_flight;
    ++n;
  }
  if (n > 0) drv_.Kick(net::TxQueue(pair));
  return n;
}

absl::Status NetDriver::FlushTx(uint16_t pair) {
  if (pair >= pairs_state_.size()) return absl::InvalidArgumentError("net: pair not in use");
  Pair& ps = pairs_state_[pair];
  ReapTx(pair);
  while (ps.tx_in_flight > 0) {
    uint64_t token;
    uint32_t len;
    if (absl::Status s = Wait(drv_.queue(net::TxQueue(pair)), &token, &len, opts_.wait.timeout); !s.ok()) return s;
    Reclaim(ps, token);
    ReapTx(pair);
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> NetDriver::Recv(uint16_t pair, std::vector<net::Frame>* out, size_t max, absl::Duration timeout) {
  if (!ready_) return absl::FailedPreconditionError("net: Recv before a successful Init");
  if (pair >= pairs_state_.size()) return absl::InvalidArgumentError(absl::StrCat("net: pair ", pair, " not in use"));
  Pair& ps = pairs_state_[pair];
  DriverQueue& q = drv_.queue(net::RxQueue(pair));
  const bool mrg = has(f::kMrgRxbuf);
  size_t got = 0;
  bool reposted = false;
  auto slot_ok = [&](uint64_t token, uint32_t len) { return token < ps.rx_slots && len <= ps.rx_slot_size; };
  while (got < max) {
    uint64_t token;
    uint32_t len;
    UsedStatus u = q.GetUsed(&token, &len);
    if (u == UsedStatus::kBroken) return RingErrorStatus(q.error(), 0);
    if (u == UsedStatus::kNone) {
      if (got > 0) break;
      if (reposted) {
        drv_.Kick(net::RxQueue(pair));
        reposted = false;
      }
      absl::Status s = Wait(q, &token, &len, timeout);
      if (absl::IsDeadlineExceeded(s)) break;
      if (!s.ok()) return s;
    }
    if (!slot_ok(token, len)) return absl::DataLossError(absl::StrCat("net: device returned buffer ", token, " with ", len, " bytes"));
    const uint8_t* base = ps.rx.host + token * ps.rx_slot_size;
    if (len < hdr_size_) {
      ++rx_errors_;
      if (absl::Status s = PostRx(pair, static_cast<uint32_t>(token)); !s.ok()) return s;
      reposted = true;
      continue;
    }
    net::Frame fr;
    std::memcpy(&fr.hdr, base, hdr_size_);
    fr.data.assign(base + hdr_size_, base + len);
    if (absl::Status s = PostRx(pair, static_cast<uint32_t>(token)); !s.ok()) return s;
    reposted = true;
    uint32_t nbuf = mrg ? uint32_t{fr.hdr.num_buffers} : 1;
    bool bad = nbuf == 0 || nbuf > ps.rx_slots;
    for (uint32_t i = 1; i < nbuf && !bad; ++i) {
      // The rest of a merged frame is published with its first buffer.
      u = q.GetUsed(&token, &len);
      if (u == UsedStatus::kBroken) return RingErrorStatus(q.error(), 0);
      if (u == UsedStatus::kNone) {
        if (absl::Status s = Wait(q, &token, &len, absl::Seconds(1)); !s.ok()) {
          bad = true;
          break;
        }
      }
      if (!slot_ok(token, len)) return absl::DataLossError(absl::StrCat("net: device returned buffer ", token, " with ", len, " bytes"));
      const uint8_t* b = ps.rx.host + token * ps.rx_slot_size;
      fr.data.insert(fr.data.end(), b, b + len);
      if (absl::Status s = PostRx(pair, static_cast<uint32_t>(token)); !s.ok()) return s;
    }
    if (bad) {
      ++rx_errors_;
      continue;
    }
    fr.hdr.num_buffers = 0;
    out->push_back(std::move(fr));
    ++got;
  }
  if (reposted) drv_.Kick(net::RxQueue(pair));
  return got;
}

absl::StatusOr<uint8_t> NetDriver::Command(uint8_t cls, uint8_t cmd, std::span<const uint8_t> data) {
  if (!ready_ || !ctrl_buf_.host) return absl::FailedPreconditionError("net: no control queue");
  if (data.size() + 2 > kCtrlBuf - 64) return absl::InvalidArgumentError("net: control command too long");
  ctrl_buf_.host[0] = cls;
  ctrl_buf_.host[1] = cmd;
  if (!data.empty()) std::memcpy(ctrl_buf_.host + 2, data.data(), data.size());
  const uint32_t ack_off = kCtrlBuf - 1;
  ctrl_buf_.host[ack_off] = 0xff;
  DriverBuffer b[2] = {{ctrl_buf_.device_addr, static_cast<uint32_t>(2 + data.size()), false},
                       {ctrl_buf_.device_addr + ack_off, 1, true}};
  DriverQueue& q = drv_.queue(ctrl_q_);
  const AddStatus a = q.Add(b, 1);
  if (a == AddStatus::kBroken) return RingErrorStatus(q.error(), 0);
  if (a != AddStatus::kOk) return absl::InternalError("net: control command not queued");
  drv_.Kick(ctrl_q_);
  uint64_t token;
  uint32_t len;
  if (absl::Status s = Wait(q, &token, &len, opts_.wait.timeout); !s.ok()) return s;
  if (len < 1) return absl::DataLossError("net: the device answered a control command with no ack");
  return ctrl_buf_.host[ack_off];
}

namespace {
absl::Status Acked(absl::StatusOr<uint8_t> ack, const char* what) {
  if (!ack.ok()) return ack.status();
  if (*ack != net::kCtrlOk) return absl::FailedPreconditionError(absl::StrCat("net: the device refused ", what));
  return absl::OkStatus();
}
}  // namespace

absl::Status NetDriver::SetPairs(uint16_t n) {
  if (n < 1 || n > pairs_state_.size()) return absl::InvalidArgumentError(absl::StrCat("net: ", n, " pairs (1..", pairs_state_.size(), ")"));
  const uint8_t d[2] = {static_cast<uint8_t>(n), static_cast<uint8_t>(n >> 8)};
  if (absl::Status s = Acked(Command(net::ctrl::kClassMq, net::ctrl::kMqVqPairsSet, d), "MQ_VQ_PAIRS_SET"); !s.ok()) return s;
  pairs_ = n;
  return absl::OkStatus();
}

absl::Status NetDriver::SetRxMode(uint8_t cmd, bool on) {
  const uint8_t d = on ? 1 : 0;
  return Acked(Command(net::ctrl::kClassRx, cmd, {&d, 1}), "an RX mode command");
}

absl::Status NetDriver::SetMacTable(std::span<const net::Mac> uni, std::span<const net::Mac> multi) {
  std::vector<uint8_t> d;
  for (auto table : {uni, multi}) {
    const uint32_t n = static_cast<uint32_t>(table.size());
    for (int i = 0; i < 4; ++i) d.push_back(static_cast<uint8_t>(n >> (8 * i)));
    for (net::Mac m : table) {
      uint8_t b[6];
      net::MacToBytes(m, b);
      d.insert(d.end(), b, b + 6);
    }
  }
  return Acked(Command(net::ctrl::kClassMac, net::ctrl::kMacTableSet, d), "MAC_TABLE_SET");
}

absl::Status NetDriver::SetMac(net::Mac mac) {
  uint8_t b[6];
  net::MacToBytes(mac, b);
  if (absl::Status s = Acked(Command(net::ctrl::kClassMac, net::ctrl::kMacAddrSet, b), "MAC_ADDR_SET"); !s.ok()) return s;
  mac_ = mac;
  return absl::OkStatus();
}

absl::Status NetDriver::AddVlan(uint16_t vid, bool add) {
  const uint8_t d[2] = {static_cast<uint8_t>(vid), static_cast<uint8_t>(vid >> 8)};
  return Acked(Command(net::ctrl::kClassVlan, add ? net::ctrl::kVlanAdd : net::ctrl::kVlanDel, d), "a VLAN command");
}

absl::Status NetDriver::AckAnnounce() {
  return Acked(Command(net::ctrl::kClassAnnounce, net::ctrl::kAnnounceAck, {}), "ANNOUNCE_ACK");
}

absl::Status NetDriver::SetGuestOffloads(uint64_t offloads) {
  uint8_t d[8];
  for (int i = 0; i < 8; ++i) d[i] = static_cast<uint8_t>(offloads >> (8 * i));
  return Acked(Command(net::ctrl::kClassGuestOffloads, net::ctrl::kGuestOffloadsSet, d), "GUEST_OFFLOADS_SET");
}

}  // namespace vioport
