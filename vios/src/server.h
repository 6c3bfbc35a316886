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
#include "boost/asio/io_context.hpp"
#include "net_switch.h"
#include "net_tap.h"
#include "vsock_hub.h"
#include "spec.h"
#include "vioport/core/device.h"
#include "vioport/transports/registry.h"

namespace vioport::vios {

class Server {
 public:
  explicit Server(boost::asio::io_context& io);
  ~Server();

  absl::Status AddNetdev(DeviceSpec spec);
  absl::Status AddDevice(DeviceSpec spec);
  absl::Status Attach(AttachSpec spec);
  absl::Status Remove(const std::string& id);

  // Text answers for the control socket.
  std::string List() const;
  absl::StatusOr<std::string> Stats(const std::string& id) const;

  // Control socket: one command line per connection, answered with text and
  // a last line "ok" or "error: ...".
  absl::Status ListenControl(const std::string& path);
  std::string Execute(const std::string& command);

  // SIGTERM: stop accepting, finish in-flight requests and flush every device.
  absl::Status Shutdown();
  size_t num_devices() const { return devices_.size(); }

 private:
  struct Entry {
    DeviceSpec spec;
    std::shared_ptr<VirtioDevice> device;
    std::unique_ptr<DeviceEndpoint> attachment;
    std::string transport;  // the registered name of the attachment's transport
    std::shared_ptr<Switch> sw;  // a net device's switch, and its port there
    uint32_t port = 0;
    uint64_t vsock_cid = 0;      // a vsock device's CID on the hub
  };
  struct Netdev {
    DeviceSpec spec;
    std::shared_ptr<Switch> sw;      // type switch
    std::unique_ptr<TapUplink> tap;  // type tap
    std::string switch_id;           // the tap's switch
  };
  absl::StatusOr<std::shared_ptr<VirtioDevice>> MakeNetDevice(DeviceSpec& spec, Entry* entry);
  absl::StatusOr<std::shared_ptr<VirtioDevice>> MakeVsockDevice(DeviceSpec& spec, Entry* entry);
  void Unplug(Entry& e);
  absl::Status NetAction(const std::string& id, const std::string& action);
  struct Control;
  void AcceptControl();

  boost::asio::io_context& io_;
  std::map<std::string, Netdev> netdevs_;
  std::map<std::string, Entry> devices_;
  std::shared_ptr<VsockHub> vsock_hub_;  // made with the first vsock device
  std::unique_ptr<Control> control_;
};

}  // namespace vioport::vios
