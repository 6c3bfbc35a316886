// SPDX-License-Identifier: Apache-2.0
// Wire format of the hypervisor-less shared-memory transport: virtio-mmio
// over a memfd and a Unix seqpacket socket. docs/transports/shm.md is the
// specification; this is its machine-readable half, shared by the device
// side (shm::Session and its endpoint) and the guest side (ShmDriverTransport).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "vioport/core/mmio.h"
#include "vioport/core/spec.h"
#include "vioport/transports/fd.h"

namespace vioport::shm {

// Page 0 of the region is the register mirror (vioport/core/mmio.h), the
// rest is guest memory. Guest-physical addresses are offsets in the region,
// so the register page is never a valid buffer address.
inline constexpr uint64_t kRegisterPageSize = mmio::kPageSize;
inline constexpr uint64_t kMinRegionSize = 64 * 1024;
inline constexpr uint64_t kMaxRegionSize = uint64_t{64} << 30;
inline constexpr uint32_t kMaxConfigSize = mmio::kPageSize - mmio::kConfigOffset;
inline constexpr uint16_t kMaxQueues = 64;  // 2 fds a queue + 1 must fit one SCM_RIGHTS message
inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr uint32_t kMaxMessageBytes = 512;

enum class MsgType : uint32_t {
  kHello = 1,     // guest -> device: memfd attached
  kWelcome = 2,   // device -> guest: eventfds attached (config call, kicks, calls)
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

inline MsgHeader Header(MsgType type) {
  MsgHeader h{};
  h.type = static_cast<uint32_t>(type);
  return h;
}
inline MsgType TypeOf(const MsgHeader& h) { return static_cast<MsgType>(static_cast<uint32_t>(h.type)); }

// One message with optional text and fds.
absl::Status SendMsg(int sock, const MsgHeader& h, std::string_view text = {}, std::span<const int> fds = {});

struct ReceivedMsg {
  MsgHeader header{};
  std::string tail;
  std::vector<UniqueFd> fds;
};
// One message: Unavailable on EOF, ResourceExhausted when none is waiting,
// InvalidArgument if short, truncated or with over `max_fds` fds.
absl::StatusOr<ReceivedMsg> RecvMsg(int sock, size_t max_fds);

}  // namespace vioport::shm
