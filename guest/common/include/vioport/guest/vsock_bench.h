// SPDX-License-Identifier: Apache-2.0
// The stream benchmark's wire protocol, spoken by `vioguest vsock bench`
// (over vsock, through vios to a host Unix socket) and by tests/vsock's
// vsock-peer (the host server, and the same client over a Unix socket
// directly: the baseline). The client's first 16 bytes say what it wants:
//   mode (1 byte: 'T' the client sends, 'R' the server sends, 'E' echo),
//   3 bytes zero, write size (le32), duration in ms (le32, 'R' only), 4 zero.
// 'T': the server reads until EOF, then writes the byte count (le64) and
//      closes: both ends count the same bytes.
// 'R': the server writes `size`-byte writes for the duration, then closes.
// 'E': the server echoes until EOF.
// It also holds the message sizes of the test exchanges.
#pragma once

#include <cstdint>
#include <cstring>

namespace vioport::vsock_bench {

inline constexpr size_t kHeaderSize = 16;

// Test exchanges (vioguest vsock connect/listen, vsock-peer exchange) cut
// the seeded stream (pattern.h) into SEQPACKET messages of seeded sizes:
// message `i` of the stream with `seed` has 1..max bytes.
inline uint32_t MessageSize(uint64_t seed, uint64_t i, uint32_t max) {
  uint64_t x = seed * 0x100000001b3ull + i + 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  return 1 + static_cast<uint32_t>(x % max);
}

struct Header {
  char mode = 'T';
  uint32_t size = 4096;
  uint32_t duration_ms = 0;
};

inline void Encode(const Header& h, uint8_t out[kHeaderSize]) {
  std::memset(out, 0, kHeaderSize);
  out[0] = static_cast<uint8_t>(h.mode);
  for (int i = 0; i < 4; ++i) {
    out[4 + i] = static_cast<uint8_t>(h.size >> (8 * i));
    out[8 + i] = static_cast<uint8_t>(h.duration_ms >> (8 * i));
  }
}

// False when the bytes are not a header this protocol defines.
inline bool Decode(const uint8_t in[kHeaderSize], Header* h) {
  h->mode = static_cast<char>(in[0]);
  h->size = 0;
  h->duration_ms = 0;
  for (int i = 0; i < 4; ++i) {
    h->size |= uint32_t{in[4 + i]} << (8 * i);
    h->duration_ms |= uint32_t{in[8 + i]} << (8 * i);
  }
  return (h->mode == 'T' || h->mode == 'R' || h->mode == 'E') && h->size > 0 && h->size <= (1u << 20) &&
         h->duration_ms <= 3600 * 1000;
}

}  // namespace vioport::vsock_bench
