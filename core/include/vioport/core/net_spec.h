// SPDX-License-Identifier: Apache-2.0
// virtio-net (virtio 1.2 §5.1): feature bits, config space, the per-packet
// header and the control queue's classes and commands. Shared by the device
// (backends/net) and the driver (guest/net).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "vioport/core/spec.h"

namespace vioport::net {

// §5.1.3 feature bits.
namespace feature {
inline constexpr unsigned kCsum = 0;
inline constexpr unsigned kGuestCsum = 1;
inline constexpr unsigned kCtrlGuestOffloads = 2;
inline constexpr unsigned kMtu = 3;
inline constexpr unsigned kMac = 5;
inline constexpr unsigned kGuestTso4 = 7;
inline constexpr unsigned kGuestTso6 = 8;
inline constexpr unsigned kGuestEcn = 9;
inline constexpr unsigned kGuestUfo = 10;
inline constexpr unsigned kHostTso4 = 11;
inline constexpr unsigned kHostTso6 = 12;
inline constexpr unsigned kHostEcn = 13;
inline constexpr unsigned kHostUfo = 14;
inline constexpr unsigned kMrgRxbuf = 15;
inline constexpr unsigned kStatus = 16;
inline constexpr unsigned kCtrlVq = 17;
inline constexpr unsigned kCtrlRx = 18;
inline constexpr unsigned kCtrlVlan = 19;
inline constexpr unsigned kCtrlRxExtra = 20;
inline constexpr unsigned kGuestAnnounce = 21;
inline constexpr unsigned kMq = 22;
inline constexpr unsigned kCtrlMacAddr = 23;
inline constexpr unsigned kGuestUso4 = 54;
inline constexpr unsigned kGuestUso6 = 55;
inline constexpr unsigned kHostUso = 56;
inline constexpr unsigned kStandby = 62;
inline constexpr unsigned kSpeedDuplex = 63;

using vioport::feature::Bit;
using vioport::feature::Has;

// The bits the guest-offload state (GUEST_OFFLOADS_SET) may switch.
inline constexpr uint64_t kGuestOffloadBits = Bit(kGuestCsum) | Bit(kGuestTso4) | Bit(kGuestTso6) |
                                              Bit(kGuestEcn) | Bit(kGuestUfo) | Bit(kGuestUso4) |
                                              Bit(kGuestUso6);
}  // namespace feature

// §5.1.4 config space. Fields past `mac` exist only with their feature, but
// the layout is fixed.
inline constexpr uint16_t kStatusLinkUp = 1;
inline constexpr uint16_t kStatusAnnounce = 2;
inline constexpr uint8_t kDuplexHalf = 0, kDuplexFull = 1, kDuplexUnknown = 0xff;
inline constexpr uint32_t kSpeedUnknown = 0xffffffff;

struct Config {
  uint8_t mac[6];
  le16 status;
  le16 max_virtqueue_pairs;
  le16 mtu;
  le32 speed;
  uint8_t duplex;
};
static_assert(offsetof(Config, status) == 6);
static_assert(offsetof(Config, max_virtqueue_pairs) == 8);
static_assert(offsetof(Config, mtu) == 10);
static_assert(offsetof(Config, speed) == 12);
static_assert(offsetof(Config, duplex) == 16);

// §5.1.6: the header before every packet (VERSION_1 layout, 12 bytes; the
// legacy 10-byte form without MRG_RXBUF is not supported).
inline constexpr uint8_t kHdrFlagNeedsCsum = 1;
inline constexpr uint8_t kHdrFlagDataValid = 2;
inline constexpr uint8_t kHdrFlagRscInfo = 4;

inline constexpr uint8_t kGsoNone = 0;
inline constexpr uint8_t kGsoTcpV4 = 1;
inline constexpr uint8_t kGsoUdp = 3;
inline constexpr uint8_t kGsoTcpV6 = 4;
inline constexpr uint8_t kGsoUdpL4 = 5;
inline constexpr uint8_t kGsoEcn = 0x80;

struct Hdr {
  uint8_t flags;
  uint8_t gso_type;
  le16 hdr_len;
  le16 gso_size;
  le16 csum_start;
  le16 csum_offset;
  le16 num_buffers;
};
static_assert(sizeof(Hdr) == 12);
inline constexpr uint32_t kHdrSize = sizeof(Hdr);

// §5.1.6.3: receive buffers without MRG_RXBUF hold at least this much
// (header included) when any guest GSO feature is negotiated, else 1526.
inline constexpr uint32_t kBigRxBuffer = 65562 + 39;
inline constexpr uint32_t kSmallRxBuffer = 1514 + 12;

// §5.1.6.5: the control queue. A command is class, command, data (readable)
// then one writable ack byte.
inline constexpr uint8_t kCtrlOk = 0;
inline constexpr uint8_t kCtrlErr = 1;

namespace ctrl {
inline constexpr uint8_t kClassRx = 0;
inline constexpr uint8_t kRxPromisc = 0;
inline constexpr uint8_t kRxAllMulti = 1;
inline constexpr uint8_t kRxAllUni = 2;
inline constexpr uint8_t kRxNoMulti = 3;
inline constexpr uint8_t kRxNoUni = 4;
inline constexpr uint8_t kRxNoBcast = 5;

inline constexpr uint8_t kClassMac = 1;
inline constexpr uint8_t kMacTableSet = 0;
inline constexpr uint8_t kMacAddrSet = 1;

inline constexpr uint8_t kClassVlan = 2;
inline constexpr uint8_t kVlanAdd = 0;
inline constexpr uint8_t kVlanDel = 1;

inline constexpr uint8_t kClassAnnounce = 3;
inline constexpr uint8_t kAnnounceAck = 0;

inline constexpr uint8_t kClassMq = 4;
inline constexpr uint8_t kMqVqPairsSet = 0;
inline constexpr uint16_t kMqPairsMin = 1;
inline constexpr uint16_t kMqPairsMax = 0x8000;

inline constexpr uint8_t kClassGuestOffloads = 5;
inline constexpr uint8_t kGuestOffloadsSet = 0;
}  // namespace ctrl

// Queue numbering (§5.1.2): receiveq_k = 2k, transmitq_k = 2k+1, controlq
// after the last pair the driver can use: 2 * max_virtqueue_pairs with MQ, 2
// without it.
constexpr uint16_t RxQueue(uint16_t pair) { return static_cast<uint16_t>(2 * pair); }
constexpr uint16_t TxQueue(uint16_t pair) { return static_cast<uint16_t>(2 * pair + 1); }
constexpr uint16_t CtrlQueue(uint16_t max_pairs, bool mq) { return static_cast<uint16_t>(mq ? 2 * max_pairs : 2); }

// 802.3 basics the device and driver both need.
inline constexpr uint32_t kEthHeader = 14;
inline constexpr uint32_t kVlanTagLen = 4;
inline constexpr uint16_t kEtherTypeVlan = 0x8100;
inline constexpr uint16_t kEtherTypeIpv4 = 0x0800;
inline constexpr uint16_t kEtherTypeIpv6 = 0x86dd;
inline constexpr uint16_t kEtherTypeArp = 0x0806;
inline constexpr uint32_t kMaxVlan = 4095;
// Largest frame a port takes: 64 KiB of GSO payload plus headers.
inline constexpr uint32_t kMaxGsoFrame = 65535 + kEthHeader + kVlanTagLen;

// A frame between ports: its offload metadata in virtio_net_hdr terms
// (flags, gso_type, gso_size, csum_start/offset; num_buffers unused) and its
// bytes from the Ethernet header on.
struct Frame {
  Hdr hdr{};
  std::vector<uint8_t> data;
};

// A MAC address packed into the low 48 bits, first octet most significant.
using Mac = uint64_t;
inline Mac MacFromBytes(const uint8_t* b) {
  return (Mac{b[0]} << 40) | (Mac{b[1]} << 32) | (Mac{b[2]} << 24) | (Mac{b[3]} << 16) | (Mac{b[4]} << 8) | b[5];
}
inline void MacToBytes(Mac m, uint8_t* b) {
  for (int i = 0; i < 6; ++i) b[i] = static_cast<uint8_t>(m >> (40 - 8 * i));
}
inline bool IsMulticast(Mac m) { return (m >> 40) & 1; }  // broadcast included
inline constexpr Mac kBroadcast = 0xffffffffffffULL;
// "52:54:00:12:34:56" (colons; hex digits in either case).
bool ParseMac(std::string_view text, Mac* out);
std::string MacString(Mac m);

}  // namespace vioport::net
