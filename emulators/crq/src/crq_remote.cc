// SPDX-License-Identifier: Apache-2.0
#include "vioport/emulators/crq_remote.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace vioport::crq {

absl::StatusOr<std::unique_ptr<RemotePartition>> RemotePartition::Connect(const RemotePartitionOptions& o) {
  if (o.memory_bytes == 0 || o.memory_bytes % kTcePageSize)
    return absl::InvalidArgumentError(absl::StrCat("partition memory of ", o.memory_bytes, " bytes (whole 4 KiB pages)"));
  std::unique_ptr<RemotePartition> p(new RemotePartition());
  p->id_ = o.id;
  p->spin_ = o.spin;
  std::string err;
  p->memfd_ = emu::CreateSealedMemfd(absl::StrCat("crq-partition-", o.id), o.memory_bytes, &p->mem_, &err);
  if (p->memfd_ < 0) return absl::ResourceExhaustedError(err);
  p->size_ = o.memory_bytes;
  const int s = emu::ConnectToDaemon(o.socket_path, "crqd", o.connect_timeout, &err);
  if (s < 0) return absl::UnavailableError(err);
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
  wire::MailboxReply mr;
  int mbfd = -1;
  if (!wire::RecvWithFd(s, &mr, sizeof mr, &mbfd) || mr.magic != wire::kHelloMagic || mbfd < 0 ||
      mr.bytes < sizeof(wire::Mailbox)) {
    if (mbfd >= 0) ::close(mbfd);
    return absl::InternalError("crqd: no hypercall mailbox after HELLO");
  }
  wire::Mailbox* mb = emu::MapMailbox(mbfd, mr.bytes);
  p->mailbox_fd_ = mbfd;
  if (mb == nullptr) return absl::ResourceExhaustedError(absl::StrCat("mmap mailbox: ", std::strerror(errno)));
  p->mailbox_ = mb;
  p->mailbox_bytes_ = mr.bytes;
  p->seq_ = p->mailbox_->request_seq.load();
  if (absl::Status st = p->StartWatcher(); !st.ok()) return st;
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
  if (mailbox_) emu::UnmapMailbox(mailbox_, mailbox_bytes_);
  for (int fd : {memfd_, irq_fd_, wake_fd_, mailbox_fd_})
    if (fd >= 0) ::close(fd);
}

absl::Status RemotePartition::Export(HandoverWriter* out) const {
  auto* self = const_cast<RemotePartition*>(this);
  absl::MutexLock lock(&self->mu_);
  if (dead_.load() || sock_ < 0 || mailbox_fd_ < 0) return absl::UnavailableError("crqd connection is gone");
  out->U64(id_);
  out->U64(size_);
  out->U64(mailbox_bytes_);
  out->U64(static_cast<uint64_t>(spin_.count()));
  out->Fd(sock_);
  out->Fd(memfd_);
  out->Fd(irq_fd_);
  out->Fd(mailbox_fd_);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<RemotePartition>> RemotePartition::Adopt(HandoverReader& in) {
  std::unique_ptr<RemotePartition> p(new RemotePartition());
  uint64_t id = 0, size = 0, mbytes = 0, spin = 0;
  UniqueFd sock, mem, irq, mb;
  if (absl::Status s = in.U64(&id, UINT32_MAX, "partition id"); !s.ok()) return s;
  if (absl::Status s = in.U64(&size, uint64_t{1} << 40, "partition memory"); !s.ok()) return s;
  if (absl::Status s = in.U64(&mbytes, 1 << 20, "mailbox size"); !s.ok()) return s;
  if (absl::Status s = in.U64(&spin, 1000000, "spin"); !s.ok()) return s;
  for (auto [fd, what] : {std::pair{&sock, "crqd socket"}, {&mem, "partition memory"}, {&irq, "interrupt eventfd"},
                          {&mb, "mailbox"}})
    if (absl::Status s = in.Fd(fd, what); !s.ok()) return s;
  if (size == 0 || size % kTcePageSize || mbytes < sizeof(wire::Mailbox))
    return absl::InvalidArgumentError("handed-over crq partition has a bad memory or mailbox size");
  struct stat st;
  if (::fstat(mem.get(), &st) != 0 || static_cast<uint64_t>(st.st_size) < size)
    return absl::InvalidArgumentError("handed-over crq partition memory is smaller than its size");
  void* m = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, mem.get(), 0);
  if (m == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("mmap partition memory: ", std::strerror(errno)));
  p->mem_ = static_cast<uint8_t*>(m);
  p->size_ = size;
  p->id_ = static_cast<PartitionId>(id);
  p->spin_ = std::chrono::microseconds(spin);
  wire::Mailbox* box = emu::MapMailbox(mb.get(), mbytes);
  if (box == nullptr) return absl::ResourceExhaustedError(absl::StrCat("mmap mailbox: ", std::strerror(errno)));
  p->mailbox_ = box;
  p->mailbox_bytes_ = mbytes;
  // The old vios may still call through the mailbox until it commits: take
  // the sequence at our first call, never before.
  p->resync_seq_ = true;
  p->memfd_ = mem.release();
  p->irq_fd_ = irq.release();
  p->mailbox_fd_ = mb.release();
  {
    absl::MutexLock lock(&p->mu_);
    p->sock_ = sock.release();
  }
  if (absl::Status st = p->StartWatcher(); !st.ok()) return st;
  return p;
}

void RemotePartition::MarkDead() {
  if (dead_.exchange(true, std::memory_order_acq_rel)) return;
  if (irq_fd_ >= 0) {
    const uint64_t one = 1;
    (void)!::write(irq_fd_, &one, sizeof one);
  }
}

absl::Status RemotePartition::StartWatcher() {
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC);
  if (wake_fd_ < 0) return absl::ResourceExhaustedError(absl::StrCat("eventfd: ", std::strerror(errno)));
  watcher_ = std::thread([this] { Watch(); });
  return absl::OkStatus();
}

void RemotePartition::Watch() {
  int s;
  {
    absl::MutexLock lock(&mu_);
    s = sock_;
  }
  // The socket is never closed before this thread is joined, so polling it
  // without the lock is safe.
  if (emu::wire::WaitForHangup(s, wake_fd_)) MarkDead();
}

void RemotePartition::Disconnect() {
  absl::MutexLock lock(&mu_);
  if (sock_ >= 0) ::shutdown(sock_, SHUT_RDWR);
  MarkDead();
}

HcallResult RemotePartition::Hcall(uint64_t opcode, std::span<const uint64_t> args) {
  absl::MutexLock lock(&mu_);
  if (dead_.load(std::memory_order_acquire) || sock_ < 0 || mailbox_ == nullptr) return HcallResult{kHHardware, 0};
  if (args.size() > wire::kMaxArgs) return HcallResult{kHParameter, 0};
  emu::MailboxAnswer answer;
  if (resync_seq_) {
    seq_ = mailbox_->request_seq.load();
    resync_seq_ = false;
  }
  switch (emu::MailboxCall(*mailbox_, sock_, seq_, opcode, args, spin_, dead_, &answer)) {
    case emu::CallOutcome::kAnswered:
      return HcallResult{answer.rc, answer.r4};
    case emu::CallOutcome::kServerGone:
      MarkDead();
      return HcallResult{kHHardware, 0};
    case emu::CallOutcome::kAbandoned:
      break;
  }
  return HcallResult{kHHardware, 0};
}

}  // namespace vioport::crq

namespace vioport {

void RegisterCrqdChannel() {
  crq::PartitionChannels::Add("crqd", [](const crq::PartitionSpec& s) -> absl::StatusOr<std::unique_ptr<crq::Partition>> {
    crq::RemotePartitionOptions o;
    o.socket_path = s.address;
    o.id = s.id;
    o.memory_bytes = s.memory_bytes;
    auto p = crq::RemotePartition::Connect(o);
    if (!p.ok()) return p.status();
    return std::unique_ptr<crq::Partition>(std::move(*p));
  });
  crq::PartitionAdopters::Add("crqd", [](HandoverReader& in) -> absl::StatusOr<std::unique_ptr<crq::Partition>> {
    auto p = crq::RemotePartition::Adopt(in);
    if (!p.ok()) return p.status();
    return std::unique_ptr<crq::Partition>(std::move(*p));
  });
}

}  // namespace vioport
