// SPDX-License-Identifier: Apache-2.0
// The counters every transport endpoint reports under the same names, so an
// operator reads one vocabulary whatever carries the device (viosctl stats
// prints them as ID.TRANSPORT.NAME, then the transport's own extras).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace vioport {

using CounterList = std::vector<std::pair<std::string, uint64_t>>;

// Adds to a counter only one thread writes (a device's own): a plain add,
// no locked read-modify-write per packet; readers on other threads see
// whole values.
inline void BumpOwned(std::atomic<uint64_t>& c, uint64_t n = 1) {
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

struct TransportCounters {
  uint64_t requests = 0;          // descriptor chains the device completed
  uint64_t bytes_in = 0;          // bytes of those chains the device could read (guest -> device)
  uint64_t bytes_out = 0;         // bytes the device wrote into them (device -> guest: used lengths)
  uint64_t ring_errors = 0;       // rings the guest broke (each ends in DEVICE_NEEDS_RESET)
  uint64_t device_resets = 0;     // device resets (a status write of 0, a connection ending)
  uint64_t activations = 0;       // DRIVER_OK: the device started serving
  uint64_t features_refused = 0;  // FEATURES_OK the device did not accept
  uint64_t notifications = 0;     // notifications in (queue kicks)
  uint64_t interrupts = 0;        // interrupts out (used buffers and configuration changes)
  uint64_t reconnects = 0;        // guest connections after the first

  TransportCounters& operator+=(const TransportCounters& o) {
    requests += o.requests;
    bytes_in += o.bytes_in;
    bytes_out += o.bytes_out;
    ring_errors += o.ring_errors;
    device_resets += o.device_resets;
    activations += o.activations;
    features_refused += o.features_refused;
    notifications += o.notifications;
    interrupts += o.interrupts;
    reconnects += o.reconnects;
    return *this;
  }
  friend TransportCounters operator+(TransportCounters a, const TransportCounters& b) { return a += b; }

  // Appends the base names in a fixed order.
  void AppendTo(CounterList* out) const {
    out->insert(out->end(), {{"requests", requests},
                             {"bytes_in", bytes_in},
                             {"bytes_out", bytes_out},
                             {"ring_errors", ring_errors},
                             {"device_resets", device_resets},
                             {"activations", activations},
                             {"features_refused", features_refused},
                             {"notifications", notifications},
                             {"interrupts", interrupts},
                             {"reconnects", reconnects}});
  }
};

}  // namespace vioport
