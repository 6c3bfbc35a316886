// SPDX-License-Identifier: Apache-2.0
#include "vioport/emulators/crq_partition.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace vioport::crq {

absl::StatusOr<std::unique_ptr<LocalPartition>> LocalPartition::Create(Hypervisor& hv, PartitionId id,
                                                                      uint64_t memory_bytes) {
  if (memory_bytes == 0 || memory_bytes % kTcePageSize)
    return absl::InvalidArgumentError(absl::StrCat("partition memory of ", memory_bytes, " bytes (whole 4 KiB pages)"));
  std::unique_ptr<LocalPartition> p(new LocalPartition(hv, id));
  p->memfd_ = ::memfd_create(absl::StrCat("crq-partition-", id).c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (p->memfd_ < 0) return absl::ResourceExhaustedError(absl::StrCat("memfd_create: ", std::strerror(errno)));
  if (::ftruncate(p->memfd_, static_cast<off_t>(memory_bytes)) != 0 ||
      ::fcntl(p->memfd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0)
    return absl::ResourceExhaustedError(absl::StrCat("partition memfd: ", std::strerror(errno)));
  void* m = ::mmap(nullptr, memory_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, p->memfd_, 0);
  if (m == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("mmap: ", std::strerror(errno)));
  p->mem_ = static_cast<uint8_t*>(m);
  p->size_ = memory_bytes;
  p->irq_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (p->irq_fd_ < 0) return absl::ResourceExhaustedError(absl::StrCat("eventfd: ", std::strerror(errno)));
  if (absl::Status s = hv.AddPartition(id, p->mem_, memory_bytes); !s.ok()) return s;
  p->added_ = true;
  if (absl::Status s = hv.SetInterruptEventfd(id, p->irq_fd_); !s.ok()) return s;
  return p;
}

LocalPartition::~LocalPartition() {
  if (added_) (void)hv_.RemovePartition(id_);
  if (mem_) ::munmap(mem_, size_);
  if (memfd_ >= 0) ::close(memfd_);
  if (irq_fd_ >= 0) ::close(irq_fd_);
}

}  // namespace vioport::crq
