// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/shm_guest.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "vioport/core/log.h"
#include "vioport/transports/shm_protocol.h"

namespace vioport {

using shm::MsgHeader;
using shm::MsgType;
namespace reg = shm::reg;

namespace {

std::atomic_ref<uint32_t> Reg32(uint8_t* page, uint32_t off) {
  return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(page + off));
}

absl::Status Errno(absl::string_view what) { return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno))); }

// Waits until `fd` is readable or `deadline`; false on timeout.
bool WaitReadable(int fd, absl::Time deadline) {
  for (;;) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    pollfd p{fd, POLLIN, 0};
    const timespec ts = absl::ToTimespec(left);
    const int r = ::ppoll(&p, 1, &ts, nullptr);
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return true;  // let the read report it
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ShmDriverTransport>> ShmDriverTransport::Connect(const ShmGuestOptions& o) {
  if (o.mmio_version != 1 && o.mmio_version != 2) return absl::InvalidArgumentError("mmio version must be 1 or 2");
  if (o.memory_bytes < shm::kMinRegionSize || o.memory_bytes > shm::kMaxRegionSize ||
      o.memory_bytes % shm::kRegisterPageSize)
    return absl::InvalidArgumentError(absl::StrCat("memory size ", o.memory_bytes, ": 64 KiB to 64 GiB in whole pages"));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (o.socket_path.size() >= sizeof addr.sun_path)
    return absl::InvalidArgumentError(absl::StrCat("socket path too long: ", o.socket_path));
  std::memcpy(addr.sun_path, o.socket_path.c_str(), o.socket_path.size() + 1);

  std::unique_ptr<ShmDriverTransport> t(new ShmDriverTransport());
  t->sock_ = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (t->sock_ < 0) return Errno("socket");
  const absl::Time deadline = absl::Now() + o.connect_timeout;
  // The server may still be starting: retry a missing or refusing socket.
  while (::connect(t->sock_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    if ((errno != ENOENT && errno != ECONNREFUSED && errno != EINTR) || absl::Now() > deadline)
      return Errno(absl::StrCat("connect to ", o.socket_path));
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

  t->memfd_ = ::memfd_create("vioport-guest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (t->memfd_ < 0) return Errno("memfd_create");
  if (::ftruncate(t->memfd_, static_cast<off_t>(o.memory_bytes)) != 0) return Errno("ftruncate");
  if (::fcntl(t->memfd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) return Errno("seal memfd");
  void* p = ::mmap(nullptr, o.memory_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, t->memfd_, 0);
  if (p == MAP_FAILED) return Errno("mmap");
  t->map_ = static_cast<uint8_t*>(p);
  t->size_ = o.memory_bytes;

  MsgHeader h{};
  h.type = static_cast<uint32_t>(MsgType::kHello);
  h.offset = o.mmio_version;
  h.value = o.memory_bytes;
  h.aux = shm::kProtocolVersion;
  const int fd = t->memfd_;
  // A refusal (e.g. "device busy") may already be waiting, and the server
  // may have closed: then the send fails, but the reason is still readable.
  const absl::Status sent = shm::SendMsg(t->sock_, h, {}, {&fd, 1});
  if (!sent.ok() && !WaitReadable(t->sock_, absl::Now() + absl::Milliseconds(100))) return sent;
  if (!WaitReadable(t->sock_, deadline))
    return absl::DeadlineExceededError(absl::StrCat(o.socket_path, ": no answer to HELLO"));
  auto m = shm::RecvMsg(t->sock_, 2 * shm::kMaxQueues + 1);
  if (!m.ok()) return absl::UnavailableError(absl::StrCat(o.socket_path, ": ", m.status().message()));
  const auto type = static_cast<MsgType>(static_cast<uint32_t>(m->header.type));
  const uint32_t nq = m->header.size;
  if (type != MsgType::kWelcome || nq == 0 || nq > shm::kMaxQueues || m->fds.size() != 1 + 2 * nq) {
    for (int f : m->fds) ::close(f);
    if (type == MsgType::kError) return absl::FailedPreconditionError(absl::StrCat(o.socket_path, ": vios refused: ", m->tail));
    return absl::InvalidArgumentError(absl::StrCat(o.socket_path, ": malformed WELCOME"));
  }
  t->device_id_ = static_cast<uint32_t>(static_cast<uint64_t>(m->header.aux));
  t->config_call_ = m->fds[0];
  t->kick_.assign(m->fds.begin() + 1, m->fds.begin() + 1 + nq);
  t->call_.assign(m->fds.begin() + 1 + nq, m->fds.end());
  t->SetMirror(t->map_, static_cast<uint16_t>(nq));
  if (t->ReadRegister(reg::kMagic) != shm::kMagicValue || t->ReadRegister(reg::kVersion) != o.mmio_version)
    return absl::InvalidArgumentError(absl::StrCat(o.socket_path, ": register page has no virtio-mmio signature"));
  t->dma_ = std::make_unique<BufferDmaAllocator>(t->map_ + shm::kRegisterPageSize, shm::kRegisterPageSize,
                                                  o.memory_bytes - shm::kRegisterPageSize);
  return t;
}

ShmDriverTransport::~ShmDriverTransport() {
  if (map_) ::munmap(map_, size_);
  for (int fd : kick_) ::close(fd);
  for (int fd : call_) ::close(fd);
  if (config_call_ >= 0) ::close(config_call_);
  if (memfd_ >= 0) ::close(memfd_);
  if (sock_ >= 0) ::close(sock_);
}

void ShmDriverTransport::MarkDead(const std::string& why) {
  if (dead_.exchange(true)) return;
  {
    absl::MutexLock l(&why_mu_);
    why_ = why;
  }
  VIOPORT_LOG(kWarning, "shm guest: connection to the device lost: ", why);
  // Nobody answers any more: let drivers see a device that needs a reset.
  Reg32(map_, reg::kStatus).fetch_or(status::kDeviceNeedsReset, std::memory_order_release);
}

std::string ShmDriverTransport::disconnect_reason() const {
  absl::MutexLock l(&why_mu_);
  return why_;
}

bool ShmDriverTransport::WriteRegister(uint32_t offset, uint32_t value, uint32_t size) {
  absl::MutexLock l(&reg_mu_);
  if (dead_.load()) return false;
  MsgHeader h{};
  h.type = static_cast<uint32_t>(MsgType::kRegWrite);
  h.seq = ++seq_;
  h.offset = offset;
  h.size = size;
  h.value = value;
  if (absl::Status s = shm::SendMsg(sock_, h); !s.ok()) {
    MarkDead(std::string(s.message()));
    return false;
  }
  for (;;) {
    auto m = shm::RecvMsg(sock_, 0);
    if (!m.ok()) {
      MarkDead(std::string(m.status().message()));
      return false;
    }
    const auto type = static_cast<MsgType>(static_cast<uint32_t>(m->header.type));
    if (type == MsgType::kError) {
      MarkDead(absl::StrCat("device closed the connection: ", m->tail));
      return false;
    }
    if (type == MsgType::kRegAck && static_cast<uint32_t>(m->header.seq) == seq_)
      return static_cast<uint64_t>(m->header.value) == 0;
    MarkDead("unexpected message from the device");
    return false;
  }
}

void ShmDriverTransport::Notify(uint16_t q, uint32_t) {
  if (q >= kick_.size()) return;
  const uint64_t one = 1;
  ssize_t r;
  do {
    r = ::write(kick_[q], &one, sizeof one);
  } while (r < 0 && errno == EINTR);
}

uint64_t ShmDriverTransport::SupportedTransportFeatures() { return feature::kCoreSupported; }

bool ShmDriverTransport::WaitForInterrupt(uint16_t q, absl::Duration timeout) {
  if (dead_.load()) return true;  // NEEDS_RESET is showing: let the caller look
  pollfd p[3] = {{q < call_.size() ? call_[q] : -1, POLLIN, 0}, {config_call_, POLLIN, 0}, {sock_, 0, 0}};
  const timespec ts = absl::ToTimespec(std::max(timeout, absl::ZeroDuration()));
  const int r = ::ppoll(p, 3, &ts, nullptr);
  if (r <= 0) return false;
  uint64_t v;
  uint32_t seen = 0;
  if (p[0].revents & POLLIN) {
    while (::read(call_[q], &v, sizeof v) == sizeof v) {
    }
    seen |= shm::kIntUsedBuffer;
  }
  if (p[1].revents & POLLIN) {
    while (::read(config_call_, &v, sizeof v) == sizeof v) {
    }
    seen |= shm::kIntConfig;
  }
  if (p[2].revents & (POLLHUP | POLLERR)) MarkDead("device hung up");
  AckInterrupt(seen);
  return seen != 0 || dead_.load();
}

}  // namespace vioport
