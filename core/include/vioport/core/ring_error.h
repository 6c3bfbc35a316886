// SPDX-License-Identifier: Apache-2.0
// Typed errors for ring walks. Hot paths return these small enums; control
// paths wrap them in absl::Status via RingErrorStatus().
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace vioport {

// One value per way a hostile driver (or device) can break a ring. Each one,
// seen by the device side, puts the device in DEVICE_NEEDS_RESET.
enum class RingError : uint8_t {
  kNone = 0,
  kAvailIndexJump,         // avail idx moved by more than the queue size
  kHeadOutOfRange,         // avail ring entry >= queue size
  kNextOutOfRange,         // desc.next >= table size
  kChainTooLong,           // loop, or more descriptors than the queue/table holds
  kIndirectNotNegotiated,  // INDIRECT without VIRTIO_F_INDIRECT_DESC
  kNestedIndirect,         // INDIRECT inside an indirect table
  kIndirectWithNext,       // INDIRECT and NEXT on one descriptor
  kIndirectBadLength,      // indirect table length 0 or not a multiple of 16
  kIndirectTooLarge,       // indirect table with more than 65535 entries
  kLengthOverflow,         // chain's byte count exceeds 2^32 - 1
  kAddressOutOfRange,      // buffer, table or ring outside memory or not permitted
  kReadableAfterWritable,  // device-readable descriptor after a writable one
  kRingMisaligned,         // ring area address violates the spec's alignment
  kBadQueueSize,           // size 0, above 32768, or not a power of 2 (split)
  kBadBufferId,            // packed: buffer id >= queue size, or already in flight
  kUsedIdOutOfRange,       // driver side: device returned an id it was not given
  kUsedLengthTooLarge,     // driver side: device claims to have written more than offered
  kMemoryFault,            // the memory channel failed a copy (not a bounds error)
  kBadRequest,             // a device-type request is malformed (e.g. no room for its header or status)
  kBroken,                 // the queue is already broken; nothing was touched
};

const char* RingErrorName(RingError e);

// OutOfRange for addresses, InvalidArgument for ring-format violations,
// FailedPrecondition for kBroken, Unavailable for channel faults.
absl::Status RingErrorStatus(RingError e, uint16_t queue);

}  // namespace vioport
