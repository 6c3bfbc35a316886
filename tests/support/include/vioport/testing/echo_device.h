// SPDX-License-Identifier: Apache-2.0
// A test device: for each chain it writes the readable bytes, each XORed with
// a per-queue key, into the writable part (so a driver can verify every byte).
// Processes inline on notify, or holds chains in flight when told to.
#pragma once

#include <vector>

#include "absl/synchronization/mutex.h"
#include "vioport/core/device.h"

namespace vioport::testing {

struct EchoOptions {
  uint64_t features = feature::kCoreSupported;
  uint16_t num_queues = 1;
  uint16_t max_queue_size = 1024;
  uint64_t refuse_features = 0;  // CheckFeatures fails if any of these is acked
  bool hold = false;             // pop but do not complete (ReleaseHeld() completes)
  DeviceId device_id = static_cast<DeviceId>(0xFFFF);  // test-only id; set to pose as a real type
};

inline uint8_t EchoKey(uint16_t queue) { return static_cast<uint8_t>(0xA5 ^ queue); }

class EchoDevice final : public VirtioDevice {
 public:
  static constexpr uint32_t kConfigSize = 16;  // le32 value @0, le32 scratch @4, 8 bytes id @8
  explicit EchoDevice(EchoOptions o = {}) : opts_(o) {}

  DeviceId device_id() const override { return opts_.device_id; }
  uint64_t device_features() const override { return opts_.features; }
  uint16_t num_queues() const override { return opts_.num_queues; }
  uint16_t max_queue_size() const override { return opts_.max_queue_size; }
  uint32_t config_size() const override { return kConfigSize; }
  void ReadConfig(uint32_t offset, std::span<uint8_t> out) override;
  void WriteConfig(uint32_t offset, std::span<const uint8_t> in) override;
  absl::Status CheckFeatures(uint64_t acked) override;
  absl::Status Activate(ActivateContext ctx) override;
  ActivateContext Reset() override;
  void QueueNotify(uint16_t queue) override;

  // Device-initiated config change (generation bump + config interrupt).
  void ChangeConfig(uint32_t value);
  void set_hold(bool hold);
  size_t held() const;
  // Completes every held chain.
  void ReleaseHeld();
  bool active() const;
  uint64_t completed() const;
  uint64_t activations() const { return activations_; }

 private:
  void Process(DeviceQueue& q, DescriptorChain&& chain) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  EchoOptions opts_;
  mutable absl::Mutex mu_;
  ActivateContext ctx_ ABSL_GUARDED_BY(mu_);
  bool active_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::pair<uint16_t, DescriptorChain>> held_ ABSL_GUARDED_BY(mu_);
  uint8_t config_[kConfigSize] = {};
  uint64_t completed_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t activations_ = 0;
};

}  // namespace vioport::testing
