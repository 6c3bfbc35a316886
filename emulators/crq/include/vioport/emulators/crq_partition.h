#pragma once

// A partition's view of the PowerVM hypervisor: its own memory, hypercalls
// made as itself, and its interrupt. This is the channel the CRQ transport
// (transports/crq) is written against. Two implementations:
//  - LocalPartition: in-process, over a crq::Hypervisor (unit tests);
//  - a partition process connected to the emulator daemon (crqd), where the
//    emulator is its own process and every hypercall is a message.
// Which partition makes a call is never an argument: it is who you are.

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "vioport/emulators/crq_hcall.h"
#include "vioport/emulators/crq_hypervisor.h"

namespace vioport::crq {

class Partition {
 public:
  virtual ~Partition() = default;

  // r3 = opcode, r4.. = args; returns the PAPR code (and r4 for H_GET_TCE).
  virtual HcallResult Hcall(uint64_t opcode, std::span<const uint64_t> args) = 0;
  // The partition's own RAM: real address = offset in it.
  virtual uint8_t* memory() const = 0;
  virtual uint64_t memory_size() const = 0;
  // An eventfd that becomes readable on an interrupt edge of any of this
  // partition's adapters (H_VIO_SIGNAL mode 1). The reader drains it.
  virtual int interrupt_fd() const = 0;

  // Typed wrappers, in PAPR argument order.
  int64_t RegCrq(uint64_t unit, uint64_t ioba, uint64_t len) { return Call(kHRegCrq, {unit, ioba, len}); }
  int64_t FreeCrq(uint64_t unit) { return Call(kHFreeCrq, {unit}); }
  int64_t SendCrq(uint64_t unit, uint64_t hi, uint64_t lo) { return Call(kHSendCrq, {unit, hi, lo}); }
  int64_t EnableCrq(uint64_t unit) { return Call(kHEnableCrq, {unit}); }
  int64_t VioSignal(uint64_t unit, uint64_t mode) { return Call(kHVioSignal, {unit, mode}); }
  int64_t PutTce(uint64_t liobn, uint64_t ioba, uint64_t tce) { return Call(kHPutTce, {liobn, ioba, tce}); }
  int64_t StuffTce(uint64_t liobn, uint64_t ioba, uint64_t tce, uint64_t npages) {
    return Call(kHStuffTce, {liobn, ioba, tce, npages});
  }
  int64_t PutTceIndirect(uint64_t liobn, uint64_t ioba, uint64_t list_real_addr, uint64_t npages) {
    return Call(kHPutTceIndirect, {liobn, ioba, list_real_addr, npages});
  }
  int64_t GetTce(uint64_t liobn, uint64_t ioba, uint64_t* tce) {
    const uint64_t a[] = {liobn, ioba};
    HcallResult r = Hcall(kHGetTce, a);
    *tce = r.r4;
    return r.rc;
  }
  int64_t CopyRdma(uint64_t len, uint64_t s_liobn, uint64_t s_ioba, uint64_t d_liobn, uint64_t d_ioba) {
    return Call(kHCopyRdma, {len, s_liobn, s_ioba, d_liobn, d_ioba});
  }

 private:
  int64_t Call(uint64_t op, std::initializer_list<uint64_t> args) {
    return Hcall(op, std::span<const uint64_t>(args.begin(), args.size())).rc;
  }
};

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
