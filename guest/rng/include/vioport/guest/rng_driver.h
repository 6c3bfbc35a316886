// SPDX-License-Identifier: Apache-2.0
// virtio-rng (§5.4) guest driver over the core's driver model; any transport.
// Waits for the device with WaitUsed: spin on the used ring, then sleep.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "vioport/core/driver.h"
#include "vioport/guest/wait.h"

namespace vioport {

class RngDriver {
 public:
  explicit RngDriver(DriverTransport& transport);
  ~RngDriver();
  RngDriver(const RngDriver&) = delete;
  RngDriver& operator=(const RngDriver&) = delete;

  // `wait.timeout` bounds each wait for the device to answer a request.
  absl::Status Init(uint64_t ring_features, WaitPolicy wait = {});
  // Fills `out` with entropy, in requests of at most `chunk` bytes (up to
  // 64 KiB), several in flight at once. Errors: Unavailable when the device
  // needs reset (call Init again), DeadlineExceeded when it does not answer.
  absl::Status Read(std::span<uint8_t> out, size_t chunk = 4096);
  VirtioDriver& driver() { return drv_; }

  static constexpr size_t kBounceBytes = 64 * 1024;
  static constexpr uint32_t kMaxInFlight = 16;

 private:
  absl::Status WaitOne(uint64_t* token, uint32_t* len);

  VirtioDriver drv_;
  WaitPolicy wait_;
  bool ready_ = false;
  DmaBuffer bounce_{};
  // Requests a failed Read left with the device; their answers land in the
  // bounce buffer, so the next Read collects them before reusing it.
  uint32_t in_flight_ = 0;
};

}  // namespace vioport
