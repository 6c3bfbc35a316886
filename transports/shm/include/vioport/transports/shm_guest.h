// SPDX-License-Identifier: Apache-2.0
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
#include "vioport/core/mmio.h"

namespace vioport {

struct ShmGuestOptions {
  std::string socket_path;
  uint64_t memory_bytes = 64 << 20;  // the whole region, register page included
  uint32_t mmio_version = 2;         // 1: legacy register map (raw register access only)
  absl::Duration connect_timeout = absl::Seconds(5);
};

class ShmDriverTransport final : public mmio::MmioMirrorDriver {
 public:
  static absl::StatusOr<std::unique_ptr<ShmDriverTransport>> Connect(const ShmGuestOptions& options);
  ~ShmDriverTransport() override;

  // DriverTransport.
  // DriverTransport (registers and configuration: MmioMirrorDriver).
  uint32_t GetDeviceId() override { return device_id_; }
  void Notify(uint16_t queue, uint32_t data) override;
  DmaAllocator& dma() override { return *dma_; }
  uint64_t SupportedTransportFeatures() override;
  bool WaitForInterrupt(uint16_t queue, absl::Duration timeout) override;

  // A register write: sent, then the device's answer awaited.
  bool WriteRegister(uint32_t offset, uint32_t value, uint32_t size = 4) override;

  uint32_t device_id() const { return device_id_; }
  uint16_t num_queues() const { return static_cast<uint16_t>(kick_.size()); }
  bool connected() const { return !dead_.load(std::memory_order_acquire); }
  // Why the connection ended (empty while connected).
  std::string disconnect_reason() const;
  uint8_t* region() { return map_; }
  uint64_t region_size() const { return size_; }

 private:
  ShmDriverTransport() = default;
  bool gone() const override { return dead_.load(); }
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
