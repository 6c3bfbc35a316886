// SPDX-License-Identifier: Apache-2.0
#include "vioport/transports/shm_guest.h"

#include <poll.h>
#include <sys/socket.h>

#include "absl/strings/str_cat.h"
#include "vioport/transports/shm_protocol.h"

namespace vioport {

using shm::MsgType;

absl::StatusOr<std::unique_ptr<ShmDriverTransport>> ShmDriverTransport::Connect(const ShmGuestOptions& o) {
  if (o.mmio_version != 1 && o.mmio_version != 2) return absl::InvalidArgumentError("mmio version must be 1 or 2");
  if (o.memory_bytes < shm::kMinRegionSize || o.memory_bytes > shm::kMaxRegionSize ||
      o.memory_bytes % shm::kRegisterPageSize)
    return absl::InvalidArgumentError(absl::StrCat("memory size ", o.memory_bytes, ": 64 KiB to 64 GiB in whole pages"));
  std::unique_ptr<ShmDriverTransport> t(new ShmDriverTransport());
  const absl::Time deadline = absl::Now() + o.connect_timeout;
  auto sock = ConnectUnix(o.socket_path, SOCK_SEQPACKET, o.connect_timeout);
  if (!sock.ok()) return sock.status();
  t->sock_ = std::move(*sock);
  auto mem = SharedMemory::Create("vioport-guest", o.memory_bytes);
  if (!mem.ok()) return mem.status();
  t->mem_ = std::move(*mem);

  shm::MsgHeader h = shm::Header(MsgType::kHello);
  h.offset = o.mmio_version;
  h.value = o.memory_bytes;
  h.aux = shm::kProtocolVersion;
  const int fd = t->mem_.fd();
  // A refusal (e.g. "device busy") may already be waiting, and the server
  // may have closed: then the send fails, but the reason is still readable.
  const absl::Status sent = shm::SendMsg(t->sock_.get(), h, {}, {&fd, 1});
  if (!sent.ok() && !WaitReadable(t->sock_.get(), absl::Now() + absl::Milliseconds(100))) return sent;
  if (!WaitReadable(t->sock_.get(), deadline))
    return absl::DeadlineExceededError(absl::StrCat(o.socket_path, ": no answer to HELLO"));
  auto m = shm::RecvMsg(t->sock_.get(), 2 * shm::kMaxQueues + 1);
  if (!m.ok()) return absl::UnavailableError(absl::StrCat(o.socket_path, ": ", m.status().message()));
  std::vector<UniqueFd>& fds = m->fds;
  const uint32_t nq = m->header.size;
  if (shm::TypeOf(m->header) == MsgType::kError)
    return absl::FailedPreconditionError(absl::StrCat(o.socket_path, ": vios refused: ", m->tail));
  if (shm::TypeOf(m->header) != MsgType::kWelcome || nq == 0 || nq > shm::kMaxQueues || fds.size() != 1 + 2 * nq)
    return absl::InvalidArgumentError(absl::StrCat(o.socket_path, ": malformed WELCOME"));
  t->device_id_ = static_cast<uint32_t>(uint64_t{m->header.aux});
  t->config_call_ = std::move(fds[0]);
  for (uint32_t q = 0; q < nq; ++q) {
    t->kick_.push_back(std::move(fds[1 + q]));
    t->call_.push_back(std::move(fds[1 + nq + q]));
  }
  t->SetMirror(t->mem_.data(), static_cast<uint16_t>(nq));
  if (t->ReadRegister(mmio::reg::kMagic) != mmio::kMagicValue || t->ReadRegister(mmio::reg::kVersion) != o.mmio_version)
    return absl::InvalidArgumentError(absl::StrCat(o.socket_path, ": register page has no virtio-mmio signature"));
  t->dma_ = std::make_unique<BufferDmaAllocator>(t->mem_.data() + shm::kRegisterPageSize, shm::kRegisterPageSize,
                                                  o.memory_bytes - shm::kRegisterPageSize);
  return t;
}

bool ShmDriverTransport::WriteRegister(uint32_t offset, uint32_t value, uint32_t size) {
  absl::MutexLock l(&reg_mu_);
  if (gone()) return false;
  shm::MsgHeader h = shm::Header(MsgType::kRegWrite);
  h.seq = ++seq_;
  h.offset = offset;
  h.size = size;
  h.value = value;
  if (absl::Status s = shm::SendMsg(sock_.get(), h); !s.ok()) {
    Lost(std::string(s.message()));
    return false;
  }
  auto m = shm::RecvMsg(sock_.get(), 0);
  if (!m.ok()) {
    Lost(std::string(m.status().message()));
  } else if (shm::TypeOf(m->header) == MsgType::kError) {
    Lost(absl::StrCat("device closed the connection: ", m->tail));
  } else if (shm::TypeOf(m->header) != MsgType::kRegAck || uint32_t{m->header.seq} != seq_) {
    Lost("unexpected message from the device");
  } else {
    return uint64_t{m->header.value} == 0;
  }
  return false;
}

void ShmDriverTransport::Notify(uint16_t q, uint32_t) {
  if (q < kick_.size()) SignalEventFd(kick_[q].get());
}

bool ShmDriverTransport::WaitForInterrupt(uint16_t q, absl::Duration timeout) {
  if (gone()) return true;  // NEEDS_RESET is showing: let the caller look
  pollfd p[3] = {{q < call_.size() ? call_[q].get() : -1, POLLIN, 0}, {config_call_.get(), POLLIN, 0}, {sock_.get(), 0, 0}};
  const timespec ts = absl::ToTimespec(std::max(timeout, absl::ZeroDuration()));
  if (::ppoll(p, 3, &ts, nullptr) <= 0) return false;
  uint32_t seen = 0;
  if (p[0].revents & POLLIN) {
    DrainEventFd(p[0].fd);
    seen |= mmio::kIntUsedBuffer;
  }
  if (p[1].revents & POLLIN) {
    DrainEventFd(p[1].fd);
    seen |= mmio::kIntConfig;
  }
  if (p[2].revents & (POLLHUP | POLLERR)) Lost("device hung up");
  AckInterrupt(seen);
  return seen != 0 || gone();
}

}  // namespace vioport
