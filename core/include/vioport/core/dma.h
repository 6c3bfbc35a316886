// SPDX-License-Identifier: Apache-2.0
// Driver-side memory port: where a guest driver gets memory the device can
// reach (rings, indirect tables, bounce buffers) and the address to name it by.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "vioport/core/guest_memory.h"

namespace vioport {

struct DmaBuffer {
  uint8_t* host = nullptr;   // where the driver reads and writes it
  uint64_t device_addr = 0;  // what goes into descriptors and ring registers
  size_t size = 0;
};

// Implemented per transport: identity over shared memory, grant references on
// Xen (grant-encoded addresses), TCE-mapped IOBAs on PowerVM.
class DmaAllocator {
 public:
  virtual ~DmaAllocator() = default;
  // Zeroed memory. `device_access` is what the device may do with it, so a
  // transport with per-page permissions can grant read-only pages.
  virtual absl::StatusOr<DmaBuffer> Allocate(size_t size, size_t align, Access device_access) = 0;
  virtual void Free(const DmaBuffer& buffer) = 0;
};

}  // namespace vioport
