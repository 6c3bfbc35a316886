// SPDX-License-Identifier: Apache-2.0
// Pieces of the live upgrade's DEVICE record (docs/upgrade.md) that both
// vioses write and read: a set of options, and a device's life-long stats.
// Apart from upgrade.cc so that fuzz_handover reaches the readers.
#pragma once

#include <cstddef>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "vioport/core/device_stats.h"
#include "vioport/transports/handover.h"

namespace vioport::vios {

inline constexpr size_t kMaxRecordOptions = 256;
inline constexpr size_t kMaxRecordText = 4096;

void PutOptions(HandoverWriter& w, const std::map<std::string, std::string>& kv);
absl::Status GetOptions(HandoverReader& r, std::map<std::string, std::string>* kv);

// What DeviceStats holds (the metrics' counters, the coalescing settings),
// carried over so the counters a scraper reads do not restart at an upgrade.
// `ds` null: no stats yet (the device never ran). GetStats adds to `ds`
// (which must have as many queues) and refuses out-of-range settings.
void PutStats(HandoverWriter& w, const DeviceStats* ds);
absl::Status GetStats(HandoverReader& r, DeviceStats& ds);

}  // namespace vioport::vios
