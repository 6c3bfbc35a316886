// SPDX-License-Identifier: Apache-2.0
// The guest side's transport port and the transport-agnostic driver model:
// the spec's initialisation sequence (§3.1.1), config reads with generation
// retry, DEVICE_NEEDS_RESET recovery. Guest drivers (blk, rng, ...) build on it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "vioport/core/dma.h"
#include "vioport/core/driver_queue.h"
#include "vioport/core/spec.h"

namespace vioport {

// What a porter implements on the guest side for a new hypervisor: register
// and config access, queue set-up, notify-out, and device-reachable memory.
// Interrupts come back in through WaitForInterrupt, which the guest drivers
// call when a used ring has nothing new (after polling it for a while).
class DriverTransport {
 public:
  virtual ~DriverTransport() = default;
  // The virtio device id (spec §5: 2 blk, 3 console, 4 rng, ...); 0 = none.
  virtual uint32_t GetDeviceId() = 0;
  virtual uint8_t GetStatus() = 0;
  virtual void SetStatus(uint8_t status) = 0;  // 0 resets
  virtual uint64_t GetDeviceFeatures() = 0;
  virtual void SetDriverFeatures(uint64_t features) = 0;
  virtual uint32_t GetConfigGeneration() = 0;
  virtual void ReadConfig(uint32_t offset, std::span<uint8_t> out) = 0;
  virtual void WriteConfig(uint32_t offset, std::span<const uint8_t> in) = 0;
  virtual uint32_t GetQueueMaxSize(uint16_t queue) = 0;  // 0: no such queue
  virtual absl::Status EnableQueue(uint16_t queue, uint32_t size, uint64_t desc, uint64_t driver,
                                   uint64_t device) = 0;
  // `data` is the queue index, or the notification data with NOTIFICATION_DATA.
  virtual void Notify(uint16_t queue, uint32_t data) = 0;
  virtual DmaAllocator& dma() = 0;
  // Ring/transport feature bits this transport can carry.
  virtual uint64_t SupportedTransportFeatures() = 0;

  // Interrupt-in. Waits until the device may have interrupted `queue` (used
  // buffers) or the config (a change, NEEDS_RESET), or `timeout` passes, and
  // acknowledges what it saw. Returns true if an interrupt was seen; spurious
  // wake-ups are allowed, so callers re-check their queues. Different threads
  // may wait on different queues at once. A transport whose device runs inside
  // Notify() (loopback) returns at once. Drivers that poll their used rings
  // for a while before sleeping get the lowest latency (a sleep costs tens
  // of microseconds).
  virtual bool WaitForInterrupt(uint16_t queue, absl::Duration timeout) = 0;
};

struct DriverOptions {
  uint32_t device_id = 0;        // the device type the driver is for; 0: any
  uint64_t wanted_features = 0;  // device-specific and ring bits the driver can use
  uint16_t num_queues = 1;
  uint32_t queue_size = 0;       // 0: the device's maximum (capped at 1024)
  uint32_t indirect_max = 32;
  uint32_t config_retries = 16;  // generation retries before Unavailable
};

class VirtioDriver {
 public:
  explicit VirtioDriver(DriverTransport& transport) : t_(transport) {}
  ~VirtioDriver();

  // Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK and its re-read, queues,
  // DRIVER_OK. On any failure the status gets FAILED and the error is returned.
  absl::Status Init(const DriverOptions& options);

  uint64_t features() const { return features_; }
  bool has_feature(unsigned bit) const { return feature::Has(features_, bit); }
  uint16_t num_queues() const { return static_cast<uint16_t>(queues_.size()); }
  DriverQueue& queue(uint16_t i) { return *queues_[i]; }

  // Reads with the generation check: generation, fields, generation again.
  absl::Status ReadConfig(uint32_t offset, std::span<uint8_t> out);
  template <typename T>
  absl::StatusOr<T> ReadConfigValue(uint32_t offset) {
    T v{};
    absl::Status s = ReadConfig(offset, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&v), sizeof v));
    if (!s.ok()) return s;
    return v;
  }
  void WriteConfig(uint32_t offset, std::span<const uint8_t> in) { t_.WriteConfig(offset, in); }

  // Publishes queue q's new buffers and notifies the device if it asked.
  // Returns whether a notification was sent.
  bool Kick(uint16_t q);

  bool NeedsReset() { return t_.GetStatus() & status::kDeviceNeedsReset; }
  // Resets the device and drops the queues. Returns the tokens of buffers
  // that were outstanding, per queue: they will never complete.
  std::vector<std::vector<uint64_t>> Reset();
  // Reset and Init again with the same options (NEEDS_RESET recovery).
  absl::StatusOr<std::vector<std::vector<uint64_t>>> Recover();

  DriverTransport& transport() { return t_; }

 private:
  absl::Status Fail(absl::Status why);

  DriverTransport& t_;
  DriverOptions opts_;
  uint64_t features_ = 0;
  std::vector<std::unique_ptr<DriverQueue>> queues_;
};

}  // namespace vioport
