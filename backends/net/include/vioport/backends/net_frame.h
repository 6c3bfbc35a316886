// SPDX-License-Identifier: Apache-2.0
// What crosses a virtio-net port, checked and adapted: a transmitted
// header against the negotiated features and the frame (§5.1.6.2), software
// checksum completion and TCP segmentation for receivers that cannot take
// a frame partial (§5.1.6.4), the receive filter (§5.1.6.5.1) and the flow
// hash that steers a flow back to the queue pair it was sent on.
// Pure functions over bytes; the libFuzzer target fuzz_net drives them.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "vioport/backends/net_port.h"
#include "vioport/core/net_spec.h"

namespace vioport::net {

// Why a frame was dropped; every drop is counted under its name.
enum class Drop : uint8_t {
  kNone = 0,
  kShort,             // shorter than its header plus an Ethernet header
  kOversize,          // longer than the MTU allows (or 64 KiB with GSO)
  kGsoType,           // a gso_type the spec does not define
  kGsoNotNegotiated,  // a gso_type whose HOST_* feature was not negotiated
  kGsoBad,            // gso_size 0, or a GSO frame that is not the protocol it says
  kCsumBad,           // csum_start/offset outside the frame, or NEEDS_CSUM without CSUM
  kHdrFlags,          // flags other than NEEDS_CSUM on transmit
  kSpoofed,           // source MAC is not the port's (mac-lock)
  kRxFull,            // the receiver's inbox is full
  kRxNoBuffer,        // the frame does not fit the driver's buffer (no MRG_RXBUF)
  kFiltered,          // the receiver's filter (RX mode, MAC table, VLAN) refused it
  kSegment,           // it needed software segmentation that was not possible
  kCount,
};
const char* DropName(Drop d);


// A guest's transmit header (§5.1.6.2). `features` are the negotiated ones;
// `mtu` bounds a frame without GSO (Ethernet and one VLAN tag on top).
// Normalises what it accepts: num_buffers is ignored (set to 0), hdr_len is
// recomputed by Segment, never trusted.
Drop CheckTxHeader(Hdr& hdr, uint64_t features, uint32_t mtu, std::span<const uint8_t> frame);

// Makes `in` something the receiver can take: as is when it can; otherwise
// a GSO frame is cut into MSS-sized segments (TCP over IPv4/IPv6, with
// IPv4 ids, TCP sequence numbers, FIN/PSH only on the last) and a partial
// checksum is completed. Appends to `out`; returns kNone, or why not.
Drop AdaptForReceiver(const Frame& in, const RxCaps& caps, std::vector<Frame>* out);
// Completes a NEEDS_CSUM frame's checksum in place (§5.1.6.2.1).
bool CompleteChecksum(Frame& f);

// 16-bit one's-complement sum helpers (RFC 1071).
uint32_t CsumAdd(std::span<const uint8_t> bytes, uint32_t sum = 0);
uint16_t CsumFold(uint32_t sum);

// The guest's receive filter (§5.1.6.5.1 and §5.1.6.5.2), set over the
// control queue. A fresh device is promiscuous, as QEMU's is, until the
// driver says otherwise.
struct RxFilter {
  bool promisc = true;
  bool allmulti = false;
  bool alluni = false;
  bool nomulti = false;
  bool nouni = false;
  bool nobcast = false;
  Mac mac = 0;
  std::vector<Mac> uni_table;    // MAC_TABLE_SET's unicast entries
  std::vector<Mac> multi_table;  // ... and multicast
  bool alluni_overflow = false;   // a table too long to keep: the whole class passes
  bool allmulti_overflow = false;
  bool vlan_filtering = false;   // CTRL_VLAN negotiated: tagged frames need their VID added
  std::vector<bool> vlans = std::vector<bool>(kMaxVlan + 1, false);
  bool Accepts(std::span<const uint8_t> frame) const;
};

// A hash of the frame's flow (addresses and ports) for steering.
uint32_t FlowHash(std::span<const uint8_t> frame);

}  // namespace vioport::net
