// SPDX-License-Identifier: Apache-2.0
// The channel the CRQ transport is written against: a partition's view of
// the PowerVM hypervisor - its own memory, hypercalls made as itself, and
// its interrupt. Which partition makes a call is never an argument: it is
// who you are. Implementations register by name (emulators/crq: "crqd", a
// partition process of the crqd emulator; in-process LocalPartition for
// unit tests), so the transport links no emulator.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "vioport/transports/channels.h"
#include "vioport/transports/handover.h"
#include "vioport/transports/crq_hcall.h"

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
  // Whether the hypervisor still answers (false once it is gone).
  virtual bool connected() const { return true; }
  // Live upgrade: what another process needs to be this partition from now
  // on (its connection to the hypervisor, its memory), written so that the
  // channel's PartitionAdopter rebuilds it; the hypervisor sees nothing.
  virtual absl::Status Export(HandoverWriter* /*out*/) const {
    return absl::UnimplementedError("this crq channel cannot hand its partition to another process");
  }

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

// Joining the hypervisor as a partition: where (the channel's own address,
// e.g. crqd's socket), as which partition, with how much RAM.
struct PartitionSpec {
  std::string address;
  PartitionId id = 0;
  uint64_t memory_bytes = 0;  // whole 4 KiB pages
};
using PartitionFactory = std::function<absl::StatusOr<std::unique_ptr<Partition>>(const PartitionSpec&)>;
using PartitionChannels = Channels<PartitionFactory>;
// A channel's other half of Export (by channel name, as PartitionChannels).
using PartitionAdopter = std::function<absl::StatusOr<std::unique_ptr<Partition>>(HandoverReader& in)>;
using PartitionAdopters = Channels<PartitionAdopter>;

}  // namespace vioport::crq
