// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>

#include "absl/time/time.h"
#include "vioport/core/driver.h"

namespace vioport {

// How a guest driver waits for its device: poll the used ring for `spin`
// (a sleep and wake-up costs ~50 us on the machines we measured), then arm
// the interrupt and sleep in the transport until `deadline`.
struct WaitPolicy {
  absl::Duration spin = absl::Microseconds(30);
  absl::Duration timeout = absl::Seconds(30);
};

enum class WaitResult : uint8_t { kUsed, kTimeout, kBroken, kNeedsReset };

// Waits for the next used buffer of `q`. On kUsed, *token and *len are set.
// kBroken: the queue saw the device break the ring protocol (q.error()).
// kNeedsReset: the device set DEVICE_NEEDS_RESET.
WaitResult WaitUsed(VirtioDriver& drv, DriverQueue& q, const WaitPolicy& policy, uint64_t* token,
                    uint32_t* len);

const char* WaitResultName(WaitResult r);

}  // namespace vioport
