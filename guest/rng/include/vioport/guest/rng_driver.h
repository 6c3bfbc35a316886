// virtio-rng guest driver over the core's driver model; any transport.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "vioport/core/driver.h"

namespace vioport {

class RngDriver {
 public:
  // `poll` is called while waiting for the device (e.g. to run an event loop);
  // the driver itself only polls its used ring.
  explicit RngDriver(DriverTransport& transport, std::function<void()> poll = nullptr);
  absl::Status Init(uint64_t ring_features);
  // Fills `out` with entropy, in requests of at most `chunk` bytes.
  absl::Status Read(std::span<uint8_t> out, size_t chunk = 4096, absl::Duration timeout = absl::Seconds(10));
  VirtioDriver& driver() { return drv_; }

 private:
  VirtioDriver drv_;
  std::function<void()> poll_;
  DmaBuffer bounce_{};
};

}  // namespace vioport
