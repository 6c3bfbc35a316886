#include "vioport/emulators/crq_remote.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace vioport::crq {

namespace wire {

bool SendWithFd(int sock, const void* msg, size_t len, int fd) {
  iovec iov{const_cast<void*>(msg), len};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (fd >= 0) {
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  for (;;) {
    const ssize_t n = ::sendmsg(sock, &mh, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    return n == static_cast<ssize_t>(len);
  }
}

bool RecvWithFd(int sock, void* msg, size_t len, int* fd) {
  if (fd) *fd = -1;
  iovec iov{msg, len};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
  mh.msg_control = control;
  mh.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  // Any fds that came along are taken (or closed if not wanted).
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int got;
      std::memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
      if (fd && *fd < 0) {
        *fd = got;
      } else {
        ::close(got);
      }
    }
  }
  const bool ok = n == static_cast<ssize_t>(len) && (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) == 0;
  if (!ok && fd && *fd >= 0) {
    ::close(*fd);
    *fd = -1;
  }
  return ok;
}

bool RecvSpinning(int sock, void* msg, size_t len, std::chrono::microseconds spin) {
  const auto until = std::chrono::steady_clock::now() + spin;
  for (uint32_t i = 0;; ++i) {
    iovec iov{msg, len};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    const bool last = spin.count() <= 0 || ((i & 15) == 15 && std::chrono::steady_clock::now() >= until);
    const ssize_t n = ::recvmsg(sock, &mh, last ? 0 : MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && !last) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
      continue;
    }
    // Without a control buffer, fds a peer attached are closed by the kernel.
    return n == static_cast<ssize_t>(len) && (mh.msg_flags & MSG_TRUNC) == 0;
  }
}

}  // namespace wire

absl::StatusOr<std::unique_ptr<RemotePartition>> RemotePartition::Connect(const RemotePartitionOptions& o) {
  if (o.memory_bytes == 0 || o.memory_bytes % kTcePageSize)
    return absl::InvalidArgumentError(absl::StrCat("partition memory of ", o.memory_bytes, " bytes (whole 4 KiB pages)"));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (o.socket_path.empty() || o.socket_path.size() >= sizeof addr.sun_path)
    return absl::InvalidArgumentError(absl::StrCat("bad crqd socket path: ", o.socket_path));
  std::memcpy(addr.sun_path, o.socket_path.c_str(), o.socket_path.size() + 1);

  std::unique_ptr<RemotePartition> p(new RemotePartition());
  p->id_ = o.id;
  p->spin_ = o.spin;
  p->memfd_ = ::memfd_create(absl::StrCat("crq-partition-", o.id).c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (p->memfd_ < 0) return absl::ResourceExhaustedError(absl::StrCat("memfd_create: ", std::strerror(errno)));
  if (::ftruncate(p->memfd_, static_cast<off_t>(o.memory_bytes)) != 0 ||
      ::fcntl(p->memfd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    return absl::ResourceExhaustedError(absl::StrCat("partition memfd: ", std::strerror(errno)));
  void* m = ::mmap(nullptr, o.memory_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, p->memfd_, 0);
  if (m == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("mmap: ", std::strerror(errno)));
  p->mem_ = static_cast<uint8_t*>(m);
  p->size_ = o.memory_bytes;

  const auto deadline = std::chrono::steady_clock::now() + o.connect_timeout;
  int s = -1;
  for (;;) {
    s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0) return absl::ResourceExhaustedError(absl::StrCat("socket: ", std::strerror(errno)));
    if (::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) break;
    const int err = errno;
    ::close(s);
    if (std::chrono::steady_clock::now() >= deadline)
      return absl::UnavailableError(absl::StrCat("cannot reach crqd at ", o.socket_path, ": ", std::strerror(err)));
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  {
    absl::MutexLock lock(&p->mu_);
    p->sock_ = s;
  }
  wire::Hello hello;
  hello.partition = o.id;
  hello.memory_bytes = o.memory_bytes;
  if (!wire::SendWithFd(s, &hello, sizeof hello, p->memfd_))
    return absl::UnavailableError(absl::StrCat("HELLO to crqd: ", std::strerror(errno)));
  wire::HelloReply reply;
  int irq = -1;
  if (!wire::RecvWithFd(s, &reply, sizeof reply, &irq)) return absl::UnavailableError("crqd closed during HELLO");
  if (reply.magic != wire::kHelloMagic) {
    if (irq >= 0) ::close(irq);
    return absl::InternalError("crqd: bad HELLO reply");
  }
  if (reply.status != 0) {
    if (irq >= 0) ::close(irq);
    reply.error[sizeof reply.error - 1] = 0;
    return absl::FailedPreconditionError(absl::StrCat("crqd refused partition ", o.id, ": ", reply.error));
  }
  if (irq < 0) return absl::InternalError("crqd sent no interrupt eventfd");
  p->irq_fd_ = irq;
  p->wake_fd_ = ::eventfd(0, EFD_CLOEXEC);
  if (p->wake_fd_ < 0) return absl::ResourceExhaustedError(absl::StrCat("eventfd: ", std::strerror(errno)));
  RemotePartition* raw = p.get();
  p->watcher_ = std::thread([raw] { raw->Watch(); });
  return p;
}

RemotePartition::~RemotePartition() {
  if (watcher_.joinable()) {
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
    watcher_.join();
  }
  {
    absl::MutexLock lock(&mu_);
    if (sock_ >= 0) ::close(sock_);
    sock_ = -1;
  }
  if (mem_) ::munmap(mem_, size_);
  for (int fd : {memfd_, irq_fd_, wake_fd_})
    if (fd >= 0) ::close(fd);
}

void RemotePartition::MarkDead() {
  if (dead_.exchange(true, std::memory_order_acq_rel)) return;
  if (irq_fd_ >= 0) {
    const uint64_t one = 1;
    (void)!::write(irq_fd_, &one, sizeof one);
  }
}

void RemotePartition::Watch() {
  int s;
  {
    absl::MutexLock lock(&mu_);
    s = sock_;
  }
  // The socket is never closed before this thread is joined, so polling it
  // without the lock is safe; POLLIN is not asked for, so responses in flight
  // don't wake us.
  pollfd fds[2] = {{s, POLLRDHUP, 0}, {wake_fd_, POLLIN, 0}};
  for (;;) {
    const int n = ::poll(fds, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return;
    if (fds[1].revents) return;
    if (fds[0].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {
      MarkDead();
      return;
    }
  }
}

void RemotePartition::Disconnect() {
  absl::MutexLock lock(&mu_);
  if (sock_ >= 0) ::shutdown(sock_, SHUT_RDWR);
  MarkDead();
}

HcallResult RemotePartition::Hcall(uint64_t opcode, std::span<const uint64_t> args) {
  absl::MutexLock lock(&mu_);
  if (dead_.load(std::memory_order_acquire) || sock_ < 0) return HcallResult{kHHardware, 0};
  if (args.size() > wire::kMaxArgs) return HcallResult{kHParameter, 0};
  wire::Request req;
  req.opcode = opcode;
  std::copy(args.begin(), args.end(), req.args);
  wire::Response resp;
  if (!wire::SendWithFd(sock_, &req, sizeof req, -1) || !wire::RecvSpinning(sock_, &resp, sizeof resp, spin_)) {
    MarkDead();
    return HcallResult{kHHardware, 0};
  }
  return HcallResult{resp.rc, resp.r4};
}

}  // namespace vioport::crq
