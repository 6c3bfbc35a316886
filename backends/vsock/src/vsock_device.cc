// SPDX-License-Identifier: Apache-2.0
#include "vioport/backends/vsock_device.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "vioport/core/counters.h"

namespace vioport {

namespace f = vsock::feature;

namespace {
constexpr size_t kBatch = 64;  // packets per hand-over to the hub
}  // namespace

absl::StatusOr<std::shared_ptr<VsockDevice>> VsockDevice::Create(const VsockOptions& o) {
  if (!vsock::IsGuestCid(o.guest_cid))
    return absl::InvalidArgumentError(absl::StrCat("vsock: cid=", o.guest_cid, " is not a guest CID (3..4294967294)"));
  if (o.max_queue_size == 0 || (o.max_queue_size & (o.max_queue_size - 1)) || o.max_queue_size > 1024)
    return absl::InvalidArgumentError(absl::StrCat("vsock: queue-size=", o.max_queue_size, " is not a power of 2 up to 1024"));
  std::shared_ptr<VsockDevice> d(new VsockDevice(o));
  if (!d->inbox_->ok()) return absl::ResourceExhaustedError("vsock: eventfd failed");
  return d;
}

VsockDevice::VsockDevice(const VsockOptions& o) : opts_(o), inbox_(std::make_unique<vsock::Inbox>(o.inbox)) {}

VsockDevice::~VsockDevice() = default;

void VsockDevice::Plug(std::shared_ptr<vsock::PacketSink> sink) { sink_ = std::move(sink); }

void VsockDevice::TransportReset() {
  reset_request_.store(true);
  inbox_->Wake();
}

uint64_t VsockDevice::device_features() const {
  uint64_t v = feature::Bit(f::kStream);
  if (opts_.seqpacket) v |= feature::Bit(f::kSeqpacket);
  return v | feature::kCoreSupported;
}

void VsockDevice::ReadConfig(uint32_t offset, std::span<uint8_t> out) {
  const vsock::Config c{opts_.guest_cid};
  const auto* bytes = reinterpret_cast<const uint8_t*>(&c);
  for (size_t i = 0; i < out.size(); ++i) out[i] = offset + i < sizeof c ? bytes[offset + i] : 0;
}

absl::Status VsockDevice::Activate(ActivateContext ctx) {
  // The event queue is optional: a front-end may keep it for itself and
  // hand the device only receive and transmit (QEMU's vhost-user-vsock does:
  // it sends TRANSPORT_RESET itself). TransportReset() then has no queue to
  // use and waits, harmlessly, for one.
  for (uint16_t q : {vsock::kRxQueue, vsock::kTxQueue})
    if (q >= ctx.queues.size() || !ctx.queues[q])
      return absl::FailedPreconditionError(absl::StrCat("vsock: queue ", q, " is not enabled"));
  ctx_ = std::move(ctx);
  features_ = ctx_.features;
  tx_more_ = false;
  local_.clear();
  taken_.clear();
  taken_head_ = 0;
  offset_ = 0;
  // REQUESTs that came while no driver was there go first; other packets
  // from then were dropped (ProcessEvents), what the inbox still holds is
  // delivered (a driver answers a packet for no connection with an RST).
  taken_ = std::move(waiting_requests_);
  waiting_requests_.clear();
  // Rings that start where a driver left them (a front-end reconnected to a
  // restarted vios and set the ring bases) belong to a driver that still
  // holds connections this vios never knew: tell it (§5.10.6.4). A fresh
  // driver's transmit ring starts at 0 (packed: both wrap counters set).
  const uint32_t fresh = feature::Has(features_, feature::kRingPacked) ? 0x80008000u : 0u;
  if (ctx_.queues[vsock::kTxQueue]->GetBase() != fresh) {
    reset_request_.store(true);
    inbox_->Wake();
  }
  active_ = true;
  return absl::OkStatus();
}

ActivateContext VsockDevice::Reset() {
  Flush();
  // After the flush: the sink has every packet the driver sent before it went.
  if (active_ && sink_) sink_->DriverGone(opts_.guest_cid);
  active_ = false;
  local_.clear();
  taken_.clear();
  taken_head_ = 0;
  offset_ = 0;
  return std::move(ctx_);
}

void VsockDevice::QueueNotify(uint16_t queue) {
  if (!active_) return;
  if (queue == vsock::kTxQueue) {
    DrainTx();
    Flush();
    DeliverRx();  // the RSTs it may have made
    if (tx_more_) inbox_->Wake();
  } else if (queue == vsock::kRxQueue) {
    DeliverRx();
  } else if (queue == vsock::kEventQueue) {
    SendEvents();
  }
}

bool VsockDevice::ProcessEvents() {
  if (!active_) {
    // No driver: new connections (REQUESTs) wait, bounded, for one to come
    // up (the hub gives up on them after its timeout); the rest belong to
    // connections no driver holds any more.
    std::vector<vsock::Packet> got;
    while (inbox_->Take(&got, kBatch) > 0) {
      for (vsock::Packet& p : got) {
        if (p.hdr.op == vsock::kOpRequest && waiting_requests_.size() < kMaxWaitingRequests)
          waiting_requests_.push_back(std::move(p));
        else
          BumpOwned(no_driver_drops_);
      }
      got.clear();
    }
    return false;
  }
  bool did = false;
  if (reset_request_.load()) SendEvents();
  if (tx_more_) {
    tx_more_ = false;
    DrainTx();
    Flush();
    did = true;
  }
  did |= DeliverRx();
  if (tx_more_) inbox_->Wake();
  return did;
}

void VsockDevice::Flush() {
  if (tx_batch_.empty()) return;
  if (sink_) {
    sink_->Send(opts_.guest_cid, tx_batch_);
  } else {
    for (const vsock::Packet& p : tx_batch_) Refuse(p.hdr, vsock::Refusal::kNoRoute);
  }
  tx_batch_.clear();
}

void VsockDevice::Refuse(const vsock::Hdr& h, vsock::Refusal why) {
  BumpOwned(refused_[static_cast<size_t>(why)]);
  if (h.op == vsock::kOpRst) return;  // never an RST for an RST
  if (local_.size() >= kMaxLocal) {
    BumpOwned(rst_dropped_);
    return;
  }
  vsock::Packet rst;
  rst.hdr = vsock::RstFor(h);
  // The RST comes from the address the guest wrote to, for the guest's own
  // address (not a spoofed one: that would make the device answer for
  // another guest).
  rst.hdr.dst_cid = opts_.guest_cid;
  local_.push_back(std::move(rst));
}

void VsockDevice::DrainTx() {
  DeviceQueue& q = *ctx_.queues[vsock::kTxQueue];
  q.DisableNotifications();
  uint32_t budget = kTxBudget;
  for (;;) {
    DescriptorChain c;
    PopStatus st = PopStatus::kEmpty;
    while (budget > 0 && (st = q.Pop(c)) == PopStatus::kChain) {
      --budget;
      const uint32_t readable = c.readable_bytes();
      vsock::Hdr h;
      if (readable < vsock::kHdrSize) {
        // Not even a header: nothing to answer, a counted drop.
        BumpOwned(short_chains_);
        q.AddUsed(std::move(c), 0);
        continue;
      }
      if (c.Read(0, &h, sizeof h) != RingError::kNone) {
        q.AddUsed(std::move(c), 0);  // a faulted chain broke the queue
        st = PopStatus::kError;
        break;
      }
      const vsock::Refusal why = vsock::CheckGuestPacket(h, opts_.guest_cid, features_, readable - vsock::kHdrSize);
      if (why != vsock::Refusal::kNone) {
        q.AddUsed(std::move(c), 0);
        Refuse(h, why);
        continue;
      }
      if (h.op == vsock::kOpRw && sink_) {
        const std::span<const uint8_t> view = PayloadInPlace(c, h.len);
        if (!view.empty()) {
          Flush();  // what came before goes first
          if (sink_->SendInPlace(opts_.guest_cid, h, view)) {
            q.AddUsed(std::move(c), 0);
            BumpOwned(tx_packets_);
            BumpOwned(tx_bytes_, h.len);
            BumpOwned(tx_in_place_);
            continue;
          }
        }
      }
      vsock::Packet p;
      p.hdr = h;
      p.payload.resize(h.len);
      if (h.len > 0 && c.Read(vsock::kHdrSize, p.payload.data(), h.len) != RingError::kNone) {
        q.AddUsed(std::move(c), 0);
        st = PopStatus::kError;
        break;
      }
      q.AddUsed(std::move(c), 0);
      BumpOwned(tx_packets_);
      BumpOwned(tx_bytes_, h.len);
      tx_batch_.push_back(std::move(p));
      if (tx_batch_.size() >= kBatch) Flush();
    }
    ctx_.Publish(q);
    if (st == PopStatus::kError || q.broken()) return;
    if (budget == 0) {
      // The rest next turn, after the loop's other devices: the caller
      // wakes the inbox once it is done taking from it (a Take clears the
      // wake-up, so waking here would be lost to DeliverRx's).
      tx_more_ = true;
      return;
    }
    if (!q.EnableNotifications()) return;
    q.DisableNotifications();
  }
}

std::span<const uint8_t> VsockDevice::PayloadInPlace(const DescriptorChain& c, uint32_t len) {
  uint64_t start = 0;
  for (const Segment& seg : c.readable()) {
    const uint64_t end = start + seg.len;
    if (vsock::kHdrSize < end) {
      if (!seg.host || vsock::kHdrSize + uint64_t{len} > end) return {};
      return {seg.host + (vsock::kHdrSize - start), len};
    }
    start = end;
  }
  return {};
}

VsockDevice::Put VsockDevice::PutNext(vsock::Packet& p, size_t* offset) {
  DeviceQueue& q = *ctx_.queues[vsock::kRxQueue];
  if (q.broken()) return Put::kBroken;
  DescriptorChain c;
  for (;;) {
    const PopStatus st = q.Pop(c);
    if (st == PopStatus::kError) return Put::kBroken;
    if (st == PopStatus::kEmpty) {
      if (q.EnableNotifications()) continue;  // buffers arrived meanwhile
      return Put::kNoBuffers;
    }
    if (c.writable_bytes() >= vsock::kHdrSize) break;
    // Not even room for a header: back, empty, counted.
    BumpOwned(small_rx_buffers_);
    q.AddUsed(std::move(c), 0);
  }
  q.DisableNotifications();
  const size_t left = p.payload.size() - *offset;
  const size_t part = std::min<size_t>(left, c.writable_bytes() - vsock::kHdrSize);
  vsock::Hdr h = p.hdr;
  h.len = static_cast<uint32_t>(part);
  // A SEQPACKET message cut in pieces ends (EOM, EOR) with its last one.
  if (h.op == vsock::kOpRw && part < left) h.flags &= ~(vsock::kSeqEom | vsock::kSeqEor);
  bool fault = c.Write(0, &h, sizeof h) != RingError::kNone;
  if (!fault && part > 0) fault = c.Write(vsock::kHdrSize, p.payload.data() + *offset, part) != RingError::kNone;
  q.AddUsed(std::move(c), fault ? 0 : static_cast<uint32_t>(vsock::kHdrSize + part));
  if (fault) return Put::kBroken;
  *offset += part;
  BumpOwned(rx_bytes_, part);
  if (*offset == p.payload.size()) BumpOwned(rx_packets_);
  return Put::kDone;
}

bool VsockDevice::DeliverRx() {
  bool did = false;
  uint32_t budget = kRxBudget;
  DeviceQueue& q = *ctx_.queues[vsock::kRxQueue];
  while (budget > 0) {
    vsock::Packet* p = nullptr;
    bool from_local = false;
    // The device's own RSTs first: they close what the guest is waiting on.
    if (!local_.empty()) {
      p = &local_.front();
      from_local = true;
    } else {
      if (taken_head_ == taken_.size()) {
        taken_.clear();
        taken_head_ = 0;
        if (inbox_->Take(&taken_, kBatch) == 0) break;
      }
      p = &taken_[taken_head_];
    }
    const Put r = PutNext(*p, &offset_);
    if (r != Put::kDone) {
      // Wait for the guest's next receive buffers (its kick brings us
      // back); packets meanwhile wait in the inbox, bounded.
      inbox_->Ack();
      break;
    }
    --budget;
    did = true;
    if (offset_ < p->payload.size()) continue;  // more pieces of this packet
    offset_ = 0;
    if (from_local) {
      BumpOwned(rst_sent_);
      local_.pop_front();
    } else {
      ++taken_head_;
    }
  }
  if (budget == 0) inbox_->Wake();
  if (did) ctx_.Publish(q);
  return did;
}

void VsockDevice::SendEvents() {
  if (!reset_request_.load()) return;
  if (vsock::kEventQueue >= ctx_.queues.size() || !ctx_.queues[vsock::kEventQueue]) return;  // not ours
  DeviceQueue& q = *ctx_.queues[vsock::kEventQueue];
  DescriptorChain c;
  for (;;) {
    const PopStatus st = q.Pop(c);
    if (st != PopStatus::kChain) return;  // no buffer yet: the driver's kick brings us back
    if (c.writable_bytes() >= sizeof(vsock::Event)) break;
    q.AddUsed(std::move(c), 0);
    ctx_.Publish(q);
  }
  const vsock::Event e{vsock::kEventTransportReset};
  const bool fault = c.Write(0, &e, sizeof e) != RingError::kNone;
  q.AddUsed(std::move(c), fault ? 0 : sizeof e);
  ctx_.Publish(q);
  if (fault) return;
  reset_request_.store(false);
  BumpOwned(events_sent_);
}

void VsockDevice::AppendCounters(std::vector<std::pair<std::string, uint64_t>>* out) const {
  auto get = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  out->push_back({"rx_packets", get(rx_packets_)});
  out->push_back({"rx_bytes", get(rx_bytes_)});
  out->push_back({"tx_packets", get(tx_packets_)});
  out->push_back({"tx_bytes", get(tx_bytes_)});
  out->push_back({"tx_in_place", get(tx_in_place_)});
  out->push_back({"rst_sent", get(rst_sent_)});
  for (size_t i = 1; i < refused_.size(); ++i)
    out->push_back({absl::StrCat("refused_", vsock::RefusalName(static_cast<vsock::Refusal>(i))), get(refused_[i])});
  out->push_back({"drop_short_chain", get(short_chains_)});
  out->push_back({"drop_rx_full", inbox_->drops()});
  out->push_back({"drop_rst", get(rst_dropped_)});
  out->push_back({"drop_no_driver", get(no_driver_drops_)});
  out->push_back({"rx_buffers_too_small", get(small_rx_buffers_)});
  out->push_back({"events_sent", get(events_sent_)});
}

}  // namespace vioport
