// SPDX-License-Identifier: Apache-2.0
// The device side of one shm connection as a state machine free of sockets
// and loops: Handle() takes one message from the guest (HELLO, then register
// writes) and answers through the Host. shm_server.cc wires it to a socket and a
// DeviceLoop; the fuzz target drives it directly.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "vioport/core/device_controller.h"
#include "vioport/core/mmio.h"
#include "vioport/transports/fd.h"
#include "vioport/transports/handover.h"
#include "vioport/transports/shm_protocol.h"

namespace vioport::shm {

class Session {
 public:
  class Host {
   public:
    virtual ~Host() = default;
    virtual absl::Status Send(const MsgHeader& h, std::span<const int> fds) = 0;
    // HELLO succeeded: serve `ctl`, and queue q's kicks arrive on kicks[q].
    virtual void Attached(DeviceController& ctl, std::span<const int> kicks) = 0;
  };
  Session(std::shared_ptr<VirtioDevice> device, Host* host, std::string name, bool polled);
  ~Session();  // resets the device (it stops touching the region), then unmaps it

  // One message; its fds are the session's from here. An error means the
  // guest broke the protocol: tell it, then drop the connection.
  absl::Status Handle(ReceivedMsg& m);
  DeviceController* controller() { return ctl_.get(); }

  // Live upgrade: what an attached session is (its region, eventfds,
  // registers and controller), written after the device quiesced; and a
  // session rebuilt from that in the new vios (HELLO is not repeated: the
  // guest never knows). Restore does not start serving: the host's
  // Attached() runs and the caller thaws the loop later.
  absl::Status Save(HandoverWriter* out) const;
  absl::Status Restore(HandoverReader& in);
  // The register writes of this connection (none before HELLO).
  void AppendCounters(CounterList* out) const {
    if (mirror_) mirror_->AppendCounters(out);
  }

 private:
  absl::Status Hello(ReceivedMsg& m);

  std::shared_ptr<VirtioDevice> device_;
  Host* host_;
  std::string name_;  // for logs
  bool polled_;
  absl::Status Attach(uint32_t version, uint64_t size, UniqueFd memfd);
  SharedMemory region_;  // the guest's memfd, mapped
  UniqueFd memfd_;       // kept for a live upgrade
  std::vector<UniqueFd> kick_, call_;
  UniqueFd config_call_;
  std::shared_ptr<mmio::MirrorInterrupts> irq_;
  std::unique_ptr<DeviceController> ctl_;
  std::unique_ptr<mmio::MmioMirror> mirror_;
};

}  // namespace vioport::shm
