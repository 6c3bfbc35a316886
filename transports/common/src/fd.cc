// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/fd.h"

#include <poll.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"

namespace vioport {

namespace {
// Enough for any transport's message: shm sends 2 fds a queue plus one.
constexpr size_t kMaxFds = 256;
}  // namespace

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

UniqueFd MakeEventFd() { return UniqueFd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)); }

void SignalEventFd(int fd) {
  const uint64_t one = 1;
  ssize_t r;
  do {
    r = ::write(fd, &one, sizeof one);
  } while (r < 0 && errno == EINTR);
}

void SignalForeignEventFd(int fd) {
  if (fd < 0) return;
  pollfd p{fd, POLLOUT, 0};
  int r;
  do {
    r = ::poll(&p, 1, 0);
  } while (r < 0 && errno == EINTR);
  if (r == 1 && (p.revents & POLLOUT)) SignalEventFd(fd);
}

void DrainEventFd(int fd) {
  // The fd may be someone else's and blocking (a VMM's kick eventfd): read
  // only what poll says is there, once (one read of an eventfd takes its
  // whole count; a pipe holding more stays readable and wakes us again).
  pollfd p{fd, POLLIN, 0};
  int r;
  do {
    r = ::poll(&p, 1, 0);
  } while (r < 0 && errno == EINTR);
  if (r != 1 || !(p.revents & POLLIN)) return;
  uint64_t v[8];
  (void)!::read(fd, v, sizeof v);
}

bool WaitReadable(int fd, absl::Time deadline) {
  for (;;) {  // at least one look, even past the deadline
    pollfd p{fd, POLLIN, 0};
    const timespec ts = absl::ToTimespec(std::max(deadline - absl::Now(), absl::ZeroDuration()));
    const int r = ::ppoll(&p, 1, &ts, nullptr);
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return true;  // let the read report it
  }
}

absl::Status ErrnoStatus(absl::string_view what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno)));
}

absl::StatusOr<SharedMemory> SharedMemory::Create(const char* name, uint64_t bytes) {
  SharedMemory m;
  m.fd_.reset(::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!m.fd_.valid()) return ErrnoStatus("memfd_create");
  if (::ftruncate(m.fd_.get(), static_cast<off_t>(bytes)) != 0) return ErrnoStatus("ftruncate");
  if (::fcntl(m.fd_.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) return ErrnoStatus("seal memfd");
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, m.fd_.get(), 0);
  if (p == MAP_FAILED) return ErrnoStatus("mmap");
  m.data_ = static_cast<uint8_t*>(p);
  m.size_ = bytes;
  return m;
}

absl::StatusOr<SharedMemory> SharedMemory::Map(int fd, uint64_t bytes) {
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0) return absl::InvalidArgumentError("shared memory is not a memfd");
  if (!(seals & F_SEAL_SHRINK)) return absl::InvalidArgumentError("memfd is not sealed against shrinking (F_SEAL_SHRINK)");
  struct stat st;
  if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < bytes)
    return absl::InvalidArgumentError("memfd is smaller than the region size");
  SharedMemory m;
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return ErrnoStatus("mmap");
  m.data_ = static_cast<uint8_t*>(p);
  m.size_ = bytes;
  return m;
}

SharedMemory& SharedMemory::operator=(SharedMemory&& o) noexcept {
  if (this != &o) {
    if (data_) ::munmap(data_, size_);
    fd_ = std::move(o.fd_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

SharedMemory::~SharedMemory() {
  if (data_) ::munmap(data_, size_);
}

absl::Status ClaimSocketPath(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return absl::OkStatus();
  if (!S_ISSOCK(st.st_mode)) return absl::AlreadyExistsError(absl::StrCat(path, " exists and is not a socket"));
  ::unlink(path.c_str());
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path, int type, absl::Duration timeout) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return absl::InvalidArgumentError(absl::StrCat("socket path too long: ", path));
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd s(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!s.valid()) return ErrnoStatus("socket");
  const absl::Time deadline = absl::Now() + timeout;
  while (::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    if ((errno != ENOENT && errno != ECONNREFUSED && errno != EINTR) || absl::Now() > deadline)
      return ErrnoStatus(absl::StrCat("connect to ", path));
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return s;
}

absl::Status SendWithFds(int sock, std::span<const uint8_t> bytes, std::span<const int> fds, int flags) {
  if (fds.size() > kMaxFds) return absl::InvalidArgumentError("too many fds for one message");
  iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
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
  for (;;) {
    const ssize_t n = ::sendmsg(sock, &m, flags | MSG_NOSIGNAL);
    if (n >= 0) {
      if (static_cast<size_t>(n) != bytes.size()) return absl::UnavailableError("short send");
      return absl::OkStatus();
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return absl::ResourceExhaustedError("socket full");
    return ErrnoStatus("send");
  }
}

absl::StatusOr<size_t> RecvWithFds(int sock, std::span<uint8_t> buf, std::vector<int>* fds, size_t max_fds,
                                   int flags) {
  iovec iov{buf.data(), buf.size()};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  alignas(cmsghdr) uint8_t ctl[CMSG_SPACE(sizeof(int) * kMaxFds)];
  m.msg_control = ctl;
  m.msg_controllen = sizeof ctl;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &m, flags | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return absl::ResourceExhaustedError("no message");
  if (n < 0) return ErrnoStatus("receive");
  std::vector<int> got;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      got.push_back(fd);
    }
  }
  auto reject = [&](const char* why) {
    for (int fd : got) ::close(fd);
    return absl::InvalidArgumentError(why);
  };
  if (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) return reject("message or its fds truncated");
  if (got.size() > max_fds) return reject("message carries more fds than allowed");
  if (n == 0 && got.empty()) return absl::UnavailableError("peer closed the connection");
  fds->insert(fds->end(), got.begin(), got.end());
  return static_cast<size_t>(n);
}

}  // namespace vioport
