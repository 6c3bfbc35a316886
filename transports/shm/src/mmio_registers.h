#pragma once

// virtio-mmio register semantics on top of a DeviceController: what a write
// does, and the values a read returns. Shared-memory specifics (the mirror
// page, messages) live in shm_server.cc.

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "vioport/core/device_controller.h"

namespace vioport::shm {

class MmioRegisters {
 public:
  MmioRegisters(DeviceController& ctl, uint32_t version);

  // A driver write of `size` bytes (1, 2 or 4) at `offset`. Writes the spec
  // says a device ignores (wrong width, read-only or unknown register, a
  // register of the other mmio version, a refused controller transition)
  // return an error naming it; the device state is unchanged.
  absl::Status Write(uint32_t offset, uint32_t size, uint32_t value);

  // The value a 32-bit read of a control register (offset < 0x100) returns.
  uint32_t Read(uint32_t offset) const;

  uint32_t version() const { return version_; }

 private:
  struct Queue {
    uint64_t desc = 0, driver = 0, device = 0;
    uint32_t align = 4096, pfn = 0;  // legacy
  };
  absl::Status WriteQueueAddress(uint32_t offset, uint32_t value);
  absl::Status LegacyPfn(uint32_t pfn);

  DeviceController& ctl_;
  uint32_t version_;
  uint32_t device_features_sel_ = 0;
  uint32_t driver_features_sel_ = 0;
  uint64_t driver_features_ = 0;
  uint32_t guest_page_size_ = 4096;  // legacy
  uint32_t queue_sel_ = 0;
  std::vector<Queue> queues_;
};

}  // namespace vioport::shm
