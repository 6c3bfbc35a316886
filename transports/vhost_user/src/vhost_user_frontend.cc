// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/vhost_user_frontend.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "vioport/core/log.h"
#include "vioport/transports/fd.h"

namespace vioport::vhost_user {

namespace {

// Prefixes a status with the request it belongs to, keeping its code.
absl::Status Named(Req req, const absl::Status& s) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(ReqName(static_cast<uint32_t>(req)), ": ", s.message()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<VmmFrontend>> VmmFrontend::Connect(const VmmFrontendOptions& o) {
  std::unique_ptr<VmmFrontend> f(new VmmFrontend(o));
  if (absl::Status s = f->Setup(); !s.ok()) return s;
  return f;
}

absl::Status VmmFrontend::Setup() {
  const VmmFrontendOptions& o = opts_;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  if (o.memory_bytes == 0 || o.memory_bytes % page)
    return absl::InvalidArgumentError(absl::StrCat("guest memory of ", o.memory_bytes, " bytes: whole pages, not 0"));
  if (o.guest_phys_base % page || o.guest_phys_base + o.memory_bytes < o.guest_phys_base)
    return absl::InvalidArgumentError(absl::StrFormat("guest-physical base 0x%x: page aligned, no wrap", o.guest_phys_base));
  if (o.socket_path.empty()) return absl::InvalidArgumentError("no socket path");

  // Guest RAM: a memfd the back-end maps through SET_MEM_TABLE's fd; a new
  // one, or the caller's that outlives this connection.
  if (o.memory_fd >= 0) {
    struct stat st;
    if (::fstat(o.memory_fd, &st) != 0) return ErrnoStatus("guest RAM fd");
    if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) < o.memory_bytes)
      return absl::InvalidArgumentError(absl::StrCat("guest RAM fd: not a memory file of at least ", o.memory_bytes,
                                                     " bytes (", st.st_size, ")"));
    memfd_ = ::fcntl(o.memory_fd, F_DUPFD_CLOEXEC, 0);
    if (memfd_ < 0) return ErrnoStatus("dup guest RAM fd");
  } else {
    if (o.memory_map) return absl::InvalidArgumentError("guest RAM mapping without its fd (memory_fd)");
    memfd_ = ::memfd_create("vioport-vmm-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (memfd_ < 0) return ErrnoStatus("memfd_create");
    if (::ftruncate(memfd_, static_cast<off_t>(o.memory_bytes)) != 0) return ErrnoStatus("ftruncate guest RAM");
    if (::fcntl(memfd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) return ErrnoStatus("seal guest RAM");
  }
  if (o.memory_map) {
    map_ = o.memory_map;
    own_map_ = false;
  } else {
    void* p = ::mmap(nullptr, o.memory_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_, 0);
    if (p == MAP_FAILED) return ErrnoStatus("mmap guest RAM");
    map_ = static_cast<uint8_t*>(p);
  }
  size_ = o.memory_bytes;
  base_ = o.guest_phys_base;

  auto sock = ConnectUnix(o.socket_path, SOCK_STREAM, o.connect_timeout);
  if (!sock.ok()) return sock.status();
  sock_ = sock->release();

  // QEMU's order at realize time.
  auto features = GetValue<uint64_t>(Req::kGetFeatures);
  if (!features.ok()) return features.status();
  device_features_ = *features;
  if (device_features_ & (uint64_t{1} << kFeatureProtocolFeatures)) {
    auto offered = GetValue<uint64_t>(Req::kGetProtocolFeatures);
    if (!offered.ok()) return offered.status();
    offered_protocol_ = *offered;
    const uint64_t take = offered_protocol_ & o.wanted_protocol_features;
    // REPLY_ACK takes effect once negotiated: this message goes without it.
    {
      absl::MutexLock l(&mu_);
      auto r = CallLocked(Req::kSetProtocolFeatures, 0, Bytes(take), {}, false);
      if (!r.ok()) return r.status();
    }
    protocol_ = take;
  }
  uint64_t nq = 1;
  if (has_protocol_feature(proto::kMq)) {
    auto n = GetValue<uint64_t>(Req::kGetQueueNum);
    if (!n.ok()) return n.status();
    const uint64_t queues = o.net ? 2 * *n + 1 : *n;
    if (*n == 0 || queues > kMaxQueues)
      return absl::InvalidArgumentError(absl::StrCat("GET_QUEUE_NUM: ", *n, o.net ? " queue pairs" : " queues", " (at most ",
                                                     kMaxQueues, " queues)"));
    nq = queues;
  }
  if (absl::Status s = Send(Req::kSetOwner, {}); !s.ok()) return s;
  if (has_protocol_feature(proto::kConfigureMemSlots)) {
    auto slots = GetValue<uint64_t>(Req::kGetMaxMemSlots);
    if (!slots.ok()) return slots.status();
    max_mem_slots_ = *slots;
  }

  for (uint64_t q = 0; q < nq; ++q) {
    for (auto* v : {&kick_, &call_, &err_}) {
      const int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (fd < 0) return ErrnoStatus("eventfd");
      v->push_back(fd);
    }
  }
  started_.assign(nq, false);
  stop_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (stop_fd_ < 0) return ErrnoStatus("eventfd");
  monitor_ = std::thread([this] { Monitor(); });
  VIOPORT_LOG(kInfo, "vmm front-end: ", o.socket_path, absl::StrFormat(": features 0x%x, protocol features 0x%x of 0x%x, ",
                                                                       device_features_, protocol_, offered_protocol_),
              nq, " queues");
  return absl::OkStatus();
}

VmmFrontend::~VmmFrontend() {
  if (monitor_.joinable()) {
    SignalEventFd(stop_fd_);
    monitor_.join();
  }
  if (sock_ >= 0) ::close(sock_);
  for (auto* v : {&kick_, &call_, &err_})
    for (int fd : *v) ::close(fd);
  if (stop_fd_ >= 0) ::close(stop_fd_);
  if (inflight_fd_ >= 0) ::close(inflight_fd_);
  if (map_ && own_map_) ::munmap(map_, size_);
  if (memfd_ >= 0) ::close(memfd_);
}

uint8_t* VmmFrontend::Translate(uint64_t gpa, uint64_t len) const {
  if (gpa < base_ || gpa - base_ > size_ || len > size_ - (gpa - base_)) return nullptr;
  return map_ + (gpa - base_);
}

// ---- the message exchange ----------------------------------------------------

void VmmFrontend::MarkDead(const std::string& why) {
  {
    absl::MutexLock l(&why_mu_);
    if (dead_.load()) return;
    why_ = why;
    dead_.store(true, std::memory_order_release);
  }
  VIOPORT_LOG(kWarning, "vmm front-end: ", opts_.socket_path, ": back-end lost: ", why);
  WakeAll();
}

std::string VmmFrontend::failure() const {
  absl::MutexLock l(&why_mu_);
  return why_;
}

void VmmFrontend::WakeAll() {
  for (int fd : call_) SignalEventFd(fd);
}

absl::StatusOr<Message> VmmFrontend::CallLocked(Req req, uint32_t flags, std::span<const uint8_t> payload,
                                                std::span<const int> fds, bool want_reply) {
  if (dead_.load()) return Named(req, absl::UnavailableError(absl::StrCat("back-end is gone (", failure(), ")")));
  last_req_.store(static_cast<uint32_t>(req), std::memory_order_relaxed);
  VIOPORT_LOG(kDebug, "vmm front-end: -> ", ReqName(static_cast<uint32_t>(req)), absl::StrFormat(" flags 0x%x", flags),
              ", ", payload.size(), " bytes, ", fds.size(), " fds");
  absl::Status s = SendMessage(sock_, static_cast<uint32_t>(req), flags, payload, fds,
                               static_cast<int>(absl::ToInt64Milliseconds(opts_.reply_timeout)));
  if (!s.ok()) {
    s = Named(req, s);
    MarkDead(std::string(s.message()));
    return s;
  }
  if (!want_reply) return Message();
  const absl::Time deadline = absl::Now() + opts_.reply_timeout;
  for (;;) {
    Message m;
    absl::StatusOr<bool> got = reader_.Feed(sock_, &m);
    if (!got.ok()) {
      // The codec words a closed peer from the back-end's side.
      const bool eof = got.status().message() == "front-end closed the connection";
      const absl::Status e = Named(
          req, eof ? absl::UnavailableError("the back-end closed the connection instead of replying") : got.status());
      MarkDead(std::string(e.message()));
      return e;
    }
    if (*got) {
      if (m.header.request != static_cast<uint32_t>(req) || !(m.header.flags & kFlagReply)) {
        const absl::Status e = Named(req, absl::InternalError(absl::StrFormat(
                                              "the reply is %s with flags 0x%x, not a reply to this request",
                                              ReqName(m.header.request), m.header.flags)));
        MarkDead(std::string(e.message()));  // the stream is out of step from here on
        return e;
      }
      return m;
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      const absl::Status e = Named(req, absl::DeadlineExceededError(absl::StrCat(
                                            "no reply within ", absl::FormatDuration(opts_.reply_timeout))));
      MarkDead(std::string(e.message()));
      return e;
    }
    pollfd pfd{sock_, POLLIN, 0};
    const timespec ts = absl::ToTimespec(left);
    if (::ppoll(&pfd, 1, &ts, nullptr) < 0 && errno != EINTR) {
      const absl::Status e = Named(req, ErrnoStatus("poll"));
      MarkDead(std::string(e.message()));
      return e;
    }
  }
}

absl::StatusOr<Message> VmmFrontend::Call(Req req, std::span<const uint8_t> payload, std::span<const int> fds,
                                          bool want_reply, bool need_reply) {
  absl::MutexLock l(&mu_);
  return CallLocked(req, need_reply ? kFlagNeedReply : 0, payload, fds, want_reply || need_reply);
}

absl::Status VmmFrontend::SendLocked(Req req, std::span<const uint8_t> payload, std::span<const int> fds) {
  const bool ack = has_protocol_feature(proto::kReplyAck);
  auto r = CallLocked(req, ack ? kFlagNeedReply : 0, payload, fds, ack);
  if (!r.ok()) return r.status();
  if (!ack) return absl::OkStatus();
  uint64_t v;
  if (!r->As(&v))
    return Named(req, absl::InvalidArgumentError(absl::StrCat("REPLY_ACK answer of ", r->payload.size(),
                                                              " bytes (expected 8)")));
  if (v != 0) return Named(req, absl::FailedPreconditionError(absl::StrFormat("back-end refused (ack 0x%x)", v)));
  return absl::OkStatus();
}

absl::Status VmmFrontend::Send(Req req, std::span<const uint8_t> payload, std::span<const int> fds) {
  absl::MutexLock l(&mu_);
  return SendLocked(req, payload, fds);
}

template <typename T>
absl::StatusOr<T> VmmFrontend::GetValue(Req req, std::span<const uint8_t> payload) {
  absl::MutexLock l(&mu_);
  auto r = CallLocked(req, 0, payload, {}, true);
  if (!r.ok()) return r.status();
  T v;
  if (!r->As(&v))
    return Named(req, absl::InvalidArgumentError(absl::StrCat("reply of ", r->payload.size(), " bytes (expected ",
                                                              sizeof(T), ")")));
  return v;
}

// ---- requests ----------------------------------------------------------------

absl::StatusOr<std::vector<uint8_t>> VmmFrontend::GetConfig(uint32_t offset, uint32_t size) {
  if (!has_protocol_feature(proto::kConfig))
    return absl::FailedPreconditionError("GET_CONFIG: the back-end did not negotiate CONFIG");
  if (size == 0 || size > kMaxConfigSize || offset > kMaxConfigSize - size)
    return absl::InvalidArgumentError(absl::StrCat("GET_CONFIG: ", size, " bytes at ", offset, " (limit ",
                                                   kMaxConfigSize, ")"));
  std::vector<uint8_t> req(sizeof(ConfigHeader) + size, 0);
  const ConfigHeader h{offset, size, 0};
  std::memcpy(req.data(), &h, sizeof h);
  absl::MutexLock l(&mu_);
  auto r = CallLocked(Req::kGetConfig, 0, req, {}, true);
  if (!r.ok()) return r.status();
  ConfigHeader got{};
  if (!r->AtLeast(&got) || r->payload.size() != sizeof(ConfigHeader) + size || got.size != size)
    return absl::FailedPreconditionError(absl::StrCat("GET_CONFIG: back-end refused ", size, " bytes at offset ",
                                                      offset, " (reply of ", r->payload.size(), " bytes)"));
  return std::vector<uint8_t>(r->payload.begin() + sizeof(ConfigHeader), r->payload.end());
}

absl::Status VmmFrontend::SetConfig(uint32_t offset, std::span<const uint8_t> data) {
  if (!has_protocol_feature(proto::kConfig))
    return absl::FailedPreconditionError("SET_CONFIG: the back-end did not negotiate CONFIG");
  if (data.empty() || data.size() > kMaxConfigSize || offset > kMaxConfigSize - data.size())
    return absl::InvalidArgumentError(absl::StrCat("SET_CONFIG: ", data.size(), " bytes at ", offset));
  std::vector<uint8_t> req(sizeof(ConfigHeader) + data.size());
  const ConfigHeader h{offset, static_cast<uint32_t>(data.size()), 0};
  std::memcpy(req.data(), &h, sizeof h);
  std::memcpy(req.data() + sizeof h, data.data(), data.size());
  return Send(Req::kSetConfig, req);
}

absl::Status VmmFrontend::SetFeatures(uint64_t features) {
  const uint64_t pf = uint64_t{1} << kFeatureProtocolFeatures;
  if (device_features_ & pf) features |= pf;
  if (features & ~device_features_)
    return absl::InvalidArgumentError(absl::StrFormat("SET_FEATURES: 0x%x has bits the back-end did not offer (0x%x)",
                                                      features, features & ~device_features_));
  absl::Status s = Send(Req::kSetFeatures, Bytes(features));
  if (s.ok()) acked_features_ = features;
  return s;
}

absl::Status VmmFrontend::SetMemTable() {
  const MemRegion region{base_, size_, reinterpret_cast<uint64_t>(map_), 0};
  const int fd = memfd_;
  if (opts_.add_mem_reg && has_protocol_feature(proto::kConfigureMemSlots)) {
    if (mem_added_) return absl::OkStatus();
    const SingleMemRegion one{0, region};
    absl::Status s = Send(Req::kAddMemReg, Bytes(one), {&fd, 1});
    if (s.ok()) mem_added_ = true;
    return s;
  }
  uint8_t buf[sizeof(MemTableHeader) + sizeof(MemRegion)];
  const MemTableHeader h{1, 0};
  std::memcpy(buf, &h, sizeof h);
  std::memcpy(buf + sizeof h, &region, sizeof region);
  return Send(Req::kSetMemTable, buf, {&fd, 1});
}

absl::Status VmmFrontend::SetupInflight(uint16_t queues, uint16_t queue_size) {
  if (!has_protocol_feature(proto::kInflightShmfd)) return absl::OkStatus();
  if (queues == 0 || queue_size == 0)
    return absl::InvalidArgumentError(absl::StrCat("GET_INFLIGHT_FD: ", queues, " queues of ", queue_size));
  Inflight want, got;
  std::memset(&want, 0, sizeof want);  // no stray padding bytes on the wire
  std::memset(&got, 0, sizeof got);
  want.num_queues = queues;
  want.queue_size = queue_size;
  int fd = -1;
  {
    absl::MutexLock l(&mu_);
    auto r = CallLocked(Req::kGetInflightFd, 0, Bytes(want), {}, true);
    if (!r.ok()) return r.status();
    if (!r->As(&got))
      return absl::InvalidArgumentError(absl::StrCat("GET_INFLIGHT_FD: reply of ", r->payload.size(), " bytes"));
    fd = r->TakeFd(0);
  }
  if (fd < 0 || got.mmap_size == 0) {
    if (fd >= 0) ::close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat("GET_INFLIGHT_FD: back-end gave ", fd < 0 ? "no fd" : "an empty region", " (mmap_size ",
                     got.mmap_size, ")"));
  }
  if (inflight_fd_ >= 0) ::close(inflight_fd_);
  inflight_fd_ = fd;
  Inflight set = want;
  set.mmap_size = got.mmap_size;
  set.mmap_offset = got.mmap_offset;
  inflight_region_ = {set.mmap_size, set.mmap_offset, set.num_queues, set.queue_size};
  return Send(Req::kSetInflightFd, Bytes(set), {&inflight_fd_, 1});
}

absl::Status VmmFrontend::SetInflight(int fd, const InflightRegion& region) {
  if (!has_protocol_feature(proto::kInflightShmfd)) return absl::OkStatus();
  if (fd < 0 || region.mmap_size == 0 || region.num_queues == 0 || region.queue_size == 0)
    return absl::InvalidArgumentError(absl::StrCat("SET_INFLIGHT_FD: fd ", fd, ", ", region.mmap_size, " bytes for ",
                                                   region.num_queues, " queues of ", region.queue_size));
  const int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return Named(Req::kSetInflightFd, ErrnoStatus("dup in-flight fd"));
  if (inflight_fd_ >= 0) ::close(inflight_fd_);
  inflight_fd_ = dup;
  inflight_region_ = region;
  Inflight set;
  std::memset(&set, 0, sizeof set);  // no stray padding bytes on the wire
  set.mmap_size = region.mmap_size;
  set.mmap_offset = region.mmap_offset;
  set.num_queues = region.num_queues;
  set.queue_size = region.queue_size;
  return Send(Req::kSetInflightFd, Bytes(set), {&inflight_fd_, 1});
}

absl::Status VmmFrontend::StartVring(uint16_t q, const VringSetup& r) {
  if (q >= num_queues())
    return absl::OutOfRangeError(absl::StrCat("SET_VRING_NUM: queue ", q, " (the back-end has ", num_queues(), ")"));
  if (r.size == 0 || r.size > 32768 || (!r.packed && (r.size & (r.size - 1))))
    return absl::InvalidArgumentError(absl::StrCat("SET_VRING_NUM: queue ", q, " size ", r.size));
  const uint64_t n = r.size;
  const uint64_t desc_len = 16 * n;
  const uint64_t avail_len = r.packed ? 4 : 6 + 2 * n;
  const uint64_t used_len = r.packed ? 4 : 6 + 8 * n;
  uint8_t* desc = Translate(r.desc, desc_len);
  uint8_t* avail = Translate(r.avail, avail_len);
  uint8_t* used = Translate(r.used, used_len);
  if (!desc || !avail || !used)
    return absl::OutOfRangeError(absl::StrFormat(
        "SET_VRING_ADDR: queue %u: desc 0x%x, avail 0x%x, used 0x%x are not all in guest RAM [0x%x, 0x%x)", q, r.desc,
        r.avail, r.used, base_, base_ + size_));
  const uint32_t base = r.base != VringSetup::kDefaultBase ? r.base : (r.packed ? 0x80008000u : 0u);
  const uint64_t idx = q;
  if (absl::Status s = Send(Req::kSetVringNum, Bytes(VringState{q, r.size})); !s.ok()) return s;
  if (absl::Status s = Send(Req::kSetVringBase, Bytes(VringState{q, base})); !s.ok()) return s;
  const VringAddr a{q, 0, reinterpret_cast<uint64_t>(desc), reinterpret_cast<uint64_t>(used),
                    reinterpret_cast<uint64_t>(avail), 0};
  if (absl::Status s = Send(Req::kSetVringAddr, Bytes(a)); !s.ok()) return s;
  // Drop stale signals from an earlier life of this ring.
  DrainEventFd(call_[q]);
  DrainEventFd(err_[q]);
  // Call and ERR before the kick that starts the ring, so no interrupt is lost.
  if (absl::Status s = Send(Req::kSetVringCall, Bytes(idx), {&call_[q], 1}); !s.ok()) return s;
  if (absl::Status s = Send(Req::kSetVringErr, Bytes(idx), {&err_[q], 1}); !s.ok()) return s;
  if (absl::Status s = Send(Req::kSetVringKick, Bytes(idx), {&kick_[q], 1}); !s.ok()) return s;
  started_[q] = true;
  return absl::OkStatus();
}

absl::Status VmmFrontend::EnableVring(uint16_t q, bool enable) {
  if (q >= num_queues())
    return absl::OutOfRangeError(absl::StrCat("SET_VRING_ENABLE: queue ", q, " (the back-end has ", num_queues(), ")"));
  // Without protocol features the rings are enabled by SET_FEATURES already.
  if (!(acked_features_ & (uint64_t{1} << kFeatureProtocolFeatures))) return absl::OkStatus();
  return Send(Req::kSetVringEnable, Bytes(VringState{q, enable ? 1u : 0u}));
}

absl::StatusOr<uint32_t> VmmFrontend::StopVring(uint16_t q) {
  if (q >= num_queues())
    return absl::OutOfRangeError(absl::StrCat("GET_VRING_BASE: queue ", q, " (the back-end has ", num_queues(), ")"));
  if (absl::Status s = EnableVring(q, false); !s.ok()) return s;
  absl::MutexLock l(&mu_);
  auto r = CallLocked(Req::kGetVringBase, 0, Bytes(VringState{q, 0}), {}, true);
  if (!r.ok()) return r.status();
  VringState st{};
  if (!r->As(&st) || st.index != q)
    return absl::InvalidArgumentError(absl::StrCat("GET_VRING_BASE: queue ", q, ": malformed reply (",
                                                   r->payload.size(), " bytes, index ", st.index, ")"));
  started_[q] = false;
  return st.num;
}

absl::Status VmmFrontend::ResetDevice() {
  if (!has_protocol_feature(proto::kResetDevice))
    return absl::UnimplementedError("RESET_DEVICE: not negotiated");
  absl::Status s = Send(Req::kResetDevice, {});
  if (s.ok()) {
    started_.assign(started_.size(), false);
    acked_features_ = 0;
  }
  return s;
}

// ---- notifications -------------------------------------------------------------

void VmmFrontend::Kick(uint16_t q) {
  if (q < kick_.size()) SignalEventFd(kick_[q]);
}

bool VmmFrontend::WaitCall(uint16_t q, absl::Duration timeout, absl::Duration spin) {
  if (q >= call_.size()) return false;
  if (!alive()) return true;  // look: the connection is gone
  const int fd = call_[q];
  uint64_t v;
  if (spin > absl::ZeroDuration()) {
    const absl::Time end = absl::Now() + std::min(spin, timeout);
    do {
      if (::read(fd, &v, sizeof v) == sizeof v) return true;
    } while (absl::Now() < end);
  }
  pollfd p{fd, POLLIN, 0};
  const timespec ts = absl::ToTimespec(std::max(timeout, absl::ZeroDuration()));
  if (::ppoll(&p, 1, &ts, nullptr) <= 0) return false;
  return ::read(fd, &v, sizeof v) == sizeof v;
}

// The monitor: the socket's hang-up and the rings' ERR eventfds.
void VmmFrontend::Monitor() {
  const size_t nq = err_.size();
  std::vector<pollfd> p(2 + nq);
  p[0] = {stop_fd_, POLLIN, 0};
  p[1] = {sock_, POLLRDHUP, 0};  // never POLLIN: replies belong to the caller
  for (size_t q = 0; q < nq; ++q) p[2 + q] = {err_[q], POLLIN, 0};
  for (;;) {
    const int r = ::poll(p.data(), p.size(), -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      MarkDead(absl::StrCat("monitor poll: ", std::strerror(errno)));
      return;
    }
    if (p[0].revents) return;
    if (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
      const uint32_t last = last_req_.load(std::memory_order_relaxed);
      MarkDead(last ? absl::StrCat("the back-end closed the connection (the last request was ", ReqName(last), ")")
                    : std::string("the back-end closed the connection"));
      return;
    }
    bool any = false;
    for (size_t q = 0; q < nq; ++q) {
      if (!(p[2 + q].revents & POLLIN)) continue;
      DrainEventFd(err_[q]);
      ring_errors_.fetch_or(uint64_t{1} << std::min<size_t>(q, 63), std::memory_order_acq_rel);
      VIOPORT_LOG(kWarning, "vmm front-end: ", opts_.socket_path, ": the back-end signalled an error on ring ", q);
      any = true;
    }
    if (any) WakeAll();
  }
}

}  // namespace vioport::vhost_user
