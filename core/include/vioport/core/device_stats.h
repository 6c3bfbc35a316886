// SPDX-License-Identifier: Apache-2.0
// What a device did over its whole life, whatever guest and transport drove
// it: requests and bytes per queue, and (when timing is on) how long each
// request took from the device popping it to the device returning it, as a
// histogram. Written by the device's thread (its queues), read by anyone
// (vios's metrics). Lives in VirtioDevice; queues get pointers into it.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>

#include "vioport/core/counters.h"

namespace vioport {

struct QueueStats {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> bytes_in{0};   // bytes the device read from the guest's buffers
  std::atomic<uint64_t> bytes_out{0};  // bytes it wrote into them
};

// Request latency: fixed buckets from 5 us to 1 s (Prometheus-style
// cumulative upper bounds are derived when read).
class LatencyHistogram {
 public:
  static constexpr std::array<uint64_t, 16> kBoundsNs = {
      5'000,      10'000,     25'000,      50'000,      100'000,     250'000,     500'000,      1'000'000,
      2'500'000,  5'000'000,  10'000'000,  25'000'000,  50'000'000,  100'000'000, 250'000'000, 1'000'000'000};
  void Record(uint64_t ns) {
    size_t b = 0;
    while (b < kBoundsNs.size() && ns > kBoundsNs[b]) ++b;
    BumpOwned(buckets_[b]);
    BumpOwned(sum_ns_, ns);
  }
  // Requests in bucket b alone (b == kBoundsNs.size(): above the last bound).
  uint64_t bucket(size_t b) const { return buckets_[b].load(std::memory_order_relaxed); }
  uint64_t sum_ns() const { return sum_ns_.load(std::memory_order_relaxed); }
  // Adds what another process counted (a live upgrade carries the totals over).
  void Add(size_t b, uint64_t count) {
    if (b < buckets_.size()) buckets_[b].fetch_add(count, std::memory_order_relaxed);
  }
  void AddSum(uint64_t ns) { sum_ns_.fetch_add(ns, std::memory_order_relaxed); }
  static constexpr size_t kBuckets = kBoundsNs.size() + 1;

 private:
  std::array<std::atomic<uint64_t>, kBoundsNs.size() + 1> buckets_{};
  std::atomic<uint64_t> sum_ns_{0};
};

class DeviceStats {
 public:
  explicit DeviceStats(uint16_t num_queues)
      : num_queues_(num_queues), queues_(std::make_unique<QueueStats[]>(num_queues)) {}
  uint16_t num_queues() const { return num_queues_; }
  QueueStats* queue(uint16_t q) { return q < num_queues_ ? &queues_[q] : nullptr; }
  const QueueStats* queue(uint16_t q) const { return q < num_queues_ ? &queues_[q] : nullptr; }
  LatencyHistogram& latency() { return latency_; }
  const LatencyHistogram& latency() const { return latency_; }

  // Adaptive polling (a transport serving the device for spin_us past its
  // last progress after each wake-up, then sleeping): the threshold last
  // used, the episodes, the time spent in them, and the passes that found
  // work without a wake-up (requests that came while polling).
  std::atomic<uint32_t> spin_us{0};
  std::atomic<uint64_t> busy_polls{0}, busy_poll_ns{0}, busy_poll_found{0};

  // Interrupt coalescing (SPDK's vhost_controller_set_coalescing): per
  // queue, over 10 ms windows, a queue completing more than iops_threshold
  // requests a second has its used-buffer interrupts held for
  // delay_base_us x (rate - threshold) / threshold (at most 1 ms), and
  // sends one for all of them. delay_base_us 0: off. Set from any thread;
  // the transport's loop applies it (DeviceController::EnableCoalescing).
  std::atomic<uint32_t> coalesce_delay_us{0};
  std::atomic<uint32_t> coalesce_iops_threshold{60000};
  std::atomic<uint64_t> interrupts_sent{0}, interrupts_coalesced{0};

  // Whether queues activated from now on time their requests (two clock
  // reads per request; vios turns it on with --metrics).
  static void EnableTiming(bool on) { timing_.store(on, std::memory_order_relaxed); }
  static bool timing() { return timing_.load(std::memory_order_relaxed); }
  static uint64_t NowNs() {
    return static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
            .count());
  }

 private:
  const uint16_t num_queues_;
  std::unique_ptr<QueueStats[]> queues_;
  LatencyHistogram latency_;
  static inline std::atomic<bool> timing_{false};
};

// One serve-while-busy episode, recorded into the device's stats when it ends.
class BusyPollEpisode {
 public:
  BusyPollEpisode(DeviceStats& s, uint32_t spin_us) : s_(s), t0_(DeviceStats::NowNs()) {
    s_.spin_us.store(spin_us, std::memory_order_relaxed);
  }
  ~BusyPollEpisode() {
    BumpOwned(s_.busy_polls);
    BumpOwned(s_.busy_poll_ns, DeviceStats::NowNs() - t0_);
    BumpOwned(s_.busy_poll_found, found_ > 0 ? found_ - 1 : 0);  // the first pass is the wake-up's own work
  }
  BusyPollEpisode(const BusyPollEpisode&) = delete;
  BusyPollEpisode& operator=(const BusyPollEpisode&) = delete;
  void Pass(bool progress) { found_ += progress; }

 private:
  DeviceStats& s_;
  const uint64_t t0_;
  uint64_t found_ = 0;
};

}  // namespace vioport
