// SPDX-License-Identifier: Apache-2.0
// Pieces shared by the vhost-user tests: guest RAM in a sealed memfd, a raw
// front-end that speaks the protocol byte by byte over a real Unix socket
// (so tests can send anything, well-formed or not), an Asio loop thread for
// the servers, and a virtio-blk guest built on core's driver queues.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/post.hpp"
#include "vioport/core/blk_spec.h"
#include "vioport/core/buffer_dma.h"
#include "vioport/core/driver_queue.h"
#include "vioport/transports/vhost_user_protocol.h"
#include "vioport/transports/vhost_user_server.h"

namespace vioport::vutest {

namespace vu = vioport::vhost_user;
using vu::Req;

// ---- small utilities ---------------------------------------------------------

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~UniqueFd() { reset(); }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// Non-blocking, as QEMU makes them; crosvm's are blocking.
inline UniqueFd EventFd(bool nonblock = true) {
  return UniqueFd(::eventfd(0, EFD_CLOEXEC | (nonblock ? EFD_NONBLOCK : 0)));
}

// Waits up to `ms` for `fd` to become readable, then drains an eventfd.
inline bool WaitEventFd(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  int pr;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    pr = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(0, left.count())));
    if (pr < 0 && errno == EINTR) continue;
    break;
  }
  if (pr != 1) return false;
  uint64_t v;
  return ::read(fd, &v, sizeof v) == sizeof v;
}

inline std::string TempPath(const std::string& tag) {
  static int seq = 0;
  return absl::StrCat(::testing::TempDir(), "vu-", tag, "-", ::getpid(), "-", seq++, ".sock");
}

inline std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out(n);
  for (auto& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

template <typename T>
std::vector<uint8_t> AsBytes(const T& v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  return std::vector<uint8_t>(p, p + sizeof v);
}

inline std::vector<uint8_t> U64(uint64_t v) { return AsBytes(v); }
inline std::vector<uint8_t> State(uint32_t index, uint32_t num) { return AsBytes(vu::VringState{index, num}); }

// A sparse backing file for a BlkDevice, read behind the device's back.
class TempFile {
 public:
  explicit TempFile(uint64_t size) {
    path_ = ::testing::TempDir() + "vu-blk-XXXXXX";
    fd_ = ::mkstemp(path_.data());
    EXPECT_GE(fd_, 0) << path_;
    EXPECT_EQ(::ftruncate(fd_, static_cast<off_t>(size)), 0);
  }
  ~TempFile() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  const std::string& path() const { return path_; }
  std::vector<uint8_t> Pread(uint64_t off, size_t len) const {
    std::vector<uint8_t> out(len);
    EXPECT_EQ(::pread(fd_, out.data(), len, static_cast<off_t>(off)), static_cast<ssize_t>(len));
    return out;
  }

 private:
  std::string path_;
  int fd_ = -1;
};

// ---- guest RAM -------------------------------------------------------------

// Guest RAM: one memfd mapped in this process (which plays the VMM, so the
// mapping's address is the "front-end virtual address" of SET_VRING_ADDR).
// The first `size` bytes are the region the back-end gets; `guard` more bytes
// of the memfd lie past it, filled with kGuardByte, to catch writes a wrong
// translation would put there.
class GuestRam {
 public:
  static constexpr uint8_t kGuardByte = 0xCC;
  GuestRam(size_t size, uint64_t gpa, bool seal = true, size_t guard = 0) : size_(size), guard_(guard), gpa_(gpa) {
    fd_ = UniqueFd(::memfd_create("vu-test-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    EXPECT_TRUE(fd_) << std::strerror(errno);
    EXPECT_EQ(::ftruncate(fd_.get(), static_cast<off_t>(size + guard)), 0);
    if (seal) {
      EXPECT_EQ(::fcntl(fd_.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
    }
    void* p = ::mmap(nullptr, size + guard, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
    EXPECT_NE(p, MAP_FAILED);
    host_ = static_cast<uint8_t*>(p);
    std::memset(host_ + size, kGuardByte, guard);
    dma_ = std::make_unique<BufferDmaAllocator>(host_, gpa_, size_);
  }
  ~GuestRam() { ::munmap(host_, size_ + guard_); }
  GuestRam(const GuestRam&) = delete;
  GuestRam& operator=(const GuestRam&) = delete;

  int fd() const { return fd_.get(); }
  size_t size() const { return size_; }
  uint64_t gpa() const { return gpa_; }
  uint8_t* host() const { return host_; }
  uint64_t va() const { return reinterpret_cast<uint64_t>(host_); }
  uint64_t VaOf(uint64_t gpa) const { return va() + (gpa - gpa_); }
  uint8_t* HostOf(uint64_t gpa) const { return host_ + (gpa - gpa_); }
  bool Contains(uint64_t gpa) const { return gpa >= gpa_ && gpa - gpa_ < size_; }
  DmaAllocator& dma() { return *dma_; }
  vu::MemRegion region() const { return {gpa_, size_, va(), 0}; }
  bool GuardIntact() const {
    for (size_t i = 0; i < guard_; ++i)
      if (host_[size_ + i] != kGuardByte) return false;
    return true;
  }

 private:
  UniqueFd fd_;
  size_t size_, guard_;
  uint64_t gpa_;
  uint8_t* host_ = nullptr;
  std::unique_ptr<BufferDmaAllocator> dma_;
};

inline std::vector<uint8_t> MemTable(const std::vector<vu::MemRegion>& regions) {
  vu::MemTableHeader h{static_cast<uint32_t>(regions.size()), 0};
  std::vector<uint8_t> out = AsBytes(h);
  for (const auto& r : regions) {
    auto b = AsBytes(r);
    out.insert(out.end(), b.begin(), b.end());
  }
  return out;
}

// ---- the raw front-end -----------------------------------------------------

struct Reply {
  vu::Header header{};
  std::vector<uint8_t> payload;
  std::vector<UniqueFd> fds;
  template <typename T>
  bool As(T* out) const {
    if (payload.size() != sizeof(T)) return false;
    std::memcpy(out, payload.data(), sizeof(T));
    return true;
  }
};

// Plays QEMU's side of the socket, one message at a time, with nothing
// checked on what it sends: every header field, payload byte and fd is the
// test's choice. Replies are read with a timeout (a hung server fails the
// test instead of hanging it).
class Frontend {
 public:
  static std::unique_ptr<Frontend> Connect(const std::string& path) {
    UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ADD_FAILURE() << "connect " << path << ": " << std::strerror(errno);
      return nullptr;
    }
    timeval tv{5, 0};
    ::setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(s.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return std::unique_ptr<Frontend>(new Frontend(std::move(s)));
  }

  int fd() const { return sock_.get(); }
  void Close() { sock_.reset(); }

  // Header exactly as given (flags include the version bits); `size`
  // overrides the payload length the header claims.
  bool SendRaw(uint32_t request, uint32_t flags, std::span<const uint8_t> payload, std::span<const int> fds = {},
               std::optional<uint32_t> size = std::nullopt) {
    vu::Header h{request, flags, size ? *size : static_cast<uint32_t>(payload.size())};
    iovec iov[2] = {{&h, sizeof h}, {const_cast<uint8_t*>(payload.data()), payload.size()}};
    msghdr m{};
    m.msg_iov = iov;
    m.msg_iovlen = payload.empty() ? 1 : 2;
    std::vector<uint8_t> ctl(CMSG_SPACE(sizeof(int) * (fds.size() ? fds.size() : 1)));
    if (!fds.empty()) {
      m.msg_control = ctl.data();
      m.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&m);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n;
    do {
      n = ::sendmsg(sock_.get(), &m, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n == static_cast<ssize_t>(sizeof h + payload.size());
  }

  bool Send(Req r, std::span<const uint8_t> payload = {}, std::span<const int> fds = {}, bool need_reply = false) {
    return SendRaw(static_cast<uint32_t>(r), vu::kVersion | (need_reply ? vu::kFlagNeedReply : 0), payload, fds);
  }

  // One message from the server; nullopt on timeout (5 s), EOF or error.
  // Interrupted waits are resumed (io_uring's task work interrupts blocking
  // socket calls that have a timeout with EINTR).
  std::optional<Reply> Read() {
    Reply r;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    auto fill = [&](uint8_t* dst, size_t want) -> bool {
      size_t got = 0;
      while (got < want) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return false;
        pollfd p{sock_.get(), POLLIN, 0};
        const int pr = ::poll(&p, 1, static_cast<int>(left.count()));
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) return false;
        iovec iov{dst + got, want - got};
        msghdr m{};
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        alignas(cmsghdr) uint8_t ctl[CMSG_SPACE(sizeof(int) * vu::kMaxFds)];
        m.msg_control = ctl;
        m.msg_controllen = sizeof ctl;
        const ssize_t n = ::recvmsg(sock_.get(), &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) return false;
        for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
          if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
          const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
          for (size_t i = 0; i < count; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            r.fds.emplace_back(fd);
          }
        }
        got += static_cast<size_t>(n);
      }
      return true;
    };
    if (!fill(reinterpret_cast<uint8_t*>(&r.header), sizeof r.header)) return std::nullopt;
    if (r.header.size > vu::kMaxPayload) return std::nullopt;
    r.payload.resize(r.header.size);
    if (r.header.size && !fill(r.payload.data(), r.payload.size())) return std::nullopt;
    return r;
  }

  // A reply to `r`: the reply flag, version 1, the same request number.
  std::optional<Reply> ReadReply(Req r) {
    auto m = Read();
    if (!m) {
      ADD_FAILURE() << "no reply to " << vu::ReqName(static_cast<uint32_t>(r));
      return std::nullopt;
    }
    EXPECT_EQ(m->header.request, static_cast<uint32_t>(r));
    EXPECT_EQ(m->header.flags & vu::kVersionMask, vu::kVersion);
    EXPECT_TRUE(m->header.flags & vu::kFlagReply);
    return m;
  }

  // Requests that answer with a u64 (GET_FEATURES, GET_PROTOCOL_FEATURES, ...).
  std::optional<uint64_t> GetU64(Req r) {
    if (!Send(r)) return std::nullopt;
    auto m = ReadReply(r);
    uint64_t v;
    if (!m || !m->As(&v)) return std::nullopt;
    return v;
  }

  // A request sent with need_reply: with REPLY_ACK negotiated the server
  // answers u64 0 once it has handled it, so the test knows it took effect.
  bool Ack(Req r, std::span<const uint8_t> payload = {}, std::span<const int> fds = {}) {
    if (!Send(r, payload, fds, true)) return false;
    auto m = ReadReply(r);
    uint64_t v = ~0ull;
    if (!m || !m->As(&v)) return false;
    EXPECT_EQ(v, 0u) << vu::ReqName(static_cast<uint32_t>(r)) << " was not acknowledged";
    return v == 0;
  }

  std::optional<uint32_t> GetVringBase(uint32_t q) {
    auto p = State(q, 0);
    if (!Send(Req::kGetVringBase, p)) return std::nullopt;
    auto m = ReadReply(Req::kGetVringBase);
    vu::VringState s{};
    if (!m || !m->As(&s)) return std::nullopt;
    EXPECT_EQ(s.index, q);
    return s.num;
  }

  // True once the server has closed the connection: read returns EOF (or,
  // with `allow_reset`, ECONNRESET: the server closed with bytes of ours
  // unread). False if it stays open (5 s) or answers.
  bool ExpectClosed(bool allow_reset = false) {
    uint8_t b[256];
    for (;;) {
      const ssize_t n = ::recv(sock_.get(), b, sizeof b, 0);
      if (n == 0) return true;
      if (n < 0 && errno == ECONNRESET && allow_reset) return true;
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        ADD_FAILURE() << "the server kept the connection open (" << std::strerror(errno) << ")";
        return false;
      }
      ADD_FAILURE() << "the server answered " << n << " bytes instead of closing";
      return false;
    }
  }

 private:
  explicit Frontend(UniqueFd s) : sock_(std::move(s)) {}
  UniqueFd sock_;
};

// ---- the servers' loop -----------------------------------------------------

// An io_context run by one thread, as vios runs it. Servers are created and
// destroyed on that thread; the test thread reads their state through Run().
class Loop {
 public:
  Loop() : guard_(io_.get_executor()) {
    th_ = std::thread([this] { io_.run(); });
  }
  ~Loop() {
    Run([this] { servers_.clear(); });
    // Let the handlers the servers left (aborted waits, deferred deletes) run out.
    guard_.reset();
    th_.join();
  }
  template <typename F>
  auto Run(F f) -> decltype(f()) {
    std::packaged_task<decltype(f())()> task(std::move(f));
    auto fut = task.get_future();
    boost::asio::post(io_, [&task] { task(); });
    return fut.get();
  }
  boost::asio::io_context& io() { return io_; }

  // Creates a server on the loop; it lives until the Loop is destroyed (or Drop()).
  VhostUserServer* AddServer(std::shared_ptr<VirtioDevice> dev, VhostUserServerOptions o) {
    return Run([&]() -> VhostUserServer* {
      auto s = VhostUserServer::Create(io_, std::move(dev), o);
      EXPECT_TRUE(s.ok()) << s.status();
      if (!s.ok()) return nullptr;
      servers_.push_back(std::move(*s));
      return servers_.back().get();
    });
  }
  void Drop(VhostUserServer* s) {
    Run([&] { DropOnLoop(s); });
  }
  // Destroys a server; call on the loop.
  void DropOnLoop(VhostUserServer* s) {
    for (auto it = servers_.begin(); it != servers_.end(); ++it)
      if (it->get() == s) {
        servers_.erase(it);
        return;
      }
  }

  // Thread-safe views of a server's state.
  uint64_t Counter(VhostUserServer* s, const std::string& name) {
    return Run([&]() -> uint64_t {
      for (auto& [n, v] : s->Counters())
        if (n == name) return v;
      ADD_FAILURE() << "no counter " << name;
      return 0;
    });
  }
  std::string LastError(VhostUserServer* s) {
    return Run([&] { return s->last_error(); });
  }
  uint8_t Status(VhostUserServer* s) {
    return Run([&] { return s->device_status(); });
  }
  bool Connected(VhostUserServer* s) {
    return Run([&] { return s->connected(); });
  }
  // True if the loop runs a posted no-op within `ms` (it is not stuck in a
  // blocking call).
  bool Responsive(int ms = 2000) {
    auto done = std::make_shared<std::promise<void>>();
    auto fut = done->get_future();
    boost::asio::post(io_, [done] { done->set_value(); });
    return fut.wait_for(std::chrono::milliseconds(ms)) == std::future_status::ready;
  }
  // Polls `pred` on the loop until it holds or `ms` pass.
  bool WaitFor(const std::function<bool()>& pred, int ms = 5000) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (std::chrono::steady_clock::now() < end) {
      if (Run([&] { return pred(); })) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return false;
  }

 private:
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
  std::vector<std::unique_ptr<VhostUserServer>> servers_;
  std::thread th_;
};

// ---- a guest driving a device through the raw front-end ----------------------

struct GuestOptions {
  uint32_t queue_size = 64;
  uint16_t queues = 1;  // rings started (the device may have more)
  bool packed = false;
  bool indirect = true;
  bool event_idx = true;
  bool inflight = true;    // GET_INFLIGHT_FD + SET_INFLIGHT_FD (split rings)
  bool mem_slots = false;  // CONFIGURE_MEM_SLOTS: ADD_MEM_REG, rings and data in two regions
  bool err_fd = true;      // SET_VRING_ERR
  bool blocking_eventfds = false;  // kick/call/err eventfds without EFD_NONBLOCK
  size_t ram = 4 << 20;
  size_t guard = 64 << 10;
};

// The ring set-up a QEMU front-end performs, then requests on core's driver
// queues in the guest RAM. Every step asks for REPLY_ACK, so when a call
// returns the server has handled it. Failures are test failures.
class Guest {
 public:
  Guest(const std::string& socket, GuestOptions o = {}) : o_(o) {
    fe_ = Frontend::Connect(socket);
    ram_ = std::make_unique<GuestRam>(o.ram, 0x100000000ull, true, o.guard);
    if (o.mem_slots) data_ram_ = std::make_unique<GuestRam>(o.ram, 0x4000000ull, true, o.guard);
  }

  Frontend& fe() { return *fe_; }
  GuestRam& ram() { return *ram_; }
  GuestRam& data_ram() { return data_ram_ ? *data_ram_ : *ram_; }
  DriverQueue& queue(uint16_t q) { return *queues_[q]; }
  uint64_t features() const { return features_; }
  uint64_t offered() const { return offered_; }
  uint64_t offered_proto() const { return offered_proto_; }
  int call_fd(uint16_t q) const { return call_[q].get(); }
  int kick_fd(uint16_t q) const { return kick_[q].get(); }
  int err_fd(uint16_t q) const { return err_[q].get(); }
  int inflight_fd() const { return inflight_fd_.get(); }
  uint64_t inflight_size() const { return inflight_size_; }

  // Connect time: features, protocol features, queue count, SET_OWNER.
  bool Negotiate(uint64_t proto_mask = ~0ull) {
    if (!fe_) return false;
    auto f = fe_->GetU64(Req::kGetFeatures);
    auto pf = f ? fe_->GetU64(Req::kGetProtocolFeatures) : std::nullopt;
    if (!f || !pf) return false;
    offered_ = *f;
    offered_proto_ = *pf;
    EXPECT_TRUE(feature::Has(offered_, vu::kFeatureProtocolFeatures));
    const uint64_t want = offered_proto_ & proto_mask;
    // SET_PROTOCOL_FEATURES is acked only once REPLY_ACK is in force.
    if (!fe_->Send(Req::kSetProtocolFeatures, U64(want))) return false;
    acked_proto_ = want;
    auto nq = fe_->GetU64(Req::kGetQueueNum);
    if (!nq) return false;
    num_queues_ = static_cast<uint16_t>(*nq);
    return AckOrSend(Req::kSetOwner);
  }

  // DRIVER_OK time: SET_FEATURES, memory, in-flight area, then the rings.
  bool Start() {
    features_ = feature::Bit(feature::kVersion1) | feature::Bit(vu::kFeatureProtocolFeatures);
    if (o_.packed) features_ |= feature::Bit(feature::kRingPacked);
    if (o_.indirect) features_ |= feature::Bit(feature::kIndirectDesc);
    if (o_.event_idx) features_ |= feature::Bit(feature::kEventIdx);
    features_ &= offered_;
    if (!AckOrSend(Req::kSetFeatures, U64(features_))) return false;
    if (!SetMemory()) return false;
    if (o_.inflight && !SetInflight()) return false;
    for (uint16_t q = 0; q < o_.queues; ++q)
      if (!StartRing(q, /*new_queue=*/true)) return false;
    return true;
  }

  bool SetMemory() {
    if (o_.mem_slots) {
      auto slots = fe_->GetU64(Req::kGetMaxMemSlots);
      if (!slots || *slots < 2) return false;
      for (GuestRam* r : {ram_.get(), data_ram_.get()}) {
        vu::SingleMemRegion m{0, r->region()};
        const int fd = r->fd();
        if (!AckOrSend(Req::kAddMemReg, AsBytes(m), {&fd, 1})) return false;
      }
      return true;
    }
    const int fd = ram_->fd();
    return AckOrSend(Req::kSetMemTable, MemTable({ram_->region()}), {&fd, 1});
  }

  bool SetInflight() {
    vu::Inflight in{0, 0, o_.queues, static_cast<uint16_t>(o_.queue_size)};
    if (!fe_->Send(Req::kGetInflightFd, AsBytes(in))) return false;
    auto m = fe_->ReadReply(Req::kGetInflightFd);
    vu::Inflight out{};
    if (!m || !m->As(&out) || m->fds.size() != 1) {
      ADD_FAILURE() << "GET_INFLIGHT_FD: no area";
      return false;
    }
    EXPECT_GE(out.mmap_size, uint64_t{o_.queues} * 16 * (1 + o_.queue_size));
    EXPECT_EQ(out.num_queues, o_.queues);
    EXPECT_EQ(out.queue_size, o_.queue_size);
    inflight_fd_ = std::move(m->fds[0]);
    inflight_size_ = out.mmap_size;
    return SetInflightFd(out);
  }
  // SET_INFLIGHT_FD with the area this guest holds (after a reconnect too).
  bool SetInflightFd(const vu::Inflight& area) {
    const int fd = inflight_fd_.get();
    return AckOrSend(Req::kSetInflightFd, AsBytes(area), {&fd, 1});
  }
  vu::Inflight inflight_area() const {
    return {inflight_size_, 0, o_.queues, static_cast<uint16_t>(o_.queue_size)};
  }

  // NUM, BASE, ADDR, KICK, CALL, ERR, ENABLE for ring q. `new_queue` builds a
  // fresh driver queue (a driver reset); otherwise the existing ring memory
  // and driver state are handed to the server again (a reconnect).
  bool StartRing(uint16_t q, bool new_queue, std::optional<uint32_t> base = std::nullopt) {
    if (queues_.size() <= q) {
      queues_.resize(q + 1);
      kick_.resize(q + 1);
      call_.resize(q + 1);
      err_.resize(q + 1);
    }
    if (new_queue || !queues_[q]) {
      queues_[q].reset();
      DriverQueueOptions dq;
      dq.index = q;
      dq.size = o_.queue_size;
      dq.features = features_;
      auto made = DriverQueue::Create(dq, ram_->dma());
      EXPECT_TRUE(made.ok()) << made.status();
      if (!made.ok()) return false;
      queues_[q] = std::move(*made);
    }
    DriverQueue& dq = *queues_[q];
    const uint32_t b = base ? *base : (o_.packed ? 0x80008000u : 0u);
    vu::VringAddr a{q, 0, ram_->VaOf(dq.desc_addr()), ram_->VaOf(dq.device_addr()), ram_->VaOf(dq.driver_addr()), 0};
    kick_[q] = EventFd(!o_.blocking_eventfds);
    call_[q] = EventFd(!o_.blocking_eventfds);
    err_[q] = EventFd(!o_.blocking_eventfds);
    const int kick = kick_[q].get(), call = call_[q].get(), err = err_[q].get();
    if (!AckOrSend(Req::kSetVringNum, State(q, o_.queue_size)) || !AckOrSend(Req::kSetVringBase, State(q, b)) ||
        !AckOrSend(Req::kSetVringAddr, AsBytes(a)) || !AckOrSend(Req::kSetVringKick, U64(q), {&kick, 1}) ||
        !AckOrSend(Req::kSetVringCall, U64(q), {&call, 1}))
      return false;
    if (o_.err_fd && !AckOrSend(Req::kSetVringErr, U64(q), {&err, 1})) return false;
    return AckOrSend(Req::kSetVringEnable, State(q, 1));
  }

  void Kick(uint16_t q) {
    const uint64_t one = 1;
    EXPECT_EQ(::write(kick_[q].get(), &one, sizeof one), 8);
  }

  // Publishes what was added to ring q, kicks, and collects `n` used
  // buffers (waiting on the call eventfd). Returns token -> used length.
  std::map<uint64_t, uint32_t> Complete(uint16_t q, size_t n, int timeout_ms = 10000) {
    DriverQueue& dq = *queues_[q];
    dq.KickPrepare();
    Kick(q);
    std::map<uint64_t, uint32_t> done;
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (done.size() < n) {
      uint64_t tok;
      uint32_t len;
      UsedStatus st;
      while ((st = dq.GetUsed(&tok, &len)) == UsedStatus::kUsed) {
        EXPECT_EQ(done.count(tok), 0u) << "token " << tok << " completed twice";
        done[tok] = len;
      }
      if (st == UsedStatus::kBroken) {
        ADD_FAILURE() << "driver queue broke: " << RingErrorName(dq.error());
        break;
      }
      if (done.size() >= n) break;
      if (dq.EnableInterrupts()) continue;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        ADD_FAILURE() << "only " << done.size() << " of " << n << " requests completed";
        break;
      }
      if (WaitEventFd(call_[q].get(), static_cast<int>(left.count()))) calls_++;
    }
    return done;
  }
  // Signals seen on the call eventfds: while waiting in Complete(), and
  // those DrainCalls() consumes (a fast device may have completed a batch
  // before Complete() had to wait).
  uint64_t calls() const { return calls_; }
  void DrainCalls() {
    for (auto& c : call_)
      if (c && WaitEventFd(c.get(), 0)) calls_++;
  }

  // ---- virtio-blk requests -------------------------------------------------

  struct BlkReq {
    DmaBuffer hdr, data, status;
    uint32_t type;
    uint64_t sector;
  };

  // Adds a request (not yet published): OUT writes `payload`, IN reads
  // `len` bytes. `data_gpa` overrides where the data buffer lies.
  uint64_t AddBlk(uint16_t q, uint32_t type, uint64_t sector, const std::vector<uint8_t>& payload, size_t len,
                  std::optional<uint64_t> data_gpa = std::nullopt) {
    GuestRam& dr = data_ram();
    BlkReq r{};
    r.type = type;
    r.sector = sector;
    r.hdr = *dr.dma().Allocate(sizeof(blk::ReqHeader), 16, Access::kRead);
    r.status = *dr.dma().Allocate(1, 1, Access::kWrite);
    blk::ReqHeader h{};
    h.type = type;
    h.sector = sector;
    std::memcpy(r.hdr.host, &h, sizeof h);
    *r.status.host = 0xAA;  // sentinel: the device must overwrite it
    uint64_t data_addr = 0;
    if (len) {
      r.data = *dr.dma().Allocate(len, 512, type == blk::req::kOut ? Access::kRead : Access::kWrite);
      if (type == blk::req::kOut) std::memcpy(r.data.host, payload.data(), len);
      data_addr = data_gpa ? *data_gpa : r.data.device_addr;
    }
    const uint64_t tok = next_token_++;
    std::vector<DriverBuffer> b{{r.hdr.device_addr, sizeof h, false}};
    if (len) b.push_back({data_addr, static_cast<uint32_t>(len), type != blk::req::kOut});
    b.push_back({r.status.device_addr, 1, true});
    EXPECT_EQ(queues_[q]->Add(b, tok), AddStatus::kOk);
    reqs_[tok] = r;
    return tok;
  }
  uint8_t BlkStatus(uint64_t tok) { return *reqs_.at(tok).status.host; }
  std::vector<uint8_t> BlkData(uint64_t tok) {
    const BlkReq& r = reqs_.at(tok);
    return std::vector<uint8_t>(r.data.host, r.data.host + r.data.size);
  }
  void FreeBlk(uint64_t tok) {
    BlkReq r = reqs_.at(tok);
    reqs_.erase(tok);
    for (const DmaBuffer* b : {&r.hdr, &r.data, &r.status})
      if (b->host) data_ram().dma().Free(*b);
  }

  // Writes random data at a few sectors and reads it back, on every ring;
  // checks status bytes, used lengths, the file behind the device and the
  // read buffers. Returns the number of verified requests.
  int VerifiedIo(const TempFile* file, uint32_t seed, int rounds = 2) {
    int verified = 0;
    for (int round = 0; round < rounds; ++round) {
      for (uint16_t q = 0; q < queues_.size(); ++q) {
        if (!queues_[q]) continue;
        const uint64_t sector = 8 * ((seed * 131 + round * 17 + q * 5) % 512);
        const size_t len = 4096;
        const auto data = RandomBytes(len, seed + round * 7 + q);
        const uint64_t w = AddBlk(q, blk::req::kOut, sector, data, len);
        auto done = Complete(q, 1);
        bool ok = done.count(w) == 1 && BlkStatus(w) == blk::status::kOk && done[w] == 1;  // status byte only
        EXPECT_TRUE(ok) << "write: used " << done.count(w) << " len " << done[w] << " status " << int{BlkStatus(w)};
        FreeBlk(w);
        if (file) {
          const bool in_file = file->Pread(sector * 512, len) == data;
          EXPECT_TRUE(in_file) << "the file does not hold what was written at sector " << sector;
          ok &= in_file;
        }
        const uint64_t r = AddBlk(q, blk::req::kIn, sector, {}, len);
        done = Complete(q, 1);
        const bool read_ok = done.count(r) == 1 && BlkStatus(r) == blk::status::kOk && done[r] == len + 1;
        EXPECT_TRUE(read_ok) << "read: used " << done.count(r) << " len " << done[r] << " status "
                             << int{BlkStatus(r)};
        const bool same = BlkData(r) == data;
        EXPECT_TRUE(same) << "read back different data at sector " << sector;
        FreeBlk(r);
        if (ok && read_ok && same) verified += 2;
      }
    }
    return verified;
  }

 private:
  bool AckOrSend(Req r, std::span<const uint8_t> payload = {}, std::span<const int> fds = {}) {
    if (feature::Has(acked_proto_, vu::proto::kReplyAck)) return fe_->Ack(r, payload, fds);
    return fe_->Send(r, payload, fds);
  }
  bool AckOrSend(Req r, const std::vector<uint8_t>& payload, std::span<const int> fds = {}) {
    return AckOrSend(r, std::span<const uint8_t>(payload), fds);
  }

  GuestOptions o_;
  std::unique_ptr<Frontend> fe_;
  std::unique_ptr<GuestRam> ram_, data_ram_;
  uint64_t offered_ = 0, offered_proto_ = 0, acked_proto_ = 0, features_ = 0;
  uint16_t num_queues_ = 0;
  std::vector<std::unique_ptr<DriverQueue>> queues_;
  std::vector<UniqueFd> kick_, call_, err_;
  UniqueFd inflight_fd_;
  uint64_t inflight_size_ = 0;
  std::map<uint64_t, BlkReq> reqs_;
  uint64_t next_token_ = 1;
  uint64_t calls_ = 0;
};

}  // namespace vioport::vutest
