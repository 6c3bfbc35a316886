// SPDX-License-Identifier: Apache-2.0
#pragma once

// The vhost-user wire protocol: the channel between a VMM (the front-end,
// QEMU or emulators/kvm's VmmFrontend) and a device back-end (vios). Message
// numbers, payload layouts, flags, and a reader/writer for a Unix stream
// socket carrying SCM_RIGHTS fds. docs/transports/vhost-user.md describes
// how vioport uses it; the protocol itself is QEMU's docs/interop/vhost-user.rst.
//
// Everything here is native-endian (x86-64: little), as the protocol says.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace vioport::vhost_user {

// Front-end -> back-end requests.
enum class Req : uint32_t {
  kNone = 0,
  kGetFeatures = 1,
  kSetFeatures = 2,
  kSetOwner = 3,
  kResetOwner = 4,
  kSetMemTable = 5,
  kSetLogBase = 6,
  kSetLogFd = 7,
  kSetVringNum = 8,
  kSetVringAddr = 9,
  kSetVringBase = 10,
  kGetVringBase = 11,
  kSetVringKick = 12,
  kSetVringCall = 13,
  kSetVringErr = 14,
  kGetProtocolFeatures = 15,
  kSetProtocolFeatures = 16,
  kGetQueueNum = 17,
  kSetVringEnable = 18,
  kSendRarp = 19,
  kNetSetMtu = 20,
  kSetBackendReqFd = 21,
  kIotlbMsg = 22,
  kSetVringEndian = 23,
  kGetConfig = 24,
  kSetConfig = 25,
  kCreateCryptoSession = 26,
  kCloseCryptoSession = 27,
  kPostcopyAdvise = 28,
  kPostcopyListen = 29,
  kPostcopyEnd = 30,
  kGetInflightFd = 31,
  kSetInflightFd = 32,
  kGpuSetSocket = 33,
  kResetDevice = 34,
  kVringKick = 35,
  kGetMaxMemSlots = 36,
  kAddMemReg = 37,
  kRemMemReg = 38,
  kSetStatus = 39,
  kGetStatus = 40,
};
const char* ReqName(uint32_t req);

// Header flags.
inline constexpr uint32_t kVersion = 0x1;       // bits 0-1
inline constexpr uint32_t kVersionMask = 0x3;
inline constexpr uint32_t kFlagReply = 1u << 2;
inline constexpr uint32_t kFlagNeedReply = 1u << 3;

// Feature bit 30 in GET/SET_FEATURES: the back-end speaks protocol features.
inline constexpr unsigned kFeatureProtocolFeatures = 30;
inline constexpr unsigned kFeatureLogAll = 26;

namespace proto {  // protocol feature bits
inline constexpr unsigned kMq = 0;
inline constexpr unsigned kLogShmfd = 1;
inline constexpr unsigned kRarp = 2;
inline constexpr unsigned kReplyAck = 3;
inline constexpr unsigned kMtu = 4;
inline constexpr unsigned kBackendReq = 5;
inline constexpr unsigned kCrossEndian = 6;
inline constexpr unsigned kCryptoSession = 7;
inline constexpr unsigned kPagefault = 8;
inline constexpr unsigned kConfig = 9;
inline constexpr unsigned kBackendSendFd = 10;
inline constexpr unsigned kHostNotifier = 11;
inline constexpr unsigned kInflightShmfd = 12;
inline constexpr unsigned kResetDevice = 13;
inline constexpr unsigned kInbandNotifications = 14;
inline constexpr unsigned kConfigureMemSlots = 15;
inline constexpr unsigned kStatus = 16;
}  // namespace proto

// Back-end requests (on the SET_BACKEND_REQ_FD channel, back-end to front-end).
inline constexpr uint32_t kBackendConfigChangeMsg = 2;

inline constexpr size_t kHeaderSize = 12;
inline constexpr size_t kMaxFds = 8;            // per message, as libvhost-user
inline constexpr size_t kMaxPayload = 4096;     // larger than any payload we accept
inline constexpr uint32_t kMaxMemRegions = 8;   // in one SET_MEM_TABLE
inline constexpr uint32_t kMaxMemSlots = 32;    // GET_MAX_MEM_SLOTS answer (ADD_MEM_REG)
inline constexpr uint32_t kMaxConfigSize = 256;

// u64 payloads of SET_VRING_KICK/CALL/ERR: bits 0-7 queue, bit 8 "no fd".
inline constexpr uint64_t kVringIndexMask = 0xff;
inline constexpr uint64_t kVringNoFd = 1ull << 8;

struct Header {
  uint32_t request;
  uint32_t flags;
  uint32_t size;  // payload bytes
};
static_assert(sizeof(Header) == kHeaderSize);

struct VringState {  // SET_VRING_NUM/BASE, GET_VRING_BASE, SET_VRING_ENABLE
  uint32_t index;
  uint32_t num;
};

struct VringAddr {  // SET_VRING_ADDR: front-end virtual addresses
  uint32_t index;
  uint32_t flags;  // bit 0: log
  uint64_t desc;
  uint64_t used;   // used before avail, as on the wire
  uint64_t avail;
  uint64_t log;
};
static_assert(sizeof(VringAddr) == 40);

struct MemRegion {
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;  // front-end virtual address of the region
  uint64_t mmap_offset;     // where the region starts in its fd
};
static_assert(sizeof(MemRegion) == 32);

struct MemTableHeader {  // SET_MEM_TABLE: then nregions MemRegion, one fd each
  uint32_t nregions;
  uint32_t padding;
};

struct SingleMemRegion {  // ADD_MEM_REG / REM_MEM_REG
  uint64_t padding;
  MemRegion region;
};

struct ConfigHeader {  // GET/SET_CONFIG: then `size` bytes
  uint32_t offset;
  uint32_t size;
  uint32_t flags;  // 0: from the front-end, 1: migration
};
inline constexpr uint32_t kConfigFlagMigration = 1;

struct Inflight {  // GET/SET_INFLIGHT_FD
  uint64_t mmap_size;
  uint64_t mmap_offset;
  uint16_t num_queues;
  uint16_t queue_size;
};
static_assert(sizeof(Inflight) == 24);

// One message: header, payload, and the fds that came with it (owned: the
// destructor closes those not taken with TakeFd()).
struct Message {
  Header header{};
  std::vector<uint8_t> payload;
  std::vector<int> fds;

  Message() = default;
  Message(Message&& o) noexcept;
  Message& operator=(Message&& o) noexcept;
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;
  ~Message();

  Req req() const { return static_cast<Req>(header.request); }
  bool need_reply() const { return header.flags & kFlagNeedReply; }
  // Payload as T if it is exactly sizeof(T) bytes (some requests allow more:
  // use AtLeast).
  template <typename T>
  bool As(T* out) const;
  template <typename T>
  bool AtLeast(T* out) const;
  int TakeFd(size_t i);  // -1 if absent; the message no longer owns it
  void CloseFds();
};

template <typename T>
bool Message::As(T* out) const {
  if (payload.size() != sizeof(T)) return false;
  __builtin_memcpy(out, payload.data(), sizeof(T));
  return true;
}
template <typename T>
bool Message::AtLeast(T* out) const {
  if (payload.size() < sizeof(T)) return false;
  __builtin_memcpy(out, payload.data(), sizeof(T));
  return true;
}

// Reads one message at a time from a stream socket, in non-blocking steps:
// the header, then exactly its payload, so fds sent with the next message
// are never taken for this one's. Feed() returns
//   true      - a whole message is in *out,
//   false     - more bytes are needed (EAGAIN),
//   an error  - Unavailable: the peer closed or the socket failed;
//               InvalidArgument: the message is malformed (too large, too
//               many fds, truncated control data). The connection should be
//               closed either way.
class MessageReader {
 public:
  absl::StatusOr<bool> Feed(int sock, Message* out);
  // Blocking convenience (the socket may be blocking): one whole message.
  absl::StatusOr<Message> ReadBlocking(int sock);
  // Parses a message from a byte buffer (fuzzing, tests): the same checks as
  // Feed without a socket. `used` gets the bytes consumed.
  static absl::StatusOr<Message> Parse(std::span<const uint8_t> bytes, size_t* used);
  // Live upgrade: the part of a message read so far (bytes and fds), and a
  // reader that carries on from it in the new vios (checked as Feed would).
  std::vector<uint8_t> PartialBytes() const;
  const std::vector<int>& PartialFds() const { return cur_.fds; }
  absl::Status RestorePartial(std::span<const uint8_t> bytes, std::vector<int> fds);

 private:
  absl::Status Absorb(int sock, uint8_t* dst, size_t want, size_t* got);
  Header header_{};
  size_t have_ = 0;  // bytes of header + payload read so far
  Message cur_;
};

// Sends a message (header + payload in one sendmsg, fds with it). Retries
// EINTR; on EAGAIN waits for the socket up to `timeout_ms` (a peer that does
// not read its replies is broken).
absl::Status SendMessage(int sock, uint32_t request, uint32_t flags, std::span<const uint8_t> payload,
                         std::span<const int> fds = {}, int timeout_ms = 1000);

template <typename T>
std::span<const uint8_t> Bytes(const T& v) {
  return {reinterpret_cast<const uint8_t*>(&v), sizeof v};
}

}  // namespace vioport::vhost_user
