// SPDX-License-Identifier: Apache-2.0
#pragma once

// LocalPartition: a partition in this process over a crq::Hypervisor (unit
// tests), one of the emulator's implementations of the CRQ transport's
// channel (crq::Partition, transports/crq/.../crq_channel.h); RemotePartition
// (crq_remote.h) is the other, a partition process of the crqd daemon.

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "vioport/emulators/crq_hypervisor.h"
#include "vioport/transports/crq_channel.h"

namespace vioport::crq {

// A partition in this process: RAM in a sealed memfd mapped here, registered
// with `hv` as `id` until destroyed (then RemovePartition: its partners see FF 01).
class LocalPartition final : public Partition {
 public:
  static absl::StatusOr<std::unique_ptr<LocalPartition>> Create(Hypervisor& hv, PartitionId id,
                                                                uint64_t memory_bytes);
  ~LocalPartition() override;

  HcallResult Hcall(uint64_t opcode, std::span<const uint64_t> args) override { return hv_.Hcall(id_, opcode, args); }
  uint8_t* memory() const override { return mem_; }
  uint64_t memory_size() const override { return size_; }
  int interrupt_fd() const override { return irq_fd_; }
  PartitionId id() const { return id_; }
  int memory_fd() const { return memfd_; }

 private:
  LocalPartition(Hypervisor& hv, PartitionId id) : hv_(hv), id_(id) {}
  Hypervisor& hv_;
  PartitionId id_;
  int memfd_ = -1, irq_fd_ = -1;
  uint8_t* mem_ = nullptr;
  uint64_t size_ = 0;
  bool added_ = false;
};

}  // namespace vioport::crq
