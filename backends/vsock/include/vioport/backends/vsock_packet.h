// SPDX-License-Identifier: Apache-2.0
// virtio-vsock packets as the device sees them: what a guest may send,
// every header field checked before anything acts on it. The packet,
// refusal and connection-end types are core's (vsock_conn.h).
#pragma once

#include <cstdint>

#include "vioport/core/vsock_conn.h"

namespace vioport::vsock {

// Checks a packet the guest with `guest_cid` transmitted: `hdr` as read,
// `chain_payload` the readable bytes after the header in its chain, and
// `features` the negotiated ones.
Refusal CheckGuestPacket(const Hdr& hdr, uint64_t guest_cid, uint64_t features, uint32_t chain_payload);

}  // namespace vioport::vsock
