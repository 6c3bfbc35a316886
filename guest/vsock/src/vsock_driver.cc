// SPDX-License-Identifier: Apache-2.0
#include "vioport/guest/vsock_driver.h"

#include <algorithm>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"

namespace vioport {

namespace f = vsock::feature;
using feature::Bit;

namespace {
constexpr uint32_t kSmallSlot = 64;            // a header, no payload
constexpr uint32_t kMediumSlot = 4096 + 64;    // a header and up to 4 KiB
constexpr uint32_t kEventSlots = 8;
constexpr uint32_t kEventSlot = 16;
constexpr size_t kPendingLimit = 4096;         // control packets waiting for a transmit slot
constexpr size_t kPendingBytes = 1 << 20;      // data waiting for a slot before Send waits
}  // namespace

VsockDriver::VsockDriver(DriverTransport& transport) : drv_(transport) {
  std::random_device rd;
  next_port_ = 49152 + rd() % 16384;
}

VsockDriver::~VsockDriver() {
  if (drv_.num_queues() > 0) drv_.Reset();
  FreeAll();
}

void VsockDriver::FreeAll() {
  DmaAllocator& dma = drv_.transport().dma();
  for (DmaBuffer* b : {&rx_, &ev_, &tx_[0].buf, &tx_[1].buf, &tx_[2].buf}) {
    if (b->host) dma.Free(*b);
    *b = {};
  }
  for (TxPool& p : tx_) p.free.clear();
  tx_in_flight_ = 0;
}

absl::Status VsockDriver::Init(uint64_t ring_features, const VsockDriverOptions& o) {
  ready_ = false;
  failed_ = absl::OkStatus();
  if (drv_.num_queues() > 0) drv_.Reset();
  FreeAll();
  EndAll();
  if (o.rx_buffers == 0 || o.tx_slots == 0 || o.rx_buffer < vsock::kHdrSize + 256 || o.max_packet == 0 ||
      o.max_packet > vsock::kMaxPayload || o.buf_alloc < o.max_packet)
    return absl::InvalidArgumentError("vsock: buffer options out of range");
  opts_ = o;
  spin_ = o.wait.spin;
  DriverTransport& t = drv_.transport();
  if (t.GetDeviceId() != static_cast<uint32_t>(DeviceId::kVsock))
    return absl::FailedPreconditionError(absl::StrCat("vsock: the device is type ", t.GetDeviceId(), ", not vsock (19)"));
  const uint64_t offered = t.GetDeviceFeatures();
  uint64_t want = ring_features | Bit(f::kStream);
  if (o.seqpacket) want |= Bit(f::kSeqpacket);
  DriverOptions d;
  d.device_id = static_cast<uint32_t>(DeviceId::kVsock);
  d.wanted_features = want;
  d.num_queues = vsock::kNumQueues;
  d.queue_size = o.queue_size;
  if (absl::Status s = drv_.Init(d); !s.ok()) return s;
  seqpacket_ = drv_.has_feature(f::kSeqpacket);
  // A device offering neither type acts as STREAM (§5.10.3) unless it says
  // NO_IMPLIED_STREAM; one without STREAM here cannot carry what we use.
  if (feature::Has(offered, f::kNoImpliedStream) && !drv_.has_feature(f::kStream) && !seqpacket_)
    return absl::FailedPreconditionError("vsock: the device offers no socket type");
  auto cid = drv_.ReadConfigValue<uint64_t>(0);
  if (!cid.ok()) return cid.status();
  guest_cid_ = *cid & 0xffffffffULL;  // the upper 32 bits are reserved
  if (!vsock::IsGuestCid(guest_cid_))
    return absl::FailedPreconditionError(absl::StrCat("vsock: the device's guest_cid ", guest_cid_, " is not a guest CID"));

  DmaAllocator& dma = t.dma();
  DriverQueue& rxq = drv_.queue(vsock::kRxQueue);
  DriverQueue& txq = drv_.queue(vsock::kTxQueue);
  const uint32_t rx_count = std::min(o.rx_buffers, rxq.size());
  rx_slot_ = (o.rx_buffer + 63) & ~63u;
  auto rx = dma.Allocate(size_t{rx_count} * rx_slot_, 64, Access::kWrite);
  if (!rx.ok()) return rx.status();
  rx_ = *rx;
  auto ev = dma.Allocate(size_t{kEventSlots} * kEventSlot, 64, Access::kWrite);
  if (!ev.ok()) return ev.status();
  ev_ = *ev;
  // Pages in flight count on some transports (a Xen back-end maps each one
  // and holds at most 1024): 64 of the 4 KiB kind (128 pages), 16 of the
  // 64 KiB kind (272), headers in a few pages.
  const uint32_t counts[3] = {txq.size(), std::min(64u, txq.size()), std::min(o.tx_slots, txq.size())};
  const uint32_t sizes[3] = {kSmallSlot, kMediumSlot, (vsock::kHdrSize + o.max_packet + 63) & ~63u};
  for (int k = 0; k < 3; ++k) {
    auto b = dma.Allocate(size_t{counts[k]} * sizes[k], 64, Access::kRead);
    if (!b.ok()) return b.status();
    tx_[k].buf = *b;
    tx_[k].slot = sizes[k];
    for (uint32_t i = counts[k]; i > 0; --i) tx_[k].free.push_back(i - 1);
  }
  for (uint32_t i = 0; i < rx_count; ++i)
    if (absl::Status s = PostRx(i); !s.ok()) return s;
  for (uint32_t i = 0; i < std::min(kEventSlots, drv_.queue(vsock::kEventQueue).size()); ++i)
    if (absl::Status s = PostEvent(i); !s.ok()) return s;
  // Interrupts stay off while we run the queues; Poll arms them to sleep.
  for (uint16_t q = 0; q < vsock::kNumQueues; ++q) drv_.queue(q).DisableInterrupts();
  drv_.Kick(vsock::kRxQueue);
  drv_.Kick(vsock::kEventQueue);
  ready_ = true;
  return absl::OkStatus();
}

absl::Status VsockDriver::PostRx(uint32_t slot) {
  DriverBuffer b{rx_.device_addr + uint64_t{slot} * rx_slot_, rx_slot_, true};
  DriverQueue& q = drv_.queue(vsock::kRxQueue);
  const AddStatus a = q.Add({&b, 1}, slot);
  if (a == AddStatus::kBroken) return RingErrorStatus(q.error(), 0);
  if (a != AddStatus::kOk) return absl::InternalError(absl::StrCat("vsock: receive buffer ", slot, " not queued"));
  return absl::OkStatus();
}

absl::Status VsockDriver::PostEvent(uint32_t slot) {
  DriverBuffer b{ev_.device_addr + uint64_t{slot} * kEventSlot, sizeof(vsock::Event), true};
  DriverQueue& q = drv_.queue(vsock::kEventQueue);
  const AddStatus a = q.Add({&b, 1}, slot);
  if (a == AddStatus::kBroken) return RingErrorStatus(q.error(), 0);
  if (a != AddStatus::kOk) return absl::InternalError("vsock: event buffer not queued");
  return absl::OkStatus();
}

// ---- connections -------------------------------------------------------------

VsockDriver::Conn* VsockDriver::Find(ConnId id) {
  auto it = conns_.find(id);
  return it == conns_.end() ? nullptr : it->second.get();
}
const VsockDriver::Conn* VsockDriver::Find(ConnId id) const {
  auto it = conns_.find(id);
  return it == conns_.end() ? nullptr : it->second.get();
}

void VsockDriver::Forget(ConnId id) {
  Conn* c = Find(id);
  if (!c) return;
  auto k = by_key_.find({c->ep->local_port(), c->ep->peer_cid(), c->ep->peer_port()});
  if (k != by_key_.end() && k->second == id) by_key_.erase(k);
  conns_.erase(id);
}

// Every connection ends as reset: the device was reset, lost, or said
// TRANSPORT_RESET. Their ids stay valid (reads report the reset) until
// closed; what was waiting to go belongs to them and is dropped.
void VsockDriver::EndAll() {
  for (auto& [id, c] : conns_) {
    if (!c->ep->closed() || !c->eof) c->reset = true;
    c->eof = true;
  }
  by_key_.clear();
  pending_.clear();
  pending_bytes_ = 0;
}

void VsockDriver::TransportReset() {
  ++stats_.transport_resets;
  EndAll();
  // §5.10.6.4: the driver re-reads guest_cid (a migration may change it).
  if (auto cid = drv_.ReadConfigValue<uint64_t>(0); cid.ok() && vsock::IsGuestCid(*cid & 0xffffffffULL))
    guest_cid_ = *cid & 0xffffffffULL;
}

uint32_t VsockDriver::EphemeralPort(uint64_t cid, uint32_t port) {
  for (;;) {
    const uint32_t p = next_port_++;
    if (next_port_ < 1024 || next_port_ == 0xffffffffu) next_port_ = 1024;
    if (by_key_.count({p, cid, port}) || listeners_.count({p, vsock::kTypeStream}) ||
        listeners_.count({p, vsock::kTypeSeqpacket}))
      continue;
    return p;
  }
}

void VsockDriver::Queue(vsock::Packet&& p) {
  if (p.hdr.op == vsock::kOpRst) {
    if (pending_.size() >= kPendingLimit) return;  // a peer flooding us: its RSTs go later or never
    ++stats_.rst_sent;
  }
  pending_bytes_ += p.payload.size();
  pending_.push_back(std::move(p));
}

void VsockDriver::QueueRst(const vsock::Hdr& to) {
  if (to.op == vsock::kOpRst) return;
  vsock::Packet p;
  p.hdr = vsock::RstFor(to);
  p.hdr.src_cid = guest_cid_;
  Queue(std::move(p));
}

void VsockDriver::Apply(Conn& c, vsock::Endpoint::Output& out) {
  for (vsock::Packet& p : out.to_peer) Queue(std::move(p));
  out.to_peer.clear();
  if (!out.to_host.empty() || out.eom) {
    c.rx_bytes += out.to_host.size();
    c.rx.push_back(Chunk{std::move(out.to_host), 0, out.eom});
    out.to_host.clear();
  }
  if (out.host_eof) c.eof = true;
  if (out.refused != vsock::Refusal::kNone) c.reset = true;
  if (c.ep->closed()) {
    c.eof = true;
    auto k = by_key_.find({c.ep->local_port(), c.ep->peer_cid(), c.ep->peer_port()});
    if (k != by_key_.end() && Find(k->second) == &c) by_key_.erase(k);
  }
}

void VsockDriver::Dispatch(const vsock::Hdr& h, std::span<const uint8_t> payload) {
  ++stats_.rx_packets;
  stats_.rx_bytes += payload.size();
  if ((h.dst_cid & 0xffffffffULL) != guest_cid_) {
    ++stats_.bad_packets;
    return;
  }
  const bool type_ok = h.type == vsock::kTypeStream || (h.type == vsock::kTypeSeqpacket && seqpacket_);
  if (!type_ok) {
    ++stats_.bad_packets;  // no RST: one of that type would not be believed either
    return;
  }
  auto k = by_key_.find({h.dst_port, h.src_cid, h.src_port});
  if (k != by_key_.end()) {
    Conn* c = Find(k->second);
    const bool was_eof = c->eof;
    vsock::Endpoint::Output out;
    c->ep->OnPacket(h, payload, &out);
    if (h.op == vsock::kOpRst) {
      ++stats_.rst_received;
      if (!was_eof) c->reset = true;
    }
    Apply(*c, out);
    return;
  }
  if (h.op == vsock::kOpRst) {
    ++stats_.rst_received;
    return;
  }
  if (h.op != vsock::kOpRequest) return QueueRst(h);  // no such connection
  auto l = listeners_.find({h.dst_port, h.type});
  if (l == listeners_.end() || l->second.backlog.size() >= opts_.backlog || conns_.size() >= opts_.max_conns) {
    ++stats_.refused;
    return QueueRst(h);
  }
  auto c = std::make_unique<Conn>();
  c->ep = std::make_unique<vsock::Endpoint>(guest_cid_, h.dst_port, h.src_cid, h.src_port, h.type,
                                            vsock::Endpoint::Limits{opts_.buf_alloc, opts_.max_packet});
  c->listen_port = h.dst_port;
  Queue(c->ep->Accept(h));
  const ConnId id = next_id_++;
  by_key_[{h.dst_port, h.src_cid, h.src_port}] = id;
  conns_[id] = std::move(c);
  l->second.backlog.push_back(id);
}

// ---- queues --------------------------------------------------------------------

absl::Status VsockDriver::Check() const {
  if (!ready_) return failed_.ok() ? absl::FailedPreconditionError("vsock: the device is not initialised") : failed_;
  return absl::OkStatus();
}

AddStatus VsockDriver::PutInSlot(int k, const vsock::Hdr& h, std::span<const uint8_t> payload) {
  TxPool& pool = tx_[k];
  const uint32_t slot = pool.free.back();
  uint8_t* dst = pool.buf.host + size_t{slot} * pool.slot;
  std::memcpy(dst, &h, vsock::kHdrSize);
  if (!payload.empty()) std::memcpy(dst + vsock::kHdrSize, payload.data(), payload.size());
  DriverBuffer b{pool.buf.device_addr + uint64_t{slot} * pool.slot, static_cast<uint32_t>(vsock::kHdrSize + payload.size()),
                 false};
  const AddStatus a = drv_.queue(vsock::kTxQueue).Add({&b, 1}, (uint64_t{static_cast<uint32_t>(k)} << 32) | slot);
  if (a != AddStatus::kOk) return a;
  pool.free.pop_back();
  ++tx_in_flight_;
  ++stats_.tx_packets;
  stats_.tx_bytes += payload.size();
  return a;
}

absl::Status VsockDriver::Flush() {
  DriverQueue& q = drv_.queue(vsock::kTxQueue);
  bool added = false;
  while (!pending_.empty()) {
    vsock::Packet& p = pending_.front();
    const size_t need = vsock::kHdrSize + p.payload.size();
    const int k = need <= kSmallSlot ? 0 : need <= kMediumSlot ? 1 : 2;
    if (tx_[k].free.empty()) break;
    p.hdr.len = static_cast<uint32_t>(p.payload.size());
    const AddStatus a = PutInSlot(k, p.hdr, p.payload);
    if (a == AddStatus::kFull) break;
    if (a == AddStatus::kBroken) return RingErrorStatus(q.error(), 0);
    if (a != AddStatus::kOk) return absl::InternalError("vsock: transmit buffer not queued");
    pending_bytes_ -= p.payload.size();
    pending_.pop_front();
    added = true;
  }
  if (added) drv_.Kick(vsock::kTxQueue);
  return absl::OkStatus();
}

absl::StatusOr<size_t> VsockDriver::SendDirect(Conn& c, std::span<const uint8_t> data) {
  DriverQueue& q = drv_.queue(vsock::kTxQueue);
  size_t done = 0;
  bool added = false;
  while (done < data.size() && q.num_free() > 0) {
    size_t want = std::min<size_t>({data.size() - done, c.ep->peer_free(), opts_.max_packet});
    if (want == 0) break;
    int k = vsock::kHdrSize + want <= kMediumSlot ? 1 : 2;
    if (k == 2 && tx_[2].free.empty()) {
      k = 1;  // the big slots are all in flight: a medium one carries part
      want = kMediumSlot - vsock::kHdrSize;
    }
    if (tx_[k].free.empty()) break;
    vsock::Hdr h;
    const size_t n = c.ep->NextRw(want, &h);
    if (n == 0) break;
    const AddStatus a = PutInSlot(k, h, data.subspan(done, n));
    if (a == AddStatus::kBroken) return RingErrorStatus(q.error(), 0);
    if (a != AddStatus::kOk) return absl::InternalError("vsock: transmit buffer not queued");
    done += n;
    added = true;
  }
  if (added) drv_.Kick(vsock::kTxQueue);
  return done;
}

absl::Status VsockDriver::Reap() {
  uint64_t token;
  uint32_t len;
  DriverQueue& txq = drv_.queue(vsock::kTxQueue);
  for (;;) {
    const UsedStatus u = txq.GetUsed(&token, &len);
    if (u == UsedStatus::kBroken) return RingErrorStatus(txq.error(), 0);
    if (u == UsedStatus::kNone) break;
    const uint64_t k = token >> 32;
    if (k >= tx_.size() || (token & 0xffffffff) >= tx_[k].buf.size / tx_[k].slot)
      return absl::DataLossError(absl::StrCat("vsock: device returned unknown transmit buffer ", token));
    tx_[k].free.push_back(static_cast<uint32_t>(token));
    --tx_in_flight_;
    ++tx_reaped_;
  }
  DriverQueue& rxq = drv_.queue(vsock::kRxQueue);
  const uint64_t rx_count = rx_.size / rx_slot_;
  bool reposted = false;
  for (;;) {
    const UsedStatus u = rxq.GetUsed(&token, &len);
    if (u == UsedStatus::kBroken) return RingErrorStatus(rxq.error(), 0);
    if (u == UsedStatus::kNone) break;
    if (token >= rx_count || len > rx_slot_)
      return absl::DataLossError(absl::StrCat("vsock: device returned receive buffer ", token, " with ", len, " bytes"));
    const uint8_t* base = rx_.host + token * rx_slot_;
    vsock::Hdr h;
    if (len < vsock::kHdrSize) {
      ++stats_.bad_packets;
    } else {
      std::memcpy(&h, base, vsock::kHdrSize);
      if (h.len > len - vsock::kHdrSize) ++stats_.bad_packets;
      else Dispatch(h, {base + vsock::kHdrSize, h.len});
    }
    if (absl::Status s = PostRx(static_cast<uint32_t>(token)); !s.ok()) return s;
    reposted = true;
  }
  if (reposted) drv_.Kick(vsock::kRxQueue);
  DriverQueue& evq = drv_.queue(vsock::kEventQueue);
  bool reset = false, ev_posted = false;
  for (;;) {
    const UsedStatus u = evq.GetUsed(&token, &len);
    if (u == UsedStatus::kBroken) return RingErrorStatus(evq.error(), 0);
    if (u == UsedStatus::kNone) break;
    if (token >= kEventSlots) return absl::DataLossError("vsock: device returned an unknown event buffer");
    vsock::Event e{};
    if (len >= sizeof e) {
      std::memcpy(&e, ev_.host + token * kEventSlot, sizeof e);
      if (e.id == vsock::kEventTransportReset) reset = true;
    }
    if (absl::Status s = PostEvent(static_cast<uint32_t>(token)); !s.ok()) return s;
    ev_posted = true;
  }
  if (ev_posted) drv_.Kick(vsock::kEventQueue);
  if (reset) TransportReset();
  return absl::OkStatus();
}

void VsockDriver::AdaptSpin(absl::Duration waited) {
  // As a halt-polling guest does: a wait a longer spin would have caught
  // doubles the spin (up to kMaxSpin); a longer one halves it (down to
  // the configured spin). Only for a reader waiting for data: a sender
  // waiting for credit or slots spins the configured time, since there its
  // spinning takes the core the device needs to make them.
  if (waited < kMaxSpin)
    spin_ = std::min(kMaxSpin, std::max(spin_ * 2, absl::Microseconds(10)));
  else
    spin_ = std::max(opts_.wait.spin, spin_ / 2);
}

absl::Status VsockDriver::Poll(absl::Duration timeout) { return PollFor(timeout, false); }

absl::Status VsockDriver::PollFor(absl::Duration timeout, bool adaptive) {
  if (absl::Status s = Check(); !s.ok()) return s;
  auto fail = [&](absl::Status s) {
    ready_ = false;
    failed_ = s;
    EndAll();
    return s;
  };
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + timeout;
  const absl::Time spin_end = start + std::min(timeout, adaptive ? spin_ : opts_.wait.spin);
  DriverTransport& t = drv_.transport();
  DriverQueue& rxq = drv_.queue(vsock::kRxQueue);
  DriverQueue& txq = drv_.queue(vsock::kTxQueue);
  const uint64_t before = stats_.rx_packets + stats_.transport_resets;
  // Any transmit buffer back counts, even when Flush refilled its slot at
  // once: the re-check below must not sleep after taking used entries (the
  // interrupt it armed for was for entries it has now seen).
  const uint64_t reaped_before = tx_reaped_;
  auto progressed = [&] {
    return stats_.rx_packets + stats_.transport_resets != before || tx_reaped_ != reaped_before;
  };
  for (uint32_t i = 0;; ++i) {
    if (absl::Status s = Reap(); !s.ok()) return fail(s);
    if (absl::Status s = Flush(); !s.ok()) return fail(s);
    if (progressed()) return absl::OkStatus();
    if ((i & 15) == 15) {
      if (drv_.NeedsReset()) return fail(absl::UnavailableError("vsock: device needs reset"));
      if (absl::Now() >= spin_end) break;
    }
  }
  // Sleep: on the transmit queue when data waits for a slot, else on the
  // receive queue (credit, answers and data all arrive there).
  for (;;) {
    const bool tx_blocked = !pending_.empty();
    DriverQueue& q = tx_blocked ? txq : rxq;
    q.EnableInterrupts();
    if (tx_blocked) rxq.EnableInterrupts();
    // Re-check after arming: what arrived before it raised no interrupt.
    if (absl::Status s = Reap(); !s.ok()) return fail(s);
    if (absl::Status s = Flush(); !s.ok()) return fail(s);
    if (progressed()) {
      rxq.DisableInterrupts();
      txq.DisableInterrupts();
      if (adaptive) AdaptSpin(absl::Now() - start);
      return absl::OkStatus();
    }
    if (drv_.NeedsReset()) return fail(absl::UnavailableError("vsock: device needs reset"));
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      rxq.DisableInterrupts();
      txq.DisableInterrupts();
      if (adaptive) AdaptSpin(now - start);
      return absl::OkStatus();
    }
    // Both matter when transmit is blocked: wake often to look at both.
    const absl::Duration wait = std::min(deadline - now, tx_blocked ? absl::Milliseconds(1) : absl::Milliseconds(100));
    const bool woken = t.WaitForInterrupt(q.index(), wait);
    if (tx_blocked) {
      ++stats_.tx_waits;
      if (!woken && wait == absl::Milliseconds(1)) {
        // Timed out: a slow device, or one that gave buffers back and
        // raised no interrupt for them (a wake-up lost).
        ++stats_.tx_wait_timeouts;
        const uint64_t reaped = tx_reaped_;
        if (absl::Status s = Reap(); !s.ok()) return fail(s);
        if (tx_reaped_ != reaped) ++stats_.tx_wait_missed;
      }
    }
  }
}

// ---- sockets --------------------------------------------------------------------

absl::StatusOr<VsockDriver::ConnId> VsockDriver::Connect(uint64_t cid, uint32_t port, uint16_t type, absl::Duration timeout) {
  if (absl::Status s = Check(); !s.ok()) return s;
  if (type != vsock::kTypeStream && type != vsock::kTypeSeqpacket)
    return absl::InvalidArgumentError(absl::StrCat("vsock: socket type ", type));
  if (type == vsock::kTypeSeqpacket && !seqpacket_)
    return absl::FailedPreconditionError("vsock: the device did not negotiate SEQPACKET");
  if (cid == guest_cid_ || !(cid == vsock::kCidHost || vsock::IsGuestCid(cid)))
    return absl::InvalidArgumentError(absl::StrCat("vsock: cannot connect to CID ", cid));
  if (conns_.size() >= opts_.max_conns)
    return absl::ResourceExhaustedError(absl::StrCat("vsock: ", conns_.size(), " connections open (the limit)"));
  const uint32_t local = EphemeralPort(cid, port);
  auto c = std::make_unique<Conn>();
  c->ep = std::make_unique<vsock::Endpoint>(guest_cid_, local, cid, port, type,
                                            vsock::Endpoint::Limits{opts_.buf_alloc, opts_.max_packet});
  Queue(c->ep->Connect());
  const ConnId id = next_id_++;
  by_key_[{local, cid, port}] = id;
  vsock::Endpoint* ep = c->ep.get();
  conns_[id] = std::move(c);
  const absl::Time deadline = absl::Now() + timeout;
  while (ep->state() == vsock::Endpoint::State::kRequestSent) {
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      vsock::Endpoint::Output out;
      ep->Reset(&out);
      Apply(*conns_[id], out);
      Forget(id);
      (void)Flush();
      return absl::DeadlineExceededError(absl::StrCat("vsock: no answer from ", cid, ":", port));
    }
    if (absl::Status s = Poll(deadline - now); !s.ok()) {
      Forget(id);
      return s;
    }
    if (!Find(id)) return absl::UnavailableError("vsock: connection lost");
  }
  if (ep->closed()) {
    Forget(id);
    return absl::UnavailableError(absl::StrCat("vsock: ", cid, ":", port, " refused the connection (RST)"));
  }
  return id;
}

absl::Status VsockDriver::Listen(uint32_t port, uint16_t type) {
  if (type != vsock::kTypeStream && type != vsock::kTypeSeqpacket)
    return absl::InvalidArgumentError(absl::StrCat("vsock: socket type ", type));
  if (!listeners_.emplace(std::make_pair(port, type), Listener{}).second)
    return absl::AlreadyExistsError(absl::StrCat("vsock: port ", port, " already listens"));
  return absl::OkStatus();
}

absl::Status VsockDriver::Unlisten(uint32_t port, uint16_t type) {
  auto l = listeners_.find({port, type});
  if (l == listeners_.end()) return absl::NotFoundError(absl::StrCat("vsock: port ", port, " does not listen"));
  for (ConnId id : l->second.backlog) Close(id, absl::ZeroDuration());
  listeners_.erase(l);
  return absl::OkStatus();
}

absl::StatusOr<VsockDriver::ConnId> VsockDriver::Accept(uint32_t port, uint16_t type, absl::Duration timeout) {
  auto l = listeners_.find({port, type});
  if (l == listeners_.end()) return absl::NotFoundError(absl::StrCat("vsock: port ", port, " does not listen"));
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    std::deque<ConnId>& backlog = listeners_[{port, type}].backlog;
    while (!backlog.empty()) {
      const ConnId id = backlog.front();
      backlog.pop_front();
      Conn* c = Find(id);
      if (c && !c->reset) return id;
      Forget(id);  // reset before it was accepted
    }
    const absl::Time now = absl::Now();
    if (now >= deadline) return absl::DeadlineExceededError(absl::StrCat("vsock: no connection to port ", port));
    if (absl::Status s = Poll(deadline - now); !s.ok()) return s;
  }
}

absl::StatusOr<size_t> VsockDriver::Send(ConnId id, std::span<const uint8_t> data, bool eom, absl::Duration timeout) {
  Conn* c = Find(id);
  if (!c) return absl::NotFoundError("vsock: no such connection");
  if (c->ep->type() != vsock::kTypeSeqpacket) eom = false;
  const absl::Time deadline = absl::Now() + timeout;
  size_t done = 0;
  bool first = true;
  while (first || done < data.size()) {
    if (absl::Status s = Check(); !s.ok()) return s;
    c = Find(id);
    if (!c || c->ep->closed() || c->reset) break;
    if (pending_.empty() && c->ep->type() == vsock::kTypeStream && done < data.size()) {
      // Nothing queued ahead of it: the data goes straight into the ring.
      absl::StatusOr<size_t> n = SendDirect(*c, data.subspan(done));
      if (!n.ok()) return n.status();
      done += *n;
      if (*n > 0) first = false;
      if (done == data.size()) break;
    }
    if (pending_bytes_ < kPendingBytes) {
      vsock::Endpoint::Output out;
      const size_t n = c->ep->Send(data.subspan(done), eom, &out);
      const bool made = !out.to_peer.empty();
      Apply(*c, out);
      done += n;
      if (made) first = false;
      if (absl::Status s = Flush(); !s.ok()) return s;
      if (!first && done == data.size()) break;
    }
    const absl::Time now = absl::Now();
    if (now >= deadline) break;
    if (absl::Status s = Poll(deadline - now); !s.ok()) return s;
  }
  if (done == 0 && !data.empty()) {
    c = Find(id);
    if (!c || c->ep->closed() || c->reset) return absl::FailedPreconditionError("vsock: the connection ended");
    return absl::DeadlineExceededError("vsock: no credit from the peer in time");
  }
  return done;
}

absl::StatusOr<VsockDriver::RecvResult> VsockDriver::Recv(ConnId id, std::span<uint8_t> buf, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    Conn* c = Find(id);
    if (!c) return absl::NotFoundError("vsock: no such connection");
    RecvResult r;
    const bool seq = c->ep->type() == vsock::kTypeSeqpacket;
    bool whole = !seq;
    if (seq)
      for (const Chunk& ch : c->rx)
        if (ch.eom) whole = true;
    if (!c->rx.empty() && (whole || c->eof)) {
      size_t taken = 0;  // bytes leaving the receive queue (credit)
      while (!c->rx.empty()) {
        Chunk& ch = c->rx.front();
        const size_t avail = ch.data.size() - ch.off;
        const size_t n = std::min(avail, buf.size() - r.bytes);
        if (n) std::memcpy(buf.data() + r.bytes, ch.data.data() + ch.off, n);
        r.bytes += n;
        if (seq) {
          // A message is read whole or cut: what does not fit is dropped.
          if (n < avail) r.truncated = true;
          taken += avail;
          const bool end = ch.eom;
          c->rx.pop_front();
          if (end) {
            r.eom = true;
            break;
          }
        } else {
          ch.off += n;
          taken += n;
          if (ch.off == ch.data.size()) c->rx.pop_front();
          if (r.bytes == buf.size()) break;
        }
      }
      c->rx_bytes -= taken;
      vsock::Endpoint::Output out;
      c->ep->Consumed(static_cast<uint32_t>(taken), &out);
      Apply(*c, out);
      if (absl::Status s = Flush(); !s.ok()) return s;
      return r;
    }
    if (c->eof || c->reset) {
      r.eof = true;
      r.reset = c->reset;
      return r;
    }
    if (absl::Status s = Check(); !s.ok()) return s;
    const absl::Time now = absl::Now();
    if (now >= deadline) return r;
    if (absl::Status s = PollFor(deadline - now, /*adaptive=*/true); !s.ok()) return s;
  }
}

absl::Status VsockDriver::Shutdown(ConnId id, uint32_t flags) {
  Conn* c = Find(id);
  if (!c) return absl::NotFoundError("vsock: no such connection");
  vsock::Endpoint::Output out;
  c->ep->Shutdown(flags, &out);
  Apply(*c, out);
  if (!ready_) return absl::OkStatus();
  return Flush();
}

void VsockDriver::Close(ConnId id, absl::Duration linger) {
  Conn* c = Find(id);
  if (!c) return;
  if (ready_ && !c->ep->closed() && !c->reset) {
    vsock::Endpoint::Output out;
    c->ep->Shutdown(vsock::kShutdownBoth, &out);
    Apply(*c, out);
    const absl::Time deadline = absl::Now() + linger;
    // Wait for what we sent to go and for the peer's RST.
    for (;;) {
      c = Find(id);
      if (!c || c->ep->closed() || !ready_) break;
      const absl::Time now = absl::Now();
      if (now >= deadline) break;
      if (!Poll(deadline - now).ok()) break;
    }
    c = Find(id);
    if (c && !c->ep->closed()) {
      vsock::Endpoint::Output rst;
      c->ep->Reset(&rst);
      Apply(*c, rst);
    }
    if (ready_) (void)Flush();
  }
  Forget(id);
}

size_t VsockDriver::readable(ConnId id) const {
  const Conn* c = Find(id);
  return c ? c->rx_bytes : 0;
}

bool VsockDriver::ended(ConnId id) const {
  const Conn* c = Find(id);
  return !c || ((c->eof || c->reset) && c->rx.empty());
}

uint32_t VsockDriver::send_credit(ConnId id) const {
  const Conn* c = Find(id);
  return c ? c->ep->peer_free() : 0;
}

}  // namespace vioport
