// SPDX-License-Identifier: Apache-2.0
#pragma once

// Wire format of the hypervisor-less shared-memory transport (virtio-mmio
// over a memfd and a Unix seqpacket socket). docs/transports/shm.md is the
// specification; this header is its machine-readable half, shared by the
// device side (ShmServer) and the guest side (ShmDriverTransport).

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "vioport/core/mmio.h"
#include "vioport/core/spec.h"

namespace vioport::shm {

// Layout of the shared region: page 0 is the register block, the rest is
// guest memory. Guest-physical addresses are offsets in the region, so the
// register page (0..kRegisterPageSize) is never a valid buffer address.
inline constexpr uint64_t kRegisterPageSize = 4096;
inline constexpr uint64_t kConfigOffset = 0x100;  // device config in the register page
inline constexpr uint32_t kMaxConfigSize = kRegisterPageSize - kConfigOffset;
inline constexpr uint64_t kMinRegionSize = 64 * 1024;
inline constexpr uint64_t kMaxRegionSize = uint64_t{64} << 30;
inline constexpr uint16_t kMaxQueues = 64;  // 2 fds a queue + 1 must fit one SCM_RIGHTS message

// The register map and interrupt bits are virtio-mmio's (vioport/core/mmio.h).
namespace reg = mmio::reg;
using mmio::kIntConfig;
using mmio::kIntUsedBuffer;
using mmio::kMagicValue;
using mmio::kVendorValue;
static_assert(kRegisterPageSize == mmio::kPageSize && kConfigOffset == mmio::kConfigOffset);

inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr uint32_t kMaxMessageBytes = 512;

enum class MsgType : uint32_t {
  kHello = 1,     // guest -> device: memfd attached
  kWelcome = 2,   // device -> guest: eventfds attached
  kRegWrite = 3,  // guest -> device
  kRegAck = 4,    // device -> guest
  kError = 5,     // device -> guest: text follows the header; the device closes
};

// Every message starts with this 32-byte little-endian header. kError
// carries up to kMaxMessageBytes - 32 bytes of UTF-8 text after it.
struct MsgHeader {
  le32 type;
  le32 seq;     // kRegWrite: chosen by the guest, echoed by kRegAck
  le32 offset;  // kHello: mmio version wanted (1 or 2); kRegWrite: register offset
  le32 size;    // kRegWrite: access width 1, 2 or 4; kWelcome: number of queues
  le64 value;   // kHello: region size; kRegWrite: value; kRegAck: 0 done, 1 ignored
  le64 aux;     // kHello: protocol version; kWelcome: device id
};
static_assert(sizeof(MsgHeader) == 32);

// Sends one message with optional fds (SCM_RIGHTS). Blocking or not as the
// socket is; EINTR is retried.
absl::Status SendMsg(int sock, const MsgHeader& h, std::span<const uint8_t> tail = {},
                     std::span<const int> fds = {});

struct ReceivedMsg {
  MsgHeader header{};
  std::string tail;
  std::vector<int> fds;  // owned by the receiver: close them
};
// Receives one message. Unavailable on EOF, ResourceExhausted on EAGAIN,
// InvalidArgument on a short, truncated or oversized message (the fds that
// came with it are closed).
absl::StatusOr<ReceivedMsg> RecvMsg(int sock, size_t max_fds);

}  // namespace vioport::shm
