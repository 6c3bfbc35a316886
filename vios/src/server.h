// SPDX-License-Identifier: Apache-2.0
#pragma once

// The VIO server: devices (backends) by id, each served to one guest through
// one attachment (an endpoint of a registered transport), all on one event
// loop, plus the control socket viosctl talks to.

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "boost/asio/io_context.hpp"
#include "net_switch.h"
#include "net_tap.h"
#include "rpc.h"
#include "vsock_hub.h"
#include "spec.h"
#include "vioport/core/device.h"
#include "vioport/transports/registry.h"

namespace vioport::vios {

class MetricsServer;

// "ACK|DRIVER|FEATURES_OK|DRIVER_OK", "reset".
std::string StatusBits(uint8_t status);
// For an errno of EMFILE/ENFILE: " (RLIMIT_NOFILE is N: ...)", naming the
// limit that stopped vios and how to raise it; "" for any other errno.
std::string DescriptorHint(int err);

class Server {
 public:
  explicit Server(boost::asio::io_context& io);
  ~Server();

  // Reactors: N event-loop threads (pinned to `cpus` when given, one each);
  // each attached device is served on one of them, the least loaded unless
  // its attachment says reactor=K. Without reactors (the default, and
  // --threads 1) devices share `io`, the control loop's thread. Before any
  // device is attached.
  absl::Status StartReactors(size_t n, const std::vector<int>& cpus);
  size_t num_reactors() const { return reactors_.size(); }
  rpc::json ReactorList() const;

  absl::Status AddNetdev(DeviceSpec spec);
  // `adopt_host` (live upgrade): the device opens no host side of its own
  // (a console binds no socket); its predecessor's comes with
  // VirtioDevice::RestoreHostState.
  absl::Status AddDevice(DeviceSpec spec, bool adopt_host = false);
  // `handover`: the old vios's record of this attachment (live upgrade);
  // the endpoint is restored from it and stays frozen until the commit.
  absl::Status Attach(AttachSpec spec, HandoverReader* handover = nullptr);
  absl::Status Remove(const std::string& id);

  absl::Status Detach(const std::string& id);
  // A blk device's capacity (bytes; 0: the backing file's size now); the
  // guest gets a config interrupt. Returns the new capacity.
  absl::StatusOr<uint64_t> ResizeBlk(const std::string& id, uint64_t size);
  // A console device's host side moves to a Unix socket listening on
  // `socket` (the current client is let go); returns the path.
  absl::StatusOr<std::string> AttachConsole(const std::string& id, const std::string& socket);

  // What the control API answers (docs/api.md): device_list, netdev_list,
  // stats (one id, or every one when `id` is empty).
  rpc::json DeviceList() const;
  rpc::json NetdevList() const;
  absl::StatusOr<rpc::json> Stats(const std::string& id) const;
  absl::StatusOr<rpc::json> DeviceGet(const std::string& id) const;

  // The control socket: JSON-RPC 2.0, one message per line, any number per
  // connection (docs/api.md). Limits: clients at once, bytes per message,
  // and how long a client may stay without sending a whole message.
  struct ControlLimits {
    size_t max_clients = 1024;
    size_t max_message = 256 << 10;
    absl::Duration idle_timeout = absl::Seconds(60);
  };
  absl::Status ListenControl(const std::string& path, ControlLimits limits);
  absl::Status ListenControl(const std::string& path) { return ListenControl(path, ControlLimits{}); }
  // Live upgrade (docs/upgrade.md). The running vios: freeze every device,
  // hand the lot to the new vios listening on `socket` (SOCK_SEQPACKET),
  // and on its commit let go of everything; the caller then stops (the
  // result says what went). On any failure every device is thawed and this
  // vios carries on as before.
  absl::StatusOr<rpc::json> HandOver(const std::string& socket);
  bool handed_over() const { return handed_over_; }
  // The new vios: ask the vios whose control socket is `control` to hand
  // over, restore every device and guest from what it sends, commit, and
  // serve. ListenControl afterwards takes the handed-over socket.
  struct TakeOverResult {
    size_t devices = 0, guests = 0;
    int old_pid = 0;
    double pause_ms = 0;  // the longest any guest went unserved
  };
  absl::StatusOr<TakeOverResult> TakeOver(const std::string& control, absl::Duration timeout);
  // --metrics ADDR:PORT: Prometheus text exposition over HTTP (GET /metrics);
  // turns on request timing (the latency histogram).
  absl::Status ListenMetrics(const std::string& address);
  std::string PrometheusText() const;

  // One JSON-RPC message, answered as the socket would (empty: no reply due).
  std::string Call(std::string_view message) const { return rpc_.Handle(message); }

  // SIGTERM: stop accepting, finish in-flight requests and flush every device.
  absl::Status Shutdown();
  size_t num_devices() const { return devices_.size(); }

 private:
  struct Entry {
    DeviceSpec spec;
    std::shared_ptr<VirtioDevice> device;
    std::unique_ptr<DeviceEndpoint> attachment;
    std::string transport;  // the registered name of the attachment's transport
    std::map<std::string, std::string> attach_options;  // as given (device_get)
    std::shared_ptr<Switch> sw;  // a net device's switch, and its port there
    uint32_t port = 0;
    uint64_t vsock_cid = 0;      // a vsock device's CID on the hub
    int reactor = -1;            // the attachment's reactor (-1: the control loop)
    std::string affinity;        // the transport's shared-state key (DeviceTransport::affinity)
  };
  struct Reactor;
  // Runs f on the thread that serves e's attachment (at once if that is this one).
  template <typename F>
  auto OnDeviceThread(const Entry& e, F&& f) const -> decltype(f());
  boost::asio::io_context& IoFor(int reactor);
  std::vector<std::unique_ptr<Reactor>> reactors_;
  struct Netdev {
    DeviceSpec spec;
    std::shared_ptr<Switch> sw;      // type switch
    std::unique_ptr<TapUplink> tap;  // type tap
    std::string switch_id;           // the tap's switch
  };
  absl::StatusOr<std::shared_ptr<VirtioDevice>> MakeNetDevice(DeviceSpec& spec, Entry* entry);
  absl::StatusOr<std::shared_ptr<VirtioDevice>> MakeVsockDevice(DeviceSpec& spec, Entry* entry);
  void Unplug(Entry& e);
  void DropAttachment(Entry& e);
  absl::Status NetAction(const std::string& id, const std::string& action);
  void RegisterMethods();
  void StopControl();
  struct Control;
  struct Session;
  void AcceptControl();
  void ReadControl(std::shared_ptr<Session> s);
  void ArmIdle(std::shared_ptr<Session> s);
  void CloseSession(const std::shared_ptr<Session>& s);
  void ServeLines(std::shared_ptr<Session> s, bool at_eof);

  boost::asio::io_context& io_;
  std::map<std::string, Netdev> netdevs_;
  std::map<std::string, Entry> devices_;
  std::shared_ptr<VsockHub> vsock_hub_;  // made with the first vsock device
  rpc::Dispatcher rpc_;
  std::unique_ptr<MetricsServer> metrics_;
  std::unique_ptr<Control> control_;
  bool handed_over_ = false;
  UniqueFd adopted_control_;  // the control socket a live upgrade handed over
};

}  // namespace vioport::vios
