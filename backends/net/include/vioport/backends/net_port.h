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

#include "vioport/backends/port_inbox.h"
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

// The receiving side of one port (port_inbox.h): bounded in frames and
// bytes, and per source, with an eventfd to wake the receiver.
inline size_t InboxBytes(const Frame& f) { return f.data.size(); }
inline bool InboxMerge(Frame&, Frame&) { return false; }  // frames stay frames
using Inbox = PortInbox<Frame>;

// Per-port counters every port kind reports (device ports and the uplink).
struct PortCounters {
  std::atomic<uint64_t> rx_packets{0}, rx_bytes{0};  // delivered to the port's guest / host side
  std::atomic<uint64_t> tx_packets{0}, tx_bytes{0};  // taken from it into the switch
};

}  // namespace vioport::net
