// SPDX-License-Identifier: Apache-2.0
// The driver side of one virtqueue, split or packed: makes buffers available,
// notifies, collects used buffers. Used by guest drivers over any transport.
// Does not trust the device: a used id it never handed out breaks the queue.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "vioport/core/dma.h"
#include "vioport/core/ring_error.h"
#include "vioport/core/spec.h"

namespace vioport {

struct DriverBuffer {
  uint64_t addr;  // device address (DmaBuffer::device_addr + offset)
  uint32_t len;
  bool device_writable;
};

enum class AddStatus : uint8_t { kOk, kFull, kInvalid, kBroken };
enum class UsedStatus : uint8_t { kNone, kUsed, kBroken };

struct DriverQueueOptions {
  uint16_t index = 0;
  uint32_t size = 256;
  uint64_t features = 0;  // negotiated
  // Chains of more than one buffer go through an indirect table (when
  // INDIRECT_DESC is negotiated) if they have at most this many buffers.
  uint32_t indirect_max = 32;
};

class DriverQueue {
 public:
  // Allocates the ring (and indirect tables) from `dma`, which must outlive the queue.
  static absl::StatusOr<std::unique_ptr<DriverQueue>> Create(const DriverQueueOptions& opts, DmaAllocator& dma);
  virtual ~DriverQueue() = default;

  // Device-readable buffers must come before device-writable ones.
  virtual AddStatus Add(std::span<const DriverBuffer> bufs, uint64_t token) = 0;
  // Publishes what Add() made available; true if the device wants a notification.
  virtual bool KickPrepare() = 0;
  virtual UsedStatus GetUsed(uint64_t* token, uint32_t* len) = 0;
  virtual void DisableInterrupts() = 0;
  // Re-enables used-buffer interrupts; true if used buffers are already pending.
  virtual bool EnableInterrupts() = 0;
  // After a device reset: the tokens of every buffer still outstanding.
  virtual std::vector<uint64_t> DetachUnused() = 0;
  // Notification data for VIRTIO_F_NOTIFICATION_DATA (§2.9).
  virtual uint32_t NotificationData() const = 0;

  uint32_t num_free() const { return num_free_; }
  uint32_t size() const { return opts_.size; }
  uint16_t index() const { return opts_.index; }
  bool broken() const { return error_ != RingError::kNone; }
  RingError error() const { return error_; }
  uint64_t desc_addr() const { return desc_addr_; }
  uint64_t driver_addr() const { return driver_addr_; }
  uint64_t device_addr() const { return device_addr_; }

 protected:
  DriverQueue(const DriverQueueOptions& opts, DmaAllocator& dma) : opts_(opts), dma_(dma) {}
  UsedStatus Break(RingError e) {
    if (error_ == RingError::kNone) error_ = e;
    return UsedStatus::kBroken;
  }

  DriverQueueOptions opts_;
  DmaAllocator& dma_;
  RingError error_ = RingError::kNone;
  uint32_t num_free_ = 0;
  uint64_t desc_addr_ = 0, driver_addr_ = 0, device_addr_ = 0;
};

}  // namespace vioport
