// SPDX-License-Identifier: Apache-2.0
#pragma once

// PAPR hypercall numbers, return codes, TCE bits and the CRQ entry format, as
// the PowerVM hypervisor and Linux's pseries VIO drivers use them
// (docs/reference/crq.md §1-§3; numeric values from Linux's
// arch/powerpc/include/asm/hvcall.h). Host byte order is never relied on: an
// entry is two 64-bit words, msg_hi = bytes 0-7 with byte 0 its most
// significant byte, msg_lo = bytes 8-15 (big-endian), encoded and decoded with
// shifts.

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace vioport::crq {

using PartitionId = uint32_t;
using UnitAddress = uint32_t;
using Liobn = uint32_t;

// ---- Hypercall opcodes (r3) ------------------------------------------------
inline constexpr uint64_t kHGetTce = 0x1C;           // (liobn, ioba) -> r4 = tce
inline constexpr uint64_t kHPutTce = 0x20;           // (liobn, ioba, tce)
inline constexpr uint64_t kHRegCrq = 0xFC;           // (unit, queue_ioba, queue_len)
inline constexpr uint64_t kHFreeCrq = 0x100;         // (unit)
inline constexpr uint64_t kHVioSignal = 0x104;       // (unit, mode)
inline constexpr uint64_t kHSendCrq = 0x108;         // (unit, msg_hi, msg_lo)
inline constexpr uint64_t kHCopyRdma = 0x110;        // (len, s_liobn, s_ioba, d_liobn, d_ioba)
inline constexpr uint64_t kHStuffTce = 0x138;        // (liobn, ioba, tce, npages)
inline constexpr uint64_t kHPutTceIndirect = 0x13C;  // (liobn, ioba, list_real_addr, npages)
inline constexpr uint64_t kHEnableCrq = 0x2B0;       // (unit)

// ---- Return codes (r3) -----------------------------------------------------
inline constexpr int64_t kHSuccess = 0;
inline constexpr int64_t kHBusy = 1;
inline constexpr int64_t kHClosed = 2;
inline constexpr int64_t kHNotAvailable = 3;
inline constexpr int64_t kHConstrained = 4;
inline constexpr int64_t kHPartial = 5;
inline constexpr int64_t kHInProgress = 14;
inline constexpr int64_t kHLongBusyOrder1Msec = 9900;
inline constexpr int64_t kHLongBusyOrder10Msec = 9901;
inline constexpr int64_t kHLongBusyOrder100Msec = 9902;
inline constexpr int64_t kHLongBusyOrder1Sec = 9903;
inline constexpr int64_t kHLongBusyOrder10Sec = 9904;
inline constexpr int64_t kHLongBusyOrder100Sec = 9905;
inline constexpr int64_t kHHardware = -1;
inline constexpr int64_t kHFunction = -2;
inline constexpr int64_t kHPrivilege = -3;
inline constexpr int64_t kHParameter = -4;
inline constexpr int64_t kHNotFound = -7;
inline constexpr int64_t kHAuthority = -10;
inline constexpr int64_t kHPermission = -11;
inline constexpr int64_t kHDropped = -12;
inline constexpr int64_t kHSourceParm = -13;
inline constexpr int64_t kHDestParm = -14;
inline constexpr int64_t kHRemoteParm = -15;
inline constexpr int64_t kHResource = -16;
inline constexpr int64_t kHRescinded = -46;

// What a hypercall returns: r3 (the PAPR code) and r4 (H_GET_TCE's entry).
struct HcallResult {
  int64_t rc = kHFunction;
  uint64_t r4 = 0;
};

inline constexpr bool IsLongBusy(int64_t rc) { return rc >= kHLongBusyOrder1Msec && rc <= kHLongBusyOrder100Sec; }

// Names for logs ("H_SEND_CRQ", "H_DROPPED"); "?" for unknown values.
std::string_view HcallName(uint64_t opcode);
std::string_view ReturnCodeName(int64_t rc);

// ---- TCEs --------------------------------------------------------------------
inline constexpr unsigned kTcePageShift = 12;
inline constexpr uint64_t kTcePageSize = uint64_t{1} << kTcePageShift;  // 4 KiB
inline constexpr uint64_t kTceRead = 0x1;   // the device (the hypervisor copying for the partner) may read
inline constexpr uint64_t kTceWrite = 0x2;  // ... may write
inline constexpr uint64_t kTcePermMask = kTceRead | kTceWrite;
inline constexpr uint64_t kTceRpnMask = ~(kTcePageSize - 1);  // tce & mask = real address of the page
inline constexpr uint64_t kMaxIndirectTces = 512;             // H_PUT_TCE_INDIRECT: one 4 KiB list page

inline constexpr uint64_t MakeTce(uint64_t real_addr, uint64_t perms) {
  return (real_addr & kTceRpnMask) | (perms & kTcePermMask);
}

// ---- CRQ entries -------------------------------------------------------------
inline constexpr size_t kCrqEntryBytes = 16;
inline constexpr uint64_t kMinCrqBytes = kTcePageSize;  // queues: whole 4 KiB pages, at least one

// Byte 0, the valid/header byte.
inline constexpr uint8_t kCrqFree = 0x00;
inline constexpr uint8_t kCrqCommand = 0x80;         // payload; bytes 1-15 protocol-defined
inline constexpr uint8_t kCrqInit = 0xC0;            // byte 1: 0x01 INIT, 0x02 INIT COMPLETE
inline constexpr uint8_t kCrqTransportEvent = 0xFF;  // posted by the hypervisor only
inline constexpr uint8_t kCrqInitRequest = 0x01;
inline constexpr uint8_t kCrqInitComplete = 0x02;

// Transport event reasons (byte 1 of an 0xFF entry).
inline constexpr uint8_t kEventPartnerFailed = 0x01;
inline constexpr uint8_t kEventPartnerDeregistered = 0x02;
inline constexpr uint8_t kEventMigrated = 0x06;
inline constexpr uint8_t kEventPrepareSuspend = 0x09;
inline constexpr uint8_t kEventResume = 0x0A;

struct CrqMessage {
  uint64_t hi = 0;  // bytes 0-7, byte 0 = most significant byte
  uint64_t lo = 0;  // bytes 8-15
  friend bool operator==(const CrqMessage&, const CrqMessage&) = default;
};

inline constexpr uint64_t LoadBe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}
inline constexpr void StoreBe64(uint8_t* p, uint64_t v) {
  for (int i = 7; i >= 0; --i) {
    p[i] = static_cast<uint8_t>(v);
    v >>= 8;
  }
}

// The 16 bytes of an entry in queue order.
inline constexpr std::array<uint8_t, kCrqEntryBytes> EncodeEntry(CrqMessage m) {
  std::array<uint8_t, kCrqEntryBytes> b{};
  StoreBe64(b.data(), m.hi);
  StoreBe64(b.data() + 8, m.lo);
  return b;
}
inline constexpr CrqMessage DecodeEntry(std::span<const uint8_t, kCrqEntryBytes> b) {
  return CrqMessage{LoadBe64(b.data()), LoadBe64(b.data() + 8)};
}
// msg_hi from its 8 bytes in queue order.
inline constexpr uint64_t HiFromBytes(std::array<uint8_t, 8> b) { return LoadBe64(b.data()); }
inline constexpr uint8_t HeaderByte(uint64_t hi) { return static_cast<uint8_t>(hi >> 56); }
inline constexpr uint8_t SecondByte(uint64_t hi) { return static_cast<uint8_t>(hi >> 48); }

inline constexpr uint64_t kInitHi = 0xC001000000000000;          // INIT: C0 01 00..
inline constexpr uint64_t kInitCompleteHi = 0xC002000000000000;  // INIT COMPLETE: C0 02 00..
inline constexpr uint64_t TransportEventHi(uint8_t reason) {
  return (uint64_t{kCrqTransportEvent} << 56) | (uint64_t{reason} << 48);
}

// What H_SEND_CRQ accepts from a partition: bit 0x80 set and not 0xFF.
inline constexpr bool IsSendableHeader(uint8_t header) {
  return (header & 0x80) != 0 && header != kCrqTransportEvent;
}

}  // namespace vioport::crq
