// SPDX-License-Identifier: Apache-2.0
#include "vioport/backends/net_device.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "vioport/core/counters.h"
#include "vioport/core/log.h"

namespace vioport {

namespace f = net::feature;
using f::Bit;
using f::Has;

namespace {
constexpr uint32_t kMaxCtrlChains = 64;  // control commands per kick
}  // namespace

absl::StatusOr<std::shared_ptr<NetDevice>> NetDevice::Create(const NetOptions& o) {
  if (o.max_pairs < 1 || o.max_pairs > 16) return absl::InvalidArgumentError(absl::StrCat("net: queues=", o.max_pairs, " is not 1..16"));
  if (o.mtu < 68) return absl::InvalidArgumentError(absl::StrCat("net: mtu=", o.mtu, " is below 68"));
  if ((o.mac >> 40) & 1) return absl::InvalidArgumentError(absl::StrCat("net: mac=", net::MacString(o.mac), " is a multicast address"));
  if (o.mac == 0) return absl::InvalidArgumentError("net: mac=00:00:00:00:00:00 is not an address");
  if (o.max_queue_size == 0 || (o.max_queue_size & (o.max_queue_size - 1)) || o.max_queue_size > 1024)
    return absl::InvalidArgumentError(absl::StrCat("net: queue-size=", o.max_queue_size, " is not a power of 2 up to 1024"));
  std::shared_ptr<NetDevice> d(new NetDevice(o));
  if (!d->inbox_->ok()) return absl::ResourceExhaustedError("net: eventfd failed");
  return d;
}

NetDevice::NetDevice(const NetOptions& o)
    : opts_(o), inbox_(std::make_unique<net::Inbox>(o.inbox)), mtu_(o.mtu) {
  net::MacToBytes(o.mac, config_mac_);
  held_.resize(o.max_pairs);
  steer_.fill(0);
}

NetDevice::~NetDevice() = default;

void NetDevice::Plug(std::shared_ptr<net::FrameSink> sink, uint32_t port) {
  sink_ = std::move(sink);
  port_ = port;
}

uint64_t NetDevice::device_features() const {
  uint64_t v = Bit(f::kMac) | Bit(f::kMtu) | Bit(f::kStatus) | Bit(f::kSpeedDuplex);
  if (opts_.mrg_rxbuf) v |= Bit(f::kMrgRxbuf);
  if (opts_.offloads)
    v |= Bit(f::kCsum) | Bit(f::kGuestCsum) | Bit(f::kHostTso4) | Bit(f::kHostTso6) | Bit(f::kHostEcn) |
         Bit(f::kGuestTso4) | Bit(f::kGuestTso6) | Bit(f::kGuestEcn);
  if (opts_.ctrl_vq) {
    v |= Bit(f::kCtrlVq) | Bit(f::kCtrlRx) | Bit(f::kCtrlRxExtra) | Bit(f::kCtrlVlan) | Bit(f::kCtrlMacAddr) |
         Bit(f::kGuestAnnounce);
    if (opts_.offloads) v |= Bit(f::kCtrlGuestOffloads);
  }
  // MQ: the pairs are there whether a control queue picks them (§5.1.6.5.5)
  // or a VMM front-end enables them (vhost-user).
  if (opts_.max_pairs > 1) v |= Bit(f::kMq);
  if (opts_.standby) v |= Bit(f::kStandby);
  return v | feature::kCoreSupported;
}

void NetDevice::ReadConfig(uint32_t offset, std::span<uint8_t> out) {
  net::Config c{};
  std::memcpy(c.mac, config_mac_, 6);
  c.status = static_cast<uint16_t>((link_up_ ? net::kStatusLinkUp : 0) | (ctrl_.announce ? net::kStatusAnnounce : 0));
  c.max_virtqueue_pairs = opts_.max_pairs;
  c.mtu = mtu_.load();
  c.speed = link_up_ ? opts_.speed : net::kSpeedUnknown;
  c.duplex = link_up_ ? opts_.duplex : net::kDuplexUnknown;
  const auto* bytes = reinterpret_cast<const uint8_t*>(&c);
  for (size_t i = 0; i < out.size(); ++i) out[i] = offset + i < sizeof c ? bytes[offset + i] : 0;
}

absl::Status NetDevice::CheckFeatures(uint64_t a) {
  // §5.1.3.1: each bit needs the ones it builds on. MQ without CTRL_VQ is
  // what a VMM that keeps the control queue to itself acks (vhost-user).
  auto need = [&](unsigned bit, unsigned dep, const char* what) -> absl::Status {
    if (Has(a, bit) && !Has(a, dep)) return absl::InvalidArgumentError(absl::StrCat("net: features: ", what));
    return absl::OkStatus();
  };
  for (const absl::Status& s :
       {need(f::kGuestTso4, f::kGuestCsum, "GUEST_TSO4 without GUEST_CSUM"),
        need(f::kGuestTso6, f::kGuestCsum, "GUEST_TSO6 without GUEST_CSUM"),
        need(f::kHostTso4, f::kCsum, "HOST_TSO4 without CSUM"), need(f::kHostTso6, f::kCsum, "HOST_TSO6 without CSUM"),
        need(f::kCtrlRx, f::kCtrlVq, "CTRL_RX without CTRL_VQ"), need(f::kCtrlVlan, f::kCtrlVq, "CTRL_VLAN without CTRL_VQ"),
        need(f::kGuestAnnounce, f::kCtrlVq, "GUEST_ANNOUNCE without CTRL_VQ"),
        need(f::kCtrlMacAddr, f::kCtrlVq, "CTRL_MAC_ADDR without CTRL_VQ"),
        need(f::kCtrlRxExtra, f::kCtrlRx, "CTRL_RX_EXTRA without CTRL_RX")})
    if (!s.ok()) return s;
  if (Has(a, f::kHostEcn) && !Has(a, f::kHostTso4) && !Has(a, f::kHostTso6))
    return absl::InvalidArgumentError("net: features: HOST_ECN without a HOST_TSO bit");
  if (Has(a, f::kGuestEcn) && !Has(a, f::kGuestTso4) && !Has(a, f::kGuestTso6))
    return absl::InvalidArgumentError("net: features: GUEST_ECN without a GUEST_TSO bit");
  return absl::OkStatus();
}

absl::Status NetDevice::Activate(ActivateContext ctx) {
  const uint64_t feat = ctx.features;
  const bool mq = Has(feat, f::kMq);
  const uint16_t max_usable = mq ? opts_.max_pairs : 1;
  uint16_t usable = 0;
  while (usable < max_usable && net::RxQueue(usable) < ctx.queues.size() && net::TxQueue(usable) < ctx.queues.size() &&
         ctx.queues[net::RxQueue(usable)] && ctx.queues[net::TxQueue(usable)])
    ++usable;
  // A VMM enables rings one message at a time (vhost-user): until pair 0
  // has both, the device runs with no pair and is restarted with more.
  if (usable == 0) VIOPORT_LOG(kDebug, "net: receive and transmit queues 0 and 1 not both enabled yet");
  const bool has_ctrl = Has(feat, f::kCtrlVq);
  const uint16_t ctrl_q = net::CtrlQueue(opts_.max_pairs, mq);
  if (has_ctrl && (ctrl_q >= ctx.queues.size() || !ctx.queues[ctrl_q]))
    return absl::FailedPreconditionError(absl::StrCat("net: control queue ", ctrl_q, " is not enabled"));
  ctx_ = std::move(ctx);
  hdr_size_ = Has(feat, feature::kVersion1) || Has(feat, f::kMrgRxbuf) ? net::kHdrSize : 10;
  mrg_ = Has(feat, f::kMrgRxbuf);
  has_ctrl_ = has_ctrl;
  ctrl_queue_ = ctrl_q;
  usable_pairs_ = usable;
  ctrl_ = NetCtrlState{};
  ctrl_.features = feat;
  ctrl_.max_pairs = usable;
  // §5.1.6.5.5: with a control queue, one pair until VQ_PAIRS_SET; behind
  // a front-end that owns it, every pair it enabled.
  ctrl_.pairs = has_ctrl ? 1 : usable;
  ctrl_.guest_offloads = feat & f::kGuestOffloadBits;
  ctrl_.mac_locked = mac_locked_.load();
  ctrl_.filter.mac = net::MacFromBytes(config_mac_);
  ctrl_.filter.vlan_filtering = Has(feat, f::kCtrlVlan);
  // Without CTRL_RX the driver cannot choose a filter; deliver everything
  // switched to the port.
  ctrl_.filter.promisc = true;
  rx_caps_ = net::RxCaps::FromFeatures(feat, mtu_.load());
  steer_.fill(0);
  tx_more_ = 0;
  rx_pending_.clear();
  rx_head_ = 0;
  for (auto& h : held_) h.clear();
  active_ = true;
  UpdateCaps();
  // Frames that waited while the device was down are stale.
  inbox_->Clear();
  return absl::OkStatus();
}

ActivateContext NetDevice::Reset() {
  FlushTx();
  // Receive chains held for a frame that never completed go back empty, so
  // the ring position a front-end saves (vhost-user) loses no buffer.
  for (uint16_t p = 0; p < held_.size(); ++p) {
    if (held_[p].empty()) continue;
    DeviceQueue* q = net::RxQueue(p) < ctx_.queues.size() ? ctx_.queues[net::RxQueue(p)].get() : nullptr;
    for (auto& c : held_[p])
      if (q) q->AddUsed(std::move(c), 0);
    held_[p].clear();
    if (q) ctx_.Publish(*q);
  }
  rx_pending_.clear();
  rx_head_ = 0;
  active_ = false;
  if (sink_) sink_->SetPortCaps(port_, nullptr);
  return std::move(ctx_);
}

void NetDevice::QueueNotify(uint16_t queue) {
  if (!active_) return;
  ApplyOperatorActions();
  if (has_ctrl_ && queue == ctrl_queue_) {
    ProcessCtrl();
    return;
  }
  const uint16_t pair = queue / 2;
  if (pair >= usable_pairs_) return;
  if (queue & 1) {
    DrainTx(pair);
    FlushTx();
  } else {
    DeliverRx();
  }
}

bool NetDevice::ProcessEvents() {
  if (!active_ || usable_pairs_ == 0) {
    // No driver to deliver to: what the switch sent is dropped, counted.
    taken_.clear();
    while (inbox_->Take(&taken_, kBatch) > 0) {
      BumpOwned(no_driver_drops_, taken_.size());
      taken_.clear();
    }
    ApplyOperatorActions();
    return false;
  }
  ApplyOperatorActions();
  bool did = false;
  // Transmit queues whose budget ran out last turn.
  if (tx_more_) {
    const uint32_t more = tx_more_;
    tx_more_ = 0;
    for (uint16_t p = 0; p < usable_pairs_ && p < 32; ++p)
      if (more & (1u << p)) DrainTx(p);
    FlushTx();
    did = true;
  }
  did |= DeliverRx();
  return did;
}

void NetDevice::UpdateCaps() {
  net::RxCaps caps = rx_caps_;
  const uint64_t off = ctrl_.guest_offloads;
  caps.csum = caps.csum && Has(off, f::kGuestCsum);
  caps.tso4 = caps.csum && caps.tso4 && Has(off, f::kGuestTso4);
  caps.tso6 = caps.csum && caps.tso6 && Has(off, f::kGuestTso6);
  caps.ecn = caps.ecn && Has(off, f::kGuestEcn);
  caps.uso = false;
  caps_now_ = caps;
  if (sink_) sink_->SetPortCaps(port_, &caps_now_);
}

void NetDevice::ApplyOperatorActions() {
  const int link = link_request_.exchange(-1);
  bool changed = false;
  if (link >= 0 && (link == 1) != link_up_) {
    link_up_ = link == 1;
    changed = true;
  }
  if (announce_request_.exchange(false)) {
    if (active_ && Has(ctrl_.features, f::kGuestAnnounce) && has_ctrl_) {
      ctrl_.announce = true;
      changed = true;
    } else {
      BroadcastRarp(active_ ? ctrl_.filter.mac : opts_.mac);
    }
  }
  if (const uint64_t r = rarp_request_.exchange(0)) BroadcastRarp(r & 0xffffffffffffULL);
  if (changed) NotifyConfigChanged();
}

void NetDevice::SetLink(bool up) {
  link_request_.store(up ? 1 : 0);
  inbox_->Wake();
}

void NetDevice::Announce() {
  announce_request_.store(true);
  inbox_->Wake();
}

absl::Status NetDevice::SetMtu(uint16_t mtu) {
  if (mtu < 68 || mtu > opts_.mtu)
    return absl::InvalidArgumentError(absl::StrCat("net: MTU ", mtu, " is not 68..", opts_.mtu));
  mtu_.store(mtu);
  return absl::OkStatus();
}

void NetDevice::SendRarp(const uint8_t mac[6]) {
  // From the transport's thread: the device sends it from its own.
  rarp_request_.store(net::MacFromBytes(mac) | (uint64_t{1} << 63));
  inbox_->Wake();
}

void NetDevice::BroadcastRarp(net::Mac mac) {
  // A RARP request (RFC 903) as QEMU's announce sends it: broadcast, from
  // the guest's MAC, asking for its own address.
  net::Frame fr;
  fr.data.assign(60, 0);
  uint8_t* d = fr.data.data();
  uint8_t m[6];
  net::MacToBytes(mac, m);
  std::memset(d, 0xff, 6);
  std::memcpy(d + 6, m, 6);
  d[12] = 0x80;
  d[13] = 0x35;  // RARP
  d[15] = 1;     // Ethernet
  d[16] = 0x08;  // IPv4
  d[18] = 6;
  d[19] = 4;
  d[21] = 3;     // reverse request
  std::memcpy(d + 22, m, 6);
  std::memcpy(d + 32, m, 6);
  SendToNetwork(std::move(fr));
  FlushTx();
}

void NetDevice::SendToNetwork(net::Frame&& f) {
  tx_batch_.push_back(std::move(f));
  if (tx_batch_.size() >= kBatch) FlushTx();
}

void NetDevice::FlushTx() {
  if (tx_batch_.empty()) return;
  if (sink_) {
    sink_->Send(port_, tx_batch_);
  } else {
    BumpOwned(unplugged_, tx_batch_.size());
  }
  // Buffers the switch did not keep (no port wanted the frame, or it
  // copied it) serve the next frames: no allocation per frame.
  for (net::Frame& f : tx_batch_)
    if (f.data.capacity() > 0 && f.data.capacity() <= 4096 && tx_pool_.size() < 2 * kBatch)
      tx_pool_.push_back(std::move(f.data));
  tx_batch_.clear();
}

void NetDevice::DrainTx(uint16_t pair) {
  DeviceQueue* qp = ctx_.queues[net::TxQueue(pair)].get();
  if (!qp) return;
  DeviceQueue& q = *qp;
  q.DisableNotifications();
  uint32_t budget = kTxBudget;
  uint64_t tx_n = 0, tx_b = 0;
  struct Flush {
    NetDevice* d;
    uint64_t& n;
    uint64_t& b;
    ~Flush() {
      BumpOwned(d->counters_.tx_packets, n);
      BumpOwned(d->counters_.tx_bytes, b);
    }
  } flush_counts{this, tx_n, tx_b};
  // Chains are taken a few at a time and their frames prefetched before
  // they are copied: the guest's CPU just wrote them, and a copy that waits
  // for each line in turn costs more than the rest of the path.
  constexpr uint32_t kAhead = 16;
  std::array<DescriptorChain, kAhead> ahead;
  for (;;) {
    PopStatus st = PopStatus::kEmpty;
    for (;;) {
      uint32_t n = 0;
      while (n < kAhead && budget > 0 && (st = q.Pop(ahead[n])) == PopStatus::kChain) {
        --budget;
        for (const Segment& sg : ahead[n].readable())
          if (sg.host) {
            __builtin_prefetch(sg.host);
            if (sg.len > 64) __builtin_prefetch(sg.host + 64);
          }
        ++n;
      }
      if (n == 0) break;
      for (uint32_t k = 0; k < n; ++k) {
        DescriptorChain& chain = ahead[k];
        if (st == PopStatus::kError) {  // an earlier chain faulted: the queue is broken
          q.AddUsed(std::move(chain), 0);
          continue;
        }
        const uint32_t total = chain.readable_bytes();
        net::Drop why = net::Drop::kNone;
        net::Frame fr;
        if (!tx_pool_.empty()) {
          fr.data = std::move(tx_pool_.back());
          tx_pool_.pop_back();
        }
        if (total < hdr_size_ + net::kEthHeader) {
          why = net::Drop::kShort;
        } else if (total - hdr_size_ > net::kMaxGsoFrame) {
          why = net::Drop::kOversize;
        } else {
          uint8_t h[net::kHdrSize] = {};
          fr.data.resize(total - hdr_size_);
          if (chain.Read(0, h, hdr_size_) != RingError::kNone ||
              chain.Read(hdr_size_, fr.data.data(), fr.data.size()) != RingError::kNone) {
            q.AddUsed(std::move(chain), 0);  // a faulted chain breaks the queue
            st = PopStatus::kError;
            continue;
          }
          std::memcpy(&fr.hdr, h, sizeof fr.hdr);
          if (hdr_size_ < net::kHdrSize) fr.hdr.num_buffers = 0;
          why = net::CheckTxHeader(fr.hdr, ctrl_.features, FrameMtu(), fr.data);
        }
        q.AddUsed(std::move(chain), 0);
        if (why != net::Drop::kNone) {
          Count(why);
          continue;
        }
        if (!link_up_) {
          BumpOwned(link_down_drops_, 1);
          continue;
        }
        ++tx_n;
        tx_b += fr.data.size();
        if (fr.hdr.gso_type != net::kGsoNone) BumpOwned(tx_gso_, 1);
        if (usable_pairs_ > 1) steer_[net::FlowHash(fr.data) & 0xff] = static_cast<uint8_t>(pair);
        SendToNetwork(std::move(fr));
      }
      if (st != PopStatus::kChain) break;
      if (budget == 0) break;
    }
    ctx_.Publish(q);
    if (st == PopStatus::kError || q.broken()) return;
    if (budget == 0) {
      // Leave the rest for the next turn so other queues and devices run.
      if (pair < 32) tx_more_ |= 1u << pair;
      inbox_->Wake();
      return;
    }
    if (!q.EnableNotifications()) return;
    q.DisableNotifications();
  }
}

bool NetDevice::DeliverRx() {
  bool did = false;
  std::vector<bool> touched(usable_pairs_, false);
  uint32_t budget = kRxBudget;
  for (;;) {
    if (budget == 0) {
      // Bounded work per turn: come back after the loop's other devices.
      inbox_->Wake();
      break;
    }
    --budget;
    if (rx_head_ == rx_pending_.size()) {
      rx_pending_.clear();
      rx_head_ = 0;
      taken_.clear();
      if (inbox_->Take(&taken_, kBatch) == 0) break;
      for (net::Frame& fr : taken_) {
        if (!link_up_) {
          BumpOwned(link_down_drops_, 1);
          continue;
        }
        if (!ctrl_.filter.Accepts(fr.data)) {
          Count(net::Drop::kFiltered);
          continue;
        }
        const net::Drop why = net::AdaptForReceiver(fr, caps_now_, &rx_pending_);
        if (why != net::Drop::kNone) Count(why);
      }
      if (rx_pending_.empty()) continue;
    }
    const net::Frame& fr = rx_pending_[rx_head_];
    uint16_t pair = 0;
    if (ctrl_.pairs > 1) {
      pair = steer_[net::FlowHash(fr.data) & 0xff];
      if (pair >= ctrl_.pairs) pair = static_cast<uint16_t>(net::FlowHash(fr.data) % ctrl_.pairs);
    }
    const Put r = PutFrame(pair, fr);
    if (r == Put::kNoBuffers || r == Put::kBroken) {
      // Wait for the guest's next receive buffers (its kick brings us back);
      // frames meanwhile wait in the inbox, bounded.
      inbox_->Ack();
      break;
    }
    touched[pair] = true;
    did = true;
    ++rx_head_;
  }
  for (uint16_t p = 0; p < usable_pairs_; ++p)
    if (touched[p] && ctx_.queues[net::RxQueue(p)]) ctx_.Publish(*ctx_.queues[net::RxQueue(p)]);
  return did;
}

NetDevice::Put NetDevice::PutFrame(uint16_t pair, const net::Frame& fr) {
  DeviceQueue* qp = ctx_.queues[net::RxQueue(pair)].get();
  if (!qp || qp->broken()) return Put::kBroken;
  DeviceQueue& q = *qp;
  std::vector<DescriptorChain>& held = held_[pair];
  const uint64_t need = uint64_t{hdr_size_} + fr.data.size();
  auto capacity = [&] {
    uint64_t c = 0;
    for (const auto& ch : held) c += ch.writable_bytes();
    return c;
  };
  // Gather receive buffers: one chain, or (MRG_RXBUF) as many as the frame needs.
  for (;;) {
    if (!held.empty() && (!mrg_ || capacity() >= need)) break;
    DescriptorChain c;
    PopStatus st = q.Pop(c);
    if (st == PopStatus::kEmpty) {
      if (q.EnableNotifications()) continue;  // buffers arrived meanwhile
      return Put::kNoBuffers;
    }
    if (st == PopStatus::kError) return Put::kBroken;
    if (c.writable_bytes() < hdr_size_) {
      // Not even room for the header (§5.1.6.3.1): give it back empty.
      Count(net::Drop::kRxNoBuffer);
      q.AddUsed(std::move(c), 0);
      continue;
    }
    held.push_back(std::move(c));
    if (held.size() > q.size()) return Put::kBroken;  // cannot happen: the ring bounds it
  }
  q.DisableNotifications();
  if (!mrg_ && held[0].writable_bytes() < need) {
    // §5.1.6.3: without MRG_RXBUF the frame must fit one buffer. Drop it;
    // the buffer stays for the next frame.
    Count(net::Drop::kRxNoBuffer);
    return Put::kDropped;
  }
  // Header then data, each buffer but the last filled completely.
  net::Hdr h = fr.hdr;
  h.num_buffers = static_cast<uint16_t>(held.size());
  uint8_t hb[net::kHdrSize];
  std::memcpy(hb, &h, sizeof hb);
  uint64_t written = 0;  // of header + data
  absl::InlinedVector<uint32_t, 8> lens;  // bytes written per buffer used
  bool fault = false;
  for (auto& c : held) {
    if (written == need) break;
    const uint64_t room = std::min<uint64_t>(c.writable_bytes(), need - written);
    uint64_t done = 0;
    while (done < room && !fault) {
      const uint64_t pos = written + done;
      uint64_t n;
      RingError e;
      if (pos < hdr_size_) {
        n = std::min<uint64_t>(hdr_size_ - pos, room - done);
        e = c.Write(done, hb + pos, n);
      } else {
        n = room - done;
        e = c.Write(done, fr.data.data() + (pos - hdr_size_), n);
      }
      fault = e != RingError::kNone;
      if (!fault) done += n;
    }
    written += done;
    lens.push_back(static_cast<uint32_t>(done));
    if (fault) break;
  }
  const size_t used = lens.size();
  if (!fault && mrg_ && used != held.size()) {
    // The header said every held buffer; it is the ones used.
    h.num_buffers = static_cast<uint16_t>(used);
    std::memcpy(hb, &h, sizeof hb);
    fault = held[0].Write(0, hb, hdr_size_) != RingError::kNone;
  }
  for (size_t i = 0; i < used; ++i) q.AddUsed(std::move(held[i]), lens[i]);
  // Buffers gathered but not needed (a capacity check counted them) stay held.
  std::vector<DescriptorChain> rest;
  for (size_t i = used; i < held.size(); ++i) rest.push_back(std::move(held[i]));
  held = std::move(rest);
  if (fault) return Put::kBroken;
  BumpOwned(counters_.rx_packets, 1);
  BumpOwned(counters_.rx_bytes, fr.data.size());
  if (fr.hdr.gso_type != net::kGsoNone) BumpOwned(rx_gso_, 1);
  return Put::kDone;
}

void NetDevice::ProcessCtrl() {
  DeviceQueue* qp = ctx_.queues[ctrl_queue_].get();
  if (!qp) return;
  DeviceQueue& q = *qp;
  std::vector<uint8_t> cmd;
  const bool announce_before = ctrl_.announce;
  for (uint32_t n = 0; n < kMaxCtrlChains; ++n) {
    DescriptorChain c;
    const PopStatus st = q.Pop(c);
    if (st != PopStatus::kChain) break;
    if (c.writable_bytes() < 1) {
      // No room for the ack: not a command the device can answer.
      q.AddUsed(std::move(c), 0);
      q.Fail(RingError::kBadRequest);
      BumpOwned(ctrl_err_, 1);
      break;
    }
    uint8_t ack = net::kCtrlErr;
    if (c.readable_bytes() <= kMaxCtrlCommand) {
      cmd.resize(c.readable_bytes());
      if (c.Read(0, cmd.data(), cmd.size()) == RingError::kNone) {
        const uint16_t pairs_before = ctrl_.pairs;
        const uint64_t offloads_before = ctrl_.guest_offloads;
        ack = HandleNetCtrl(ctrl_, cmd);
        if (ctrl_.pairs != pairs_before) steer_.fill(0);
        if (ctrl_.guest_offloads != offloads_before) UpdateCaps();
      }
    }
    BumpOwned((ack == net::kCtrlOk ? ctrl_ok_ : ctrl_err_), 1);
    c.Write(0, &ack, 1);
    q.AddUsed(std::move(c), 1);
  }
  ctx_.Publish(q);
  if (!q.broken() && ctrl_.filter.mac != net::MacFromBytes(config_mac_)) net::MacToBytes(ctrl_.filter.mac, config_mac_);
  if (announce_before && !ctrl_.announce) NotifyConfigChanged();
}

void NetDevice::AppendCounters(std::vector<std::pair<std::string, uint64_t>>* out) const {
  auto get = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  out->push_back({"rx_packets", get(counters_.rx_packets)});
  out->push_back({"rx_bytes", get(counters_.rx_bytes)});
  out->push_back({"tx_packets", get(counters_.tx_packets)});
  out->push_back({"tx_bytes", get(counters_.tx_bytes)});
  out->push_back({"rx_gso_frames", get(rx_gso_)});  // delivered whole to a guest that takes TSO
  out->push_back({"tx_gso_frames", get(tx_gso_)});  // sent by the guest as TSO frames
  for (size_t i = 1; i < drops_.size(); ++i) {
    const auto d = static_cast<net::Drop>(i);
    if (d == net::Drop::kRxFull) continue;
    out->push_back({absl::StrCat("drop_", net::DropName(d)), get(drops_[i])});
  }
  out->push_back({"drop_rx_full", inbox_->drops()});
  out->push_back({"drop_link_down", get(link_down_drops_)});
  out->push_back({"drop_unplugged", get(unplugged_)});
  out->push_back({"drop_no_driver", get(no_driver_drops_)});
  out->push_back({"ctrl_ok", get(ctrl_ok_)});
  out->push_back({"ctrl_err", get(ctrl_err_)});
}

}  // namespace vioport
