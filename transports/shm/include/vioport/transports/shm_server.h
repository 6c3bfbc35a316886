// SPDX-License-Identifier: Apache-2.0
// Device side of the shared-memory transport: serves one VirtioDevice to one
// guest at a time on a Unix seqpacket socket (docs/transports/shm.md).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "boost/asio/io_context.hpp"
#include "vioport/core/device.h"
#include "vioport/core/spec.h"
#include "vioport/transports/registry.h"

namespace vioport {

struct ShmServerOptions {
  std::string socket_path;
  std::string name;  // for logs: the attachment, e.g. "d0@shm"
  // Busy-poll the rings and the device's completions on a dedicated thread
  // instead of waiting for kicks (benchmarks; costs a core).
  bool poll = false;
  // Event mode: keep serving the device this long past its last progress
  // before sleeping (DeviceLoop). 0 disables.
  uint32_t spin_us = 20;
  uint64_t transport_features = feature::kCoreSupported;
};

class ShmServer final : public DeviceEndpoint {
 public:
  // Listens on `socket_path` (a stale socket file is replaced). Event mode
  // runs on `io`, which one thread must run; poll mode on its own thread.
  static absl::StatusOr<std::unique_ptr<ShmServer>> Create(boost::asio::io_context& io,
                                                           std::shared_ptr<VirtioDevice> device,
                                                           ShmServerOptions options);
  ~ShmServer() override;  // drops the guest (device reset), closes and unlinks the socket

  // DeviceEndpoint; safe from any thread.
  void StopAccepting() override;
  absl::Status Quiesce() override;
  std::string where() const override { return opts_.socket_path; }
  std::string mode() const override { return opts_.poll ? "shm(poll)" : "shm"; }
  bool connected() const override;
  uint8_t device_status() const override;
  std::string last_error() const override;
  void AppendCounters(CounterList* out) const override;

  const ShmServerOptions& options() const { return opts_; }
  struct Impl;

 private:
  explicit ShmServer(ShmServerOptions o);
  ShmServerOptions opts_;
  std::unique_ptr<Impl> impl_;
};

// Registers shm's device half (vios --attach ID,transport=shm) and guest
// half (vioguest --transport shm:SOCKET).
void RegisterShmTransport();

}  // namespace vioport
