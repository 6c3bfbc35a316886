// SPDX-License-Identifier: Apache-2.0
// How a network device meets the network it is plugged into: frames, the
// sink a port transmits into (vios's switch), and the inbox a port receives
// from. Ports run on different threads (each device on its transport's
// loop, the tap uplink on its own), so the inbox is the one place frames
// cross threads: bounded, per-source fair, with an eventfd to wake the
// receiver.
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "vioport/core/net_spec.h"

namespace vioport::net {

// What a receiver negotiated, as the adaption needs it.
struct RxCaps {
  bool csum = false;   // GUEST_CSUM (takes NEEDS_CSUM frames)
  bool tso4 = false;   // GUEST_TSO4
  bool tso6 = false;   // GUEST_TSO6
  bool ecn = false;    // GUEST_ECN
  bool uso = false;    // GUEST_USO4/6
  uint32_t mtu = 1500;
  static RxCaps FromFeatures(uint64_t features, uint32_t mtu);
  static RxCaps All(uint32_t mtu) { return RxCaps{true, true, true, true, true, mtu}; }
};

// Where a port's transmitted frames go (vios's switch). Called on the
// sending port's thread with a batch; the sink takes the frames (it moves
// or copies what it keeps and leaves the vector's contents unspecified).
class FrameSink {
 public:
  virtual ~FrameSink() = default;
  virtual void Send(uint32_t from_port, std::vector<Frame>& frames) = 0;
  // What the port's guest takes whole now (after DRIVER_OK or
  // GUEST_OFFLOADS_SET); nullptr when it takes nothing (reset).
  virtual void SetPortCaps(uint32_t /*port*/, const RxCaps* /*caps*/) {}
};

// The receiving side of one port. Any thread pushes; the port's own thread
// takes. Bounded in frames and in bytes, and per source: one sender cannot
// take more than its share, so a flooding port does not crowd out the
// others. The eventfd is readable while frames wait (the receiver's device
// loop watches it).
class Inbox {
 public:
  struct Limits {
    uint32_t frames = 2048;           // in total
    uint64_t bytes = 8ull << 20;      // in total
    uint32_t per_source = 512;        // frames from one sending port
  };
  explicit Inbox(Limits limits);
  Inbox() : Inbox(Limits{}) {}
  ~Inbox();
  Inbox(const Inbox&) = delete;
  Inbox& operator=(const Inbox&) = delete;

  bool ok() const { return efd_ >= 0; }
  int event_fd() const { return efd_; }

  // Adds frames from `source` (a switch port number); those over a limit
  // are dropped and counted (drops()). Returns how many were taken. Wakes
  // the receiver if it was idle.
  size_t Push(uint32_t source, std::span<Frame> frames);
  // Takes up to `max` frames, oldest first, round robin across sources,
  // and clears the wake-up: a receiver that stops short of empty (max
  // reached) calls Wake() to come back; one with no room for frames just
  // leaves them, and the next Push wakes it again.
  size_t Take(std::vector<Frame>* out, size_t max);
  // Clears the wake-up without taking anything.
  void Ack();
  // Drops everything queued (a device reset), counting nothing.
  void Clear();
  // Wakes the receiver without a frame (it has deferred work of its own).
  void Wake();

  uint64_t drops() const { return drops_.load(std::memory_order_relaxed); }
  size_t size() const;

 private:
  void AckLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Signal();  // one eventfd write
  struct Source {
    uint32_t id;
    std::vector<Frame> frames;  // FIFO: [head, size)
    size_t head = 0;
  };
  const Limits limits_;
  int efd_ = -1;
  mutable absl::Mutex mu_;
  std::vector<Source> sources_ ABSL_GUARDED_BY(mu_);
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;  // round-robin cursor
  uint32_t frames_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool signalled_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<uint64_t> drops_{0};
};

// Per-port counters every port kind reports (device ports and the uplink).
struct PortCounters {
  std::atomic<uint64_t> rx_packets{0}, rx_bytes{0};  // delivered to the port's guest / host side
  std::atomic<uint64_t> tx_packets{0}, tx_bytes{0};  // taken from it into the switch
};

}  // namespace vioport::net
