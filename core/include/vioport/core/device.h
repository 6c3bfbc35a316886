// SPDX-License-Identifier: Apache-2.0
// The backend interface every virtio device implements (blk, net, console,
// rng, vsock), and the interrupt-out port a transport implements for it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "vioport/core/device_queue.h"
#include "vioport/core/device_stats.h"
#include "vioport/core/guest_memory.h"
#include "vioport/core/spec.h"

namespace vioport {

// Interrupt-out: a used-buffer interrupt for queue n, or a config change.
// An eventfd write, a CRQ message, an event-channel notify, an MMIO status bit.
class InterruptSink {
 public:
  virtual ~InterruptSink() = default;
  virtual void QueueInterrupt(uint16_t queue) = 0;
  virtual void ConfigInterrupt() = 0;
};

// Everything a device needs to run, moved in by Activate and out by Reset.
struct ActivateContext {
  uint64_t features = 0;  // negotiated
  std::shared_ptr<GuestMemory> memory;
  std::vector<std::unique_ptr<DeviceQueue>> queues;  // index = queue number; null if not enabled
  std::shared_ptr<InterruptSink> interrupt;

  // Makes q's used entries visible and interrupts the driver if it asked to
  // be (event suppression decides); what a device does after completing work.
  void Publish(DeviceQueue& q) const {
    if (q.Publish() && interrupt) interrupt->QueueInterrupt(q.index());
  }
};

// Threading: a device is driven by one thread at a time. Every call below
// (config access, Activate, Reset, QueueNotify, ProcessEvents, Quiesce) comes
// from the thread that owns the device, so a device needs no locks of its own
// unless it starts threads itself. Only the config-changed hook may be called
// by the device, from that same thread.
class VirtioDevice {
 public:
  virtual ~VirtioDevice() { delete stats_.load(); }

  virtual DeviceId device_id() const = 0;
  // Device-specific feature bits (0-23, 50-127) plus the ring/transport bits
  // from feature::kCoreSupported the device is willing to use.
  virtual uint64_t device_features() const = 0;
  virtual uint16_t num_queues() const = 0;
  virtual uint16_t max_queue_size() const { return 1024; }
  virtual uint32_t config_size() const = 0;
  // Offsets and sizes are bounds-checked by the caller.
  virtual void ReadConfig(uint32_t offset, std::span<uint8_t> out) = 0;
  virtual void WriteConfig(uint32_t /*offset*/, std::span<const uint8_t> /*in*/) {}

  // Called when the driver sets FEATURES_OK; an error refuses it (the status
  // bit does not stick, §3.1.1).
  virtual absl::Status CheckFeatures(uint64_t /*acked*/) { return absl::OkStatus(); }

  // DRIVER_OK: start serving. On error the device is put in NEEDS_RESET.
  virtual absl::Status Activate(ActivateContext ctx) = 0;
  // Reset: stop touching queues and memory, finish or drop in-flight
  // requests, and hand everything back. Only called after a successful Activate.
  virtual ActivateContext Reset() = 0;
  // Notify-in: the driver kicked queue n (only after Activate). In polled mode
  // it is called repeatedly whether or not the driver kicked.
  virtual void QueueNotify(uint16_t queue) = 0;

  // Asynchronous completions. A device whose requests finish later (io_uring,
  // worker threads, a socket peer) returns a file descriptor that becomes
  // readable when it has something to deliver; whoever drives the device
  // waits for it and then calls ProcessEvents(). A busy-polling driver calls
  // ProcessEvents() in its loop without waiting. Returns true if it did work.
  // The fd is valid for the device's lifetime; -1 means "no async work".
  virtual int event_fd() const { return -1; }
  // Whether the device has events to process while no driver runs it (a
  // net or vsock device's inbox, counted as drops): its loop then watches
  // event_fd() from the start. A device without (blk) is watched from its
  // first guest on, and may make its event fd only then.
  virtual bool events_without_driver() const { return true; }
  virtual bool ProcessEvents() { return false; }

  // The server is stopping: complete every request in flight (publishing
  // them) and make written data durable. The device may still be active.
  virtual absl::Status Quiesce() { return absl::OkStatus(); }
  // Complete every request in flight (publishing them), without Quiesce's
  // flush: another process takes over the same backing (live upgrade).
  virtual absl::Status Drain() { return Quiesce(); }

  // Whether a new process serving the same spec can take over this device
  // while a driver runs it (live upgrade): true when everything the device
  // holds besides the rings is reopened from its spec (a blk file, an
  // entropy source). A device with connections of its own (a console's
  // host side, a net port, vsock streams) says why not.
  virtual absl::Status CanHandOver() const {
    return absl::UnimplementedError("this device type keeps host-side connections a new vios cannot take over yet");
  }
  // Live upgrade of what the device holds besides its spec and its rings:
  // its host side (listening and connected sockets, as descriptors) and the
  // bytes it owes either way. SaveHostState writes it after the device was
  // drained, as bytes plus descriptors that stay this device's (the caller
  // sends copies). A successor made from the same spec but told to adopt
  // (its factory opens no host side of its own) takes them with
  // RestoreHostState, which keeps the descriptors it uses (setting their
  // entries to -1); the caller closes the rest, also on error. The
  // side that does not go on (the old one after the commit, the new one
  // when the upgrade is given up) calls ReleaseHostState: it lets go of
  // its copies without ending anything for the host's peers (no unlink, no
  // shutdown). Defaults: nothing to carry.
  virtual absl::Status SaveHostState(std::string* /*bytes*/, std::vector<int>* /*fds*/) const {
    return absl::OkStatus();
  }
  virtual absl::Status RestoreHostState(const std::string& bytes, std::vector<int>& fds) {
    if (bytes.empty() && fds.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError("host state handed over for a device type that carries none");
  }
  virtual void ReleaseHostState() {}

  // Named counters for operators (viosctl stats). Appends; never resets.
  virtual void AppendCounters(std::vector<std::pair<std::string, uint64_t>>* /*out*/) const {}

  // Set by the controller; a device calls it when its config space changed on
  // its own (capacity resize, link up): generation bump + config interrupt.
  void set_config_changed_hook(std::function<void()> f) { config_changed_ = std::move(f); }

  // Per-queue totals and request latency over the device's life, made on
  // first use (any thread); queues count into it (AttachStats).
  DeviceStats& stats() {
    DeviceStats* s = stats_.load(std::memory_order_acquire);
    if (s) return *s;
    auto* made = new DeviceStats(num_queues());
    if (stats_.compare_exchange_strong(s, made, std::memory_order_acq_rel)) return *made;
    delete made;  // another thread made it first
    return *s;
  }
  // Null until a queue of the device first ran.
  const DeviceStats* stats_if_any() const { return stats_.load(std::memory_order_acquire); }
  // Gives queue q (a queue being activated) this device's counters, and the
  // latency histogram when timing is on.
  void AttachStats(DeviceQueue& q) {
    DeviceStats& s = stats();
    q.SetStats(s.queue(q.index()), DeviceStats::timing() ? &s.latency() : nullptr);
  }

 protected:
  void NotifyConfigChanged() {
    if (config_changed_) config_changed_();
  }

 private:
  std::function<void()> config_changed_;
  std::atomic<DeviceStats*> stats_{nullptr};
};

}  // namespace vioport
