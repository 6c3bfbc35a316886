// SPDX-License-Identifier: Apache-2.0
// Constants and wire layouts from the virtio specification (v1.2/v1.4 texts).
// Shared by the device side and the driver side of every ring and transport.
#pragma once

#include <boost/endian/arithmetic.hpp>
#include <boost/endian/conversion.hpp>
#include <cstddef>
#include <cstdint>

namespace vioport {

// Explicit little-/big-endian field types. No ring or header field is read
// through a host-order cast: the type says the byte order.
using le16 = boost::endian::little_uint16_at;
using le32 = boost::endian::little_uint32_at;
using le64 = boost::endian::little_uint64_at;
using be16 = boost::endian::big_uint16_at;
using be32 = boost::endian::big_uint32_at;
using be64 = boost::endian::big_uint64_at;

// §5: device IDs.
enum class DeviceId : uint32_t {
  kReserved = 0,
  kNet = 1,
  kBlock = 2,
  kConsole = 3,
  kEntropy = 4,
  kBalloon = 5,
  kScsi = 8,
  k9P = 9,
  kGpu = 16,
  kInput = 18,
  kVsock = 19,
  kCrypto = 20,
  kFs = 26,
};

// §2.1: device status field.
namespace status {
inline constexpr uint8_t kAcknowledge = 1;
inline constexpr uint8_t kDriver = 2;
inline constexpr uint8_t kDriverOk = 4;
inline constexpr uint8_t kFeaturesOk = 8;
inline constexpr uint8_t kSuspend = 16;
inline constexpr uint8_t kDeviceNeedsReset = 64;
inline constexpr uint8_t kFailed = 128;
}  // namespace status

// §6: reserved (transport/ring) feature bits.
namespace feature {
inline constexpr unsigned kNotifyOnEmpty = 24;  // legacy
inline constexpr unsigned kAnyLayout = 27;      // legacy
inline constexpr unsigned kIndirectDesc = 28;
inline constexpr unsigned kEventIdx = 29;
inline constexpr unsigned kVersion1 = 32;
inline constexpr unsigned kAccessPlatform = 33;
inline constexpr unsigned kRingPacked = 34;
inline constexpr unsigned kInOrder = 35;
inline constexpr unsigned kOrderPlatform = 36;
inline constexpr unsigned kSrIov = 37;
inline constexpr unsigned kNotificationData = 38;
inline constexpr unsigned kNotifConfigData = 39;
inline constexpr unsigned kRingReset = 40;
inline constexpr unsigned kAdminVq = 41;
inline constexpr unsigned kSuspend = 43;

constexpr uint64_t Bit(unsigned b) { return uint64_t{1} << b; }
constexpr bool Has(uint64_t features, unsigned b) { return (features >> b) & 1; }

// Ring/transport feature bits the core's queues implement, i.e. what a device
// may offer on top of its device-specific bits. IN_ORDER and
// NOTIFICATION_DATA are not offered yet. ACCESS_PLATFORM is the memory's
// business (IOVA or grant translation): a transport whose GuestMemory
// translates passes it in its transport features, see DeviceController.
inline constexpr uint64_t kCoreSupported =
    Bit(kIndirectDesc) | Bit(kEventIdx) | Bit(kVersion1) | Bit(kRingPacked);

// Bits 24..40 are reserved for the ring and the transport (§6); the others
// belong to the device type.
inline constexpr uint64_t kTransportRange = ((uint64_t{1} << 41) - 1) & ~((uint64_t{1} << 24) - 1);

// The one feature-offer policy, for a device's offer and a driver's wish
// alike: device-type bits as given; ring/transport bits only where the core
// implements them (kCoreSupported, plus ACCESS_PLATFORM, which the memory
// implements) and the transport carries them (`transport`); VERSION_1 always
// (§6.1: a device offers it, a driver accepts it).
constexpr uint64_t Offer(uint64_t features, uint64_t transport) {
  const uint64_t ring = (kCoreSupported | Bit(kAccessPlatform)) & transport;
  return (features & ~kTransportRange) | (features & kTransportRange & ring) | Bit(kVersion1);
}
}  // namespace feature

// §2.7.5 / §2.8: descriptor flags.
namespace desc_flag {
inline constexpr uint16_t kNext = 1;
inline constexpr uint16_t kWrite = 2;
inline constexpr uint16_t kIndirect = 4;
// Packed ring only (§2.8.1).
inline constexpr uint16_t kAvail = 1 << 7;
inline constexpr uint16_t kUsed = 1 << 15;
}  // namespace desc_flag

inline constexpr uint32_t kMaxQueueSize = 32768;

// §2.7 split virtqueue layout. All fields little-endian (VERSION_1); legacy
// rings use the guest's native order, handled by the queue (RingByteOrder).
struct VirtqDesc {
  le64 addr;
  le32 len;
  le16 flags;
  le16 next;
};
static_assert(sizeof(VirtqDesc) == 16);

struct VirtqUsedElem {
  le32 id;
  le32 len;
};
static_assert(sizeof(VirtqUsedElem) == 8);

inline constexpr uint16_t kAvailFlagNoInterrupt = 1;
inline constexpr uint16_t kUsedFlagNoNotify = 1;

// Offsets and sizes inside the three split-ring areas (§2.7).
struct SplitLayout {
  static constexpr uint64_t DescBytes(uint32_t n) { return 16ull * n; }
  // avail: flags, idx, ring[n], used_event
  static constexpr uint64_t kAvailFlags = 0;
  static constexpr uint64_t kAvailIdx = 2;
  static constexpr uint64_t AvailRing(uint32_t i) { return 4 + 2ull * i; }
  static constexpr uint64_t UsedEvent(uint32_t n) { return 4 + 2ull * n; }
  static constexpr uint64_t AvailBytes(uint32_t n) { return 6 + 2ull * n; }
  // used: flags, idx, ring[n] {id,len}, avail_event
  static constexpr uint64_t kUsedFlags = 0;
  static constexpr uint64_t kUsedIdx = 2;
  static constexpr uint64_t UsedRing(uint32_t i) { return 4 + 8ull * i; }
  static constexpr uint64_t AvailEvent(uint32_t n) { return 4 + 8ull * n; }
  static constexpr uint64_t UsedBytes(uint32_t n) { return 6 + 8ull * n; }
  static constexpr uint64_t kDescAlign = 16, kAvailAlign = 2, kUsedAlign = 4;

  // Legacy (0.9.5) contiguous layout: desc, avail, pad to `align`, used.
  static constexpr uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }
  static constexpr uint64_t LegacyUsedOffset(uint32_t n, uint64_t align) {
    return AlignUp(DescBytes(n) + AvailBytes(n), align);
  }
  static constexpr uint64_t LegacyBytes(uint32_t n, uint64_t align) {
    return LegacyUsedOffset(n, align) + AlignUp(UsedBytes(n), align);
  }
};

// §2.8 packed virtqueue.
struct PackedDesc {
  le64 addr;
  le32 len;
  le16 id;
  le16 flags;
};
static_assert(sizeof(PackedDesc) == 16);

// Event suppression structure: off_wrap {off:15, wrap:1}, flags {mode:2}.
struct PackedEventSuppress {
  le16 off_wrap;
  le16 flags;
};
static_assert(sizeof(PackedEventSuppress) == 4);

namespace packed_event {
inline constexpr uint16_t kEnable = 0;
inline constexpr uint16_t kDisable = 1;
inline constexpr uint16_t kDesc = 2;
}  // namespace packed_event

// §2.7.10: "notify iff new moved past event since old". All u16 arithmetic.
constexpr bool VringNeedEvent(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event_idx - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

}  // namespace vioport
