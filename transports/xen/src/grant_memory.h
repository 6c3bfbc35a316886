// SPDX-License-Identifier: Apache-2.0
// The backend's view of a frontend's memory: a GuestMemory over grants,
// whose addresses are grant-encoded (bit 63 | ref << 12 | offset) and whose
// ranges span consecutive refs. Two strategies, chosen per device: map
// (persistent mappings up to a cap, then grant copy, as blkback does) and
// copy (every access a grant copy). Internal to the backend; the fuzz target
// includes it to run the real strategies over a fake channel.
#pragma once

#include <cstdint>
#include <memory>

#include "vioport/core/guest_memory.h"
#include "vioport/transports/xen_channel.h"

namespace vioport::xen {

struct GrantMemoryStats {
  uint64_t maps = 0, map_failures = 0, cached_pages = 0, copies = 0, copy_bytes = 0, copy_failures = 0,
           overflow = 0;
  // Adds another memory's event counts; cached_pages is a level, not summed.
  GrantMemoryStats& operator+=(const GrantMemoryStats& o) {
    maps += o.maps;
    map_failures += o.map_failures;
    copies += o.copies;
    copy_bytes += o.copy_bytes;
    copy_failures += o.copy_failures;
    overflow += o.overflow;
    return *this;
  }
};

// Every mapping is undone when the memory goes (the device was reset first).
std::shared_ptr<GuestMemory> MakeGrantMapMemory(XenChannel& ch, DomId frontend, uint32_t cache_pages);
std::shared_ptr<GuestMemory> MakeGrantCopyMemory(XenChannel& ch, DomId frontend);
// Zero for a memory that is neither.
GrantMemoryStats GrantMemoryStatsOf(const GuestMemory& m);

}  // namespace vioport::xen
