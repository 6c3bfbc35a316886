// SPDX-License-Identifier: Apache-2.0
#include "vioport/core/device_queue.h"

#include <atomic>

#include "vioport/core/packed_device_queue.h"
#include "vioport/core/spec.h"
#include "vioport/core/split_device_queue.h"

namespace vioport {
namespace {
// Unique per queue object, so a chain popped before a reset can never be
// mistaken for one of the queue that replaced it.
std::atomic<uint32_t> g_next_epoch{1};
}  // namespace

RingError DeviceQueue::Create(const QueueConfig& cfg, GuestMemory* mem, QueueErrorHandler on_error,
                              std::unique_ptr<DeviceQueue>* out) {
  if (feature::Has(cfg.features, feature::kRingPacked)) {
    auto q = std::make_unique<PackedDeviceQueue>(cfg, mem, std::move(on_error));
    if (RingError e = q->Init(); e != RingError::kNone) return e;
    *out = std::move(q);
  } else {
    auto q = std::make_unique<SplitDeviceQueue>(cfg, mem, std::move(on_error));
    if (RingError e = q->Init(); e != RingError::kNone) return e;
    *out = std::move(q);
  }
  (*out)->epoch_ = g_next_epoch.fetch_add(1, std::memory_order_relaxed);
  return RingError::kNone;
}

void DeviceQueue::Fail(RingError e) {
  if (error_ != RingError::kNone || e == RingError::kNone) return;
  error_ = e;
  if (on_error_) on_error_(cfg_.index, e);
}

void DeviceQueue::FillChainHeader(DescriptorChain& c, uint16_t id, uint16_t slots) {
  c.Clear();
  c.mem_ = mem_;
  c.id_ = id;
  c.ring_slots_ = slots;
  c.queue_ = cfg_.index;
  c.owner_ = this;
  c.epoch_ = epoch_;
}

RingError DeviceQueue::AppendSegment(DescriptorChain& c, uint64_t addr, uint32_t len, bool writable,
                                     uint64_t& total) {
  // §2.7.4.2: writable descriptors come after readable ones.
  if (!writable && c.num_readable_ != c.segs_.size()) return RingError::kReadableAfterWritable;
  total += len;
  if (total > UINT32_MAX) return RingError::kLengthOverflow;
  Access acc = writable ? Access::kWrite : Access::kRead;
  uint8_t* host = nullptr;
  if (mem_->zero_copy()) {
    host = mem_->Map(addr, len, acc);
    // Not contiguous in the host is fine (copies handle it); unreachable is not.
    if (!host && !mem_->Accessible(addr, len, acc)) return RingError::kAddressOutOfRange;
  }
  // Built in place: a temporary copied with wide loads after narrow stores
  // stalls store forwarding on this, the hottest line of a pop.
  Segment& seg = c.segs_.emplace_back();
  seg.addr = addr;
  seg.len = len;
  seg.device_writable = writable;
  seg.host = host;
  if (writable) {
    c.writable_bytes_ += len;
  } else {
    c.num_readable_++;
    c.readable_bytes_ += len;
  }
  return RingError::kNone;
}

void DeviceQueue::SetStats(QueueStats* stats, LatencyHistogram* latency) {
  stats_ = stats;
  latency_ = stats ? latency : nullptr;
  pop_ns_.assign(latency_ ? cfg_.size : 0, 0);
}

bool DeviceQueue::AcceptUsed(DescriptorChain& chain, uint32_t& written) {
  if (chain.owner_ != this || chain.epoch_ != epoch_) {  // stale (from before a reset) or foreign
    chain.Clear();  // consumed either way: the caller keeps no pointers into old memory
    return false;
  }
  const uint16_t id = chain.id_;
  in_flight_--;
  RingError fault = chain.fault_;
  if (written > chain.writable_bytes_) written = chain.writable_bytes_;
  const uint32_t readable = chain.readable_bytes_;
  chain.Clear();
  if (broken()) return false;
  if (fault != RingError::kNone) {
    Fail(fault);
    return false;
  }
  counters_.completed++;
  counters_.bytes_in += readable;
  counters_.bytes_out += written;
  if (stats_) {
    BumpOwned(stats_->requests);
    BumpOwned(stats_->bytes_in, readable);
    BumpOwned(stats_->bytes_out, written);
    if (latency_ && id < pop_ns_.size() && pop_ns_[id]) latency_->Record(DeviceStats::NowNs() - pop_ns_[id]);
  }
  return true;
}

}  // namespace vioport
