// SPDX-License-Identifier: Apache-2.0
// virtio-console (§5.3) guest driver for port 0 without MULTIPORT: a byte
// stream in each direction, over the core's driver model; any transport.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "vioport/core/driver.h"
#include "vioport/guest/wait.h"

namespace vioport {

// Read() and Write() use different queues and share no state, so one reader
// thread and one writer thread may use them at once where the transport
// allows it (not loopback, which runs the device on the caller's thread).
// Errors: a device in DEVICE_NEEDS_RESET gives Unavailable; call Init again
// to recover (bytes in flight are lost).
class ConsoleDriver {
 public:
  static constexpr uint32_t kRxBuffers = 16;  // receive buffers kept posted
  static constexpr uint32_t kRxBufferSize = 4096;
  static constexpr uint32_t kTxSlots = 16;  // transmit buffers in flight
  static constexpr uint32_t kTxSlotSize = 4096;

  explicit ConsoleDriver(DriverTransport& transport);
  ~ConsoleDriver();
  ConsoleDriver(const ConsoleDriver&) = delete;
  ConsoleDriver& operator=(const ConsoleDriver&) = delete;

  // Negotiates `ring_features` (ring bits) plus SIZE, sets up receiveq and
  // transmitq and posts the receive buffers. `wait.timeout` bounds how long
  // Write() waits for the device to make progress.
  absl::Status Init(uint64_t ring_features, WaitPolicy wait = {});
  // Returns once the device has consumed every byte.
  absl::Status Write(std::span<const uint8_t> data);
  // Returns at least one byte and at most out.size(), or DeadlineExceeded
  // after `timeout` with nothing received. Bytes the device delivered beyond
  // out.size() are kept for the next Read.
  absl::StatusOr<size_t> Read(std::span<uint8_t> out, absl::Duration timeout);
  // (cols, rows) from the config space when SIZE was negotiated, else (0, 0).
  std::pair<uint16_t, uint16_t> size();

  VirtioDriver& driver() { return drv_; }

 private:
  absl::Status Fail(WaitResult r, DriverQueue& q, const char* what);
  absl::Status PostRx(uint32_t slot);
  // Moves one used receive buffer into `out` (from *n on) and the rest into
  // ready_, then posts it again.
  absl::Status TakeRx(uint64_t token, uint32_t len, std::span<uint8_t> out, size_t* n);
  size_t TakeReady(std::span<uint8_t> out);
  absl::Status ReapTx(uint64_t token);

  VirtioDriver drv_;
  WaitPolicy wait_;
  bool ready_to_use_ = false;
  DmaBuffer rx_dma_{};  // kRxBuffers x kRxBufferSize, device-writable
  DmaBuffer tx_dma_{};  // kTxSlots x kTxSlotSize, device-readable
  uint32_t rx_count_ = 0;
  uint32_t tx_count_ = 0;
  std::vector<uint32_t> tx_free_;
  std::vector<uint8_t> ready_;  // received, not yet returned by Read
  size_t ready_head_ = 0;
};

}  // namespace vioport
