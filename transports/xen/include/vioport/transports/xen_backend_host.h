// SPDX-License-Identifier: Apache-2.0
// This process as one Xen domain, shared by every backend on one channel:
// the XenChannel, one xenstore connection, and the dispatcher that turns the
// channel's pending event-channel ports and xenstore watch events into
// handler calls on the Asio loop. Backends (XenServer) register a handler
// per port and per watch token.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "boost/asio/io_context.hpp"
#include "vioport/transports/xen_channel.h"
#include "vioport/transports/xs_client.h"

namespace vioport::xen {

class XenBackendHost : public std::enable_shared_from_this<XenBackendHost> {
 public:
  // Handlers run on `io` (one thread).
  // `frozen`: a live upgrade's new vios; nothing is dispatched until Thaw().
  static absl::StatusOr<std::shared_ptr<XenBackendHost>> Create(boost::asio::io_context& io,
                                                                std::unique_ptr<XenChannel> channel,
                                                                bool frozen = false);
  ~XenBackendHost();
  XenChannel& channel() { return *ch_; }
  XsClient& xs() { return *xs_; }
  boost::asio::io_context& io() { return io_; }

  // Runs `fn` on each event on `port`. The port stays masked while it runs
  // (a spin inside costs the peer no wake-up) and is unmasked after.
  void OnPort(EvtchnPort port, std::function<void()> fn);
  void RemovePort(EvtchnPort port);
  // Runs `fn` on each event of the watch (path, token); the initial event too.
  absl::Status OnWatch(const std::string& path, const std::string& token, std::function<void()> fn);
  void RemoveWatch(const std::string& path, const std::string& token);
  uint64_t wakeups() const { return wakeups_; }
  // Live upgrade. Freeze: no event or watch is dispatched from here; the
  // first call of an upgrade writes the channel (XenChannel::Export), later
  // ones a marker. Thaw: dispatch what came meanwhile, then wait again.
  absl::Status Freeze(HandoverWriter* out);
  void Thaw();

 private:
  struct Watcher;
  XenBackendHost(boost::asio::io_context& io, std::unique_ptr<XenChannel> ch) : io_(io), ch_(std::move(ch)) {}
  void WaitEvents();
  void WaitWatches();
  void ProcessEvents();
  void ProcessWatches();

  boost::asio::io_context& io_;
  std::unique_ptr<XenChannel> ch_;
  std::unique_ptr<XsClient> xs_;
  std::shared_ptr<Watcher> w_;
  std::map<EvtchnPort, std::function<void()>> ports_;
  std::map<std::string, std::function<void()>> watches_;  // by token
  std::vector<EvtchnPort> pending_;
  uint64_t wakeups_ = 0;
  bool frozen_ = false;
  bool exported_ = false;
};

}  // namespace vioport::xen
