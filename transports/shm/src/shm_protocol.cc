// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/shm_protocol.h"

#include <cstring>


namespace vioport::shm {

absl::Status SendMsg(int sock, const MsgHeader& h, std::string_view text, std::span<const int> fds) {
  uint8_t buf[kMaxMessageBytes];
  text = text.substr(0, sizeof buf - sizeof h);
  std::memcpy(buf, &h, sizeof h);
  if (!text.empty()) std::memcpy(buf + sizeof h, text.data(), text.size());  // an empty view's data may be null
  return SendWithFds(sock, {buf, sizeof h + text.size()}, fds);
}

absl::StatusOr<ReceivedMsg> RecvMsg(int sock, size_t max_fds) {
  uint8_t buf[kMaxMessageBytes + 1];
  std::vector<int> fds;
  auto n = RecvWithFds(sock, buf, &fds, max_fds);
  ReceivedMsg r;
  for (int fd : fds) r.fds.emplace_back(fd);
  if (!n.ok()) return n.status();
  if (*n < sizeof(MsgHeader) || *n > kMaxMessageBytes)
    return absl::InvalidArgumentError(*n < sizeof(MsgHeader) ? "message shorter than its header" : "message too long");
  std::memcpy(&r.header, buf, sizeof r.header);
  r.tail.assign(reinterpret_cast<char*>(buf) + sizeof r.header, *n - sizeof r.header);
  return r;
}

}  // namespace vioport::shm
