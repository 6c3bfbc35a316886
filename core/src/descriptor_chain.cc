// SPDX-License-Identifier: Apache-2.0
#include "vioport/core/descriptor_chain.h"

#include <cstring>

#include "ring_access.h"

namespace vioport {

DescriptorChain& DescriptorChain::operator=(DescriptorChain&& o) noexcept {
  if (this == &o) return *this;
  segs_ = std::move(o.segs_);
  mem_ = o.mem_;
  num_readable_ = o.num_readable_;
  readable_bytes_ = o.readable_bytes_;
  writable_bytes_ = o.writable_bytes_;
  epoch_ = o.epoch_;
  id_ = o.id_;
  ring_slots_ = o.ring_slots_;
  queue_ = o.queue_;
  owner_ = o.owner_;
  fault_ = o.fault_;
  o.Clear();
  return *this;
}

template <bool kWrite, typename P>
RingError DescriptorChain::Copy(uint64_t offset, P buf, uint64_t len) {
  if (!mem_) return RingError::kBroken;
  std::span<const Segment> part = kWrite ? writable() : readable();
  uint64_t total = kWrite ? writable_bytes_ : readable_bytes_;
  if (offset > total || len > total - offset) {
    fault_ = RingError::kAddressOutOfRange;
    return fault_;
  }
  uint64_t done = 0;
  for (const Segment& s : part) {
    if (done == len) break;
    if (offset >= s.len) {
      offset -= s.len;
      continue;
    }
    uint64_t n = std::min<uint64_t>(s.len - offset, len - done);
    if (s.host) {
      if constexpr (kWrite)
        std::memcpy(s.host + offset, buf + done, n);
      else
        std::memcpy(buf + done, s.host + offset, n);
    } else {
      absl::Status st;
      if constexpr (kWrite)
        st = mem_->Write(s.addr + offset, buf + done, n);
      else
        st = mem_->ReadBuffer(s.addr + offset, buf + done, n);
      if (!st.ok()) {
        fault_ = internal::RingErrorFromMemoryStatus(st);
        return fault_;
      }
    }
    done += n;
    offset = 0;
  }
  return RingError::kNone;
}

RingError DescriptorChain::Read(uint64_t offset, void* dst, uint64_t len) {
  return Copy<false>(offset, static_cast<uint8_t*>(dst), len);
}

RingError DescriptorChain::Write(uint64_t offset, const void* src, uint64_t len) {
  return Copy<true>(offset, static_cast<const uint8_t*>(src), len);
}

}  // namespace vioport
