// SPDX-License-Identifier: Apache-2.0
#include "vioport/core/buffer_dma.h"

#include <cstring>

#include "absl/strings/str_format.h"

namespace vioport {

BufferDmaAllocator::BufferDmaAllocator(uint8_t* host, uint64_t device_base, size_t size)
    : host_(host), base_(device_base) {
  free_[0] = size;
}

absl::StatusOr<DmaBuffer> BufferDmaAllocator::Allocate(size_t size, size_t align, Access) {
  if (size == 0 || align == 0 || (align & (align - 1)))
    return absl::InvalidArgumentError(absl::StrFormat("bad allocation: %u bytes, align %u", size, align));
  absl::MutexLock l(&mu_);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    const uint64_t start = (it->first + align - 1) & ~uint64_t(align - 1);
    const uint64_t end = it->first + it->second;
    if (start + size > end) continue;
    const uint64_t off = it->first, len = it->second;
    free_.erase(it);
    if (start > off) free_[off] = start - off;
    if (start + size < off + len) free_[start + size] = off + len - (start + size);
    std::memset(host_ + start, 0, size);
    return DmaBuffer{host_ + start, base_ + start, size};
  }
  return absl::ResourceExhaustedError(absl::StrFormat("no %u bytes of DMA memory left", size));
}

void BufferDmaAllocator::Free(const DmaBuffer& b) {
  absl::MutexLock l(&mu_);
  uint64_t off = b.device_addr - base_, len = b.size;
  auto next = free_.lower_bound(off);
  if (next != free_.end() && off + len == next->first) {
    len += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == off) {
      prev->second += len;
      return;
    }
  }
  free_[off] = len;
}

size_t BufferDmaAllocator::bytes_free() const {
  absl::MutexLock l(&mu_);
  size_t n = 0;
  for (const auto& [o, len] : free_) n += len;
  return n;
}

}  // namespace vioport
