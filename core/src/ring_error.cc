// SPDX-License-Identifier: Apache-2.0
#include "vioport/core/ring_error.h"

#include "absl/strings/str_cat.h"

namespace vioport {

const char* RingErrorName(RingError e) {
  switch (e) {
    case RingError::kNone: return "none";
    case RingError::kAvailIndexJump: return "avail index moved by more than the queue size";
    case RingError::kHeadOutOfRange: return "chain head out of range";
    case RingError::kNextOutOfRange: return "descriptor next out of range";
    case RingError::kChainTooLong: return "descriptor chain loops or exceeds the queue size";
    case RingError::kIndirectNotNegotiated: return "indirect descriptor without INDIRECT_DESC";
    case RingError::kNestedIndirect: return "indirect descriptor inside an indirect table";
    case RingError::kIndirectWithNext: return "descriptor has both INDIRECT and NEXT";
    case RingError::kIndirectBadLength: return "indirect table length is 0 or not a multiple of 16";
    case RingError::kIndirectTooLarge: return "indirect table has more than 65535 entries";
    case RingError::kLengthOverflow: return "chain length exceeds 2^32-1 bytes";
    case RingError::kAddressOutOfRange: return "address outside guest memory or not permitted";
    case RingError::kReadableAfterWritable: return "device-readable descriptor after a writable one";
    case RingError::kRingMisaligned: return "ring area misaligned";
    case RingError::kBadQueueSize: return "invalid queue size";
    case RingError::kBadBufferId: return "buffer id out of range or already in flight";
    case RingError::kUsedIdOutOfRange: return "used id was not made available";
    case RingError::kUsedLengthTooLarge: return "used length exceeds the writable bytes offered";
    case RingError::kMemoryFault: return "memory channel fault";
    case RingError::kBadRequest: return "malformed device request";
    case RingError::kBroken: return "queue is broken";
  }
  return "unknown ring error";
}

absl::Status RingErrorStatus(RingError e, uint16_t queue) {
  std::string msg = absl::StrCat("queue ", queue, ": ", RingErrorName(e));
  switch (e) {
    case RingError::kNone: return absl::OkStatus();
    case RingError::kAddressOutOfRange: return absl::OutOfRangeError(msg);
    case RingError::kBroken: return absl::FailedPreconditionError(msg);
    case RingError::kMemoryFault: return absl::UnavailableError(msg);
    default: return absl::InvalidArgumentError(msg);
  }
}

}  // namespace vioport
