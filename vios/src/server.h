#pragma once

// The VIO server: devices (backends) by id, each served to one guest through
// one attachment (a transport endpoint), all on one event loop, plus the
// control socket viosctl talks to.

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "boost/asio/io_context.hpp"
#include "spec.h"
#include "vioport/core/device.h"

namespace vioport::vios {

// A device served over one transport endpoint. Implemented per transport.
class Attachment {
 public:
  virtual ~Attachment() = default;
  virtual std::string transport() const = 0;
  virtual std::string where() const = 0;  // e.g. the socket path
  virtual bool connected() const = 0;
  virtual uint8_t device_status() const = 0;
  virtual std::string last_error() const = 0;
  virtual std::vector<std::pair<std::string, uint64_t>> Counters() const = 0;
  virtual void StopAccepting() = 0;
  virtual absl::Status Quiesce() = 0;
};

class Server {
 public:
  explicit Server(boost::asio::io_context& io);
  ~Server();

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
    std::unique_ptr<Attachment> attachment;
  };
  struct Control;
  void AcceptControl();

  boost::asio::io_context& io_;
  std::map<std::string, Entry> devices_;
  std::unique_ptr<Control> control_;
};

}  // namespace vioport::vios
