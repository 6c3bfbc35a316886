#pragma once

// Device side of the shared-memory transport: serves one VirtioDevice to one
// guest at a time on a Unix seqpacket socket (docs/transports/shm.md).

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "boost/asio/io_context.hpp"
#include "vioport/core/device.h"
#include "vioport/core/spec.h"

namespace vioport {

struct ShmConnection;

struct ShmServerOptions {
  std::string socket_path;
  std::string name;  // for logs: the attachment, e.g. "d0@shm"
  // Busy-poll the rings and the device's completions on a dedicated thread
  // instead of waiting for kicks (benchmarks; costs a core).
  bool poll = false;
  // Event mode: after a kick, keep serving the device for this long past its
  // last progress before going back to sleep (a wake-up costs ~50 us; a guest
  // that refills its queue within the window never pays it). Bounded to 20x
  // per kick so other devices on the loop get their turn. 0 disables.
  uint32_t spin_us = 20;
  uint64_t transport_features = feature::kCoreSupported;
};

class ShmServer {
 public:
  // Listens on `socket_path` (a stale socket file is replaced). In event mode
  // every handler runs on `io`, which must be run by one thread; in poll mode
  // the server runs on its own thread and `io` is not used.
  static absl::StatusOr<std::unique_ptr<ShmServer>> Create(boost::asio::io_context& io,
                                                           std::shared_ptr<VirtioDevice> device,
                                                           ShmServerOptions options);
  ~ShmServer();  // drops the guest (device reset), closes and unlinks the socket
  ShmServer(const ShmServer&) = delete;
  ShmServer& operator=(const ShmServer&) = delete;

  // Stop accepting guests; the current one keeps running.
  void StopAccepting();
  // Completes in-flight requests and makes data durable (VirtioDevice::Quiesce),
  // on the device's thread. Call from the thread running `io`.
  absl::Status Quiesce();

  const ShmServerOptions& options() const { return opts_; }
  bool connected() const { return connected_.load(std::memory_order_acquire); }
  uint8_t device_status() const { return status_.load(std::memory_order_acquire); }
  std::string last_error() const;
  // Transport and controller counters; safe from any thread.
  std::vector<std::pair<std::string, uint64_t>> Counters() const;

 private:
  friend struct ShmConnection;
  struct Impl;
  explicit ShmServer(ShmServerOptions o);

  ShmServerOptions opts_;
  std::unique_ptr<Impl> impl_;
  std::atomic<bool> connected_{false};
  std::atomic<uint8_t> status_{0};
};

}  // namespace vioport
