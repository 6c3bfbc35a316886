// SPDX-License-Identifier: Apache-2.0
// crq::DaemonSession and PartitionRegistry: crqd's per-connection decoding
// without sockets; see crqd_session.h.
#include "crqd_session.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace vioport::crq {

bool PartitionRegistry::TryClaim(PartitionId id) {
  std::lock_guard<std::mutex> lock(mu_);
  return ids_.insert(id).second;
}

void PartitionRegistry::Release(PartitionId id) {
  std::lock_guard<std::mutex> lock(mu_);
  ids_.erase(id);
}

std::vector<PartitionId> PartitionRegistry::Ids() const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::vector<PartitionId>(ids_.begin(), ids_.end());
}

size_t PartitionRegistry::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ids_.size();
}

DaemonSession::HelloResult DaemonSession::Hello(std::span<const uint8_t> bytes, bool memfd_passed) {
  // One HELLO per connection: the identity it names is the caller of every
  // later hypercall, so it cannot be swapped midway.
  if (said_hello_) return Refuse("HELLO already said on this connection");
  said_hello_ = true;
  wire::Hello hello;
  if (bytes.size() != sizeof hello) return Refuse("bad HELLO (size)");
  std::memcpy(&hello, bytes.data(), sizeof hello);
  if (hello.magic != wire::kHelloMagic || hello.version != wire::kWireVersion)
    return Refuse("bad HELLO (magic or version)");
  const PartitionId id = hello.partition;
  const uint64_t size = hello.memory_bytes;
  if (!memfd_passed) return Refuse("no memfd passed with HELLO");
  if (size == 0 || size % kTcePageSize != 0)
    return Refuse(absl::StrCat("memory of ", size, " bytes: must be whole 4 KiB pages"));
  if (std::string why = host_->CheckMemory(size); !why.empty()) return Refuse(std::move(why));
  // A partition that just exited may still hold its id until its thread
  // reads the EOF: the host decides how long a restarted one waits.
  while (!registry_.TryClaim(id)) {
    if (!host_->RetryClaim()) return Refuse(absl::StrCat("partition ", id, " is already connected"));
  }
  absl::StatusOr<uint8_t*> mem = host_->MapMemory(size);
  if (!mem.ok()) {
    registry_.Release(id);
    return Refuse(std::string(mem.status().message()));
  }
  absl::StatusOr<int> irq = host_->InterruptFd();
  bool added = false;
  absl::Status s = irq.status();
  if (s.ok()) {
    s = hv_.AddPartition(id, *mem, size);
    added = s.ok();
  }
  if (s.ok()) s = hv_.SetInterruptEventfd(id, *irq);
  if (!s.ok()) {
    if (added) (void)hv_.RemovePartition(id);
    host_->UnmapMemory(*mem, size);
    registry_.Release(id);
    return Refuse(std::string(s.message()));
  }
  attached_ = true;
  id_ = id;
  mem_ = *mem;
  size_ = size;
  return HelloResult{true, ""};
}

HcallResult DaemonSession::Call(uint64_t opcode, std::span<const uint64_t> args) {
  if (!attached_) return HcallResult{kHHardware, 0};
  return hv_.Hcall(id_, opcode, args);
}

void DaemonSession::Close() {
  if (!attached_) return;
  attached_ = false;
  // Partners see FF 01 before the memory goes: the hypervisor stops using
  // it inside RemovePartition.
  (void)hv_.RemovePartition(id_);
  host_->UnmapMemory(mem_, size_);
  mem_ = nullptr;
  registry_.Release(id_);
}

}  // namespace vioport::crq
