// SPDX-License-Identifier: Apache-2.0
// The device side of one virtqueue, split or packed, as backends see it.
// Created by the DeviceController at DRIVER_OK; validates at use (§2.7, §2.8).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "vioport/core/descriptor_chain.h"
#include "vioport/core/device_stats.h"
#include "vioport/core/guest_memory.h"
#include "vioport/core/ring_error.h"
#include "vioport/core/spec.h"

namespace vioport {

// Byte order of a split ring's fields: little for VERSION_1, the guest's
// native order for legacy (0.9.5) drivers.
enum class RingByteOrder : uint8_t { kLittle, kBig };

struct QueueConfig {
  uint16_t index = 0;
  uint32_t size = 0;          // entries; split: power of 2 <= 32768; packed: 1..32768
  uint64_t desc_addr = 0;     // descriptor area / descriptor ring
  uint64_t driver_addr = 0;   // avail ring / driver event suppression
  uint64_t device_addr = 0;   // used ring / device event suppression
  uint64_t features = 0;      // negotiated; selects packed, indirect, event idx, in-order
  RingByteOrder byte_order = RingByteOrder::kLittle;
};

// Called once when a queue breaks; the controller sets DEVICE_NEEDS_RESET.
using QueueErrorHandler = std::function<void(uint16_t queue, RingError error)>;

enum class PopStatus : uint8_t { kChain, kEmpty, kError };

struct QueueCounters {
  uint64_t popped = 0;
  uint64_t completed = 0;
  uint64_t bytes_in = 0;   // device-readable bytes of the completed chains
  uint64_t bytes_out = 0;  // bytes written into them (the used lengths)
  uint64_t publishes = 0;
  uint64_t interrupts_wanted = 0;
  uint64_t interrupts_suppressed = 0;
};

class DeviceQueue {
 public:
  // Validates the ring location (size, alignment, reachability) and builds the
  // queue; nothing in the rings themselves is read yet.
  static RingError Create(const QueueConfig& cfg, GuestMemory* mem, QueueErrorHandler on_error,
                          std::unique_ptr<DeviceQueue>* out);

  virtual ~DeviceQueue() = default;

  // Next available chain. kError means the queue is now broken (error() says
  // why); it will not read or write the rings again.
  virtual PopStatus Pop(DescriptorChain& out) = 0;

  // Returns a chain with `written` bytes written into its writable part
  // (clamped to what it offered: the used len never over-reports). Not
  // visible to the driver until Publish(). A chain whose copies faulted
  // breaks the queue. A chain from before a reset is dropped.
  virtual void AddUsed(DescriptorChain&& chain, uint32_t written) = 0;

  // Makes added used entries visible with one index store; returns true if
  // the driver asked to be interrupted (flags / used_event / packed suppression).
  virtual bool Publish() = 0;

  // Ask the driver to notify on new buffers. Returns true if buffers arrived
  // meanwhile (re-check after a full barrier, so no wake-up is lost).
  // In polled mode notifications stay off and this returns false: whoever
  // polls the queue will call the device again.
  bool EnableNotifications() { return polled_ ? false : DoEnableNotifications(); }
  void DisableNotifications() { DoDisableNotifications(); }

  // Polled mode (a busy-polling device thread): the driver is asked not to
  // notify at all. Leaving it does not re-enable notifications by itself;
  // the poller must run the device once more so it re-arms them.
  void SetPolled(bool polled) {
    polled_ = polled;
    if (polled) DoDisableNotifications();
  }
  bool polled() const { return polled_; }

  // Position for save/restore (vhost-user GET/SET_VRING_BASE encoding). Used
  // entries not yet published are not part of it: Publish() before saving.
  virtual uint32_t GetBase() const = 0;
  virtual void SetBase(uint32_t base) = 0;

  // Marks the queue broken from outside (e.g. a backend found a malformed
  // request header it cannot recover from).
  void Fail(RingError e);

  bool broken() const { return error_ != RingError::kNone; }
  RingError error() const { return error_; }
  uint16_t index() const { return cfg_.index; }
  uint32_t size() const { return cfg_.size; }
  const QueueConfig& config() const { return cfg_; }
  GuestMemory* memory() const { return mem_; }
  const QueueCounters& counters() const { return counters_; }
  // Where completed requests are also counted (a device's life-long
  // per-queue totals), and, if `latency` is given, timed from pop to
  // completion. Before the first Pop.
  void SetStats(QueueStats* stats, LatencyHistogram* latency);
  // Chains popped and not yet returned.
  uint32_t in_flight() const { return in_flight_; }
  // Chains recovered from an in-flight log (a device before this one popped
  // them and never completed them) not yet popped again.
  virtual size_t resubmit_pending() const { return 0; }

 protected:
  DeviceQueue(const QueueConfig& cfg, GuestMemory* mem, QueueErrorHandler on_error)
      : cfg_(cfg), mem_(mem), on_error_(std::move(on_error)) {}

  // Common part of AddUsed: ownership/staleness/fault checks. Returns false
  // if the chain must not be written to the used ring.
  bool AcceptUsed(DescriptorChain& chain, uint32_t& written);
  void FillChainHeader(DescriptorChain& c, uint16_t id, uint16_t slots);
  // Checks and appends one buffer to a chain being built.
  RingError AppendSegment(DescriptorChain& c, uint64_t addr, uint32_t len, bool writable,
                          uint64_t& total);

  QueueConfig cfg_;
  GuestMemory* mem_;
  QueueErrorHandler on_error_;
  RingError error_ = RingError::kNone;
  virtual bool DoEnableNotifications() = 0;
  virtual void DoDisableNotifications() = 0;

  // Pop side of the timing: when chain `id` was popped (latency only).
  void MarkPopped(uint16_t id) {
    if (latency_ && id < pop_ns_.size()) pop_ns_[id] = DeviceStats::NowNs();
  }

  QueueCounters counters_;
  QueueStats* stats_ = nullptr;
  LatencyHistogram* latency_ = nullptr;
  std::vector<uint64_t> pop_ns_;  // by chain id, while timing
  bool polled_ = false;
  uint32_t in_flight_ = 0;
  uint32_t epoch_ = 0;
};

}  // namespace vioport
