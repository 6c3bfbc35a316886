// SPDX-License-Identifier: Apache-2.0
#pragma once

// The Xen transport's wire facts (docs/transports/xen.md): XenbusState,
// xenstore keys, the control page, grant-encoded device addresses.

#include <atomic>
#include <cstdint>
#include <string>

#include "vioport/core/mmio.h"

namespace vioport::xen {

// XenbusState (xen/include/public/io/xenbus.h).
enum class XenbusState : uint8_t {
  kUnknown = 0,
  kInitialising = 1,
  kInitWait = 2,
  kInitialised = 3,
  kConnected = 4,
  kClosing = 5,
  kClosed = 6,
  kReconfiguring = 7,
  kReconfigured = 8,
};

inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr uint32_t kMaxQueues = 64;
inline constexpr uint32_t kMaxQueueSize = 32768;  // virtio's limit; ring areas may span consecutive refs
inline constexpr uint64_t kPageSize = 4096;

// Linux's grant DMA encoding: bit 63 set, ref << 12 | offset.
inline constexpr uint64_t kGrantAddrBit = uint64_t{1} << 63;
inline constexpr uint64_t EncodeGrant(uint32_t ref, uint32_t offset = 0) {
  return kGrantAddrBit | (uint64_t{ref} << 12) | offset;
}
// False for an address without bit 63 or with a ref beyond 32 bits.
inline bool DecodeGrant(uint64_t addr, uint32_t* ref, uint32_t* offset) {
  if (!(addr & kGrantAddrBit)) return false;
  const uint64_t r = (addr & ~kGrantAddrBit) >> 12;
  if (r > 0xffffffffu) return false;
  *ref = static_cast<uint32_t>(r);
  *offset = static_cast<uint32_t>(addr & 0xfff);
  return true;
}

// The control page: the virtio-mmio mirror (0x000-0xeff, written by the
// backend), the register-write request (frontend) and answer (backend).
inline constexpr uint32_t kRequestOffset = 0xf00;
inline constexpr uint32_t kAnswerOffset = 0xf20;
struct ControlRequest {
  std::atomic<uint32_t> seq;  // written last (release) by the frontend
  uint32_t offset;
  uint32_t size;
  uint32_t pad;
  uint64_t value;
};
struct ControlAnswer {
  std::atomic<uint32_t> seq;  // the request's, once served (release)
  uint32_t result;            // 0 done, 1 ignored
};
static_assert(sizeof(ControlRequest) <= kAnswerOffset - kRequestOffset);
static_assert(mmio::kPageSize == kPageSize);

inline std::string FrontendDir(uint32_t frontend, uint32_t devid) {
  return "/local/domain/" + std::to_string(frontend) + "/device/virtio/" + std::to_string(devid);
}
inline std::string BackendDir(uint32_t backend, uint32_t frontend, uint32_t devid) {
  return "/local/domain/" + std::to_string(backend) + "/backend/virtio/" + std::to_string(frontend) + "/" +
         std::to_string(devid);
}

}  // namespace vioport::xen
