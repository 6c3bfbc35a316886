// SPDX-License-Identifier: Apache-2.0
// File descriptors as transports use them: an owning handle, eventfds
// (signal and drain), waiting for readability, connecting to a Unix socket
// whose server may still be starting, and SCM_RIGHTS messages. Written once
// here instead of in every transport's two halves.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace vioport {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~UniqueFd() { reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// A non-blocking, close-on-exec eventfd (invalid on failure: errno says why).
UniqueFd MakeEventFd();
// Adds one to an eventfd we own (a saturated counter wakes the reader anyway).
void SignalEventFd(int fd);
// Signals an eventfd someone else owns (a VMM's call eventfd), which may be
// blocking and one below its maximum count: writes only if poll says it
// takes the write (if it does not, it is still readable from earlier signals).
void SignalForeignEventFd(int fd);
// Empties an eventfd (or takes what a pipe holds), blocking or not, without waiting.
void DrainEventFd(int fd);
// Waits until `fd` is readable (or hung up) or `deadline` passes; false on timeout.
bool WaitReadable(int fd, absl::Time deadline);
// Unavailable: "WHAT: strerror(errno)".
absl::Status ErrnoStatus(absl::string_view what);

// Makes `path` free for a listening Unix socket: a stale socket file is
// removed; anything else there is AlreadyExists.
absl::Status ClaimSocketPath(const std::string& path);

// Connects a Unix socket of `type` (SOCK_STREAM, SOCK_SEQPACKET) to `path`,
// retrying while the server is not there yet (ENOENT, ECONNREFUSED) until
// `timeout` passes.
absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path, int type, absl::Duration timeout);

// Memory to share with another process: a memfd sealed against shrinking
// and growing (so the other side can map it without fear of SIGBUS), mapped
// here. Unmapped and closed on destruction.
class SharedMemory {
 public:
  static absl::StatusOr<SharedMemory> Create(const char* name, uint64_t bytes);
  // Maps `bytes` of another process's memfd read-write (the fd is not kept).
  // Refuses (InvalidArgument) an fd that is not a memfd sealed against
  // shrinking or is smaller than `bytes`: shrinking it under our mapping
  // would SIGBUS us.
  static absl::StatusOr<SharedMemory> Map(int fd, uint64_t bytes);
  SharedMemory() = default;
  SharedMemory(SharedMemory&& o) noexcept
      : fd_(std::move(o.fd_)), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  SharedMemory& operator=(SharedMemory&& o) noexcept;
  ~SharedMemory();
  int fd() const { return fd_.get(); }
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  UniqueFd fd_;
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// One message with fds (SCM_RIGHTS); EINTR retried. ResourceExhausted on
// EAGAIN, Unavailable on any other failure.
absl::Status SendWithFds(int sock, std::span<const uint8_t> bytes, std::span<const int> fds, int flags = 0);
// One message of up to `buf.size()` bytes; the fds that came with it are
// appended to `fds`, which the caller then owns. Returns the length.
// Unavailable on EOF or error, ResourceExhausted on EAGAIN, InvalidArgument
// (the fds closed) on a truncated message or more than `max_fds` fds.
absl::StatusOr<size_t> RecvWithFds(int sock, std::span<uint8_t> buf, std::vector<int>* fds, size_t max_fds,
                                   int flags = 0);

}  // namespace vioport
