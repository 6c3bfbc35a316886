// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/shm_protocol.h"

#include <unistd.h>

#include <cstring>

#include "vioport/transports/fd.h"

namespace vioport::shm {

absl::Status SendMsg(int sock, const MsgHeader& h, std::string_view text, std::span<const int> fds) {
  uint8_t buf[kMaxMessageBytes];
  text = text.substr(0, sizeof buf - sizeof h);
  std::memcpy(buf, &h, sizeof h);
  std::memcpy(buf + sizeof h, text.data(), text.size());
  return SendWithFds(sock, {buf, sizeof h + text.size()}, fds);
}

absl::StatusOr<ReceivedMsg> RecvMsg(int sock, size_t max_fds) {
  uint8_t buf[kMaxMessageBytes + 1];
  ReceivedMsg r;
  auto n = RecvWithFds(sock, buf, &r.fds, max_fds);
  if (!n.ok()) return n.status();
  if (*n < sizeof(MsgHeader) || *n > kMaxMessageBytes) {
    for (int fd : r.fds) ::close(fd);
    return absl::InvalidArgumentError(*n < sizeof(MsgHeader) ? "message shorter than its header" : "message too long");
  }
  std::memcpy(&r.header, buf, sizeof r.header);
  r.tail.assign(reinterpret_cast<char*>(buf) + sizeof r.header, *n - sizeof r.header);
  return r;
}

}  // namespace vioport::shm
