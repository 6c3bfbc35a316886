// SPDX-License-Identifier: Apache-2.0
// In-process transport: the guest side's DriverTransport calls the device
// side's DeviceController directly, over one host buffer both sides see.
// The smallest complete transport: tests, the demo, and a porter's template.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "vioport/core/device_controller.h"
#include "vioport/core/buffer_dma.h"
#include "vioport/core/driver.h"

namespace vioport {


struct LoopbackOptions {
  size_t memory_bytes = 64 << 20;
  uint64_t memory_base = 0x40000000;  // guest-physical address of the buffer
  bool copy_only = false;             // device reaches memory only by copies
  uint64_t transport_features = feature::kCoreSupported;
  std::string name;  // what the controller's log lines call the device ("" : its default)
};

class LoopbackTransport final : public DriverTransport {
 public:
  LoopbackTransport(std::shared_ptr<VirtioDevice> device, const LoopbackOptions& options = {});
  ~LoopbackTransport() override;

  // DriverTransport
  uint32_t GetDeviceId() override { return static_cast<uint32_t>(ctl_->device().device_id()); }
  uint8_t GetStatus() override { return ctl_->status(); }
  void SetStatus(uint8_t s) override;
  uint64_t GetDeviceFeatures() override { return ctl_->offered_features(); }
  void SetDriverFeatures(uint64_t f) override;
  uint32_t GetConfigGeneration() override { return ctl_->config_generation(); }
  void ReadConfig(uint32_t offset, std::span<uint8_t> out) override;
  void WriteConfig(uint32_t offset, std::span<const uint8_t> in) override;
  uint32_t GetQueueMaxSize(uint16_t q) override { return ctl_->QueueMaxSize(q); }
  absl::Status EnableQueue(uint16_t q, uint32_t size, uint64_t desc, uint64_t driver, uint64_t device) override;
  void Notify(uint16_t q, uint32_t data) override;
  DmaAllocator& dma() override { return *dma_; }
  uint64_t SupportedTransportFeatures() override { return opts_.transport_features; }
  // The device runs inside Notify() and on this thread: a device with
  // asynchronous completions (event_fd() >= 0) is waited for and run here.
  // Reports whether an interrupt was raised since the last call.
  bool WaitForInterrupt(uint16_t queue, absl::Duration timeout) override;

  DeviceController& controller() { return *ctl_; }
  // The device side's view of memory (a CopyOnlyMemory when copy_only).
  GuestMemory& device_memory() { return *device_mem_; }
  uint8_t* host_base() { return buffer_.data(); }
  // Interrupt-out, seen from the guest: counters and optional callbacks.
  uint64_t queue_interrupts() const { return irq_->queue.load(); }
  uint64_t config_interrupts() const { return irq_->config.load(); }
  void OnQueueInterrupt(std::function<void(uint16_t)> f) { irq_->on_queue = std::move(f); }
  void OnConfigInterrupt(std::function<void()> f) { irq_->on_config = std::move(f); }
  // Register writes the device side refused (they are errors on a real bus too).
  const std::vector<std::string>& refused() const { return refused_; }

 private:
  struct Irq : InterruptSink {
    std::atomic<uint64_t> queue{0}, config{0};
    std::function<void(uint16_t)> on_queue;
    std::function<void()> on_config;
    void QueueInterrupt(uint16_t q) override {
      queue++;
      if (on_queue) on_queue(q);
    }
    void ConfigInterrupt() override {
      config++;
      if (on_config) on_config();
    }
  };
  void Check(const absl::Status& s);

  LoopbackOptions opts_;
  std::vector<uint8_t> buffer_;
  std::unique_ptr<BufferDmaAllocator> dma_;
  std::shared_ptr<GuestMemory> device_mem_;
  std::shared_ptr<Irq> irq_;
  std::unique_ptr<DeviceController> ctl_;
  std::vector<std::string> refused_;
  std::atomic<uint64_t> irq_seen_{0};  // several guest threads may wait at once
};

}  // namespace vioport
