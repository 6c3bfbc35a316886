// SPDX-License-Identifier: Apache-2.0
// virtio-vsock packets as the device sees them: what a guest may send,
// every header field checked before anything acts on it. The packet,
// refusal and connection-end types are core's (vsock_conn.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include "absl/strings/string_view.h"

#include "vioport/core/vsock_conn.h"

namespace vioport::vsock {

// Checks a packet the guest with `guest_cid` transmitted: `hdr` as read,
// `chain_payload` the readable bytes after the header in its chain, and
// `features` the negotiated ones.
Refusal CheckGuestPacket(const Hdr& hdr, uint64_t guest_cid, uint64_t features, uint32_t chain_payload);

// The hybrid vsock handshake's first line (Firecracker's and Cloud
// Hypervisor's "CONNECT <port>\n", the word in any case, an optional \r
// before the \n), from the bytes a host process sent so far.
inline constexpr size_t kMaxConnectLine = 64;
struct ConnectLine {
  enum class Result : uint8_t { kNeedMore, kBad, kOk } result = Result::kNeedMore;
  uint32_t port = 0;
  size_t consumed = 0;  // kOk: the line's length with its \n (stream bytes follow)
};
ConnectLine ParseConnectLine(absl::string_view received);

}  // namespace vioport::vsock
