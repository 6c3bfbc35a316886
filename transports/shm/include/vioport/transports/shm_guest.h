// SPDX-License-Identifier: Apache-2.0
// Guest side of the shared-memory transport: a DriverTransport that owns the
// guest's memory (a sealed memfd whose first page is the register mirror),
// sends register writes to vios over a Unix seqpacket socket and waits for
// its interrupts on eventfds (docs/transports/shm.md).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "vioport/core/buffer_dma.h"
#include "vioport/core/log.h"
#include "vioport/core/mmio.h"
#include "vioport/transports/fd.h"

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

  // DriverTransport (registers and configuration: MmioMirrorDriver).
  uint32_t GetDeviceId() override { return device_id_; }
  void Notify(uint16_t queue, uint32_t data) override;
  DmaAllocator& dma() override { return *dma_; }
  bool WaitForInterrupt(uint16_t queue, absl::Duration timeout) override;
  // A register write: sent, then the device's answer awaited.
  bool WriteRegister(uint32_t offset, uint32_t value, uint32_t size = 4) override;

  uint8_t* region() { return mem_.data(); }  // register page, then guest memory

 private:
  ShmDriverTransport() = default;
  void Lost(const std::string& why) {
    if (MarkGone(why)) VIOPORT_LOG(kWarning, "shm guest: connection to the device lost: ", why);
  }

  UniqueFd sock_, config_call_;
  SharedMemory mem_;
  uint32_t device_id_ = 0;
  std::vector<UniqueFd> kick_, call_;
  std::unique_ptr<BufferDmaAllocator> dma_;
  absl::Mutex reg_mu_;  // one register write in flight
  uint32_t seq_ = 0;
};

}  // namespace vioport
