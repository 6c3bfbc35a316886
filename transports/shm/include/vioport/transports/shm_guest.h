#pragma once

// Guest side of the shared-memory transport: a DriverTransport that owns the
// guest's memory (a sealed memfd), talks to a vios over a Unix seqpacket
// socket, and reads registers from the shared register page
// (docs/transports/shm.md).

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "vioport/core/buffer_dma.h"
#include "vioport/core/driver.h"

namespace vioport {

struct ShmGuestOptions {
  std::string socket_path;
  uint64_t memory_bytes = 64 << 20;  // the whole region, register page included
  uint32_t mmio_version = 2;         // 1: legacy register map (raw register access only)
  absl::Duration connect_timeout = absl::Seconds(5);
};

class ShmDriverTransport final : public DriverTransport {
 public:
  static absl::StatusOr<std::unique_ptr<ShmDriverTransport>> Connect(const ShmGuestOptions& options);
  ~ShmDriverTransport() override;

  // DriverTransport.
  uint32_t GetDeviceId() override { return device_id_; }
  uint8_t GetStatus() override;
  void SetStatus(uint8_t status) override;
  uint64_t GetDeviceFeatures() override;
  void SetDriverFeatures(uint64_t features) override;
  uint32_t GetConfigGeneration() override;
  void ReadConfig(uint32_t offset, std::span<uint8_t> out) override;
  void WriteConfig(uint32_t offset, std::span<const uint8_t> in) override;
  uint32_t GetQueueMaxSize(uint16_t queue) override;
  absl::Status EnableQueue(uint16_t queue, uint32_t size, uint64_t desc, uint64_t driver, uint64_t device) override;
  void Notify(uint16_t queue, uint32_t data) override;
  DmaAllocator& dma() override { return *dma_; }
  uint64_t SupportedTransportFeatures() override;
  bool WaitForInterrupt(uint16_t queue, absl::Duration timeout) override;

  // Raw register access, as a driver of real virtio-mmio hardware would do
  // it. Writes go to the device and wait for its answer; false if the device
  // ignored the write (or the connection is gone).
  uint32_t ReadRegister(uint32_t offset);
  bool WriteRegister(uint32_t offset, uint32_t value, uint32_t size = 4);

  uint32_t device_id() const { return device_id_; }
  uint16_t num_queues() const { return static_cast<uint16_t>(kick_.size()); }
  bool connected() const { return !dead_.load(std::memory_order_acquire); }
  // Why the connection ended (empty while connected).
  std::string disconnect_reason() const;
  uint8_t* region() { return map_; }
  uint64_t region_size() const { return size_; }

 private:
  ShmDriverTransport() = default;
  void MarkDead(const std::string& why);

  int sock_ = -1;
  int memfd_ = -1;
  uint8_t* map_ = nullptr;
  uint64_t size_ = 0;
  uint32_t device_id_ = 0;
  int config_call_ = -1;
  std::vector<int> kick_, call_;
  std::unique_ptr<BufferDmaAllocator> dma_;
  absl::Mutex reg_mu_;  // one register write in flight
  uint32_t seq_ = 0;
  std::atomic<bool> dead_{false};
  mutable absl::Mutex why_mu_;
  std::string why_;
};

}  // namespace vioport
