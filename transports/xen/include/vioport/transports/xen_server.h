// SPDX-License-Identifier: Apache-2.0
#pragma once

// The backend of virtio over Xen grants (docs/transports/xen.md), as vios
// runs it: XenBackendHost is this process's domain (one XenChannel, one
// xenstore connection, one event-channel dispatcher on the Asio loop), and
// each XenServer serves one device to one frontend domain, walking the
// XenbusState handshake as the toolstack and the backend, reaching the
// frontend's memory through a GuestMemory over grants - persistent
// mappings (map) or grant copy (copy).

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "boost/asio/io_context.hpp"
#include "vioport/core/device.h"
#include "vioport/core/guest_memory.h"
#include "vioport/core/spec.h"
#include "vioport/transports/xen_channel.h"
#include "vioport/transports/registry.h"
#include "vioport/transports/xs_client.h"

namespace vioport::xen {

class XenBackendHost : public std::enable_shared_from_this<XenBackendHost> {
 public:
  // Handlers run on `io` (one thread).
  static absl::StatusOr<std::shared_ptr<XenBackendHost>> Create(boost::asio::io_context& io,
                                                                std::unique_ptr<XenChannel> channel);
  ~XenBackendHost();
  XenChannel& channel() { return *ch_; }
  XsClient& xs() { return *xs_; }
  boost::asio::io_context& io() { return io_; }

  // Runs `fn` after each event on `port` (the port unmasked before it runs).
  void OnPort(EvtchnPort port, std::function<void()> fn);
  void RemovePort(EvtchnPort port);
  // Runs `fn` on each event of the watch (path, token); the initial event too.
  absl::Status OnWatch(const std::string& path, const std::string& token, std::function<void()> fn);
  void RemoveWatch(const std::string& path, const std::string& token);
  uint64_t wakeups() const { return wakeups_; }

 private:
  struct Watcher;
  XenBackendHost(boost::asio::io_context& io, std::unique_ptr<XenChannel> ch) : io_(io), ch_(std::move(ch)) {}
  void WaitEvents();
  void WaitWatches();

  boost::asio::io_context& io_;
  std::unique_ptr<XenChannel> ch_;
  std::unique_ptr<XsClient> xs_;
  std::shared_ptr<Watcher> w_;
  std::map<EvtchnPort, std::function<void()>> ports_;
  std::map<std::string, std::function<void()>> watches_;  // by token
  std::vector<EvtchnPort> pending_;
  uint64_t wakeups_ = 0;
};

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

struct XenServerCounters {
  std::atomic<uint64_t> connections{0}, refused{0}, register_writes{0}, register_writes_ignored{0}, disconnects{0};
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
  std::string where() const override;
  std::string mode() const override { return "xen"; }
  bool connected() const override { return connected_.load(); }
  uint8_t device_status() const override { return status_.load(); }
  std::string last_error() const override;
  void AppendCounters(CounterList* out) const override;
  absl::Status Quiesce() override;

  struct Impl;

 private:
  explicit XenServer(XenServerOptions o) : o_(std::move(o)) {}
  XenServerOptions o_;
  std::shared_ptr<Impl> impl_;
  std::atomic<bool> connected_{false};
  std::atomic<uint8_t> status_{0};
};

// Guest memory over grants (exposed for tests): addresses are grant-encoded
// (bit 63 | ref << 12 | offset) and a range spans consecutive refs.
struct GrantMemoryStats {
  uint64_t maps = 0, map_failures = 0, cached_pages = 0, copies = 0, copy_bytes = 0, copy_failures = 0,
           overflow = 0;
};
std::shared_ptr<GuestMemory> MakeGrantMapMemory(XenChannel& ch, DomId frontend, uint32_t cache_pages);
std::shared_ptr<GuestMemory> MakeGrantCopyMemory(XenChannel& ch, DomId frontend);
GrantMemoryStats GrantMemoryStatsOf(const GuestMemory& m);

}  // namespace vioport::xen

namespace vioport {
// Registers the Xen transport's device half (vios --attach ID,transport=xen)
// and guest half (vioguest --transport xen:CHANNEL), and the real-Xen channel.
void RegisterXenTransport();
}  // namespace vioport
