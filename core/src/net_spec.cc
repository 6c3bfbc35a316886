// SPDX-License-Identifier: Apache-2.0
#include "vioport/core/net_spec.h"

#include "absl/strings/str_format.h"

namespace vioport::net {

bool ParseMac(std::string_view text, Mac* out) {
  if (text.size() != 17) return false;
  Mac m = 0;
  for (int i = 0; i < 6; ++i) {
    if (i > 0 && text[i * 3 - 1] != ':') return false;
    unsigned v = 0;
    for (int k = 0; k < 2; ++k) {
      const char c = text[i * 3 + k];
      unsigned d;
      if (c >= '0' && c <= '9') d = c - '0';
      else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
      else return false;
      v = v * 16 + d;
    }
    m = (m << 8) | v;
  }
  *out = m;
  return true;
}

std::string MacString(Mac m) {
  uint8_t b[6];
  MacToBytes(m, b);
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5]);
}

}  // namespace vioport::net
