#include "mmio_registers.h"

#include "absl/strings/str_format.h"
#include "vioport/transports/shm_protocol.h"

namespace vioport::shm {

MmioRegisters::MmioRegisters(DeviceController& ctl, uint32_t version)
    : ctl_(ctl), version_(version), queues_(ctl.num_queues()) {
  // A legacy (version 1) driver is guest-native endian; our guests are
  // little-endian processes on the same machine.
  ctl_.SetLegacyByteOrder(RingByteOrder::kLittle);
}

absl::Status MmioRegisters::Write(uint32_t offset, uint32_t size, uint32_t value) {
  if (size != 4 || (offset & 3))
    return absl::InvalidArgumentError(absl::StrFormat("register 0x%03x: %u-byte access (control registers are 32-bit)", offset, size));
  const bool legacy = version_ == 1;
  switch (offset) {
    case reg::kDeviceFeaturesSel: device_features_sel_ = value; return absl::OkStatus();
    case reg::kDriverFeaturesSel: driver_features_sel_ = value; return absl::OkStatus();
    case reg::kDriverFeatures:
      if (driver_features_sel_ > 1) return absl::OkStatus();  // bits >= 64: none exist
      driver_features_ &= ~(uint64_t{0xffffffff} << (32 * driver_features_sel_));
      driver_features_ |= uint64_t{value} << (32 * driver_features_sel_);
      return ctl_.SetDriverFeatures(driver_features_);
    case reg::kQueueSel: queue_sel_ = value; return absl::OkStatus();
    case reg::kQueueSize:
      if (queue_sel_ > 0xffff) return absl::OutOfRangeError("queue select out of range");
      return ctl_.SetQueueSize(static_cast<uint16_t>(queue_sel_), value);
    case reg::kQueueNotify: ctl_.NotifyQueue(static_cast<uint16_t>(value & 0xffff)); return absl::OkStatus();
    case reg::kStatus: {
      absl::Status s = ctl_.SetStatus(static_cast<uint8_t>(value));
      if (value == 0) {  // reset clears the transport's registers too
        device_features_sel_ = driver_features_sel_ = queue_sel_ = 0;
        driver_features_ = 0;
        for (Queue& q : queues_) q = Queue{};
      }
      return s;
    }
    case reg::kShmSel:
    case reg::kQueueReset: return absl::OkStatus();  // no shared memory regions; RING_RESET not offered
    default: break;
  }
  if (legacy) {
    switch (offset) {
      case reg::kGuestPageSize:
        if (value == 0 || (value & (value - 1))) return absl::InvalidArgumentError("guest page size not a power of 2");
        guest_page_size_ = value;
        return absl::OkStatus();
      case reg::kQueueAlign:
        if (queue_sel_ >= queues_.size()) return absl::OutOfRangeError("queue select out of range");
        if (value == 0 || (value & (value - 1))) return absl::InvalidArgumentError("queue align not a power of 2");
        queues_[queue_sel_].align = value;
        return absl::OkStatus();
      case reg::kQueuePfn: return LegacyPfn(value);
      default: break;
    }
  } else {
    switch (offset) {
      case reg::kQueueReady: {
        if (queue_sel_ >= queues_.size()) return absl::OutOfRangeError("queue select out of range");
        const Queue& q = queues_[queue_sel_];
        const uint16_t i = static_cast<uint16_t>(queue_sel_);
        if (value & 1) {
          if (absl::Status s = ctl_.SetQueueAddresses(i, q.desc, q.driver, q.device); !s.ok()) return s;
        }
        return ctl_.SetQueueReady(i, value & 1);
      }
      case reg::kQueueDescLow:
      case reg::kQueueDescHigh:
      case reg::kQueueDriverLow:
      case reg::kQueueDriverHigh:
      case reg::kQueueDeviceLow:
      case reg::kQueueDeviceHigh: return WriteQueueAddress(offset, value);
      default: break;
    }
  }
  return absl::InvalidArgumentError(absl::StrFormat("register 0x%03x is not writable in version %u", offset, version_));
}

absl::Status MmioRegisters::WriteQueueAddress(uint32_t offset, uint32_t value) {
  if (queue_sel_ >= queues_.size()) return absl::OutOfRangeError("queue select out of range");
  const QueueSetup* setup = ctl_.queue_setup(static_cast<uint16_t>(queue_sel_));
  if (setup && setup->ready) return absl::FailedPreconditionError("ring address written while the queue is ready");
  Queue& q = queues_[queue_sel_];
  uint64_t* field = offset < reg::kQueueDriverLow ? &q.desc : offset < reg::kQueueDeviceLow ? &q.driver : &q.device;
  const bool high = offset & 4;
  *field = high ? ((*field & 0xffffffffull) | (uint64_t{value} << 32)) : ((*field & ~0xffffffffull) | value);
  return absl::OkStatus();
}

absl::Status MmioRegisters::LegacyPfn(uint32_t pfn) {
  if (queue_sel_ >= queues_.size()) return absl::OutOfRangeError("queue select out of range");
  const uint16_t i = static_cast<uint16_t>(queue_sel_);
  Queue& q = queues_[i];
  if (pfn == 0) {
    q.pfn = 0;
    return ctl_.SetQueueReady(i, false);
  }
  const QueueSetup* setup = ctl_.queue_setup(i);
  const uint32_t n = setup && setup->size ? setup->size : ctl_.QueueMaxSize(i);
  const uint64_t desc = uint64_t{pfn} * guest_page_size_;
  const uint64_t avail = desc + SplitLayout::DescBytes(n);
  const uint64_t used = desc + SplitLayout::LegacyUsedOffset(n, q.align);
  if (absl::Status s = ctl_.SetQueueSize(i, n); !s.ok()) return s;
  if (absl::Status s = ctl_.SetQueueAddresses(i, desc, avail, used); !s.ok()) return s;
  if (absl::Status s = ctl_.SetQueueReady(i, true); !s.ok()) return s;
  q.pfn = pfn;
  return absl::OkStatus();
}

uint32_t MmioRegisters::Read(uint32_t offset) const {
  switch (offset) {
    case reg::kMagic: return kMagicValue;
    case reg::kVersion: return version_;
    case reg::kDeviceId: return static_cast<uint32_t>(ctl_.device().device_id());
    case reg::kVendorId: return kVendorValue;
    case reg::kDeviceFeatures:
      return device_features_sel_ > 1 ? 0 : static_cast<uint32_t>(ctl_.offered_features() >> (32 * device_features_sel_));
    case reg::kQueueSizeMax: return queue_sel_ <= 0xffff ? ctl_.QueueMaxSize(static_cast<uint16_t>(queue_sel_)) : 0;
    case reg::kQueueReady: {
      if (version_ == 1 || queue_sel_ > 0xffff) return 0;
      const QueueSetup* s = ctl_.queue_setup(static_cast<uint16_t>(queue_sel_));
      return s && s->ready ? 1 : 0;
    }
    case reg::kQueuePfn:
      return version_ == 1 && queue_sel_ < queues_.size() ? queues_[queue_sel_].pfn : 0;
    case reg::kStatus: return ctl_.status();
    case reg::kShmLenLow:
    case reg::kShmLenHigh:
    case reg::kShmBaseLow:
    case reg::kShmBaseHigh: return 0xffffffff;  // no shared memory regions
    default: return 0;
  }
}

}  // namespace vioport::shm
