// SPDX-License-Identifier: Apache-2.0
#include "vioport/core/interrupt_coalescer.h"

#include <algorithm>

namespace vioport {

bool InterruptCoalescer::Hold(uint16_t q) {
  if (!stats_) return false;
  const uint32_t base_us = stats_->coalesce_delay_us.load(std::memory_order_relaxed);
  if (!base_us || q >= stats_->num_queues()) return false;
  if (state_.size() <= q) state_.resize(q + 1);
  Queue& s = state_[q];
  const uint64_t now = DeviceStats::NowNs();
  constexpr uint64_t kWindowNs = 10'000'000;
  const uint64_t done = stats_->queue(q)->requests.load(std::memory_order_relaxed);
  if (now - s.window_start_ns >= kWindowNs) {
    // The last window's rate sets this window's delay.
    const uint64_t reqs = done - s.window_base;
    const uint64_t thr = std::max<uint64_t>(
        1, uint64_t{stats_->coalesce_iops_threshold.load(std::memory_order_relaxed)} * kWindowNs / 1'000'000'000);
    s.delay_ns = reqs > thr ? std::min<uint64_t>(uint64_t{base_us} * 1000 * (reqs - thr) / thr, 1'000'000) : 0;
    s.window_start_ns = now;
    s.window_base = done;
  }
  if (!s.delay_ns) return false;
  if (!s.pending) {
    s.pending = true;
    s.since_ns = now;
    ++held_;
  }
  if (now - s.since_ns >= s.delay_ns) {
    s.pending = false;
    return false;  // sent now, for everything held so far
  }
  BumpOwned(stats_->interrupts_coalesced);
  return true;
}

void InterruptCoalescer::Flush(bool force, absl::FunctionRef<void(uint16_t)> send) {
  if (!held_) return;
  const uint64_t now = force ? 0 : DeviceStats::NowNs();
  held_ = 0;
  for (uint16_t q = 0; q < state_.size(); ++q) {
    Queue& s = state_[q];
    if (!s.pending) continue;
    if (force || now - s.since_ns >= s.delay_ns) {
      s.pending = false;
      send(q);
    } else {
      ++held_;
    }
  }
}

}  // namespace vioport
