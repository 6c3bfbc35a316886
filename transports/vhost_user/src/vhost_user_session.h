// SPDX-License-Identifier: Apache-2.0
#pragma once

// The device side of one vhost-user connection as a state machine, free of
// sockets and event loops: Handle() takes one message from the front-end and
// answers through the Host. VhostUserServer wires it to Asio; the fuzz target
// drives it directly. docs/transports/vhost-user.md describes the states.

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "vioport/core/counters.h"
#include "vioport/core/device.h"
#include "vioport/core/net_control.h"
#include "vioport/core/inflight_log.h"
#include "vioport/transports/handover.h"
#include "vioport/transports/vhost_user_protocol.h"

namespace vioport::vhost_user {

struct SessionCounters {
  uint64_t messages = 0;
  uint64_t kicks = 0;
  uint64_t queue_interrupts = 0;
  uint64_t activations = 0;
  uint64_t device_resets = 0;
  uint64_t ring_errors = 0;
  uint64_t resubmitted = 0;  // chains recovered from the in-flight log
  uint64_t activation_refusals = 0;  // the device wanted more rings running
  uint64_t features_refused = 0;     // SET_FEATURES with bits not offered
  uint64_t duplicate_regions = 0;    // ADD_MEM_REG of a region already there (one per vhost device)

  SessionCounters& operator+=(const SessionCounters& o) {
    messages += o.messages;
    kicks += o.kicks;
    queue_interrupts += o.queue_interrupts;
    activations += o.activations;
    device_resets += o.device_resets;
    ring_errors += o.ring_errors;
    resubmitted += o.resubmitted;
    activation_refusals += o.activation_refusals;
    features_refused += o.features_refused;
    duplicate_regions += o.duplicate_regions;
    return *this;
  }
};

struct SessionOptions {
  std::string name;                   // for logs
  uint64_t transport_features = 0;    // ring bits this transport carries
  bool inflight = true;               // offer INFLIGHT_SHMFD
  bool unsealed_memory = false;       // take memfds a front-end could shrink (memory=any)
};

class Session {
 public:
  // What the session needs from its connection.
  class Host {
   public:
    virtual ~Host() = default;
    // Start/stop waiting for kicks on `fd` (owned by the session) for queue q.
    virtual void WatchKick(uint16_t q, int fd) = 0;
    virtual void UnwatchKick(uint16_t q) = 0;
    virtual absl::Status Reply(uint32_t request, std::span<const uint8_t> payload, std::span<const int> fds) = 0;
    // Run `f` after the current message or callback returns (same thread).
    virtual void Defer(std::function<void()> f) = 0;
  };

  Session(std::shared_ptr<VirtioDevice> device, Host* host, SessionOptions options);
  ~Session();  // completes in-flight requests, resets the device, unmaps
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // One message. An error means the front-end broke the protocol (the
  // message names the request and the check): close the connection.
  absl::Status Handle(Message& m);
  // The kick eventfd of queue q fired (already drained by the caller).
  void OnKick(uint16_t q);
  // Around OnKick or OnDeviceEvents and the Serve after it: one serving pass,
  // so interrupt coalescing may hold what the first raises until the Serve
  // ends (each opens its own pass too; passes nest).
  void BeginPass();
  void EndPass();
  // Busy-serve the device after a kick or completion for up to `spin_us`
  // past its last progress (0: once). Returns after a bounded time.
  void Serve(uint32_t spin_us);
  // The device's asynchronous completions are ready.
  bool OnDeviceEvents();
  absl::Status Quiesce();
  // Live upgrade. Freeze: complete what is in flight and stop the device,
  // keeping every ring's position (as GET_VRING_BASE would). Save: this
  // session as the front-end's messages that rebuild it (SET_OWNER,
  // features, memory with its fds, in-flight area, every ring with its
  // current base and eventfds, the back-end channel), which a new session
  // replays through Handle() (every check applies) in Restore(). Resume:
  // start the device again (rollback, or the new vios's commit).
  absl::Status Freeze();
  void Save(HandoverWriter* out) const;
  absl::Status Restore(HandoverReader& in);
  absl::Status Resume();

  bool running() const { return active_; }
  bool needs_reset() const { return needs_reset_; }
  uint8_t emulated_status() const;
  const std::string& last_error() const { return last_error_; }
  SessionCounters counters() const;
  // The base counters (requests and bytes of every queue this session built,
  // resets, activations, kicks, interrupts); reconnects are the server's.
  TransportCounters transport_counters() const;

 private:
  struct Mapping;
  struct Vring;
  class Interrupts;
  class Pass;

  absl::Status Dispatch(Message& m, bool* replied);
  absl::Status SetMemTable(Message& m);
  absl::Status AddMemReg(Message& m);
  absl::Status RemMemReg(Message& m);
  absl::Status InstallMemory(std::vector<std::shared_ptr<Mapping>> maps);
  absl::Status GetInflight(Message& m);
  absl::Status SetInflight(Message& m);
  absl::Status SetVringFd(Message& m, int which);
  absl::Status GetVringBase(Message& m);
  absl::Status GetConfig(Message& m);
  absl::Status SetConfig(Message& m);
  absl::Status CheckQueue(uint32_t index, const char* req) const;
  absl::Status TranslateRing(uint16_t q, uint64_t* desc, uint64_t* avail, uint64_t* used) const;
  absl::Status ResetRings();

  // Brings the running device in line with the rings that are started and
  // enabled: completes in-flight requests, resets, rebuilds, re-activates.
  absl::Status Reconcile();
  void StopDevice(bool flush = true);
  // StopDevice, then forget the built queues, keeping their positions (for a
  // change of memory or in-flight area: queues are rebuilt on the new one).
  void DropQueues();
  absl::Status BuildQueue(uint16_t q);
  void OnRingError(uint16_t q, RingError e);
  // Drops a built queue, keeping its request and byte counts.
  void Retire(std::unique_ptr<DeviceQueue>& q);

  std::shared_ptr<VirtioDevice> device_;
  NetControl* net_ = nullptr;  // the device's network side, if it is one
  Host* host_;
  SessionOptions opts_;
  uint64_t offered_ = 0, acked_ = 0;
  uint64_t offered_proto_ = 0, acked_proto_ = 0;
  bool features_set_ = false;
  bool owner_ = false;
  std::vector<std::shared_ptr<Mapping>> maps_;
  std::shared_ptr<GuestMemory> memory_;
  std::vector<Vring> vrings_;
  std::shared_ptr<Interrupts> irq_;
  bool active_ = false;
  std::vector<bool> active_set_;
  bool needs_reset_ = false;
  std::string last_error_;
  // In-flight log memory (GET/SET_INFLIGHT_FD).
  uint8_t* inflight_map_ = nullptr;
  size_t inflight_len_ = 0;
  size_t inflight_stride_ = 0;  // bytes per queue
  uint16_t inflight_queues_ = 0, inflight_qsize_ = 0;
  uint64_t inflight_offset_ = 0;
  int inflight_fd_ = -1;  // kept for a live upgrade
  std::vector<std::unique_ptr<SplitInflightLog>> logs_;
  std::vector<std::unique_ptr<PackedInflightLog>> packed_logs_;
  SessionCounters counters_;
  TransportCounters retired_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace vioport::vhost_user
