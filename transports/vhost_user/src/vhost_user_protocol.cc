// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/vhost_user_protocol.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace vioport::vhost_user {

const char* ReqName(uint32_t req) {
  switch (static_cast<Req>(req)) {
    case Req::kGetFeatures: return "GET_FEATURES";
    case Req::kSetFeatures: return "SET_FEATURES";
    case Req::kSetOwner: return "SET_OWNER";
    case Req::kResetOwner: return "RESET_OWNER";
    case Req::kSetMemTable: return "SET_MEM_TABLE";
    case Req::kSetLogBase: return "SET_LOG_BASE";
    case Req::kSetLogFd: return "SET_LOG_FD";
    case Req::kSetVringNum: return "SET_VRING_NUM";
    case Req::kSetVringAddr: return "SET_VRING_ADDR";
    case Req::kSetVringBase: return "SET_VRING_BASE";
    case Req::kGetVringBase: return "GET_VRING_BASE";
    case Req::kSetVringKick: return "SET_VRING_KICK";
    case Req::kSetVringCall: return "SET_VRING_CALL";
    case Req::kSetVringErr: return "SET_VRING_ERR";
    case Req::kGetProtocolFeatures: return "GET_PROTOCOL_FEATURES";
    case Req::kSetProtocolFeatures: return "SET_PROTOCOL_FEATURES";
    case Req::kGetQueueNum: return "GET_QUEUE_NUM";
    case Req::kSetVringEnable: return "SET_VRING_ENABLE";
    case Req::kSendRarp: return "SEND_RARP";
    case Req::kNetSetMtu: return "NET_SET_MTU";
    case Req::kSetBackendReqFd: return "SET_BACKEND_REQ_FD";
    case Req::kIotlbMsg: return "IOTLB_MSG";
    case Req::kSetVringEndian: return "SET_VRING_ENDIAN";
    case Req::kGetConfig: return "GET_CONFIG";
    case Req::kSetConfig: return "SET_CONFIG";
    case Req::kCreateCryptoSession: return "CREATE_CRYPTO_SESSION";
    case Req::kCloseCryptoSession: return "CLOSE_CRYPTO_SESSION";
    case Req::kPostcopyAdvise: return "POSTCOPY_ADVISE";
    case Req::kPostcopyListen: return "POSTCOPY_LISTEN";
    case Req::kPostcopyEnd: return "POSTCOPY_END";
    case Req::kGetInflightFd: return "GET_INFLIGHT_FD";
    case Req::kSetInflightFd: return "SET_INFLIGHT_FD";
    case Req::kGpuSetSocket: return "GPU_SET_SOCKET";
    case Req::kResetDevice: return "RESET_DEVICE";
    case Req::kVringKick: return "VRING_KICK";
    case Req::kGetMaxMemSlots: return "GET_MAX_MEM_SLOTS";
    case Req::kAddMemReg: return "ADD_MEM_REG";
    case Req::kRemMemReg: return "REM_MEM_REG";
    case Req::kSetStatus: return "SET_STATUS";
    case Req::kGetStatus: return "GET_STATUS";
    case Req::kNone: break;
  }
  return "UNKNOWN";
}

Message::Message(Message&& o) noexcept
    : header(o.header), payload(std::move(o.payload)), fds(std::exchange(o.fds, {})) {}

Message& Message::operator=(Message&& o) noexcept {
  if (this != &o) {
    CloseFds();
    header = o.header;
    payload = std::move(o.payload);
    fds = std::exchange(o.fds, {});
  }
  return *this;
}

Message::~Message() { CloseFds(); }

int Message::TakeFd(size_t i) {
  if (i >= fds.size()) return -1;
  return std::exchange(fds[i], -1);
}

void Message::CloseFds() {
  for (int fd : fds)
    if (fd >= 0) ::close(fd);
  fds.clear();
}

namespace {

absl::Status CheckHeader(const Header& h) {
  if ((h.flags & kVersionMask) != kVersion)
    return absl::InvalidArgumentError(absl::StrCat("header version ", h.flags & kVersionMask, " (expected 1)"));
  if (h.size > kMaxPayload)
    return absl::InvalidArgumentError(absl::StrCat(ReqName(h.request), ": payload of ", h.size, " bytes (limit ",
                                                   kMaxPayload, ")"));
  return absl::OkStatus();
}

}  // namespace

absl::Status MessageReader::Absorb(int sock, uint8_t* dst, size_t want, size_t* got) {
  *got = 0;
  iovec iov{dst, want};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  alignas(cmsghdr) uint8_t ctl[CMSG_SPACE(sizeof(int) * kMaxFds)];
  m.msg_control = ctl;
  m.msg_controllen = sizeof ctl;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return absl::OkStatus();
  if (n < 0) return absl::UnavailableError(absl::StrCat("receive: ", std::strerror(errno)));
  if (n == 0) return absl::UnavailableError("front-end closed the connection");
  size_t received_fds = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      cur_.fds.push_back(fd);  // owned by cur_ from here: closed on any error
      received_fds++;
    }
  }
  if (m.msg_flags & MSG_CTRUNC)
    return absl::InvalidArgumentError(absl::StrCat("more than ", kMaxFds, " fds with one message"));
  if (cur_.fds.size() > kMaxFds)
    return absl::InvalidArgumentError(absl::StrCat(cur_.fds.size(), " fds with one message (limit ", kMaxFds, ")"));
  *got = static_cast<size_t>(n);
  return absl::OkStatus();
}

absl::StatusOr<bool> MessageReader::Feed(int sock, Message* out) {
  auto fail = [&](absl::Status s) -> absl::StatusOr<bool> {
    cur_ = Message();  // closes fds read so far
    have_ = 0;
    return s;
  };
  for (;;) {
    size_t got = 0;
    if (have_ < kHeaderSize) {
      absl::Status s = Absorb(sock, reinterpret_cast<uint8_t*>(&header_) + have_, kHeaderSize - have_, &got);
      if (!s.ok()) return fail(s);
      if (got == 0) return false;
      have_ += got;
      if (have_ < kHeaderSize) continue;
      if (absl::Status c = CheckHeader(header_); !c.ok()) return fail(c);
      cur_.header = header_;
      cur_.payload.resize(header_.size);
    }
    const size_t total = kHeaderSize + header_.size;
    if (have_ < total) {
      absl::Status s = Absorb(sock, cur_.payload.data() + (have_ - kHeaderSize), total - have_, &got);
      if (!s.ok()) return fail(s);
      if (got == 0) return false;
      have_ += got;
      if (have_ < total) continue;
    }
    *out = std::move(cur_);
    cur_ = Message();
    have_ = 0;
    return true;
  }
}

std::vector<uint8_t> MessageReader::PartialBytes() const {
  std::vector<uint8_t> b(reinterpret_cast<const uint8_t*>(&header_),
                         reinterpret_cast<const uint8_t*>(&header_) + std::min(have_, kHeaderSize));
  if (have_ > kHeaderSize) b.insert(b.end(), cur_.payload.begin(), cur_.payload.begin() + (have_ - kHeaderSize));
  return b;
}

absl::Status MessageReader::RestorePartial(std::span<const uint8_t> bytes, std::vector<int> fds) {
  cur_ = Message();
  cur_.fds = std::move(fds);  // owned from here: closed on any error
  have_ = 0;
  if (cur_.fds.size() > kMaxFds) return absl::InvalidArgumentError("too many fds with a partial message");
  std::memcpy(&header_, bytes.data(), std::min(bytes.size(), kHeaderSize));
  if (bytes.size() < kHeaderSize) {
    have_ = bytes.size();
    return absl::OkStatus();
  }
  if (absl::Status c = CheckHeader(header_); !c.ok()) return c;
  if (bytes.size() >= kHeaderSize + header_.size) return absl::InvalidArgumentError("a whole message is not partial");
  cur_.header = header_;
  cur_.payload.resize(header_.size);
  std::memcpy(cur_.payload.data(), bytes.data() + kHeaderSize, bytes.size() - kHeaderSize);
  have_ = bytes.size();
  return absl::OkStatus();
}

absl::StatusOr<Message> MessageReader::ReadBlocking(int sock) {
  for (;;) {
    Message m;
    absl::StatusOr<bool> r = Feed(sock, &m);
    if (!r.ok()) return r.status();
    if (*r) return m;
    pollfd p{sock, POLLIN, 0};
    int pr;
    do {
      pr = ::poll(&p, 1, -1);
    } while (pr < 0 && errno == EINTR);
    if (pr < 0) return absl::UnavailableError(absl::StrCat("poll: ", std::strerror(errno)));
  }
}

absl::StatusOr<Message> MessageReader::Parse(std::span<const uint8_t> bytes, size_t* used) {
  *used = 0;
  if (bytes.size() < kHeaderSize) return absl::InvalidArgumentError("short header");
  Message m;
  std::memcpy(&m.header, bytes.data(), kHeaderSize);
  if (absl::Status c = CheckHeader(m.header); !c.ok()) return c;
  if (bytes.size() - kHeaderSize < m.header.size) return absl::InvalidArgumentError("short payload");
  m.payload.assign(bytes.begin() + kHeaderSize, bytes.begin() + kHeaderSize + m.header.size);
  *used = kHeaderSize + m.header.size;
  return m;
}

absl::Status SendMessage(int sock, uint32_t request, uint32_t flags, std::span<const uint8_t> payload,
                         std::span<const int> fds, int timeout_ms) {
  if (payload.size() > kMaxPayload) return absl::InvalidArgumentError("payload too large");
  if (fds.size() > kMaxFds) return absl::InvalidArgumentError("too many fds for one message");
  Header h{request, flags | kVersion, static_cast<uint32_t>(payload.size())};
  iovec iov[2] = {{&h, sizeof h}, {const_cast<uint8_t*>(payload.data()), payload.size()}};
  msghdr m{};
  m.msg_iov = iov;
  m.msg_iovlen = payload.empty() ? 1 : 2;
  alignas(cmsghdr) uint8_t ctl[CMSG_SPACE(sizeof(int) * kMaxFds)];
  if (!fds.empty()) {
    m.msg_control = ctl;
    m.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  const size_t total = sizeof h + payload.size();
  size_t sent = 0;
  while (sent < total) {
    ssize_t n = ::sendmsg(sock, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{sock, POLLOUT, 0};
      int pr = ::poll(&p, 1, timeout_ms);
      if (pr == 0) return absl::DeadlineExceededError("peer does not read its socket");
      continue;
    }
    if (n < 0) return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
    sent += static_cast<size_t>(n);
    if (sent >= total) break;
    // A partial write (rare on Unix sockets): send the rest without fds.
    size_t skip = static_cast<size_t>(n);
    m.msg_control = nullptr;
    m.msg_controllen = 0;
    while (m.msg_iovlen && skip >= m.msg_iov[0].iov_len) {
      skip -= m.msg_iov[0].iov_len;
      m.msg_iov++;
      m.msg_iovlen--;
    }
    if (m.msg_iovlen) {
      m.msg_iov[0].iov_base = static_cast<uint8_t*>(m.msg_iov[0].iov_base) + skip;
      m.msg_iov[0].iov_len -= skip;
    }
  }
  return absl::OkStatus();
}

}  // namespace vioport::vhost_user
