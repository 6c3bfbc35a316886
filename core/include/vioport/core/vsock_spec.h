// SPDX-License-Identifier: Apache-2.0
// virtio-vsock (virtio 1.2 §5.10): queues, feature bits, config space, the
// packet header, its types, ops and flags, the event queue's event, and the
// credit arithmetic both ends use. Shared by the device (backends/vsock) and
// the driver (guest/vsock).
#pragma once

#include <cstddef>
#include <cstdint>

#include "vioport/core/spec.h"

namespace vioport::vsock {

// §5.10.2 queues.
inline constexpr uint16_t kRxQueue = 0;
inline constexpr uint16_t kTxQueue = 1;
inline constexpr uint16_t kEventQueue = 2;
inline constexpr uint16_t kNumQueues = 3;

// §5.10.3 feature bits. With none of STREAM/SEQPACKET negotiated, the
// device acts as if STREAM was (NO_IMPLIED_STREAM turns that off).
namespace feature {
inline constexpr unsigned kStream = 0;
inline constexpr unsigned kSeqpacket = 1;
inline constexpr unsigned kNoImpliedStream = 2;
}  // namespace feature

// §5.10.4 config: guest_cid (the upper 32 bits are reserved, 0).
struct Config {
  uint64_t guest_cid;
};
static_assert(sizeof(Config) == 8);

// Context identifiers. 0, 1 and 0xffffffff are reserved (and the 64-bit
// all-ones); 2 is the host.
inline constexpr uint64_t kCidHypervisor = 0;
inline constexpr uint64_t kCidLocal = 1;
inline constexpr uint64_t kCidHost = 2;
inline constexpr uint64_t kCidAny = 0xffffffffULL;
inline constexpr bool IsGuestCid(uint64_t cid) { return cid > kCidHost && cid < kCidAny; }

// §5.10.6 the packet header, little-endian, packed: 44 bytes.
#pragma pack(push, 1)
struct Hdr {
  uint64_t src_cid;
  uint64_t dst_cid;
  uint32_t src_port;
  uint32_t dst_port;
  uint32_t len;
  uint16_t type;
  uint16_t op;
  uint32_t flags;
  uint32_t buf_alloc;
  uint32_t fwd_cnt;
};
#pragma pack(pop)
static_assert(sizeof(Hdr) == 44);
inline constexpr uint32_t kHdrSize = sizeof(Hdr);

// Socket types.
inline constexpr uint16_t kTypeStream = 1;
inline constexpr uint16_t kTypeSeqpacket = 2;

// Operations.
inline constexpr uint16_t kOpInvalid = 0;
inline constexpr uint16_t kOpRequest = 1;
inline constexpr uint16_t kOpResponse = 2;
inline constexpr uint16_t kOpRst = 3;
inline constexpr uint16_t kOpShutdown = 4;
inline constexpr uint16_t kOpRw = 5;
inline constexpr uint16_t kOpCreditUpdate = 6;
inline constexpr uint16_t kOpCreditRequest = 7;
const char* OpName(uint16_t op);

// SHUTDOWN flags.
inline constexpr uint32_t kShutdownRecv = 1;  // the sender will receive no more
inline constexpr uint32_t kShutdownSend = 2;  // the sender will send no more
inline constexpr uint32_t kShutdownBoth = kShutdownRecv | kShutdownSend;

// SEQPACKET RW flags.
inline constexpr uint32_t kSeqEom = 1;  // the last packet of a message
inline constexpr uint32_t kSeqEor = 2;  // ... and of a record (MSG_EOR)

// §5.10.6.4 the event queue: one 4-byte event id.
inline constexpr uint32_t kEventTransportReset = 0;
struct Event {
  uint32_t id;
};
static_assert(sizeof(Event) == 4);

// §5.10.6.3 credit: what a sender may still send to a peer that advertised
// `peer_buf_alloc` and has consumed `peer_fwd_cnt` of the `tx_cnt` bytes
// sent to it (free-running u32 counters: the difference wraps).
inline constexpr uint32_t PeerFree(uint32_t peer_buf_alloc, uint32_t peer_fwd_cnt, uint32_t tx_cnt) {
  const uint32_t in_flight = tx_cnt - peer_fwd_cnt;
  return in_flight >= peer_buf_alloc ? 0 : peer_buf_alloc - in_flight;
}

}  // namespace vioport::vsock
