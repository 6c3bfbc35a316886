// SPDX-License-Identifier: Apache-2.0
#pragma once

// Device side of the vhost-user transport: serves one VirtioDevice to one
// front-end (QEMU, or any vhost-user VMM) at a time on a Unix stream socket.
// vios listens; the front-end connects, and may reconnect after vios was
// restarted (the in-flight log carries requests across). docs/transports/vhost-user.md.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "boost/asio/io_context.hpp"
#include "vioport/core/device.h"
#include "vioport/core/spec.h"
#include "vioport/transports/registry.h"

namespace vioport {

struct VhostUserServerOptions {
  std::string socket_path;
  std::string name;  // for logs: the attachment, e.g. "d0@vhost-user"
  // After a kick or a completion, keep serving the device for this long past
  // its last progress before sleeping (a wake-up costs ~50 us). 0 disables.
  uint32_t spin_us = 20;
  // Offer INFLIGHT_SHMFD: requests in flight survive a vios restart (split rings).
  bool inflight = true;
  // Take memfds not sealed against shrinking (memory=any): for trusted
  // front-ends only, since a truncation would SIGBUS vios.
  bool unsealed_memory = false;
  uint64_t transport_features = feature::kCoreSupported;
};

class VhostUserServer final : public DeviceEndpoint {
 public:
  // Listens on `socket_path` (a stale socket file is replaced). Every handler
  // runs on `io`, which must be run by one thread.
  static absl::StatusOr<std::unique_ptr<VhostUserServer>> Create(boost::asio::io_context& io,
                                                                 std::shared_ptr<VirtioDevice> device,
                                                                 VhostUserServerOptions options);
  ~VhostUserServer() override;  // drops the front-end (in-flight requests completed), unlinks the socket
  VhostUserServer(const VhostUserServer&) = delete;
  VhostUserServer& operator=(const VhostUserServer&) = delete;

  // DeviceEndpoint; all on `io`'s thread.
  void StopAccepting() override;
  // Completes in-flight requests and makes data durable.
  absl::Status Quiesce() override;
  std::string where() const override { return opts_.socket_path; }
  std::string mode() const override { return "vhost-user"; }
  bool connected() const override;
  // The virtio status the front-end's actions amount to (vhost-user has no
  // status register): ACK|DRIVER after SET_OWNER, FEATURES_OK after
  // SET_FEATURES, DRIVER_OK while rings run, NEEDS_RESET after a ring error.
  uint8_t device_status() const override;
  std::string last_error() const override;
  void AppendCounters(CounterList* out) const override;

  // Live upgrade (DeviceEndpoint::Freeze): the listening socket, the
  // front-end's connection with any part of a message read so far, and the
  // session as the messages that rebuild it. Restore: the new vios's side.
  absl::Status Freeze(HandoverWriter* out) override;
  void Thaw() override;
  void Abandon() override;
  static absl::StatusOr<std::unique_ptr<VhostUserServer>> Restore(boost::asio::io_context& io,
                                                                  std::shared_ptr<VirtioDevice> device,
                                                                  VhostUserServerOptions options, HandoverReader& in);
  const VhostUserServerOptions& options() const { return opts_; }

  struct Impl;

 private:
  explicit VhostUserServer(VhostUserServerOptions o);
  Impl* MakeImpl(boost::asio::io_context& io, std::shared_ptr<VirtioDevice> device);
  VhostUserServerOptions opts_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vioport

namespace vioport {
// Registers vhost-user's device half (vios --attach ID,transport=vhost-user)
// and guest half (vioguest --transport vhost-user:SOCKET).
void RegisterVhostUserTransport();
}  // namespace vioport
