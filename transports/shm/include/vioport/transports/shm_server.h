// SPDX-License-Identifier: Apache-2.0
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
#include "vioport/transports/registry.h"

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

class ShmServer final : public DeviceEndpoint {
 public:
  // Listens on `socket_path` (a stale socket file is replaced). In event mode
  // every handler runs on `io`, which must be run by one thread; in poll mode
  // the server runs on its own thread and `io` is not used.
  static absl::StatusOr<std::unique_ptr<ShmServer>> Create(boost::asio::io_context& io,
                                                           std::shared_ptr<VirtioDevice> device,
                                                           ShmServerOptions options);
  ~ShmServer() override;  // drops the guest (device reset), closes and unlinks the socket
  ShmServer(const ShmServer&) = delete;
  ShmServer& operator=(const ShmServer&) = delete;

  // DeviceEndpoint. Quiesce runs on the device's thread; call from the
  // thread running `io`. The rest is safe from any thread.
  void StopAccepting() override;
  absl::Status Quiesce() override;
  std::string where() const override { return opts_.socket_path; }
  std::string mode() const override { return opts_.poll ? "shm(poll)" : "shm"; }
  bool connected() const override { return connected_.load(std::memory_order_acquire); }
  uint8_t device_status() const override { return status_.load(std::memory_order_acquire); }
  std::string last_error() const override;
  void AppendCounters(CounterList* out) const override;

  const ShmServerOptions& options() const { return opts_; }

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

namespace vioport {
// Registers shm's device half (vios --attach ID,transport=shm) and guest
// half (vioguest --transport shm:SOCKET).
void RegisterShmTransport();
}  // namespace vioport
