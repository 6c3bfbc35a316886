// SPDX-License-Identifier: Apache-2.0
// What a transport may ask of a network device beyond the generic device
// interface: the messages a VMM front-end sends when it owns the control
// queue itself (vhost-user's GET_QUEUE_NUM, NET_SET_MTU and SEND_RARP). A
// transport finds it with dynamic_cast on the VirtioDevice; a device that
// is not a network device does not implement it.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace vioport {

class NetControl {
 public:
  virtual ~NetControl() = default;
  // Queue pairs the device can serve (receive + transmit each).
  virtual uint16_t max_queue_pairs() const = 0;
  // The front-end's MTU for the guest (it must not be above what the device
  // offers in its config; an error refuses it).
  virtual absl::Status SetMtu(uint16_t mtu) = 0;
  // Broadcast a RARP from `mac` so the network relearns where the guest is
  // (after a migration, for guests without GUEST_ANNOUNCE).
  virtual void SendRarp(const uint8_t mac[6]) = 0;
};

}  // namespace vioport
