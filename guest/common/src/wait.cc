// SPDX-License-Identifier: Apache-2.0
#include "vioport/guest/wait.h"

#include <algorithm>
#include <thread>

namespace vioport {

WaitResult WaitUsed(VirtioDriver& drv, DriverQueue& q, const WaitPolicy& policy, uint64_t* token,
                    uint32_t* len) {
  const absl::Time start = absl::Now();
  const absl::Time spin_end = start + policy.spin;
  const absl::Time deadline = start + policy.timeout;
  DriverTransport& t = drv.transport();
  // Spin: interrupts stay off, so the device does not pay for signalling.
  q.DisableInterrupts();
  for (uint32_t i = 0;; ++i) {
    switch (q.GetUsed(token, len)) {
      case UsedStatus::kUsed: return WaitResult::kUsed;
      case UsedStatus::kBroken: return WaitResult::kBroken;
      case UsedStatus::kNone: break;
    }
    if ((i & 63) == 63) {
      if (drv.NeedsReset()) return WaitResult::kNeedsReset;
      if (absl::Now() >= spin_end) break;
    }
  }
  for (;;) {
    // Arm, then re-check: a buffer used between the last look and the arm
    // would otherwise raise no interrupt.
    if (q.EnableInterrupts()) {
      switch (q.GetUsed(token, len)) {
        case UsedStatus::kUsed: q.DisableInterrupts(); return WaitResult::kUsed;
        case UsedStatus::kBroken: return WaitResult::kBroken;
        case UsedStatus::kNone: break;
      }
    }
    if (drv.NeedsReset()) return WaitResult::kNeedsReset;
    const absl::Time now = absl::Now();
    if (now >= deadline) return WaitResult::kTimeout;
    t.WaitForInterrupt(q.index(), std::min(deadline - now, absl::Milliseconds(100)));
    switch (q.GetUsed(token, len)) {
      case UsedStatus::kUsed: q.DisableInterrupts(); return WaitResult::kUsed;
      case UsedStatus::kBroken: return WaitResult::kBroken;
      case UsedStatus::kNone: break;
    }
  }
}

const char* WaitResultName(WaitResult r) {
  switch (r) {
    case WaitResult::kUsed: return "used";
    case WaitResult::kTimeout: return "timed out waiting for the device";
    case WaitResult::kBroken: return "device broke the ring protocol";
    case WaitResult::kNeedsReset: return "device needs reset";
  }
  return "?";
}

}  // namespace vioport
