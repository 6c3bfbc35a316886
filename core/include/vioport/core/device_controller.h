// SPDX-License-Identifier: Apache-2.0
// The device side's lifecycle, written once for every transport: status
// register, feature negotiation, config generation, queue set-up, activation
// at DRIVER_OK, DEVICE_NEEDS_RESET on a broken ring. A transport turns its
// wire format (MMIO registers, vhost-user messages, CRQ messages) into calls here.
//
// States (status register value in brackets; docs/architecture.md has the diagram):
//   Reset [0] -> Acknowledged [ACK] -> DriverLoaded [+DRIVER]
//     -> FeaturesOk [+FEATURES_OK, only if the device accepts the features]
//     -> Running [+DRIVER_OK: queues built, device activated]
//   Running -> NeedsReset [+DEVICE_NEEDS_RESET] on a ring error or failed activation
//   any -> Failed [+FAILED] when the driver gives up
//   any -> Reset on a write of 0 (device Reset() called if it was activated)
// Legacy drivers (VERSION_1 not acked) may go to DRIVER_OK without FEATURES_OK.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "vioport/core/counters.h"
#include "vioport/core/device.h"

namespace vioport {

struct ControllerCounters {
  std::atomic<uint64_t> resets{0};
  std::atomic<uint64_t> activations{0};
  std::atomic<uint64_t> features_refused{0};
  std::atomic<uint64_t> notifies{0};
  std::atomic<uint64_t> notifies_ignored{0};  // before DRIVER_OK or out of range
  std::atomic<uint64_t> ring_errors{0};    // rings the driver broke
  std::atomic<uint64_t> memory_faults{0};  // rings a failed memory channel stopped (RingError::kMemoryFault)
  std::atomic<uint64_t> queue_interrupts{0};   // used-buffer interrupts the device sent
  std::atomic<uint64_t> config_interrupts{0};
  std::atomic<uint64_t> bad_register_writes{0};
};

struct QueueSetup {
  uint32_t size = 0;  // 0 until the driver sets it; then max size by default
  uint64_t desc = 0, driver = 0, device = 0;
  bool ready = false;
};

// What a new process needs to carry on serving a driver where this one
// stopped (live upgrade): the registers the driver set and, for each running
// queue, its position (DeviceQueue::GetBase). Taken only with nothing in
// flight; the device's own state is its backend's (reopened by the new
// process from the same spec).
struct ControllerSnapshot {
  uint8_t status = 0;
  uint64_t driver_features = 0;
  uint32_t generation = 0;
  std::vector<QueueSetup> queues;  // one per device queue
  std::vector<uint32_t> bases;     // one per device queue; 0 where the queue is not running
  std::string last_error;
};

class DeviceController {
 public:
  // `transport_features`: ring/transport bits this transport can carry
  // (e.g. without RING_PACKED where the channel cannot express it).
  DeviceController(std::shared_ptr<VirtioDevice> device, std::shared_ptr<GuestMemory> memory,
                   std::shared_ptr<InterruptSink> interrupt,
                   uint64_t transport_features = feature::kCoreSupported);
  ~DeviceController();
  DeviceController(const DeviceController&) = delete;
  DeviceController& operator=(const DeviceController&) = delete;

  VirtioDevice& device() { return *device_; }
  // What the controller's log lines call the device ("d0@shm"); by default
  // "device N" with N its virtio type.
  void set_name(std::string name) { name_ = std::move(name); }
  const std::string& name() const { return name_; }
  uint8_t status() const { return status_.load(std::memory_order_acquire); }
  // Writes the status register. 0 resets. Returns an error (and leaves the
  // status alone) for transitions the spec forbids, e.g. clearing bits.
  absl::Status SetStatus(uint8_t status);

  uint64_t offered_features() const { return offered_; }
  uint64_t driver_features() const { return driver_features_; }
  // Refused (FailedPrecondition) once FEATURES_OK is set.
  absl::Status SetDriverFeatures(uint64_t features);

  uint32_t config_generation() const { return generation_.load(std::memory_order_acquire); }
  absl::Status ReadConfig(uint32_t offset, std::span<uint8_t> out);
  absl::Status WriteConfig(uint32_t offset, std::span<const uint8_t> in);

  uint16_t num_queues() const { return device_->num_queues(); }
  uint32_t QueueMaxSize(uint16_t q) const;  // 0 if the queue does not exist
  const QueueSetup* queue_setup(uint16_t q) const;
  absl::Status SetQueueSize(uint16_t q, uint32_t size);
  absl::Status SetQueueAddresses(uint16_t q, uint64_t desc, uint64_t driver, uint64_t device);
  absl::Status SetQueueReady(uint16_t q, bool ready);

  // Notify-in. Ignored (counted) before DRIVER_OK, after NEEDS_RESET, or out of range.
  void NotifyQueue(uint16_t q);
  // After a kick or a completion: serves every active queue and the device's
  // events, and keeps doing so for `spin_us` past the last progress (bounded
  // to 20x that), so a driver refilling its queue within the window never
  // pays a wake-up (~50 us). Returns at once when not running.
  void ServeWhileBusy(uint32_t spin_us);

  // Interrupt coalescing (DeviceStats::coalesce_*): only a transport whose
  // loop flushes held interrupts enables it (ServeWhileBusy does when it
  // returns; a polling loop calls FlushInterrupts(false) as it goes).
  void EnableCoalescing(bool on);
  bool coalescing() const { return coalescing_; }
  // Sends held interrupts: all (`force`), or those whose delay ran out.
  void FlushInterrupts(bool force);

  // Live upgrade. Snapshot: only after the device quiesced (nothing in
  // flight, everything published); FailedPrecondition otherwise. Restore:
  // into a fresh controller, without the intermediate states a driver would
  // see (the status goes straight to the saved value); a running device is
  // activated with its queues at the saved positions in Resume() (nothing
  // touches the rings before), which then notifies and interrupts every
  // running queue once,
  // so nothing that arrived in between waits (a spurious interrupt is
  // harmless, a lost one would hang the driver).
  absl::StatusOr<ControllerSnapshot> Snapshot() const;
  absl::Status Restore(const ControllerSnapshot& s);
  void Resume();
  // Replace the memory (e.g. vhost-user SET_MEM_TABLE); only while not running.
  absl::Status SetMemory(std::shared_ptr<GuestMemory> memory);
  void SetInterruptSink(std::shared_ptr<InterruptSink> interrupt);
  // Queues created from now on run in polled mode (DeviceQueue::SetPolled):
  // the transport calls NotifyQueue() in a busy loop instead of on kicks.
  void SetPolled(bool polled) { polled_ = polled; }
  // Byte order of split rings for legacy drivers (guest-native).
  void SetLegacyByteOrder(RingByteOrder order) { legacy_order_ = order; }

  // Puts the device in DEVICE_NEEDS_RESET and raises a config interrupt (if
  // DRIVER_OK). Thread-safe: called from device worker threads on ring errors.
  void SetNeedsReset(const std::string& why);
  // The handler the controller gives its queues: counts the ring error and
  // calls SetNeedsReset. Public so a transport that builds queues itself
  // (e.g. vhost-user, which owns ring state across reconnects) can use it.
  QueueErrorHandler MakeQueueErrorHandler();
  bool running() const { return active_; }
  // The device's queue n while running (null otherwise or if not enabled),
  // for a transport that watches progress (e.g. to spin while work flows).
  // Same thread as the device only.
  const DeviceQueue* active_queue(uint16_t q) const {
    return q < active_queues_.size() ? active_queues_[q] : nullptr;
  }
  const std::string& last_error() const { return last_error_; }
  const ControllerCounters& counters() const { return counters_; }
  // The base counters of this controller's life (requests and bytes of
  // every queue it built, resets, activations, notifications in, interrupts
  // out; reconnects are the transport's). Same thread as the device.
  TransportCounters transport_counters() const;

 private:
  class CountingSink;
  void DoReset();
  absl::Status Activate(const std::vector<uint32_t>* bases = nullptr);
  void OnConfigChanged();

  std::shared_ptr<VirtioDevice> device_;
  std::string name_;
  std::shared_ptr<GuestMemory> memory_;
  std::shared_ptr<CountingSink> interrupt_;  // the transport's, wrapped to count (and coalesce) what goes out
  uint64_t offered_ = 0;
  uint64_t driver_features_ = 0;
  std::atomic<uint8_t> status_{0};
  std::atomic<uint32_t> generation_{0};
  std::vector<QueueSetup> queues_;
  bool active_ = false;
  bool polled_ = false;
  bool coalescing_ = false;
  std::vector<const DeviceQueue*> active_queues_;
  RingByteOrder legacy_order_ = RingByteOrder::kLittle;
  mutable absl::Mutex error_mu_;
  std::string last_error_;
  ControllerCounters counters_;
  TransportCounters retired_;  // requests and bytes of queues handed back by Reset
  std::optional<std::vector<uint32_t>> restore_bases_;  // Restore()d, started by Resume()
};

}  // namespace vioport
