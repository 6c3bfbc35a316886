// SPDX-License-Identifier: Apache-2.0
#include "vioport/backends/console_device.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "vioport/core/log.h"

namespace vioport {
namespace {

// epoll data tags: which member became ready.
constexpr uint64_t kTagListen = 1;
constexpr uint64_t kTagIn = 2;  // the input fd (and the output too when they are one fd)
constexpr uint64_t kTagOut = 3;

constexpr size_t kReadChunk = 64 * 1024;
// Reads per PumpInput call, so one chatty peer cannot hold the device thread.
constexpr int kMaxReadsPerPump = 16;

bool WouldBlock(int e) { return e == EAGAIN || e == EWOULDBLOCK; }

// write(2) to a pipe or tty whose reader is gone raises SIGPIPE, which would
// kill the whole server. Block it around the write and swallow the one this
// write raised (unless one was already pending for someone else).
ssize_t WriteNoSigpipe(int fd, const void* buf, size_t len) {
  sigset_t pipe_set, old_mask, pending;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  sigemptyset(&pending);
  sigpending(&pending);
  const bool was_pending = sigismember(&pending, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old_mask);
  const ssize_t n = ::write(fd, buf, len);
  const int saved = errno;
  if (n < 0 && saved == EPIPE && !was_pending) {
    const timespec zero{};
    while (sigtimedwait(&pipe_set, nullptr, &zero) < 0 && errno == EINTR) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  errno = saved;
  return n;
}

}  // namespace

uint8_t* ConsoleDevice::ByteQueue::Reserve(size_t n) {
  if (head_ > 0 && head_ == bytes_.size()) {
    bytes_.clear();
    head_ = 0;
  } else if (head_ >= 64 * 1024 && head_ * 2 >= bytes_.size()) {
    // Most of the storage is consumed: move the live tail to the front.
    bytes_.erase(bytes_.begin(), bytes_.begin() + static_cast<ptrdiff_t>(head_));
    head_ = 0;
  }
  const size_t old = bytes_.size();
  bytes_.resize(old + n);
  return bytes_.data() + old;
}

void ConsoleDevice::ByteQueue::Consume(size_t n) {
  head_ += std::min(n, size());
  if (head_ == bytes_.size()) Clear();
}

ConsoleDevice::ConsoleDevice(const ConsoleOptions& options)
    : opts_(options), cols_(options.cols), rows_(options.rows) {
  opts_.tx_buffer_limit = std::max<size_t>(opts_.tx_buffer_limit, 1);
}

absl::StatusOr<std::shared_ptr<ConsoleDevice>> ConsoleDevice::Create(const ConsoleOptions& options) {
  const bool fds = options.in_fd >= 0 || options.out_fd >= 0;
  if (!options.socket_path.empty() && fds)
    return absl::InvalidArgumentError(absl::StrCat("console: socket path \"", options.socket_path,
                                                   "\" and in_fd/out_fd given; the host side is one or the other"));
  if (options.socket_path.empty() && !fds)
    return absl::InvalidArgumentError("console: no host side (neither a socket path nor in_fd/out_fd)");
  if (options.adopt && fds)
    return absl::InvalidArgumentError("console: only a socket console adopts a predecessor's host side");
  std::shared_ptr<ConsoleDevice> dev(new ConsoleDevice(options));
  dev->epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (dev->epoll_fd_ < 0) return absl::ErrnoToStatus(errno, "console: epoll_create1");
  if (options.adopt) return dev;  // RestoreHostState brings the host side
  absl::Status s = fds ? dev->UseFds() : dev->Listen();
  if (!s.ok()) return s;
  return dev;
}

absl::Status ConsoleDevice::Listen() {
  const std::string& path = opts_.socket_path;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path))
    return absl::InvalidArgumentError(absl::StrCat("console: socket path \"", path, "\" is ", path.size(),
                                                   " bytes; at most ", sizeof(addr.sun_path) - 1, " fit"));
  std::memcpy(addr.sun_path, path.data(), path.size());
  const auto* sa = reinterpret_cast<const sockaddr*>(&addr);

  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return absl::FailedPreconditionError(
          absl::StrCat("console: \"", path, "\" exists and is not a socket; not replacing it"));
    // A socket file nobody accepts on is left over from a dead server.
    int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (probe < 0) return absl::ErrnoToStatus(errno, "console: socket");
    const int rc = ::connect(probe, sa, sizeof addr);
    const int e = errno;
    ::close(probe);
    if (rc == 0 || WouldBlock(e))
      return absl::AlreadyExistsError(absl::StrCat("console: socket \"", path, "\" is in use by another server"));
    if (e != ECONNREFUSED) return absl::ErrnoToStatus(e, absl::StrCat("console: probing socket \"", path, "\""));
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
      return absl::ErrnoToStatus(errno, absl::StrCat("console: removing stale socket \"", path, "\""));
    VIOPORT_LOG(kInfo, "console: removed stale socket ", path);
  } else if (errno != ENOENT) {
    return absl::ErrnoToStatus(errno, absl::StrCat("console: stat \"", path, "\""));
  }

  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return absl::ErrnoToStatus(errno, "console: socket");
  if (::bind(listen_fd_, sa, sizeof addr) != 0)
    return absl::ErrnoToStatus(errno, absl::StrCat("console: bind \"", path, "\""));
  if (::stat(path.c_str(), &st) == 0) {
    bound_ = true;
    sock_dev_ = st.st_dev;
    sock_ino_ = st.st_ino;
  }
  if (::listen(listen_fd_, 8) != 0)
    return absl::ErrnoToStatus(errno, absl::StrCat("console: listen \"", path, "\""));
  SetWatch(listen_watch_, listen_fd_, EPOLLIN, kTagListen);
  if (listen_watch_.events == 0) return absl::InternalError(absl::StrCat("console: epoll cannot watch \"", path, "\""));
  return absl::OkStatus();
}

absl::Status ConsoleDevice::AttachSocket(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("console: empty socket path");
  if (path == opts_.socket_path && listen_fd_ >= 0) return absl::OkStatus();
  // Listen on the new path first; until that works the old host side stays.
  const ConsoleOptions old_opts = opts_;
  const int old_listen = listen_fd_;
  const Watch old_watch = listen_watch_;
  const bool old_bound = bound_;
  const dev_t old_dev = sock_dev_;
  const ino_t old_ino = sock_ino_;
  listen_fd_ = -1;
  listen_watch_ = Watch{};
  bound_ = false;
  opts_.socket_path = path;
  opts_.in_fd = opts_.out_fd = -1;
  if (absl::Status s = Listen(); !s.ok()) {
    if (listen_watch_.events != 0) ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
    if (listen_fd_ >= 0) ::close(listen_fd_);
    if (bound_) ::unlink(path.c_str());
    opts_ = old_opts;
    listen_fd_ = old_listen;
    listen_watch_ = old_watch;
    bound_ = old_bound;
    sock_dev_ = old_dev;
    sock_ino_ = old_ino;
    return s;
  }
  // Let go of the old host side: its client, or the fds it was given.
  if (conn_.owned) {
    CloseConn("the console moved to another socket");
  } else {
    SetWatch(in_watch_, -1, 0, kTagIn);
    SetWatch(out_watch_, -1, 0, kTagOut);
    DropTx();
    conn_ = HostConn{};
    if (in_flags_ >= 0) ::fcntl(old_opts.in_fd, F_SETFL, in_flags_);
    if (out_flags_ >= 0) ::fcntl(old_opts.out_fd, F_SETFL, out_flags_);
    in_flags_ = out_flags_ = -1;
  }
  if (old_listen >= 0) {
    if (old_watch.events != 0) ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, old_listen, nullptr);
    ::close(old_listen);
  }
  if (old_bound) {
    struct stat st;
    if (::lstat(old_opts.socket_path.c_str(), &st) == 0 && st.st_dev == old_dev && st.st_ino == old_ino)
      ::unlink(old_opts.socket_path.c_str());
  }
  VIOPORT_LOG(kInfo, "console: host side now on ", path);
  UpdateInterest();
  return absl::OkStatus();
}

absl::Status ConsoleDevice::UseFds() {
  auto nonblock = [](int fd, const char* name, int* saved) -> absl::Status {
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0) return absl::ErrnoToStatus(errno, absl::StrCat("console: ", name, " ", fd));
    if (!(flags & O_NONBLOCK) && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)
      return absl::ErrnoToStatus(errno, absl::StrCat("console: setting O_NONBLOCK on ", name, " ", fd));
    *saved = flags;
    return absl::OkStatus();
  };
  if (opts_.in_fd >= 0) {
    if (absl::Status s = nonblock(opts_.in_fd, "in_fd", &in_flags_); !s.ok()) return s;
    // Regular files cannot be watched by epoll: find out now, not on first use.
    epoll_event ev{};
    ev.events = EPOLLIN;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, opts_.in_fd, &ev) != 0)
      return absl::ErrnoToStatus(errno, absl::StrCat("console: in_fd ", opts_.in_fd, " cannot be polled"));
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, opts_.in_fd, nullptr);
  }
  bool out_is_socket = false;
  if (opts_.out_fd >= 0) {
    if (opts_.out_fd != opts_.in_fd) {
      if (absl::Status s = nonblock(opts_.out_fd, "out_fd", &out_flags_); !s.ok()) return s;
    }
    struct stat st;
    out_is_socket = ::fstat(opts_.out_fd, &st) == 0 && S_ISSOCK(st.st_mode);
  }
  conn_ = HostConn{opts_.in_fd, opts_.out_fd, opts_.in_fd >= 0, opts_.out_fd >= 0, out_is_socket, false};
  UpdateInterest();
  return absl::OkStatus();
}

ConsoleDevice::~ConsoleDevice() {
  if (conn_.owned && conn_.in_fd >= 0) ::close(conn_.in_fd);
  if (bound_) {
    // Only our own socket file: another server may have replaced it since.
    struct stat st;
    if (::lstat(opts_.socket_path.c_str(), &st) == 0 && st.st_dev == sock_dev_ && st.st_ino == sock_ino_)
      ::unlink(opts_.socket_path.c_str());
  }
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (in_flags_ >= 0) ::fcntl(opts_.in_fd, F_SETFL, in_flags_);
  if (out_flags_ >= 0) ::fcntl(opts_.out_fd, F_SETFL, out_flags_);
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
}

uint64_t ConsoleDevice::device_features() const {
  return feature::Bit(console::kFeatureSize) | feature::kCoreSupported;
}

void ConsoleDevice::ReadConfig(uint32_t offset, std::span<uint8_t> out) {
  if (out.empty()) return;
  console::Config c{};
  c.cols = cols_;
  c.rows = rows_;
  c.max_nr_ports = 1;  // meaningful only with MULTIPORT, which is not offered
  c.emerg_wr = 0;
  std::memcpy(out.data(), reinterpret_cast<const uint8_t*>(&c) + offset, out.size());
}

void ConsoleDevice::Resize(uint16_t cols, uint16_t rows) {
  if (cols == cols_ && rows == rows_) return;
  cols_ = cols;
  rows_ = rows;
  NotifyConfigChanged();
}

absl::Status ConsoleDevice::Activate(ActivateContext ctx) {
  if (ctx.queues.size() < 2 || !ctx.queues[console::kReceiveQueue] || !ctx.queues[console::kTransmitQueue])
    return absl::FailedPreconditionError("console: receiveq (0) and transmitq (1) must both be enabled");
  ctx_ = std::move(ctx);
  rxq_ = ctx_.queues[console::kReceiveQueue].get();
  txq_ = ctx_.queues[console::kTransmitQueue].get();
  active_ = true;
  tx_blocked_ = false;
  // Host bytes held over from before a reset go out as soon as there are buffers.
  DeliverRx();
  UpdateInterest();
  return absl::OkStatus();
}

ActivateContext ConsoleDevice::Reset() {
  tx_chain_ = DescriptorChain();  // stale after the reset; never completed
  tx_chain_offset_ = 0;
  tx_blocked_ = false;
  active_ = false;
  rxq_ = txq_ = nullptr;
  // The host connection stays; input is not read while no guest is there.
  UpdateInterest();
  ActivateContext back = std::move(ctx_);
  ctx_ = ActivateContext{};
  return back;
}

void ConsoleDevice::QueueNotify(uint16_t queue) {
  if (!active_) return;
  if (queue == console::kReceiveQueue) {
    DeliverRx();
    if (rx_pending_.empty()) PumpInput();
  } else if (queue == console::kTransmitQueue) {
    DrainTx();
  }
  ResumeTx();
  UpdateInterest();
}

bool ConsoleDevice::ProcessEvents() {
  epoll_event evs[8];
  int n;
  do {
    n = ::epoll_wait(epoll_fd_, evs, 8, 0);
  } while (n < 0 && errno == EINTR);
  bool in_ready = false, out_ready = false, listen_ready = false;
  for (int i = 0; i < n; ++i) {
    const uint32_t e = evs[i].events;
    switch (evs[i].data.u64) {
      case kTagListen: listen_ready = true; break;
      case kTagIn:
        in_ready = true;
        if (conn_.out_fd == conn_.in_fd && (e & (EPOLLOUT | EPOLLHUP | EPOLLERR))) out_ready = true;
        break;
      case kTagOut: out_ready = true; break;
      default: break;
    }
  }
  bool did = false;
  // Output first: a dead peer is found by the write, before reads drop it.
  if (out_ready) did |= FlushTx();
  if (in_ready) did |= PumpInput();
  if (listen_ready) did |= AcceptClients();
  did |= ResumeTx();
  UpdateInterest();
  return did;
}

bool ConsoleDevice::ResumeTx() {
  // Room in tx_pending_, or the peer went away (found by any path, so
  // checked on every entry): take more guest output.
  if (tx_blocked_ && (!conn_.out_open || tx_pending_.size() < opts_.tx_buffer_limit)) return DrainTx();
  return false;
}

absl::Status ConsoleDevice::Quiesce() {
  // The one request that can be in flight is a partly copied transmit chain:
  // take the rest regardless of the limit and complete it.
  if (active_ && txq_ && tx_chain_.valid() && !txq_->broken()) {
    const uint32_t rest = tx_chain_.readable_bytes() - tx_chain_offset_;
    if (conn_.out_open) {
      uint8_t* p = tx_pending_.Reserve(rest);
      const bool ok = tx_chain_.Read(tx_chain_offset_, p, rest) == RingError::kNone;
      tx_pending_.Commit(rest, ok ? rest : 0);
    } else {
      tx_dropped_.fetch_add(rest, std::memory_order_relaxed);
    }
    tx_bytes_.fetch_add(rest, std::memory_order_relaxed);
    txq_->AddUsed(std::move(tx_chain_), 0);
    tx_chain_offset_ = 0;
    ctx_.Publish(*txq_);
  }
  FlushTx();
  UpdateInterest();
  return absl::OkStatus();
}

absl::Status ConsoleDevice::CanHandOver() const {
  if (opts_.socket_path.empty())
    return absl::UnimplementedError("a console on vios's own stdin/stdout stays with that process");
  return absl::OkStatus();
}

namespace {
// The host-state record: little-endian u64s, byte strings as a length and
// the bytes. Version 1: version, cols, rows, client (0/1), client in open,
// client out open, then the pending bytes to the guest and to the host.
// Descriptors: the listener, then the client if there is one.
constexpr uint64_t kHostStateVersion = 1;
constexpr uint64_t kMaxPendingHandedOver = uint64_t{64} << 20;

void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
bool GetU64(const std::string& in, size_t* at, uint64_t* v) {
  if (*at > in.size() || in.size() - *at < 8) return false;
  *v = 0;
  for (int i = 0; i < 8; ++i) *v |= uint64_t{static_cast<uint8_t>(in[*at + i])} << (8 * i);
  *at += 8;
  return true;
}
}  // namespace

absl::Status ConsoleDevice::SaveHostState(std::string* bytes, std::vector<int>* fds) const {
  if (opts_.socket_path.empty()) return absl::OkStatus();  // stdio: the new vios has its own
  if (listen_fd_ < 0) return absl::FailedPreconditionError("console: no listening socket to hand over");
  const bool client = conn_.owned && conn_.in_fd >= 0;
  for (uint64_t v : {kHostStateVersion, uint64_t{cols_}, uint64_t{rows_}, uint64_t{client},
                     uint64_t{client && conn_.in_open}, uint64_t{client && conn_.out_open}})
    PutU64(bytes, v);
  for (const ByteQueue* q : {&rx_pending_, &tx_pending_}) {
    PutU64(bytes, q->size());
    bytes->append(reinterpret_cast<const char*>(q->data()), q->size());
  }
  fds->push_back(listen_fd_);
  if (client) fds->push_back(conn_.in_fd);
  return absl::OkStatus();
}

absl::Status ConsoleDevice::RestoreHostState(const std::string& bytes, std::vector<int>& fds) {
  if (!opts_.adopt || listen_fd_ >= 0 || conn_.in_fd >= 0)
    return absl::FailedPreconditionError("console: host state restored into a console that has one");
  auto bad = [](const std::string& why) { return absl::InvalidArgumentError(absl::StrCat("console host state: ", why)); };
  size_t at = 0;
  uint64_t version = 0, cols = 0, rows = 0, client = 0, in_open = 0, out_open = 0;
  for (uint64_t* v : {&version, &cols, &rows, &client, &in_open, &out_open})
    if (!GetU64(bytes, &at, v)) return bad("truncated");
  if (version != kHostStateVersion) return bad(absl::StrCat("version ", version));
  if (cols > 0xffff || rows > 0xffff || client > 1 || in_open > 1 || out_open > 1) return bad("a field out of range");
  std::string pending[2];
  for (std::string& p : pending) {
    uint64_t n = 0;
    if (!GetU64(bytes, &at, &n) || n > kMaxPendingHandedOver || n > bytes.size() - at) return bad("pending bytes");
    p.assign(bytes, at, n);
    at += n;
  }
  if (at != bytes.size()) return bad("bytes after the end");
  if (fds.size() != 1 + client) return bad(absl::StrCat(fds.size(), " descriptors, ", 1 + client, " expected"));
  // The listener must be a listening stream socket, the client a stream socket.
  auto socket_kind = [](int fd, bool listening) {
    int type = 0, acc = 0;
    socklen_t len = sizeof type;
    if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) return false;
    len = sizeof acc;
    return ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) == 0 && (acc != 0) == listening;
  };
  if (!socket_kind(fds[0], true)) return bad("the listener is not a listening stream socket");
  if (client && !socket_kind(fds[1], false)) return bad("the client is not a connected stream socket");
  for (int fd : fds) {
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) return absl::ErrnoToStatus(errno, "console: fcntl");
  }
  listen_fd_ = fds[0];
  fds[0] = -1;
  SetWatch(listen_watch_, listen_fd_, EPOLLIN, kTagListen);
  // The socket file is the predecessor's, and ours from here on (removed
  // when this console goes, unless it is handed on or given back).
  struct stat st;
  if (::lstat(opts_.socket_path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
    bound_ = true;
    sock_dev_ = st.st_dev;
    sock_ino_ = st.st_ino;
  }
  if (client) {
    conn_ = HostConn{fds[1], fds[1], in_open != 0, out_open != 0, true, true};
    fds[1] = -1;
    clients_.fetch_add(1, std::memory_order_relaxed);
  }
  cols_ = static_cast<uint16_t>(cols);
  rows_ = static_cast<uint16_t>(rows);
  for (int i = 0; i < 2; ++i) {
    ByteQueue& q = i == 0 ? rx_pending_ : tx_pending_;
    q.Clear();
    if (!pending[i].empty()) std::memcpy(q.Reserve(pending[i].size()), pending[i].data(), pending[i].size());
  }
  opts_.adopt = false;
  UpdateInterest();
  return absl::OkStatus();
}

void ConsoleDevice::ReleaseHostState() {
  if (opts_.socket_path.empty()) return;  // stdio stays this process's
  // Our copies only: the peer keeps its connection, the file stays.
  SetWatch(in_watch_, -1, 0, kTagIn);
  SetWatch(out_watch_, -1, 0, kTagOut);
  SetWatch(listen_watch_, -1, 0, kTagListen);
  if (conn_.owned && conn_.in_fd >= 0) ::close(conn_.in_fd);
  conn_ = HostConn{};
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
  bound_ = false;
  rx_pending_.Clear();
  tx_pending_.Clear();
}

void ConsoleDevice::AppendCounters(std::vector<std::pair<std::string, uint64_t>>* out) const {
  out->emplace_back("rx_bytes", rx_bytes_.load(std::memory_order_relaxed));
  out->emplace_back("tx_bytes", tx_bytes_.load(std::memory_order_relaxed));
  out->emplace_back("tx_dropped", tx_dropped_.load(std::memory_order_relaxed));
  out->emplace_back("clients", clients_.load(std::memory_order_relaxed));
  out->emplace_back("clients_refused", clients_refused_.load(std::memory_order_relaxed));
  out->emplace_back("bad_requests", bad_requests_.load(std::memory_order_relaxed));
}

bool ConsoleDevice::AcceptClients() {
  if (listen_fd_ < 0) return false;
  bool did = false;
  for (;;) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (!WouldBlock(errno)) VIOPORT_LOG(kWarning, "console: accept on ", opts_.socket_path, ": ", strerror(errno));
      break;
    }
    did = true;
    if (conn_.in_fd >= 0) {
      // One client at a time: the port has one host end.
      ::close(fd);
      clients_refused_.fetch_add(1, std::memory_order_relaxed);
      VIOPORT_LOG(kInfo, "console: refused a second client on ", opts_.socket_path);
      continue;
    }
    conn_ = HostConn{fd, fd, true, true, true, true};
    clients_.fetch_add(1, std::memory_order_relaxed);
    VIOPORT_LOG(kInfo, "console: client connected on ", opts_.socket_path);
  }
  UpdateInterest();
  return did;
}

void ConsoleDevice::CloseConn(const char* why) {
  SetWatch(in_watch_, -1, 0, kTagIn);
  SetWatch(out_watch_, -1, 0, kTagOut);
  if (conn_.owned && conn_.in_fd >= 0) ::close(conn_.in_fd);
  DropTx();
  VIOPORT_LOG(kInfo, "console: client on ", opts_.socket_path, " gone: ", why);
  conn_ = HostConn{};
}

bool ConsoleDevice::PumpInput() {
  bool did = DeliverRx();
  for (int i = 0; i < kMaxReadsPerPump; ++i) {
    // Backpressure: with undelivered bytes (no guest buffers), leave the rest
    // in the kernel; the peer's writes block instead of anything being dropped.
    if (!rx_pending_.empty() || !conn_.in_open || !active_ || !rxq_ || rxq_->broken()) break;
    uint8_t* p = rx_pending_.Reserve(kReadChunk);
    const ssize_t n = ::read(conn_.in_fd, p, kReadChunk);
    const int e = errno;
    rx_pending_.Commit(kReadChunk, n > 0 ? static_cast<size_t>(n) : 0);
    if (n > 0) {
      did = true;
      DeliverRx();
      continue;
    }
    if (n < 0 && e == EINTR) continue;
    if (n < 0 && WouldBlock(e)) break;
    did = true;
    if (conn_.owned) {
      CloseConn(n == 0 ? "end of stream" : strerror(e));
    } else {
      VIOPORT_LOG(kInfo, "console: in_fd ", conn_.in_fd, ": ", n == 0 ? "end of stream" : strerror(e));
      conn_.in_open = false;
    }
    break;
  }
  return did;
}

bool ConsoleDevice::DeliverRx() {
  if (rx_pending_.empty() || !active_ || !rxq_ || rxq_->broken()) return false;
  DeviceQueue& q = *rxq_;
  bool used = false;
  while (!rx_pending_.empty()) {
    DescriptorChain chain;
    const PopStatus st = q.Pop(chain);
    if (st == PopStatus::kEmpty) {
      // Out of guest buffers: ask for a kick when more are posted (and take
      // them at once if some arrived meanwhile).
      if (q.EnableNotifications()) continue;
      break;
    }
    if (st == PopStatus::kError) break;
    if (!chain.readable().empty()) {
      // §5.3.6.1: receiveq buffers are device-writable only.
      bad_requests_.fetch_add(1, std::memory_order_relaxed);
      q.Fail(RingError::kBadRequest);
      q.AddUsed(std::move(chain), 0);
      break;
    }
    // guest-controlled: writable_bytes()
    const uint32_t n = static_cast<uint32_t>(std::min<size_t>(rx_pending_.size(), chain.writable_bytes()));
    if (n > 0 && chain.Write(0, rx_pending_.data(), n) != RingError::kNone) {
      q.AddUsed(std::move(chain), 0);  // the chain remembers the fault; this breaks the queue
      break;
    }
    q.AddUsed(std::move(chain), n);
    rx_pending_.Consume(n);
    rx_bytes_.fetch_add(n, std::memory_order_relaxed);
    used = true;
  }
  if (used) ctx_.Publish(q);
  return used;
}

bool ConsoleDevice::DrainTx() {
  if (!active_ || !txq_ || txq_->broken()) return false;
  // A client may be waiting in the listen backlog: take it before
  // discarding output for lack of one.
  if (!conn_.out_open && listen_fd_ >= 0) AcceptClients();
  DeviceQueue& q = *txq_;
  const size_t limit = opts_.tx_buffer_limit;
  bool did = false;
  tx_blocked_ = false;
  q.DisableNotifications();
  for (;;) {
    bool used = false;
    PopStatus st = PopStatus::kChain;
    for (;;) {
      if (!tx_chain_.valid()) {
        st = q.Pop(tx_chain_);
        if (st != PopStatus::kChain) break;
        did = true;
        tx_chain_offset_ = 0;
        if (!tx_chain_.writable().empty()) {
          // §5.3.6.1: transmitq buffers are device-readable only.
          bad_requests_.fetch_add(1, std::memory_order_relaxed);
          q.Fail(RingError::kBadRequest);
          q.AddUsed(std::move(tx_chain_), 0);
          st = PopStatus::kError;
          break;
        }
      }
      if (conn_.out_open && tx_pending_.size() >= limit) {
        FlushTx();
        if (conn_.out_open && tx_pending_.size() >= limit) {
          tx_blocked_ = true;  // resumed by EPOLLOUT in ProcessEvents
          break;
        }
      }
      const uint32_t total = tx_chain_.readable_bytes();  // guest-controlled
      uint32_t n = total - tx_chain_offset_;
      if (conn_.out_open) {
        n = static_cast<uint32_t>(std::min<size_t>(n, limit - tx_pending_.size()));
        uint8_t* p = tx_pending_.Reserve(n);
        const bool ok = n == 0 || tx_chain_.Read(tx_chain_offset_, p, n) == RingError::kNone;
        tx_pending_.Commit(n, ok ? n : 0);
        if (!ok) {
          q.AddUsed(std::move(tx_chain_), 0);  // faulted: breaks the queue
          st = PopStatus::kError;
          break;
        }
      } else {
        tx_dropped_.fetch_add(n, std::memory_order_relaxed);  // nobody to hear it
      }
      tx_bytes_.fetch_add(n, std::memory_order_relaxed);
      tx_chain_offset_ += n;
      if (tx_chain_offset_ == total) {
        q.AddUsed(std::move(tx_chain_), 0);
        used = true;
      }
    }
    if (used) ctx_.Publish(q);
    // While blocked, notifications stay off: EPOLLOUT brings the device back.
    if (st == PopStatus::kError || tx_blocked_ || q.broken()) break;
    if (!q.EnableNotifications()) break;
    q.DisableNotifications();
  }
  did |= FlushTx();
  return did;
}

bool ConsoleDevice::FlushTx() {
  if (!conn_.out_open) {
    DropTx();
    return false;
  }
  bool did = false;
  while (!tx_pending_.empty()) {
    const ssize_t n = conn_.out_is_socket
                          ? ::send(conn_.out_fd, tx_pending_.data(), tx_pending_.size(), MSG_NOSIGNAL | MSG_DONTWAIT)
                          : WriteNoSigpipe(conn_.out_fd, tx_pending_.data(), tx_pending_.size());
    const int e = errno;
    if (n > 0) {
      tx_pending_.Consume(static_cast<size_t>(n));
      did = true;
      continue;
    }
    if (n < 0 && e == EINTR) continue;
    if (n < 0 && WouldBlock(e)) break;
    // The reader is gone (EPIPE, ECONNRESET, ...). Input may still hold
    // bytes for the guest, so only the output side closes here.
    VIOPORT_LOG(kInfo, "console: writing to the host: ", n == 0 ? "no progress" : strerror(e));
    conn_.out_open = false;
    DropTx();
    did = true;
    if (conn_.owned && !conn_.in_open) CloseConn("output closed");
    break;
  }
  return did;
}

void ConsoleDevice::DropTx() {
  tx_dropped_.fetch_add(tx_pending_.size(), std::memory_order_relaxed);
  tx_pending_.Clear();
}

void ConsoleDevice::UpdateInterest() {
  const bool want_in = conn_.in_open && active_ && rx_pending_.empty() && rxq_ && !rxq_->broken();
  const bool want_out = conn_.out_open && !tx_pending_.empty();
  const uint32_t in_ev = want_in ? uint32_t{EPOLLIN} : 0u;
  const uint32_t out_ev = want_out ? uint32_t{EPOLLOUT} : 0u;
  if (conn_.in_fd >= 0 && conn_.in_fd == conn_.out_fd) {
    SetWatch(out_watch_, -1, 0, kTagOut);
    SetWatch(in_watch_, conn_.in_fd, in_ev | out_ev, kTagIn);
  } else {
    SetWatch(in_watch_, conn_.in_fd, in_ev, kTagIn);
    SetWatch(out_watch_, conn_.out_fd, out_ev, kTagOut);
  }
}

void ConsoleDevice::SetWatch(Watch& w, int fd, uint32_t events, uint64_t tag) {
  if (w.fd != fd) {
    if (w.events != 0) ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, w.fd, nullptr);
    w = Watch{fd, 0};
  }
  if (fd < 0 || events == w.events) return;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = tag;
  const int op = w.events == 0 ? EPOLL_CTL_ADD : events == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
  if (::epoll_ctl(epoll_fd_, op, fd, op == EPOLL_CTL_DEL ? nullptr : &ev) != 0) {
    VIOPORT_LOG(kWarning, "console: epoll_ctl on fd ", fd, ": ", strerror(errno));
    return;
  }
  w.events = events;
}

}  // namespace vioport
