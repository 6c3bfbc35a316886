// SPDX-License-Identifier: Apache-2.0
// virtio-rng (§5.4) device: fills device-writable buffers from getrandom(2).
// Used by vios; runs over any transport.
#pragma once

#include <atomic>

#include "absl/synchronization/mutex.h"
#include "vioport/core/device.h"

namespace vioport {

class RngDevice final : public VirtioDevice {
 public:
  DeviceId device_id() const override { return DeviceId::kEntropy; }
  uint64_t device_features() const override { return feature::kCoreSupported; }
  uint16_t num_queues() const override { return 1; }
  uint32_t config_size() const override { return 0; }
  void ReadConfig(uint32_t, std::span<uint8_t>) override {}
  absl::Status Activate(ActivateContext ctx) override;
  ActivateContext Reset() override;
  void QueueNotify(uint16_t queue) override;
  absl::Status CanHandOver() const override { return absl::OkStatus(); }  // reopened from its spec

  uint64_t bytes_served() const { return bytes_.load(std::memory_order_relaxed); }
  void AppendCounters(std::vector<std::pair<std::string, uint64_t>>* out) const override {
    out->emplace_back("bytes", bytes_served());
  }

 private:
  absl::Mutex mu_;
  ActivateContext ctx_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> bytes_{0};
};

}  // namespace vioport
