// SPDX-License-Identifier: Apache-2.0
#pragma once

// The plumbing an emulator daemon (crqd, xenemud) and its guest processes
// share, so that a hypercall costs what it costs on hardware: no syscall
// while both sides are busy.
//
//   * SCM_RIGHTS messages on Unix SOCK_SEQPACKET sockets: HELLO and its
//     reply carry memfds and eventfds (one message = one struct + fds).
//   * Mailbox: one 4 KiB shared page per guest. The guest (client) writes
//     opcode and arguments and bumps request_seq; the daemon (server),
//     polling it, runs the call, writes rc/r4 and sets response_seq to the
//     same number. A side that stops polling says so (server_sleeping /
//     client_sleeping) and sleeps in poll() on the connection's socket; the
//     other wakes it with a one-byte kick. The seq_cst store of one side's
//     flag before its last look at the other side's seq, against the other
//     side's seq_cst store before looking at the flag, means no wake-up is
//     lost.
//   * The server also notices the client's death on that same socket (EOF),
//     and the client notices the server's (SleepOnSocket false).
//
// The mailbox lives in a memfd the server creates; the client is untrusted:
// the server loads every field once (MailboxServer::Next) and validates the
// call like any hypercall.

#include <atomic>
#include <thread>
#include <mutex>
#include <memory>
#include <list>
#include <functional>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace vioport::emu {

inline constexpr size_t kMailboxArgs = 8;

struct Mailbox {
  alignas(64) std::atomic<uint32_t> request_seq{0};
  std::atomic<uint32_t> server_sleeping{0};
  uint64_t opcode = 0;
  uint64_t args[kMailboxArgs] = {};
  alignas(64) std::atomic<uint32_t> response_seq{0};
  std::atomic<uint32_t> client_sleeping{0};
  int64_t rc = 0;
  uint64_t r4 = 0;
};
static_assert(std::atomic<uint32_t>::is_always_lock_free);
inline constexpr size_t kMailboxBytes = 4096;
static_assert(sizeof(Mailbox) <= kMailboxBytes);

// SCM_RIGHTS can carry at most SCM_MAX_FD (253) descriptors per message.
inline constexpr size_t kMaxFdsPerMessage = 253;

namespace wire {
// Sends `msg` with `fds` (at most kMaxFdsPerMessage) as one SEQPACKET
// message; false on error.
bool SendWithFds(int sock, const void* msg, size_t len, std::span<const int> fds);
// One fd, or none if `fd` < 0.
bool SendWithFd(int sock, const void* msg, size_t len, int fd);
// Receives one message of exactly `len` bytes and appends the fds that came
// with it to `fds` (at most `max_fds`; any beyond are closed, as are all of
// them when `fds` is null). Returns false on EOF, error, a wrong size or a
// truncated control part; then no fd is kept.
bool RecvWithFds(int sock, void* msg, size_t len, std::vector<int>* fds, size_t max_fds);
// One fd (-1 when none came), if `fd` is not null.
bool RecvWithFd(int sock, void* msg, size_t len, int* fd);

// A one-byte wake-up for a side sleeping on the socket.
void Kick(int sock);
// Sleeps until the socket has something (a kick, EOF) or `timeout_ms`
// passes, then consumes any kicks without blocking. Returns false once the
// socket is closed or in error (the partner is gone).
bool SleepOnSocket(int sock, int timeout_ms);
// Blocks until the peer of `sock` hangs up (true) or `wake_fd` becomes
// readable or poll fails (false). POLLIN is not asked for, so kicks and
// answers in flight do not wake it: a client's thread that notices the
// daemon's death without a call in flight.
bool WaitForHangup(int sock, int wake_fd);
}  // namespace wire

// A daemon's connections, one thread each (crqd's partitions, xenemud's
// domains). Thread-safe.
class ConnectionThreads {
 public:
  ~ConnectionThreads() { Shutdown(); }
  // Runs serve(fd) on a new thread; the fd is closed once it returns and
  // the thread is reaped (at the next Add or at Shutdown).
  void Add(int fd, std::function<void(int)> serve);
  // Shuts every connection down (its serve() sees EOF), joins the threads
  // and closes the fds. Later Adds close their fd at once.
  void Shutdown();

 private:
  struct Conn {
    int fd = -1;
    std::thread thread;
    std::atomic<bool> done{false};
  };
  std::mutex mu_;
  std::list<std::unique_ptr<Conn>> conns_;
  bool stopped_ = false;
};

// A guest's RAM as a client makes it: a memfd of `bytes`, sealed against
// shrinking and growing, mapped read-write at *map. The fd, or -1 with *error.
int CreateSealedMemfd(const std::string& name, uint64_t bytes, uint8_t** map, std::string* error);
// Connects a SEQPACKET socket to the daemon at `path`, retrying while it may
// still be starting, until `timeout`. The fd, or -1 with *error (naming
// `daemon`).
int ConnectToDaemon(const std::string& path, const std::string& daemon, std::chrono::milliseconds timeout,
                    std::string* error);

// A guest's RAM as a daemon accepts it: a memfd sealed F_SEAL_SHRINK (one
// that could shrink would make the daemon fault) of at least `bytes`.
// Returns "" when acceptable, else why not.
std::string CheckSealedMemfd(int fd, uint64_t bytes);

// The server side creates the mailbox: a memfd of kMailboxBytes, mapped.
// Returns nullptr (and *fd = -1) on failure; the caller closes *fd once it
// has been sent and unmaps with UnmapMailbox.
Mailbox* CreateMailbox(const std::string& name, int* fd);
// The client side maps the memfd it received (`bytes` as announced, at
// least sizeof(Mailbox)); nullptr on failure. Does not close `fd`.
Mailbox* MapMailbox(int fd, size_t bytes);
void UnmapMailbox(Mailbox* mb, size_t bytes = kMailboxBytes);

struct MailboxAnswer {
  int64_t rc = 0;
  uint64_t r4 = 0;
};

enum class CallOutcome {
  kAnswered,    // *answer holds the server's rc/r4
  kServerGone,  // the socket closed: the server died (the caller marks itself dead)
  kAbandoned,   // `dead` became true while waiting
};

// The client side of one call. Callers serialise calls (one mailbox, one
// call in flight); `seq` is the caller's counter, bumped here. Polls for the
// answer for `spin`, then sleeps on `sock` (waking every 20 ms to look at
// `dead`, which another thread may set when it notices the server's death).
CallOutcome MailboxCall(Mailbox& mb, int sock, uint32_t& seq, uint64_t opcode, std::span<const uint64_t> args,
                        std::chrono::microseconds spin, const std::atomic<bool>& dead, MailboxAnswer* answer);

// The server side: one client's mailbox and connection socket.
class MailboxServer {
 public:
  struct Request {
    uint32_t seq = 0;
    uint64_t opcode = 0;
    uint64_t args[kMailboxArgs] = {};
  };
  MailboxServer(Mailbox* mb, int sock, std::chrono::microseconds spin) : mb_(mb), sock_(sock), spin_(spin) {}
  // Waits for the next call: polls the mailbox for `spin`, then sleeps on the
  // socket with server_sleeping set (a kick wakes it). Every field is loaded
  // once into `req`. Returns false once the client is gone (EOF or error on
  // the socket; also checked every 1024 calls, since a client calling
  // without pause never lets the server sleep).
  bool Next(Request* req);
  // Publishes the answer to `req` and kicks the client if it sleeps.
  void Answer(const Request& req, int64_t rc, uint64_t r4);

 private:
  Mailbox* mb_;
  int sock_;
  std::chrono::microseconds spin_;
  uint32_t last_ = 0;
  uint64_t calls_ = 0;
};

}  // namespace vioport::emu
