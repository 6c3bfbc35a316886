// SPDX-License-Identifier: Apache-2.0
// Internal to core: single-access loads and stores of 16-bit ring words in
// memory the other side writes concurrently, and the one mapping from a
// memory copy's status to a RingError. Shared by all four queue files.
#pragma once

#include <atomic>
#include <boost/endian/conversion.hpp>
#include <cstdint>

#include "absl/status/status.h"
#include "vioport/core/ring_error.h"

namespace vioport::internal {

// Raw (ring byte order) 16-bit word.
inline uint16_t AtomicLoad16(const uint8_t* p, std::memory_order mo) {
  return std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(const_cast<uint8_t*>(p))).load(mo);
}
inline void AtomicStore16(uint8_t* p, uint16_t v, std::memory_order mo) {
  std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(p)).store(v, mo);
}
// Little-endian 16-bit word, converted.
inline uint16_t LoadLe16(const uint8_t* p, std::memory_order mo) {
  return boost::endian::little_to_native(AtomicLoad16(p, mo));
}
inline void StoreLe16(uint8_t* p, uint16_t v, std::memory_order mo) {
  AtomicStore16(p, boost::endian::native_to_little(v), mo);
}

// Not granted (outside memory, no permission) vs the channel failing.
inline RingError RingErrorFromMemoryStatus(const absl::Status& s) {
  return absl::IsOutOfRange(s) || absl::IsPermissionDenied(s) ? RingError::kAddressOutOfRange
                                                              : RingError::kMemoryFault;
}

}  // namespace vioport::internal
