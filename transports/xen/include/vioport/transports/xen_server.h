// SPDX-License-Identifier: Apache-2.0
#pragma once

// The backend of virtio over Xen grants (docs/transports/xen.md), as vios
// runs it: each XenServer serves one device to one frontend domain on a
// XenBackendHost (this process's domain), creating the device's xenstore
// directories as the toolstack would, and walking the XenbusState
// handshake as the backend (the protocol itself is src/backend_session.h),
// reaching the frontend's memory through grants - persistent mappings
// (map) or grant copy (copy).

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "vioport/core/device.h"
#include "vioport/core/spec.h"
#include "vioport/transports/endpoint.h"
#include "vioport/transports/registry.h"
#include "vioport/transports/xen_backend_host.h"
#include "vioport/transports/xen_channel.h"

namespace vioport::xen {

struct XenServerOptions {
  std::string name;      // for logs, e.g. "d0@xen"
  std::string where;     // for viosctl list: channel, domain, device, mode
  DomId frontend = 0;
  uint32_t devid = 0;
  bool copy = false;     // grants=copy (else map with a persistent cache)
  uint32_t cache_pages = 4096;  // persistent mappings kept (map); beyond, grant copy
  // Serve on for this long past the last progress before sleeping. A
  // notification through the hypervisor (two hops on the emulator) costs
  // about 100 us here, so a window shorter than that falls into a
  // sleep-and-wake cycle (measured: 20 us gave 131-267k IOPS at 4 KiB
  // QD32 over runs, 100 us 258-278k; performance.md).
  uint32_t spin_us = 100;
  uint64_t transport_features = feature::kCoreSupported;
};

class XenServer final : public DeviceEndpoint {
 public:
  // Creates the device's xenstore directories (as the toolstack), then
  // InitWait. Call on the io thread.
  static absl::StatusOr<std::unique_ptr<XenServer>> Create(std::shared_ptr<XenBackendHost> host,
                                                           std::shared_ptr<VirtioDevice> device,
                                                           XenServerOptions options);
  ~XenServer() override;  // resets the device, unmaps, state Closed
  XenServer(const XenServer&) = delete;
  XenServer& operator=(const XenServer&) = delete;

  const XenServerOptions& options() const { return o_; }
  // DeviceEndpoint (on the io thread).
  std::string where() const override { return o_.where; }
  std::string mode() const override { return "xen"; }
  bool connected() const override;
  uint8_t device_status() const override;
  std::string last_error() const override;
  void AppendCounters(CounterList* out) const override;
  absl::Status Quiesce() override;
  // Live upgrade (docs/upgrade.md): the domain's channel once per host,
  // then this device's connection; xenstore is written by neither side (the
  // new vios watches the same keys on a connection of its own).
  absl::Status Freeze(HandoverWriter* out) override;
  void Thaw() override;
  void Abandon() override;
  static absl::StatusOr<std::unique_ptr<XenServer>> Restore(std::shared_ptr<XenBackendHost> host,
                                                           std::shared_ptr<VirtioDevice> device,
                                                           XenServerOptions options, HandoverReader& in);

  struct Impl;

 private:
  explicit XenServer(XenServerOptions o) : o_(std::move(o)) {}
  XenServerOptions o_;
  std::shared_ptr<Impl> impl_;
};

}  // namespace vioport::xen

namespace vioport {
// Registers the Xen transport's device half (vios --attach ID,transport=xen)
// and guest half (vioguest --transport xen:CHANNEL), and the real-Xen channel.
void RegisterXenTransport();
}  // namespace vioport
