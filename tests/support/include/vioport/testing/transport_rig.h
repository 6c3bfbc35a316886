// SPDX-License-Identifier: Apache-2.0
// Transport rigs: one object per transport that the conformance suite
// (tests/conformance) drives without knowing which transport it has. A rig
// starts the transport's channel emulator if it has one (crqd, xenemud),
// starts vios as a process serving given devices over the transport (with
// its control socket), kills and restarts it, gives the --transport spec a
// guest uses, connects a guest in this process through the registry
// (ConnectGuest) or runs vioguest as a process, names an address outside a
// guest's memory, and reads `viosctl stats` and vios's log. Loopback has no
// vios process: its rig runs vios's server in this process.
//
// A rig for a new transport is mostly data: its --attach options and its
// guest's --transport channel for the device in slot N, its emulator's
// command line, and its traits (what it can and cannot do). See
// transport_rig.cc for the five rigs; tests/conformance for the suite.
#pragma once

#include <signal.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "vioport/core/device.h"
#include "vioport/testing/process.h"
#include "vioport/transports/registry.h"

namespace vioport::testing {

// How a transport refuses a driver's queue size above the device's maximum.
enum class QueueSizeRefusal {
  // The size reaches the device when the driver sets it and the device
  // refuses it there: EnableQueue fails (mmio mirrors: the QueueSize write
  // is ignored and logged; crq: SET_QUEUE answers an error; loopback).
  kAtEnableQueue,
  // The guest half keeps the size until DRIVER_OK; the device then refuses
  // it and closes the connection (vhost-user: SET_VRING_NUM).
  kClosesConnectionAtDriverOk,
};

// What a transport can and cannot do, for the cases that depend on it. A
// case that cannot apply skips and says why (the reason strings).
struct RigTraits {
  std::string transport = {};  // the registered name; counters are ID.TRANSPORT.NAME
  // The device side runs in this process (loopback): there is no vios to kill.
  bool device_side_in_process = false;
  // vioguest reaches the transport (not loopback, which has no channel).
  bool guest_processes = true;
  // A guest re-initialising its driver reconnects to a restarted vios, so a
  // `blk write --reconnect-timeout` outlives vios's death; otherwise why not.
  bool guest_reconnects = false;
  std::string no_reconnect_reason = {};
  QueueSizeRefusal queue_size_refusal = QueueSizeRefusal::kAtEnableQueue;
  // GetQueueMaxSize reports the device's maximum (vhost-user carries none).
  bool reports_device_queue_max = true;
  uint64_t guest_memory = 64 << 20;  // what in-process guests connect with
  // Transport counters beyond the base ones that stay 0 while guests behave.
  std::vector<std::string> zero_while_guests_behave = {};
};

// How a guest left its device.
enum class GuestExit {
  kClosed,  // it closed its connection (its link was destroyed, its process exited)
  kKilled,  // its process was killed: the device side learns it from the channel
};

// The base counters every transport reports (vioport/core/counters.h).
const std::vector<std::string>& BaseCounterNames();

class TransportRig {
 public:
  // At most this many devices per vios (crqd is started with one adapter pair each).
  static constexpr int kMaxDevices = 4;

  virtual ~TransportRig();  // guest links first (the caller's), then this: kills what still runs
  TransportRig(const TransportRig&) = delete;
  TransportRig& operator=(const TransportRig&) = delete;

  const RigTraits& traits() const { return traits_; }
  const std::string& dir() const { return dir_; }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // ---- The channel and the device side -------------------------------------

  // Starts the channel emulator, if the transport has one, and waits for its sockets.
  virtual absl::Status StartChannel() { return absl::OkStatus(); }
  // SIGTERM to the emulator: its exit status (0 if there is none).
  virtual int StopChannel() { return 0; }
  // vios serving `device_specs` ("blk,id=d0,path=...": vios --device), each
  // attached over this transport in slot 0, 1, ... in order, with its
  // control socket; returns once the control socket exists (every endpoint
  // is then ready). Errors carry vios's log.
  virtual absl::Status StartDevices(const std::vector<std::string>& device_specs) = 0;
  // The same vios again, after KillDevices (waits until the channel has
  // forgotten the dead one first).
  virtual absl::Status RestartDevices() = 0;
  // `signal` to vios, then its exit status (128 + signal if it died of it).
  virtual int KillDevices(int signal) = 0;
  // SIGTERM: vios finishes what is in flight, flushes and exits; its status.
  virtual int StopDevices() = 0;
  virtual bool DevicesRunning() = 0;
  // At run time, through vios's control API: removes device `id` (its guest
  // is told as the transport allows), and adds a device (a --device spec)
  // attached over this transport in the slot of the id it names (a removed
  // device's slot, or a new one).
  virtual absl::Status RemoveDevice(const std::string& id) = 0;
  virtual absl::Status AddDevice(const std::string& device_spec) = 0;
  // Live upgrade: a new vios takes over with `vios --upgrade-from` (the
  // control socket), the old one exits 0; returns the pause the new one
  // reports (ms). Unimplemented where there is no vios process to replace.
  virtual absl::StatusOr<double> UpgradeDevices() {
    return absl::UnimplementedError(traits_.transport + ": the device side runs in this process");
  }

  // ---- Guests ------------------------------------------------------------------

  // The --transport spec of device `id`'s guest.
  virtual std::string GuestSpec(const std::string& id) const = 0;
  // A guest in this process through the registry (ConnectGuest), with
  // traits().guest_memory of memory. `type` is what will be driven.
  virtual absl::StatusOr<GuestLink> ConnectGuest(const std::string& id, DeviceId type);
  // The same with a guest half that passes any queue size to the device
  // (where the guest half checks sizes itself: vhost-user's front-end).
  virtual absl::StatusOr<GuestLink> ConnectUncheckedGuest(const std::string& id, DeviceId type) {
    return ConnectGuest(id, type);
  }
  // The first device address past the memory of a guest ConnectGuest made:
  // outside guest memory, so a descriptor naming it is a ring error.
  virtual uint64_t AddressOutsideGuestMemory() const { return traits_.guest_memory; }
  // vioguest --quiet --transport GuestSpec(id) CMD..., in the background.
  testproc::Proc& StartGuestProcess(const std::string& id, const std::vector<std::string>& cmd);
  // The same, waited for (at most `seconds`).
  testproc::Proc& RunGuestProcess(const std::string& id, const std::vector<std::string>& cmd, double seconds = 120);
  // Waits until the device side has noticed that device `id`'s guest left
  // and the channel can take a new one; an error says what was not seen.
  // Each transport adds its own evidence (crq: a partner reset, "partner
  // failed" for a killed guest; Xen: every mapped page unmapped).
  virtual absl::Status WaitGuestGone(const std::string& id, GuestExit how);

  // ---- Observing the device side -------------------------------------------------

  // `viosctl stats ID` as vios answers it ("ID.NAME VALUE" lines, then "ok").
  virtual std::string Stats(const std::string& id) = 0;
  // `viosctl list`.
  virtual std::string List() = 0;
  // Everything vios logged (the current vios process; loopback: this process).
  virtual std::string DeviceLog() = 0;
  // Counter ID.NAME; ~0 if absent.
  uint64_t Stat(const std::string& id, const std::string& name);
  // Counter ID.TRANSPORT.NAME (a base counter or the transport's own).
  uint64_t TransportStat(const std::string& id, const std::string& name) {
    return Stat(id, traits_.transport + "." + name);
  }
  // Polls counter ID.NAME until `pred` holds (true) or `seconds` pass, as
  // fast as vios answers (without a viosctl process each time).
  bool WaitForStat(const std::string& id, const std::string& name, const std::function<bool(uint64_t)>& pred,
                   double seconds);
  bool WaitForLog(const std::string& text, double seconds = 10);

 protected:
  TransportRig(std::string dir, RigTraits traits) : dir_(std::move(dir)), traits_(std::move(traits)) {}
  // The value of ID.NAME as fast as possible (for polling); ~0 if absent.
  virtual uint64_t QuickStat(const std::string& id, const std::string& name) { return Stat(id, name); }
  // Before a guest of the device in `slot` connects: waits until the channel
  // can take it (crqd frees a partition id only once it saw the last one go).
  virtual absl::Status WaitGuestSlotFree(int slot) { (void)slot; return absl::OkStatus(); }
  int SlotOf(const std::string& id) const;
  testproc::Proc& Keep(testproc::Proc p);

  std::string dir_;
  RigTraits traits_;
  std::vector<std::string> ids_;      // device ids by slot
  std::deque<testproc::Proc> procs_;  // every child, killed at the end
};

// A rig maker for a value-parameterized suite: `name` ends the test names.
struct RigFactory {
  std::string name;  // e.g. "Shm"
  std::function<std::unique_ptr<TransportRig>(const std::string& dir)> make;
};

// Test names show the rig's name.
inline void PrintTo(const RigFactory& f, std::ostream* os) { *os << f.name; }

RigFactory LoopbackRig();
RigFactory ShmRig();
RigFactory VhostUserRig();
RigFactory CrqRig();
RigFactory XenRig();

}  // namespace vioport::testing
