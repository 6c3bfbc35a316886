// SPDX-License-Identifier: Apache-2.0
// A popped, validated descriptor chain: the device side's handle on one
// request. Move-only; it goes back to its queue through DeviceQueue::AddUsed().
#pragma once

#include <cstdint>
#include <span>

#include "absl/container/inlined_vector.h"
#include "vioport/core/guest_memory.h"
#include "vioport/core/ring_error.h"

namespace vioport {

// One buffer of a chain. `host` is set when the memory is zero-copy and the
// whole buffer is mapped contiguously; otherwise accesses go through copies.
struct Segment {
  uint64_t addr;  // guest-controlled
  uint32_t len;   // guest-controlled
  bool device_writable;
  uint8_t* host;
};

class DescriptorChain {
 public:
  DescriptorChain() = default;
  DescriptorChain(DescriptorChain&& o) noexcept { *this = std::move(o); }
  DescriptorChain& operator=(DescriptorChain&& o) noexcept;
  DescriptorChain(const DescriptorChain&) = delete;
  DescriptorChain& operator=(const DescriptorChain&) = delete;

  // True between a successful Pop() and AddUsed().
  bool valid() const { return mem_ != nullptr; }
  // Split: head descriptor index. Packed: buffer id. Goes into the used entry.
  uint16_t id() const { return id_; }

  std::span<const Segment> segments() const { return {segs_.data(), segs_.size()}; }
  std::span<const Segment> readable() const { return {segs_.data(), num_readable_}; }
  std::span<const Segment> writable() const {
    return {segs_.data() + num_readable_, segs_.size() - num_readable_};
  }
  uint32_t readable_bytes() const { return readable_bytes_; }
  uint32_t writable_bytes() const { return writable_bytes_; }

  // Copy out of the device-readable part / into the device-writable part,
  // `offset` counted from the start of that part. Fails with kAddressOutOfRange
  // past its end or outside memory, kMemoryFault if a copy channel failed.
  // A failure is remembered: AddUsed() of a faulted chain breaks the queue.
  RingError Read(uint64_t offset, void* dst, uint64_t len);
  RingError Write(uint64_t offset, const void* src, uint64_t len);
  RingError fault() const { return fault_; }

  GuestMemory* memory() const { return mem_; }

 private:
  friend class DeviceQueue;
  friend class SplitDeviceQueue;
  friend class PackedDeviceQueue;
  template <bool kWrite, typename P>
  RingError Copy(uint64_t offset, P buf, uint64_t len);
  void Clear() {
    segs_.resize(0);  // keeps a heap buffer for the next long chain (clear() frees it)
    num_readable_ = readable_bytes_ = writable_bytes_ = 0;
    fault_ = RingError::kNone;
    mem_ = nullptr;
    owner_ = nullptr;
  }

  absl::InlinedVector<Segment, 8> segs_;
  GuestMemory* mem_ = nullptr;
  uint32_t num_readable_ = 0;
  uint32_t readable_bytes_ = 0;
  uint32_t writable_bytes_ = 0;
  uint32_t epoch_ = 0;       // queue epoch at pop; a chain from before a reset is stale
  uint16_t id_ = 0;
  uint16_t ring_slots_ = 0;  // packed: descriptor slots the chain used in the ring
  uint16_t queue_ = 0;
  const void* owner_ = nullptr;  // the queue that popped it
  RingError fault_ = RingError::kNone;
};

}  // namespace vioport
