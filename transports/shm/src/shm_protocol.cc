// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/shm_protocol.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace vioport::shm {

absl::Status SendMsg(int sock, const MsgHeader& h, std::span<const uint8_t> tail, std::span<const int> fds) {
  uint8_t buf[kMaxMessageBytes];
  if (tail.size() > sizeof buf - sizeof h) tail = tail.first(sizeof buf - sizeof h);
  std::memcpy(buf, &h, sizeof h);
  if (!tail.empty()) std::memcpy(buf + sizeof h, tail.data(), tail.size());
  iovec iov{buf, sizeof h + tail.size()};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  alignas(cmsghdr) uint8_t ctl[CMSG_SPACE(sizeof(int) * (2 * kMaxQueues + 1))];
  if (fds.size() > 2 * kMaxQueues + 1) return absl::InvalidArgumentError("too many fds for one message");
  if (!fds.empty()) {
    m.msg_control = ctl;
    m.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    ssize_t n = ::sendmsg(sock, &m, MSG_NOSIGNAL);
    if (n >= 0) return absl::OkStatus();
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return absl::ResourceExhaustedError("socket full");
    return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
  }
}

absl::StatusOr<ReceivedMsg> RecvMsg(int sock, size_t max_fds) {
  uint8_t buf[kMaxMessageBytes + 1];
  iovec iov{buf, sizeof buf};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  alignas(cmsghdr) uint8_t ctl[CMSG_SPACE(sizeof(int) * (2 * kMaxQueues + 1))];
  m.msg_control = ctl;
  m.msg_controllen = sizeof ctl;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EAGAIN) return absl::ResourceExhaustedError("no message");
  if (n < 0) return absl::UnavailableError(absl::StrCat("receive: ", std::strerror(errno)));
  if (n == 0) return absl::UnavailableError("peer closed the connection");
  ReceivedMsg r;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      r.fds.push_back(fd);
    }
  }
  auto reject = [&](const char* why) {
    for (int fd : r.fds) ::close(fd);
    return absl::InvalidArgumentError(why);
  };
  if (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) return reject("message or its fds truncated");
  if (static_cast<size_t>(n) < sizeof(MsgHeader)) return reject("message shorter than its header");
  if (r.fds.size() > max_fds) return reject("message carries more fds than allowed");
  std::memcpy(&r.header, buf, sizeof r.header);
  r.tail.assign(reinterpret_cast<char*>(buf) + sizeof r.header, static_cast<size_t>(n) - sizeof r.header);
  return r;
}

}  // namespace vioport::shm
