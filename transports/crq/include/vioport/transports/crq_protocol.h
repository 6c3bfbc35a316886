// SPDX-License-Identifier: Apache-2.0
// virtio over PowerVM CRQs (docs/transports/crq.md): the 16-byte message,
// encoded and decoded explicitly big-endian, the opcodes and statuses, and
// CrqQueue, the consumer of a partition's own receive queue.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <thread>

#include "vioport/transports/crq_channel.h"

namespace vioport::crq {

inline constexpr uint8_t kValidCommand = 0x80;
inline constexpr uint8_t kValidInit = 0xC0;
inline constexpr uint8_t kValidEvent = 0xFF;
inline constexpr uint8_t kInit = 0x01;
inline constexpr uint8_t kInitComplete = 0x02;
inline constexpr uint8_t kEventDeregistered = 0x02;

inline constexpr uint16_t kVersionMajor = 1;
inline constexpr uint16_t kVersionMinor = 0;
inline constexpr uint8_t kResponse = 0x80;  // opcode | kResponse

enum class Op : uint8_t {
  kVersion = 0x01,
  kDeviceInfo = 0x02,
  kGetFeatures = 0x03,
  kSetFeatures = 0x04,
  kGetStatus = 0x05,
  kSetStatus = 0x06,
  kReadConfig = 0x07,
  kWriteConfig = 0x08,
  kQueueInfo = 0x09,
  kSetQueue = 0x0A,
  kNotify = 0x10,
  kUsed = 0x11,
  kConfigChanged = 0x12,
  kPing = 0x13,
  kCredit = 0x14,  // both ways, no response: `a` = messages consumed (mod 2^16)
};

enum class MsgStatus : uint8_t {
  kOk = 0,
  kBadRequest = 1,
  kBadState = 2,
  kVersionMismatch = 3,
  kOutOfRange = 4,
  kTooLarge = 5,
};

// SET_QUEUE `b`.
enum class QueueField : uint16_t { kSize = 0, kDesc = 1, kDriver = 2, kDevice = 3, kEnable = 4 };

// One entry as the protocol sees it. Byte 0 valid, 1 opcode, 2 status,
// 3 generation, 4-5 a (BE16), 6-7 b (BE16), 8-15 value (BE64).
struct Message {
  uint8_t valid = kValidCommand;
  uint8_t op = 0;
  uint8_t status = 0;
  uint8_t generation = 0;
  uint16_t a = 0;
  uint16_t b = 0;
  uint64_t value = 0;

  // msg_hi = bytes 0-7 (byte 0 most significant), msg_lo = bytes 8-15.
  uint64_t hi() const {
    return uint64_t{valid} << 56 | uint64_t{op} << 48 | uint64_t{status} << 40 | uint64_t{generation} << 32 |
           uint64_t{a} << 16 | uint64_t{b};
  }
  uint64_t lo() const { return value; }
  static Message FromWords(uint64_t hi, uint64_t lo) {
    Message m;
    m.valid = static_cast<uint8_t>(hi >> 56);
    m.op = static_cast<uint8_t>(hi >> 48);
    m.status = static_cast<uint8_t>(hi >> 40);
    m.generation = static_cast<uint8_t>(hi >> 32);
    m.a = static_cast<uint16_t>(hi >> 16);
    m.b = static_cast<uint16_t>(hi);
    m.value = lo;
    return m;
  }
  // From the 16 bytes of a queue slot, big-endian.
  static Message FromBytes(const uint8_t* p) {
    uint64_t hi = 0, lo = 0;
    for (int i = 0; i < 8; ++i) hi = hi << 8 | p[i];
    for (int i = 8; i < 16; ++i) lo = lo << 8 | p[i];
    return FromWords(hi, lo);
  }
  void ToBytes(uint8_t* p) const {
    const uint64_t h = hi(), l = lo();
    for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(h >> (56 - 8 * i));
    for (int i = 0; i < 8; ++i) p[8 + i] = static_cast<uint8_t>(l >> (56 - 8 * i));
  }
  static Message Init(uint8_t kind) {
    Message m;
    m.valid = kValidInit;
    m.op = kind;
    return m;
  }
  static Message Command(Op op, uint8_t generation, uint16_t a = 0, uint16_t b = 0, uint64_t value = 0) {
    Message m;
    m.op = static_cast<uint8_t>(op);
    m.generation = generation;
    m.a = a;
    m.b = b;
    m.value = value;
    return m;
  }
};

// VERSION value: {crq entries BE16, max transfer BE32, max queues BE16}.
struct VersionCaps {
  uint16_t crq_entries = 0;
  uint32_t max_transfer = 0;
  uint16_t max_queues = 0;
  uint64_t Encode() const {
    return uint64_t{crq_entries} << 48 | uint64_t{max_transfer} << 16 | uint64_t{max_queues};
  }
  static VersionCaps Decode(uint64_t v) {
    return {static_cast<uint16_t>(v >> 48), static_cast<uint32_t>(v >> 16), static_cast<uint16_t>(v)};
  }
};

// After a migration event (FF 06): H_ENABLE_CRQ until it stops answering
// H_IN_PROGRESS or busy (the hypervisor may need a few tries, up to ~1 s
// here), then interrupts back on. Both sides then start again from INIT.
inline void EnableAfterMigration(Partition& p, uint64_t unit) {
  for (int i = 0; i < 10000; ++i) {
    const int64_t rc = p.EnableCrq(unit);
    if (rc != kHInProgress && rc != kHBusy && !IsLongBusy(rc)) break;
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  p.VioSignal(unit, 1);
}

// Flow control of one connection (docs/transports/crq.md, "Flow control").
// Counted: every 0x80 message of the connection except VERSION, its
// response and CREDIT. A side keeps what it sent and the partner has not
// reported consumed below half the partner's queue; the receiver reports
// its consumed count with CREDIT every eighth of its own queue.
class FlowControl {
 public:
  // At VERSION: both counts restart.
  void Reset(uint16_t partner_entries, uint16_t my_entries) {
    sent_ = acked_ = consumed_ = reported_ = 0;
    limit_ = static_cast<uint16_t>(partner_entries / 2 > 0 ? partner_entries / 2 : 1);
    report_every_ = static_cast<uint16_t>(my_entries / 8 > 0 ? my_entries / 8 : 1);
  }
  bool CanSend() const { return outstanding() < limit_; }
  void Sent() { ++sent_; }
  // The partner's CREDIT; false if it reports more than we ever sent.
  bool Credit(uint16_t consumed_by_partner) {
    if (static_cast<uint16_t>(consumed_by_partner - acked_) > outstanding()) return false;
    acked_ = consumed_by_partner;
    return true;
  }
  void Consumed() { ++consumed_; }
  bool ShouldReport() const { return static_cast<uint16_t>(consumed_ - reported_) >= report_every_; }
  uint16_t Report() {
    reported_ = consumed_;
    return consumed_;
  }
  uint16_t outstanding() const { return static_cast<uint16_t>(sent_ - acked_); }
  uint16_t limit() const { return limit_; }
  // Live upgrade: the counts as they are, and back.
  std::array<uint16_t, 6> Save() const { return {sent_, acked_, consumed_, reported_, limit_, report_every_}; }
  void Restore(const std::array<uint16_t, 6>& v) {
    sent_ = v[0], acked_ = v[1], consumed_ = v[2], reported_ = v[3];
    limit_ = v[4] ? v[4] : 1, report_every_ = v[5] ? v[5] : 1;
  }

 private:
  uint16_t sent_ = 0, acked_ = 0, consumed_ = 0, reported_ = 0;
  uint16_t limit_ = 1, report_every_ = 1;
};

// The consumer side of the partition's own receive queue (a ring of 16-byte
// entries only the hypervisor writes): byte 0 loaded with acquire, the entry
// read, byte 0 stored 0 with release (the slot goes back), cursor wraps.
class CrqQueue {
 public:
  CrqQueue() = default;
  CrqQueue(uint8_t* base, uint64_t bytes) : base_(base), bytes_(bytes) {}

  // Zeroes the page and rewinds (before every H_REG_CRQ).
  void Reset() {
    std::memset(base_, 0, bytes_);
    cursor_ = 0;
    std::atomic_thread_fence(std::memory_order_release);
  }
  bool Peek() const { return Valid(base_ + cursor_) != 0; }
  // Live upgrade: where the next entry is read (a multiple of 16 below the size).
  uint64_t cursor() const { return cursor_; }
  bool set_cursor(uint64_t c) {
    if (c % 16 || c >= bytes_) return false;
    cursor_ = c;
    return true;
  }
  // Takes the next entry; false if the slot is empty.
  bool Pop(Message* out) {
    uint8_t* slot = base_ + cursor_;
    if ((Valid(slot) & 0x80) == 0) return false;
    *out = Message::FromBytes(slot);
    std::atomic_ref<uint8_t>(slot[0]).store(0, std::memory_order_release);
    cursor_ = (cursor_ + 16) % bytes_;
    return true;
  }
  // Takes every entry there is, in order. No hypercall: interrupts stay
  // enabled (H_VIO_SIGNAL 1) from registration on, and the partition's
  // interrupt eventfd counts edges, so a reader that reads the eventfd
  // before draining never misses an entry that lands after its drain (that
  // entry makes the eventfd readable again). Returns the number handled.
  template <typename Fn>
  size_t Drain(Fn&& fn) {
    size_t n = 0;
    Message m;
    while (Pop(&m)) {
      fn(m);
      ++n;
    }
    return n;
  }
  uint64_t entries() const { return bytes_ / 16; }

 private:
  static uint8_t Valid(uint8_t* slot) { return std::atomic_ref<uint8_t>(*slot).load(std::memory_order_acquire); }
  uint8_t* base_ = nullptr;
  uint64_t bytes_ = 0;
  uint64_t cursor_ = 0;
};

}  // namespace vioport::crq
