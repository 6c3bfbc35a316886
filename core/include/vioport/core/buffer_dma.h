// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>

#include "absl/synchronization/mutex.h"
#include "vioport/core/dma.h"

namespace vioport {

// First-fit allocator over a range of device addresses backed by a host buffer.
class BufferDmaAllocator final : public DmaAllocator {
 public:
  BufferDmaAllocator(uint8_t* host, uint64_t device_base, size_t size);
  absl::StatusOr<DmaBuffer> Allocate(size_t size, size_t align, Access device_access) override;
  void Free(const DmaBuffer& buffer) override;
  size_t bytes_free() const;

 private:
  uint8_t* host_;
  uint64_t base_;
  mutable absl::Mutex mu_;
  std::map<uint64_t, uint64_t> free_ ABSL_GUARDED_BY(mu_);  // offset -> length
};

}  // namespace vioport
