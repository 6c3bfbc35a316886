// SPDX-License-Identifier: Apache-2.0
// The backend's protocol with one frontend (docs/transports/xen.md) as a
// state machine free of xenstore handles, event channels and loops: it reads
// the frontend's state and keys, decides (wait, connect with these refs and
// ports, refuse naming the key, close), and serves the register-write
// mailbox of the control page, all through a small Host. XenServer wires it
// to a XenBackendHost and a DeviceLoop; the fuzz target (fuzz_xen_control)
// drives it with a fake Host and a fake grant table.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "vioport/core/device_controller.h"
#include "vioport/core/mmio.h"
#include "vioport/transports/handover.h"
#include "vioport/transports/xen_channel.h"
#include "vioport/transports/xen_protocol.h"

namespace vioport::xen {

class BackendSession {
 public:
  // Everything the protocol needs from the world. Called on the session's
  // thread, except Notify (also from the device's workers while connected).
  class Host {
   public:
    virtual ~Host() = default;
    // A frontend key, relative to its directory ("state", "ctrl-ref",
    // "queue-0/evtchn"); an error when it cannot be read (absent).
    virtual absl::StatusOr<std::string> ReadFrontend(const std::string& key) = 0;
    // The backend's own state key.
    virtual void SetState(XenbusState state) = 0;
    // The frontend's control page, one page mapped read-write.
    virtual absl::StatusOr<uint8_t*> MapControl(GrantRef ref) = 0;
    virtual void UnmapControl(uint8_t* page) = 0;
    // An interdomain binding to the frontend's port; the local port.
    virtual absl::StatusOr<EvtchnPort> Bind(EvtchnPort remote) = 0;
    virtual void Unbind(EvtchnPort local) = 0;
    virtual void Notify(EvtchnPort local) = 0;
    // The frontend's memory (grant map or copy), for one connection until
    // the device is reset; each is dropped once the device stops using it.
    virtual std::shared_ptr<GuestMemory> MakeMemory() = 0;
    // Connected: events on `ctrl` go to OnControl(), those on queues[q] are
    // kicks of queue q for `ctl`.
    virtual void Attached(DeviceController& ctl, EvtchnPort ctrl, std::span<const EvtchnPort> queues) = 0;
    // The connection ends; nothing may reach `ctl` or the ports from here.
    virtual void Detached(const DeviceController& ctl) = 0;
    // A connection refused: `why` names the key (and its value) at fault.
    virtual void Refused(const std::string& why) = 0;
    // The frontend's state is not a XenbusState.
    virtual void ProtocolError(const std::string& why) = 0;
  };
  struct Options {
    std::string name;  // for logs
    DomId frontend = 0;
    std::string memory;  // for logs: "map" or "copy"
    uint64_t transport_features = feature::kCoreSupported;
  };
  struct Counters {
    uint64_t register_writes = 0, register_writes_ignored = 0;
  };

  BackendSession(std::shared_ptr<VirtioDevice> device, Host* host, Options options);
  ~BackendSession();  // disconnects (no state written)
  BackendSession(const BackendSession&) = delete;
  BackendSession& operator=(const BackendSession&) = delete;

  // The frontend's state watch fired: re-read the state and act on its value
  // (watches fire more than once per change).
  void OnFrontendState();
  // An event on the control port: serve a new register write, if any.
  void OnControl();
  // The backend stops: disconnect, then Closed.
  void Close(const std::string& why);

  bool connected() const { return ctl_ != nullptr; }
  DeviceController* controller() { return ctl_.get(); }
  const Counters& counters() const { return counters_; }
  // Live upgrade. Freeze: write the connection (control grant, bound
  // ports, registers, controller) after the device drained, then let go of
  // every mapping - the ports stay bound, xenstore is not touched - so this
  // process makes no call on the channel any more. Restore: read that
  // (making no call). Resume: map the control page again, rebuild the
  // controller where it was and attach (in the new vios at the commit, or
  // here when the upgrade was given up). Abandon: forget the ports unbound.
  absl::Status Freeze(HandoverWriter* out);
  absl::Status Restore(HandoverReader& in);
  absl::Status Resume();
  void Abandon();
  // The mapped control page while connected (for the host's checks).
  const uint8_t* control_page() const { return ctrl_; }

 private:
  absl::StatusOr<uint64_t> Key(const std::string& key, uint64_t max);
  absl::Status Connect();
  void BuildController();
  void Disconnect(const std::string& why);

  std::shared_ptr<VirtioDevice> device_;
  Host* host_;
  Options o_;
  // The connection (or the part of it set up before a refusal).
  uint8_t* ctrl_ = nullptr;
  std::optional<EvtchnPort> ctrl_port_;
  std::vector<EvtchnPort> queue_ports_;
  std::shared_ptr<GuestMemory> mem_;
  std::shared_ptr<mmio::MirrorInterrupts> irq_;
  std::unique_ptr<DeviceController> ctl_;
  std::unique_ptr<mmio::MmioMirror> mirror_;
  uint32_t last_seq_ = 0;
  GrantRef ctrl_ref_ = 0;
  Counters counters_;
  struct Frozen {
    GrantRef ctrl_ref = 0;
    EvtchnPort ctrl_port = 0;
    std::vector<EvtchnPort> queue_ports;
    std::vector<uint64_t> mirror;
    ControllerSnapshot snap;
    uint32_t last_seq = 0;
  };
  std::optional<Frozen> frozen_;
};

}  // namespace vioport::xen
