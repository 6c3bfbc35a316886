// SPDX-License-Identifier: Apache-2.0
// Interrupt coalescing per device, as SPDK's vhost_controller_set_coalescing:
// over 10 ms windows, a queue that completed more than
// DeviceStats::coalesce_iops_threshold requests a second has its used-buffer
// interrupts held for coalesce_delay_us x (rate - threshold) / threshold (at
// most 1 ms) and sent as one. A transport's loop that uses it must flush
// whatever is held before it sleeps (nothing is held past the loop going
// idle). The device thread only.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"
#include "vioport/core/device_stats.h"

namespace vioport {

class InterruptCoalescer {
 public:
  explicit InterruptCoalescer(DeviceStats* stats) : stats_(stats) {}

  // Whether queue q's interrupt is held now (coalesced into a later one);
  // false: send it now (it then covers everything held for q so far).
  bool Hold(uint16_t q);
  // Calls `send` for the held interrupts to go now: all (`force`), or those
  // whose delay ran out.
  void Flush(bool force, absl::FunctionRef<void(uint16_t)> send);
  bool holding() const { return held_ != 0; }

 private:
  struct Queue {
    uint64_t window_start_ns = 0, window_base = 0, delay_ns = 0, since_ns = 0;
    bool pending = false;
  };
  DeviceStats* stats_;
  std::vector<Queue> state_;
  uint32_t held_ = 0;  // queues with a held interrupt (an upper bound)
};

}  // namespace vioport
