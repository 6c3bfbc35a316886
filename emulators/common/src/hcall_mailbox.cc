// SPDX-License-Identifier: Apache-2.0
#include "vioport/emulators/hcall_mailbox.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <thread>
#include <string>

#include "vioport/transports/fd.h"

namespace vioport::emu {

namespace wire {

// On transports/common's SCM_RIGHTS pair, with this protocol's contract:
// whole messages only, and fds beyond what the caller takes closed.
bool SendWithFds(int sock, const void* msg, size_t len, std::span<const int> fds) {
  if (fds.size() > kMaxFdsPerMessage) return false;
  return vioport::SendWithFds(sock, {static_cast<const uint8_t*>(msg), len}, fds).ok();
}

bool SendWithFd(int sock, const void* msg, size_t len, int fd) {
  if (fd < 0) return SendWithFds(sock, msg, len, {});
  return SendWithFds(sock, msg, len, std::span<const int>(&fd, 1));
}

bool RecvWithFds(int sock, void* msg, size_t len, std::vector<int>* fds, size_t max_fds) {
  std::vector<int> got;
  auto n = vioport::RecvWithFds(sock, {static_cast<uint8_t*>(msg), len}, &got, kMaxFdsPerMessage);
  const bool ok = n.ok() && *n == len;
  const size_t keep = ok && fds ? std::min(got.size(), max_fds) : 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (i < keep) {
      fds->push_back(got[i]);
    } else {
      ::close(got[i]);
    }
  }
  return ok;
}

bool RecvWithFd(int sock, void* msg, size_t len, int* fd) {
  if (fd) *fd = -1;
  std::vector<int> fds;
  if (!RecvWithFds(sock, msg, len, fd ? &fds : nullptr, 1)) return false;
  if (fd && !fds.empty()) *fd = fds[0];
  return true;
}

void Kick(int sock) {
  const uint8_t one = 1;
  // Non-blocking: a full socket buffer already holds kicks enough.
  (void)!::send(sock, &one, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
}

bool SleepOnSocket(int sock, int timeout_ms) {
  pollfd fd{sock, POLLIN | POLLRDHUP, 0};
  const int n = ::poll(&fd, 1, timeout_ms);
  if (n < 0) return errno == EINTR;
  if (n == 0) return true;
  if (fd.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return false;
  for (;;) {
    uint8_t kicks[64];
    const ssize_t r = ::recv(sock, kicks, sizeof kicks, MSG_DONTWAIT);
    if (r > 0) continue;
    if (r == 0) return false;  // EOF
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  }
}

bool WaitForHangup(int sock, int wake_fd) {
  pollfd fds[2] = {{sock, POLLRDHUP, 0}, {wake_fd, POLLIN, 0}};
  for (;;) {
    const int n = ::poll(fds, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || fds[1].revents) return false;
    if (fds[0].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
  }
}

}  // namespace wire

void ConnectionThreads::Add(int fd, std::function<void(int)> serve) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopped_) {
    ::close(fd);
    return;
  }
  for (auto it = conns_.begin(); it != conns_.end();) {  // reap the finished
    if ((*it)->done.load()) {
      (*it)->thread.join();
      ::close((*it)->fd);
      it = conns_.erase(it);
    } else {
      ++it;
    }
  }
  auto c = std::make_unique<Conn>();
  c->fd = fd;
  Conn* raw = c.get();
  c->thread = std::thread([raw, serve = std::move(serve)] {
    serve(raw->fd);
    raw->done.store(true);
  });
  conns_.push_back(std::move(c));
}

void ConnectionThreads::Shutdown() {
  std::list<std::unique_ptr<Conn>> conns;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    for (auto& c : conns_) ::shutdown(c->fd, SHUT_RDWR);
    conns.swap(conns_);
  }
  for (auto& c : conns) {
    c->thread.join();
    ::close(c->fd);
  }
}

int CreateSealedMemfd(const std::string& name, uint64_t bytes, uint8_t** map, std::string* error) {
  const int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) {
    *error = std::string("memfd_create: ") + std::strerror(errno);
    return -1;
  }
  void* m = MAP_FAILED;
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0 ||
      ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0 ||
      (m = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED) {
    *error = name + ": " + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  *map = static_cast<uint8_t*>(m);
  return fd;
}

int ConnectToDaemon(const std::string& path, const std::string& daemon, std::chrono::milliseconds timeout,
                    std::string* error) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    *error = "bad " + daemon + " socket path: " + path;
    return -1;
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0) {
      *error = std::string("socket: ") + std::strerror(errno);
      return -1;
    }
    if (::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return s;
    const int err = errno;
    ::close(s);
    if (std::chrono::steady_clock::now() >= deadline) {
      *error = "cannot reach " + daemon + " at " + path + ": " + std::strerror(err);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::string CheckSealedMemfd(int fd, uint64_t bytes) {
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) return "memory fd is not a memfd sealed F_SEAL_SHRINK";
  struct stat sb{};
  if (::fstat(fd, &sb) != 0 || static_cast<uint64_t>(sb.st_size) < bytes)
    return "memfd smaller than the " + std::to_string(bytes) + " bytes announced";
  return "";
}

Mailbox* CreateMailbox(const std::string& name, int* fd) {
  *fd = ::memfd_create(name.c_str(), MFD_CLOEXEC);
  if (*fd < 0) return nullptr;
  if (::ftruncate(*fd, kMailboxBytes) == 0) {
    void* m = ::mmap(nullptr, kMailboxBytes, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
    if (m != MAP_FAILED) return new (m) Mailbox();
  }
  ::close(*fd);
  *fd = -1;
  return nullptr;
}

Mailbox* MapMailbox(int fd, size_t bytes) {
  if (fd < 0 || bytes < sizeof(Mailbox)) return nullptr;
  void* m = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  return m == MAP_FAILED ? nullptr : static_cast<Mailbox*>(m);
}

void UnmapMailbox(Mailbox* mb, size_t bytes) {
  if (mb) ::munmap(mb, bytes);
}

namespace {
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
}  // namespace

CallOutcome MailboxCall(Mailbox& mb, int sock, uint32_t& seq_counter, uint64_t opcode, std::span<const uint64_t> args,
                        std::chrono::microseconds spin, const std::atomic<bool>& dead, MailboxAnswer* answer) {
  std::atomic_ref<uint64_t>(mb.opcode).store(opcode, std::memory_order_relaxed);
  for (size_t i = 0; i < kMailboxArgs; ++i)
    std::atomic_ref<uint64_t>(mb.args[i]).store(i < args.size() ? args[i] : 0, std::memory_order_relaxed);
  const uint32_t seq = ++seq_counter;
  // seq_cst store, then load: the server's sleeping flag is set before it
  // looks at request_seq a last time, so one of us sees the other.
  mb.request_seq.store(seq, std::memory_order_seq_cst);
  if (mb.server_sleeping.load(std::memory_order_seq_cst)) wire::Kick(sock);
  const auto spin_until = std::chrono::steady_clock::now() + spin;
  for (uint32_t i = 0; mb.response_seq.load(std::memory_order_acquire) != seq; ++i) {
    if ((i & 63) != 63 || std::chrono::steady_clock::now() < spin_until) {
      CpuRelax();
      continue;
    }
    // Sleep until the server kicks us (or 20 ms, to look at `dead` again).
    mb.client_sleeping.store(1, std::memory_order_seq_cst);
    if (mb.response_seq.load(std::memory_order_seq_cst) != seq && !wire::SleepOnSocket(sock, 20)) {
      mb.client_sleeping.store(0, std::memory_order_relaxed);
      return CallOutcome::kServerGone;
    }
    mb.client_sleeping.store(0, std::memory_order_relaxed);
    if (dead.load(std::memory_order_acquire)) return CallOutcome::kAbandoned;
  }
  answer->rc = std::atomic_ref<int64_t>(mb.rc).load(std::memory_order_relaxed);
  answer->r4 = std::atomic_ref<uint64_t>(mb.r4).load(std::memory_order_relaxed);
  return CallOutcome::kAnswered;
}

bool MailboxServer::Next(Request* req) {
  bool alive = true;
  const auto spin_until = std::chrono::steady_clock::now() + spin_;
  for (uint32_t i = 0; alive && mb_->request_seq.load(std::memory_order_acquire) == last_; ++i) {
    if ((i & 63) != 63 || std::chrono::steady_clock::now() < spin_until) {
      CpuRelax();
      continue;
    }
    mb_->server_sleeping.store(1, std::memory_order_seq_cst);
    if (mb_->request_seq.load(std::memory_order_seq_cst) == last_) alive = wire::SleepOnSocket(sock_, 1000);
    mb_->server_sleeping.store(0, std::memory_order_relaxed);
  }
  if (!alive) return false;
  // A client calling without pause never lets us sleep on its socket: look
  // at it now and then, or the server could not notice its death.
  if ((++calls_ & 1023) == 0) {
    pollfd pf{sock_, POLLRDHUP, 0};
    if (::poll(&pf, 1, 0) > 0 && (pf.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))) return false;
  }
  // Untrusted: every field loaded once.
  req->seq = mb_->request_seq.load(std::memory_order_acquire);
  last_ = req->seq;
  req->opcode = std::atomic_ref<uint64_t>(mb_->opcode).load(std::memory_order_relaxed);
  for (size_t i = 0; i < kMailboxArgs; ++i)
    req->args[i] = std::atomic_ref<uint64_t>(mb_->args[i]).load(std::memory_order_relaxed);
  return true;
}

void MailboxServer::Answer(const Request& req, int64_t rc, uint64_t r4) {
  std::atomic_ref<int64_t>(mb_->rc).store(rc, std::memory_order_relaxed);
  std::atomic_ref<uint64_t>(mb_->r4).store(r4, std::memory_order_relaxed);
  mb_->response_seq.store(req.seq, std::memory_order_seq_cst);
  if (mb_->client_sleeping.load(std::memory_order_seq_cst)) wire::Kick(sock_);
}

}  // namespace vioport::emu
